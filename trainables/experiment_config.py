"""Validated experiment configuration: data, models and training settings.

One YAML file per experiment. Every section is a pydantic model with unknown keys forbidden, so
a typo is an error naming the field instead of a silently ignored setting. `search.sweep_config`
extends this schema with the proxy, sweep and tracking sections.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import torch
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from augtune.trainables.checkpoint_io import CheckpointError, read_checkpoint
from augtune.trainables.method import BUILTIN_NAMES, REGISTRY
from augtune.trainables.models import (MODEL_REGISTRY, InputSpec, build_model, check_model_name,
                                       load_own_layout, module_for_weights, pretrained_input, pretrained_weights,
                                       read_own_weights)
from augtune.trainables.values import check_schedule_value


def _is_count(annotation) -> bool:
    """int or Optional[int] (a field that takes whole numbers)."""
    return annotation is int or (get_origin(annotation) is Union and int in get_args(annotation))


class Section(BaseModel):
    # NaN and infinity are never valid settings
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, raw):
        """YAML's true/false would pass as 1/0 for a number field; refuse them."""
        if isinstance(raw, dict):
            for name, value in raw.items():
                field = cls.model_fields.get(name)
                if field is not None and isinstance(value, bool) and (
                        _is_count(field.annotation) or field.annotation is float):
                    raise ValueError(f"{name} takes a number, not {str(value).lower()}")
        return raw


class FileCheckError(ValueError):
    """A file a config names cannot be used; `field` is the config's path to it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_checkpoint_file(path: Path) -> None:
    """Refuse, at load time, a checkpoint that is missing or not augtune's (before anything runs)."""
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist; train one first "
                         "(augtune train teacher CONFIG) or remove the field")
    try:
        read_checkpoint(path)
    except CheckpointError as exc:
        raise ValueError(f"{exc}; give a checkpoint saved by augtune (augtune train teacher CONFIG)") from None


def dataset_channels(name: str) -> int:
    return 1 if name == "digits" else 3


def input_facts(section: Any) -> Optional[InputSpec]:
    """The input a model section's weights were trained on: an augtune checkpoint's recorded side
    and normalisation, else the pretrained network's (`weights` / `pretrained`; see
    `models.pretrained_input`). None when its weights carry none, or when the section is wrong in a
    way its own checks report."""
    def get(key):
        return section.get(key) if isinstance(section, dict) else getattr(section, key, None)

    if get("checkpoint"):
        try:
            payload = read_checkpoint(Path(get("checkpoint")), lazy=True)  # its facts; the field's check reads it
            return InputSpec(int(payload["data"]["image_size"]), tuple(payload["mean"]), tuple(payload["std"]))
        except (CheckpointError, KeyError, TypeError, ValueError):
            return None
    if get("weights") or get("pretrained") is True:
        try:
            return pretrained_input(str(get("model")), get("model_args") or {})
        except Exception:  # a name or model_args the section's own checks refuse with a clear message
            return None
    return None


def inputs_follow_the_network(raw: dict, roles: tuple[str, ...]) -> dict:
    """`raw` with data.image_size and data.mean/std filled in where the config leaves them out,
    from the first of `roles` (model sections) whose weights carry input facts: so a pretrained
    teacher sees inputs as its weights were trained. Three-channel statistics on grey data
    (digits) become their channel average, matching the summed first convolution. The values are
    written into the config, so a logged config states them."""
    given = raw.get("data", {})
    if not isinstance(given, (dict, Section)):  # a scalar or a list: the schema names the field
        return raw
    # on assignment pydantic passes the validated sections: a DataConfig comes back as one
    data = dict(given) if isinstance(given, dict) else given.model_dump(exclude_unset=True)
    if data.get("image_size") is not None and data.get("mean") is not None:
        return raw
    for role in roles:
        spec = input_facts(raw[role]) if role in raw else None
        if spec is None:
            continue
        channels = dataset_channels(data.get("name", "digits"))
        mean, std = list(spec.mean), list(spec.std)
        if channels == 1 and len(mean) == 3:
            mean, std = [sum(mean) / 3], [sum(std) / 3]
        if data.get("image_size") is None:
            data["image_size"] = spec.size
        if data.get("mean") is None and data.get("std") is None and len(mean) == channels:
            data["mean"], data["std"] = mean, std
        return {**raw, "data": data if isinstance(given, dict) else type(given).model_validate(data)}
    return raw


class DataConfig(Section):
    name: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    root: Optional[Path] = Field(None, description="dataset folder (cifar*, imagefolder)")
    download: bool = Field(False, description="let torchvision download CIFAR into root")
    train_list: Optional[Path] = Field(None, description="imagefolder: 'relative/path label' lines")
    test_list: Optional[Path] = None
    val_list: Optional[Path] = None
    num_classes: Optional[int] = Field(None, gt=1, description="imagefolder: default max label + 1")
    image_size: Optional[int] = Field(None, ge=8, le=1024, description="resize images to this side; default: the "
                                                                      "pretrained network's input side, else the "
                                                                      "dataset's own (digits 8, CIFAR 32, "
                                                                      "imagefolder 224)")
    mean: Optional[list[float]] = Field(None, description="per-channel normalisation mean of [0, 1] pixels; "
                                                         "default: the pretrained network's, else the training "
                                                         "images' own")
    std: Optional[list[float]] = Field(None, description="per-channel normalisation std, with mean")
    val_per_class: int = Field(0, ge=0, description="hold out this many training images of every class for "
                                                    "validation (balanced even for long tails), before any "
                                                    "few-shot or long-tail subsampling; fixed by split_seed")
    samples_per_class: Optional[int] = Field(None, ge=1, description="few-shot: cap each class")
    imbalance_factor: float = Field(1.0, ge=1.0, description="long tail: n_i = n_max*IF^(-i/(C-1))")
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="digits: stratified test split")
    split_seed: int = Field(0, ge=0, lt=2**31, description="seed of the fixed digits split and subsampling")
    in_memory: Literal["auto", "device", "loader"] = Field(
        "auto", description="imagefolder: decode once onto the device, or stream through a DataLoader; "
                            "digits and CIFAR always live on the device")
    num_workers: int = Field(2, ge=0)
    many_shot_threshold: int = Field(100, ge=1, description="classes with more images are 'many'")
    few_shot_threshold: int = Field(20, ge=1, description="classes with fewer images are 'few'")

    @property
    def channels(self) -> int:
        return dataset_channels(self.name)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, raw):
        if isinstance(raw, dict) and "val_size" in raw:
            raise ValueError("data.val_size was replaced by data.val_per_class (a balanced validation split: "
                             "images held out per class); e.g. val_size 5000 on CIFAR-100 is val_per_class 50")
        return raw

    @model_validator(mode="after")
    def _paths_exist(self) -> "DataConfig":
        if self.name in ("cifar10", "cifar100"):
            if self.root is None:
                raise ValueError(f"data.root is required for {self.name}: the folder holding (or "
                                 "receiving, with data.download: true) the CIFAR files")
            if not self.download and not self.root.exists():
                raise ValueError(f"data.root {self.root} does not exist; point it at the folder "
                                 "holding cifar-*-python, or set data.download: true")
        if self.name == "imagefolder":
            for field in ("root", "train_list", "test_list"):
                if getattr(self, field) is None:
                    raise ValueError(f"data.{field} is required for imagefolder")
            for field in ("root", "train_list", "test_list", "val_list"):
                value = getattr(self, field)
                if value is not None and not value.exists():
                    raise ValueError(f"data.{field} {value} does not exist")
        if self.val_per_class and self.val_list is not None:
            raise ValueError("data.val_per_class and data.val_list both define the validation split; keep one")
        if (self.mean is None) != (self.std is None):
            given, missing = ("mean", "std") if self.std is None else ("std", "mean")
            raise ValueError(f"data.{given} is set without data.{missing}; give both (one value per channel) or neither")
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"data.{field} has {len(values)} values; {self.name} images have {self.channels} "
                                 f"channel{'s' if self.channels > 1 else ''}, give one value each")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("data.std: every value must be positive")
        if self.few_shot_threshold > self.many_shot_threshold:
            raise ValueError("data.few_shot_threshold must not exceed data.many_shot_threshold")
        return self


class TrainConfig(Section):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["step", "cosine", "constant"] = "cosine"
    milestones: list[float] = Field(default_factory=lambda: [0.625, 0.75, 0.875],
                                    description="step schedule: fractions of training (or epochs if >1)")
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    warmup_epochs: float = Field(0.0, ge=0.0)
    sampler: Literal["instance", "class_balanced"] = "instance"
    crop_padding: Optional[int] = Field(None, ge=0, description="base crop pad; default side/8")
    flip: bool = True
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="channels_last on CUDA (ignored on CPU)")

    @field_validator("milestones")
    @classmethod
    def _sorted(cls, value: list[float]) -> list[float]:
        if any(m <= 0 for m in value) or value != sorted(value):
            raise ValueError("milestones must be positive and increasing")
        return value


class ModelConfig(Section):
    model: str = Field("resnet20", description="a zoo name, torchvision:NAME, timm:NAME or package.module:factory")
    model_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for torchvision:, "
                                                                        "timm: and module:factory networks")
    checkpoint: Optional[Path] = Field(None, description="load weights from here instead of training")
    weights: Optional[Path] = Field(None, description="a state dict in the network's own layout (torchvision / timm "
                                                      "key names; .pth, .pt or .safetensors), read weights-only")
    pretrained: bool = Field(False, description="torchvision's / timm's own pretrained weights, from their local "
                                                "cache (nothing is downloaded)")
    fine_tune: bool = Field(False, description="with weights or pretrained: train from them (the train section), "
                                               "with a new head when their class count differs from the data's")
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        check_model_name(value)  # a ValueError names what is wrong and what is allowed
        return value

    @model_validator(mode="after")
    def _args_for_foreign_networks(self) -> "ModelConfig":
        if self.model_args and self.model in MODEL_REGISTRY:
            raise ValueError(f"model_args: {self.model!r} is augtune's own network and takes none")
        return self

    @field_validator("weights", "pretrained")
    @classmethod
    def _weights_for_a_foreign_network(cls, value, info: ValidationInfo):
        """Only the settings here; the file itself is read once, by `check_files`."""
        if value is None or value is False:
            return value
        model = info.data.get("model")
        if model is None:  # the model name was refused already
            return value
        if info.field_name == "pretrained" and info.data.get("weights") is not None:
            raise ValueError("give weights or pretrained: true, not both")
        if model in MODEL_REGISTRY:
            raise ValueError(f"{model!r} is augtune's own network; give its augtune checkpoint as `checkpoint`, or "
                             "use a torchvision:/timm:/module:factory model")
        return value

    def check_files(self, role: str) -> None:
        """Read what this section names, once, before anything runs: the checkpoint (augtune's,
        weights-only), or the weights loaded into the architecture (every key must fit; a pickle
        that would run code is refused). Raises FileCheckError naming `role`'s field."""
        if self.checkpoint is not None:
            try:
                check_checkpoint_file(self.checkpoint)
            except ValueError as exc:
                raise FileCheckError(f"{role}.checkpoint", str(exc)) from None
        if self.weights is not None or self.pretrained:
            field = "weights" if self.weights is not None else "pretrained"
            try:
                state = self.own_weights()
                load_own_layout(module_for_weights(self.model, self.model_args, state), state, self.model)
            except ValueError as exc:
                raise FileCheckError(f"{role}.{field}", str(exc)) from None

    def own_weights(self):
        """The state dict of `weights` or `pretrained` (None without either)."""
        if self.weights is not None:
            return read_own_weights(self.weights)
        return pretrained_weights(self.model) if self.pretrained else None

    def build(self, num_classes: int, channels: int):
        """This section's network for `num_classes` classes of `channels`-channel images, from
        `weights` / `pretrained` when given."""
        return build_model(self.model, num_classes, channels, self.model_args, weights=self.own_weights())


class ExperimentConfig(Section):
    """What every command needs: the data, the teacher, where outputs go, the device."""

    name: str = Field("augtune", min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = Field(0, ge=0, lt=2**31, description="seeds every generator (0 <= seed < 2^31)")
    output_dir: Path = Path("runs")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: ModelConfig = Field(default_factory=ModelConfig)

    def check_files(self) -> None:
        """The file reads the schema leaves out (it does no file I/O, so trials validate their
        config for free): done once, when a command loads its config (search/sweep_config.py
        `load_config`). Raises FileCheckError naming the field."""
        self.teacher.check_files("teacher")

    @field_validator("device")
    @classmethod
    def _device_exists(cls, value: str) -> str:
        if value == "cuda" and not torch.cuda.is_available():
            raise ValueError("cuda was requested but no CUDA device is visible; use auto or cpu")
        return value

    @field_validator("output_dir")
    @classmethod
    def _output_dir_is_a_folder(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file; output_dir must be a folder (it is created if missing)")
        return value


class ScheduleStep(Section):
    """From `epoch` on (1-based), train with `values`: `augmentation` (a candidate id),
    lr / weight_decay / momentum (student.train), `kd.temperature`-style method settings and
    `kind.param` candidate parameters (e.g. `cutmix.alpha`). What PBT logs for a trial."""

    epoch: int = Field(ge=1)
    values: dict[str, Union[float, int, str]]


class DistillConfig(ExperimentConfig):
    """Adds what the methods need: the student (the trained network) and each method's settings.
    Every method — the built-in KD, SLA and SSD as much as one registered from a user's module —
    declares its section class beside its runner (`Method.section`); its section is accepted under
    its name, validated by that class, and present with its defaults when the config leaves it out
    (`cfg.kd`, `cfg.section("kd")`)."""

    # extra top-level keys are allowed only as registered methods' sections (checked below)
    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    student: ModelConfig = Field(default_factory=lambda: ModelConfig(model="resnet8"))
    schedule: list[ScheduleStep] = Field(default_factory=list, description=(
        "values that change during a run (a PBT trial's schedule, replayed by augtune train); "
        "empty: the sections' values throughout"))

    @model_validator(mode="after")
    def _registered_method_sections(self) -> "DistillConfig":
        # the built-in methods register on import of their modules, which import this one: by name, here
        importlib.import_module("augtune.trainables.builtin_methods")

        for key, value in list((self.model_extra or {}).items()):
            if key not in REGISTRY:
                raise ValueError(f"{key}: unknown key (check the spelling; see configs/ for the allowed keys)")
            try:
                self.__pydantic_extra__[key] = REGISTRY[key].section.model_validate(
                    value.model_dump() if isinstance(value, BaseModel) else value)
            except ValidationError as exc:  # name the field by its full path, as for the built-in sections
                first = exc.errors()[0]
                path = ".".join([key, *(str(part) for part in first["loc"])])
                raise ValueError(f"{path}: {first['msg'].removeprefix('Value error, ')} "
                                 f"(got {first.get('input')!r})") from None
        for name in BUILTIN_NAMES:
            self.section(name)  # present with its defaults when the config leaves it out
        for name in self.method_sections():
            problem = REGISTRY[name].check_config(self)
            if problem:
                raise ValueError(problem)
        return self

    def method_sections(self) -> list[str]:
        """The method sections this config holds: the built-in methods' and those it was given
        (an added method's defaults are made when first asked for, `section`)."""
        return [name for name in REGISTRY if name in (self.model_extra or {})]

    def check_files(self) -> None:
        super().check_files()
        self.student.check_files("student")

    def section(self, method: str):
        """The settings section of `method` (its defaults when the config leaves it out)."""
        if method not in self.__pydantic_extra__:
            self.__pydantic_extra__[method] = REGISTRY[method].section()
        return self.__pydantic_extra__[method]

    @model_validator(mode="after")
    def _schedule_values(self) -> "DistillConfig":
        previous = 0
        for index, step in enumerate(self.schedule):
            where = f"schedule.{index}"
            if step.epoch <= previous:
                raise ValueError(f"{where}.epoch: steps must be in increasing epoch order ({step.epoch} after {previous})")
            if step.epoch > self.student.train.epochs:
                raise ValueError(f"{where}.epoch: {step.epoch} is past the run's {self.student.train.epochs} epochs")
            previous = step.epoch
            for name, value in step.values.items():
                check_schedule_value(self, name, value, f"{where}.values.{name}")  # trainables/values.py
        return self


def resolve_config(schema: type, raw: dict) -> Any:
    """A user's config as every command loads it: inputs filled in from the networks' weights
    (`inputs_follow_the_network`), validated by `schema` (no file I/O), then the files it names
    read once (`check_files`). Raises ValidationError or FileCheckError."""
    cfg = schema.model_validate(inputs_follow_the_network(raw, ("teacher", "student")))
    cfg.check_files()
    return cfg

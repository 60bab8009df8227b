"""SSD (Li, Wang & Wu, ICCV 2021): self-supervision to distillation for long-tailed data.

Stage I   `SSLStageRunner`: CE + rotation prediction and/or MoCo (same-class negatives masked),
          instance-balanced sampling.
Stage II  `LWSRunner`: learnable per-class scales on the frozen stage-I network (BatchNorm in eval
          mode, encoder and classifier untouched), class-balanced sampling. Folding the scales
          into the classifier gives the calibrated teacher as a plain network.
Stage III `SelfDistillRunner`: a new network from scratch, a hard head (CE) and a soft head
          (KD from the stage-II teacher at T = 2, on x and on the candidate view x').
Stage IV  `LWSRunner` again, on the stage-III hard head (optional).
`SSDChainRunner` strings the stages together for one Ray trial, one epoch per step.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, field_validator

from augtune.spaces import moco
from augtune.spaces.candidates import Context, parse_candidate
from augtune.trainables.data import DataBundle, load_data
from augtune.trainables.distributed import DataParallel
from augtune.trainables.experiment_config import Section, TrainConfig
from augtune.trainables.engine import build_network, full_precision, head_sizes, load_checkpoint, save_checkpoint
from augtune.trainables.losses.kd import kl_at_temperature
from augtune.trainables.losses.moco import masked_contrastive_loss
from augtune.trainables.models import Network
from augtune.trainables.method import Method, OwnTeacher, register
from augtune.trainables.runner import EpochRunner, run_to_completion
from augtune.trainables.values import RunValues


def _lws_defaults() -> "TrainConfig":
    # official stage II: 5 epochs, lr 0.2, batch 512, cosine, wd 5e-4, class-balanced sampling
    return TrainConfig(epochs=5, lr=0.2, batch_size=512, schedule="cosine", weight_decay=5e-4,
                       sampler="class_balanced")


class SSDConfig(Section):
    """Self supervision to distillation (Li, Wang and Wu, ICCV 2021). Stages I-II train `teacher.model`
    with `teacher.train`; stage III trains `student.model` with `student.train`."""

    tasks: list[Literal["rotation", "moco"]] = Field(default_factory=lambda: ["rotation", "moco"],
                                                     description="stage I self-supervised tasks")
    rotation_weight: float = Field(1.0, ge=0.0)
    moco_weight: float = Field(1.0, ge=0.0)
    moco_momentum: float = Field(0.999, gt=0.0, lt=1.0)
    moco_temperature: float = Field(0.2, gt=0.0)
    moco_dim: int = Field(128, ge=8)
    queue_size: Optional[int] = Field(None, ge=1, description="default: the training set size, at most 65536")
    lws: TrainConfig = Field(default_factory=_lws_defaults)
    temperature: float = Field(2.0, gt=0.0, description="stage III KD temperature")
    kd_weight: float = Field(1.0, ge=0.0, description="stage III: CE + kd_weight * KD (1:1 in the paper)")
    stage4: bool = Field(False, description="LWS on the stage-III hard head")
    start_stage: Literal[1, 3] = Field(3, description="3: trials load the sweep's stage-II teacher; 1: run all")
    augmentation: str = Field("identity", description="stage III view x' (the sweep sets it per trial)")

    @field_validator("tasks")
    @classmethod
    def _unique(cls, value):
        if len(set(value)) != len(value):
            raise ValueError("list each task once")
        return value


def rotate_per_sample(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for k in range(1, 4):
        chosen = quarter_turns == k
        if chosen.any():
            out[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
    return out


class _MoCoBranch(nn.Module):
    """Projection MLP, momentum key encoder and the labelled key queue."""

    def __init__(self, model: Network, dim: int, queue_size: int, momentum: float):
        super().__init__()
        hidden = model.feature_dim
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))
        self.key_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.key_projection = copy.deepcopy(self.projection).requires_grad_(False)
        self.momentum = momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update_key_encoder(self, model: Network) -> None:
        for key, query in zip(self.key_backbone.parameters(), model.backbone.parameters()):
            key.mul_(self.momentum).add_(query.detach(), alpha=1 - self.momentum)
        for key, query in zip(self.key_projection.parameters(), self.projection.parameters()):
            key.mul_(self.momentum).add_(query.detach(), alpha=1 - self.momentum)
        for key, query in zip(self.key_backbone.buffers(), model.backbone.buffers()):
            key.copy_(query)

    @torch.no_grad()
    def keys(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projection(self.key_backbone(images)).float(), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        size, start = len(self.queue), int(self.pointer)
        idx = (start + torch.arange(len(keys), device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_labels[idx] = labels
        self.pointer.fill_((start + len(keys)) % size)


# ------------------------------------------------------------------ stage I

class SSLStageRunner(EpochRunner):
    progress_label = "SSD stage I, epoch"
    metric_prefix = "stage1_"
    deployed_head = "classifier"

    def __init__(self, cfg, data: Optional[DataBundle] = None, seed: Optional[int] = None):
        super().__init__(cfg, cfg.teacher.train, data, seed)
        self.ssd = cfg.ssd
        self.model = cfg.teacher.build(self.data.num_classes, self.data.channels).to(self.device)
        if "rotation" in self.ssd.tasks:
            self.model.add_head("rotation", 4)
        self.moco = None
        if "moco" in self.ssd.tasks:
            queue = self.ssd.queue_size or min(len(self.data.train), 65536)
            self.moco = _MoCoBranch(self.model, self.ssd.moco_dim, queue, self.ssd.moco_momentum).to(self.device)
        params = list(self.model.parameters()) + (list(self.moco.projection.parameters()) if self.moco else [])
        self._setup_optimisation(params)
        self._keys = None  # this step's MoCo keys, queued after the optimiser step

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, **({"moco": self.moco} if self.moco else {})}

    def loss(self, images, labels):
        """CE + rotation_weight CE(rotation) + moco_weight contrastive (same-class negatives masked)."""
        unit = self.pipeline.to_unit(images)
        x = self.pipeline.base_augment(unit, self.generator)
        features = self.model.features(self.pipeline.normalise(x))
        ce = F.cross_entropy(self.model.heads["main"](features).float(), labels)
        loss, parts = ce, {"ce": ce}
        if "rotation" in self.ssd.tasks:
            turns = torch.randint(0, 4, (len(x),), generator=self.generator, device=self.device)
            rotated = self.pipeline.normalise(rotate_per_sample(x, turns))
            rotation = F.cross_entropy(self.model(rotated, head="rotation").float(), turns)
            loss = loss + self.ssd.rotation_weight * rotation
            parts["rotation"] = rotation
        if self.moco is not None:
            query = F.normalize(self.moco.projection(features).float(), dim=1)
            self.moco.update_key_encoder(self.model)
            keys = self.moco.keys(self.pipeline.normalise(moco.moco_v2(unit, self.generator)))
            contrastive = masked_contrastive_loss(query, keys, self.moco.queue.clone(), self.moco.queue_labels.clone(),
                                                  labels, self.ssd.moco_temperature)
            loss = loss + self.ssd.moco_weight * contrastive
            parts["moco"] = contrastive
            self._keys = (keys, labels)
        return loss, parts

    def after_step(self) -> None:
        if self._keys is not None:
            self.moco.enqueue(*self._keys)
            self._keys = None

    def heads(self, unit_images):
        return {"classifier": self.model(self.pipeline.normalise(unit_images))}


# ------------------------------------------------------------------ stage II / IV

class ScaledHead(nn.Module):
    """logits = s * (W f + b), one learnable scale per class, initialised to 1."""

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.head = head
        self.scales = nn.Parameter(torch.ones(head.out_features, device=head.weight.device))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scales * self.head(features)


class LWSRunner(EpochRunner):
    """Only the scales train; the network stays in eval mode, so BatchNorm statistics are fixed."""

    deployed_head = "lws"

    def __init__(self, cfg, network: Network, head: str, stage: str, data: Optional[DataBundle] = None,
                 seed: Optional[int] = None):
        super().__init__(cfg, cfg.ssd.lws, data, seed)
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.head_name, self.stage = head, stage
        self.metric_prefix, self.progress_label = f"{stage}_", f"SSD {stage} (LWS), epoch"
        self.scaled = ScaledHead(self.network.heads[head])
        self._setup_optimisation([self.scaled.scales])

    @property
    def frozen(self) -> Network:
        return self.network

    def modules(self) -> dict[str, nn.Module]:
        return {"scaled": self.scaled}

    def train_mode(self) -> None:
        self.network.eval()

    def eval_mode(self) -> None:
        self.network.eval()

    def loss(self, images, labels):
        """CE of s * (W f + b) on frozen features, class-balanced batches."""
        x = self.pipeline.normalise(self.pipeline.train_batch(images, self.generator))
        with torch.no_grad():
            features = self.network.features(x)
        with full_precision(self.device):  # the scales train in fp32
            return F.cross_entropy(self.scaled(features.float()), labels), {}

    def heads(self, unit_images):
        return {"lws": self.scaled(self.network.features(self.pipeline.normalise(unit_images)).float())}

    def folded_network(self) -> Network:
        """The network with the scales multiplied into the head: s*(Wf+b) = (sW)f + sb."""
        folded = copy.deepcopy(self.network)
        head = folded.heads[self.head_name]
        with torch.no_grad():
            head.weight.mul_(self.scaled.scales.detach()[:, None])
            head.bias.mul_(self.scaled.scales.detach())
        return folded


# ------------------------------------------------------------------ stage III

class SelfDistillRunner(EpochRunner):
    method_section = "ssd"
    progress_label = "SSD stage III, epoch"
    metric_prefix = "stage3_"
    deployed_head = "soft"

    def __init__(self, cfg, teacher: Network, data: Optional[DataBundle] = None, seed: Optional[int] = None):
        super().__init__(cfg, cfg.student.train, data, seed)
        self.ssd = cfg.ssd
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.model = cfg.student.build(self.data.num_classes, self.data.channels).to(self.device)
        self.model.add_head("soft", self.data.num_classes)
        self.candidate = parse_candidate(self.ssd.augmentation)
        self._setup_optimisation(self.model.parameters())
        self.context = Context(self.generator, {"teacher": self.pipeline.scorer(self.teacher, self.train_cfg.bf16)},
                               self.pipeline.padding)

    @property
    def frozen(self) -> Network:
        return self.teacher

    def loss(self, images, labels):
        """CE(hard(x), y) + kd_weight KL_T(teacher || soft) over x and x' (T = 2)."""
        both, n = self.two_views(images)
        with torch.no_grad():
            teacher_logits = self.teacher(both)
        features = self.model.features(both)
        hard = self.model.heads["main"](features[:n])
        soft = self.model.heads["soft"](features)
        ce = F.cross_entropy(hard.float(), labels)
        kd = kl_at_temperature(soft, teacher_logits, self.ssd.temperature)
        return ce + self.ssd.kd_weight * kd, {"ce": ce, "kd": kd}

    def heads(self, unit_images):
        features = self.model.features(self.pipeline.normalise(unit_images))
        return {"hard": self.model.heads["main"](features), "soft": self.model.heads["soft"](features)}


# ------------------------------------------------------------------ the stages, as data

@dataclass(frozen=True)
class Stage:
    """One SSD stage: what it trains, for how long, on which frozen network, built how."""
    number: int
    network: Literal["teacher", "student"]  # the model config of the network it trains and saves
    train: Callable[[Any], Any]  # cfg -> its TrainConfig (epochs, batch size, lr ...)
    frozen: Optional[Literal["teacher", "student"]]  # the model config of the network it trains on, fixed
    handoff: Optional[Callable[[EpochRunner], Network]]  # previous stage's runner -> that frozen network
    build: Callable[..., EpochRunner]  # (cfg, data, seed, frozen network or None) -> runner

    def epochs(self, cfg) -> int:
        return self.train(cfg).epochs


STAGES: dict[int, Stage] = {stage.number: stage for stage in (
    Stage(1, "teacher", lambda cfg: cfg.teacher.train, None, None,
          lambda cfg, data, seed, frozen: SSLStageRunner(cfg, data, seed)),
    # LWS on stage I's network; stage III distils from it with the scales folded in
    Stage(2, "teacher", lambda cfg: cfg.ssd.lws, "teacher", lambda previous: previous.model,
          lambda cfg, data, seed, frozen: LWSRunner(cfg, frozen, "main", "stage2", data, seed)),
    Stage(3, "student", lambda cfg: cfg.student.train, "teacher", lambda previous: previous.folded_network(),
          lambda cfg, data, seed, frozen: SelfDistillRunner(cfg, frozen, data, seed)),
    Stage(4, "student", lambda cfg: cfg.ssd.lws, "student", lambda previous: previous.model,
          lambda cfg, data, seed, frozen: LWSRunner(cfg, frozen, "main", "stage4", data, seed)),
)}
TEACHER_STAGES = (1, 2)  # run once by the sweep's driver: stage II's folded network is the teacher


def stages_of(cfg) -> list[int]:
    """The stages a run of `cfg` trains: I-IV, or III-IV from a saved stage-II teacher (IV optional)."""
    return ([*TEACHER_STAGES] if cfg.ssd.start_stage == 1 else []) + [3] + ([4] if cfg.ssd.stage4 else [])


def stage_runner(stage: int, cfg, data: DataBundle, seed: int, frozen: Optional[Network] = None) -> EpochRunner:
    """The runner of `stage`, training on `frozen` (see Stage.handoff) where the stage has one."""
    return STAGES[stage].build(cfg, data, seed, frozen)


def stage_checkpoint(folder: Path, stage: int) -> Path:
    return Path(folder) / f"ssd_stage{stage}.pt"


def save_stage_output(folder: Path, stage: int, runner: EpochRunner, cfg, data: DataBundle,
                      metrics: Optional[dict] = None) -> Path:
    """A stage's network (LWS scales folded in) as a checkpoint the next stage, or a later run, loads."""
    network = runner.folded_network() if isinstance(runner, LWSRunner) else runner.model
    model_name = getattr(cfg, STAGES[stage].network).model
    extra = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    return save_checkpoint(stage_checkpoint(folder, stage), network, model_name, data, extra=extra)


def train_teacher_stages(cfg, data: DataBundle, folder: Path, on_epoch: Optional[Callable[[dict], None]] = None,
                         progress: bool = True) -> Path:
    """Stages I and II to the end, without Ray (the sweep's driver, `augtune train ssd`): the
    stage-II network, its scales folded into the classifier, is the teacher of stage III and of
    the proxy. Returns its checkpoint (ssd_stage2.pt)."""
    previous = None
    for stage in TEACHER_STAGES:
        frozen = STAGES[stage].handoff(previous) if previous is not None else None
        runner = stage_runner(stage, cfg, data, cfg.seed, frozen)
        history = run_to_completion(runner, on_epoch=(lambda m, s=stage: on_epoch({**m, "stage": s}))
                                    if on_epoch else None, progress=progress)
        save_stage_output(folder, stage, runner, cfg, data, history[-1])
        previous = runner
    return stage_checkpoint(folder, TEACHER_STAGES[-1])


# ------------------------------------------------------------------ the chain

class SSDChainRunner:
    """Stages I-IV (or III-IV from a saved stage-II teacher) as one run, one epoch per step."""

    show_progress = False
    parallel: Optional[DataParallel] = None

    def make_data_parallel(self, parallel: DataParallel, sync_batchnorm: bool = True) -> None:
        """Every stage trains as one rank of `parallel` (EpochRunner.make_data_parallel)."""
        self.parallel, self.sync_batchnorm = parallel, sync_batchnorm
        self.current.make_data_parallel(parallel, sync_batchnorm)

    def __init__(self, cfg, teacher_checkpoint: Optional[str] = None, data: Optional[DataBundle] = None,
                 seed: Optional[int] = None, work_dir: Optional[Path] = None):
        self.cfg, self.seed = cfg, cfg.seed if seed is None else seed
        self.data = data if data is not None else load_data(cfg.data)
        self.work_dir = Path(work_dir) if work_dir else None
        self.stages = stages_of(cfg)
        self.teacher_checkpoint = teacher_checkpoint
        if cfg.ssd.start_stage == 3 and teacher_checkpoint is None:
            raise ValueError("ssd.start_stage 3 needs the stage-II teacher checkpoint")
        self.index, self.epoch = 0, 0
        self.values = RunValues()  # no value changes mid-way (Method.schedulable is False): the epochs' curves only
        self.completed: dict[str, float] = {}  # the last metrics of finished stages, carried forward
        teacher = load_checkpoint(teacher_checkpoint, self.data)[0] if self.stages[0] == 3 else None
        self.current = stage_runner(self.stages[0], cfg, self.data, self.seed, teacher)
        self.device = self.current.device

    @property
    def total_epochs(self) -> int:
        return sum(STAGES[stage].epochs(self.cfg) for stage in self.stages)

    @property
    def epochs_done(self) -> int:
        return self.epoch  # over every stage so far

    @property
    def stage(self) -> int:
        return self.stages[self.index]

    @property
    def finished(self) -> bool:
        return self.index == len(self.stages) - 1 and self.current.finished

    def run_epoch(self) -> dict[str, Any]:
        self.current.show_progress = self.show_progress
        metrics = self.current.run_epoch()  # test_acc / test_loss: the stage's deployed head
        self.epoch += 1
        stage = self.stage
        metrics.update(stage=stage, epoch=self.epoch)
        if self.current.finished:
            self.completed.update({k: v for k, v in metrics.items() if f"_stage{stage}_" in k})
        metrics = {**self.completed, **metrics}
        self.values.after_epoch(self, metrics)  # at the chain's epoch (a stage counts its own)
        if self.current.finished and self.index < len(self.stages) - 1:
            if self.work_dir is not None:
                save_stage_output(self.work_dir, stage, self.current, self.cfg, self.data)
            previous = self.current
            self.index += 1
            self.current = stage_runner(self.stage, self.cfg, self.data, self.seed, STAGES[self.stage].handoff(previous))
            if self.parallel is not None:
                self.current.make_data_parallel(self.parallel, self.sync_batchnorm)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state = {"index": self.index, "epoch": self.epoch, "current": self.current.state_dict(),
                 "completed": dict(self.completed), **self.values.state_dict()}
        # the frozen network the stage trains on, with the heads it has, so a restore rebuilds it
        if STAGES[self.stage].frozen is not None:
            frozen = self.current.frozen
            state["fixed_network"] = {"heads": head_sizes(frozen), "state_dict": frozen.state_dict()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["index"] != self.index:
            self.index = state["index"]
            stage = STAGES[self.stage]
            frozen = None
            if stage.frozen is not None:
                model, saved = getattr(self.cfg, stage.frozen), state["fixed_network"]
                frozen = build_network(model.model, saved["heads"], self.data.channels, model.model_args)
                frozen.load_state_dict(saved["state_dict"])
            self.current = stage_runner(stage.number, self.cfg, self.data, self.seed, frozen)
            if self.parallel is not None:
                self.current.make_data_parallel(self.parallel, self.sync_batchnorm)
        self.current.load_state_dict(state["current"])
        self.epoch = state["epoch"]
        self.completed = dict(state["completed"])
        self.values.load_state_dict(state)


def _build(cfg, *, data=None, seed=None, teacher_checkpoint=None, work_dir=None) -> SSDChainRunner:
    return SSDChainRunner(cfg, teacher_checkpoint, data=data, seed=seed, work_dir=work_dir)


def _uses_stage2_teacher(cfg) -> bool:
    return cfg.ssd.start_stage == 3


STAGES_I_II = OwnTeacher("ssd-stages", lambda folder: stage_checkpoint(folder, TEACHER_STAGES[-1]),
                         train_teacher_stages)

METHOD = register(Method(
    "ssd", SSDConfig, _build, teacher=STAGES_I_II, uses_teacher=_uses_stage2_teacher,
    hyperparameters=("ssd.temperature", "ssd.kd_weight"), schedulable=False,
    description="self supervision to distillation for long-tailed data (Li, Wang and Wu, ICCV 2021)"))

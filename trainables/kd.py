"""KD with a stronger augmentation on the second view: the student learns from the teacher on
x (crop+flip) and on x' = candidate(x). The teacher is loaded once per run, frozen, eval mode."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field, field_validator

from augtune.spaces.candidates import Context, parse_candidate
from augtune.trainables.data import DataBundle
from augtune.trainables.engine import load_checkpoint
from augtune.trainables.experiment_config import Section
from augtune.trainables.losses.kd import good_da_kd_loss
from augtune.trainables.method import Method, register
from augtune.trainables.runner import EpochRunner
from augtune.trainables.teacher_cache import TeacherCache


class KDConfig(Section):
    temperature: float = Field(4.0, gt=0.0)
    ce_weight: float = Field(0.1, ge=0.0)
    kd_weight: float = Field(0.9, ge=0.0)
    augmented_kd: bool = Field(True, description="add the KL term on the augmented view x'")
    teacher_cache: Literal["auto", "on", "off"] = Field(
        "auto", description="teacher logits on x read from the sweep's cache (trainables/teacher_cache.py): "
                            "auto = the sweep fills one where it pays, on = always, off = never; trials "
                            "use a complete cache wherever one exists unless off")
    augmentation: str = Field("identity", description="x' of single runs (augtune train kd) and exported "
                                                      "configs; sweeps set it per trial")

    @field_validator("teacher_cache", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML reads a bare on / off as true / false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("augmentation")
    @classmethod
    def _known_augmentation(cls, value: str) -> str:
        parse_candidate(value)  # raises ValueError naming the problem
        return value


class KDRunner(EpochRunner):
    method_section = "kd"

    def __init__(self, cfg, augmentation: Optional[str], teacher_checkpoint: str, data: Optional[DataBundle] = None,
                 seed: Optional[int] = None):
        """`cfg` is a DistillConfig (student and kd sections); `augmentation` defaults to
        cfg.kd.augmentation; `data` reuses a loaded bundle."""
        super().__init__(cfg, cfg.student.train, data, seed)
        self.kd_cfg = cfg.kd
        self.candidate = parse_candidate(augmentation or cfg.kd.augmentation)
        cfg.kd.augmentation = self.candidate.id
        self.teacher, _ = load_checkpoint(teacher_checkpoint, self.data, self.device)
        self.teacher.eval().requires_grad_(False)
        self.model = cfg.student.build(self.data.num_classes, self.data.channels).to(self.device)
        if self.pipeline.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            self.teacher = self.teacher.to(memory_format=torch.channels_last)
        self._setup_optimisation(self.model.parameters())
        bf16 = self.train_cfg.bf16
        self.teacher_cache = (TeacherCache.find(teacher_checkpoint, self.data, self.pipeline, self.device, bf16)
                              if cfg.kd.teacher_cache != "off" else None)
        self.context = Context(self.generator, {"teacher": self.pipeline.scorer(self.teacher, bf16),
                                                "student": self.pipeline.scorer(self.model, bf16)},
                               self.pipeline.padding)

    def loss(self, images, labels):
        """ce_weight CE(s(x), y) + kd_weight [KL_T(t(x) || s(x)) + KL_T(t(x') || s(x'))], one forward
        of teacher and student over [x; x']."""
        kd = self.kd_cfg
        both, n, views = self.two_views_and_base_views(images, augmented=kd.augmented_kd)
        cached = self.teacher_cache is not None and self.batch_indices is not None
        with torch.no_grad():
            teacher_logits = self._teacher_with_cache(both, n, views) if cached else self.teacher(both)
        student_logits = self.model(both)
        loss = good_da_kd_loss(student_logits[:n], teacher_logits[:n], labels,
                               student_logits[n:] if kd.augmented_kd else None,
                               teacher_logits[n:] if kd.augmented_kd else None,
                               temperature=kd.temperature, ce_weight=kd.ce_weight, kd_weight=kd.kd_weight)
        # train_teacher_cached: the share of batches whose teacher logits on x came from the cache
        return loss, ({"teacher_cached": torch.tensor(float(cached), device=loss.device)}
                      if self.teacher_cache is not None else {})

    def _teacher_with_cache(self, both: torch.Tensor, n: int, views: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on [x; x']: x's from the cache, x' forwarded (beside x when it is a
        lone image: a batch of one gets different low bits from torch's CPU kernels)."""
        cached = self.teacher_cache.lookup(self.batch_indices, views)
        if len(both) == n:  # no x'
            return cached
        augmented = self.teacher(both[n:] if len(both) - n > 1 else both)[-(len(both) - n):]
        return torch.cat([cached.to(augmented.dtype), augmented])


def _build(cfg, *, data=None, seed=None, teacher_checkpoint=None, work_dir=None) -> KDRunner:
    return KDRunner(cfg, None, teacher_checkpoint, data=data, seed=seed)


METHOD = register(Method(
    "kd", KDConfig, _build, teacher="supervised",
    hyperparameters=("kd.temperature", "kd.ce_weight", "kd.kd_weight"), student_artifact=True,
    description="KD with a stronger augmentation on the second view (Wang et al., NeurIPS 2022)"))

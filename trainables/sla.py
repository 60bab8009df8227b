"""SLA as an epoch runner: every sample expanded to its M transformed copies, one joint C*M head
("joint"), and the self-distillation head u ("main", C outputs) on the identity copy."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field

from augtune.spaces import label_transforms
from augtune.spaces.candidates import Context, parse_candidate
from augtune.trainables.data import DataBundle
from augtune.trainables.experiment_config import Section
from augtune.trainables.losses.sla import aggregate_logits, self_distillation_loss, single_logits, sla_loss
from augtune.trainables.method import Method, register
from augtune.trainables.runner import EpochRunner


class SLAConfig(Section):
    """Self-supervised label augmentation (Lee et al., ICML 2020); the network is `student`."""

    transforms: Literal["rotation", "colour", "rotation_colour"] = "rotation"
    large_loss: bool = Field(False, description="multiply the joint loss by M (ImageNet/iNat advice)")
    self_distillation: bool = Field(True, description="train the single head u on the aggregated output")
    temperature: float = Field(1.0, gt=0.0)
    beta: float = Field(1.0, ge=0.0)
    augmentation: str = Field("identity", description="base augmentation from the space, before the transforms")


def _colour_needs_rgb(cfg) -> Optional[str]:
    if cfg.sla.transforms != "rotation" and cfg.data.name == "digits":
        return "sla.transforms: colour permutations need RGB images; digits are greyscale, use rotation"
    return None


class SLARunner(EpochRunner):
    method_section = "sla"

    def __init__(self, cfg, data: Optional[DataBundle] = None, seed: Optional[int] = None):
        """`cfg` is a trainables.experiment_config.DistillConfig; the network is cfg.student."""
        super().__init__(cfg, cfg.student.train, data, seed)
        self.sla = cfg.sla
        self.m = label_transforms.NUM_TRANSFORMS[self.sla.transforms]
        self.candidate = parse_candidate(self.sla.augmentation)
        if self.candidate.mixes or self.candidate.scorer:
            raise ValueError(f"sla.augmentation {self.candidate.id} mixes images or needs a scoring network; SLA "
                             "needs one label per image: choose a non-mixing augmentation")
        c = self.data.num_classes
        self.model = cfg.student.build(c, self.data.channels).to(self.device)
        self.model.add_head("joint", c * self.m)
        if self.pipeline.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._setup_optimisation(self.model.parameters())
        self.context = Context(self.generator, {}, self.pipeline.padding)
        self.deployed_head = "sd" if self.sla.self_distillation else "agg"

    def _forward(self, unit_images: torch.Tensor):
        """Joint logits of the expanded batch and the single-head logits of the identity copies."""
        expanded = self.pipeline.normalise(label_transforms.expand(unit_images, self.sla.transforms))
        features = self.model.features(expanded)
        joint = self.model.heads["joint"](features)
        single = self.model.heads["main"](features[: len(unit_images)])
        return joint, single

    def loss(self, images, labels):
        """CE over the C*M joint labels of the M transformed copies, + (with self-distillation)
        beta CE(u(x), y) + T^2 KL(aggregated || u(x))."""
        x = self.candidate.apply(self.pipeline.train_batch(images, self.generator), self.context)
        joint, single = self._forward(x)
        joint_loss = sla_loss(joint, labels, self.m, self.sla.large_loss)
        if not self.sla.self_distillation:
            return joint_loss, {"joint": joint_loss}
        distill = self_distillation_loss(single, aggregate_logits(joint.float(), self.m), labels,
                                         self.sla.temperature, self.sla.beta)
        return joint_loss + distill, {"joint": joint_loss, "self_distillation": distill}

    def heads(self, unit_images):
        """SI (identity columns), AG (aggregated over the transforms) and SD (head u)."""
        joint, single = self._forward(unit_images)
        joint = joint.float()
        return {"si": single_logits(joint[: len(unit_images)], self.m), "agg": aggregate_logits(joint, self.m),
                "sd": single}

    def evaluate(self) -> dict[str, float]:
        out = super().evaluate()
        single = "sd" if self.sla.self_distillation else "si"
        for split in ("test", "val"):
            if f"{split}_{single}_acc" in out:
                out[f"{split}_single_acc"] = out[f"{split}_{single}_acc"]
        return out

def _build(cfg, *, data=None, seed=None, teacher_checkpoint=None, work_dir=None) -> SLARunner:
    return SLARunner(cfg, data=data, seed=seed)


METHOD = register(Method(
    "sla", SLAConfig, _build, teacher="none",
    hyperparameters=("sla.transforms", "sla.temperature", "sla.beta", "sla.large_loss", "sla.self_distillation"),
    fixed_during_run=("sla.transforms", "sla.large_loss", "sla.self_distillation"), one_label_per_image=True,
    check_config=_colour_needs_rgb, description="self-supervised label augmentation (Lee et al., ICML 2020)"))

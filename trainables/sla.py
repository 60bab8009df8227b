"""SLA as an epoch runner: every sample expanded to its M transformed copies, one joint C*M head
("joint"), and the self-distillation head u ("main", C outputs) on the identity copy."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from spaces import label_transforms
from spaces.candidates import Context, parse_candidate
from trainables.config import SLAConfig
from trainables.data import DataBundle
from trainables.engine import autocast
from trainables.losses.sla import aggregate_logits, self_distillation_loss, single_logits, sla_loss
from trainables.models import build_model
from trainables.method import Method, register
from trainables.runner import EpochRunner


class SLARunner(EpochRunner):
    method_section = "sla"

    def __init__(self, cfg, data: Optional[DataBundle] = None, seed: Optional[int] = None):
        """`cfg` is a trainables.config.DistillConfig; the network is cfg.student."""
        super().__init__(cfg, cfg.student.train, data, seed)
        self.sla = cfg.sla
        self.m = label_transforms.NUM_TRANSFORMS[self.sla.transforms]
        self.candidate = parse_candidate(self.sla.augmentation)
        if self.candidate.mixes or self.candidate.scorer:
            raise ValueError(f"sla.augmentation {self.candidate.id} mixes images or needs a scoring network; SLA "
                             "needs one label per image: choose a non-mixing augmentation")
        c = self.data.num_classes
        self.model = build_model(cfg.student.model, c, self.data.channels).to(self.device)
        self.model.add_head("joint", c * self.m)
        if self.pipeline.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._setup_optimisation(self.model.parameters())
        self.context = Context(self.generator, {}, self.pipeline.padding)

    def _forward(self, unit_images: torch.Tensor):
        """Joint logits of the expanded batch and the single-head logits of the identity copies."""
        expanded = self.pipeline.normalise(label_transforms.expand(unit_images, self.sla.transforms))
        features = self.model.features(expanded)
        joint = self.model.heads["joint"](features)
        single = self.model.heads["main"](features[: len(unit_images)])
        return joint, single

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        total, count = torch.zeros((), device=self.device), 0
        for images, labels in self.batches(f"epoch {self.epoch + 1}"):
            x = self.candidate.apply(self.pipeline.train_batch(images, self.generator), self.context)
            with autocast(self.device, self.train_cfg.bf16):
                joint, single = self._forward(x)
            loss = sla_loss(joint, labels, self.m, self.sla.large_loss)
            if self.sla.self_distillation:
                loss = loss + self_distillation_loss(single, aggregate_logits(joint.float(), self.m), labels,
                                                     self.sla.temperature, self.sla.beta)
            self.optimise(loss)
            total += loss.detach() * len(labels)
            count += len(labels)
        metrics = {"train_loss": (total / count).item()}
        metrics.update(self.evaluate_heads(self.test_feeder, "test"))
        if self.val_feeder is not None:
            metrics.update(self.evaluate_heads(self.val_feeder, "val"))
        return metrics

    @torch.no_grad()
    def evaluate_heads(self, feeder, prefix: str) -> dict[str, float]:
        """SI (identity columns), AG (aggregated) and SD (head u) accuracy and CE loss."""
        self.model.eval()
        outputs = {"si": [], "agg": [], "sd": []}
        labels = []
        for images, y in feeder:
            with autocast(self.device, self.train_cfg.bf16):
                joint, single = self._forward(self.pipeline.to_unit(images))
            joint = joint.float()
            outputs["si"].append(single_logits(joint[: len(y)], self.m))
            outputs["agg"].append(aggregate_logits(joint, self.m))
            outputs["sd"].append(single.float())
            labels.append(y)
        self.model.train()
        y = torch.cat(labels)
        metrics = {}
        for name, chunks in outputs.items():
            logits = torch.cat(chunks)
            metrics[f"{name}_acc"] = (logits.argmax(1) == y).float().mean().item()
            metrics[f"{name}_loss"] = F.cross_entropy(logits, y).item()
        deployed = "sd" if self.sla.self_distillation else "agg"
        out = {f"{prefix}_{k}": v for k, v in metrics.items()}
        out[f"{prefix}_single_acc"] = metrics["sd_acc" if self.sla.self_distillation else "si_acc"]
        out[f"{prefix}_acc"], out[f"{prefix}_loss"] = metrics[f"{deployed}_acc"], metrics[f"{deployed}_loss"]
        return out


def _build(cfg, *, data=None, seed=None, teacher_checkpoint=None, work_dir=None) -> SLARunner:
    return SLARunner(cfg, data=data, seed=seed)


METHOD = register(Method(
    "sla", SLAConfig, _build, teacher="none",
    hyperparameters=("sla.transforms", "sla.temperature", "sla.beta", "sla.large_loss", "sla.self_distillation"),
    fixed_during_run=("sla.transforms", "sla.large_loss", "sla.self_distillation"), one_label_per_image=True,
    description="self-supervised label augmentation (Lee et al., ICML 2020)"))

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
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from spaces import moco
from spaces.candidates import Context, parse_candidate
from trainables.config import SSDConfig
from trainables.data import DataBundle, load_data
from trainables.engine import autocast, load_checkpoint, save_checkpoint
from trainables.losses.kd import kl_at_temperature
from trainables.losses.moco import masked_contrastive_loss
from trainables.metrics import shot_accuracy
from trainables.models import Network, build_model
from trainables.method import Method, register
from trainables.runner import EpochRunner


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


def _shot_metrics(logits: torch.Tensor, labels: torch.Tensor, runner: EpochRunner, prefix: str) -> dict[str, float]:
    data_cfg = runner.cfg.data
    out = shot_accuracy(logits, labels, runner.data.class_counts, data_cfg.many_shot_threshold,
                        data_cfg.few_shot_threshold)
    result = {f"{prefix}_{k}": v for k, v in out.items()}
    result[f"{prefix}_loss"] = F.cross_entropy(logits, labels).item()
    return result


def _evaluate_heads(runner: EpochRunner, forward_heads, stage: str) -> dict[str, float]:
    """Metrics of every head on the test (and validation) split, overall and per shot group.
    `forward_heads(images) -> {head: logits}`."""
    metrics = {}
    for split, feeder in (("test", runner.test_feeder), ("val", runner.val_feeder)):
        if feeder is None:
            continue
        outputs: dict[str, list] = {}
        labels = []
        with torch.no_grad():
            for images, y in feeder:
                with autocast(runner.device, runner.train_cfg.bf16):
                    heads = forward_heads(runner.pipeline.normalise(runner.pipeline.to_unit(images)))
                for name, logits in heads.items():
                    outputs.setdefault(name, []).append(logits.float())
                labels.append(y)
        y = torch.cat(labels)
        for name, chunks in outputs.items():
            metrics.update(_shot_metrics(torch.cat(chunks), y, runner, f"{split}_{stage}_{name}"))
    return metrics


# ------------------------------------------------------------------ stage I

class SSLStageRunner(EpochRunner):
    def __init__(self, cfg, data: Optional[DataBundle] = None, seed: Optional[int] = None):
        super().__init__(cfg, cfg.teacher.train, data, seed)
        self.ssd = cfg.ssd
        self.model = build_model(cfg.teacher.model, self.data.num_classes, self.data.channels).to(self.device)
        if "rotation" in self.ssd.tasks:
            self.model.add_head("rotation", 4)
        self.moco = None
        if "moco" in self.ssd.tasks:
            queue = self.ssd.queue_size or min(len(self.data.train), 65536)
            self.moco = _MoCoBranch(self.model, self.ssd.moco_dim, queue, self.ssd.moco_momentum).to(self.device)
        params = list(self.model.parameters()) + (list(self.moco.projection.parameters()) if self.moco else [])
        self._setup_optimisation(params)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, **({"moco": self.moco} if self.moco else {})}

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        sums = {"train_loss": 0.0, "train_ce": 0.0, "train_rotation": 0.0, "train_moco": 0.0}
        count = 0
        for images, labels in self.batches(f"SSD stage I, epoch {self.epoch + 1}"):
            unit = self.pipeline.to_unit(images)
            x = self.pipeline.base_augment(unit, self.generator)
            with autocast(self.device, self.train_cfg.bf16):
                features = self.model.features(self.pipeline.normalise(x))
                ce = F.cross_entropy(self.model.heads["main"](features).float(), labels)
                loss, parts = ce, {"train_ce": ce}
                if "rotation" in self.ssd.tasks:
                    turns = torch.randint(0, 4, (len(x),), generator=self.generator, device=self.device)
                    rotated = self.pipeline.normalise(rotate_per_sample(x, turns))
                    rotation = F.cross_entropy(self.model(rotated, head="rotation").float(), turns)
                    loss = loss + self.ssd.rotation_weight * rotation
                    parts["train_rotation"] = rotation
                if self.moco is not None:
                    query = F.normalize(self.moco.projection(features).float(), dim=1)
                    self.moco.update_key_encoder(self.model)
                    keys = self.moco.keys(self.pipeline.normalise(moco.moco_v2(unit, self.generator)))
                    contrastive = masked_contrastive_loss(query, keys, self.moco.queue.clone(),
                                                          self.moco.queue_labels.clone(), labels,
                                                          self.ssd.moco_temperature)
                    loss = loss + self.ssd.moco_weight * contrastive
                    parts["train_moco"] = contrastive
            self.optimise(loss)
            if self.moco is not None:
                self.moco.enqueue(keys, labels)
            n = len(labels)
            sums["train_loss"] += loss.item() * n
            for key, value in parts.items():
                sums[key] += value.item() * n
            count += n
        metrics = {k: v / count for k, v in sums.items()}
        metrics.update(self.evaluate())
        return metrics

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        out = _evaluate_heads(self, lambda x: {"classifier": self.model(x)}, "stage1")
        self.model.train()
        return out


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

    def __init__(self, cfg, network: Network, head: str, stage: str, data: Optional[DataBundle] = None,
                 seed: Optional[int] = None):
        super().__init__(cfg, cfg.ssd.lws, data, seed)
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.head_name, self.stage = head, stage
        self.scaled = ScaledHead(self.network.heads[head])
        self._setup_optimisation([self.scaled.scales])

    def modules(self) -> dict[str, nn.Module]:
        return {"scaled": self.scaled}

    def train_epoch(self) -> dict[str, float]:
        self.network.eval()
        total, count = 0.0, 0
        for images, labels in self.batches(f"SSD {self.stage} (LWS), epoch {self.epoch + 1}"):
            x = self.pipeline.normalise(self.pipeline.train_batch(images, self.generator))
            with torch.no_grad(), autocast(self.device, self.train_cfg.bf16):
                features = self.network.features(x)
            loss = F.cross_entropy(self.scaled(features.float()), labels)
            self.optimise(loss)
            total += loss.item() * len(labels)
            count += len(labels)
        metrics = {"train_loss": total / count}
        metrics.update(_evaluate_heads(self, lambda x: {"lws": self.scaled(self.network.features(x).float())},
                                       self.stage))
        return metrics

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

    def __init__(self, cfg, teacher: Network, data: Optional[DataBundle] = None, seed: Optional[int] = None):
        super().__init__(cfg, cfg.student.train, data, seed)
        self.ssd = cfg.ssd
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.model = build_model(cfg.student.model, self.data.num_classes, self.data.channels).to(self.device)
        self.model.add_head("soft", self.data.num_classes)
        self.candidate = parse_candidate(self.ssd.augmentation)
        self._setup_optimisation(self.model.parameters())
        self.context = Context(self.generator, {"teacher": self.pipeline.scorer(self.teacher, self.train_cfg.bf16)},
                               self.pipeline.padding)

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        total, count = 0.0, 0
        for images, labels in self.batches(f"SSD stage III, epoch {self.epoch + 1}"):
            x = self.pipeline.train_batch(images, self.generator)
            x_aug = self.candidate.apply(x, self.context)
            both = self.pipeline.normalise(torch.cat([x, x_aug]))
            n = len(x)
            with autocast(self.device, self.train_cfg.bf16):
                with torch.no_grad():
                    teacher_logits = self.teacher(both)
                features = self.model.features(both)
                hard = self.model.heads["main"](features[:n])
                soft = self.model.heads["soft"](features)
            ce = F.cross_entropy(hard.float(), labels)
            kd = kl_at_temperature(soft, teacher_logits, self.ssd.temperature)  # over x and x'
            loss = ce + self.ssd.kd_weight * kd
            self.optimise(loss)
            total += loss.item() * n
            count += n
        metrics = {"train_loss": total / count}
        self.model.eval()
        metrics.update(_evaluate_heads(self, self._heads, "stage3"))
        self.model.train()
        return metrics

    def _heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.model.features(x)
        return {"hard": self.model.heads["main"](features), "soft": self.model.heads["soft"](features)}


# ------------------------------------------------------------------ the chain

def _headline(metrics: dict[str, float], stage_key: str) -> dict[str, float]:
    """test_acc / test_loss (and val_*) of the stage's deployed head, for schedulers and MLflow."""
    out = {}
    for split in ("test", "val"):
        if f"{split}_{stage_key}_acc" in metrics:
            out[f"{split}_acc"] = metrics[f"{split}_{stage_key}_acc"]
            out[f"{split}_loss"] = metrics[f"{split}_{stage_key}_loss"]
    return out


class SSDChainRunner:
    """Stages I-IV (or III-IV from a saved stage-II teacher) as one run, one epoch per step."""

    def __init__(self, cfg, teacher_checkpoint: Optional[str] = None, data: Optional[DataBundle] = None,
                 seed: Optional[int] = None, work_dir: Optional[Path] = None):
        self.cfg, self.seed = cfg, cfg.seed if seed is None else seed
        self.data = data if data is not None else load_data(cfg.data)
        self.work_dir = Path(work_dir) if work_dir else None
        self.stages = ([1, 2] if cfg.ssd.start_stage == 1 else []) + [3] + ([4] if cfg.ssd.stage4 else [])
        self.lengths = {1: cfg.teacher.train.epochs, 2: cfg.ssd.lws.epochs, 3: cfg.student.train.epochs,
                        4: cfg.ssd.lws.epochs}
        self.teacher_checkpoint = teacher_checkpoint
        if cfg.ssd.start_stage == 3 and teacher_checkpoint is None:
            raise ValueError("ssd.start_stage 3 needs the stage-II teacher checkpoint")
        self.index, self.epoch = 0, 0
        self.completed: dict[str, float] = {}  # the last metrics of finished stages, carried forward
        self.current = self._build(self.stages[0])
        self.device = self.current.device

    def _build(self, stage: int, previous: Optional[EpochRunner] = None):
        cfg, data, seed = self.cfg, self.data, self.seed
        if stage == 1:
            return SSLStageRunner(cfg, data, seed)
        if stage == 2:
            return LWSRunner(cfg, previous.model, "main", "stage2", data, seed)
        if stage == 3:
            if previous is not None:
                teacher = previous.folded_network()
            else:
                teacher, _ = load_checkpoint(self.teacher_checkpoint, data)
            return SelfDistillRunner(cfg, teacher, data, seed)
        return LWSRunner(cfg, previous.model, "main", "stage4", data, seed)

    @property
    def stage(self) -> int:
        return self.stages[self.index]

    @property
    def finished(self) -> bool:
        return self.index == len(self.stages) - 1 and self.current.finished

    def run_epoch(self) -> dict[str, Any]:
        metrics = self.current.run_epoch()
        self.epoch += 1
        stage = self.stage
        headline = {1: "stage1_classifier", 2: "stage2_lws", 3: "stage3_soft", 4: "stage4_lws"}[stage]
        metrics.update(_headline(metrics, headline), stage=stage, epoch=self.epoch)
        if self.current.finished:
            self.completed.update({k: v for k, v in metrics.items() if f"_stage{stage}_" in k})
        metrics = {**self.completed, **metrics}
        if self.current.finished and self.index < len(self.stages) - 1:
            self._save_stage_output()
            previous = self.current
            self.index += 1
            self.current = self._build(self.stage, previous)
        return metrics

    def _save_stage_output(self) -> None:
        """Each stage's output is a checkpoint the next stage (or a later run) can load."""
        if self.work_dir is None:
            return
        stage, runner = self.stage, self.current
        network = runner.folded_network() if isinstance(runner, LWSRunner) else runner.model
        model_name = self.cfg.teacher.model if stage in (1, 2) else self.cfg.student.model
        save_checkpoint(self.work_dir / f"ssd_stage{stage}.pt", network, model_name, self.data)

    def state_dict(self) -> dict[str, Any]:
        state = {"index": self.index, "epoch": self.epoch, "current": self.current.state_dict(),
                 "completed": dict(self.completed)}
        if self.stage in (2, 4):  # the network LWS scales sit on
            state["lws_network"] = self.current.network.state_dict()
        if self.stage == 3:
            state["teacher"] = self.current.teacher.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["index"] != self.index:
            self.index = state["index"]
            stage = self.stage
            if stage in (2, 4):
                name = self.cfg.teacher.model if stage == 2 else self.cfg.student.model
                network = build_model(name, self.data.num_classes, self.data.channels)
                if stage == 4:
                    network.add_head("soft", self.data.num_classes)
                network.load_state_dict(state["lws_network"])
                self.current = LWSRunner(self.cfg, network, "main", f"stage{stage}", self.data, self.seed)
            elif stage == 3:
                teacher = build_model(self.cfg.teacher.model, self.data.num_classes, self.data.channels)
                if "rotation" in self.cfg.ssd.tasks:
                    teacher.add_head("rotation", 4)
                teacher.load_state_dict(state["teacher"])
                self.current = SelfDistillRunner(self.cfg, teacher, self.data, self.seed)
        self.current.load_state_dict(state["current"])
        self.epoch = state["epoch"]
        self.completed = dict(state["completed"])


def _build(cfg, *, data=None, seed=None, teacher_checkpoint=None, work_dir=None) -> SSDChainRunner:
    return SSDChainRunner(cfg, teacher_checkpoint, data=data, seed=seed, work_dir=work_dir)


def _uses_stage2_teacher(cfg) -> bool:
    return cfg.ssd.start_stage == 3


METHOD = register(Method(
    "ssd", SSDConfig, _build, teacher="ssd_stages", uses_teacher=_uses_stage2_teacher, hyperparameters=("ssd.temperature", "ssd.kd_weight"),
    schedulable=False, description="self supervision to distillation for long-tailed data (Ma et al., ECCV 2022)"))

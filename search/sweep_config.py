"""The full config schema (experiment + augmentation space + proxy + sweep + tracking) and a
loader that turns any problem into a `ConfigError` naming the field and what is allowed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from augtune.spaces.candidates import DEFAULT_BASELINE, DEFAULT_CANDIDATES, expand_candidates, parse_candidate
from augtune.spaces.hyper import changeable_during_run, check_names, parse_hyperparameters
from augtune.spaces.policies import DEFAULT_POLICY_SPACE, PolicySpace
from augtune.trainables.experiment_config import (DistillConfig, FileCheckError, Section, check_checkpoint_file,
                                                   resolve_config)
from augtune.trainables.builtin_methods import REGISTRY, get_method
from augtune.trainables.values import apply_trial_values


class ConfigError(ValueError):
    """Bad user input; the CLI prints it and exits with code 2."""


class SpaceConfig(Section):
    candidates: list[Union[str, dict[str, Any]]] = Field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    policies: Optional[Union[Literal["default"], dict[str, Any]]] = Field(
        None, description="a policy space (spaces/policies.py): per stage (base, erase, mix) the ops and their "
                          "values, or 'default'; `sample` policies drawn from it are screened by the proxy, "
                          "beside the candidates when those are listed too, instead of them otherwise")
    sample: int = Field(256, ge=1, description="policies drawn from `policies` (distinct, reproducible)")
    sample_seed: int = Field(0, ge=0, description="seeds the draw of the policies")

    @field_validator("candidates")
    @classmethod
    def _parse(cls, value):
        if not value:
            raise ValueError("list at least one augmentation candidate")
        expand_candidates(value)  # raises ValueError naming the bad candidate
        return value

    @field_validator("policies")
    @classmethod
    def _space(cls, value):
        if isinstance(value, dict):
            policy_space(value)  # raises ValueError naming the stage, op and parameter
        return value

    def policy_space(self):
        """The declared PolicySpace, or None."""
        if self.policies is None:
            return None
        return policy_space(None if self.policies == "default" else self.policies)

    def resolved(self):
        """The candidates listed (unless only policies are declared), then the sampled policies."""
        listed = expand_candidates(self.candidates) if self.policies is None or "candidates" in self.model_fields_set \
            else []
        if self.policies is None:
            return listed
        space = self.policy_space()
        if self.sample > space.size():
            raise ValueError(f"space.sample: {self.sample} policies asked for, the space holds {space.size()}; "
                             "lower space.sample or widen space.policies")
        ids = {c.id for c in listed}
        return listed + [p for p in space.sample(self.sample, self.sample_seed) if p.id not in ids]


def policy_space(spec: Optional[dict[str, Any]]):
    return DEFAULT_POLICY_SPACE if spec is None else PolicySpace.from_spec(spec, where="space.policies")


class ProxyConfig(Section):
    passes: int = Field(10, ge=1, description="passes over the training set (official: 10)")
    group_batches: int = Field(5, ge=2, description="batches per group mean (official: 5)")
    batch_size: int = Field(64, ge=2, description="batch size of the proxy's passes (official: 64)")
    forward_batches: Optional[int] = Field(None, ge=1, description="batches per teacher forward (default: a group)")
    min_passes: int = Field(2, ge=1, description="early stop: never before this many passes")
    stop_when_stable: bool = Field(False, description="stop adding passes once the ranking is stable")
    stable_passes: int = Field(2, ge=1, description="ranking unchanged for this many passes -> stop")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples for the interval (0: none)")
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    student_checkpoint: Optional[Path] = Field(None, description="needed by entropy=student picks")
    score: Literal["t_stddev", "entropy", "kl", "agreement", "accuracy", "low_fidelity"] = Field(
        "t_stddev", description="which score ranks the candidates: the teacher-only ones are computed in the "
                                "same forward passes (search/selection/proxy.py ZOO gives each one's direction); "
                                "low_fidelity needs low_fidelity_epochs")
    policies_per_forward: int = Field(8, ge=1, description="candidates whose x' share one teacher forward "
                                                          "(screening many policies)")
    race_top_k: int = Field(0, ge=0, description="> 0: racing: after each pass from race_min_passes on, drop the "
                                                "candidates whose T.stddev interval lies wholly above the top "
                                                "race_top_k's (at least prune.top_k)")
    race_min_passes: int = Field(2, ge=1, description="racing: passes before the first drop")
    race_z: float = Field(2.0, gt=0.0, description="racing: interval half-width in jackknife standard errors")
    low_fidelity_epochs: int = Field(0, ge=0, description="> 0: also train each candidate's student this many "
                                                          "epochs of its full schedule and score it by its "
                                                          "validation loss there (the zoo's one student score)")


class PruneConfig(Section):
    mode: Literal["top_k", "overlap", "none", "fixed"] = Field(
        "top_k", description="top_k / overlap: the proxy decides which candidates are trained; none: all of them; "
                             "fixed: only `candidate`, no proxy scoring (no search over augmentations)")
    candidate: Optional[Union[str, dict[str, Any]]] = Field(None, description="mode fixed: the one candidate, as "
                                                                              "written in space.candidates")
    top_k: int = Field(3, ge=1)
    audit: int = Field(0, ge=0, description="sentinels: pruned candidates trained anyway to check the proxy")
    audit_seeds: int = Field(2, ge=2, description="seeds per audited candidate (>= 2: seed noise is measured)")
    on_disagreement: Literal["report", "expand"] = Field(
        "report", description="when a sentinel beats the kept best beyond seed noise: report it, or also train "
                              "further pruned candidates in proxy order (within max_extra)")
    max_extra: int = Field(3, ge=0, description="expand: at most this many further candidates")


class SchedulerConfig(Section):
    kind: Literal["asha", "fifo", "pbt"] = Field(
        "asha", description="asha: stop weak trials early; fifo: train all to the end; pbt: population based "
                            "training, a population of num_samples trials whose hyperparameters (incl. kind.param "
                            "augmentation parameters) change during training: a schedule")
    grace_period: int = Field(2, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: float = Field(3.0, gt=1.0)
    perturbation_interval: int = Field(4, ge=1, description="PBT: epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="PBT: the bottom fraction copies the top one")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="PBT: explore by resampling a value "
                                                                          "(else scale it by 0.8 or 1.2)")


class ResourcesConfig(Section):
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (per worker when workers_per_trial > 1)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial (per worker); fractions pack trials on one device")
    workers_per_trial: int = Field(1, ge=1, description="data-parallel training of each trial on this many Ray "
                                                        "Train workers (NCCL on GPUs, gloo on CPUs); 1: one process")
    sync_batchnorm: bool = Field(True, description="workers_per_trial > 1 on GPUs: BatchNorm as SyncBatchNorm "
                                                   "(torch has none on CPUs: each worker normalises its slice)")


class SearchConfig(Section):
    method: str = Field(
        "kd", description="a registered method (trainables.builtin_methods): kd: proxy-pruned KD; sla: SLA (no teacher, "
                          "no proxy); ssd: SSD stages, proxy on stage II")
    algorithm: Literal["optuna", "random"] = "optuna"
    num_samples: int = Field(6, ge=1, description="trials in total")
    max_concurrent: int = Field(2, ge=1)
    reuse_actors: bool = Field(True, description="run later trials on warm trial actors (no process start, "
                                                 "imports or data loading per trial)")
    metric: Literal["val_loss", "val_acc", "test_loss", "test_acc"] = Field(
        "val_loss", description="what Optuna, ASHA and the best pick select by: a val_* metric (held-out "
                                "validation split); test_* needs select_on_test: true")
    select_on_test: bool = Field(False, description="allow a test_* metric: the reported best score is then "
                                                    "biased (chosen on the data it is reported on)")
    seeds: int = Field(1, ge=1, description="validation sweeps: seeds per candidate")
    baseline: Optional[str] = Field(
        "auto", description="the recipe every sweep compares its choice with, trained at the chosen trial's "
                            "hyperparameters and seed: an augmentation id; auto: CutMixPick keep 0.5 where the "
                            "method takes it (else none); null: no baseline")
    baseline_seeds: int = Field(2, ge=1, description="seeds of the baseline and of the chosen augmentation in the "
                                                     "comparison (>= 2 measures the seed noise)")
    validate_proxy: bool = Field(False, description="train every candidate (no pruning, no Optuna)")
    prune: PruneConfig = Field(default_factory=PruneConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    hyperparameters: dict[str, Any] = Field(default_factory=dict,
                                            description="e.g. lr: {loguniform: [0.01, 0.1]}")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    ray_address: Optional[str] = Field(None, description="'auto' to join a running cluster")
    storage_path: Optional[str] = Field(None, description="shared on clusters (s3://, NFS)")
    seed: int = Field(0, ge=0, lt=2**31, description="seeds the searcher (Optuna, random search, sentinels)")

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        get_method(value)  # raises naming the registered methods
        return value

    @field_validator("hyperparameters")
    @classmethod
    def _hyper(cls, value):
        parse_hyperparameters(value)
        return value



class TrackingConfig(Section):
    uri: str = Field("sqlite:///mlflow.db", description="sqlite:///file.db locally, http://host:port on clusters")
    experiment: Optional[str] = Field(None, description="MLflow experiment; defaults to the config's name")

    @field_validator("uri")
    @classmethod
    def _no_file_store(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "databricks")):
            raise ValueError("use sqlite:///path.db or an http(s):// tracking server "
                             "(MLflow's file store is deprecated and raises)")
        return value


class SweepConfig(DistillConfig):
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @property
    def method(self):
        """The registry entry of search.method (trainables.method.Method)."""
        return REGISTRY[self.search.method]

    @model_validator(mode="after")
    def _method_space(self) -> "SweepConfig":
        for candidate in self.space.resolved():
            reason = self.method.refuses(candidate)
            if reason:
                raise ValueError(f"space.candidates: {reason} (search.method {self.search.method})")
        return self

    @property
    def baseline(self) -> Optional[str]:
        """The baseline recipe's id, or None (no baseline: switched off, or auto and the method refuses it)."""
        chosen = self.search.baseline
        if chosen is None:
            return None
        recipe = parse_candidate(DEFAULT_BASELINE if chosen == "auto" else chosen)
        if chosen == "auto" and (self.method.refuses(recipe) or not self.method.has_teacher):
            return None
        return recipe.id

    @model_validator(mode="after")
    def _baseline(self) -> "SweepConfig":
        chosen = self.search.baseline
        if chosen is None or chosen == "auto" and self.baseline is None:
            return self
        try:
            recipe = parse_candidate(chosen if chosen != "auto" else DEFAULT_BASELINE)
        except ValueError as exc:
            raise ValueError(f"search.baseline: {exc}") from None
        reason = self.method.refuses(recipe)
        if reason:
            raise ValueError(f"search.baseline: {reason} (search.method {self.search.method})")
        space = self.space.policy_space()
        if space is not None and recipe not in space:
            raise ValueError(f"search.baseline: {recipe.id} lies outside space.policies ({space.why_outside(recipe)}); "
                             "set search.baseline to a policy of the space (or null), or widen the space")
        return self

    @model_validator(mode="after")
    def _hyperparameter_names(self) -> "SweepConfig":
        try:
            check_names(self.search.hyperparameters, self.method.hyperparameters, self.search.method)
        except ValueError as exc:
            raise ValueError(f"search.hyperparameters: {exc}") from None
        return self

    @model_validator(mode="after")
    def _prune_sizes(self) -> "SweepConfig":
        count = len(self.space.resolved())
        prune = self.search.prune
        # a top_k of its own (the default may exceed a short list: keep all then); a logged config
        # (config.json, `best --export`) writes the default out, and must load again
        explicit_k = "top_k" in prune.model_fields_set and prune.top_k != type(prune).model_fields["top_k"].default
        if self.method.has_teacher and prune.mode == "top_k" and explicit_k and prune.top_k > count:
            raise ValueError(f"search.prune.top_k: {prune.top_k} exceeds the {count} candidates in space.candidates; "
                             f"use at most {count} (or prune.mode: none)")
        if prune.audit and not self.method.has_teacher:
            raise ValueError(f"search.prune.audit: {self.search.method} sweeps have no teacher, hence no proxy, and "
                             "prune nothing; set audit: 0")
        pruned = max(count - prune.top_k, 0)
        if prune.audit and prune.mode == "top_k" and prune.audit > pruned:
            raise ValueError(f"search.prune.audit: {prune.audit} sentinels, but only {pruned} candidates "
                             f"are pruned; use at most {pruned}")
        if prune.mode == "fixed":
            if prune.candidate is None:
                raise ValueError("search.prune.candidate: mode fixed trains one candidate; name it (one of "
                                 "space.candidates)")
            ids = [c.id for c in self.space.resolved()]
            try:
                fixed = expand_candidates([prune.candidate])
            except ValueError as exc:
                raise ValueError(f"search.prune.candidate: {exc}") from None
            if len(fixed) != 1 or fixed[0].id not in ids:
                raise ValueError(f"search.prune.candidate: {prune.candidate!r} is not one of space.candidates "
                                 f"({', '.join(ids)})")
            if prune.audit:
                raise ValueError("search.prune.audit: mode fixed prunes by choice, not by the proxy; there is "
                                 "nothing to audit: set audit: 0")
            if explicit_k:
                raise ValueError("search.prune.top_k: mode fixed trains the one candidate it names; top_k does "
                                 "not apply: remove it, or use mode: top_k")
        if self.proxy.race_top_k and prune.mode == "fixed":
            raise ValueError("proxy.race_top_k: prune.mode fixed scores no candidate, so there is nothing to race; "
                             "use race_top_k: 0, or mode top_k")
        if self.proxy.race_top_k and prune.mode == "top_k" and self.proxy.race_top_k < prune.top_k:
            raise ValueError(f"proxy.race_top_k: {self.proxy.race_top_k} would let racing drop candidates that "
                             f"prune.top_k ({prune.top_k}) keeps; use at least {prune.top_k}")
        if self.proxy.race_top_k and self.proxy.score != "t_stddev":
            raise ValueError(f"proxy.race_top_k: racing compares T.stddev intervals, and proxy.score is "
                             f"{self.proxy.score}; use race_top_k: 0 or proxy.score: t_stddev")
        if self.proxy.score == "low_fidelity" and not self.proxy.low_fidelity_epochs:
            raise ValueError("proxy.score: low_fidelity ranks by a few epochs of student training; set "
                             "proxy.low_fidelity_epochs (e.g. 3)")
        if self.proxy.low_fidelity_epochs and self.method.teacher != "supervised":
            raise ValueError(f"proxy.low_fidelity_epochs: {self.search.method} has no single-stage student to "
                             "train briefly; use 0")
        if self.proxy.low_fidelity_epochs >= self.student.train.epochs:
            raise ValueError(f"proxy.low_fidelity_epochs: {self.proxy.low_fidelity_epochs} is not fewer than the "
                             f"student's {self.student.train.epochs} epochs; a low-fidelity score trains less")
        if prune.mode == "overlap" and self.proxy.score != "t_stddev":
            raise ValueError(f"search.prune.mode: overlap compares T.stddev's bootstrap intervals, and proxy.score is "
                             f"{self.proxy.score}; use mode top_k, or proxy.score: t_stddev")
        return self

    @model_validator(mode="after")
    def _search_domains_within_bounds(self) -> "SweepConfig":
        """Every value a search can reach (bounds, choices, constants) must be a valid setting,
        or trials would die (or be silently dropped) at run time."""
        base = self.model_dump(mode="json", include=self.distill_keys())
        for h in parse_hyperparameters(self.search.hyperparameters):
            for value in h.extremes():
                try:
                    DistillConfig.model_validate(apply_trial_values(base, {h.name: value}, self.search.method))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    raise ValueError(f"search.hyperparameters.{h.name}: the search can reach {value!r}, which "
                                     f"{_field_path(first['loc'])} refuses ({first['msg'].removeprefix('Value error, ')})"
                                     "; narrow the domain") from None
        return self

    @model_validator(mode="after")
    def _pbt(self) -> "SweepConfig":
        s = self.search
        if s.scheduler.kind != "pbt":
            return self
        if not self.method.schedulable:
            raise ValueError(f"search.scheduler.kind: pbt changes values during one training run; {s.method} trials "
                             f"are multi-stage runs: use asha or fifo for search.method {s.method}")
        if s.validate_proxy:
            raise ValueError("search.validate_proxy trains every candidate to the end with fixed values; "
                             "use scheduler.kind fifo (not pbt) for it")
        if s.resources.workers_per_trial > 1:
            raise ValueError("search.resources.workers_per_trial: PBT pauses a trial and clones another's through "
                             "Tune checkpoints, and a multi-worker trial keeps its checkpoints in Ray Train; use "
                             "scheduler.kind asha or fifo with several workers, or workers_per_trial: 1 with pbt")
        hypers = parse_hyperparameters(s.hyperparameters)
        fixed = [h.name for h in hypers if h.form != "constant"
                 and not changeable_during_run(h.name, self.method.hyperparameters, self.method.fixed_during_run)]
        if fixed:
            raise ValueError(f"search.hyperparameters.{fixed[0]}: PBT changes values during training, and "
                             f"{fixed[0]} cannot change mid-run; make it a constant or use asha/fifo")
        if not any(h.form != "constant" for h in hypers):
            raise ValueError("search.scheduler.kind: pbt needs at least one search.hyperparameters domain to "
                             "explore (e.g. cutmix.alpha: {uniform: [0.1, 2.0]} or lr: {loguniform: [0.01, 0.1]})")
        if s.scheduler.perturbation_interval >= self.student.train.epochs:
            raise ValueError(f"search.scheduler.perturbation_interval: {s.scheduler.perturbation_interval} epochs "
                             f"is not shorter than the {self.student.train.epochs}-epoch run, so PBT would never "
                             "exploit; lower it")
        return self

    @model_validator(mode="after")
    def _selection_split(self) -> "SweepConfig":
        metric = self.search.metric
        if metric.startswith("test_") and not self.search.select_on_test:
            raise ValueError(f"search.metric: {metric} would choose the best trial on the test set and report a "
                             "biased score; use val_loss or val_acc (with data.val_per_class or data.val_list), "
                             "or set search.select_on_test: true to accept that")
        return self

    def prune_mode(self, validate_proxy: bool) -> str:
        """How this sweep prunes, decided here once: none for a validation sweep (every candidate
        trains) or a method without a teacher (nothing to score); else search.prune.mode."""
        return "none" if validate_proxy or not self.method.has_teacher else self.search.prune.mode

    def check_resources(self) -> None:
        """On this machine (no ray_address), a trial must fit it; a cluster is checked on connect.
        Checked when a sweep starts, not on load: shipped GPU configs load anywhere."""
        if self.search.ray_address:
            return

        cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        wanted = self.search.resources
        workers = wanted.workers_per_trial
        each = f" ({workers} workers x {{:g}})" if workers > 1 else ""
        if wanted.cpu * workers > cpus:
            field = "workers_per_trial" if workers > 1 and wanted.cpu <= cpus else "cpu"
            raise ConfigError(f"search.resources.{field}: a trial asks for {wanted.cpu * workers:g} CPUs"
                              f"{each.format(wanted.cpu)}, this machine has {cpus}; lower it, or set "
                              "search.ray_address to run on a cluster")
        if wanted.gpu * workers > gpus:
            field = "workers_per_trial" if workers > 1 and wanted.gpu <= gpus else "gpu"
            raise ConfigError(f"search.resources.{field}: a trial asks for {wanted.gpu * workers:g} GPUs"
                              f"{each.format(wanted.gpu)}, this machine has {gpus}; lower it, or set "
                              "search.ray_address to run on a cluster")

    def check_selection_split(self) -> None:
        """Sweeps select on val_* by default: they need a validation split (other commands do not)."""
        metric = self.search.metric
        if metric.startswith("val_") and not self.data.val_per_class and self.data.val_list is None:
            raise ConfigError(f"search.metric: {metric} needs a validation split; set data.val_per_class "
                              "(e.g. 20) or data.val_list")

    @model_validator(mode="after")
    def _student_scorer(self) -> "SweepConfig":
        needs_student = [c.id for c in self.space.resolved() if c.scorer == "student"]
        if needs_student and self.proxy.student_checkpoint is None and self.student.checkpoint is None:
            raise ValueError(f"space.candidates: {needs_student[0]} scores images with a student network; "
                             "set proxy.student_checkpoint (or student.checkpoint) or drop that candidate")
        return self

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    def check_files(self) -> None:
        super().check_files()
        if self.proxy.student_checkpoint is not None:
            try:
                check_checkpoint_file(self.proxy.student_checkpoint)
            except ValueError as exc:
                raise FileCheckError("proxy.student_checkpoint", str(exc)) from None

    def distill_keys(self) -> set[str]:
        """The sections a trainable reads: the experiment's, the student's and every method's."""
        return set(DistillConfig.model_fields) | set(self.method_sections())

    def distill_dict(self) -> dict[str, Any]:
        """The part a trainable reads (JSON-safe): experiment, student and kd sections."""
        out = self.model_dump(mode="json", include=self.distill_keys())
        # trial workers may run in another directory (Ray's trial dirs, other nodes): absolute paths
        for key in ("root", "train_list", "test_list", "val_list"):
            if out["data"].get(key):
                out["data"][key] = str(Path(out["data"][key]).resolve())
        out["output_dir"] = str(Path(out["output_dir"]).resolve())
        for role in ("teacher", "student"):
            if out[role].get("checkpoint"):
                out[role]["checkpoint"] = str(Path(out[role]["checkpoint"]).resolve())
        return out


def _field_path(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


def format_validation_error(source: str, error: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        path = _field_path(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see configs/ for the allowed keys)"
        got = item.get("input")
        shown = f" (got {got!r})" if item["type"] != "extra_forbidden" and not isinstance(got, dict) else ""
        lines.append(f"  {path}: {message}{shown}" if path else f"  {message}{shown}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"key {key!r} appears twice in one section (line {key_node.start_mark.line + 1}); "
                              "keep one")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"config {source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source} is not valid YAML: {exc}") from exc


def load_config(path: Union[str, Path], overrides: Optional[dict[str, Any]] = None) -> SweepConfig:
    """Read and validate a YAML config. Raises ConfigError (never anything else) on bad input."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; give a YAML file (see configs/)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"config {path} cannot be read as UTF-8 text ({exc}); give a YAML file") from None
    raw = read_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"config {path} is empty; start from a file in configs/ (e.g. configs/digits_sweep.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        if not all(parents) or not leaf:
            raise ConfigError(f"--set {dotted}: give a key path like student.train.lr")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {dotted}: {part} is not a section")
        node[leaf] = value
    try:
        # input side and normalisation follow the teacher's (else the student's) weights unless
        # data.* sets them; written into the config, so a logged or exported config states them
        return resolve_config(SweepConfig, raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(str(path), exc)) from None
    except FileCheckError as exc:
        raise ConfigError(f"invalid config {path}:\n  {exc.field}: {exc.message}") from None

"""The method registry: what a method is, in one object.

Each method module (trainables/kd.py, sla.py, ssd.py) registers one `Method`; `trainables.builtin_methods`
imports the built-in ones. The sweep, the proxy and teacher jobs, the Ray trainable, the
hyperparameter names and the config schema read from here, so a new method is its module (runner
+ `Method`), its loss file, a config, and one import line in trainables/builtin_methods.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union


@dataclass(frozen=True)
class OwnTeacher:
    """A teacher a method trains itself, once, before its trials (SSD: stages I-II). The sweep's
    driver and `augtune train` call `train`, log its epochs to one child run tagged `stage`, and
    reuse the checkpoint at `checkpoint(job_folder)` when it is there."""
    stage: str  # the MLflow stage tag (and run name) of its child run
    checkpoint: Callable[[Path], Path]  # job folder -> where its checkpoint lands
    # (cfg, data, job_folder, on_epoch, progress) -> that checkpoint
    train: Callable[..., Path]


# where a method's teacher comes from: none; a supervised network (the configured checkpoint, the
# given weights, or `augtune train teacher`); or one the method trains itself
TeacherSource = Union[Literal["none", "supervised"], OwnTeacher]


def always(cfg) -> bool:
    return True


def no_problem(cfg) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Method:
    name: str  # the value of search.method and the name of the config section
    section: type  # its config section (a trainables.experiment_config.Section)
    # (cfg: DistillConfig, data, seed, teacher_checkpoint, work_dir) -> a runner: run_epoch, finished,
    # total_epochs, epochs_done, show_progress, values (trainables.values.RunValues), make_data_parallel,
    # state_dict / load_state_dict (an EpochRunner has them all)
    build_runner: Callable[..., Any]
    teacher: TeacherSource = "none"
    # names a search may set besides lr/weight_decay/momentum/batch_size/epochs and kind.param
    hyperparameters: tuple[str, ...] = ()
    fixed_during_run: tuple[str, ...] = ()  # of those, what cannot change mid-run (PBT, schedules)
    one_label_per_image: bool = False  # refuses candidates that mix images or need a scoring network
    schedulable: bool = True  # PBT and replayed schedules (a multi-stage run is not)
    # whether a run of this config distils from the teacher (SSD from stage I trains its own)
    uses_teacher: Callable[[Any], bool] = always
    student_artifact: bool = False  # the runner's `model` is a plain student network: sweeps log the best one
    # (cfg: DistillConfig) -> what is wrong with the config for this method beyond its own section
    # (e.g. a setting that needs RGB data), naming the field; None when nothing is
    check_config: Callable[[Any], Optional[str]] = no_problem
    description: str = ""

    @property
    def has_teacher(self) -> bool:
        """A teacher is loaded or trained before the trials (and the proxy scores with it)."""
        return self.teacher != "none"

    def refuses(self, candidate) -> Optional[str]:
        """Why this method cannot train with `candidate` (a spaces.candidates.Candidate), or None."""
        if self.one_label_per_image and (candidate.mixes or candidate.scorer):
            return (f"{candidate.id} mixes images or needs a scoring network; {self.name} needs one label "
                    "per image: choose a non-mixing augmentation")
        return None

    def runner(self, cfg, *, data=None, seed: Optional[int] = None, teacher_checkpoint: Optional[str] = None,
               work_dir: Optional[Path] = None):
        return self.build_runner(cfg, data=data, seed=seed, teacher_checkpoint=teacher_checkpoint,
                                 work_dir=work_dir)

    def __setstate__(self, state: dict) -> None:
        # a Method unpickled in a Ray worker (it travels with its trainable) registers itself
        # there, so configs holding its section validate in that process too
        for key, value in state.items():
            object.__setattr__(self, key, value)
        REGISTRY.setdefault(self.name, self)


REGISTRY: dict[str, Method] = {}
BUILTIN_NAMES = ("kd", "sla", "ssd")  # section names known before their modules are imported (trainables/values.py)


def register(method: Method) -> Method:
    existing = REGISTRY.get(method.name)
    if existing is not None and existing is not method and existing.build_runner is not method.build_runner:
        raise ValueError(f"a method named {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(sorted(REGISTRY)) or 'none'}")
    return REGISTRY[name]


def method_names() -> set[str]:
    return set(REGISTRY) | set(BUILTIN_NAMES)

"""Typed schemas of the configs: Hydra validates overrides against them, so a wrong type is caught early.

The keys every task shares live here, with the bases that tasks extend (`DataSource`,
`TrainingRecipe`); each task's own schemas live in its package and are stored by `register_schemas`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from typing import TYPE_CHECKING, Any, Optional

from hydra.core.config_store import ConfigStore

if TYPE_CHECKING:
    from bench.tasks import TaskSpec


@dataclass
class DataSource:
    """Where a dataset comes from: a local path, or the built-in generator with its seed, image size and split sizes."""

    name: str = "shapes"
    source: str = "shapes"
    path: Optional[str] = None
    generator_seed: int = 0
    image_size: int = 32
    train_size: int = 0
    val_size: int = 0
    test_size: int = 0


@dataclass
class TrainingRecipe:
    """What every training protocol states; the global batch is kept whatever the world size."""

    name: str = "quick"
    source: str = ""
    global_batch: int = 128
    max_device_batch: int = 128
    epochs: int = 1
    optimizer: str = "sgd"
    lr: float = 0.1
    base_batch: int = 128  # lr is stated for this global batch and scaled linearly with it
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    """After warm-up: ``cosine`` (to 0), ``multistep`` (x ``gamma`` at each of ``milestones``, in epochs) or
    ``poly`` ((1 - progress) ** ``power``, BiSeNet's and DFANet's)."""
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    power: float = 0.9
    warmup_epochs: float = 0.0
    warmup_iters: int = 0
    """Linear warm-up from ``warmup_ratio`` x lr, over ``warmup_epochs`` or ``warmup_iters`` (whichever is set)."""
    warmup_ratio: float = 0.0
    flip: bool = True
    precision: str = "32-true"
    eval_batch: int = 256


@dataclass
class TrainerConfig:
    """Where and how Lightning runs the recipe."""

    name: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Optional[str] = None
    num_workers: int = 0
    channels_last: bool = True


@dataclass
class LauncherConfig:
    """How a sweep (``bench run -m``) runs its jobs: ``serial`` in this process, ``local`` processes in parallel,
    or ``slurm`` jobs through submitit. Every job runs the single-job command its record stores."""

    name: str = "serial"
    retries: int = 0
    """A failed job is run again (resuming from its checkpoint) up to this many times."""
    jobs: int = 2
    """local: jobs at once, each with its share of the CPU threads and of the visible GPUs."""
    cluster: str = "slurm"
    """slurm: submitit's executor, ``slurm``; ``local`` runs the same submission as local processes (tests)."""
    wait: bool = False
    """slurm: wait for the jobs to end (otherwise submit, print their ids and return)."""
    folder: Optional[str] = None
    """slurm: submitit's log folder (default ``runs_dir/sweeps/<sweep id>``)."""
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    nodes: int = 1
    tasks_per_node: int = 1
    """One task per GPU for DDP inside a job (Lightning reads SLURM's environment)."""
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    mem_gb: Optional[int] = None
    timeout_min: int = 240
    additional: dict[str, Any] = field(default_factory=dict)
    """Extra sbatch options, e.g. ``launcher.additional.constraint=a100``."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job, e.g. ``module load cuda``."""


@dataclass
class RunConfig:
    """Keys shared by every task."""

    task: Any = None  # the task's own schema (its task/<name>.yaml)
    data: Any = None  # the task's data/*.yaml, if it reads data
    recipe: Any = None  # the task's recipe/*.yaml, if it trains
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    op: str = "conv"
    backbone: Optional[str] = None
    op_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    results_dir: str = "leaderboards/results"
    runs_dir: str = "outputs/runs"
    resume: bool = False
    rerun: bool = False
    devices: Optional[int] = None
    num_nodes: Optional[int] = None


Bounds = tuple[Optional[float], Optional[float]]
RANGES: dict[str, Bounds] = {
    "seed": (0, 2**32 - 1),  # what numpy and Lightning's seed_everything accept
    "devices": (1, None), "num_nodes": (1, None),
    "trainer.devices": (1, None), "trainer.num_nodes": (1, None), "trainer.num_workers": (0, None),
    "data.image_size": (1, None), "data.train_size": (0, None), "data.val_size": (0, None), "data.test_size": (0, None),
    "recipe.global_batch": (1, None), "recipe.max_device_batch": (1, None), "recipe.eval_batch": (1, None),
    "recipe.base_batch": (1, None), "recipe.epochs": (1, None), "recipe.lr": (0, None),
    "recipe.weight_decay": (0, None), "recipe.momentum": (0, 1), "recipe.gamma": (0, None),
    "launcher.retries": (0, None), "launcher.jobs": (1, None), "launcher.nodes": (1, None),
    "launcher.tasks_per_node": (1, None), "launcher.gpus_per_node": (0, None), "launcher.cpus_per_task": (1, None),
    "launcher.timeout_min": (1, None),
    "recipe.warmup_epochs": (0, None), "recipe.warmup_iters": (0, None), "recipe.warmup_ratio": (0, 1),
}
"""Bounds (inclusive, None: open) of the keys every task shares; a task adds its own (`TaskSpec.ranges`)."""


def out_of_range(key: str, value: float, bounds: Bounds) -> str | None:
    """Why ``key=value`` is outside ``bounds``, or None when it is inside."""
    low, high = bounds
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if high is None:
        return f"{key}={value} is out of range: it must be at least {low}."
    if low is None:
        return f"{key}={value} is out of range: it must be at most {high}."
    return f"{key}={value} is out of range: it must be between {low} and {high}."


@dataclass
class UpsampleKeys:
    """Top-level keys of a task whose networks have upsample slots (`TaskSpec.upsample_slots`)."""

    upsampler: Optional[str] = None  # any upsample-kind operator; None: the task's stock upsampler
    upsampler_kwargs: dict[str, Any] = field(default_factory=dict)


def run_schema(spec: TaskSpec) -> type:
    """`RunConfig` plus the top-level keys ``spec`` accepts (its own, and the upsample slots' if it has them)."""
    bases = [b for b in (spec.keys, UpsampleKeys if spec.upsample_slots else None) if b is not None]
    return make_dataclass(f"{spec.name.title().replace('_', '')}RunConfig", [], bases=(*bases, RunConfig))


def task_keys(spec: TaskSpec) -> list[str]:
    """Top-level keys only ``spec`` accepts."""
    return [f.name for f in fields(run_schema(spec)) if f.name not in {g.name for g in fields(RunConfig)}]


def register_schemas(spec: TaskSpec) -> None:
    """Store the schemas of ``spec`` for its YAML configs' defaults lists (``- <task>_schema``).

    A task without a ``task/<name>.yaml`` gets its schema stored as that config, so a task can be pure Python.
    """
    store = ConfigStore.instance()
    store.store(name="run_schema", node=run_schema(spec))
    if spec.config_dir is None or not (spec.config_dir / "task" / f"{spec.name}.yaml").exists():
        store.store(group="task", name=spec.name, node=spec.task_schema)
    for group, schema in (("task", spec.task_schema), ("data", spec.data_schema), ("recipe", spec.recipe_schema)):
        if schema is not None:
            store.store(group=group, name=f"{spec.name}_schema", node=schema)

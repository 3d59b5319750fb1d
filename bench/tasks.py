"""The task plug-in API: a task declares itself once, as a :class:`TaskSpec`, and every `bench` command reads it.

Tasks are found through the ``bench.tasks`` entry-point group, the built-in ones included (they are
declared in this project's ``pyproject.toml`` like any plugin's)::

    [project.entry-points."bench.tasks"]
    mytask = "my_package.task:TASK"     # a TaskSpec, or a module / callable that calls register_task

A spec names the task's metrics (with their direction), its config schemas and YAML folder, the
top-level keys only it accepts, its leaderboard baseline and what its efficiency figures cover. A
broken task plugin warns with its name and is skipped; the suite keeps working.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bench.errors import ConfigError, unknown_name_message
from bench.plugins import load_entry_points

GROUP = "bench.tasks"
BUILTIN = "built-in"
OWN_DISTRIBUTION = "bench"


@dataclass(frozen=True)
class Metric:
    """One reported figure: its direction, unit and display scale (a fraction shown in % has scale 100)."""

    name: str
    higher_is_better: bool = True
    unit: str = ""
    scale: float = 1.0
    floor: float | None = None
    """Values below this are sentinels for "not measured" (COCO's -1 when a split has no such objects)."""
    description: str = ""
    title: str = ""
    """The column label's name where ``name`` is a dotted path into the record (``stages.trained.params``) rather
    than a test metric: a figure the record keeps elsewhere, shown beside the metrics."""

    @property
    def label(self) -> str:
        """Column / axis label: ``top1 (%)``, ``rmse (m)``."""
        name = self.title or self.name
        return f"{name} ({self.unit})" if self.unit else name

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass
class TaskResult:
    """What a task run produced; the runner turns it into the result record."""

    metrics: dict[str, float] = field(default_factory=dict)
    efficiency: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] | None = None
    world_size: int = 1
    precision: str | None = None
    backbone: str | None = None
    op_metadata: dict[str, Any] | None = None
    batch_plan: dict[str, Any] | None = None
    steps: int | None = None
    resumed_from_step: int | None = None
    """Trained runs only: the optimizer step a resumed run continued from (None: trained from scratch)."""
    curves: dict[str, list[list[float]]] | None = None
    """Trained runs only: compact learning curves, ``name -> [[step or epoch, value], ...]``."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Task-specific record fields (``upsampler``, ``detector``, ``mmdet_config``, ...)."""

    def record_fields(self) -> dict[str, Any]:
        """The record's top-level fields from this result (provenance fields excluded).

        Task-specific ``fields`` may not replace what every record has (its config, status, metrics, ...).
        """
        if clash := sorted(set(self.fields) & RESERVED_FIELDS):
            raise ValueError(f"a task's own record fields may not be named {', '.join(clash)}")
        out: dict[str, Any] = {"metrics": self.metrics, "efficiency": self.efficiency}
        for name in ("backbone", "op_metadata", "batch_plan", "curves"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.steps is not None:
            out.update(steps=self.steps, resumed_from_step=self.resumed_from_step)
        return {**out, **self.fields}


@dataclass(frozen=True)
class PerModel:
    """A baseline value that depends on the row's model: the stock upsampler of each segmentation network."""

    field: str
    values: Mapping[str, str]

    def __call__(self, record: Mapping[str, Any]) -> str | None:
        return self.values.get(str(record.get(self.field)))

    def __str__(self) -> str:
        return "the stock one of the " + self.field + " (" + ", ".join(f"{k}: {v}" for k, v in self.values.items()) + ")"


TaskFn = Callable[[DictConfig, str], TaskResult]
RESERVED_FIELDS = {"schema_version", "run_id", "task", "op", "op_kwargs", "data", "recipe", "seed", "created",
                   "status", "error", "metrics", "metrics_missing", "efficiency", "config", "provenance",
                   "wall_time_s", "backbone", "op_metadata", "batch_plan", "steps", "resumed_from_step", "curves"}
"""Record fields every run has or the runner sets; `TaskResult.fields` cannot replace them."""
BASELINE_FIELDS = ("op", "upsampler")
"""Record fields a leaderboard baseline rule may replace beside the task's model keys (the row's other fields
stay)."""


@dataclass(frozen=True)
class TaskSpec:
    """Everything `bench` needs to know about a task, declared in the task's own package."""

    name: str
    description: str
    run: TaskFn
    """``run(cfg, run_dir) -> TaskResult``; ``run_dir`` is where the run keeps checkpoints and logs."""
    metrics: tuple[Metric, ...]
    primary: str
    task_schema: type
    """The dataclass of the ``task`` config; it is the task's config itself where no ``task/<name>.yaml`` exists."""
    config_dir: Path | None = None
    """Folder of the task's YAML configs: ``task/<name>.yaml`` (optional), ``data/*.yaml``, ``recipe/*.yaml``."""
    data_schema: type | None = None
    recipe_schema: type | None = None
    keys: type | None = None
    """A dataclass of the top-level keys only this task accepts (``detector``); other tasks refuse them."""
    upsample_slots: bool = False
    """The task's networks upsample learned features: ``upsampler=`` / ``upsampler_kwargs.*`` are accepted."""
    defaults: Mapping[str, str] = field(default_factory=dict)
    """Default ``data`` and ``recipe`` choices (``{"data": "shapes", "recipe": "quick"}``)."""
    baseline: Mapping[str, str | PerModel] = field(default_factory=lambda: {"op": "conv"})
    """Leaderboard deltas: the baseline row is the row's configuration with these fields replaced
    (`BASELINE_FIELDS` and the ``model_keys``: depth's non-learned row); a `PerModel` value depends on the
    row's model."""
    op_kinds: tuple[str, ...] = ("conv",)
    """The operator kinds ``op=`` may name; ``op=all`` sweeps them."""
    model_keys: tuple[str, ...] = ()
    """Record fields that name the model beside the backbone (``detector``): rows never mix them."""
    section_keys: tuple[str, ...] = ()
    """Record fields that split the task's leaderboard into sections (depth's ``scale``): never compared."""
    default_model: str = ""
    """The model a run builds when none is named, for `bench list tasks` (``resnet20``)."""
    profiled: str = ""
    """What the efficiency figures cover (``backbone + FPN at min_size``)."""
    cost_plots: bool = True
    """Plot the primary metric against GMACs and latency (off where the primary metric is a cost)."""
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Inclusive bounds (None: open) of the task's own numeric keys, checked before anything runs."""
    validate: Callable[[DictConfig], None] | None = None
    """Task-specific config checks, raising :class:`ConfigError` before anything runs."""
    source: str = BUILTIN

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if self.primary not in names:
            raise ValueError(f"task {self.name!r}: primary metric {self.primary!r} is not one of its metrics {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r}: metric names repeat: {names}")
        if unknown := sorted(set(self.baseline) - {*BASELINE_FIELDS, *self.model_keys}):
            raise ValueError(f"task {self.name!r}: a baseline rule can set {', '.join(BASELINE_FIELDS)} and the "
                             f"model keys, not "
                             f"{', '.join(unknown)}")

    @property
    def primary_metric(self) -> Metric:
        return next(m for m in self.metrics if m.name == self.primary)

    def options(self, group: str) -> list[str]:
        """Names of this task's ``data`` or ``recipe`` configs (its YAML files)."""
        folder = self.config_dir / group if self.config_dir is not None else None
        return sorted(p.stem for p in folder.glob("*.yaml")) if folder is not None and folder.is_dir() else []


class TaskPluginWarning(UserWarning):
    """An installed task plugin could not be loaded."""


_TASKS: dict[str, TaskSpec] = {}
_loaded: set[tuple[str, str]] = set()


_source: list[str] = [BUILTIN]


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add ``spec`` to the registry (from the distribution being loaded, if any); a second of one name is refused."""
    if spec.source != _source[-1]:
        spec = replace(spec, source=_source[-1])
    if spec.name in _TASKS and _TASKS[spec.name] != spec:
        raise ValueError(f"task {spec.name!r} is already registered (from {_TASKS[spec.name].source})")
    _TASKS[spec.name] = spec
    return spec


def _register_entry_point(ep: EntryPoint, dist: str) -> None:
    """A ``bench.tasks`` entry point: a TaskSpec, or a module or callable that registers tasks; the tasks it
    registers get its distribution as their source."""
    _source.append(BUILTIN if dist == OWN_DISTRIBUTION else dist)
    try:
        target = ep.load()
        if isinstance(target, TaskSpec):
            register_task(target)
        elif callable(target):
            target()
    finally:
        _source.pop()


def load_tasks() -> None:
    """Load every not-yet-loaded ``bench.tasks`` entry point; a failing one warns and is skipped."""
    load_entry_points(GROUP, _loaded, _register_entry_point, TaskPluginWarning, "task")


def list_tasks() -> list[str]:
    """Registered task names."""
    load_tasks()
    return sorted(_TASKS)


def get_task(name: str) -> TaskSpec:
    """The spec of task ``name``; an unknown name is a :class:`ConfigError` with the available ones."""
    load_tasks()
    if not _TASKS:
        raise ConfigError(f"Unknown task {name!r}: no task is registered at all, so the `bench.tasks` entry points "
                          "of this installation are missing. Reinstall bench (`make install`, or "
                          "`pip install -e .` in the checkout).")
    if name not in _TASKS:
        raise ConfigError(unknown_name_message("task", name, list(_TASKS)))
    return _TASKS[name]


def find_task(name: str) -> TaskSpec | None:
    """The spec of task ``name`` if one is registered (records of an uninstalled task have none)."""
    load_tasks()
    return _TASKS.get(name)

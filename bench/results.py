"""Result records: one JSON file per run, with everything needed to trust and reproduce it.

Records are written atomically (temporary file, fsync, rename), so a crash or interruption never
leaves a half-written record and never touches records that already exist.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import tempfile
import uuid
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
STATUSES = ("running", "success", "failed", "diverged", "interrupted")


class RecordError(ValueError):
    """A result file that is unreadable or does not follow the record schema, named by path with the reason."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite JSON number: no NaN or Infinity, no numeric string, no boolean (the leaderboard does arithmetic on it)."""
Count = Annotated[int, Field(strict=True, ge=0)]
"""A non-negative JSON integer: no string, float or boolean."""


NOT_IDENTITY = ("results_dir", "runs_dir", "resume", "rerun", "launcher")
"""Keys that do not change what a run computes, so they stay out of its configuration hash (and out of the
leaderboard's reproduce commands)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Latency(_Open):
    median: Number = Field(ge=0)
    iqr: Number = Field(ge=0)
    batch: int = Field(ge=1)


class BaselineRatios(_Open):
    """Latency over a baseline network's, timed interleaved (`task.baseline`); ``batch_<n>`` fields hold ratios."""

    op: str
    rounds: int = Field(ge=1)
    processes: int = Field(default=1, ge=1)
    per_process: Optional[list[dict[str, float]]] = None
    """Each fresh process's ratios when ``processes`` > 1; the batch_<n> fields are their medians."""

    @model_validator(mode="after")
    def _positive_ratios(self) -> BaselineRatios:
        fields = [(self.model_extra or {}).items(), *(run.items() for run in self.per_process or [])]
        for key, value in (item for items in fields for item in items):
            if not (re.fullmatch(r"batch_[0-9]+", key) and _is_number(value) and value > 0):
                raise ValueError(f"{key}={value!r}: expected batch_<n> fields holding positive latency ratios")
        return self


class Efficiency(_Open):
    params: Optional[Count] = None
    macs: Optional[Count] = None
    latency_ms: Optional[Latency] = None
    throughput_per_s: Optional[Number] = Field(default=None, ge=0)
    vs_baseline: Optional[BaselineRatios] = None


class Hardware(_Open):
    label: Optional[str] = None


class Provenance(_Open):
    command: str
    git_commit: Optional[str]
    git_dirty: Optional[bool]
    python: str
    versions: dict[str, str]
    config_hash: str
    start_time: str
    end_time: Optional[str] = None
    hardware: Optional[Hardware] = None
    precision: Optional[str] = None


class RunConfig(_Open):
    """The composed configuration of a run; only the parts the leaderboard reads are checked."""

    data: Optional[dict[str, Any]] = None
    upsampler_kwargs: Optional[dict[str, Any]] = None


class ResultRecord(_Open):
    """The schema every result record follows; extra task-specific fields are allowed."""

    schema_version: Literal[1]
    run_id: str
    task: str
    op: Optional[str]
    op_kwargs: dict[str, Any]
    backbone: Optional[str]
    data: Optional[str]
    recipe: Optional[str]
    seed: Optional[int]
    status: Literal[STATUSES]
    metrics: dict[str, Number]
    metrics_missing: Optional[dict[str, str]] = None
    """Metrics a run could not report, ``name -> reason`` (e.g. ``not finite: nan``); never also in ``metrics``."""
    efficiency: Efficiency
    config: RunConfig
    provenance: Provenance
    created: Optional[str] = None
    upsampler: Optional[str] = None
    error: Optional[str] = None
    curves: Optional[dict[str, list[tuple[Number, Number]]]] = None
    """Trained runs: compact learning curves, ``name -> [[step or epoch, value], ...]`` (older records have none)."""

    @model_validator(mode="after")
    def _missing_means_absent(self) -> ResultRecord:
        both = sorted(set(self.metrics) & set(self.metrics_missing or {}))
        if both:
            raise ValueError(f"metrics {', '.join(both)} are both reported and listed in metrics_missing")
        return self


def _validated(record: dict[str, Any], where: str) -> ResultRecord:
    try:
        return ResultRecord.model_validate(record)
    except ValidationError as err:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:5])
        raise RecordError(f"{where}: not a valid result record ({reasons})") from None


def validate_record(record: dict[str, Any], where: str = "record") -> None:
    """Raise :class:`RecordError` naming ``where`` if ``record`` does not follow :class:`ResultRecord`."""
    _validated(record, where)


def read_record(path: str | Path) -> dict[str, Any]:
    """Load and validate one result file; a corrupt or invalid file raises :class:`RecordError` with its path.

    Returns the validated data (numbers as the schema types them, curve points as lists, extra fields kept),
    not the raw JSON: what a caller reads is what was checked.
    """
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: cannot read a JSON record ({err})") from None
    if not isinstance(record, dict):
        raise RecordError(f"{path}: not a valid result record (a JSON object is expected)")
    return _validated(record, str(path)).model_dump(mode="json", exclude_unset=True)


def _omit_non_finite_metrics(record: dict[str, Any]) -> None:
    """Move every NaN or infinite metric of ``record`` to ``metrics_missing`` with the reason (in place)."""
    metrics, missing = record.get("metrics"), record.get("metrics_missing") or {}
    if not (isinstance(metrics, dict) and isinstance(missing, dict)):
        return  # not a record: validation says why
    bad = {name: value for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)}
    if bad:
        record["metrics"] = {name: value for name, value in metrics.items() if name not in bad}
        record["metrics_missing"] = {**missing, **{name: f"not finite: {value!r}" for name, value in bad.items()}}


def _non_finite(value: Any, where: str = "") -> str | None:
    """The dotted location of the first NaN or infinite float in ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else where or "(top level)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        if (found := _non_finite(item, f"{where}.{key}" if where else str(key))) is not None:
            return found
    return None


PACKAGES = ("bench", "torch", "torchvision", "timm", "lightning", "mmcv", "mmdet", "mmengine", "hydra-core")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: str = "cpu") -> dict[str, Any]:
    """Where latencies were measured: results from different hardware are never ranked together."""
    from bench.measure import malloc_policy

    # Results are bit-identical only for the same thread count and vector ISA: oneDNN's kernels, and so the
    # order of float sums, depend on both (README, Results).
    info: dict[str, Any] = {"device": device, "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "malloc": malloc_policy()}
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(index)
        info["gpu_count"] = torch.cuda.device_count()
    threads = info["torch_threads"]
    info["label"] = info.get("gpu") or f"{info['cpu']} ({threads} thread{'' if threads == 1 else 's'})"
    return info


def provenance(command: str) -> dict[str, Any]:
    """Code version, library versions and ``command``, the exact command that reproduces the run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    # Result records and generated leaderboards are outputs, not code: they never make the tree dirty.
    status = _git("status", "--porcelain", "--", ":/", ":(exclude,top)leaderboards")
    return {
        "command": command,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def new_record(task: str, config: dict[str, Any], command: str, config_hash: str = "") -> dict[str, Any]:
    """A record skeleton for one run; the runner fills status, metrics and efficiency."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex[:12],
        "task": task,
        "op": config.get("op"),
        "op_kwargs": config.get("op_kwargs", {}),
        "backbone": config.get("backbone"),
        "data": (config.get("data") or {}).get("name"),
        "recipe": (config.get("recipe") or {}).get("name"),
        "seed": config.get("seed"),
        "created": created,
        "status": "running",
        "metrics": {},
        "efficiency": {},
        "config": config,
        "provenance": {**provenance(command), "config_hash": config_hash, "start_time": created},
    }


def follow_umask(path: Path) -> None:
    """Give ``path`` the permissions a plain file (or folder) gets from the umask; temp-file helpers make it private."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def write_record(record: dict[str, Any], results_dir: str | Path) -> Path:
    """Validate ``record`` and write it atomically to ``results_dir/<task>/<time>-<op>-s<seed>-<id>.json``.

    A NaN or infinite metric is never written: it is removed from ``metrics`` and named in ``metrics_missing``
    with the reason (``record`` is updated in place, so the caller sees what was written). A non-finite number
    anywhere else is refused with its location: records are strict JSON (no NaN, no Infinity).
    """
    _omit_non_finite_metrics(record)
    validate_record(record)
    if (where := _non_finite(record)) is not None:
        raise RecordError(f"record: {where} is not a finite number; JSON records hold no NaN or Infinity")
    config = record["config"]
    stamp = record["created"].replace(":", "").replace("-", "")[:15]
    name = f"{stamp}-{config.get('op', 'model')}-s{config.get('seed', 0)}-{record['run_id']}.json"
    folder = Path(results_dir) / record["task"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json.part")  # no *.json glob sees it half-written
    try:
        follow_umask(Path(tmp))  # mkstemp makes it private; a results folder shared by a group must stay readable
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

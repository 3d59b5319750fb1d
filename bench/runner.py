"""Run one composed config through its task and keep the outcome as a result record.

Checkpoints live in ``runs_dir/<task>-<config hash>``, so rerunning the same configuration with
``resume=true`` continues it. Only the global rank-zero process writes the record. A run that raises
is recorded as ``failed`` (``diverged`` for a NaN/Inf loss, ``interrupted`` for Ctrl-C), never as a
success, and never as a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError
from bench.results import new_record, write_record
from bench.tasks import get_task
from operators.registry import OperatorError

NOT_IDENTITY = ("results_dir", "runs_dir", "resume")
"""Keys that do not change what a run computes, so they stay out of its configuration hash."""


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of what a run computes (the composed config minus where its outputs go)."""
    identity = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _status(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return "diverged" if isinstance(err, FloatingPointError) else "failed"


def run(cfg: DictConfig, command: str) -> tuple[dict[str, Any], Path | None]:
    """Seed, run ``cfg.task``, and write its record; returns the record and its path (None off rank zero).

    ``command`` is the single-run command line that reproduces this run; it goes into the record.
    """
    task = get_task(cfg.task.name)
    config = OmegaConf.to_container(cfg, resolve=True)
    digest = config_hash(config)
    record = new_record(cfg.task.name, config, command, digest)
    run_dir = Path(cfg.runs_dir) / f"{cfg.task.name}-{digest[:12]}"
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()

    def finish(**fields: Any) -> Path | None:
        record.update(fields)
        record["provenance"].update(end_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    wall_time_s=round(time.perf_counter() - start, 3))
        record["wall_time_s"] = record["provenance"]["wall_time_s"]
        return write_record(record, cfg.results_dir) if rank_zero_only.rank == 0 else None

    try:
        outcome = task.run(cfg, str(run_dir))
    except (ConfigError, OperatorError):
        raise  # a request that cannot be built (mistake or refused pairing), not a result
    except BaseException as err:
        finish(status=_status(err), error=f"{type(err).__name__}: {err}")
        raise
    record["provenance"].update(world_size=outcome.world_size, precision=outcome.precision,
                                hardware=outcome.hardware)
    return record, finish(status="success", **outcome.record_fields())

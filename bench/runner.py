"""Run one composed config through its task and keep the outcome as a result record."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.config import ConfigError
from operators.registry import OperatorError
from bench.results import new_record, write_record
from tasks import get_task


def run(cfg: DictConfig, command: str) -> tuple[dict[str, Any], Path]:
    """Seed, run ``cfg.task``, and write its record (status ``failed`` with the error if it raised).

    ``command`` is the single-run command line that reproduces this run; it goes into the record.
    """
    task = get_task(cfg.task.name)
    record = new_record(cfg.task.name, OmegaConf.to_container(cfg, resolve=True), command)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    try:
        record.update(task(cfg))
        record["status"] = "success"
    except (ConfigError, OperatorError):
        raise  # a request that cannot be built (mistake or refused pairing), not a result
    except Exception as err:
        record.update(status="failed", error=f"{type(err).__name__}: {err}",
                      wall_time_s=round(time.perf_counter() - start, 3))
        write_record(record, cfg.results_dir)
        raise
    record["wall_time_s"] = round(time.perf_counter() - start, 3)
    return record, write_record(record, cfg.results_dir)

"""Run one composed config through its task and keep the outcome as a result record.

Every run keeps its checkpoints and logs in a folder of its own, ``runs_dir/<task>-<config hash>/<run id>``:
a rerun of the same configuration starts from scratch beside the earlier runs, and ``resume=true``
continues from the newest checkpoint among them. Only the global rank-zero process writes the record. A run that raises
is recorded as ``failed`` (``diverged`` for a NaN/Inf loss, ``interrupted`` for Ctrl-C), never as a
success, and never as a half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from bench.errors import ConfigError
from bench.results import NOT_IDENTITY, new_record, write_record
from bench.tasks import get_task
from operators.registry import OperatorError

RUNNING = "running.json"
"""Written in a run's folder while it runs (process id and host), touched every `HEARTBEAT_S`, removed once its
record is written: a marker whose process is gone, or (on another host) that stopped being touched, is a run
that was killed or lost its node (`bench sweep status`, and sweeps rerun it)."""
HEARTBEAT_S = 60.0


class RunMarker:
    """The `RUNNING` marker of one run: written, kept fresh by a daemon thread, removed by :meth:`close`."""

    def __init__(self, run_dir: Path, command: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path, self.stop = run_dir / RUNNING, threading.Event()
        self.path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command}))
        threading.Thread(target=self._beat, daemon=True).start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def close(self) -> None:
        self.stop.set()
        self.path.unlink(missing_ok=True)


def config_hash(config: dict[str, Any]) -> str:
    """Stable hash of what a run computes (the composed config minus where its outputs go)."""
    identity = {k: v for k, v in config.items() if k not in NOT_IDENTITY}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


ENV_READ = re.compile(r"\$\{oc\.env:([^,}]+)")
"""An interpolation that reads an environment variable (``${oc.env:NAME}``): its value stays out of records."""


def record_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as records keep it: resolved, except values read from the environment (maybe secrets)."""
    def keep(raw: Any, resolved: Any) -> Any:
        if isinstance(raw, dict):
            return {key: keep(raw[key], resolved[key]) for key in raw}
        if isinstance(raw, list):
            return [keep(a, b) for a, b in zip(raw, resolved)]
        return raw if isinstance(raw, str) and ENV_READ.search(raw) else resolved

    return keep(OmegaConf.to_container(cfg, resolve=False), OmegaConf.to_container(cfg, resolve=True))


def redact(text: str, cfg: DictConfig) -> str:
    """``text`` with every value the config read from the environment replaced by its interpolation."""
    names = set(ENV_READ.findall(json.dumps(OmegaConf.to_container(cfg, resolve=False), default=str)))
    for name in sorted(names):
        if value := os.environ.get(name.strip()):
            text = text.replace(value, f"${{oc.env:{name.strip()}}}")
    return text


def _status(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted"
    return "diverged" if isinstance(err, FloatingPointError) else "failed"


def check_writable(results_dir: str) -> None:
    """Raise :class:`ConfigError` if records cannot be written to ``results_dir`` (checked before any work)."""
    folder = Path(results_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-writable-"):
            pass
    except OSError as err:
        raise ConfigError(f"results_dir={results_dir} cannot hold result records ({err.strerror or err}); "
                          "point results_dir at a folder you can write to.") from None


def job_hash(cfg: DictConfig) -> str:
    """The configuration hash a run of ``cfg`` records (what sweeps look finished jobs up by)."""
    return config_hash(record_config(cfg))


def config_runs(cfg: DictConfig, digest: str) -> Path:
    """The folder holding every run of one configuration (each in a subfolder named by its run id)."""
    return Path(cfg.runs_dir) / f"{cfg.task.name}-{digest[:12]}"


def run(cfg: DictConfig, command: str) -> tuple[dict[str, Any], Path | None]:
    """Seed, run ``cfg.task``, and write its record; returns the record and its path (None off rank zero).

    ``command`` is the single-run command line that reproduces this run; it goes into the record. A run
    that raises is recorded (failed, diverged, interrupted) and the exception gets a note saying where.
    """
    if rank_zero_only.rank == 0:
        check_writable(cfg.results_dir)
    task = get_task(cfg.task.name)
    config = record_config(cfg)
    digest = config_hash(config)
    record = new_record(cfg.task.name, config, command, digest)
    run_dir = config_runs(cfg, digest) / record["run_id"]  # never an earlier run's
    record["provenance"]["run_dir"] = redact(str(run_dir), cfg)
    start = time.perf_counter()
    marker = RunMarker(run_dir, command) if rank_zero_only.rank == 0 else None

    def finish(**fields: Any) -> Path | None:
        record.update(fields)
        record["provenance"].update(end_time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    wall_time_s=round(time.perf_counter() - start, 3))
        record["wall_time_s"] = record["provenance"]["wall_time_s"]
        if rank_zero_only.rank != 0:
            return None
        path = write_record(record, cfg.results_dir)
        marker.close()
        return path

    try:
        torch.manual_seed(cfg.seed)
        outcome = task.run(cfg, str(run_dir))
    except (ConfigError, OperatorError) as err:  # a request that cannot be built (mistake, refused pairing)
        if marker is not None:
            marker.close()
        if (safe := redact(str(err), cfg)) != str(err):
            raise type(err)(safe) from None
        raise
    except BaseException as err:
        path = finish(status=_status(err), error=redact(f"{type(err).__name__}: {err}", cfg))
        if path is not None:
            err.add_note(f"recorded as status={record['status']}: {path}")
        raise
    record["provenance"].update(world_size=outcome.world_size, precision=outcome.precision,
                                hardware=outcome.hardware)
    return record, finish(status="success", **outcome.record_fields())

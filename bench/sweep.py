"""Sweeps (`bench run -m`): every job through a launcher, finished jobs skipped, each job's state on demand.

A job is one composed config plus the single-job command that reproduces it, the command its record
stores. Before anything runs, each job is looked up by its configuration hash (which includes the seed) in
``results_dir``: a job with a success record is done and skipped (``rerun=true`` runs it again), a job still
running elsewhere is left alone, and a job whose earlier attempt left checkpoints resumes from them. So a
sweep killed at any point (even with SIGKILL) is finished by running the same command again, and nothing
finished is lost or repeated. Launchers (``launcher=``): ``serial`` runs the jobs in this process, ``local``
as parallel processes, ``slurm`` as SLURM jobs through submitit; ``launcher.retries`` reruns a failed job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench.errors import USAGE_EXIT, ConfigError
from bench.leaderboard import collect
from bench.runner import HEARTBEAT_S, RUNNING, config_runs, job_hash

@dataclass
class Job:
    """One run of a sweep: its overrides, composed config, the command that reproduces it, and its hash."""

    command: str
    overrides: list[str]
    cfg: DictConfig
    digest: str

    @property
    def line(self) -> str:
        return shlex.join(["bench", self.command, *self.overrides])

    def resumed(self) -> Job:
        """The same job continuing from the checkpoints an earlier attempt left (if any; else from scratch)."""
        if any(o.startswith("resume=") for o in self.overrides):
            return self
        cfg = self.cfg.copy()
        cfg.resume = True
        return Job(self.command, [*self.overrides, "resume=true"], cfg, self.digest)


@dataclass
class JobState:
    """Where a job stands: ``done``, ``failed``, ``diverged``, ``interrupted``, ``running`` or ``not started``."""

    state: str
    where: str = ""
    detail: str = ""


SWEEP_KEYS = ("launcher", "rerun")
"""Overrides that steer the sweep, not the run: a job's own command (and its record) leaves them out."""


def make_jobs(command: str, sweep: Sequence[list[str]], configs: Sequence[DictConfig]) -> list[Job]:
    """The sweep's jobs, each with its single-job overrides (the sweep-level keys dropped)."""
    def own(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("+~")
        return key.split(".", 1)[0] not in SWEEP_KEYS

    return [Job(command, [o for o in overrides if own(o)], cfg, job_hash(cfg))
            for overrides, cfg in zip(sweep, configs)]


def records_by_hash(results_dir: str, task: str) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """The valid records of ``task`` in ``results_dir``, by configuration hash, oldest first."""
    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, record in collect([Path(results_dir) / task])[0]:
        found.setdefault(record["provenance"]["config_hash"], []).append((path, record))
    for runs in found.values():
        runs.sort(key=lambda run: run[1]["created"])
    return found


STALE_AFTER_S = 5 * HEARTBEAT_S
"""A marker on another host not touched for this long belongs to a run whose node is gone."""


def _alive(marker: dict[str, Any], path: Path) -> tuple[bool, str]:
    """Whether the run a marker belongs to still runs: its process on this host, its heartbeat on another."""
    if marker.get("host") != socket.gethostname():
        fresh = time.time() - path.stat().st_mtime < STALE_AFTER_S
        return fresh, f"on {marker.get('host')}" + ("" if fresh else f", no heartbeat for {STALE_AFTER_S:.0f} s")
    try:
        os.kill(int(marker["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False, "its process is gone"
    return True, f"pid {marker['pid']}"


def state_of(job: Job, records: dict[str, list[tuple[Path, dict[str, Any]]]]) -> JobState:
    """The job's state from its records and the run markers in its configuration's run folder."""
    runs = records.get(job.digest, [])
    if done := [path for path, record in runs if record["status"] == "success"]:
        return JobState("done", str(done[-1]))
    for marker_path in sorted(config_runs(job.cfg, job.digest).glob(f"*/{RUNNING}")):
        try:
            marker = json.loads(marker_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        alive, why = _alive(marker, marker_path)
        if alive:
            return JobState("running", str(marker_path.parent), why)
        if not runs or marker_path.stat().st_mtime > datetime.fromisoformat(runs[-1][1]["created"]).timestamp():
            return JobState("interrupted", str(marker_path.parent), f"killed ({why}), no record left")
    if runs:
        path, record = runs[-1]
        return JobState(record["status"], str(path), next(iter((record.get("error") or "").splitlines()), "")[:160])
    return JobState("not started")


def states(jobs: Sequence[Job]) -> list[JobState]:
    cache: dict[tuple[str, str], dict] = {}
    out = []
    for job in jobs:
        key = (str(job.cfg.results_dir), str(job.cfg.task.name))
        if key not in cache:
            cache[key] = records_by_hash(*key)
        out.append(state_of(job, cache[key]))
    return out


def has_attempt(job: Job) -> bool:
    """An earlier attempt of this configuration left a run folder (so the job resumes from its checkpoints)."""
    folder = config_runs(job.cfg, job.digest)
    return folder.is_dir() and any(p.is_dir() for p in folder.iterdir())


def pending(jobs: Sequence[Job], say: Callable[[str], None]) -> list[Job]:
    """The jobs to launch: not done (unless ``rerun=true``) and not running; resumed where an attempt exists."""
    todo, queued = [], set()
    for job, state in zip(jobs, states(jobs)):
        if job.digest in queued:
            say(f"the same configuration as an earlier job of this sweep, skipped: {job.line}")
        elif state.state == "done" and not job.cfg.rerun:
            say(f"done already, skipped: {job.line} ({state.where})")
        elif state.state == "running":
            say(f"running already, left alone: {job.line} ({state.where}, {state.detail})")
        else:
            todo.append(job.resumed() if has_attempt(job) else job)
            queued.add(job.digest)
    return todo


def python_command(job: Job) -> list[str]:
    """The job's single-job command, run by this interpreter (``python -m bench``)."""
    return [sys.executable, "-m", "bench", job.command, *job.overrides]


def run_serial(jobs: Sequence[Job], retries: int, run_one: Callable[[Job], bool]) -> int:
    """Each job in this process; ``run_one`` returns False for a failure that a retry may fix. Failures."""
    failed = 0
    for job in jobs:
        ok = run_one(job)
        for _ in range(retries):
            if ok:
                break
            ok = run_one(job.resumed())
        failed += not ok
    return failed


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def run_local(jobs: Sequence[Job], launcher: DictConfig, log_dir: Path, say: Callable[[str], None]) -> int:
    """``launcher.jobs`` processes at a time, each with its share of CPU threads and GPUs and its own log."""
    slots = int(launcher.jobs)
    threads = max(1, (os.cpu_count() or 1) // slots)
    gpus = _gpu_ids()
    share = [gpus[i::slots] for i in range(slots)]
    log_dir.mkdir(parents=True, exist_ok=True)
    queue: deque[tuple[int, Job, int]] = deque((i, job, 0) for i, job in enumerate(jobs))
    running: dict[int, tuple[subprocess.Popen, int, Job, int]] = {}
    failed = 0
    while queue or running:
        while queue and len(running) < slots:
            index, job, attempt = queue.popleft()
            slot = next(s for s in range(slots) if s not in running)
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(share[slot]) or ""
            log = log_dir / f"job-{index:03d}-attempt{attempt}.log"
            with log.open("w") as out:
                proc = subprocess.Popen(python_command(job), stdout=out, stderr=subprocess.STDOUT, env=env)
            say(f"started job {index + 1}/{len(jobs)} (pid {proc.pid}, {threads} threads, log {log}): {job.line}")
            running[slot] = (proc, index, job, attempt)
        time.sleep(0.2)
        for slot, (proc, index, job, attempt) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            if proc.returncode == 0:
                say(f"finished job {index + 1}: {job.line}")
            elif attempt < int(launcher.retries) and proc.returncode != USAGE_EXIT:
                say(f"job {index + 1} failed (exit {proc.returncode}); retrying from its checkpoint")
                queue.append((index, job.resumed(), attempt + 1))
            else:
                say(f"job {index + 1} failed (exit {proc.returncode}, log {log_dir}): {job.line}")
                failed += 1
    return failed


def slurm_parameters(launcher: DictConfig, name: str) -> dict[str, Any]:
    """submitit's parameters for ``launcher`` (unset ones left to the cluster's defaults)."""
    params = {"name": name, "timeout_min": launcher.timeout_min, "nodes": launcher.nodes,
              "tasks_per_node": launcher.tasks_per_node, "cpus_per_task": launcher.cpus_per_task,
              "gpus_per_node": launcher.gpus_per_node, "mem_gb": launcher.mem_gb,
              "slurm_partition": launcher.partition, "slurm_account": launcher.account, "slurm_qos": launcher.qos,
              "slurm_additional_parameters": OmegaConf.to_container(launcher.additional) or None,
              "slurm_setup": list(launcher.setup) or None}
    return {key: value for key, value in params.items() if value is not None}


def run_slurm(jobs: Sequence[Job], launcher: DictConfig, log_dir: Path, say: Callable[[str], None]) -> int:
    """One submitit job per sweep job, each running the job's single-job command (``srun`` starts one per task,
    so DDP inside a job works as on one machine). Without ``launcher.wait`` the sweep returns once submitted."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(launcher.folder or log_dir / "%j"), cluster=launcher.cluster)
    executor.update_parameters(**slurm_parameters(launcher, "bench"))
    cwd = os.getcwd()

    def submit(job: Job) -> Any:
        return executor.submit(submitit.helpers.CommandFunction(python_command(job), cwd=cwd, verbose=False))

    submitted = [(job, submit(job), 0) for job in jobs]
    for job, handle, _ in submitted:
        say(f"submitted {handle.job_id}: {job.line}")
    if not launcher.wait:
        say("the jobs run on the cluster: `bench sweep status -m ...` (the same overrides) shows where they are")
        return 0
    failed = 0
    while submitted:
        job, handle, attempt = submitted.pop(0)
        try:
            handle.result()
            say(f"finished {handle.job_id}: {job.line}")
        except Exception as err:  # noqa: BLE001 - submitit re-raises the job's failure
            if attempt < int(launcher.retries):
                retry = job.resumed()
                submitted.append((retry, submit(retry), attempt + 1))
                say(f"{handle.job_id} failed; resubmitted from its checkpoint as {submitted[-1][1].job_id}")
            else:
                say(f"{handle.job_id} failed ({type(err).__name__}; log in {handle.paths.folder}): {job.line}")
                failed += 1
    return failed


def sweep_id(jobs: Sequence[Job]) -> str:
    """A stable name for the sweep (its jobs' hashes), so a rerun's logs sit beside the first attempt's."""
    return hashlib.sha256("".join(j.digest for j in jobs).encode()).hexdigest()[:12]


def launch(jobs: Sequence[Job], run_one: Callable[[Job], bool], say: Callable[[str], None]) -> int:
    """Run the sweep's unfinished jobs through its launcher; returns the number of failed jobs."""
    launcher = jobs[0].cfg.launcher
    if any(job.cfg.launcher != launcher for job in jobs):
        raise ConfigError("launcher.* cannot be swept: every job of a sweep runs through the same launcher.")
    todo = pending(jobs, say)
    say(f"sweep: {len(jobs)} jobs, {len(jobs) - len(todo)} skipped, {len(todo)} to run (launcher={launcher.name})")
    if not todo:
        return 0
    log_dir = Path(str(jobs[0].cfg.runs_dir)) / "sweeps" / sweep_id(jobs)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    if launcher.name == "serial":
        return run_serial(todo, int(launcher.retries), run_one)
    if launcher.name == "local":
        return run_local(todo, launcher, log_dir / stamp, say)
    if launcher.name == "slurm":
        return run_slurm(todo, launcher, log_dir, say)
    raise ConfigError(f"launcher={launcher.name}: launchers are serial, local and slurm.")

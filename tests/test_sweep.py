"""Sweeps: launchers (serial, local processes, SLURM through submitit's local executor), finished jobs kept and
skipped across a SIGKILL, retries, `bench sweep status`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.config import compose
from bench.results import read_record
from bench.runner import RUNNING, config_runs, job_hash
from bench.sweep import Job, make_jobs, pending, run_serial

TINY = ["task.channels=8", "task.size=8", "task.iters=3", "task.warmup=1", "task.train=false"]


def sweep_args(tmp_path: Path, ops: str) -> list[str]:
    return [f"op={ops}", *TINY, f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]


def records(tmp_path: Path) -> list[dict]:
    return [read_record(p) for p in sorted((tmp_path / "r" / "profile").glob("[0-9]*.json"))]


def test_slurm_launcher_submits_the_single_job_command_through_submitit(tmp_path: Path) -> None:
    args = sweep_args(tmp_path, "conv")
    assert main(["run", "-m", *args, "launcher=slurm", "launcher.cluster=local", "launcher.wait=true",
                 f"launcher.folder={tmp_path}/slurm/%j"]) == 0
    (record,) = records(tmp_path)
    assert record["status"] == "success" and " launcher" not in record["provenance"]["command"]
    assert record["provenance"]["command"] == "bench run " + " ".join(args)
    assert list((tmp_path / "slurm").rglob("*_result.pkl"))  # it went through submitit


def test_local_launcher_runs_jobs_side_by_side(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "-m", *sweep_args(tmp_path, "conv,dwconv"), "launcher=local", "launcher.jobs=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [line.split()[0] for line in lines if line.startswith(("started", "finished"))]
    assert events == ["started", "started", "finished", "finished"]  # both processes ran at once
    assert [r["status"] for r in records(tmp_path)] == ["success", "success"]
    assert len(list((tmp_path / "runs" / "sweeps").rglob("job-*.log"))) == 2


def test_a_sweep_killed_with_sigkill_finishes_on_rerun_without_repeating_work(tmp_path: Path) -> None:
    args = sweep_args(tmp_path, "conv,dwconv,ddf")
    sweep = subprocess.Popen([sys.executable, "-m", "bench", "run", "-m", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not list((tmp_path / "r").rglob("[0-9]*.json")) and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("[0-9]*.json")}
    assert 1 <= len(kept) < 3
    assert main(["sweep", "status", "-m", *args]) == 0
    assert main(["run", "-m", *args]) == 0
    assert all(p.stat().st_mtime_ns == mtime for p, mtime in kept.items())  # finished jobs untouched
    done = records(tmp_path)
    assert sorted(r["op"] for r in done) == ["conv", "ddf", "dwconv"]  # one record per job, nothing repeated
    assert main(["run", "-m", *args]) == 0 and len(records(tmp_path)) == 3  # a finished sweep runs nothing


def test_sweep_status_names_each_jobs_state(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = sweep_args(tmp_path, "conv,dwconv,ddf")
    assert main(["run", "op=conv", *args[1:]]) == 0
    cfg = compose("run", ["op=dwconv", *args[1:]])  # a run of dwconv whose process died without a record
    run_dir = config_runs(cfg, job_hash(cfg)) / "20260101T000000-x"
    run_dir.mkdir(parents=True)
    (run_dir / RUNNING).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))
    capsys.readouterr()
    assert main(["sweep", "status", "-m", *args]) == 0
    out = capsys.readouterr().out
    assert "1 done" in out and "1 interrupted" in out and "1 not started" in out and "killed" in out


def test_a_failed_job_is_retried_from_its_checkpoint() -> None:
    cfg = compose("run", TINY)
    attempts: list[list[str]] = []

    def flaky(job: Job) -> bool:
        attempts.append(job.overrides)
        return len(attempts) > 1

    assert run_serial([Job("run", ["op=conv"], cfg, "h")], retries=1, run_one=flaky) == 0
    assert attempts == [["op=conv"], ["op=conv", "resume=true"]] and cfg.resume is False
    attempts.clear()
    assert run_serial([Job("run", ["op=conv"], cfg, "h")], retries=0, run_one=lambda job: False) == 1


def test_an_interrupted_job_resumes_and_a_repeated_one_runs_once(tmp_path: Path) -> None:
    args = sweep_args(tmp_path, "conv")
    cfg = compose("run", args)
    (config_runs(cfg, job_hash(cfg)) / "20260101T000000-x").mkdir(parents=True)  # an attempt left its run folder
    said: list[str] = []
    local = [*args, "launcher=local"]
    jobs = make_jobs("run", [args, args, local], [cfg, cfg, compose("run", local)])
    (job,) = pending(jobs, said.append)
    assert job.overrides == [*args, "resume=true"] and job.cfg.resume is True
    assert all(j.overrides == args for j in jobs)  # launcher keys steer the sweep, not the job's command
    assert sum("same configuration" in line for line in said) == 2

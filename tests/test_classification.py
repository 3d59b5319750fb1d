"""`bench run task=classification`: a tiny end-to-end run, divergence, 2-process DDP, and resume after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main

TINY = ["task=classification", "recipe.epochs=1", "data.train_size=64", "data.val_size=32", "data.test_size=32",
        "data.image_size=16", "recipe.global_batch=32", "recipe.eval_batch=32", "task.profile_batch=4"]


pytestmark = pytest.mark.usefixtures("bench_cache")  # generated data goes to a fresh cache


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("classification/*.json"))]


def bench(tmp_path: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    exe = str(Path(sys.executable).parent / "bench")
    return subprocess.Popen([exe, "run", *args, f"results_dir={tmp_path}/results", f"runs_dir={tmp_path}/runs"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def test_tiny_run_writes_a_complete_record(tmp_path: Path) -> None:
    args = [*TINY, "op=ddf", "recipe.max_device_batch=16", f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 0
    (record,) = records(tmp_path / "r")
    assert record["status"] == "success" and record["op"] == "ddf" and record["backbone"] == "resnet20"
    assert (record["data"], record["recipe"], record["seed"]) == ("shapes", "quick", 0)
    assert {"top1", "top5", "loss", "val_top1"} <= set(record["metrics"])
    assert 0.0 <= record["metrics"]["top1"] <= record["metrics"]["top5"] <= 1.0
    plan = record["batch_plan"]
    assert (plan["global_batch"], plan["per_device_batch"], plan["accumulate"], plan["world_size"]) == (32, 16, 2, 1)
    assert record["steps"] == 2  # 64 images / global batch 32, one epoch
    eff = record["efficiency"]
    assert eff["params"] > 0 and eff["macs"] > 0 and eff["latency_ms"]["median"] > 0
    assert record["provenance"]["world_size"] == 1 and record["provenance"]["hardware"]["cpu_count"] >= 1
    assert record["provenance"]["command"].startswith("bench run task=classification")
    assert [step for step, _ in record["curves"]["train_loss"]] == [1, 2]  # every step of so short a run
    assert [epoch for epoch, _ in record["curves"]["val_top1"]] == [1]
    assert record["curves"]["val_top1"][0][1] == pytest.approx(record["metrics"]["val_top1"])
    (log,) = (tmp_path / "runs").glob("classification-*/*/logs/version_0/metrics.csv")  # Lightning's CSV log
    assert "train_loss" in log.read_text().splitlines()[0]


def test_diverged_run_is_recorded_as_diverged(tmp_path: Path) -> None:
    args = [*TINY, "recipe.lr=1e30", "recipe.epochs=2", f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 1
    (record,) = records(tmp_path / "r")
    assert record["status"] == "diverged" and "loss" in record["error"]


def test_two_process_ddp_keeps_the_global_batch(tmp_path: Path) -> None:
    proc = bench(tmp_path, *TINY, "trainer=ddp", "devices=2", "trainer.accelerator=cpu")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    (record,) = records(tmp_path / "results")  # one record: only global rank zero writes
    assert record["provenance"]["world_size"] == 2
    plan = record["batch_plan"]
    assert (plan["global_batch"], plan["world_size"], plan["per_device_batch"], plan["accumulate"]) == (32, 2, 16, 1)
    assert record["steps"] == 2  # the same optimizer steps as on one device


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    args = [*TINY, "recipe.epochs=30", "data.train_size=128"]
    # the child must take Ctrl-C even where this test runs in the background of a shell, which ignores SIGINT
    proc = bench(tmp_path, *args, start_new_session=True,
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    checkpoints = list((tmp_path / "runs").glob("classification-*/*/checkpoints/last.ckpt"))
    while not checkpoints and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        checkpoints = list((tmp_path / "runs").glob("classification-*/*/checkpoints/last.ckpt"))
    assert checkpoints, "no checkpoint appeared"
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-3000:]
    (interrupted,) = records(tmp_path / "results")
    assert interrupted["status"] == "interrupted"
    resumed = bench(tmp_path, *args, "resume=true")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    final = next(r for r in records(tmp_path / "results") if r["status"] == "success")
    assert final["resumed_from_step"] > 0
    assert final["steps"] == 30 * 4  # the whole schedule, continued rather than restarted
    steps = [step for step, _ in final["curves"]["train_loss"]]
    assert steps == list(range(2, 121, 2))  # the curve kept its part from before the interruption
    epochs = [epoch for epoch, _ in final["curves"]["val_top1"]]
    # one point per validated epoch, before and after the interruption (an epoch interrupted during its
    # validation is not validated again on resume, so at most one may be missing)
    assert epochs == sorted(set(epochs)) and (epochs[0], epochs[-1]) == (1, 30) and len(epochs) >= 29
    assert (checkpoints[0].parent / "interrupted.ckpt").exists()  # the interrupted run keeps what it saved
    resumed = Path(final["provenance"]["run_dir"]) / "checkpoints"
    assert resumed.parent.parent == checkpoints[0].parent.parent.parent and resumed != checkpoints[0].parent
    assert (resumed / "last.ckpt").exists() and not (resumed / "interrupted.ckpt").exists()
    assert f"resuming from {checkpoints[0].parent / 'interrupted.ckpt'} (step {final['resumed_from_step']})" in out


def test_a_plain_rerun_trains_from_scratch_beside_the_earlier_run(tmp_path: Path) -> None:
    args = [*TINY, f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 0
    assert main(["run", *args]) == 0
    first, second = records(tmp_path / "r")
    assert first["resumed_from_step"] is None and second["resumed_from_step"] is None
    assert second["steps"] == first["steps"] == 2 and second["metrics"]["val_top1"] == second["metrics"]["val_top1"]
    assert second["metrics"] == first["metrics"]  # the same configuration and seed, trained again
    folders = {Path(r["provenance"]["run_dir"]) for r in (first, second)}
    assert len(folders) == 2 and all((f / "checkpoints" / "last.ckpt").exists() for f in folders)


def test_resume_never_runs_code_from_a_checkpoint(tmp_path: Path) -> None:
    """A crafted last.ckpt in the configuration's folder must not execute anything when resume=true reads it."""
    args = [*TINY, f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 0
    (record,) = records(tmp_path / "r")
    marker = tmp_path / "payload-ran"
    crafted = Path(record["provenance"]["run_dir"]).parent / "crafted" / "checkpoints" / "last.ckpt"
    crafted.parent.mkdir(parents=True)
    torch.save({"global_step": Payload(str(marker))}, crafted)
    newer = crafted.stat().st_mtime + 60  # the newest checkpoint is resumed; never tie with the run's own
    os.utime(crafted, (newer, newer))
    assert main(["run", *args, "resume=true"]) == 1  # refused to unpickle: recorded as failed, not executed
    assert not marker.exists()
    (failed,) = [r for r in records(tmp_path / "r") if r["status"] == "failed"]  # both may share one second's name
    assert "weights_only" in failed["error"] or "Unsupported" in failed["error"]


class Payload:
    """Pickles to a call of ``pathlib.Path.touch``: loading it with weights_only=False would create the marker."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))

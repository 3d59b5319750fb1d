"""The `bench` command: overrides, sweeps, listing, and errors written for people."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.cli import main
from operators import register_op

TINY = ["task.batch=1", "task.channels=4", "task.size=6", "task.warmup=0", "task.iters=2"]


def records(results: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob("profile/*.json"))]


def test_list_ops_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "ops"]) == 0
    out = capsys.readouterr().out
    for text in ("conv", "dwconv", "nearest", "upsample", "built-in", "MobileNets"):
        assert text in out


def test_list_other_groups(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "tasks"]) == 0
    assert "profile" in capsys.readouterr().out
    assert main(["list", "backbones"]) == 0
    assert main(["list", "recipes"]) == 0


def test_cfg_prints_the_composed_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "--cfg", "op=dwconv", "task.size=56", "op_kwargs.bias=true"]) == 0
    out = capsys.readouterr().out
    assert "op: dwconv" in out and "size: 56" in out and "bias: true" in out


@pytest.mark.parametrize("argv, message", [
    (["run", "op=ddff"], "Unknown operator 'ddff'"),
    (["run", "op=convv"], "Did you mean 'conv'?"),
    (["run", "task.batchh=2"], "Did you mean 'task.batch'?"),
    (["run", "task=profil"], "Did you mean 'profile'?"),
    (["run", "task.batch=abc"], "Invalid value for 'task.batch'"),
    (["profile", "task.threads=0"], "give a positive number of CPU threads"),
    (["profile", "op=conv", "task.baseline=conv"], "compares a backbone with two operators"),
    (["profile", "backbone=resnet20", "task.baseline=nearest"], "Unknown baseline operator (task.baseline) 'nearest'"),
    (["profile", "backbone=resnet20", "task.baseline=conv", "task.baseline_rounds=0"], "give at least one round"),
    (["profile", "backbone=resnet20", "task.baseline=conv", "task.baseline_processes=0"], "at least one process"),
    (["profile", "backbone=resnet20", "task.baseline=goctconv"], "task.baseline=goctconv cannot be the baseline here"),
    (["run", "seed=0,1"], "add -m"),
    (["run", "op=conv,"], "Cannot parse"),
    (["check", "op=conv", "channels=x"], "channels expects int"),
    (["check", "oops"], "Expected one of"),
])
def test_mistakes_exit_2_with_a_paragraph(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_profile_writes_a_record_with_provenance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "op=dwconv", f"results_dir={tmp_path}", *TINY]) == 0
    (record,) = records(tmp_path)
    assert record["status"] == "success" and record["task"] == "profile"
    assert record["config"]["op"] == "dwconv"
    assert record["efficiency"]["macs_per_sample"] == 4 * 9 * 36 + 16 * 36
    hw = record["provenance"]["hardware"]
    assert hw["device"] == "cpu" and hw["cpu_count"] >= 1
    assert record["op"] == "dwconv" and record["seed"] == 0 and len(record["provenance"]["config_hash"]) == 64
    assert record["provenance"]["versions"]["torch"]
    assert record["provenance"]["command"] == f"bench profile op=dwconv results_dir={tmp_path} {' '.join(TINY)}"
    assert str(tmp_path) in " ".join(capsys.readouterr().out.split())


def test_multirun_sweeps_the_cartesian_product(tmp_path: Path) -> None:
    assert main(["profile", "-m", "op=conv,nearest", "seed=0,1", f"results_dir={tmp_path}", *TINY]) == 0
    got = sorted((r["config"]["op"], r["config"]["seed"]) for r in records(tmp_path))
    assert got == [("conv", 0), ("conv", 1), ("nearest", 0), ("nearest", 1)]
    commands = sorted(r["provenance"]["command"].split(" results_dir")[0] for r in records(tmp_path))
    assert commands[0] == "bench profile op=conv seed=0"  # each job records the command that reproduces it alone


def test_bad_job_in_a_sweep_is_rejected_before_anything_runs(tmp_path: Path) -> None:
    assert main(["profile", "-m", "op=conv,nope", f"results_dir={tmp_path}", *TINY]) == 2
    assert not records(tmp_path)


def test_failed_run_is_recorded_and_exits_1(tmp_path: Path, restore_registry: None) -> None:
    @register_op("explodes", kind="conv", macs=lambda m, x: 0)
    class Explodes(torch.nn.Conv2d):
        def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
            super().__init__(cin, cout, kernel_size, stride, kernel_size // 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("CUDA kernel not available")

    assert main(["profile", "op=explodes", f"results_dir={tmp_path}", *TINY]) == 1
    (record,) = records(tmp_path)
    assert record["status"] == "failed" and "CUDA kernel not available" in record["error"]


def test_refused_request_exits_2_without_a_record(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "op=conv", "task.kernel_size=2", f"results_dir={tmp_path}", *TINY]) == 2
    assert "kernel_size must be odd" in capsys.readouterr().err
    assert not records(tmp_path)


def test_console_script_exit_code_and_no_traceback() -> None:
    bench = Path(sys.executable).parent / "bench"
    out = subprocess.run([str(bench), "run", "op=ddff"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Unknown operator" in out.stderr and "Traceback" not in out.stderr


def test_profile_multiscale_operator_in_channels_last(tmp_path: Path) -> None:
    args = ["profile", "op=octconv", "task.channels_last=true", "task.size=7", f"results_dir={tmp_path}"]
    assert main([*args, *[a for a in TINY if not a.startswith("task.size")]]) == 0
    (record,) = records(tmp_path)
    assert record["efficiency"]["input_shape"] == [[1, 2, 7, 7], [1, 2, 4, 4]]
    assert record["efficiency"]["macs"] > 0


def test_profile_compiled_times_inference_only(tmp_path: Path) -> None:
    args = ["profile", "op=octconv", "task.compile=true", "task.size=7", f"results_dir={tmp_path}"]
    assert main([*args, *[a for a in TINY if not a.startswith("task.size")]]) == 0
    (record,) = records(tmp_path)
    eff = record["efficiency"]
    assert eff["compiled"] is True and eff["compile_s"] > 0 and eff["latency_ms"]["median"] > 0
    assert eff["train_step_ms"] is None  # compiling training is another measurement


def test_profile_backbone_records_latency_throughput_and_placement(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = ["profile", "backbone=resnet20", "op=scconv", "task.batch=2", "task.warmup=0", "task.iters=3",
            f"results_dir={tmp_path}", "--json", str(out)]
    assert main(args) == 0
    (record,) = records(tmp_path)
    assert json.loads(out.read_text()) == record
    eff = record["efficiency"]
    assert eff["input_shape"] == [3, 32, 32] and eff["latency_ms"]["batch"] == 1 and eff["throughput_batch"] == 2
    assert eff["macs"] > 0 and eff["latency_ms"]["median"] > 0 and eff["train_step_ms"] > 0
    assert record["op_metadata"]["stride_fallback_slots"] == []  # resnet20's strided convs are not operator slots


def test_profile_against_a_baseline_records_interleaved_latency_ratios(tmp_path: Path) -> None:
    args = ["profile", "backbone=resnet20", "op=octconv", "task.baseline=conv", "task.baseline_rounds=2",
            "task.baseline_processes=1", "task.batch=2", "task.size=16", "task.warmup=0", "task.iters=2",
            "task.train=false", f"results_dir={tmp_path}"]
    assert main(args) == 0
    (record,) = records(tmp_path)
    ratios = record["efficiency"]["vs_baseline"]
    assert ratios["op"] == "conv" and ratios["rounds"] == 2 and ratios["processes"] == 1
    assert ratios["batch_1"] > 0 and ratios["batch_2"] > 0 and "per_process" not in ratios


USER_OPS = """
from torch import nn
from operators import register_op

@register_op("user_conv", kind="conv", paper=None)
class UserConv(nn.Conv2d):  # an operator of a user's own module: a 3x3 conv under another name
    def __init__(self, cin, cout, kernel_size=3, stride=1):
        super().__init__(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
"""


def test_baseline_in_fresh_processes_records_each_and_their_median(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_registry: None) -> None:
    (tmp_path / "user_ops.py").write_text(USER_OPS)  # registers on import, as a user's own module does
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_ops", raising=False)
    __import__("user_ops")
    args = ["profile", "backbone=resnet20", "op=user_conv", "task.baseline=conv", "task.baseline_rounds=1",
            "task.baseline_processes=2", "task.batch=2", "task.size=16", "task.warmup=0", "task.iters=2",
            "task.train=false", f"results_dir={tmp_path / 'results'}"]
    assert main(args) == 0
    monkeypatch.delitem(sys.modules, "user_ops")
    (record,) = records(tmp_path / "results")
    ratios = record["efficiency"]["vs_baseline"]
    assert ratios["processes"] == 2 and len(ratios["per_process"]) == 2
    for key in ("batch_1", "batch_2"):
        runs = [run[key] for run in ratios["per_process"]]
        assert all(r > 0 for r in runs) and ratios[key] == pytest.approx(sum(runs) / 2)


def test_operator_a_fresh_process_cannot_rebuild_fails_with_advice(
        tmp_path: Path, capsys: pytest.CaptureFixture, restore_registry: None) -> None:
    @register_op("local_conv", kind="conv", paper=None)
    class LocalConv(torch.nn.Conv2d):  # registered by this function, not by importing its module
        def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
            super().__init__(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)

    args = ["profile", "backbone=resnet20", "op=local_conv", "task.baseline=conv", "task.baseline_rounds=1",
            "task.baseline_processes=2", "task.batch=2", "task.size=16", "task.warmup=0", "task.iters=2",
            "task.train=false", f"results_dir={tmp_path}"]
    assert main(args) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "fresh process failed" in err and "local_conv" in err and "task.baseline_processes=1" in err


def test_profile_op_all_sweeps_and_skips_what_cannot_be_built(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["profile", "backbone=resnet20", "op=all", "task.batch=2", "task.size=16", "task.warmup=0",
            "task.iters=2", "task.train=false", f"results_dir={tmp_path}"]
    assert main(args) == 0
    ops = {r["config"]["op"] for r in records(tmp_path)}
    assert {"conv", "ddf", "octconv", "scconv", "dwconv"} <= ops and "goctconv" not in ops
    assert "skipped" in capsys.readouterr().err


def test_unknown_backbone_is_explained(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "backbone=resnet5"]) == 2
    assert "Did you mean 'resnet56'?" in " ".join(capsys.readouterr().err.split())

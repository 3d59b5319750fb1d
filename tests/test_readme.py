"""README.md stays true: its operator example registers, passes `bench check`, and the commands exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bench.check import run_checks
from bench.cli import main
from operators import create_op, list_ops

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    assert "make test" in Path(README.parent / ".ci" / "run").read_text()


def test_add_an_operator_example_passes_the_checks(restore_registry: None, capsys: pytest.CaptureFixture) -> None:
    (example,) = [block for block in python_blocks() if "@register_op" in block]
    code_lines = [line for line in example.splitlines() if line.strip()]
    assert len(code_lines) <= 30, "the README promises a short example"
    exec(compile(example, str(README), "exec"), {})
    assert "mixconv" in list_ops("conv")
    results = run_checks("mixconv", channels=9)
    assert [r for r in results if r.status == "fail"] == []
    assert create_op("mixconv", 6, 12, stride=2).splits == [2, 2, 2]
    assert main(["check", "op=mixconv", "channels=7"]) == 0


def test_readme_cli_examples_compose(capsys: pytest.CaptureFixture) -> None:
    bench_lines = re.findall(r"^bench (run|profile) (.*?)(?:\s+#.*)?$", README.read_text(), flags=re.M)
    assert bench_lines
    for command, rest in bench_lines:
        args = rest.split()
        multirun = "-m" in args
        args = [a for a in args if a not in ("-m", "--cfg")]
        assert main([command, "--cfg", *(["-m"] if multirun else []), *args]) == 0, rest


def _table_record(op: str, latency: float, vs_baseline: dict | None) -> dict:
    efficiency = {"params": 25_000_000, "macs": 4_000_000_000, "input_shape": [3, 224, 224], "channels_last": True,
                  "latency_ms": {"median": latency, "iqr": 1.0}, "throughput_batch": 8, "throughput_per_s": 20.0,
                  "train_step_ms": None, "saved_activation_mb": 600.0,
                  **({"vs_baseline": vs_baseline} if vs_baseline else {})}
    return {"status": "success", "config": {"op": op, "backbone": "resnet50"}, "efficiency": efficiency,
            "provenance": {"hardware": {"label": "CPU"}, "command": "bench profile backbone=resnet50 op=conv",
                           "versions": {"torch": "2.13.0"}}}


def test_readme_table_takes_ratios_from_the_records_then_the_script_then_sequential_runs() -> None:
    spec = importlib.util.spec_from_file_location("readme_table", README.parent / "benchmarks" / "readme_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    own = {"op": "conv", "rounds": 7, "processes": 3}
    records = [_table_record("conv", 60.0, {**own, "batch_1": 1.0, "batch_8": 1.0}),
               _table_record("octconv", 48.0, {**own, "batch_1": 0.79, "batch_8": 0.64})]
    script = {"rounds": 9, "compiled": False, "batches": {b: {op: {"vs_conv": v} for op, v in
                                                              (("conv", 1.0), ("octconv", 0.9))} for b in ("1", "8")}}
    rendered = table.render(records, script)
    assert "| 0.79x / 0.64x |" in rendered and "median of 3 fresh processes" in rendered
    without_own = [_table_record(r["config"]["op"], r["efficiency"]["latency_ms"]["median"], None) for r in records]
    assert "| 0.90x / 0.90x |" in table.render(without_own, script)
    assert "| 0.80x (sequential) |" in table.render(without_own)

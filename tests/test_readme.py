"""README.md stays true: its operator and task examples work, and the commands exist."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from bench.check import run_checks
from bench.cli import main
from bench.results import read_record
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


def test_add_a_task_example_runs_and_ranks_lowest_first(restore_tasks: None, tmp_path: Path) -> None:
    (example,) = [block for block in python_blocks() if "TaskSpec(" in block]
    exec(compile(example, str(README), "exec"), {})
    results = tmp_path / "board" / "results"
    for op in ("conv", "dwconv"):
        assert main(["run", "task=blur", f"op={op}", "task.steps=150", f"results_dir={results}"]) == 0
    assert main(["run", "task=blur", "upsampler=carafe"]) == 2  # another task's key, refused as for built-ins
    records = [read_record(p) for p in sorted((results / "blur").glob("*.json"))]
    mse = {r["op"]: r["metrics"]["mse"] for r in records}
    assert mse["conv"] < 0.05 and mse["dwconv"] < 0.2  # both can express a box blur; neither is at chance (~0.9)
    assert main(["leaderboard", "--out", str(results.parent)]) == 0
    section = (results.parent / "README.md").read_text().split("## blur on -")[1]
    rows = [line.split("|")[2].strip() for line in section.splitlines() if line.startswith("| - |")]
    assert rows == sorted(mse, key=mse.get)  # lower is better: ascending


def test_readme_cli_examples_compose(capsys: pytest.CaptureFixture) -> None:
    bench_lines = re.findall(r"^bench (run|profile) (.*?)(?:\s+#.*)?$", README.read_text(), flags=re.M)
    assert bench_lines
    for command, rest in bench_lines:
        args = rest.split()
        multirun = "-m" in args
        args = [a for a in args if a not in ("-m", "--cfg")]
        assert main([command, "--cfg", *(["-m"] if multirun else []), *args]) == 0, rest


def test_the_committed_boards_sweeps_compose_with_a_launcher(capsys: pytest.CaptureFixture) -> None:
    script = (README.parent / "leaderboards" / "sweeps.sh").read_text()
    sweeps = re.findall(r'^  "(task=[^"]+)"$', script, flags=re.M)
    assert len(sweeps) >= 10 and "launcher=slurm" in README.read_text()
    for sweep in sweeps:
        assert main(["run", "--cfg", "-m", *sweep.split(), "launcher=local", "launcher.jobs=2"]) == 0, sweep


def _table_record(op: str, latency: float, vs_baseline: dict | None) -> dict:
    efficiency = {"params": 25_000_000, "macs": 4_000_000_000, "input_shape": [3, 224, 224], "channels_last": True,
                  "latency_ms": {"median": latency, "iqr": 1.0}, "throughput_batch": 8, "throughput_per_s": 20.0,
                  "train_step_ms": None, "saved_activation_mb": 600.0,
                  **({"vs_baseline": vs_baseline} if vs_baseline else {})}
    return {"status": "success", "config": {"op": op, "backbone": "resnet50"}, "efficiency": efficiency,
            "provenance": {"hardware": {"label": "CPU"}, "command": "bench profile backbone=resnet50 op=conv",
                           "versions": {"torch": "2.13.0"}}}


def _profile_table():
    spec = importlib.util.spec_from_file_location("profile_table", README.parent / "benchmarks" / "profile_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    return table


def test_profile_table_takes_ratios_from_the_records_then_the_script_then_sequential_runs() -> None:
    table = _profile_table()
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


def test_performance_doc_table_is_the_committed_results_rendered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """docs/performance.md's table is what profile_table.py --doc writes from benchmarks/results/."""
    table = _profile_table()
    root = README.parent
    doc = root / "docs" / "performance.md"
    results = root / "benchmarks" / "results"
    copy = tmp_path / "performance.md"
    copy.write_text(doc.read_text())
    monkeypatch.setattr("sys.argv", ["profile_table.py", str(results / "resnet50_ops.json"),
                                     "--ratios", str(results / "resnet50_ratios.json"), "--doc", str(copy)])
    table.main()
    assert copy.read_text() == doc.read_text(), "regenerate it: python benchmarks/profile_table.py ... --doc"
    assert f"{table.START}\n" in doc.read_text() and f"\n{table.END}" in doc.read_text()
    cited = re.findall(r"benchmarks/results/[\w.-]+\.json", doc.read_text())
    assert cited and all((root / path).is_file() for path in cited), cited

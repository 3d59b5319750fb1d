"""A task from another installed distribution (entry point ``bench.tasks``) works in every `bench` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import read_record
from bench.tasks import TaskPluginWarning, get_task, list_tasks

TOY = '''
from dataclasses import dataclass

from bench.tasks import Metric, TaskResult, TaskSpec


@dataclass
class ToyConfig:
    name: str = "toy"
    error: float = 0.5
    macs: int = 1_000_000_000


def run(cfg, run_dir):
    """Reports the configured error (lower is better) at the configured cost."""
    t = cfg.task
    return TaskResult(metrics={"error": t.error, "agreement": 1 - t.error},
                      efficiency={"params": 10, "macs": t.macs, "latency_ms": {"median": 1.0, "iqr": 0.0, "batch": 1}},
                      hardware={"label": "toy hardware"})


TASK = TaskSpec(name="toy", description="a toy task with a lower-is-better primary metric", run=run,
                metrics=(Metric("error", higher_is_better=False, unit="%", scale=100), Metric("agreement")),
                primary="error", task_schema=ToyConfig)
'''
RUNS = (("conv", 0.50, 1), ("dwconv", 0.20, 2), ("ddf", 0.40, 3))
"""(op, error, GMACs): dwconv is best; ddf is beaten by dwconv on both axes, so only conv and dwconv are on the front."""


@pytest.fixture
def toy(install_task_plugin) -> Path:
    return install_task_plugin("acme-tasks", {"acme_tasks/__init__.py": "", "acme_tasks/toy.py": TOY},
                               "[bench.tasks]\ntoy = acme_tasks.toy:TASK\n")


def test_plugin_task_is_listed_with_its_metrics_and_source(toy: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import cli

    monkeypatch.setattr(cli.console, "width", 300)
    assert "toy" in list_tasks() and get_task("toy").source == "acme-tasks"
    assert main(["list", "tasks"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "acme-tasks" in out and "error (%) ↓" in out and "top1 (%) ↑" in out
    assert "rmse (cm) ↓" in out  # a built-in lower-is-better metric beside the plugin's


def test_plugin_task_runs_sweeps_and_ranks_ascending_on_the_leaderboard(toy: Path, tmp_path: Path) -> None:
    results = tmp_path / "board" / "results"
    for op, error, gmacs in RUNS:
        assert main(["run", "task=toy", f"op={op}", f"task.error={error}", f"task.macs={gmacs * 10**9}",
                     f"results_dir={results}"]) == 0
    assert main(["run", "-m", "task=toy", "op=conv", "task.error=0.5", "seed=1,2", f"results_dir={results}"]) == 0
    records = [read_record(p) for p in sorted((results / "toy").glob("*.json"))]
    assert len(records) == 5 and {r["task"] for r in records} == {"toy"}
    assert main(["run", "task=toy", "upsampler=carafe"]) == 2  # keys of other tasks are refused, as for built-ins
    assert main(["leaderboard", "--out", str(results.parent)]) == 0
    md = (results.parent / "README.md").read_text()
    section = md.split("## toy on -")[1].split("\n## ")[0]
    assert "Ranked by error (%), lower is better" in section
    header, _, *lines = [line for line in section.splitlines() if line.startswith("|")]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[4:6] == ["error (%)", "agreement"]  # the spec's order, in its units
    ops = [line.split("|")[2].strip() for line in lines]
    assert ops == ["dwconv", "ddf", "conv"]  # ascending: lowest error first
    front = {line.split("|")[2].strip(): line.split("|")[columns.index("Pareto front (GMACs)") + 1].strip()
             for line in lines}
    assert front == {"dwconv": "yes", "ddf": "", "conv": "yes"}  # the lower-left front
    conv = next(line for line in lines if "| conv |" in line)
    assert "50.00 +/- 0.00 (n=3)" in conv and "seed=0,1,2" in conv
    assert "| -30.00 |" in next(line for line in lines if "| dwconv |" in line)  # delta vs conv, in %


def test_plugin_task_works_from_the_installed_console_command(toy: Path, tmp_path: Path) -> None:
    bench = Path(sys.executable).parent / "bench"
    env = {**os.environ, "PYTHONPATH": f"{toy}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([str(bench), "run", "task=toy", "task.error=0.25", f"results_dir={tmp_path}", "--json",
                          str(tmp_path / "out.json")], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["metrics"]["error"] == 0.25 and record["status"] == "success"


def test_broken_task_plugin_warns_and_the_suite_keeps_working(install_task_plugin,
                                                              capsys: pytest.CaptureFixture) -> None:
    install_task_plugin("broken-tasks", {"broken_tasks.py": "raise ImportError('needs pysodmetrics')\n"},
                        "[bench.tasks]\npose = broken_tasks:TASK\n")
    with pytest.warns(TaskPluginWarning, match=r"'pose'.*'broken-tasks'.*needs pysodmetrics"):
        names = list_tasks()
    assert {"classification", "detection", "profile"} <= set(names) and "pose" not in names
    assert main(["run", "--cfg", "task=classification"]) == 0

"""Importing the core packages must not pull in mmdet/mmcv (an optional extra)."""

from __future__ import annotations

import subprocess
import sys


def test_core_packages_do_not_import_mmdet() -> None:
    code = ("import sys, operators, backbones, tasks, bench, bench.cli, bench.check, bench.measure;"
            "bench.cli.main(['list', 'ops']);"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mmdet', 'mmcv', 'mmengine')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_bench_never_imports_a_task_package() -> None:
    """bench/ finds tasks through entry points only; a task package imports bench, never the other way round."""
    import ast
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    imported = set()
    for path in bench.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {(path.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
    assert sorted((f, m) for f, m in imported if m == "tasks" or m.startswith("tasks.")) == []

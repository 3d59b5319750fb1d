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

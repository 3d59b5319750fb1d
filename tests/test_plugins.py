"""Operators from other distributions arrive through the `bench.operators` entry-point group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from operators import create_op, list_ops, op_info
from operators.plugins import PluginWarning

PLUGIN = """
from torch import nn
from operators import register_op

@register_op("plugin_conv", kind="conv", paper="A plugin paper", exact_macs=True)
class PluginConv(nn.Conv2d):
    '''A plugin's operator: a 3x3 conv under another name.'''

    def __init__(self, cin, cout, kernel_size=3, stride=1):
        super().__init__(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)

    def macs(self, x):
        n, _, h, w = x.shape
        ho, wo = -(-h // self.stride[0]), -(-w // self.stride[1])
        return n * self.in_channels * self.out_channels * 9 * ho * wo
"""


def test_plugin_operator_is_registered_with_its_source(install_plugin) -> None:
    install_plugin("acme-ops", "acme_ops", PLUGIN)
    assert "plugin_conv" in list_ops("conv")
    info = op_info("plugin_conv")
    assert info.source == "acme-ops"
    assert info.paper == "A plugin paper"
    assert create_op("plugin_conv", 4, 8, stride=2).stride == (2, 2)


def test_plugin_works_in_bench_commands(install_plugin, capsys: pytest.CaptureFixture) -> None:
    install_plugin("acme-ops", "acme_ops", PLUGIN)
    assert main(["list", "ops"]) == 0
    out = capsys.readouterr().out
    assert "plugin_conv" in out and "acme-ops" in out
    assert main(["check", "op=plugin_conv", "size=7"]) == 0
    assert "0 failed" in capsys.readouterr().out


def test_callable_entry_point_is_called(install_plugin) -> None:
    source = "def setup():\n" + "\n".join("    " + line for line in PLUGIN.splitlines())
    install_plugin("late-ops", "late_ops", source, entry_point="late_ops:setup")
    assert op_info("plugin_conv").source == "late-ops"


def test_broken_plugin_warns_and_the_suite_keeps_working(install_plugin) -> None:
    install_plugin("broken-ops", "broken_ops", "raise RuntimeError('missing CUDA toolkit')\n")
    with pytest.warns(PluginWarning, match=r"'broken-ops'.*missing CUDA toolkit"):
        names = list_ops()
    assert "conv" in names


def test_plugin_seen_by_the_installed_console_command(install_plugin) -> None:
    path = install_plugin("acme-ops", "acme_ops", PLUGIN)
    bench = Path(sys.executable).parent / "bench"
    env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "COLUMNS": "200"}
    out = subprocess.run([str(bench), "list", "ops"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "plugin_conv" in out.stdout and "acme-ops" in out.stdout

"""`bench check`: every built-in operator meets the contract, and broken operators are caught."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.check import run_checks
from bench.cli import main
from operators import list_ops, register_op


@pytest.mark.parametrize("name", list_ops())
def test_builtin_operator_passes_conformance(name: str) -> None:
    results = run_checks(name)
    failures = [f"{r.check}: {r.detail}" for r in results if r.status == "fail"]
    assert not failures, failures
    assert sum(r.status == "pass" for r in results) >= 8


def _statuses(name: str) -> dict[str, str]:
    return {r.check: r.status for r in run_checks(name)}


def test_operator_ignoring_stride_fails(restore_registry: None) -> None:
    @register_op("lazy_stride", kind="conv", exact_macs=True)
    class LazyStride(nn.Conv2d):
        def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
            super().__init__(cin, cout, kernel_size, padding=1, bias=False)  # stride dropped

        def macs(self, x: torch.Tensor) -> int:
            return x.shape[0] * self.in_channels * self.out_channels * 9 * x.shape[2] * x.shape[3]

    statuses = _statuses("lazy_stride")
    assert statuses["stride 2 (ceil(H/2))"] == "fail"
    assert statuses["output shape, odd and even sizes"] == "pass"


def test_dead_parameter_wrong_macs_and_nondeterminism_fail(restore_registry: None) -> None:
    @register_op("sloppy", kind="conv", exact_macs=True, stride=False, channel_change=False)
    class Sloppy(nn.Module):
        def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, padding=1)
            self.unused = nn.Parameter(torch.zeros(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + torch.rand_like(x) * (not self.training)

        def macs(self, x: torch.Tensor) -> int:
            return 1

    statuses = _statuses("sloppy")
    assert statuses["gradients reach input and parameters"] == "fail"
    assert statuses["MAC formula vs counter"] == "fail"
    assert statuses["eval-mode determinism"] == "fail"
    assert statuses["stride 2 (ceil(H/2))"] == "pass"  # correctly refused


def test_claimed_channel_change_that_crashes_fails(restore_registry: None) -> None:
    @register_op("no_change", kind="conv", macs=lambda m, x: 0)
    class NoChange(nn.Module):
        def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(cin, 1, 1))
            self.pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(x * self.scale)

    statuses = _statuses("no_change")
    assert statuses["channel change"] == "fail"
    assert statuses["stride 2 (ceil(H/2))"] == "pass"


def test_cli_check_exit_codes(capsys: pytest.CaptureFixture, restore_registry: None) -> None:
    assert main(["check", "op=conv"]) == 0
    assert "0 failed" in capsys.readouterr().out

    @register_op("always_nan", kind="conv", channel_change=False, stride=False, macs=lambda m, x: 0)
    class AlwaysNaN(nn.Identity):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * float("nan")

    assert main(["check", "op=always_nan"]) == 1
    assert main(["check"]) == 2
    assert main(["check", "op=convv"]) == 2
    assert "Did you mean 'conv'?" in capsys.readouterr().err

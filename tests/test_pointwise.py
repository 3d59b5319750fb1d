"""Pointwise (1x1) convolution: the GEMM path gives the convolution's result, and runs only where it should."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import operators.conv as conv_module
from operators.conv import GEMM_MAX_MACS, GEMM_MAX_POSITIONS, Pointwise


def _channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_gemm_path_equals_the_convolution(stride: int, size: int, bias: bool) -> None:
    torch.manual_seed(0)
    m = Pointwise(8, 12, stride=stride, bias=bias)
    x = _channels_last(2, 8, size, size)
    y = m(x)
    ref_x = x.detach().clone().requires_grad_()
    ref = F.conv2d(ref_x, m.weight, m.bias, stride=stride)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)
    grad = torch.randn_like(ref)
    y.backward(grad)
    weight_grad = m.weight.grad.clone()
    m.zero_grad()
    ref.backward(grad)
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(weight_grad, m.weight.grad)


def test_gemm_runs_only_for_small_channels_last_cpu_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    linear = F.linear

    def spy(x: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return linear(x, *args)

    monkeypatch.setattr(conv_module.F, "linear", spy)
    wide, narrow = Pointwise(512, 512), Pointwise(4, 4)
    side = int(GEMM_MAX_POSITIONS**0.5)
    assert (side + 1) ** 2 * 512 * 512 > GEMM_MAX_MACS >= (side + 1) ** 2 * 4 * 4
    wide(_channels_last(1, 512, side, side))  # few positions: GEMM, however many MACs
    narrow(_channels_last(1, 4, side + 1, side + 1))  # more positions but few MACs: GEMM
    assert calls == [(1, side, side, 512), (1, side + 1, side + 1, 4)]
    wide(_channels_last(1, 512, side + 1, side + 1))  # more positions and MACs: the library convolution
    narrow(torch.randn(1, 4, 5, 5))  # contiguous (NCHW) layout: the library convolution
    assert len(calls) == 2


def test_same_parameters_and_state_dict_as_a_1x1_conv() -> None:
    m, ref = Pointwise(16, 32, stride=2), torch.nn.Conv2d(16, 32, 1, 2, bias=False)
    assert m.state_dict().keys() == ref.state_dict().keys()
    assert m.weight.shape == ref.weight.shape and m.stride == ref.stride and m.padding == ref.padding


def test_the_tuning_script_times_the_live_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/pointwise_gemm.py, kept to re-tune the thresholds, still switches the rule that Pointwise follows."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pointwise_gemm.py"
    spec = importlib.util.spec_from_file_location("pointwise_gemm", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.RULES["few_positions_or_macs"] == (GEMM_MAX_POSITIONS, GEMM_MAX_MACS)
    calls: list[tuple[int, ...]] = []
    linear = F.linear
    monkeypatch.setattr(conv_module.F, "linear", lambda x, *a: calls.append(tuple(x.shape)) or linear(x, *a))
    m, x = Pointwise(4, 4), _channels_last(1, 4, 3, 3)
    with script.gemm_rule(*script.RULES["onednn_only"]):
        m(x)
    assert calls == []
    assert (conv_module.GEMM_MAX_POSITIONS, conv_module.GEMM_MAX_MACS) == (GEMM_MAX_POSITIONS, GEMM_MAX_MACS)
    m(x)
    assert calls == [(1, 3, 3, 4)]

"""DDF and DDF-Up: the functional op against a loop oracle, both backends, gradients, and module semantics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import operators.ddf as ddf_module
from operators import OperatorError, create_op, create_upsampler
from operators.ddf import DDF, DDFUp, ddf


def oracle(x, ch, sp, k, dilation, stride, combine):
    """y[n,c,o] = sum_k f(sp[n,k,o], ch[n,c,k]) * x[n,c,o*stride + k*dilation - pad], written as plain loops."""
    n, c, h, w = x.shape
    pad = (k - 1) // 2 * dilation
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    y = torch.zeros(n, c, ho, wo, dtype=x.dtype)
    for b, ch_i, i, j in itertools.product(range(n), range(c), range(ho), range(wo)):
        total = 0.0
        for a, bb in itertools.product(range(k), range(k)):
            r, q = i * stride + a * dilation - pad, j * stride + bb * dilation - pad
            if 0 <= r < h and 0 <= q < w:
                s, f = sp[b, a * k + bb, i, j], ch[b, ch_i, a, bb]
                total = total + (s * f if combine == "mul" else s + f) * x[b, ch_i, r, q]
        y[b, ch_i, i, j] = total
    return y


@pytest.fixture(params=["cpp", "torch"])
def backend(request, monkeypatch):
    monkeypatch.setattr(ddf_module, "BACKEND", request.param)
    return request.param


def _inputs(n=2, c=3, h=7, w=6, k=3, stride=1, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype)
    ch = torch.randn(n, c, k, k, generator=gen, dtype=dtype)
    sp = torch.randn(n, k * k, math.ceil(h / stride), math.ceil(w / stride), generator=gen, dtype=dtype)
    return x, ch, sp


@pytest.mark.parametrize("stride,dilation,combine,k", [
    (1, 1, "mul", 3), (2, 1, "mul", 3), (1, 2, "mul", 3), (2, 2, "add", 3), (1, 1, "add", 3), (2, 1, "mul", 5),
])
def test_forward_matches_oracle(backend, stride, dilation, combine, k) -> None:
    x, ch, sp = _inputs(k=k, stride=stride)
    want = oracle(x, ch, sp, k, dilation, stride, combine)
    torch.testing.assert_close(ddf(x, ch, sp, k, dilation, stride, combine), want)
    got32 = ddf(x.float(), ch.float(), sp.float(), k, dilation, stride, combine)
    torch.testing.assert_close(got32, want.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,dilation,combine", [(1, 1, "mul"), (2, 1, "mul"), (1, 2, "add"), (2, 2, "mul")])
def test_gradcheck(backend, stride, dilation, combine) -> None:
    x, ch, sp = (t.requires_grad_() for t in _inputs(n=1, c=2, h=5, w=6, stride=stride))
    assert torch.autograd.gradcheck(lambda a, b, c: ddf(a, b, c, 3, dilation, stride, combine), (x, ch, sp))


def test_backends_agree_in_float32(monkeypatch) -> None:
    x, ch, sp = (t.float().requires_grad_() for t in _inputs(n=2, c=16, h=13, w=11, stride=2))
    results = {}
    for name in ("cpp", "torch"):
        monkeypatch.setattr(ddf_module, "BACKEND", name)
        y = ddf(x, ch, sp, 3, 1, 2, "mul")
        grads = torch.autograd.grad(y.square().sum(), (x, ch, sp))
        results[name] = (y, *grads)
    for a, b in zip(results["cpp"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_constant_spatial_filter_equals_depthwise_conv() -> None:
    x, ch, _ = _inputs(n=2, c=4, h=9, w=9)
    sp = torch.ones(2, 9, 9, 9, dtype=x.dtype)
    want = torch.cat([F.conv2d(x[i : i + 1], ch[i].unsqueeze(1), padding=1, groups=4) for i in range(2)])
    torch.testing.assert_close(ddf(x, ch, sp), want)


def test_bad_shapes_are_explained() -> None:
    x, ch, sp = _inputs()
    with pytest.raises(OperatorError, match="spatial_filter must be"):
        ddf(x, ch, sp, stride=2)
    with pytest.raises(OperatorError, match="combine must be one of"):
        ddf(x, ch, sp, combine="max")


def test_ddf_module_shapes_heads_and_norms() -> None:
    m = create_op("ddf", 8, 8, stride=2, head=2, kernel_combine="add")
    y = m(torch.randn(2, 8, 9, 9))
    assert y.shape == (2, 8, 5, 5)
    with pytest.raises(OperatorError):
        create_op("ddf", 8, 16)
    # spatial filters are standardised over the k*k taps and scaled by gain/k (sqrt(2)/3 for ReLU)
    m = create_op("ddf", 8, 8)
    sp = m.spatial_norm(m.spatial_branch(torch.randn(1, 8, 6, 6))).reshape(1, 9, 36)
    torch.testing.assert_close(sp.mean(1), torch.zeros(1, 36), atol=1e-5, rtol=0)
    torch.testing.assert_close(sp.std(1), torch.full((1, 36), math.sqrt(2) / 3), atol=1e-4, rtol=0)
    assert m.channel_norm.std.shape == (8 * 9,) and m.channel_norm.std.requires_grad


def test_ddf_module_parameter_count() -> None:
    c, mid = 64, int(64 * 0.2)
    m = create_op("ddf", c, c)
    expected = (c * 9 + 9) + (c * mid + mid) + (mid * c * 9 + c * 9) + c * 9
    assert sum(p.numel() for p in m.parameters()) == expected


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("guided", [False, True])
def test_ddf_up_shapes_and_gradients(scale, guided) -> None:
    up = create_upsampler("ddf_up", 8, scale_factor=scale, guide_channels=3 if guided else None)
    x = torch.randn(2, 8, 5, 6, requires_grad=True)
    guide = torch.randn(2, 3, 5 * scale, 6 * scale, requires_grad=True) if guided else None
    y = up(x, guide)
    assert y.shape == (2, 8, 5 * scale, 6 * scale)
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0
    if guided:
        assert guide.grad.abs().sum() > 0


def test_ddf_up_branches_land_on_their_sub_pixels() -> None:
    """Each sub-pixel (a, b) of the output is the DDF of the input with branch a*s+b's filters."""
    torch.manual_seed(0)
    up = create_upsampler("ddf_up", 4, scale_factor=2, guide_channels=2).double()
    x, guide = torch.randn(1, 4, 5, 5, dtype=torch.float64), torch.randn(1, 2, 10, 10, dtype=torch.float64)
    y = up(x, guide)
    channel = up.channel_norm(up.channel_branch(x)).reshape(1, 4, 4, 3, 3)
    spatial_full = up.spatial_norm(up.spatial_branch(guide))  # (1, 9, 10, 10): one filter per output pixel
    for a, b in itertools.product(range(2), range(2)):
        want = oracle(x, channel[:, a * 2 + b], spatial_full[:, :, a::2, b::2], 3, 1, 1, "mul")
        torch.testing.assert_close(y[:, :, a::2, b::2], want)
    with pytest.raises(OperatorError, match="pass forward"):
        up(x)


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_channels_last_input_uses_the_same_math_and_keeps_its_layout(backend, combine) -> None:
    x, ch, sp = _inputs(n=2, c=5, h=9, w=8, stride=2)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = ddf(x_cl, ch, sp, 3, 1, 2, combine)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, oracle(x, ch, sp, 3, 1, 2, combine))
    leaves = (x_cl, ch.requires_grad_(), sp.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, c: ddf(a, b, c, 3, 1, 2, combine), leaves)


@pytest.mark.parametrize("combine", ["mul", "add"])
def test_branch_ablation_switches_one_dynamic_filter_off(combine: str) -> None:
    """The DDF paper's ablation: spatial only, channel only, both; the switched-off filter is neutral."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 7)
    both = create_op("ddf", 8, 8, 3, 2, kernel_combine=combine)
    spatial = create_op("ddf", 8, 8, 3, 2, kernel_combine=combine, branches="spatial")
    channel = create_op("ddf", 8, 8, 3, 2, kernel_combine=combine, branches="channel")
    assert spatial.channel_branch is None and channel.spatial_branch is None
    assert sum(p.numel() for p in spatial.parameters()) + sum(p.numel() for p in channel.parameters()) == sum(
        p.numel() for p in both.parameters())
    neutral = 1.0 if combine == "mul" else 0.0
    spatial.spatial_branch.load_state_dict(both.spatial_branch.state_dict())
    sp = both.spatial_norm(both.spatial_branch(x)).reshape(2, 9, 4, 4)
    want = ddf(x, torch.full((2, 8, 3, 3), neutral), sp, 3, 1, 2, combine)
    assert torch.allclose(spatial(x), want, atol=1e-6)
    channel.channel_branch.load_state_dict(both.channel_branch.state_dict())
    channel.channel_norm.load_state_dict(both.channel_norm.state_dict())
    ch = both.channel_norm(both.channel_branch(x)).reshape(2, 8, 3, 3)
    assert torch.allclose(channel(x), ddf(x, ch, torch.full((2, 9, 4, 4), neutral), 3, 1, 2, combine), atol=1e-6)
    assert spatial.macs(x) < both.macs(x) and channel.macs(x) < both.macs(x)


def test_sigmoid_normalisation_replaces_filter_normalisation() -> None:
    m = create_op("ddf", 8, 8, filter_norm="sigmoid")
    assert isinstance(m.spatial_norm, torch.nn.Sigmoid) and isinstance(m.channel_norm, torch.nn.Sigmoid)
    assert m(torch.randn(1, 8, 5, 5)).shape == (1, 8, 5, 5)
    with pytest.raises(OperatorError, match="branches must be one of"):
        create_op("ddf", 8, 8, branches="neither")


def test_spatial_mean_gives_the_standardised_spatial_filters_a_learnable_static_part() -> None:
    """Filter normalisation makes every spatial filter sum to zero; ``spatial_mean`` adds a per-tap mean."""
    torch.manual_seed(0)
    plain, with_mean = create_op("ddf", 8, 8), create_op("ddf", 8, 8, spatial_mean=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(with_mean) - count(plain) == 9
    x = torch.randn(2, 8, 6, 6)
    assert plain.filters(x)[1].sum(1).abs().max() < 1e-5
    sums = with_mean.filters(x)[1].sum(1)
    torch.testing.assert_close(sums, with_mean.spatial_norm.mean.sum().expand(2, 6, 6))
    assert with_mean(x).shape == x.shape
    with pytest.raises(OperatorError, match="spatial_mean"):
        create_op("ddf", 8, 8, spatial_mean=True, filter_norm="sigmoid")


def test_filter_statistics_see_the_zero_mean_spatial_filters() -> None:
    """benchmarks/ddf_filter_stats.py: spatial-only filters carry no mean; a filter shared over pixels keeps its sign."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ddf_filter_stats.py"
    spec = importlib.util.spec_from_file_location("ddf_filter_stats", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    torch.manual_seed(0)
    x = torch.relu(torch.randn(2, 8, 6, 6))
    spatial = benchmark.filter_stats(create_op("ddf", 8, 8, branches="spatial"), x)
    channel = benchmark.filter_stats(create_op("ddf", 8, 8, branches="channel"), x)
    assert spatial["dc_share"] < 1e-9 and spatial["dc_sign_consistency"] < 0.9
    assert 0 < channel["dc_share"] <= 1 and channel["dc_sign_consistency"] == pytest.approx(1.0)


@pytest.mark.parametrize("make", [lambda: DDF(16), lambda: DDF(16, stride=2), lambda: DDFUp(16),
                                  lambda: DDFUp(16, guide_channels=16)], ids=["ddf", "ddf-s2", "ddf_up", "ddf_up-guided"])
def test_gradients_at_initialisation_stay_bounded_where_the_input_is_all_zero(make) -> None:
    """A pixel with an all-zero input (after a ReLU) must not get a zero-variance spatial filter (zeroed biases
    gave one, and the 1e-10 in its standardisation turned it into gradients of ~1e10)."""
    torch.manual_seed(0)
    module, x = make(), torch.relu(torch.randn(2, 16, 12, 12))
    x[:, :, 3:9, 3:9] = 0
    y = module(x, x) if getattr(module, "guided", False) else module(x)
    (y * torch.randn_like(y)).sum().backward()
    worst = max(p.grad.abs().max().item() for p in module.parameters() if p.grad is not None)
    assert worst < 1e3, worst

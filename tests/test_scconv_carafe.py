"""SCConv (SRU, CRU) and CARAFE semantics."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from bench.measure import count_macs
from operators import OperatorError, create_op, create_upsampler
from operators.carafe import reassemble


def test_sru_all_informative_is_identity_and_all_redundant_cross_adds() -> None:
    sru = create_op("sru", 16, 16)
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        sru.norm.bias.fill_(20.0)  # every gate weight ~1 > 0.5: everything informative
    assert torch.allclose(sru(x), x)
    with torch.no_grad():
        sru.norm.bias.fill_(-20.0)  # every gate weight ~0: both parts are w * x, cross-added
    w = torch.sigmoid(sru.norm(x) * (sru.norm.weight / sru.norm.weight.sum()).reshape(1, -1, 1, 1))
    a, b = (w * x).chunk(2, dim=1)
    assert torch.allclose(sru(x), torch.cat([a + b, b + a], 1))


def test_cru_structure_and_parameter_count() -> None:
    c = 64
    cru = create_op("cru", c, c)
    up_sq = low_sq = c // 2 // 2
    expected = (c // 2 * up_sq) * 2 + (up_sq // 2 * c * 9 + c) + up_sq * c + low_sq * (c - low_sq)
    assert sum(p.numel() for p in cru.parameters()) == expected
    assert cru.group_conv.groups == 2


def test_sru_with_conv_is_sru_then_the_baseline_conv() -> None:
    m = create_op("sru", 32, 32, conv=True)
    x = torch.randn(2, 32, 8, 8)
    assert torch.equal(m(x), m.conv(m.sru(x)))
    conv = create_op("conv", 32, 32)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in conv.parameters()) + 2 * 32  # + GN
    assert count_macs(m, x) >= count_macs(conv, x)
    assert not any(isinstance(c, torch.nn.Conv2d) for c in create_op("sru", 32, 32).modules())


def test_scconv_is_sru_then_cru_and_cheaper_than_conv() -> None:
    m = create_op("scconv", 64, 64)
    assert m.sru.norm.num_groups == 4
    x = torch.randn(1, 64, 14, 14)
    assert torch.equal(m(x), m.cru(m.sru(x)))
    assert count_macs(m, x) < 0.4 * count_macs(create_op("conv", 64, 64), x)
    with pytest.raises(OperatorError, match="does not support stride"):
        create_op("scconv", 64, 64, stride=2)


def carafe_oracle(x, kernels, k, s):
    n, c, h, w = x.shape
    y = torch.zeros(n, c, h * s, w * s, dtype=x.dtype)
    r = k // 2
    for b, i, j in itertools.product(range(n), range(h * s), range(w * s)):
        for t in range(k * k):
            di, dj = divmod(t, k)
            si, sj = i // s + di - r, j // s + dj - r
            if 0 <= si < h and 0 <= sj < w:
                y[b, :, i, j] += kernels[b, t, i % s, j % s, i // s, j // s] * x[b, :, si, sj]
    return y


def test_carafe_reassembly_matches_oracle() -> None:
    x = torch.randn(1, 3, 4, 5, dtype=torch.float64)
    kernels = torch.randn(1, 9, 2, 2, 4, 5, dtype=torch.float64).softmax(1)
    torch.testing.assert_close(reassemble(x, kernels, 3, 2), carafe_oracle(x, kernels, 3, 2))


def test_carafe_with_uniform_kernels_is_a_box_filter_then_nearest() -> None:
    up = create_upsampler("carafe", 8)
    with torch.no_grad():
        up.encoder.weight.zero_()
    x = torch.randn(2, 8, 6, 7)
    box = F.avg_pool2d(x, 5, 1, 2, count_include_pad=True)
    assert torch.allclose(up(x), F.interpolate(box, scale_factor=2, mode="nearest"), atol=1e-6)
    c = 256
    assert sum(p.numel() for p in create_upsampler("carafe", c).parameters()) == c * 64 + 64 + 64 * 100 * 9 + 100

"""PAC transposed convolution (the `pac` upsampler): semantics, gradients, shapes, refusals and MACs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from bench.measure import count_macs
from operators import OperatorError, create_upsampler
from operators.pac import pac_transpose2d


def pac_oracle(x, guide, weight, bias):
    """Scatter form of a stride-2 transposed conv, padding (k-1)/2, output padding 1, each contribution
    weighted by exp(-0.5 ||g[out] - g[2 * in]||^2): one input pixel and one tap at a time."""
    n, _, h, w = x.shape
    k = weight.shape[-1]
    p = (k - 1) // 2
    y = torch.zeros(n, weight.shape[1], 2 * h, 2 * w, dtype=x.dtype)
    for b, i, j, ti, tj in itertools.product(range(n), range(h), range(w), range(k), range(k)):
        oi, oj = 2 * i - p + ti, 2 * j - p + tj
        if 0 <= oi < 2 * h and 0 <= oj < 2 * w:
            kern = torch.exp(-0.5 * ((guide[b, :, oi, oj] - guide[b, :, 2 * i, 2 * j]) ** 2).sum())
            y[b, :, oi, oj] = y[b, :, oi, oj] + kern * (weight[:, :, ti, tj].t() @ x[b, :, i, j])
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


def official_formulation(x, guide, weight, bias):
    """PAC's own recipe, re-derived: zero-insert, pad (k-1-p, k-1-p+1), unfold, multiply by the Gaussian
    kernel of the guide unfolded with padding (k-1)/2, contract with the weight in PAC's (unflipped) order."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    p = (k - 1) // 2
    dilated = x.new_zeros(n, c, 2 * h - 1, 2 * w - 1)
    dilated[:, :, ::2, ::2] = x
    lo = k - 1 - p
    padded = F.pad(dilated, (lo, lo + 1, lo, lo + 1))
    cols = F.unfold(padded, k).reshape(n, c, k, k, 2 * h, 2 * w)
    g = F.unfold(guide, k, padding=p).reshape(n, guide.shape[1], k, k, 2 * h, 2 * w)
    kern = torch.exp(-0.5 * (g - g[:, :, p : p + 1, p : p + 1]).pow(2).sum(1, keepdim=True))
    pac_weight = weight.flip(2, 3)  # PAC indexes its weight without conv_transpose2d's flip
    return torch.einsum("nckluv,cokl->nouv", cols * kern, pac_weight) + bias.reshape(1, -1, 1, 1)


def _tiny(seed=0, n=1, c=2, h=3, w=3, guide_c=2, k=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    guide = 0.7 * torch.randn(n, guide_c, 2 * h, 2 * w, generator=gen, dtype=torch.float64)
    weight = torch.randn(c, c, k, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(c, generator=gen, dtype=torch.float64)
    return x, guide, weight, bias


@pytest.mark.parametrize("k", [5, 3])
def test_forward_and_gradients_match_the_loop_oracle(k: int) -> None:
    x, guide, weight, bias = (t.requires_grad_(True) for t in _tiny(k=k))
    ours = pac_transpose2d(x, guide, weight, bias)
    ref = pac_oracle(x, guide, weight, bias)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    probe = torch.randn(ours.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = torch.autograd.grad((ours * probe).sum(), (x, guide, weight, bias))
    ref_grads = torch.autograd.grad((ref * probe).sum(), (x, guide, weight, bias))
    for name, a, b in zip(("input", "guide", "weight", "bias"), grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of the {name}")


def test_custom_backward_passes_gradcheck_on_a_rectangular_batch() -> None:
    x, guide, weight, bias = (t.requires_grad_(True) for t in _tiny(seed=1, n=2, c=2, h=2, w=3, guide_c=3))
    assert torch.autograd.gradcheck(pac_transpose2d, (x, guide, weight, bias))


def test_matches_the_official_formulation_with_the_weight_mirrored() -> None:
    x, guide, weight, bias = _tiny(seed=2, n=2, c=3, h=4, w=5, guide_c=2)
    torch.testing.assert_close(pac_transpose2d(x, guide, weight, bias), official_formulation(x, guide, weight, bias))


@pytest.mark.parametrize("k", [5, 3, 7])
def test_unit_adapting_kernel_is_conv_transpose2d(k: int) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 6, 5, 7, generator=gen, dtype=torch.float64)
    guide = torch.full((2, 3, 10, 14), 0.3, dtype=torch.float64)  # identical features everywhere: K = 1
    op = create_upsampler("pac", 6, guide_channels=3, kernel_size=k).double()
    want = F.conv_transpose2d(x, op.weight, op.bias, stride=2, padding=(k - 1) // 2, output_padding=1)
    torch.testing.assert_close(op(x, guide), want)  # the custom autograd function
    with torch.no_grad():
        torch.testing.assert_close(op(x, guide), want)  # the plain inference path


def test_output_shape_on_odd_sizes_and_the_self_guided_path() -> None:
    x = torch.randn(2, 4, 5, 7)
    guided = create_upsampler("pac", 4, guide_channels=3)
    assert guided(x, torch.randn(2, 3, 10, 14)).shape == (2, 4, 10, 14)
    assert guided(x, torch.randn(2, 3, 9, 13)).shape == (2, 4, 10, 14)  # resized to 2H x 2W first
    plain = create_upsampler("pac", 4)
    y = plain(x.requires_grad_(True))
    assert y.shape == (2, 4, 10, 14) and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # the self-guide is the input nearest-upsampled 2x
    torch.testing.assert_close(y, pac_transpose2d(x, F.interpolate(x, scale_factor=2), plain.weight, plain.bias))
    with pytest.raises(OperatorError, match="pass forward"):
        guided(x)


def test_other_scale_factors_are_refused() -> None:
    with pytest.raises(OperatorError, match="scale_factor must be 2"):
        create_upsampler("pac", 8, scale_factor=4)
    with pytest.raises(OperatorError, match="odd"):
        create_upsampler("pac", 8, kernel_size=4)


def test_parameters_and_filler() -> None:
    op = create_upsampler("pac", 16, guide_channels=8)
    assert sum(p.numel() for p in op.parameters()) == 16 * 16 * 25 + 16
    bound = 1 / math.sqrt(16 * 25)
    assert op.weight.abs().max() <= bound and op.bias.abs().max() <= bound
    assert op.weight.abs().max() > 0.9 * bound


def test_mac_formula_by_hand() -> None:
    # N=1, C=2, H=W=3, C_g=3, k=5: 25 taps x 9 input pixels, each 2*2 filter + 2 apply + 3 distance + 1 exp
    op = create_upsampler("pac", 2, guide_channels=3)
    x, guide = torch.randn(1, 2, 3, 3), torch.randn(1, 3, 6, 6)
    assert op.macs(x, guide) == 25 * 9 * (4 + 2 + 3 + 1) == 2250
    assert count_macs(op, x, guide) == 2250
    assert create_upsampler("pac", 2).macs(x) == 25 * 9 * (4 + 2 + 2 + 1)  # self-guided: C_g = C

"""`jbu`: joint bilateral upsampling against a direct per-pixel loop, its guide conventions, stability, MACs."""

import math

import pytest
import torch

import operators  # noqa: F401  registers the operators
from operators import OperatorError
from operators.registry import create_upsampler


def direct(x: torch.Tensor, guide: torch.Tensor, s: int, k: int, sigma_s: float, sigma_r: float) -> torch.Tensor:
    """Kopf et al.'s sum, written out per output pixel: the window clamped at the border, the low-res guide the
    pixel that centre decimation keeps."""
    n, c, h, w = x.shape
    r, off = k // 2, (s - 1) // 2
    out = torch.zeros(n, c, s * h, s * w, dtype=x.dtype)
    for b in range(n):
        for y in range(s * h):
            for z in range(s * w):
                u, v = (y + 0.5) / s - 0.5, (z + 0.5) / s - 0.5  # the output pixel in low-res coordinates
                num, den = torch.zeros(c, dtype=x.dtype), 0.0
                for i in range(y // s - r, y // s + r + 1):
                    for j in range(z // s - r, z // s + r + 1):
                        qi, qj = min(max(i, 0), h - 1), min(max(j, 0), w - 1)
                        spatial = math.exp(-((u - i) ** 2 + (v - j) ** 2) / (2 * sigma_s**2))
                        diff = guide[b, :, y, z] - guide[b, :, qi * s + off, qj * s + off]
                        weight = spatial * math.exp(-diff.pow(2).sum().item() / (2 * sigma_r**2))
                        num, den = num + weight * x[b, :, qi, qj], den + weight
                out[b, :, y, z] = num / den
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_jbu_equals_the_direct_sum(scale: int) -> None:
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    guide = torch.rand(2, 2, 4 * scale, 5 * scale, dtype=torch.float64)
    up = create_upsampler("jbu", 3, scale, guide_channels=2, sigma_range=0.3, kernel_size=3)
    assert torch.allclose(up(x, guide), direct(x, guide, scale, 3, 0.5, 0.3), atol=1e-12)


def test_unguided_jbu_is_bilateral_upsampling_of_its_input() -> None:
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    own = x.repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert torch.allclose(create_upsampler("jbu", 2, 2)(x), direct(x, own, 2, 5, 0.5, 0.1), atol=1e-12)


def test_jbu_keeps_edges_that_bilinear_blurs_and_survives_distant_guides() -> None:
    low = torch.zeros(1, 1, 4, 4)
    low[..., 2:] = 1.0  # a step between columns 1 and 2 of the low-res map
    guide = torch.zeros(1, 1, 16, 16)
    guide[..., 8:] = 1.0  # the guide's edge at the same place, x4
    out = create_upsampler("jbu", 1, 4, guide_channels=1)(low, guide)
    assert torch.allclose(out[..., :8], torch.zeros(1)) and torch.allclose(out[..., 8:], torch.ones(1))
    far = create_upsampler("jbu", 1, 4, guide_channels=1, sigma_range=1e-3)(low, guide * 100)
    assert torch.isfinite(far).all()  # every range weight would underflow without the nearest-tap shift


def test_jbu_refuses_bad_settings_and_counts_its_macs() -> None:
    with pytest.raises(OperatorError, match="odd"):
        create_upsampler("jbu", 1, 2, kernel_size=4)
    with pytest.raises(OperatorError, match="positive"):
        create_upsampler("jbu", 1, 2, sigma_range=0.0)
    with pytest.raises(OperatorError, match="pass forward"):
        create_upsampler("jbu", 1, 2, guide_channels=3)(torch.rand(1, 1, 2, 2))
    up = create_upsampler("jbu", 4, 2, guide_channels=3)
    assert up.macs(torch.rand(2, 4, 5, 6), torch.rand(2, 3, 10, 12)) == 2 * 25 * 4 * 30 * (4 + 3 + 3)
    assert sum(p.numel() for p in up.parameters()) == 0

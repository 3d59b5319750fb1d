"""Joint bilateral upsampling (Kopf et al., SIGGRAPH 2007): the classical, non-learned guided upsampler.

Each output pixel p is a normalised sum over a k x k window of low-resolution pixels q around p's cell,
weighted by a spatial Gaussian on the low-resolution distance between p and q and a range Gaussian on the
guide's difference between p and q:

    out(p) = sum_q x(q) f(|p/s - q|) g(||G(p) - G(q)||) / sum_q f(|p/s - q|) g(||G(p) - G(q)||)

PAC (Su et al., CVPR 2019) writes it as a pixel-adaptive convolution with fixed weights: the spatial
Gaussian is the shared filter, the range Gaussian its adapting kernel. The guide of a low-resolution pixel
is the guide at the pixel that centre decimation keeps (offset (s-1)//2 of its s x s block), so on depth
decimated as PAC does it is the guide at exactly the place the depth was sampled. Without a guide the input
guides itself (bilateral upsampling). Computed as a loop over the k^2 taps into one output buffer, so the
forward never holds a k^2-times larger tensor (the guide distances are computed twice: once for the
nearest tap, once for the weights); autograd keeps each tap's weights for the backward pass
(the operator has no parameters: in the suite it runs as a non-learned row).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.registry import OperatorError, register_op


def _nearest_up(x: Tensor, scale: int) -> Tensor:
    return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def joint_bilateral_upsample(x: Tensor, guide: Tensor, guide_low: Tensor, scale: int, kernel_size: int,
                             sigma_spatial: float, sigma_range: float) -> Tensor:
    """``x`` (N, C, H, W) upsampled ``scale`` x under ``guide`` (N, C_g, sH, sW) and its low-res ``guide_low``."""
    n, c, h, w = x.shape
    r = kernel_size // 2
    xp = F.pad(x, (r, r, r, r), mode="replicate")
    gp = F.pad(guide_low, (r, r, r, r), mode="replicate")
    # each output pixel's offset from its cell's centre, in low-resolution pixels (align_corners=False)
    sub = (x.new_tensor(range(scale)) - (scale - 1) / 2) / scale
    windows = [(slice(None), slice(None), slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
               for dy in range(-r, r + 1) for dx in range(-r, r + 1)]

    def distance(window: tuple) -> Tensor:
        return (guide - _nearest_up(gp[window], scale)).pow(2).sum(1, keepdim=True)

    # the nearest tap's range weight is 1: subtracting its distance cancels in the ratio and keeps the
    # weights from all underflowing to 0 / 0 where the guide differs everywhere by many sigma_range
    nearest = distance(windows[0])
    for window in windows[1:]:
        nearest = torch.minimum(nearest, distance(window))
    out = x.new_zeros(n, c, scale * h, scale * w)
    total = x.new_zeros(n, 1, scale * h, scale * w)
    for t, window in enumerate(windows):
        dy, dx = t // kernel_size - r, t % kernel_size - r
        wy, wx = (-(sub - dy) ** 2 / (2 * sigma_spatial**2)).exp(), (-(sub - dx) ** 2 / (2 * sigma_spatial**2)).exp()
        spatial = (wy[:, None] * wx[None, :]).repeat(h, w)  # (sH, sW)
        weight = spatial * (-(distance(window) - nearest) / (2 * sigma_range**2)).exp()
        out += weight * _nearest_up(xp[window], scale)
        total += weight
    return out / total


@register_op("jbu", kind="upsample", paper="Joint Bilateral Upsampling (Kopf et al., SIGGRAPH 2007)", guide=True)
class JointBilateralUpsample(nn.Module):
    """Joint bilateral upsampling: spatial x range Gaussian weights over a k x k low-res window; no parameters."""

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None,
                 kernel_size: int = 5, sigma_spatial: float = 0.5, sigma_range: float = 0.1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise OperatorError(f"jbu: kernel_size must be a positive odd number, got {kernel_size}")
        if sigma_spatial <= 0 or sigma_range <= 0:
            raise OperatorError(f"jbu: sigma_spatial and sigma_range must be positive, got {sigma_spatial} and "
                                f"{sigma_range}")
        self.channels, self.scale_factor, self.guide_channels = channels, scale_factor, guide_channels
        self.kernel_size, self.sigma_spatial, self.sigma_range = kernel_size, sigma_spatial, sigma_range

    def guides(self, x: Tensor, guide: Tensor | None) -> tuple[Tensor, Tensor]:
        """The guide at the output resolution and at the input's (the pixel centre decimation keeps)."""
        s, (h, w) = self.scale_factor, x.shape[-2:]
        if self.guide_channels is None:
            if guide is not None:
                raise OperatorError("jbu was built without guide_channels (self-guided); build it with "
                                    "guide_channels to use a guide")
            return _nearest_up(x, s), x
        if guide is None:
            raise OperatorError("jbu was built with guide_channels: pass forward(x, guide)")
        if guide.shape[1] != self.guide_channels:
            raise OperatorError(f"jbu: guide has {guide.shape[1]} channels, built for {self.guide_channels}")
        if tuple(guide.shape[-2:]) != (s * h, s * w):
            guide = F.interpolate(guide, size=(s * h, s * w), mode="bilinear", align_corners=False)
        offset = (s - 1) // 2
        return guide, guide[..., offset::s, offset::s]

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        high, low = self.guides(x, guide)
        return joint_bilateral_upsample(x, high, low, self.scale_factor, self.kernel_size, self.sigma_spatial,
                                        self.sigma_range)

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        """Per tap and output value: the guide distance (C_g), its exponential and the spatial product (2), the
        weighted sum (C) and the normaliser (1)."""
        n, c, h, w = x.shape
        guide_c = c if self.guide_channels is None else self.guide_channels
        return n * self.kernel_size**2 * self.scale_factor**2 * h * w * (c + guide_c + 3)

    def extra_repr(self) -> str:
        guide = "self-guided" if self.guide_channels is None else f"guide_channels={self.guide_channels}"
        return (f"{self.channels}, scale_factor={self.scale_factor}, kernel_size={self.kernel_size}, "
                f"sigma_spatial={self.sigma_spatial}, sigma_range={self.sigma_range}, {guide}")

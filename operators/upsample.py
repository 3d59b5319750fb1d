"""Baseline upsample-kind operators: the FPN upsamplers that DDF-Up and CARAFE are compared with.

Every upsampler maps (N, C, H, W) to (N, C, s*H, s*W) and takes ``forward(x, guide=None)``.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from operators.registry import register_op


class Upsampler(nn.Module):
    """Common constructor signature of upsample-kind operators."""

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None) -> None:
        super().__init__()
        self.channels, self.scale_factor = channels, scale_factor


@register_op("nearest", kind="upsample", script=True, exact_macs=True)
class NearestUpsample(Upsampler):
    """Nearest-neighbour interpolation (stock FPN top-down path); no parameters, no MACs."""

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return F.interpolate(x, scale_factor=float(self.scale_factor), mode="nearest")

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        return 0


@register_op("bilinear", kind="upsample", script=True)
class BilinearUpsample(Upsampler):
    """Bilinear interpolation (align_corners=False); counted as 4 MACs per output value."""

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return F.interpolate(x, scale_factor=float(self.scale_factor), mode="bilinear", align_corners=False)

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        return 4 * x.numel() * self.scale_factor**2


@register_op("deconv", kind="upsample", script=True, paper="Deconvolution (Zeiler et al., 2010)", exact_macs=True)
class DeconvUpsample(Upsampler):
    """Transposed convolution, kernel 2s, stride s, padding s/2: output exactly s x larger."""

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None) -> None:
        super().__init__(channels, scale_factor, guide_channels)
        self.deconv = nn.ConvTranspose2d(channels, channels, 2 * scale_factor, stride=scale_factor,
                                         padding=scale_factor // 2)

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return self.deconv(x)

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        k = self.deconv.kernel_size
        return x.numel() * self.channels * k[0] * k[1]


@register_op("pixel_shuffle", kind="upsample", script=True, paper="ESPCN (Shi et al., CVPR 2016)", exact_macs=True)
class PixelShuffleUpsample(Upsampler):
    """3x3 conv to C*s^2 channels, then pixel shuffle (sub-pixel convolution)."""

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None,
                 kernel_size: int = 3) -> None:
        super().__init__(channels, scale_factor, guide_channels)
        self.conv = nn.Conv2d(channels, channels * scale_factor**2, kernel_size, padding=kernel_size // 2)
        self.shuffle = nn.PixelShuffle(scale_factor)

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return self.shuffle(self.conv(x))

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        k = self.conv.kernel_size
        return x.numel() * self.conv.out_channels * k[0] * k[1]

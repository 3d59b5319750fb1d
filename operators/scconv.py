"""SCConv (Li et al., CVPR 2023): Spatial Reconstruction Unit then Channel Reconstruction Unit.

Both units preserve channels and resolution; SCConv replaces a bottleneck's 3x3 convolution.
Where the public code changed semantics across commits we follow the paper:
- SRU gates with W1 = 1 where the sigmoid weight exceeds the threshold (else the weight) and
  W2 = 0 there (else the weight), so GroupNorm's affine parameters keep receiving gradients;
- CRU fuses its two branches with a softmax across the two, per channel (paper, Eq. 7).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from operators.conv import Conv, Pointwise, conv_macs
from operators.registry import OperatorError, register_op


class SRU(nn.Module):
    """Spatial Reconstruction Unit: separate informative from redundant features and cross-add them."""

    def __init__(self, channels: int, group_num: int = 16, gate_threshold: float = 0.5) -> None:
        super().__init__()
        if channels % 2 or channels % group_num:
            raise OperatorError(f"SRU: channels ({channels}) must be even and divisible by group_num ({group_num})")
        self.norm = nn.GroupNorm(group_num, channels)
        self.gate_threshold = gate_threshold

    def forward(self, x: Tensor) -> Tensor:
        gamma = self.norm.weight
        weights = torch.sigmoid(self.norm(x) * (gamma / gamma.sum()).reshape(1, -1, 1, 1))
        informative = weights > self.gate_threshold
        x1 = torch.where(informative, x, weights * x)
        x2 = torch.where(informative, torch.zeros_like(x), weights * x)
        a1, b1 = x1.chunk(2, dim=1)
        a2, b2 = x2.chunk(2, dim=1)
        return torch.cat([a1 + b2, b1 + a2], dim=1)

    def macs(self, x: Tensor) -> int:
        # GroupNorm (statistics, normalise, affine) ~4, gating weight 2, two gated products, cross-add
        return 9 * x.numel()


class CRU(nn.Module):
    """Channel Reconstruction Unit: rich features from half the channels, cheap reuse of the other half."""

    def __init__(self, channels: int, alpha: float = 0.5, squeeze_ratio: int = 2, group_size: int = 2,
                 group_kernel_size: int = 3) -> None:
        super().__init__()
        self.upper = int(alpha * channels)
        self.lower = channels - self.upper
        up_sq, low_sq = self.upper // squeeze_ratio, self.lower // squeeze_ratio
        if min(up_sq, low_sq) < 1 or up_sq % group_size:
            raise OperatorError(f"CRU: {channels} channels are too few for alpha={alpha}, "
                                f"squeeze_ratio={squeeze_ratio}, group_size={group_size}")
        self.squeeze_upper = Pointwise(self.upper, up_sq)
        self.squeeze_lower = Pointwise(self.lower, low_sq)
        self.group_conv = nn.Conv2d(up_sq, channels, group_kernel_size, padding=group_kernel_size // 2,
                                    groups=group_size)
        self.point_upper = Pointwise(up_sq, channels)
        self.point_lower = Pointwise(low_sq, channels - low_sq)

    def forward(self, x: Tensor) -> Tensor:
        upper, lower = torch.split(x, [self.upper, self.lower], dim=1)
        upper, lower = self.squeeze_upper(upper), self.squeeze_lower(lower)
        y1 = self.group_conv(upper) + self.point_upper(upper)
        y2 = torch.cat([self.point_lower(lower), lower], dim=1)
        scores = torch.stack([y1.mean((2, 3)), y2.mean((2, 3))]).softmax(dim=0)[..., None, None]
        return scores[0] * y1 + scores[1] * y2

    def macs(self, x: Tensor) -> int:
        convs = (self.squeeze_upper, self.squeeze_lower, self.group_conv, self.point_upper, self.point_lower)
        n, c, h, w = x.shape
        shapes = {self.squeeze_upper: (n, self.upper, h, w), self.squeeze_lower: (n, self.lower, h, w)}
        up_shape = (n, self.squeeze_upper.out_channels, h, w)
        low_shape = (n, self.squeeze_lower.out_channels, h, w)
        shapes.update({self.group_conv: up_shape, self.point_upper: up_shape, self.point_lower: low_shape})
        return sum(conv_macs(m, shapes[m]) for m in convs) + 4 * n * c * h * w  # pooling + weighted sum


def _channel_preserving(name: str, in_channels: int, out_channels: int, stride: int, kernel_size: int) -> None:
    if out_channels != in_channels:
        raise OperatorError(f"{name} preserves channels: cannot map {in_channels} to {out_channels}")
    if stride != 1:
        raise OperatorError(f"{name} preserves resolution: stride must be 1")
    if kernel_size != 3:
        raise OperatorError(f"{name}: kernel_size is fixed by the design (3), got {kernel_size}")


PAPER = "SCConv (Li et al., CVPR 2023)"


class SRUThenConv(nn.Module):
    """SRU then the standard 3x3 conv: SRU as a unit in front of the convolution it refines, the conv left where
    SCConv would put CRU (one reading of the paper's "SRU only" line, since SRU itself mixes no pixels)."""

    def __init__(self, channels: int, group_num: int = 16, gate_threshold: float = 0.5) -> None:
        super().__init__()
        self.sru = SRU(channels, group_num, gate_threshold)
        self.conv = Conv(channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.sru(x))

    def macs(self, x: Tensor) -> int:
        return self.sru.macs(x) + self.conv.macs(x)


@register_op("sru", kind="conv", paper=PAPER, script=True, stride=False, channel_change=False)
def sru(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, group_num: int = 16,
        gate_threshold: float = 0.5, conv: bool = False) -> SRU | SRUThenConv:
    """SRU alone (no spatial mixing in the slot), or with ``conv=True`` SRU then the standard 3x3 conv: the two
    readings of the paper's "SRU only" ablation; group_num 16 as in SRU's own default."""
    _channel_preserving("sru", in_channels, out_channels, stride, kernel_size)
    unit = SRUThenConv if conv else SRU
    return unit(in_channels, group_num, gate_threshold)


@register_op("cru", kind="conv", paper=PAPER, script=True, stride=False, channel_change=False)
def cru(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, alpha: float = 0.5,
        squeeze_ratio: int = 2, group_size: int = 2, group_kernel_size: int = 3) -> CRU:
    """CRU alone (the paper's ablation)."""
    _channel_preserving("cru", in_channels, out_channels, stride, kernel_size)
    return CRU(in_channels, alpha, squeeze_ratio, group_size, group_kernel_size)


@register_op("scconv", kind="conv", paper=PAPER, script=True, stride=False, channel_change=False)
class SCConv(nn.Module):
    """SRU then CRU; channel- and resolution-preserving (group_num 4, alpha 1/2, squeeze 2)."""

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 group_num: int = 4, gate_threshold: float = 0.5, alpha: float = 0.5, squeeze_ratio: int = 2,
                 group_size: int = 2, group_kernel_size: int = 3) -> None:
        super().__init__()
        _channel_preserving("scconv", in_channels, in_channels if out_channels is None else out_channels,
                            stride, kernel_size)
        self.sru = SRU(in_channels, group_num, gate_threshold)
        self.cru = CRU(in_channels, alpha, squeeze_ratio, group_size, group_kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.cru(self.sru(x))

    def macs(self, x: Tensor) -> int:
        return self.sru.macs(x) + self.cru.macs(x)

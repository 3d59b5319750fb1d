"""Baseline conv-kind operators: the dense convolution and its depthwise-separable factorisation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from operators.registry import OperatorError, register_op


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Zero padding that keeps ``H_out = ceil(H / stride)`` for an odd kernel."""
    if kernel_size % 2 != 1:
        raise OperatorError(f"kernel_size must be odd for size-preserving padding, got {kernel_size}")
    return dilation * (kernel_size - 1) // 2


def conv_macs(conv: nn.Conv2d, shape: tuple[int, ...] | torch.Size) -> int:
    """Multiply-accumulates of ``conv`` on an input of ``shape``: one per weight per output position."""
    n, _, h, w = shape
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    (dh, dw), (ph, pw) = conv.dilation, conv.padding
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return n * conv.out_channels * (conv.in_channels // conv.groups) * kh * kw * h_out * w_out


@register_op("conv", kind="conv", paper=None, dilation=True, exact_macs=True)
class Conv(nn.Conv2d):
    """Standard k x k convolution without bias: the baseline every operator is compared to."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=same_padding(kernel_size, dilation), dilation=dilation,
                         groups=groups, bias=bias)

    def macs(self, x: Tensor) -> int:
        return conv_macs(self, x.shape)


@register_op("dwconv", kind="conv", paper="MobileNets (Howard et al., 2017)", dilation=True, exact_macs=True)
class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k then pointwise 1x1 (no activation between, as in Xception's separable conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   padding=same_padding(kernel_size, dilation), dilation=dilation,
                                   groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))

    def macs(self, x: Tensor) -> int:
        dw = conv_macs(self.depthwise, x.shape)
        n, _, h, w = x.shape
        h_out, w_out = -(-h // self.depthwise.stride[0]), -(-w // self.depthwise.stride[1])
        return dw + n * self.pointwise.in_channels * self.pointwise.out_channels * h_out * w_out

"""Baseline conv-kind operators: the dense convolution and its depthwise-separable factorisation."""

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
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


#: At or below this many output positions (batch x height x width), a channels-last 1x1 convolution on the CPU
#: runs as one matrix product: there oneDNN's 1x1 kernel takes up to 2.7x the time of the same GEMM (ResNet-50's
#: stage 4 at batch 1), while from about 4x this size on it is the faster one (benchmarks/pointwise_gemm.py).
GEMM_MAX_POSITIONS = 128
#: Convolutions of at most this many multiply-accumulates also run as a GEMM, however many positions: there
#: oneDNN's fixed cost per call dominates. For the 40 such shapes of Oct-ResNet-50, MobileNetV2 and ShuffleNetV2
#: at batch 1, oneDNN took a median 1.24x the GEMM's time (0.76x-2.0x); benchmarks/pointwise_gemm.py.
GEMM_MAX_MACS = 2**24


@register_notrace_module  # its GEMM switch depends on the input's shape
class Pointwise(nn.Conv2d):
    """1x1 convolution (any stride) that computes small channels-last CPU inputs as a GEMM.

    Same parameters, state dict and result as ``nn.Conv2d(cin, cout, 1, stride)``; only the kernel differs where
    oneDNN's is slow (``GEMM_MAX_POSITIONS``, ``GEMM_MAX_MACS``), so every network that uses it gets the speed-up.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 1, stride=stride, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        # A trace records one path for every shape, so it takes the general one (the GEMM is a CPU speed-up only);
        # TorchScript compiles the general one only.
        if not torch.jit.is_scripting() and not torch.jit.is_tracing() and self._prefers_gemm(x):
            return self._gemm(x)
        return self._conv_forward(x, self.weight, self.bias)

    @torch.jit.unused
    def _prefers_gemm(self, x: Tensor) -> bool:
        return _prefers_gemm(x, self.stride[0], self.in_channels * self.out_channels)

    @torch.jit.unused
    def _gemm(self, x: Tensor) -> Tensor:
        if self.stride != (1, 1):
            x = x[:, :, ::self.stride[0], ::self.stride[1]].contiguous(memory_format=torch.channels_last)
        # channels-last memory is (N, H, W, C): the permuted view is a contiguous (positions x channels) matrix
        y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)


def _prefers_gemm(x: Tensor, stride: int, weights: int) -> bool:
    n, _, h, w = x.shape
    positions = n * -(-h // stride) * -(-w // stride)
    return (x.device.type == "cpu" and (positions <= GEMM_MAX_POSITIONS or positions * weights <= GEMM_MAX_MACS)
            and x.is_contiguous(memory_format=torch.channels_last))


@register_op("conv", kind="conv", paper=None, script=True, dilation=True, exact_macs=True)
class Conv(nn.Conv2d):
    """Standard k x k convolution without bias: the baseline every operator is compared to."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=same_padding(kernel_size, dilation), dilation=dilation,
                         groups=groups, bias=bias)

    def macs(self, x: Tensor) -> int:
        return conv_macs(self, x.shape)


@register_op("dwconv", kind="conv", paper="MobileNets (Howard et al., 2017)", script=True, dilation=True,
             exact_macs=True)
class DepthwiseSeparableConv(nn.Module):
    """Depthwise k x k then pointwise 1x1 (no activation between, as in Xception's separable conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, kernel_size, stride=stride,
                                   padding=same_padding(kernel_size, dilation), dilation=dilation,
                                   groups=in_channels, bias=False)
        self.pointwise = Pointwise(in_channels, out_channels, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))

    def macs(self, x: Tensor) -> int:
        dw = conv_macs(self.depthwise, x.shape)
        n, _, h, w = x.shape
        h_out, w_out = -(-h // self.depthwise.stride[0]), -(-w // self.depthwise.stride[1])
        return dw + n * self.pointwise.in_channels * self.pointwise.out_channels * h_out * w_out

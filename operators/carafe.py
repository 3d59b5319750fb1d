"""CARAFE: Content-Aware ReAssembly of FEatures (Wang et al., ICCV 2019), in pure PyTorch.

Each output pixel is a softmax-weighted sum of the k_up x k_up neighbourhood around its source
pixel, with the weights predicted from the content. The reassembly loops over the k_up^2 taps and
accumulates into the output in place, so memory stays at one output-sized buffer (no unfold). On CUDA it
runs as Triton kernels instead (``operators/gpu/carafe.py``), behind the custom op ``bench::carafe_reassemble``;
the loop stays the CPU path, the fallback where Triton is missing, and the kernels' oracle.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators import gpu
from operators.conv import Pointwise, conv_macs
from operators.registry import OperatorError, register_op


def reassemble(x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> Tensor:
    """CARAFE reassembly: ``kernels`` (N, k^2, s, s, H, W) normalised weights; returns (N, C, sH, sW).

    On CUDA through the custom op (the Triton kernels; outputs keep the input's layout), elsewhere the tap loop.
    """
    n, _, h, w = x.shape
    want = (n, up_kernel**2, scale, scale, h, w)
    if tuple(kernels.shape) != want:
        raise OperatorError(f"carafe: reassembly kernels must be {want} for an input {tuple(x.shape)}, "
                            f"got {tuple(kernels.shape)}")
    if gpu.on_cuda(x):
        return _reassemble_op(x, kernels, up_kernel, scale)
    return reassemble_loop(x, kernels, up_kernel, scale)


def reassemble_loop(x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> Tensor:
    """The reassembly as a PyTorch loop over the k^2 taps, one output-sized buffer: the CPU path and the oracle."""
    n, c, h, w = x.shape
    r = up_kernel // 2
    xp = F.pad(x, (r, r, r, r))
    out = x.new_zeros(n, c, h, scale, w, scale)
    weights = kernels.permute(0, 1, 4, 2, 5, 3)  # (N, k^2, H, s, W, s)
    for t in range(up_kernel**2):
        di, dj = divmod(t, up_kernel)
        tap = xp[:, :, di : di + h, dj : dj + w]
        out.addcmul_(tap[:, :, :, None, :, None], weights[:, t, None])
    return out.reshape(n, c, h * scale, w * scale)


def _reassemble_backward_loop(grad: Tensor, x: Tensor, kernels: Tensor, up_kernel: int,
                              scale: int) -> tuple[Tensor, Tensor]:
    """Gradients of the loop, tap by tap (the op's fallback where Triton is missing): input's layout, contiguous."""
    n, c, h, w = x.shape
    r = up_kernel // 2
    g = grad.reshape(n, c, h, scale, w, scale)
    weights = kernels.permute(0, 1, 4, 2, 5, 3)  # (N, k^2, H, s, W, s)
    xp = F.pad(x, (r, r, r, r))
    gxp = torch.zeros_like(xp)
    gk = kernels.new_empty(kernels.shape)
    for t in range(up_kernel**2):
        di, dj = divmod(t, up_kernel)
        gxp[:, :, di : di + h, dj : dj + w] += (g * weights[:, t, None]).sum((3, 5))
        gk[:, t] = (g * xp[:, :, di : di + h, None, dj : dj + w, None]).sum(1).permute(0, 2, 4, 1, 3)
    gx = gxp[:, :, r : r + h, r : r + w]
    return gx.contiguous(memory_format=gpu.output_format(x)), gk


@torch.library.custom_op("bench::carafe_reassemble", mutates_args=())
def _reassemble_op(x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> Tensor:
    """The reassembly on CUDA: the Triton kernels, or the loop where Triton cannot be imported."""
    if (triton_kernels := gpu.kernels_for(x, "carafe")) is not None:
        return triton_kernels.forward(x, kernels, up_kernel, scale)
    return reassemble_loop(x, kernels, up_kernel, scale).contiguous(memory_format=gpu.output_format(x))


@_reassemble_op.register_fake
def _(x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> Tensor:
    n, c, h, w = x.shape
    return x.new_empty(n, c, h * scale, w * scale).contiguous(memory_format=gpu.output_format(x))


@torch.library.custom_op("bench::carafe_reassemble_backward", mutates_args=())
def _reassemble_backward_op(grad: Tensor, x: Tensor, kernels: Tensor, up_kernel: int,
                            scale: int) -> tuple[Tensor, Tensor]:
    """Gradients of the input and the kernels on CUDA: the Triton kernels, or the loop's where Triton is missing."""
    if (triton_kernels := gpu.kernels_for(x, "carafe")) is not None:
        return triton_kernels.backward(grad, x, kernels, up_kernel, scale)
    return _reassemble_backward_loop(grad, x, kernels, up_kernel, scale)


@_reassemble_backward_op.register_fake
def _(grad: Tensor, x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape).contiguous(memory_format=gpu.output_format(x)), kernels.new_empty(kernels.shape)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, kernels, ctx.up_kernel, ctx.scale = inputs
    ctx.save_for_backward(x, kernels)


def _backward(ctx: Any, grad: Tensor) -> tuple:
    x, kernels = ctx.saved_tensors
    gx, gk = _reassemble_backward_op(grad, x, kernels, ctx.up_kernel, ctx.scale)
    return gx, gk, None, None


_reassemble_op.register_autograd(_backward, setup_context=_setup_context)


@register_op("carafe", kind="upsample", paper="CARAFE (Wang et al., ICCV 2019)")
class CARAFE(nn.Module):
    """CARAFE upsampler: 1x1 channel compressor (64), 3x3 content encoder, softmax kernels of size 5."""

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None,
                 compressed_channels: int = 64, encoder_kernel: int = 3, up_kernel: int = 5) -> None:
        super().__init__()
        if up_kernel % 2 != 1 or encoder_kernel % 2 != 1:
            raise OperatorError("carafe: up_kernel and encoder_kernel must be odd")
        self.scale, self.up_kernel = scale_factor, up_kernel
        self.compressor = Pointwise(channels, compressed_channels, bias=True)
        self.encoder = nn.Conv2d(compressed_channels, up_kernel**2 * scale_factor**2, encoder_kernel,
                                 padding=encoder_kernel // 2)
        nn.init.xavier_uniform_(self.compressor.weight)
        nn.init.zeros_(self.compressor.bias)
        nn.init.normal_(self.encoder.weight, std=0.001)
        nn.init.zeros_(self.encoder.bias)

    def kernels(self, x: Tensor) -> Tensor:
        """Normalised reassembly kernels (N, k_up^2, s, s, H, W): the pixel-shuffled encoder output, softmaxed."""
        n, _, h, w = x.shape
        raw = self.encoder(self.compressor(x)).reshape(n, self.up_kernel**2, self.scale, self.scale, h, w)
        return raw.softmax(dim=1)

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return reassemble(x, self.kernels(x), self.up_kernel, self.scale)

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        n, c, h, w = x.shape
        compressed = (n, self.compressor.out_channels, h, w)
        kernel_values = n * self.encoder.out_channels * h * w
        reassembly = self.up_kernel**2 * x.numel() * self.scale**2
        return (conv_macs(self.compressor, x.shape) + conv_macs(self.encoder, compressed)
                + 3 * kernel_values + reassembly)

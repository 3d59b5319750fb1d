"""Decoupled Dynamic Filter (DDF, Zhou et al., CVPR 2021): the functional op and the DDF module.

``y[n,c,p] = sum_k f(spatial[n,k,p], channel[n,c,k]) * x[n,c,p+k]`` with f = product ("mul") or
sum ("add"). The op never builds a k*k-times-larger tensor: on CUDA Triton kernels (``operators/gpu/ddf.py``)
walk the taps per tile; on the CPU a compiled kernel (``csrc/ddf_cpu.cpp``, built on first use and cached)
walks planes tap by tap; elsewhere, or where neither is available, a PyTorch loop over the k*k taps keeps one
input-sized temporary at a time, in the forward and the backward. The loop is also the kernels' oracle.
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators import gpu
from operators.conv import Pointwise
from operators.registry import OperatorError, register_op

COMBINES = ("mul", "add")
BRANCHES = ("both", "spatial", "channel")
"""DDF's branch ablation: both dynamic filters, or one of them (the other then neutral: ones for ``mul``,
zeros for ``add``)."""
FILTER_NORMS = ("fn", "sigmoid")
"""DDF's normalisation ablation: its filter normalisation, or a sigmoid on the raw filters."""
BACKEND = os.environ.get("BENCH_DDF_BACKEND", "auto")
"""``auto`` (Triton kernels on CUDA, the compiled kernel on the CPU, where possible), ``cpp`` (require the CPU
kernel) or ``torch`` (the PyTorch loop on every device)."""
_SOURCE = Path(__file__).with_name("csrc") / "ddf_cpu.cpp"


@functools.cache
def cpu_kernel() -> Any | None:
    """The compiled CPU kernel, built once per machine (about a minute) and cached; None if it cannot be built."""
    try:
        from torch.utils.cpp_extension import load

        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        tag = hashlib.sha1((flags + _SOURCE.read_text() + torch.__version__).encode()).hexdigest()[:10]
        return load(name=f"bench_ddf_cpu_{tag}", sources=[str(_SOURCE)],
                    extra_cflags=["-O3", "-fopenmp", "-march=native"], extra_ldflags=["-fopenmp"])
    except Exception as err:  # noqa: BLE001 - no compiler or no ninja: fall back, loudly
        warnings.warn(f"DDF: the compiled CPU kernel could not be built ({type(err).__name__}: {err}); "
                      "using the slower PyTorch loop. Install a C++ compiler and ninja for full speed.",
                      RuntimeWarning, stacklevel=2)
        return None


def _use_cpp(x: Tensor) -> bool:
    if x.device.type != "cpu" or BACKEND == "torch":
        return False
    kernel = cpu_kernel()
    if kernel is None and BACKEND == "cpp":
        raise RuntimeError("BENCH_DDF_BACKEND=cpp but the DDF CPU kernel could not be built")
    return kernel is not None


def _triton_kernels(x: Tensor) -> ModuleType | None:
    """The Triton DDF kernels where ``x`` is on CUDA and Triton imports (unless BENCH_DDF_BACKEND=torch), else None."""
    return None if BACKEND == "torch" else gpu.kernels_for(x, "ddf")


def output_size(size: int, stride: int) -> int:
    """DDF output size: ceil(size / stride), for odd sizes too."""
    return -(-size // stride)


def _taps(kernel_size: int, dilation: int, stride: int, h_out: int, w_out: int):
    """(tap index, row slice, column slice) of each tap in the zero-padded input."""
    for i in range(kernel_size):
        for j in range(kernel_size):
            rows = slice(i * dilation, i * dilation + (h_out - 1) * stride + 1, stride)
            cols = slice(j * dilation, j * dilation + (w_out - 1) * stride + 1, stride)
            yield i * kernel_size + j, rows, cols


def _padded(x: Tensor, kernel_size: int, dilation: int) -> Tensor:
    pad = (kernel_size - 1) // 2 * dilation
    return F.pad(x, (pad, pad, pad, pad))


def _forward_loop(x: Tensor, ch: Tensor, sp: Tensor, kernel_size: int, dilation: int, stride: int,
                  mul: bool) -> Tensor:
    n, c, h_out, w_out = x.shape[0], x.shape[1], sp.shape[2], sp.shape[3]
    xp = _padded(x, kernel_size, dilation)
    ch = ch.reshape(n, c, -1, 1, 1)
    y = x.new_zeros(n, c, h_out, w_out)
    for k, rows, cols in _taps(kernel_size, dilation, stride, h_out, w_out):
        tap = xp[:, :, rows, cols]
        if mul:
            y.addcmul_(tap * ch[:, :, k], sp[:, k : k + 1])
        else:
            y.addcmul_(tap, sp[:, k : k + 1] + ch[:, :, k])
    return y


def _backward_loop(g: Tensor, x: Tensor, ch: Tensor, sp: Tensor, kernel_size: int, dilation: int, stride: int,
                   mul: bool) -> tuple[Tensor, Tensor, Tensor]:
    n, c, h, w = x.shape
    h_out, w_out = sp.shape[2], sp.shape[3]
    xp = _padded(x, kernel_size, dilation)
    gxp = torch.zeros_like(xp)
    chv = ch.reshape(n, c, -1, 1, 1)
    gch = torch.empty_like(ch).reshape(n, c, -1)
    gsp = torch.empty_like(sp)
    for k, rows, cols in _taps(kernel_size, dilation, stride, h_out, w_out):
        tap, spk, chk = xp[:, :, rows, cols], sp[:, k : k + 1], chv[:, :, k]
        g_tap = g * tap
        if mul:
            gxp[:, :, rows, cols].addcmul_(g * spk, chk)
            gch[:, :, k] = (g_tap * spk).sum((2, 3))
            gsp[:, k] = (g_tap * chk).sum(1)
        else:
            gxp[:, :, rows, cols].addcmul_(g, spk + chk)
            gch[:, :, k] = g_tap.sum((2, 3))
            gsp[:, k] = g_tap.sum(1)
    pad = (kernel_size - 1) // 2 * dilation
    return gxp[:, :, pad : pad + h, pad : pad + w], gch.reshape(ch.shape), gsp


@torch.library.custom_op("bench::ddf", mutates_args=())
def _ddf_op(x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int, dilation: int,
            stride: int, mul: bool) -> Tensor:
    if (kernels := _triton_kernels(x)) is not None:
        return kernels.forward(x, channel_filter, spatial_filter, kernel_size, dilation, stride, mul)
    if _use_cpp(x):
        if gpu.is_channels_last(x):  # NHWC kernel: long contiguous loops over channels
            n, c = x.shape[:2]
            ch = channel_filter.reshape(n, c, -1).transpose(1, 2).contiguous()
            y = cpu_kernel().forward_nhwc(x.permute(0, 2, 3, 1), ch, spatial_filter.permute(0, 2, 3, 1).contiguous(),
                                          kernel_size, dilation, stride, mul)
            return y.permute(0, 3, 1, 2)
        return cpu_kernel().forward(x.contiguous(), channel_filter.contiguous(), spatial_filter.contiguous(),
                                    kernel_size, dilation, stride, mul)
    y = _forward_loop(x, channel_filter, spatial_filter, kernel_size, dilation, stride, mul)
    return y.contiguous(memory_format=gpu.output_format(x))


@_ddf_op.register_fake
def _(x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int, dilation: int, stride: int,
      mul: bool) -> Tensor:
    shape = (x.shape[0], x.shape[1], spatial_filter.shape[2], spatial_filter.shape[3])
    return x.new_empty(shape).contiguous(memory_format=gpu.output_format(x))


@torch.library.custom_op("bench::ddf_backward", mutates_args=())
def _ddf_backward_op(grad: Tensor, x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int,
                     dilation: int, stride: int, mul: bool) -> tuple[Tensor, Tensor, Tensor]:
    ch, sp = channel_filter, spatial_filter
    if (kernels := _triton_kernels(x)) is not None:
        return kernels.backward(grad, x, ch, sp, kernel_size, dilation, stride, mul)
    if _use_cpp(x):
        if gpu.is_channels_last(x):
            n, c = x.shape[:2]
            gx, gch, gsp = cpu_kernel().backward_nhwc(
                grad.permute(0, 2, 3, 1).contiguous(), x.permute(0, 2, 3, 1),
                ch.reshape(n, c, -1).transpose(1, 2).contiguous(), sp.permute(0, 2, 3, 1).contiguous(),
                kernel_size, dilation, stride, mul)
            return (gx.permute(0, 3, 1, 2), gch.transpose(1, 2).reshape(ch.shape).contiguous(),
                    gsp.permute(0, 3, 1, 2).contiguous())
        return tuple(cpu_kernel().backward(grad.contiguous(), x.contiguous(), ch.contiguous(), sp.contiguous(),
                                           kernel_size, dilation, stride, mul))
    gx, gch, gsp = _backward_loop(grad, x, ch, sp, kernel_size, dilation, stride, mul)
    return gx.contiguous(memory_format=gpu.output_format(x)), gch.contiguous(), gsp.contiguous()


@_ddf_backward_op.register_fake
def _(grad: Tensor, x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int, dilation: int,
      stride: int, mul: bool) -> tuple[Tensor, Tensor, Tensor]:
    return (x.new_empty(x.shape).contiguous(memory_format=gpu.output_format(x)),
            channel_filter.new_empty(channel_filter.shape), spatial_filter.new_empty(spatial_filter.shape))


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    x, ch, sp, ctx.kernel_size, ctx.dilation, ctx.stride, ctx.mul = inputs
    ctx.save_for_backward(x, ch, sp)


def _backward(ctx: Any, grad: Tensor) -> tuple:
    x, ch, sp = ctx.saved_tensors
    gx, gch, gsp = _ddf_backward_op(grad, x, ch, sp, ctx.kernel_size, ctx.dilation, ctx.stride, ctx.mul)
    return gx, gch, gsp, None, None, None, None


_ddf_op.register_autograd(_backward, setup_context=_setup_context)


def ddf(x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int = 3, dilation: int = 1,
        stride: int = 1, combine: str = "mul") -> Tensor:
    """Apply decoupled dynamic filters to ``x`` (N, C, H, W).

    ``channel_filter``: (N, C, k, k), one k x k filter per sample and channel, shared over positions.
    ``spatial_filter``: (N, k*k, H_out, W_out), one filter per sample and output position, shared over
    channels. Zero padding (k-1)/2*dilation; ``H_out = ceil(H / stride)``, odd sizes included.
    """
    if combine not in COMBINES:
        raise OperatorError(f"ddf: combine must be one of {COMBINES}, got {combine!r}")
    if kernel_size % 2 != 1:
        raise OperatorError(f"ddf: kernel_size must be odd, got {kernel_size}")
    n, c, h, w = x.shape
    want_sp = (n, kernel_size**2, output_size(h, stride), output_size(w, stride))
    if tuple(channel_filter.shape) != (n, c, kernel_size, kernel_size):
        raise OperatorError(f"ddf: channel_filter must be {(n, c, kernel_size, kernel_size)}, "
                            f"got {tuple(channel_filter.shape)}")
    if tuple(spatial_filter.shape) != want_sp:
        raise OperatorError(f"ddf: spatial_filter must be {want_sp}, got {tuple(spatial_filter.shape)}")
    return _ddf_op(x, channel_filter, spatial_filter, kernel_size, dilation, stride, combine == "mul")


def ddf_macs(x_shape: tuple[int, ...], kernel_size: int, stride: int) -> int:
    """MACs of the functional op: per output value and tap, one filter combination and one multiply-add."""
    n, c, h, w = x_shape
    return 2 * n * c * output_size(h, stride) * output_size(w, stride) * kernel_size**2


class FilterNorm(nn.Module):
    """DDF's filter normalisation: standardise each filter over its k*k taps, then scale.

    Spatial filters (per pixel and head) use a fixed gain/k; channel filters a learnable
    per-element std initialised to randn * gain / k, as in DDFPack. ``learnable_mean`` adds a learnable
    per-element mean initialised to randn (the official FilterNorm's ``running_mean`` option, off in DDFPack):
    standardised filters sum to zero over their taps, and the mean gives them back a static part.
    """

    def __init__(self, groups: int, kernel_size: int, kind: str, gain: float, learnable_std: bool,
                 learnable_mean: bool = False) -> None:
        super().__init__()
        self.groups, self.kernel_size, self.kind = groups, kernel_size, kind
        scale = gain / kernel_size
        if learnable_std:
            self.std = nn.Parameter(torch.randn(groups * kernel_size**2) * scale)
        else:
            self.register_buffer("std", torch.tensor(scale), persistent=False)
        self.mean = nn.Parameter(torch.randn(groups * kernel_size**2)) if learnable_mean else None

    def forward(self, f: Tensor) -> Tensor:
        n = f.shape[0]
        if self.kind == "spatial":
            h, w = f.shape[2:]
            taps, shape = f.reshape(n, self.groups, -1, h, w), (1, self.groups, -1, 1, 1)
        else:
            taps, shape = f.reshape(n, self.groups, -1), (1, self.groups, -1)
        std = self.std if self.std.dim() == 0 else self.std.reshape(shape)
        taps = (taps - taps.mean(2, keepdim=True)) / (taps.std(2, keepdim=True) + 1e-10) * std
        return (taps if self.mean is None else taps + self.mean.reshape(shape)).reshape(f.shape)


def init_branches(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) branch weights, biases left at PyTorch's default as the official DDFPack leaves them.

    Zero biases would give a pixel whose input is all zeros (common after a ReLU) a constant spatial filter,
    whose standardisation divides by 1e-10: gradients of 1e10 on the spatial branch at initialisation.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


@register_op("ddf", kind="conv", paper="Decoupled Dynamic Filter Networks (Zhou et al., CVPR 2021)",
             dilation=True, channel_change=False)
class DDF(nn.Module):
    """DDFPack: spatial filters from a strided 1x1 conv, channel filters from an SE-style branch."""

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, head: int = 1, se_ratio: float = 0.2, nonlinearity: str = "relu",
                 kernel_combine: str = "mul", branches: str = "both", filter_norm: str = "fn",
                 spatial_mean: bool = False) -> None:
        super().__init__()
        if out_channels not in (None, in_channels):
            raise OperatorError(f"ddf preserves channels: cannot map {in_channels} to {out_channels}")
        if kernel_combine not in COMBINES:
            raise OperatorError(f"ddf: kernel_combine must be one of {COMBINES}, got {kernel_combine!r}")
        if spatial_mean and (filter_norm != "fn" or branches == "channel"):
            raise OperatorError("ddf: spatial_mean adds a learnable mean to the filter-normalised spatial filters; "
                                "it needs filter_norm='fn' and a spatial branch")
        if branches not in BRANCHES or filter_norm not in FILTER_NORMS:
            raise OperatorError(f"ddf: branches must be one of {BRANCHES} and filter_norm one of {FILTER_NORMS}, "
                                f"got {branches!r} and {filter_norm!r}")
        if in_channels % head:
            raise OperatorError(f"ddf: in_channels ({in_channels}) must be divisible by head ({head})")
        if kernel_size % 2 != 1:
            raise OperatorError(f"ddf: kernel_size must be odd, got {kernel_size}")
        self.channels, self.kernel_size, self.stride, self.dilation = in_channels, kernel_size, stride, dilation
        self.head, self.kernel_combine, self.branches, self.filter_norm = head, kernel_combine, branches, filter_norm
        taps = kernel_size**2
        gain = nn.init.calculate_gain(nonlinearity)
        self.spatial_branch = self.spatial_norm = self.channel_branch = self.channel_norm = None
        if branches != "channel":
            self.spatial_branch = Pointwise(in_channels, head * taps, stride, bias=True)
            self.spatial_norm = (FilterNorm(head, kernel_size, "spatial", gain, False, learnable_mean=spatial_mean)
                                 if filter_norm == "fn" else nn.Sigmoid())
        if branches != "spatial":
            mid = max(1, int(in_channels * se_ratio))
            self.channel_branch = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, mid, 1), nn.ReLU(inplace=True),
                nn.Conv2d(mid, in_channels * taps, 1))
            self.channel_norm = (FilterNorm(in_channels, kernel_size, "channel", gain, learnable_std=True)
                                 if filter_norm == "fn" else nn.Sigmoid())
        init_branches(self)

    def filters(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The normalised channel (N*head, C/head, k, k) and spatial (N*head, k*k, H_out, W_out) filters for ``x``."""
        n, c, h, w = x.shape
        k, g = self.kernel_size, self.head
        h_out, w_out = output_size(h, self.stride), output_size(w, self.stride)
        neutral = 1.0 if self.kernel_combine == "mul" else 0.0  # the ablated branch leaves the other one alone
        if self.channel_branch is not None:
            channel = self.channel_norm(self.channel_branch(x)).reshape(n * g, c // g, k, k)
        else:
            channel = x.new_full((n * g, c // g, k, k), neutral)
        if self.spatial_branch is not None:
            spatial = self.spatial_norm(self.spatial_branch(x)).reshape(n * g, k * k, h_out, w_out)
        else:
            spatial = x.new_full((n * g, k * k, h_out, w_out), neutral)
        return channel, spatial

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        channel, spatial = self.filters(x)
        y = ddf(x.reshape(n * self.head, c // self.head, h, w), channel, spatial, self.kernel_size, self.dilation,
                self.stride, self.kernel_combine)
        return y.reshape(n, c, *spatial.shape[2:])

    def macs(self, x: Tensor) -> int:
        n, c, h, w = x.shape
        k2, h_out, w_out = self.kernel_size**2, output_size(h, self.stride), output_size(w, self.stride)
        total = ddf_macs(tuple(x.shape), self.kernel_size, self.stride)
        if self.spatial_branch is not None:
            total += n * c * self.head * k2 * h_out * w_out + 3 * n * k2 * self.head * h_out * w_out
        if self.channel_branch is not None:
            mid = self.channel_branch[1].out_channels
            total += n * (c * h * w + c * mid + mid * c * k2) + 3 * n * k2 * c  # pool, two 1x1 convs, the norm
        return total


@register_op("ddf_up", kind="upsample", paper="Decoupled Dynamic Filter Networks (Zhou et al., CVPR 2021)",
             guide=True)
class DDFUp(nn.Module):
    """DDF-Up: scale^2 DDF branches whose outputs are pixel-shuffled into the upsampled map.

    Channel filters come from the input (one SE branch per sub-pixel, as a grouped conv). Spatial
    filters come from the input (one 1x1 conv per sub-pixel) or, for joint upsampling, from a
    guidance feature at the output resolution (e.g. the high-resolution image or an FPN lateral),
    which predicts each output pixel's filter directly.
    """

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None,
                 kernel_size: int = 3, dilation: int = 1, head: int = 1, se_ratio: float = 0.2,
                 nonlinearity: str = "linear", kernel_combine: str = "mul") -> None:
        super().__init__()
        if kernel_combine not in COMBINES:
            raise OperatorError(f"ddf_up: kernel_combine must be one of {COMBINES}, got {kernel_combine!r}")
        if channels % head or kernel_size % 2 != 1:
            raise OperatorError(f"ddf_up: channels ({channels}) must divide by head ({head}); kernel_size odd")
        self.channels, self.scale, self.kernel_size, self.dilation = channels, scale_factor, kernel_size, dilation
        self.head, self.kernel_combine, self.guided = head, kernel_combine, guide_channels is not None
        branches, taps = scale_factor**2, kernel_size**2
        gain = nn.init.calculate_gain(nonlinearity)
        mid = max(1, int(channels * se_ratio))
        self.channel_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, branches * mid, 1), nn.ReLU(inplace=True),
            nn.Conv2d(branches * mid, branches * channels * taps, 1, groups=branches))
        self.channel_norm = FilterNorm(branches * channels, kernel_size, "channel", gain, learnable_std=True)
        if self.guided:
            self.spatial_branch = Pointwise(guide_channels, head * taps, bias=True)
            self.spatial_norm = FilterNorm(head, kernel_size, "spatial", gain, learnable_std=False)
        else:
            self.spatial_branch = Pointwise(channels, branches * head * taps, bias=True)
            self.spatial_norm = FilterNorm(branches * head, kernel_size, "spatial", gain, learnable_std=False)
        init_branches(self)

    def spatial_filters(self, x: Tensor, guide: Tensor | None) -> Tensor:
        """Spatial filters per sub-pixel branch: (N, s^2, head * k^2, H, W)."""
        n, _, h, w = x.shape
        s, hk = self.scale, self.head * self.kernel_size**2
        if not self.guided:
            return self.spatial_norm(self.spatial_branch(x)).reshape(n, s * s, hk, h, w)
        if guide is None:
            raise OperatorError("ddf_up was built with guide_channels: pass forward(x, guide)")
        if guide.shape[-2:] != (s * h, s * w):
            guide = F.interpolate(guide, size=(s * h, s * w), mode="bilinear", align_corners=False)
        filters = F.pixel_unshuffle(self.spatial_norm(self.spatial_branch(guide)), s)  # (N, hk * s^2, H, W)
        return filters.reshape(n, hk, s * s, h, w).transpose(1, 2)

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        n, c, h, w = x.shape
        s, k, g = self.scale, self.kernel_size, self.head
        channel = self.channel_norm(self.channel_branch(x)).reshape(n, s * s, c, k, k)
        spatial = self.spatial_filters(x, guide)
        grouped = x.reshape(n * g, c // g, h, w)
        outs = [ddf(grouped, channel[:, b].reshape(n * g, c // g, k, k),
                    spatial[:, b].reshape(n * g, k * k, h, w), k, self.dilation, 1, self.kernel_combine
                    ).reshape(n, c, h, w) for b in range(s * s)]
        return F.pixel_shuffle(torch.stack(outs, dim=2).reshape(n, c * s * s, h, w), s)

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        n, c, h, w = x.shape
        branches, k2 = self.scale**2, self.kernel_size**2
        mid = self.channel_branch[1].out_channels
        channel = n * (c * h * w + c * mid + mid * c * k2)
        if self.guided:
            spatial = n * self.spatial_branch.in_channels * self.head * k2 * h * w * branches
        else:
            spatial = n * c * branches * self.head * k2 * h * w
        norms = 3 * n * k2 * branches * (self.head * h * w + c)
        return channel + spatial + norms + branches * ddf_macs(tuple(x.shape), self.kernel_size, 1)

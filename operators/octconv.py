"""Octave convolution (Chen et al., ICCV 2019) and generalized OctConv (gOctConv, SOD100K, ECCV 2020).

Both take and return per-scale tensors: scale i holds ``channels_i`` channels at 1/2^i resolution.
Modules expose ``in_scales``/``out_scales`` (channels per scale, 0 where a scale is absent) so
callers and `bench check` know what to feed them. Sizes that are not divisible by 2 work: lower
scales have ceil(H / 2^i) rows, pooling uses ceil mode, and upsampling targets the exact size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from operators.conv import Pointwise, conv_macs, same_padding
from operators.registry import OperatorError, mac_formula, register_op

MultiScale = Tensor | Sequence[Tensor | None]


def split_channels(channels: int, ratios: Sequence[float]) -> list[int]:
    """Channels per scale from ratios (summing to 1); rounding error goes to scale 0."""
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise OperatorError(f"per-scale channel ratios must be >= 0 and sum to 1, got {list(ratios)}")
    lower = [int(round(r * channels)) for r in ratios[1:]]
    return [channels - sum(lower), *lower]


def _as_scales(x: MultiScale, count: int) -> list[Tensor | None]:
    scales = [x] if isinstance(x, Tensor) else list(x)
    if len(scales) != count:
        raise OperatorError(f"expected {count} scale input(s), got {len(scales)}")
    return scales


def _avg_pool(x: Tensor, factor: int) -> Tensor:
    return F.avg_pool2d(x, factor, factor, ceil_mode=True) if factor > 1 else x


def _max_pool(x: Tensor, factor: int) -> Tensor:
    return F.max_pool2d(x, factor, factor, ceil_mode=True) if factor > 1 else x


def _add_upsampled_(y: Tensor, low: Tensor) -> Tensor:
    """``y += nearest_upsample(low)`` in place; without autograd, an exact 2x is a broadcast add (no upsampled copy).

    With autograd the broadcast add is not used: its backward (an in-place add on a view, then a sum over the 6-d
    view) trains ~7x slower than nearest upsampling's own backward kernel (benchmarks/octconv_alpha_speed.py).
    """
    n, c, lh, lw = low.shape
    h, w = y.shape[-2:]
    if torch.jit.is_tracing():  # a trace records one path: the general one, not a branch on this input's sizes
        return y.add_(F.interpolate(low, size=(h, w), mode="nearest"))
    if (h, w) == (lh, lw):  # already at y's resolution (the L->H path of a strided octave conv)
        return y.add_(low)
    if (h, w) == (2 * lh, 2 * lw) and not (torch.is_grad_enabled() and (y.requires_grad or low.requires_grad)):
        y.view(n, c, lh, 2, lw, 2).add_(low.view(n, c, lh, 1, lw, 1))  # each 2x2 block of y gets one low value
        return y
    return y.add_(F.interpolate(low, size=(h, w), mode="nearest"))


def _out_or_tuple(outputs: list[Tensor | None]) -> MultiScale:
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


@register_op("octconv", kind="conv", paper="Drop an Octave (Chen et al., ICCV 2019)", multiscale=True)
class OctConv(nn.Module):
    """Octave convolution with high (full-res) and low (half-res) frequency groups.

    H->H conv; H->L 2x2 average pool then conv; L->L conv; L->H conv then nearest x2 (the L->H and
    L->L convs share their input and run as one conv, ``from_low``, whose output is split).
    Stride 2, as the authors' code (facebookresearch/OctConv) does it: X^H is average-pooled before
    H->H (and once more before H->L), X^L is average-pooled before L->L, and L->H convolves X^L as it
    is, with no upsampling, since X^L already has the high output's resolution (the two halves of
    ``from_low`` then read different inputs and run as two convs). ``alpha_in=0`` takes a plain
    tensor and ``alpha_out=0`` returns one (the first and last layers of an Oct-network). ``alpha`` is
    the paper's one ratio: it sets both (an Oct-network such as ``op_resnet*`` reads it for all its layers).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 alpha_in: float = 0.5, alpha_out: float = 0.5, bias: bool = False,
                 alpha: float | None = None) -> None:
        super().__init__()
        if alpha is not None:
            alpha_in = alpha_out = alpha
        self.in_scales = split_channels(in_channels, [1 - alpha_in, alpha_in])
        self.out_scales = split_channels(out_channels, [1 - alpha_out, alpha_out])
        self.stride = stride
        if self.in_scales[0] == 0 or self.out_scales[0] == 0:
            raise OperatorError("octconv needs high-frequency channels on both sides (alpha < 1)")
        pad = same_padding(kernel_size)

        def conv(cin: int, cout: int) -> nn.Conv2d | None:
            if not (cin and cout):
                return None
            if kernel_size == 1:
                return Pointwise(cin, cout, bias=bias)
            return nn.Conv2d(cin, cout, kernel_size, padding=pad, bias=bias)

        (hi_in, lo_in), (hi_out, lo_out) = self.in_scales, self.out_scales
        self.h2h, self.h2l = conv(hi_in, hi_out), conv(hi_in, lo_out)
        # L->H and L->L read the same input: one conv computes both (split after), one launch instead of two
        self.from_low = conv(lo_in, hi_out + lo_out)
        if self.in_scales[1] == 0:
            self.in_scales = self.in_scales[:1]
        if self.out_scales[1] == 0:
            self.out_scales = self.out_scales[:1]

    def _low_paths(self, x_l: Tensor) -> tuple[Tensor, Tensor | None]:
        """(L->H, L->L) outputs before resampling: one fused conv at stride 1, two at stride > 1."""
        hi_out = self.out_scales[0]
        lo_out = self.from_low.out_channels - hi_out
        if self.stride == 1:
            low_h, low_l = self.from_low(x_l).split([hi_out, lo_out], dim=1)
            return low_h, (low_l if lo_out else None)
        conv, w, b = self.from_low, self.from_low.weight, self.from_low.bias

        def rows(inp: Tensor, part: slice) -> Tensor:
            return F.conv2d(inp, w[part], None if b is None else b[part], 1, conv.padding, conv.dilation)

        low_h = rows(_avg_pool(x_l, self.stride // 2), slice(0, hi_out))  # X^L is at the output's high resolution
        return low_h, (rows(_avg_pool(x_l, self.stride), slice(hi_out, None)) if lo_out else None)

    def forward(self, x: MultiScale) -> MultiScale:
        x_h, x_l = (_as_scales(x, len(self.in_scales)) + [None])[:2]
        x_h = _avg_pool(x_h, self.stride)
        y_h = self.h2h(x_h)
        if self.from_low is not None:
            low_h, low_l = self._low_paths(x_l)
            _add_upsampled_(y_h, low_h)
        if len(self.out_scales) == 1:
            return y_h
        y_l = self.h2l(_avg_pool(x_h, 2))
        return y_h, (y_l.add_(low_l) if self.from_low is not None else y_l)

    def macs(self, x: MultiScale) -> int:
        x_h, x_l = (_as_scales(x, len(self.in_scales)) + [None])[:2]
        n = x_h.shape[0]
        h, w = -(-x_h.shape[2] // self.stride), -(-x_h.shape[3] // self.stride)
        low = (n, 0, -(-h // 2), -(-w // 2))
        total = conv_macs(self.h2h, (n, 0, h, w))
        if self.stride > 1:  # average pooling: one accumulation per input value (X^H; X^L for L->L)
            total += x_h.numel() + (x_l.numel() if x_l is not None and self.h2l is not None else 0)
        if self.from_low is not None:
            hi_out = self.out_scales[0]
            per_output = conv_macs(self.from_low, low) // self.from_low.out_channels  # MACs per channel at low res
            total += per_output * (self.from_low.out_channels - hi_out)  # L->L
            if self.stride == 1:
                total += per_output * hi_out
            else:  # L->H at the output's high resolution, from X^L pooled by stride / 2
                f = self.stride // 2
                lh, lw = -(-x_l.shape[2] // f), -(-x_l.shape[3] // f)
                total += conv_macs(self.from_low, (n, 0, lh, lw)) // self.from_low.out_channels * hi_out
                if f > 1:
                    total += x_l.numel()
        if self.h2l is not None:
            total += conv_macs(self.h2l, low) + n * self.in_scales[0] * h * w
        return total


@register_op("goctconv", kind="conv", paper="Highly Efficient Salient Object Detection with 100K Parameters "
             "(Gao et al., ECCV 2020)", multiscale=True)
class GOctConv(nn.Module):
    """Generalized OctConv: any number of scales in and out, per-scale channel ratios, optional cross-scale paths.

    Path i -> j: same scale conv; downward (j > i) max-pool by 2^(j-i) then conv; upward (j < i)
    conv then bilinear upsampling to scale j's size. Stride 2 average-pools every input first.
    Inputs and outputs are sequences with ``None`` for absent scales (a single tensor for one scale).
    ``depthwise=True`` (CSNet's ILBlock) uses per-scale depthwise convs and no cross-scale paths.
    ``upsample(path, channels, factor)`` puts a module (an upsample slot) in place of each upward path's
    bilinear upsampling; it must have a MAC formula (every registered upsample-kind operator has one).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 alpha_in: Sequence[float] = (0.5, 0.5), alpha_out: Sequence[float] = (0.5, 0.5),
                 cross_scale: bool = True, depthwise: bool = False, bias: bool = False,
                 upsample: Callable[[str, int, int], nn.Module] | None = None) -> None:
        super().__init__()
        self.in_scales = split_channels(in_channels, alpha_in)
        self.out_scales = split_channels(out_channels, alpha_out)
        self.stride, self.cross_scale = stride, cross_scale and not depthwise
        if depthwise and self.in_scales != self.out_scales:
            raise OperatorError(f"depthwise goctconv needs equal channels per scale, got {self.in_scales} -> "
                                f"{self.out_scales}")
        pad = same_padding(kernel_size)
        self.paths = nn.ModuleDict()
        for i, cin in enumerate(self.in_scales):
            for j, cout in enumerate(self.out_scales):
                if cin and cout and (i == j or self.cross_scale):
                    groups = cin if depthwise else 1
                    self.paths[f"{i}to{j}"] = nn.Conv2d(cin, cout, kernel_size, padding=pad, groups=groups, bias=bias)
        upward = {key: int(key.split("to")[0]) - int(key.split("to")[1]) for key in self.paths}
        self.upsample = nn.ModuleDict({key: upsample(key, self.paths[key].out_channels, 2 ** levels)
                                       for key, levels in upward.items() if upsample is not None and levels > 0})
        if any(c and not any(k.endswith(f"to{j}") for k in self.paths) for j, c in enumerate(self.out_scales)):
            raise OperatorError(f"goctconv: some output scale has no input path ({self.in_scales} -> "
                                f"{self.out_scales}, cross_scale={self.cross_scale})")

    def _output_sizes(self, xs: list[Tensor | None]) -> list[tuple[int, int]]:
        i, ref = next((i, t) for i, t in enumerate(xs) if t is not None)
        h0, w0 = -(-ref.shape[2] // self.stride) * 2**i, -(-ref.shape[3] // self.stride) * 2**i
        sizes = []
        for j in range(len(self.out_scales)):
            if j < len(xs) and xs[j] is not None:
                sizes.append((-(-xs[j].shape[2] // self.stride), -(-xs[j].shape[3] // self.stride)))
            else:
                sizes.append((-(-h0 // 2**j), -(-w0 // 2**j)))
        return sizes

    def forward(self, x: MultiScale) -> MultiScale:
        xs = [_avg_pool(t, self.stride) if t is not None else None for t in _as_scales(x, len(self.in_scales))]
        sizes = self._output_sizes([t for t in _as_scales(x, len(self.in_scales))])
        outputs: list[Tensor | None] = [None] * len(self.out_scales)
        for key, conv in self.paths.items():
            i, j = (int(s) for s in key.split("to"))
            if xs[i] is None:
                continue
            if j > i:
                y = conv(_max_pool(xs[i], 2 ** (j - i)))
            elif key in self.upsample:
                y = self.upsample[key](conv(xs[i]))
            elif j < i:
                y = F.interpolate(conv(xs[i]), size=sizes[j], mode="bilinear", align_corners=False)
            else:
                y = conv(xs[i])
            outputs[j] = y if outputs[j] is None else outputs[j] + y
        return _out_or_tuple(outputs)

    def macs(self, x: MultiScale) -> int:
        raw = _as_scales(x, len(self.in_scales))
        sizes = self._output_sizes(raw)
        total = sum(t.numel() for t in raw if t is not None) if self.stride > 1 else 0
        for key, conv in self.paths.items():
            i, j = (int(s) for s in key.split("to"))
            if raw[i] is None:
                continue
            n = raw[i].shape[0]
            src = (-(-raw[i].shape[2] // self.stride), -(-raw[i].shape[3] // self.stride))
            total += conv_macs(conv, (n, 0, *(sizes[j] if j >= i else src)))
            if key in self.upsample:
                total += self._slot_macs(self.upsample[key], (n, conv.out_channels, *src))
            elif j < i:
                total += 4 * n * conv.out_channels * sizes[j][0] * sizes[j][1]  # bilinear: 4 per output value
        return total


    @staticmethod
    def _slot_macs(slot: nn.Module, shape: tuple[int, ...]) -> int:
        if (formula := mac_formula(slot)) is None:
            raise OperatorError(f"goctconv: the upsample slot {type(slot).__name__} has no MAC formula")
        return int(formula(slot, torch.zeros(shape)))


class GOctConvBNAct(nn.Module):
    """gOctConv followed by per-scale BatchNorm and PReLU: CSNet's basic unit, and the unit that is pruned."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 alpha_in: Sequence[float] = (0.5, 0.5), alpha_out: Sequence[float] = (0.5, 0.5),
                 cross_scale: bool = True, depthwise: bool = False,
                 upsample: Callable[[str, int, int], nn.Module] | None = None) -> None:
        super().__init__()
        self.conv = GOctConv(in_channels, out_channels, kernel_size, stride, alpha_in, alpha_out,
                             cross_scale=cross_scale, depthwise=depthwise, upsample=upsample)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) if c else nn.Identity() for c in self.conv.out_scales)
        self.acts = nn.ModuleList(nn.PReLU(c) if c else nn.Identity() for c in self.conv.out_scales)

    @property
    def in_scales(self) -> list[int]:
        return self.conv.in_scales

    @property
    def out_scales(self) -> list[int]:
        return self.conv.out_scales

    def forward(self, x: MultiScale) -> MultiScale:
        ys = self.conv(x)
        ys = [ys] if isinstance(ys, Tensor) else list(ys)
        return _out_or_tuple([act(norm(y)) if y is not None else None
                              for y, norm, act in zip(ys, self.norms, self.acts)])

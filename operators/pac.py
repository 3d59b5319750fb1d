"""PAC: the pixel-adaptive transposed convolution (Su et al., CVPR 2019) as a 2x upsampler, in pure PyTorch.

A transposed convolution whose learned, spatially shared filter ``W`` is modulated, per output pixel and
tap, by a Gaussian adapting kernel on guidance features ``g`` at the output resolution::

    y[o, P] = b[o] + sum_{i, t : P = 2 i - p + t} K(P, 2 i) * sum_c W[c, o, t] x[c, i]
    K(P, Q) = exp(-0.5 * ||g[P] - g[Q]||^2)

Input pixel ``i`` sits at output location ``2 i`` (zero insertion), so the kernel compares the guide at
the output pixel with the guide where the contributing input pixel lands.

What follows the official code (NVlabs/pacnet, ``pac.py`` ``PacConvTranspose2d`` as built by
``task_jointUpsampling/models.py`` ``PacJointUpsample``, one instance per 2x stage):

* kernel 5, stride 2, padding ``(k - 1) // 2 = 2``, output padding ``k % 2 = 1``: output exactly 2H x 2W;
* Gaussian kernel (``kernel_type='gaussian'``), summed over guide channels (not channel-wise), no
  smoothing kernel, and **not normalised** (``normalize_kernel`` keeps its default False there);
* a full C x C filter (``shared_filters=False``) plus a bias (``bias`` keeps its default True);
* ``filler='uniform'``: weight and bias ~ U(-1/sqrt(C k^2), 1/sqrt(C k^2)), the fan being the input channels;
* the guide is used as given: in PacJointUpsample a learned guidance branch produces it (16 channels per
  stage); here whatever network fills the slot produces it. A guide whose size is not 2H x 2W is resized
  bilinearly first (as ``ddf_up`` does).

Where this differs: the weight is stored and indexed as ``nn.ConvTranspose2d``'s (C_in, C_out, k, k) with its
(flipped) tap convention, so with K = 1 everywhere the operator equals
``F.conv_transpose2d(x, weight, bias, stride=2, padding=2, output_padding=1)``. The official code applies its
weight without the flip (a stride-1 correlation over the zero-inserted input), so its weight is this one
mirrored in both spatial axes: the same function class and, under the symmetric uniform filler, the same
initial distribution.

Unguided (``guide_channels=None``): the adapting features are the input itself, nearest-upsampled 2x. PAC
needs features at the output resolution and the unguided slot offers none; nearest upsampling adds no
parameters and no arithmetic and puts each output pixel at exactly its source pixel's features, so
``K(P, 2 i) = exp(-0.5 ||x[P // 2] - x[i]||^2)``: a bilateral weighting by the input's own features. The
bandwidth is then set by the input's scale (squared distances grow with C), so on strongly varying features
the kernel keeps mostly the taps that read each output pixel's own source pixel. A guide passed to a
self-guided instance is refused rather than ignored (slots drop it through ``Unguided``).

The forward loops over the k^2 taps and accumulates into one output-sized buffer: per tap one C x C matrix
product on the input and one (N, 1, H, W) adapting kernel from shifted, stride-2 views of the guide, never
an unfolded tensor. The backward (a custom autograd function) recomputes the per-tap kernels the same way,
so training keeps nothing per tap either (it saves x, the guide and the weight; first-order gradients only).
Without gradients (inference, tracing, compiling for inference) the same loop runs as plain tensor ops.

MAC convention (``macs``), per input pixel and tap (N k^2 H W pairs; the zero-inserted positions are not
counted, as for ``deconv``): C^2 for the learned filter, C for applying the adapting kernel to its C outputs,
C_g for the squared guide distance and 1 for the exponential, so ``N k^2 H W (C^2 + C + C_g + 1)``, with
C_g = C when self-guided, plus 4 per resized guide value. Parameters: ``C^2 k^2 + C`` (bias).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from operators.registry import OperatorError, register_op


def _margin(k: int) -> int:
    """Zero margin around the output in the work buffers: p = (k-1)/2, rounded up to even so the crop is whole
    blocks of the phase layout."""
    p = (k - 1) // 2
    return p + p % 2


def _to_phases(t: Tensor, q: int) -> Tensor:
    """(A, B, 2H, 2W) -> (A, B, 2, 2, H + q, W + q): zero-padded by q, split by row and column parity."""
    a, b, hh, ww = t.shape
    padded = F.pad(t, (q, q, q, q))
    return padded.reshape(a, b, hh // 2 + q, 2, ww // 2 + q, 2).permute(0, 1, 3, 5, 2, 4).contiguous()


def _from_phases(ph: Tensor, q: int, h: int, w: int, swap: bool) -> Tensor:
    """Inverse of :func:`_to_phases` with the margin cropped (one copy); ``swap`` also swaps the leading two axes."""
    a, b = ph.shape[:2]
    inner = ph[:, :, :, :, q // 2 : q // 2 + h, q // 2 : q // 2 + w].permute(0, 1, 4, 2, 5, 3)
    if swap:
        inner, a, b = inner.transpose(0, 1), b, a
    return inner.reshape(a, b, 2 * h, 2 * w)


def _tap(ph: Tensor, row: int, col: int, h: int, w: int) -> Tensor:
    """The (., ., H, W) view of phase-layout buffer ``ph`` at padded output index (2 i + row, 2 j + col)."""
    return ph[:, :, row % 2, col % 2, row // 2 : row // 2 + h, col // 2 : col // 2 + w]


def _taps(k: int) -> list[tuple[int, int, int, int]]:
    """(t_row, t_col, row, col) of every tap: input pixel (i, j) lands at output (2i - p + t_row, 2j - p + t_col),
    which is (2i + row, 2j + col) in the buffers padded by the margin."""
    shift = _margin(k) - (k - 1) // 2
    return [(tr, tc, tr + shift, tc + shift) for tr in range(k) for tc in range(k)]


def _kernel(guide_ph: Tensor, centre: Tensor, row: int, col: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    """One tap's adapting kernel (N, 1, H, W) and the guide difference it came from (N, C_g, H, W)."""
    diff = _tap(guide_ph, row, col, h, w) - centre
    return torch.exp(-0.5 * diff.pow(2).sum(1, keepdim=True)), diff


def _layout(x: Tensor) -> torch.memory_format:
    channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _forward(x: Tensor, guide: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    # Work in (C, N, ...) order so each tap's filter is one contiguous (C_out x C_in) @ (C_in x NHW) product,
    # and in the phase layout so each tap writes whole rows.
    n, c, h, w = x.shape
    k, c_out = weight.shape[-1], weight.shape[1]
    q = _margin(k)
    guide_ph = _to_phases(guide, q)
    centre = _tap(guide_ph, q, q, h, w)  # the guide where each input pixel lands (output 2i)
    taps = weight.permute(2, 3, 1, 0).contiguous()  # (k, k, C_out, C_in)
    cols = x.transpose(0, 1).reshape(c, n * h * w)
    out = x.new_zeros(c_out, n, 2, 2, h + q, w + q)
    for t_row, t_col, row, col in _taps(k):
        kernel, _ = _kernel(guide_ph, centre, row, col, h, w)
        filtered = torch.mm(taps[t_row, t_col], cols).reshape(c_out, n, h, w)
        _tap(out, row, col, h, w).addcmul_(filtered, kernel.transpose(0, 1))
    y = _from_phases(out, q, h, w, swap=True)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y.contiguous(memory_format=_layout(x))


def _backward(grad: Tensor, x: Tensor, guide: Tensor, weight: Tensor, need_guide: bool
              ) -> tuple[Tensor, Tensor | None, Tensor]:
    n, c, h, w = x.shape
    k, c_out = weight.shape[-1], weight.shape[1]
    q = _margin(k)
    grad_ph = _to_phases(grad.transpose(0, 1), q)  # (C_out, N, 2, 2, H + q, W + q)
    guide_ph = _to_phases(guide, q)
    centre = _tap(guide_ph, q, q, h, w)
    cols = x.transpose(0, 1).reshape(c, n * h * w)
    grad_cols = torch.zeros_like(cols)
    grad_w = torch.empty_like(weight)
    grad_guide_ph = torch.zeros_like(guide_ph) if need_guide else None
    for t_row, t_col, row, col in _taps(k):
        kernel, diff = _kernel(guide_ph, centre, row, col, h, w)
        kernel_flat = kernel.transpose(0, 1).reshape(1, n * h * w)
        g_tap = _tap(grad_ph, row, col, h, w).reshape(c_out, n * h * w)
        back = torch.mm(weight[:, :, t_row, t_col], g_tap)  # (C_in, NHW): W_t applied to the output gradient
        grad_cols.addcmul_(back, kernel_flat)
        grad_w[:, :, t_row, t_col] = torch.mm(cols * kernel_flat, g_tap.t())
        if need_guide:
            grad_kernel = (cols * back).sum(0).reshape(n, 1, h, w)
            grad_diff = diff * (-grad_kernel * kernel)
            _tap(grad_guide_ph, row, col, h, w).add_(grad_diff)
            _tap(grad_guide_ph, q, q, h, w).sub_(grad_diff)
    grad_x = grad_cols.reshape(c, n, h, w).transpose(0, 1).contiguous(memory_format=_layout(x))
    grad_guide = _from_phases(grad_guide_ph, q, h, w, swap=False) if need_guide else None
    return grad_x, grad_guide, grad_w


class _PacTranspose2d(torch.autograd.Function):
    """The tap-loop forward, and a backward that recomputes each tap's kernel instead of saving it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, guide: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, guide, weight)
        ctx.has_bias = bias is not None
        return _forward(x, guide, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple:
        x, guide, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x, grad_guide, grad_w = _backward(grad, x, guide, weight, ctx.needs_input_grad[1])
        grad_b = grad.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, grad_guide, grad_w, grad_b


def pac_transpose2d(x: Tensor, guide: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Pixel-adaptive transposed convolution, stride 2, padding (k-1)/2, output padding 1: (N, C, H, W) -> 2x.

    ``guide``: (N, C_g, 2H, 2W) adapting features; ``weight``: (C_in, C_out, k, k) in ``conv_transpose2d``'s
    layout and tap convention, k odd; ``bias``: (C_out,) or None.
    """
    if not torch.jit.is_tracing():  # shape checks would freeze the traced sizes
        k = weight.shape[-1]
        if weight.dim() != 4 or weight.shape[-2] != k or k % 2 != 1:
            raise OperatorError(f"pac: weight must be (C_in, C_out, k, k) with k odd, got {tuple(weight.shape)}")
        n, c, h, w = x.shape
        if weight.shape[0] != c or guide.shape[0] != n or tuple(guide.shape[-2:]) != (2 * h, 2 * w):
            raise OperatorError(f"pac: input {tuple(x.shape)}, guide {tuple(guide.shape)} and weight "
                                f"{tuple(weight.shape)} do not fit (the guide must be (N, C_g, 2H, 2W))")
    guide = guide.to(x.dtype)
    tensors = (x, guide, weight) if bias is None else (x, guide, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _PacTranspose2d.apply(x, guide, weight, bias)
    return _forward(x, guide, weight, bias)


@register_op("pac", kind="upsample", paper="PAC (Su et al., CVPR 2019)", guide=True)
class PacUpsample(nn.Module):
    """PAC 2x upsampler: a 5x5 stride-2 transposed conv modulated by a Gaussian kernel on guide features."""

    def __init__(self, channels: int, scale_factor: int = 2, guide_channels: int | None = None,
                 kernel_size: int = 5, bias: bool = True) -> None:
        super().__init__()
        if scale_factor != 2:
            raise OperatorError(f"pac: one PAC transposed convolution is one 2x stage; scale_factor must be 2, "
                                f"got {scale_factor} (stack 2x stages for larger factors, as PacJointUpsample does)")
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise OperatorError(f"pac: kernel_size must be a positive odd number, got {kernel_size}")
        self.channels, self.scale_factor, self.kernel_size = channels, scale_factor, kernel_size
        self.guide_channels = guide_channels
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PAC's 'uniform' filler: U(-b, b) with b = 1 / sqrt(C_in k^2), for the weight and the bias."""
        bound = 1.0 / math.sqrt(self.channels * self.kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def adapting_features(self, x: Tensor, guide: Tensor | None) -> Tensor:
        """The features the Gaussian kernel compares, at the output resolution (N, C_g, 2H, 2W)."""
        h, w = x.shape[-2:]
        if self.guide_channels is None:
            if guide is not None:
                raise OperatorError("pac was built without guide_channels (self-guided); build it with "
                                    "guide_channels to use a guide")
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if guide is None:
            raise OperatorError("pac was built with guide_channels: pass forward(x, guide)")
        if guide.shape[1] != self.guide_channels:
            raise OperatorError(f"pac: guide has {guide.shape[1]} channels, built for {self.guide_channels}")
        if tuple(guide.shape[-2:]) != (2 * h, 2 * w):
            guide = F.interpolate(guide, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
        return guide

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return pac_transpose2d(x, self.adapting_features(x, guide), self.weight, self.bias)

    def macs(self, x: Tensor, guide: Tensor | None = None) -> int:
        n, c, h, w = x.shape
        guide_c = c if self.guide_channels is None else self.guide_channels
        pairs = n * self.kernel_size**2 * h * w
        resize = 0
        if guide is not None and tuple(guide.shape[-2:]) != (2 * h, 2 * w):
            resize = 4 * n * guide_c * 4 * h * w
        return pairs * (c * c + c + guide_c + 1) + resize

    def extra_repr(self) -> str:
        guide = "self-guided" if self.guide_channels is None else f"guide_channels={self.guide_channels}"
        return f"{self.channels}, kernel_size={self.kernel_size}, stride=2, {guide}, bias={self.bias is not None}"

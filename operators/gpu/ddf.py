"""Triton kernels of the functional DDF op (``operators.ddf.ddf``): the forward, and the backward in two kernels.

Every program owns a tile of BLOCK_C channels x BLOCK_P pixels of one sample and walks the k*k taps (rows in a
loop, columns unrolled): each tap's spatial filter is loaded once for all the tile's channels, each channel
filter once for all its pixels, and nothing k*k times larger than the input is ever built. Loads are upcast to the accumulator (float32;
float64 for float64 inputs) and results stored in the output's dtype, which is the input's. Strides are passed,
so NCHW, channels-last or any other layout runs without a copy.

The backward splits by what it reduces over. The input gradient is a gather: each input pixel sums the outputs
that read it (no atomics; with stride 2 only the taps whose offset has the stride's parity hit). The two filter
gradients share one pass over (grad, input) per pixel block: it walks all channels itself, so the spatial-filter
gradient (a sum over channels) comes out complete, and it leaves one partial sum per pixel block for the
channel filters (a sum over pixels), added up afterwards. No atomics anywhere: results are deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from operators.gpu import device_of, is_channels_last, output_format, tile

TRITON_DTYPE = {torch.float32: tl.float32, torch.float64: tl.float64}
"""The Triton type of each accumulator dtype."""


def accumulator(*tensors: Tensor) -> torch.dtype:
    """float64 where any operand is float64 (tests/test_cuda.py compares in it), else float32 (fp32, bf16, fp16)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


@triton.jit
def _weight(spatial, channel, MUL: tl.constexpr):
    """One tap's filter for a (channels x pixels) tile: the product or the sum of its two decoupled filters."""
    if MUL:
        return channel[:, None] * spatial[None, :]
    else:
        return channel[:, None] + spatial[None, :]


@triton.jit
def _forward_kernel(x_ptr, ch_ptr, sp_ptr, y_ptr, C, H, W, HO, WO,
                    sxn, sxc, sxh, sxw, scn, scc, sct, ssn, sst, ssh, ssw, syn, syc, syh, syw,
                    K: tl.constexpr, DILATION: tl.constexpr, STRIDE: tl.constexpr, MUL: tl.constexpr,
                    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """y[n, c, o] = sum over taps t of f(sp[n, t, o], ch[n, c, t]) * x[n, c, o * STRIDE + t * DILATION - pad]."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    oh, ow = p // WO, p % WO
    p_ok, c_ok = p < HO * WO, c < C
    pad = (K - 1) // 2 * DILATION
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for i in range(K):  # rows of taps in a loop, columns unrolled: K taps' loads in flight, not K*K
        ih = oh * STRIDE + i * DILATION - pad
        for j in tl.static_range(K):
            t = i * K + j
            iw = ow * STRIDE + j * DILATION - pad
            inside = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            spatial = tl.load(sp_ptr + n * ssn + t * sst + oh * ssh + ow * ssw, mask=p_ok, other=0.0).to(ACC)
            channel = tl.load(ch_ptr + n * scn + c * scc + t * sct, mask=c_ok, other=0.0).to(ACC)
            x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + (ih * sxh + iw * sxw)[None, :],
                        mask=c_ok[:, None] & inside[None, :], other=0.0).to(ACC)
            acc += _weight(spatial, channel, MUL) * x
    tl.store(y_ptr + n * syn + c[:, None] * syc + (oh * syh + ow * syw)[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _grad_input_kernel(g_ptr, ch_ptr, sp_ptr, gx_ptr, C, H, W, HO, WO,
                       sgn, sgc, sgh, sgw, scn, scc, sct, ssn, sst, ssh, ssw, sxn, sxc, sxh, sxw,
                       K: tl.constexpr, DILATION: tl.constexpr, STRIDE: tl.constexpr, MUL: tl.constexpr,
                       ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """gx[n, c, i] = sum over the (tap, output) pairs that read input pixel i of f(sp, ch) * grad, gathered."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    ih, iw = p // W, p % W
    p_ok, c_ok = p < H * W, c < C
    pad = (K - 1) // 2 * DILATION
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for i in range(K):
        rows = ih + pad - i * DILATION  # = oh * STRIDE where tap row i of output row oh reads input row ih
        oh = rows // STRIDE
        row_hit = p_ok & (rows >= 0) & (rows % STRIDE == 0) & (oh < HO)
        for j in tl.static_range(K):
            t = i * K + j
            cols = iw + pad - j * DILATION
            ow = cols // STRIDE
            hit = row_hit & (cols >= 0) & (cols % STRIDE == 0) & (ow < WO)
            spatial = tl.load(sp_ptr + n * ssn + t * sst + oh * ssh + ow * ssw, mask=hit, other=0.0).to(ACC)
            channel = tl.load(ch_ptr + n * scn + c * scc + t * sct, mask=c_ok, other=0.0).to(ACC)
            g = tl.load(g_ptr + n * sgn + c[:, None] * sgc + (oh * sgh + ow * sgw)[None, :],
                        mask=c_ok[:, None] & hit[None, :], other=0.0).to(ACC)
            acc += _weight(spatial, channel, MUL) * g
    tl.store(gx_ptr + n * sxn + c[:, None] * sxc + (ih * sxh + iw * sxw)[None, :],
             acc.to(gx_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _grad_filters_kernel(g_ptr, x_ptr, ch_ptr, sp_ptr, gch_ptr, gsp_ptr, C, H, W, HO, WO,
                         sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw, scn, scc, sct, ssn, sst, ssh, ssw,
                         K: tl.constexpr, DILATION: tl.constexpr, STRIDE: tl.constexpr, MUL: tl.constexpr,
                         ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """gsp[n, t, o] = sum_c grad * x_tap (* ch); this block's share of gch[n, c, t] = sum_o grad * x_tap (* sp)."""
    block = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    p = block * BLOCK_P + tl.arange(0, BLOCK_P)
    oh, ow = p // WO, p % WO
    p_ok = p < HO * WO
    pad = (K - 1) // 2 * DILATION
    partial_row = (n * tl.num_programs(0) + block) * C  # gch partials: (N, pixel blocks, C, K*K), contiguous
    for t in range(K * K):
        ih = oh * STRIDE + (t // K) * DILATION - pad
        iw = ow * STRIDE + (t % K) * DILATION - pad
        inside = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        spatial = tl.load(sp_ptr + n * ssn + t * sst + oh * ssh + ow * ssw, mask=p_ok, other=0.0).to(ACC)
        grad_spatial = tl.zeros((BLOCK_P,), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < C
            g = tl.load(g_ptr + n * sgn + c[:, None] * sgc + (oh * sgh + ow * sgw)[None, :],
                        mask=c_ok[:, None] & p_ok[None, :], other=0.0).to(ACC)
            x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + (ih * sxh + iw * sxw)[None, :],
                        mask=c_ok[:, None] & inside[None, :], other=0.0).to(ACC)
            if MUL:
                channel = tl.load(ch_ptr + n * scn + c * scc + t * sct, mask=c_ok, other=0.0).to(ACC)
                grad_spatial += tl.sum(g * x * channel[:, None], axis=0)
                grad_channel = tl.sum(g * x * spatial[None, :], axis=1)
            else:
                grad_spatial += tl.sum(g * x, axis=0)
                grad_channel = tl.sum(g * x, axis=1)
            tl.store(gch_ptr + (partial_row + c) * (K * K) + t, grad_channel, mask=c_ok)
        tl.store(gsp_ptr + (n * (K * K) + t) * (HO * WO) + p, grad_spatial.to(gsp_ptr.dtype.element_ty), mask=p_ok)


def _constants(kernel_size: int, dilation: int, stride: int, mul: bool, acc: torch.dtype) -> dict:
    """The compile-time arguments every DDF kernel takes (one compiled variant per combination)."""
    return {"K": kernel_size, "DILATION": dilation, "STRIDE": stride, "MUL": mul, "ACC": TRITON_DTYPE[acc]}


def forward(x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int, dilation: int,
            stride: int, mul: bool) -> Tensor:
    """The DDF output (N, C, H_out, W_out), in ``x``'s dtype and layout (operators.ddf.ddf has checked the shapes)."""
    n, c, h, w = x.shape
    ho, wo = spatial_filter.shape[2:]
    ch = channel_filter.reshape(n, c, kernel_size**2)
    y = torch.empty((n, c, ho, wo), dtype=x.dtype, device=x.device, memory_format=output_format(x))
    block_c, block_p = tile(c, ho * wo, is_channels_last(x))
    grid = (triton.cdiv(ho * wo, block_p), triton.cdiv(c, block_c), n)
    with device_of(x):
        _forward_kernel[grid](x, ch, spatial_filter, y, c, h, w, ho, wo, *x.stride(), *ch.stride(),
                              *spatial_filter.stride(), *y.stride(), BLOCK_C=block_c, BLOCK_P=block_p,
                              **_constants(kernel_size, dilation, stride, mul, accumulator(x, ch, spatial_filter)))
    return y


def backward(grad: Tensor, x: Tensor, channel_filter: Tensor, spatial_filter: Tensor, kernel_size: int,
             dilation: int, stride: int, mul: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the input (its layout), the channel filter and the spatial filter (contiguous), in their dtypes."""
    n, c, h, w = x.shape
    ho, wo = spatial_filter.shape[2:]
    ch, sp = channel_filter.reshape(n, c, kernel_size**2), spatial_filter
    acc = accumulator(grad, x, ch, sp)
    constants = _constants(kernel_size, dilation, stride, mul, acc)
    channels_last = is_channels_last(x)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
    block_c, block_p = tile(c, h * w, channels_last)
    grid = (triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), n)
    block_c_f, block_p_f = tile(c, ho * wo, channels_last)
    blocks = triton.cdiv(ho * wo, block_p_f)
    partials = torch.empty((n, blocks, c, kernel_size**2), dtype=acc, device=x.device)
    gsp = torch.empty(sp.shape, dtype=sp.dtype, device=x.device)
    with device_of(x):
        _grad_input_kernel[grid](grad, ch, sp, gx, c, h, w, ho, wo, *grad.stride(), *ch.stride(), *sp.stride(),
                                 *gx.stride(), BLOCK_C=block_c, BLOCK_P=block_p, **constants)
        _grad_filters_kernel[(blocks, n)](grad, x, ch, sp, partials, gsp, c, h, w, ho, wo, *grad.stride(),
                                          *x.stride(), *ch.stride(), *sp.stride(), BLOCK_C=block_c_f,
                                          BLOCK_P=block_p_f, **constants)
    gch = partials.sum(1).reshape(channel_filter.shape).to(channel_filter.dtype)
    return gx, gch, gsp

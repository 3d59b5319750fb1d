"""Triton kernels of CARAFE's reassembly (``operators.carafe.reassemble``): the forward and its two gradients.

``y[n, c, i*s + a, j*s + b] = sum over taps t = (di, dj) of w[n, t, a, b, i, j] * x[n, c, i + di - r, j + dj - r]``.
Every program owns BLOCK_C channels x BLOCK_P pixels of one sample, loads each tap's reassembly weights once for
all its channels, and accumulates in float32 (float64 for float64 inputs), storing in the input's dtype. As in
the DDF kernels the backward splits by what it reduces over: the input gradient is a gather over the taps and
sub-pixels that read each input pixel, and the weight gradient (a sum over channels) walks all channels in one
program per pixel block, so it comes out complete. No atomics: results are deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from operators.gpu import device_of, is_channels_last, output_format, tile
from operators.gpu.ddf import TRITON_DTYPE, accumulator


@triton.jit
def _forward_kernel(x_ptr, w_ptr, y_ptr, C, H, W, sxn, sxc, sxh, sxw, swn, swt, swa, swb, swh, sww,
                    syn, syc, syh, syw, K: tl.constexpr, SCALE: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Each output pixel: its sub-pixel's k*k weights times the k x k neighbourhood of its source pixel."""
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    oy, ox = q // (W * SCALE), q % (W * SCALE)
    i, a, j, b = oy // SCALE, oy % SCALE, ox // SCALE, ox % SCALE
    q_ok, c_ok = q < H * W * SCALE * SCALE, c < C
    weights = w_ptr + n * swn + a * swa + b * swb + i * swh + j * sww
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for di in range(K):  # rows of taps in a loop, columns unrolled
        si = i + di - K // 2
        for dj in tl.static_range(K):
            sj = j + dj - K // 2
            inside = q_ok & (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
            w = tl.load(weights + (di * K + dj) * swt, mask=q_ok, other=0.0).to(ACC)
            x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + (si * sxh + sj * sxw)[None, :],
                        mask=c_ok[:, None] & inside[None, :], other=0.0).to(ACC)
            acc += w[None, :] * x
    tl.store(y_ptr + n * syn + c[:, None] * syc + (oy * syh + ox * syw)[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=c_ok[:, None] & q_ok[None, :])


@triton.jit
def _grad_input_kernel(g_ptr, w_ptr, gx_ptr, C, H, W, sgn, sgc, sgh, sgw, swn, swt, swa, swb, swh, sww,
                       sxn, sxc, sxh, sxw, K: tl.constexpr, SCALE: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """gx[n, c, y, x] = sum over the taps and sub-pixels of the outputs that read (y, x) of weight * grad."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = tl.program_id(2).to(tl.int64)
    iy, ix = p // W, p % W
    p_ok, c_ok = p < H * W, c < C
    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for sub in range(SCALE * SCALE):
        a, b = sub // SCALE, sub % SCALE
        for di in range(K):
            i = iy + K // 2 - di  # the source row whose tap row di reads input row iy
            for dj in tl.static_range(K):
                j = ix + K // 2 - dj
                hit = p_ok & (i >= 0) & (i < H) & (j >= 0) & (j < W)
                w = tl.load(w_ptr + n * swn + (di * K + dj) * swt + a * swa + b * swb + i * swh + j * sww,
                            mask=hit, other=0.0).to(ACC)
                g = tl.load(g_ptr + n * sgn + c[:, None] * sgc + ((i * SCALE + a) * sgh + (j * SCALE + b) * sgw)[None, :],
                            mask=c_ok[:, None] & hit[None, :], other=0.0).to(ACC)
                acc += w[None, :] * g
    tl.store(gx_ptr + n * sxn + c[:, None] * sxc + (iy * sxh + ix * sxw)[None, :],
             acc.to(gx_ptr.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])


@triton.jit
def _grad_weights_kernel(g_ptr, x_ptr, gw_ptr, C, H, W, sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
                         K: tl.constexpr, SCALE: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """gw[n, t, a, b, i, j] = sum over all channels of grad(output pixel) * x(its tap t), into a contiguous gw."""
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1).to(tl.int64)
    oy, ox = q // (W * SCALE), q % (W * SCALE)
    i, a, j, b = oy // SCALE, oy % SCALE, ox // SCALE, ox % SCALE
    q_ok = q < H * W * SCALE * SCALE
    out = gw_ptr + n * (K * K * SCALE * SCALE * H * W) + ((a * SCALE + b) * H + i) * W + j
    for t in range(K * K):
        si, sj = i + t // K - K // 2, j + t % K - K // 2
        inside = q_ok & (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
        acc = tl.zeros((BLOCK_P,), dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            c_ok = c < C
            g = tl.load(g_ptr + n * sgn + c[:, None] * sgc + (oy * sgh + ox * sgw)[None, :],
                        mask=c_ok[:, None] & q_ok[None, :], other=0.0).to(ACC)
            x = tl.load(x_ptr + n * sxn + c[:, None] * sxc + (si * sxh + sj * sxw)[None, :],
                        mask=c_ok[:, None] & inside[None, :], other=0.0).to(ACC)
            acc += tl.sum(g * x, axis=0)
        tl.store(out + t * (SCALE * SCALE * H * W), acc.to(gw_ptr.dtype.element_ty), mask=q_ok)


def forward(x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> Tensor:
    """The reassembled map (N, C, sH, sW) in ``x``'s dtype and layout; ``kernels``: (N, k^2, s, s, H, W)."""
    n, c, h, w = x.shape
    y = torch.empty((n, c, h * scale, w * scale), dtype=x.dtype, device=x.device, memory_format=output_format(x))
    block_c, block_p = tile(c, y.shape[2] * y.shape[3], is_channels_last(x))
    grid = (triton.cdiv(y.shape[2] * y.shape[3], block_p), triton.cdiv(c, block_c), n)
    with device_of(x):
        _forward_kernel[grid](x, kernels, y, c, h, w, *x.stride(), *kernels.stride(), *y.stride(), K=up_kernel,
                              SCALE=scale, ACC=TRITON_DTYPE[accumulator(x, kernels)], BLOCK_C=block_c,
                              BLOCK_P=block_p)
    return y


def backward(grad: Tensor, x: Tensor, kernels: Tensor, up_kernel: int, scale: int) -> tuple[Tensor, Tensor]:
    """Gradients of the input (its layout) and of the reassembly kernels (contiguous), in their dtypes."""
    n, c, h, w = x.shape
    acc = TRITON_DTYPE[accumulator(grad, x, kernels)]
    channels_last = is_channels_last(x)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=output_format(x))
    gw = torch.empty(kernels.shape, dtype=kernels.dtype, device=x.device)
    block_c, block_p = tile(c, h * w, channels_last)
    block_c_w, block_p_w = tile(c, h * w * scale * scale, channels_last)
    with device_of(x):
        _grad_input_kernel[(triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), n)](
            grad, kernels, gx, c, h, w, *grad.stride(), *kernels.stride(), *gx.stride(), K=up_kernel, SCALE=scale,
            ACC=acc, BLOCK_C=block_c, BLOCK_P=block_p)
        _grad_weights_kernel[(triton.cdiv(h * w * scale * scale, block_p_w), n)](
            grad, x, gw, c, h, w, *grad.stride(), *x.stride(), K=up_kernel, SCALE=scale, ACC=acc,
            BLOCK_C=block_c_w, BLOCK_P=block_p_w)
    return gx, gw

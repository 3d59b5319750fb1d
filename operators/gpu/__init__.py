"""GPU kernels of the dynamic operators (DDF, CARAFE) in Triton, and the one decision of when they run.

``operators.gpu.ddf`` and ``operators.gpu.carafe`` import Triton, so they are imported only on first use on a
CUDA tensor; where Triton is missing the operators keep their PyTorch tap loop, with a one-time warning naming
why. The package is not called ``triton``: inside it, ``import triton`` must mean the real Triton.

Under ``TRITON_INTERPRET=1`` (set before the kernel modules are imported) the kernels also run on CPU tensors;
tests/test_triton_kernels.py checks them that way, with :func:`on_cuda` patched to say yes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import warnings
from types import ModuleType

import torch
from torch import Tensor

TILE = 1024
"""Elements of one program's (channels x pixels) tile: 8 per thread at Triton's default 4 warps.

At 2048, DDF's k=7 NCHW kernels needed 255 registers and spilled (ptxas, sm_90); at 1024 none spills."""
CONTIGUOUS_BLOCK = 128
"""Most elements a tile spans along the layout's contiguous axis (pixels in NCHW, channels in channels-last)."""


def on_cuda(x: Tensor) -> bool:
    """Whether ``x`` is on a CUDA device: the only device test of the dispatch (tests patch it to reach the kernels)."""
    return x.device.type == "cuda"


@functools.cache
def _load(name: str) -> ModuleType | None:
    """``operators.gpu.<name>``, imported once; None, with a one-time warning naming why, where Triton is missing."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as err:
        warnings.warn(
            f"{name}: the Triton GPU kernels cannot be used ({type(err).__name__}: {err}), so {name} runs on CUDA "
            "as its PyTorch loop over the k*k taps: the same results, several times slower and with more memory "
            "traffic. Triton ships with PyPI's CUDA builds of torch; install the triton version your torch names "
            "(pip show torch) to get the kernels.", RuntimeWarning, stacklevel=3)
        return None


def kernels_for(x: Tensor, name: str) -> ModuleType | None:
    """The Triton kernels module ``name`` (``ddf``, ``carafe``) for ``x`` on CUDA; None elsewhere or without Triton."""
    return _load(name) if on_cuda(x) else None


def _pow2(n: int) -> int:
    """The smallest power of two >= n (Triton's block sizes must be powers of two)."""
    return 1 << max(n - 1, 0).bit_length()


def tile(channels: int, pixels: int, channels_last: bool) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) of one program: the contiguous axis first (coalesced loads), no wider than the tensor."""
    if channels_last:
        block_c = min(_pow2(channels), CONTIGUOUS_BLOCK)
        return block_c, min(_pow2(pixels), TILE // block_c)
    block_p = min(_pow2(pixels), CONTIGUOUS_BLOCK)
    return min(_pow2(channels), TILE // block_p), block_p


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is laid out channels-last (and not also plainly contiguous, as a 1x1 map or one channel is)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def output_format(x: Tensor) -> torch.memory_format:
    """Outputs (and input gradients) keep the input's layout: channels-last in, channels-last out."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def device_of(x: Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it ``x``'s (nothing to do for CPU tensors, interpreted)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()

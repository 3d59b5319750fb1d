"""DDF speed and memory against its baselines, in one process (the DDF issue's targets).

At (8, 256, 28, 28), k=3, on the machine at hand, compares:
- the functional op (compiled CPU kernel, and the PyTorch-loop fallback) with a channels-last
  depthwise 3x3 conv and with an unfold-based implementation, forward and forward+backward;
- the whole DDF module with a dense 3x3 conv of the same width;
- activation memory kept for backward (DDF vs unfold).

Run: python benchmarks/ddf_speed.py [--batch 8 --channels 256 --size 28 --iters 30 --threads N --json out.json]
Timings are medians of repeated runs; ratios are what to read (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch import nn

import operators.ddf as ddf_module
from bench.measure import measure_latency, saved_activation_bytes
from bench.results import hardware
from operators import create_op


def ddf_unfold(x: torch.Tensor, ch: torch.Tensor, sp: torch.Tensor, k: int = 3) -> torch.Tensor:
    """The common reference implementation: unfold the input k*k times, then weight and sum."""
    n, c, h, w = x.shape
    cols = F.unfold(x, k, padding=k // 2).reshape(n, c, k * k, h, w)
    return (cols * ch.reshape(n, c, k * k, 1, 1) * sp.reshape(n, 1, k * k, h, w)).sum(2)


class Call(nn.Module):
    """Wrap a function of fixed filters as a module (for saved-activation accounting)."""

    def __init__(self, fn, *filters: torch.Tensor) -> None:
        super().__init__()
        self.fn, self.filters = fn, filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.filters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    n, c, s, k = args.batch, args.channels, args.size, 3
    torch.manual_seed(0)
    x = torch.randn(n, c, s, s)
    ch = torch.randn(n, c, k, k)
    sp = torch.randn(n, k * k, s, s)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    depthwise = nn.Conv2d(c, c, k, padding=1, groups=c, bias=False).to(memory_format=torch.channels_last)
    dense = nn.Conv2d(c, c, k, padding=1, bias=False)
    dense_cl = nn.Conv2d(c, c, k, padding=1, bias=False).to(memory_format=torch.channels_last)
    ddf_op = create_op("ddf", c, c)
    ddf_cl = create_op("ddf", c, c).to(memory_format=torch.channels_last)
    ddf_module.cpu_kernel()  # build (or load) the kernel before timing

    def timed(fn) -> float:
        with torch.no_grad():
            return measure_latency(fn, cpu, warmup=3, iters=args.iters, min_seconds=1.0)["median_ms"]

    def timed_backward(fn, *inputs: torch.Tensor) -> float:
        leaves = [t.detach().requires_grad_() for t in inputs]

        def step() -> None:
            fn(*leaves).sum().backward()

        return measure_latency(step, cpu, warmup=2, iters=max(5, args.iters // 3), min_seconds=1.0)["median_ms"]

    def with_backend(name: str, fn):
        def run(*a):
            ddf_module.BACKEND, before = name, ddf_module.BACKEND
            try:
                return fn(*a)
            finally:
                ddf_module.BACKEND = before
        return run

    ddf_cpp = with_backend("cpp", lambda a, b, c_: ddf_module.ddf(a, b, c_))
    ddf_loop = with_backend("torch", lambda a, b, c_: ddf_module.ddf(a, b, c_))
    fig = {
        "shape": [n, c, s, s],
        "forward_ms": {
            "depthwise3x3_channels_last": timed(lambda: depthwise(x_cl)),
            "ddf_op_cpp_channels_last": timed(lambda: ddf_cpp(x_cl, ch, sp)),
            "ddf_op_cpp": timed(lambda: ddf_cpp(x, ch, sp)),
            "ddf_op_torch_loop": timed(lambda: ddf_loop(x, ch, sp)),
            "ddf_op_unfold": timed(lambda: ddf_unfold(x, ch, sp)),
            "ddf_module_channels_last": timed(lambda: ddf_cl(x_cl)),
            "ddf_module": timed(lambda: ddf_op(x)),
            "dense3x3_conv_channels_last": timed(lambda: dense_cl(x_cl)),
            "dense3x3_conv": timed(lambda: dense(x)),
        },
        "forward_backward_ms": {
            "depthwise3x3_channels_last": timed_backward(depthwise, x_cl),
            "ddf_op_cpp_channels_last": timed_backward(ddf_cpp, x_cl, ch, sp),
            "ddf_op_cpp": timed_backward(ddf_cpp, x, ch, sp),
            "ddf_op_torch_loop": timed_backward(ddf_loop, x, ch, sp),
            "ddf_op_unfold": timed_backward(ddf_unfold, x, ch, sp),
            "ddf_module_channels_last": timed_backward(ddf_cl, x_cl),
            "ddf_module": timed_backward(ddf_op, x),
            "dense3x3_conv_channels_last": timed_backward(dense_cl, x_cl),
            "dense3x3_conv": timed_backward(dense, x),
        },
        "saved_for_backward_mb": {
            "ddf_op": saved_activation_bytes(Call(ddf_module.ddf, ch.requires_grad_(), sp.requires_grad_()),
                                             x.requires_grad_()) / 2**20,
            "ddf_op_unfold": saved_activation_bytes(Call(ddf_unfold, ch, sp), x) / 2**20,
            "input": x.numel() * 4 / 2**20,
        },
        "hardware": hardware("cpu"),
    }
    f, b = fig["forward_ms"], fig["forward_backward_ms"]
    fig["ratios"] = {
        "ddf_op / depthwise, both channels-last (forward, target <= 3)":
            f["ddf_op_cpp_channels_last"] / f["depthwise3x3_channels_last"],
        "unfold / ddf_op, both NCHW (forward, target >= 10)": f["ddf_op_unfold"] / f["ddf_op_cpp"],
        "ddf_module / dense conv, channels-last (forward, target < 1)":
            f["ddf_module_channels_last"] / f["dense3x3_conv_channels_last"],
        "ddf_module / dense conv, NCHW (forward, target < 1)": f["ddf_module"] / f["dense3x3_conv"],
        "ddf_op / depthwise, channels-last (forward+backward)":
            b["ddf_op_cpp_channels_last"] / b["depthwise3x3_channels_last"],
        "unfold / ddf_op, NCHW (forward+backward)": b["ddf_op_unfold"] / b["ddf_op_cpp"],
        "ddf_module / dense conv, channels-last (forward+backward)":
            b["ddf_module_channels_last"] / b["dense3x3_conv_channels_last"],
    }
    print(json.dumps(fig, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(fig, out, indent=2)


if __name__ == "__main__":
    main()

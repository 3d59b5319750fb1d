"""Where a channels-last 1x1 convolution is faster as a GEMM than as oneDNN's convolution, and what it buys.

Part 1 times ResNet-50's pointwise shapes (batch 1 and 8) both ways, which is how ``GEMM_MAX_POSITIONS``
in operators/conv.py was chosen. Part 2 times whole networks with the GEMM path on and off, interleaved in
one process (same model objects; only the threshold changes between timings; the order alternates every round),
so machine drift cancels.

Usage: python benchmarks/pointwise_gemm.py [--ops conv,octconv] [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Iterator

import timm
import torch

import backbones
import operators.conv as conv_module
from operators.conv import Pointwise
from bench.profile import measure_latency
from bench.results import hardware

# (batch, in, out, output size, stride): ResNet-50's 1x1 convs at batch 1 and 8, stage by stage
SHAPES = [(b, cin, cout, size, stride) for b in (1, 8) for cin, cout, size, stride in [
    (64, 256, 56, 1), (256, 64, 56, 1), (512, 128, 28, 1), (128, 512, 28, 1), (256, 512, 28, 2),
    (1024, 256, 14, 1), (256, 1024, 14, 1), (512, 1024, 14, 2),
    (2048, 512, 7, 1), (512, 2048, 7, 1), (1024, 2048, 7, 2)]]


@contextlib.contextmanager
def gemm_path(enabled: bool, threshold: int) -> Iterator[None]:
    """Run ``Pointwise`` with its GEMM path up to ``threshold`` positions, or never; restores the setting."""
    saved = conv_module.GEMM_MAX_POSITIONS
    conv_module.GEMM_MAX_POSITIONS = threshold if enabled else 0
    try:
        yield
    finally:
        conv_module.GEMM_MAX_POSITIONS = saved


def shapes_table(iters: int) -> list[dict]:
    cpu, rows = torch.device("cpu"), []
    with torch.inference_mode():
        for batch, cin, cout, size, stride in SHAPES:
            x = torch.randn(batch, cin, size * stride, size * stride).contiguous(memory_format=torch.channels_last)
            m = Pointwise(cin, cout, stride)
            times = {}
            for gemm in (False, True):
                with gemm_path(gemm, threshold=batch * size * size):
                    times[gemm] = measure_latency(lambda: m(x), cpu, warmup=3, iters=iters)["median_ms"]
            conv, mm = times[False], times[True]
            rows.append(dict(batch=batch, cin=cin, cout=cout, out_size=size, stride=stride,
                             positions=batch * size * size, conv_ms=conv, gemm_ms=mm, gemm_vs_conv=mm / conv))
            print(f"b{batch} {cin:>4}->{cout:<4} s{stride} {size:>2}x{size:<2} ({batch * size * size:>5} positions): "
                  f"conv {conv:6.3f} ms  gemm {mm:6.3f} ms  {mm / conv:.2f}x")
    return rows


def networks_ab(ops: list[str], batches: list[int], rounds: int) -> dict:
    cpu, threshold = torch.device("cpu"), conv_module.GEMM_MAX_POSITIONS
    models = {op: timm.create_model("op_resnet50", op=op).eval().to(memory_format=torch.channels_last) for op in ops}
    result = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            samples = {(op, on): [] for op in ops for on in (False, True)}
            for r in range(rounds):
                order = list(samples.items())
                for (op, on), times in order if r % 2 else reversed(order):  # alternate, so order bias cancels
                    with gemm_path(on, threshold):
                        times.append(measure_latency(lambda: models[op](x), cpu, warmup=1,
                                                     iters=8 if batch == 1 else 2)["median_ms"])
            med = {key: statistics.median(v) for key, v in samples.items()}
            result[str(batch)] = {op: {"conv_only_ms": med[op, False], "with_gemm_ms": med[op, True]} for op in ops}
            for op in ops:
                print(f"batch {batch} {op:<8} oneDNN only {med[op, False]:6.1f} ms   with GEMM path "
                      f"{med[op, True]:6.1f} ms   ({med[op, True] / med[op, False]:.2f}x)")
            if "conv" in ops:
                for op in ops:
                    print(f"batch {batch} {op:<8} vs conv: {med[op, False] / med['conv', False]:.2f}x -> "
                          f"{med[op, True] / med['conv', True]:.2f}x")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="conv,octconv")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=30, help="timings per shape in the per-shape table")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = {"hardware": hardware("cpu"), "threshold_positions": conv_module.GEMM_MAX_POSITIONS,
              "shapes": shapes_table(args.iters), "networks": networks_ab(args.ops.split(","), args.batch,
                                                                           args.rounds)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

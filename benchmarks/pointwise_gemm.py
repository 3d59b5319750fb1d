"""Where a channels-last 1x1 convolution is faster as a GEMM than as oneDNN's convolution, and what it buys.

Part 1 times every pointwise shape of ResNet-50, Oct-ResNet-50, MobileNetV2 and ShuffleNetV2 (batch 1 and 8)
both ways, which is how ``GEMM_MAX_POSITIONS`` and ``GEMM_MAX_MACS`` in operators/conv.py were chosen. Part 2
times whole networks under three rules (oneDNN only; GEMM at few positions; GEMM at few positions or few MACs),
interleaved in one process (same model objects; only the rule changes between timings; the order alternates
every round), so machine drift cancels.

Usage: python benchmarks/pointwise_gemm.py [--ops conv,octconv] [--rounds 7] [--json out.json]

The committed run is benchmarks/results/pointwise_gemm.json (with --json that path). Rerun it to re-tune
the thresholds on another CPU or after a torch (oneDNN) upgrade; docs/performance.md has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
from collections.abc import Iterator

import timm
import torch

import backbones  # noqa: F401  registers the models
import operators.conv as conv_module
from operators.conv import Pointwise
from bench.measure import interleaved_latency, measure_latency
from bench.results import hardware

NETWORKS = [("op_resnet50", {"op": "conv"}), ("op_resnet50", {"op": "octconv"}), ("op_mobilenetv2", {}),
            ("op_shufflenetv2", {})]
RULES = {"onednn_only": (0, 0), "few_positions": (conv_module.GEMM_MAX_POSITIONS, 0),
         "few_positions_or_macs": (conv_module.GEMM_MAX_POSITIONS, conv_module.GEMM_MAX_MACS)}


@contextlib.contextmanager
def gemm_rule(max_positions: int, max_macs: int) -> Iterator[None]:
    """Run ``Pointwise`` with the given GEMM thresholds (0 turns a criterion off); restores the settings."""
    saved = conv_module.GEMM_MAX_POSITIONS, conv_module.GEMM_MAX_MACS
    conv_module.GEMM_MAX_POSITIONS, conv_module.GEMM_MAX_MACS = max_positions, max_macs
    try:
        yield
    finally:
        conv_module.GEMM_MAX_POSITIONS, conv_module.GEMM_MAX_MACS = saved


def pointwise_shapes() -> list[tuple[int, int, int, int]]:
    """(in channels, out channels, input size, stride) of every ``Pointwise`` in ``NETWORKS`` at 224x224."""
    shapes: set[tuple[int, int, int, int]] = set()

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        shapes.add((module.in_channels, module.out_channels, inputs[0].shape[-1], module.stride[0]))

    with torch.inference_mode():
        for name, kwargs in NETWORKS:
            model = timm.create_model(name, **kwargs).eval().to(memory_format=torch.channels_last)
            for m in model.modules():
                if isinstance(m, Pointwise):
                    m.register_forward_pre_hook(record)
            model(torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last))
    return sorted(shapes)


def shapes_table(iters: int) -> list[dict]:
    cpu, rows = torch.device("cpu"), []
    with torch.inference_mode():
        for batch in (1, 8):
            for cin, cout, size, stride in pointwise_shapes():
                x = torch.randn(batch, cin, size, size).contiguous(memory_format=torch.channels_last)
                m, out = Pointwise(cin, cout, stride), -(-size // stride)
                positions = batch * out * out
                times = {}
                for gemm in (False, True):
                    with gemm_rule(positions if gemm else 0, 0):
                        times[gemm] = min(measure_latency(lambda: m(x), cpu, warmup=3, iters=iters)["median_ms"]
                                          for _ in range(2))
                conv, mm = times[False], times[True]
                rows.append(dict(batch=batch, cin=cin, cout=cout, out_size=out, stride=stride, positions=positions,
                                 macs=positions * cin * cout, conv_ms=conv, gemm_ms=mm, gemm_vs_conv=mm / conv))
                print(f"b{batch} {cin:>4}->{cout:<4} s{stride} {out:>3}x{out:<3} ({positions:>6} positions, "
                      f"{positions * cin * cout / 1e6:6.1f}M MACs): conv {conv:6.3f} ms  gemm {mm:6.3f} ms  "
                      f"{mm / conv:.2f}x")
    return rows


def forward_under_rule(model: torch.nn.Module, x: torch.Tensor, rule: str) -> torch.Tensor:
    """``model(x)`` with ``Pointwise`` following ``RULES[rule]``."""
    with gemm_rule(*RULES[rule]):
        return model(x)


def networks_ab(ops: list[str], batches: list[int], rounds: int) -> dict:
    cpu = torch.device("cpu")
    models = {op: timm.create_model("op_resnet50", op=op).eval().to(memory_format=torch.channels_last) for op in ops}
    result = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            fns = {f"{op} {rule}": functools.partial(forward_under_rule, models[op], x, rule)
                   for op in ops for rule in RULES}
            samples = interleaved_latency(fns, cpu, rounds=rounds, iters=8 if batch == 1 else 2)
            med = {(op, rule): statistics.median(samples[f"{op} {rule}"]) for op in ops for rule in RULES}
            result[str(batch)] = {op: {f"{rule}_ms": med[op, rule] for rule in RULES} for op in ops}
            for op in ops:
                print(f"batch {batch} {op:<8} " + "   ".join(f"{rule} {med[op, rule]:6.1f} ms" for rule in RULES))
            if "conv" in ops:
                for op in ops:
                    print(f"batch {batch} {op:<8} vs conv: " + " -> ".join(
                        f"{med[op, rule] / med['conv', rule]:.3f}x" for rule in RULES))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="conv,octconv")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=30, help="timings per shape in the per-shape table")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if min(args.rounds, args.iters, *args.batch) < 1:
        parser.error("--rounds, --iters and --batch must be positive")
    result = {"hardware": hardware("cpu"), "rules": {rule: dict(max_positions=p, max_macs=m)
                                                     for rule, (p, m) in RULES.items()},
              "shapes": shapes_table(args.iters), "networks": networks_ab(args.ops.split(","), args.batch,
                                                                           args.rounds)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

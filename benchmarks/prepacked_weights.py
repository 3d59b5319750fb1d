"""How much of eager batch-1 latency is oneDNN re-laying out conv weights on every call, per network.

Eager ``nn.Conv2d`` on the CPU hands oneDNN plain weights, which it reorders into its blocked layout
at each call; torch.compile's freezing does that once. This script times each backbone eagerly as
shipped and with every ``nn.Conv2d`` (and subclass) calling oneDNN with weights prepacked once per
input shape, and reports both and each operator's ratio to `conv` in either mode. Each mode runs in
its own processes (alternating; the operators interleaved within each): packing allocates a second
copy of the weights, and allocating that much moves the other models' timings in the same process.
It is a measurement, not a mode of the suite: `bench profile` times stock eager layers (what users
run) and compiled graphs (``task.compile=true``, prepacked and fused).

Usage: python benchmarks/prepacked_weights.py [--backbone resnet50] [--ops conv,octconv] [--batch 1 8]
                                              [--rounds 5] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Callable

import timm
import torch
from torch import Tensor, nn

import backbones
from bench.measure import interleaved_latency
from bench.results import hardware

MODES = ("stock", "prepacked")


def prepacked_forward(conv: nn.Conv2d) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """A ``_conv_forward`` for ``conv`` that reorders its weight for oneDNN once per input shape."""
    packed: dict[tuple[int, ...], Tensor] = {}
    stock = conv._conv_forward
    geometry = [list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups]

    def forward(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or isinstance(conv.padding, str):
            return stock(x, weight, bias)
        key = tuple(x.shape)
        if key not in packed:
            packed[key] = torch.ops.mkldnn._reorder_convolution_weight(weight, *geometry, list(x.shape))
        return torch.ops.mkldnn._convolution_pointwise(x, packed[key], bias, *geometry, "none", [], "")

    return forward


def prepack_convs(model: nn.Module) -> None:
    """Make every convolution of ``model`` (eval mode, weights frozen from now on) use prepacked weights."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
            module._conv_forward = prepacked_forward(module)


def child(mode: str, backbone: str, ops: list[str], batches: list[int], size: int, rounds: int) -> dict:
    """Per-round latencies (ms) of each operator's backbone at each batch, all in ``mode``, interleaved."""
    models = {op: timm.create_model(backbones.model_name(backbone), op=op).eval().to(memory_format=torch.channels_last)
              for op in ops}
    inputs = {n: torch.randn(n, 3, size, size).contiguous(memory_format=torch.channels_last) for n in batches}
    out = {}
    with torch.inference_mode():
        if mode == "prepacked":  # the prepacked path must compute what the stock one does
            expected = {(op, n): model(x) for op, model in models.items() for n, x in inputs.items()}
            for model in models.values():
                prepack_convs(model)
            for (op, n), y in expected.items():
                torch.testing.assert_close(models[op](inputs[n]), y, rtol=1e-3, atol=1e-3)
            del expected
        for n, x in inputs.items():
            out[str(n)] = interleaved_latency({op: (lambda m=m, x=x: m(x)) for op, m in models.items()},
                                              torch.device("cpu"), rounds=rounds, iters=16 if n == 1 else 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--ops", default="conv,octconv", help="comma-separated operators (conv is always added)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds in each process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per mode, alternating")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.rounds, args.repeats, *args.batch) < 1:
        parser.error("--rounds, --repeats and --batch must be positive")
    if not torch.backends.mkldnn.is_available():
        parser.error("this torch has no oneDNN (mkldnn) CPU backend: nothing to prepack")
    ops = ["conv", *(op for op in args.ops.split(",") if op != "conv")]
    if args.child:
        print(json.dumps(child(args.child, args.backbone, ops, args.batch, args.size, args.rounds)))
        return
    ratios: dict[str, dict[str, dict[str, list[float]]]] = {mode: {} for mode in MODES}
    latency: dict[str, dict[str, dict[str, list[float]]]] = {mode: {} for mode in MODES}
    for r in range(args.repeats):
        for mode in MODES if r % 2 == 0 else MODES[::-1]:
            cmd = [sys.executable, __file__, "--child", mode, "--backbone", args.backbone, "--ops", ",".join(ops),
                   "--size", str(args.size), "--rounds", str(args.rounds), "--batch", *map(str, args.batch)]
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            for batch, samples in json.loads(run.stdout.strip().splitlines()[-1]).items():
                for op, times in samples.items():
                    latency[mode].setdefault(batch, {}).setdefault(op, []).extend(times)
                    ratios[mode].setdefault(batch, {}).setdefault(op, []).extend(
                        t / c for t, c in zip(times, samples["conv"]))
    result = {"backbone": args.backbone, "size": args.size, "rounds": args.rounds, "repeats": args.repeats,
              "channels_last": True, "hardware": hardware("cpu"), "batches": {}}
    for batch in map(str, args.batch):
        rows = result["batches"][batch] = {}
        for op in ops:
            row = rows[op] = {}
            for mode in MODES:
                row[f"{mode}_ms"] = statistics.median(latency[mode][batch][op])
                row[f"{mode}_vs_conv"] = statistics.median(ratios[mode][batch][op])
            print(f"batch {batch:>2}  {op:<10} stock {row['stock_ms']:7.1f} ms ({row['stock_vs_conv']:.2f}x conv)"
                  f"   prepacked {row['prepacked_ms']:7.1f} ms ({row['prepacked_vs_conv']:.2f}x conv)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

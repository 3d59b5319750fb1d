"""Latency of every operator inside one backbone, relative to `conv`, measured interleaved.

On shared machines, load drifts over minutes, so models timed one after another are not comparable.
This script builds every model once, then times them round-robin (each round measures every model),
and reports per-model medians over rounds and their ratio to `conv`, at each batch size.
``--compile`` also times every model compiled by torch.compile (as `bench profile task.compile=true`
does) in the same rounds, and reports compiled latencies relative to the compiled `conv`.

Usage: python benchmarks/interleaved_latency.py [--backbone resnet50] [--ops conv,octconv,...]
                                                [--batch 1 8] [--rounds 5] [--json out.json] [--nchw]
                                                [--threads N] [--compile] [--device cuda]

The committed runs are in benchmarks/results/ (resnet50_ratios*.json); docs/performance.md gives the
command behind each. Without --json nothing is written.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import timm
import torch

import backbones
from bench.measure import compile_for_inference, interleaved_latency
from bench.results import hardware
from operators import OperatorError, list_ops


def build(backbone: str, ops: list[str], layout: torch.memory_format,
          device: torch.device) -> dict[str, torch.nn.Module]:
    models = {}
    for op in ops:
        try:
            model = timm.create_model(backbones.model_name(backbone), op=op)
        except OperatorError as err:
            print(f"skipped {op}: {err}")
            continue
        models[op] = model.eval().to(device, memory_format=layout)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--ops", default="all", help="comma-separated operators, or all conv-kind ones")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--nchw", action="store_true", help="time in the contiguous (NCHW) layout, not channels-last")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's, one per core)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models (inductor, frozen)")
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be a positive number of threads")
        torch.set_num_threads(args.threads)
    ops = list_ops("conv") if args.ops == "all" else args.ops.split(",")
    if "conv" not in ops:
        ops.insert(0, "conv")
    layout = torch.contiguous_format if args.nchw else torch.channels_last
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device here")
    models = build(args.backbone, ops, layout, device)
    result = {"backbone": args.backbone, "size": args.size, "rounds": args.rounds, "channels_last": not args.nchw,
              "compiled": args.compile, "hardware": hardware(args.device), "batches": {}}
    for batch in args.batch:
        x = torch.randn(batch, 3, args.size, args.size, device=device).contiguous(memory_format=layout)
        forwards: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dict(models)
        if args.compile:
            with torch.inference_mode():
                forwards.update({f"{op} compiled": compile_for_inference(model, [x])[0]
                                 for op, model in models.items()})
        with torch.inference_mode():
            samples = interleaved_latency({name: (lambda f=f: f(x)) for name, f in forwards.items()}, device,
                                          rounds=args.rounds, iters=8 if batch == 1 else 2)
        medians = {name: statistics.median(v) for name, v in samples.items()}
        rows = result["batches"][str(batch)] = {}
        for op in models:
            rows[op] = {"median_ms": medians[op], "vs_conv": medians[op] / medians["conv"]}
            line = f"batch {batch:>2}  {op:<10} {medians[op]:8.1f} ms  {rows[op]['vs_conv']:.2f}x conv"
            if args.compile:
                fast, base = medians[f"{op} compiled"], medians["conv compiled"]
                rows[op].update(compiled_ms=fast, compiled_vs_conv=fast / base)
                line += f"   compiled {fast:8.1f} ms  {fast / base:.2f}x conv"
            print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

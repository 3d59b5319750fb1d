"""Why does Oct-ResNet-29 train slower at small alpha, though it costs fewer MACs?

The standard classification rows show octconv at alpha 0.125 taking ~2.7x the wall time of alpha 0.5
with 1.4x its MACs. This script times one training step (forward, backward, at the standard recipe's
batch and 32 x 32 shapes images, channels-last, as the task trains) of ``op_resnet29`` with conv and
with octconv at each alpha, interleaved so that load drift cancels, and reports each model's step time
and its ratio to conv. ``--profile`` then lists, per model, the aten ops that take the most self CPU
time in a few profiled steps (with their input shapes), which names the kernel behind a slow step.

Usage: python benchmarks/octconv_alpha_speed.py [--alphas 0.125 0.25 0.5 0.75] [--batch 128] [--rounds 5]
                                                [--profile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import timm
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import backbones  # noqa: F401  (registers op_resnet29)
from bench.measure import interleaved_latency
from bench.results import hardware


def build(op: str, alpha: float | None, layout: torch.memory_format) -> nn.Module:
    kwargs = {"alpha": alpha} if alpha is not None else {}
    model = timm.create_model("op_resnet29", op=op, op_kwargs=kwargs, num_classes=10)
    return model.train().to(memory_format=layout)


def train_step(model: nn.Module, batch: int, size: int, layout: torch.memory_format) -> Callable[[], None]:
    """One forward + backward on a fixed random batch (no optimizer: its cost does not depend on the operator)."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=layout)
    target = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), target).backward()
    return step


def top_ops(step: Callable[[], None], steps: int, rows: int) -> list[dict]:
    """The aten ops with the most self CPU time over ``steps`` steps, with the input shapes they ran on."""
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls_per_step": e.count // steps,
             "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
             "share": e.self_cpu_time_total / total} for e in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.125, 0.25, 0.5, 0.75])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="steps per model per round (their median is kept)")
    parser.add_argument("--nchw", action="store_true", help="also time every model in the contiguous (NCHW) layout")
    parser.add_argument("--profile", action="store_true", help="also list each model's costliest aten ops")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    specs = {"conv": ("conv", None), **{f"octconv({a})": ("octconv", a) for a in args.alphas}}
    layouts = {"": torch.channels_last, **({" nchw": torch.contiguous_format} if args.nchw else {})}
    steps = {name + suffix: train_step(build(op, alpha, layout), args.batch, args.size, layout)
             for suffix, layout in layouts.items() for name, (op, alpha) in specs.items()}
    samples = interleaved_latency(steps, torch.device("cpu"), rounds=args.rounds, iters=args.iters)
    result = {"hardware": hardware("cpu"), "batch": args.batch, "size": args.size,
              "rounds": args.rounds, "step_ms": samples, "models": {}}
    print(f"train step (forward + backward), batch {args.batch}, {args.size}x{args.size}, channels-last unless "
          f"named nchw; "
          f"{args.rounds} interleaved rounds")
    print(f"{'model':<22}{'median ms':>10}{'min':>8}{'max':>8}{'x conv':>8}")
    for name, times in samples.items():
        ratios = [t / c for t, c in zip(times, samples["conv"])]
        result["models"][name] = {"median_ms": statistics.median(times), "ratio_to_conv": statistics.median(ratios)}
        print(f"{name:<22}{statistics.median(times):>10.1f}{min(times):>8.1f}{max(times):>8.1f}"
              f"{statistics.median(ratios):>8.2f}")
    if args.profile:
        result["top_ops"] = {}
        for name, step in steps.items():
            ops = result["top_ops"][name] = top_ops(step, steps=3, rows=8)
            print(f"\n{name}: costliest aten ops (self CPU ms per step)")
            for row in ops:
                print(f"  {row['self_ms_per_step']:>8.1f} ms {row['share']:>5.0%} x{row['calls_per_step']:<3} "
                      f"{row['op']:<38} {row['shapes']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

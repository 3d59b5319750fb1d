"""Batch-1 Oct-ResNet-50 / ResNet-50 latency ratio across fresh processes, before and after heap churn.

On this VM the eager batch-1 ratio moved between about 0.80x and 0.90x in "periods", and CPU time
taken by another process did not reproduce it (benchmarks/background_load.py). This script tests
the other candidate, the process's own memory: each fresh process times both networks interleaved,
then allocates and frees ``--churn-mb`` of tensors (as building and dropping a few models does), then
times them again. ``--hash-seed`` fixes PYTHONHASHSEED in every process (Python's allocations, and so
the heap's layout, then start alike). Every process runs under `bench.measure.retain_freed_memory`,
as `bench profile` does.

Usage: python benchmarks/heap_state.py [--churn-mb 200] [--repeats 4] [--rounds 3] [--hash-seed N]
                                       [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

PHASES = ("fresh", "after churn")


def child(churn_mb: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per-round batch-1 latencies (ms) of both networks, in a fresh heap and after churning it."""
    import timm
    import torch

    import backbones
    from bench.measure import interleaved_latency

    models = {op: timm.create_model(backbones.model_name("resnet50"), op=op).eval()
              .to(memory_format=torch.channels_last) for op in ("conv", "octconv")}
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    fns = {op: (lambda m=m: m(x)) for op, m in models.items()}
    out = {}
    with torch.inference_mode():
        out["fresh"] = interleaved_latency(fns, torch.device("cpu"), rounds=rounds, iters=16)
        churn = [torch.ones(1 << 20) for _ in range(churn_mb // 4)]  # 4 MiB each, below the mmap threshold
        del churn
        out["after churn"] = interleaved_latency(fns, torch.device("cpu"), rounds=rounds, iters=16)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--churn-mb", type=int, default=200, help="MiB allocated then freed between the phases")
    parser.add_argument("--repeats", type=int, default=4, help="fresh processes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per phase")
    parser.add_argument("--hash-seed", type=int, default=None, help="PYTHONHASHSEED of every process")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.churn_mb, args.repeats, args.rounds) < 1:
        parser.error("--churn-mb, --repeats and --rounds must be positive")
    if args.child:
        print(json.dumps(child(args.churn_mb, args.rounds)))
        return
    env = dict(os.environ)
    if args.hash_seed is not None:
        env["PYTHONHASHSEED"] = str(args.hash_seed)
    processes = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--child", "--churn-mb", str(args.churn_mb), "--rounds", str(args.rounds)]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        phases = json.loads(run.stdout.strip().splitlines()[-1])
        processes.append({phase: {"conv_ms": statistics.median(s["conv"]),
                                  "octconv_ms": statistics.median(s["octconv"]),
                                  "ratio": statistics.median(o / c for o, c in zip(s["octconv"], s["conv"]))}
                          for phase, s in phases.items()})
        print("  ".join(f"{phase}: {p['conv_ms']:.1f} / {p['octconv_ms']:.1f} ms ({p['ratio']:.3f}x)"
                        for phase, p in processes[-1].items()), flush=True)
    for phase in PHASES:
        ratios = [p[phase]["ratio"] for p in processes]
        print(f"{phase:<12} Oct-ResNet-50 / ResNet-50 at batch 1: median {statistics.median(ratios):.3f}x "
              f"({min(ratios):.3f}x-{max(ratios):.3f}x over {len(ratios)} processes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"churn_mb": args.churn_mb, "rounds": args.rounds, "hash_seed": args.hash_seed,
                       "processes": processes}, f, indent=2)


if __name__ == "__main__":
    main()

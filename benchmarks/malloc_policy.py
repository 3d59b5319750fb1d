"""CPU latency with glibc's default malloc vs `bench.measure.retain_freed_memory`, A/B in alternating processes.

The policy is process-wide and glibc's default cannot be restored once changed, so each measurement
runs in a fresh child process; the arms alternate, and medians over repeats are reported.

Usage: python benchmarks/malloc_policy.py [--ops conv,octconv] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

ARMS = ("default", "retained")


def child(arm: str, ops: list[str], batches: list[int]) -> dict[str, float]:
    """Median forward latency (ms) per ``op@batch`` of ResNet-50 in this process, under ``arm``'s policy.

    Times with its own loop: `bench.measure.measure_latency` would switch the retaining policy on.
    """
    import timm
    import torch

    import backbones
    from bench.measure import retain_freed_memory

    if arm == "retained":
        retain_freed_memory()
    models = {op: timm.create_model(backbones.model_name("resnet50"), op=op).eval()
              .to(memory_format=torch.channels_last) for op in ops}
    out = {}
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
            for op, model in models.items():
                times = []
                for i in range(12 if batch == 1 else 4):
                    start = time.perf_counter()
                    model(x)
                    if i >= 2:  # warm-up
                        times.append((time.perf_counter() - start) * 1e3)
                out[f"{op}@{batch}"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default="conv,octconv")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ops = args.ops.split(",")
    if args.child:
        print(json.dumps(child(args.child, ops, args.batch)))
        return
    samples: dict[str, dict[str, list[float]]] = {arm: {} for arm in ARMS}
    for r in range(args.repeats):
        for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
            cmd = [sys.executable, __file__, "--child", arm, "--ops", args.ops, "--batch", *map(str, args.batch)]
            run = subprocess.run(cmd, capture_output=True, text=True, check=True)
            for key, ms in json.loads(run.stdout.strip().splitlines()[-1]).items():
                samples[arm].setdefault(key, []).append(ms)
    result = {arm: {key: statistics.median(v) for key, v in by_key.items()} for arm, by_key in samples.items()}
    for key, default_ms in result["default"].items():
        kept = result["retained"][key]
        print(f"{key:<14} default {default_ms:8.1f} ms   retained {kept:8.1f} ms   {kept / default_ms:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"repeats": args.repeats, "median_ms": result}, f, indent=2)


if __name__ == "__main__":
    main()

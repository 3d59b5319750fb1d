"""How a background process on the same CPU moves one network's batch-1 latency ratio to another.

A shared machine's load comes and goes; this makes some on purpose. A child process spins for
``--busy-ms`` out of every ``--period-ms`` (a neighbour that wakes up often, briefly), and the ratio of
``--op`` to ``--baseline`` inside one backbone is measured with and without it, alternating, each time
with `bench.measure.compare_latency` (both networks timed back to back, round after round).

Usage: python benchmarks/background_load.py [--backbone resnet50] [--op octconv] [--baseline conv]
                                            [--busy-ms 2] [--period-ms 10] [--repeats 3] [--rounds 7]
                                            [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time

import timm
import torch
from timm.data import resolve_data_config

import backbones
from bench.results import hardware
from bench.measure import compare_latency


def spin(busy_s: float, period_s: float) -> None:
    """Busy-loop ``busy_s`` seconds out of every ``period_s``, forever (run in a child process)."""
    while True:
        until = time.perf_counter() + busy_s
        while time.perf_counter() < until:
            pass
        time.sleep(period_s - busy_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--op", default="octconv")
    parser.add_argument("--baseline", default="conv")
    parser.add_argument("--busy-ms", type=float, default=2.0)
    parser.add_argument("--period-ms", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--compile", action="store_true", help="compare the torch.compile'd networks")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not 0 < args.busy_ms < args.period_ms:
        parser.error("--busy-ms must be positive and shorter than --period-ms")
    if args.repeats < 1 or args.rounds < 1:
        parser.error("--repeats and --rounds must be positive")
    name = backbones.model_name(args.backbone)
    model, reference = (timm.create_model(name, op=op) for op in (args.op, args.baseline))
    size = resolve_data_config({}, model=model)["input_size"][-1]
    ratios: dict[str, list[float]] = {"quiet": [], "loaded": []}
    for r in range(args.repeats):
        for condition in ("quiet", "loaded") if r % 2 == 0 else ("loaded", "quiet"):
            loader = None
            if condition == "loaded":
                loader = multiprocessing.Process(target=spin, args=(args.busy_ms / 1e3, args.period_ms / 1e3),
                                                 daemon=True)
                loader.start()
            try:
                ratio = compare_latency(model, reference, size, 1, device=torch.device("cpu"), rounds=args.rounds,
                                        iters=30, compile=args.compile)["batch_1"]
            finally:
                if loader is not None:
                    loader.terminate()
                    loader.join()
            ratios[condition].append(ratio)
            print(f"repeat {r + 1} {condition:<6} {args.op} / {args.baseline} at batch 1: {ratio:.3f}x", flush=True)
    summary = {c: statistics.median(v) for c, v in ratios.items()}
    print(f"median: quiet {summary['quiet']:.3f}x, with {args.busy_ms:g} ms busy of every {args.period_ms:g} ms "
          f"{summary['loaded']:.3f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backbone": args.backbone, "op": args.op, "baseline": args.baseline, "size": size,
                       "busy_ms": args.busy_ms, "period_ms": args.period_ms, "rounds": args.rounds,
                       "compiled": args.compile, "hardware": hardware("cpu"), "ratios": ratios,
                       "median": summary}, f, indent=2)


if __name__ == "__main__":
    main()

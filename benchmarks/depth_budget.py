"""How far do the depth task's learned upsamplers get with more training, against bilinear and JBU?

Trains PAC's joint upsampling network (tasks/depth/models.py) with one upsampler on the shapes depth view
at the `quick` recipe's settings (32-px crops, batch 16, Adam at 3e-3 with a one-cycle schedule sized to
the longest budget), and prints the validation RMSE (cm, PAC's per-image metric) at each budget in
``--steps``, beside the two non-learned rows (bilinear and joint bilateral upsampling) on the same split.
The leaderboard's `quick` rows train 625 steps; this says whether their gap to JBU is the budget.

    .venv/bin/python benchmarks/depth_budget.py --upsampler ddf_up --steps 625 1250 2500 --json FILE
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import operators  # noqa: F401  registers the operators
from tasks.depth.data import JointUpsamplingSamples, shapes_splits
from tasks.depth.models import Interpolate, JointUpsampler
from tasks.depth.task import centre_crop, per_image_errors, restore

SHAPES = {"name": "shapes", "source": "shapes", "generator_seed": 0, "image_size": 64, "train_size": 2000,
          "val_size": 200, "test_size": 500, "eval_border": 2}


def rmse_cm(net: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    net.eval()
    with torch.no_grad():
        pred = restore(centre_crop(net(batch["low"], batch["guide"]), batch["target"]), batch["range"])
    net.train()
    return 100 * float(per_image_errors(pred, batch["target"])["rmse"].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upsampler", default="ddf_up")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="+", default=[625, 1250, 2500])
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    data = OmegaConf.create(SHAPES)
    splits = shapes_splits(data)
    val = next(iter(DataLoader(JointUpsamplingSamples(splits["validation"], data, args.scale, None, False),
                               batch_size=len(splits["validation"]))))
    result = {"upsampler": args.upsampler, "scale": args.scale, "crop": args.crop, "batch": args.batch,
              "lr": args.lr, "seed": args.seed, "threads": torch.get_num_threads(),
              "non_learned_val_rmse_cm": {up: rmse_cm(Interpolate(args.scale, up), val) for up in ("bilinear", "jbu")},
              "val_rmse_cm": {}, "wall_s": {}}
    print(f"non-learned: {result['non_learned_val_rmse_cm']}", flush=True)
    torch.manual_seed(args.seed)
    net = JointUpsampler(args.scale, args.upsampler)
    total = max(args.steps)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.05)
    train = DataLoader(JointUpsamplingSamples(splits["train"], data, args.scale, args.crop, True),
                       batch_size=args.batch, shuffle=True, drop_last=True)
    step, start = 0, time.perf_counter()
    while step < total:
        for batch in train:
            out = centre_crop(net(batch["low"], batch["guide"]), batch["target"])
            lo, hi = batch["range"][:, :1, None, None], batch["range"][:, 1:, None, None]
            loss = F.mse_loss(out, (batch["target"] - lo) / (hi - lo))
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            step += 1
            if step in args.steps:
                result["val_rmse_cm"][step] = rmse_cm(net, val)
                result["wall_s"][step] = round(time.perf_counter() - start, 1)
                print(f"{args.upsampler} x{args.scale} step {step}: val RMSE {result['val_rmse_cm'][step]:.1f} cm "
                      f"({result['wall_s'][step]} s)", flush=True)
            if step >= total:
                break
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()

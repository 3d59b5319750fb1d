"""What DDF's effective filters do with a region's mean, per DDF layer of DDF-ResNet-29, at init or trained.

DDF's filter normalisation makes every spatial filter zero-mean over its k*k taps. With ``mul``, the filter
applied at pixel p to channel c is w = spatial[p] * channel[c], so a layer passes the local mean of a channel
only through the part of w that sums to non-zero, and passes it steadily only if that sum keeps its sign from
pixel to pixel. For every DDF layer on one batch of shapes test images this prints, averaged over samples,
channels and pixels:

- ``dc_share``: (sum_k w)^2 / (k^2 sum_k w^2), the share of the filter's energy in its mean; 1/k^2 (0.11 for
  3x3) for a random static filter, 1 for a box filter, exactly 0 for spatial-only DDF;
- ``dc_sign_consistency``: |mean_p sum_k w| / mean_p |sum_k w| per sample and channel; 1 for any static
  filter (dwconv, conv), near 0 when the mean's gain flips sign from pixel to pixel.

    .venv/bin/python benchmarks/ddf_filter_stats.py --variant both --variant both@RUN/checkpoints/last.ckpt \\
        --variant branches=channel@RUN2/checkpoints/last.ckpt --json benchmarks/results/ddf_filter_stats.json

A variant is ``both`` or one ``op_kwargs`` setting (``branches=spatial``, ``filter_norm=sigmoid``), then
``@CHECKPOINT`` for a trained run (a `bench run` checkpoint), or nothing for the network at initialisation.
"""

from __future__ import annotations

import argparse
import json

import timm
import torch
import yaml
from torch import Tensor

import backbones  # noqa: F401  registers the models
from bench.config import compose
from operators.ddf import DDF
from tasks.classification.data import ClassificationData


@torch.no_grad()
def filter_stats(module: DDF, x: Tensor) -> dict[str, float]:
    """``dc_share`` and ``dc_sign_consistency`` of the layer's effective filters on input ``x`` (head 1)."""
    channel, spatial = module.filters(x)
    n, c = channel.shape[:2]
    ch, sp = channel.reshape(n, c, -1, 1), spatial.reshape(n, 1, spatial.shape[1], -1)  # (n, c, K, 1), (n, 1, K, P)
    w = ch * sp if module.kernel_combine == "mul" else ch + sp  # (n, c, K, P)
    taps = w.shape[2]
    dc, energy = w.sum(2), w.square().sum(2)  # (n, c, P)
    share = dc.square() / (taps * energy).clamp_min(1e-30)
    consistency = dc.mean(-1).abs() / dc.abs().mean(-1).clamp_min(1e-30)
    return {"dc_share": float(share.mean()), "dc_sign_consistency": float(consistency.mean())}


def variant_stats(variant: str, batch: Tensor) -> dict[str, object]:
    """Per-layer statistics of one variant (``both`` or ``key=value``, optionally ``@checkpoint``)."""
    setting, _, checkpoint = variant.partition("@")
    key, _, value = setting.partition("=")
    kwargs = {} if setting == "both" else {key: yaml.safe_load(value)}  # spatial_mean=true is a bool
    model = timm.create_model("op_resnet29", op="ddf", op_kwargs=kwargs, num_classes=10)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    model.eval()
    layers, inputs = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, DDF):
            module.register_forward_hook(lambda m, args, out, name=name: inputs.__setitem__(name, args[0]))
    with torch.no_grad():
        model(batch)
        for name, module in model.named_modules():
            if isinstance(module, DDF):
                layers[name] = filter_stats(module, inputs[name])
    return {"op_kwargs": kwargs, "checkpoint": checkpoint or None, "layers": layers,
            "mean": {key: sum(v[key] for v in layers.values()) / len(layers) for key in next(iter(layers.values()))}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="both[@CKPT] or key=value[@CKPT]")
    parser.add_argument("--images", type=int, default=32, help="test images in the batch")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    cfg = compose("run", ["task=classification", "recipe=standard", "op=ddf"])
    batch = next(iter(ClassificationData(cfg, args.images).test_dataloader()))["image"][: args.images]
    results = {variant: variant_stats(variant, batch) for variant in args.variant}
    for variant, found in results.items():
        mean = found["mean"]
        print(f"{variant}: dc_share {mean['dc_share']:.3f}, dc_sign_consistency {mean['dc_sign_consistency']:.3f}")
        for name, layer in found["layers"].items():
            print(f"  {name}: {layer['dc_share']:.3f} {layer['dc_sign_consistency']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": args.images, "results": results}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

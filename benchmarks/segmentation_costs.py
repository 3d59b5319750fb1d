"""What do our BiSeNetV1 and DFANet cost against their references, and where does DFANet differ from its paper?

Counts parameters and multiply-accumulates (batch 1, eval mode, auxiliary heads excluded from MACs)
of ``tasks/segmentation/models.py``'s networks with ``op=conv`` and their stock upsamplers, per part:

* BiSeNetV1 on ResNet-18, 19 classes, 1024 x 2048 (Cityscapes' full image) and 1024 x 1024 (the crop),
  against CoinCheung/BiSeNet's ``lib/models/bisenetv1.py`` (its count, derived from its layer list in
  tests/test_segmentation.py, is 14,092,800 parameters with the pixel-shuffle heads);
* DFANet A, 19 classes, 1024 x 1024, against the paper's 7.8M parameters and 3.4 GFLOPs (Table 4).

Two MAC counters: ``bench.measure.count_macs`` (registered operators' formulas plus torch's counter for
the rest) and ``bench.measure.counter_macs`` (torch's FlopCounterMode: convolutions and linear layers,
the papers' convention). ``--json FILE`` writes every figure to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backbones  # noqa: E402,F401  registers the backbones
from bench.measure import count_macs, counter_macs  # noqa: E402
from tasks.segmentation.models import BiSeNetV1, DFANet  # noqa: E402

CLASSES = 19


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parts(net: nn.Module) -> dict[str, int]:
    """Parameters per top-level child."""
    return {name: params(child) for name, child in net.named_children()}


def macs(net: nn.Module, h: int, w: int) -> dict[str, int]:
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        return {"count_macs": count_macs(net.eval(), x), "counter_macs": counter_macs(net.eval(), x)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    bisenet, dfanet = BiSeNetV1(CLASSES), DFANet(CLASSES)
    aux = params(bisenet.aux8) + params(bisenet.aux16)
    out = {
        "bisenetv1_resnet18": {"params": params(bisenet), "params_without_aux": params(bisenet) - aux,
                               "parts": parts(bisenet), "macs_1024x2048": macs(bisenet, 1024, 2048),
                               "macs_1024x1024": macs(bisenet, 1024, 1024)},
        "dfanet_a": {"params": params(dfanet), "parts": parts(dfanet),
                     "backbone_params": [params(b) for b in dfanet.backbones],
                     "fc_attention_params": [params(b.final) for b in dfanet.backbones],
                     "macs_1024x1024": macs(dfanet, 1024, 1024)},
    }
    for name, figures in out.items():
        print(f"{name}: {figures['params']:,} parameters; parts {figures['parts']}")
        for size in ("1024x2048", "1024x1024"):
            if f"macs_{size}" in figures:
                m = figures[f"macs_{size}"]
                print(f"  {size}: {m['count_macs'] / 1e9:.2f} GMACs (count_macs), {m['counter_macs'] / 1e9:.2f} "
                      "(FlopCounterMode: convs and linears)")
    print(f"dfanet backbones {out['dfanet_a']['backbone_params']}, fc attention {out['dfanet_a']['fc_attention_params']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

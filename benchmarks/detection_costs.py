"""What do our ThunderNet and Light-Head R-CNN cost, part by part?

Parameters per part and multiply-accumulates (batch 1, eval mode, ``op=conv``, 80 COCO classes) of the
detectors as ``task=detection`` builds them with their COCO recipes:

* ThunderNet on SNet146 at 320 x 320 (``recipe=thundernet_coco``), and SNet146 alone at 224 x 224, the size of
  the paper's 146 MFLOPs (REFERENCE.md);
* Light-Head R-CNN, the paper's large setting (``recipe=light_head_coco``: ResNet-101, C_mid 256) at
  800 x 1344 (1333 padded to a multiple of 32): the large separable conv on C5 and the R-CNN subnet.

Backbone and neck MACs come from ``bench.measure.count_macs`` on the feature maps. The RPN head and the
R-CNN subnet are counted from their weights (stride-1 convs and fully connected layers: MACs per position
are the weights), per position of the RPN map and per RoI, with the RoI count of the test config.
``--json FILE`` writes every figure to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backbones  # noqa: E402,F401  registers the backbones
from bench.config import compose  # noqa: E402
from bench.measure import count_macs  # noqa: E402
from tasks.detection.task import build_detector, detector_config, with_detector_recipe  # noqa: E402

CLASSES = 80


def params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def weight_macs(module: nn.Module) -> int:
    """MACs at one position of a stack of stride-1 convs and linear layers: their weights (biases excluded)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def detector(name: str, recipe: str, backbone: str) -> tuple[nn.Module, dict]:
    cfg = with_detector_recipe(compose("run", ["task=detection", f"detector={name}", f"recipe={recipe}"]))
    model_cfg = detector_config(cfg, backbone, "nearest" if name == "thundernet" else None, CLASSES)
    return build_detector(model_cfg).eval(), model_cfg


def costs(name: str, recipe: str, backbone: str, h: int, w: int) -> dict:
    """Params and MACs per part; the RPN head at every position of its map, the R-CNN subnet per test RoI."""
    net, model_cfg = detector(name, recipe, backbone)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        feats = net.backbone(x)
        backbone_macs = count_macs(net.backbone, x)
        neck_macs = count_macs(net.neck, feats)
        rpn_map = net.neck(feats)[-1]
    positions = rpn_map.shape[-2] * rpn_map.shape[-1]
    rois = int(model_cfg["test_cfg"]["rpn"]["max_per_img"])
    per_roi = weight_macs(net.roi_head.bbox_head)
    return {
        "input": [h, w], "params": {"total": params(net), "backbone": params(net.backbone), "neck": params(net.neck),
                                    "rpn_head": params(net.rpn_head), "roi_head": params(net.roi_head)},
        "macs": {"backbone": backbone_macs, "neck": neck_macs,
                 "rpn_head": positions * weight_macs(net.rpn_head),
                 "rcnn_per_roi": per_roi, "test_rois": rois, "rcnn_at_test_rois": per_roi * rois},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    out = {
        "snet146_224": {"macs": count_macs(timm.create_model("snet146").eval(), torch.randn(1, 3, 224, 224))},
        "thundernet_snet146_320": costs("thundernet", "thundernet_coco", "snet146", 320, 320),
        "light_head_rcnn_resnet101_800x1333": costs("light_head_rcnn", "light_head_coco", "resnet101", 800, 1344),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

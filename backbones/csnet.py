"""CSNet (SOD100K, Gao et al., ECCV 2020): a ~100K-parameter salient-object network built from gOctConvs.

Feature extractor: a plain 3x3 stem (stride 2), then stages of 3, 4, 6 and 4 ILBlocks. An ILBlock is
one octave 1x1 gOctConv (cross-scale paths on) and two depthwise 3x3 gOctConvs (no cross-scale paths),
each followed by per-scale BatchNorm and PReLU, with a residual where shapes allow. Each stage holds two
scales (high at the stage's stride, low at half of it); stages 2-4 halve the resolution.

Cross-stage fusion: each of the last three stages is merged to one scale by a 1x1 gOctConv; the three
results are the three scales (1/4, 1/8, 1/16) of one more 1x1 gOctConv, whose output goes through
parallel dilated depthwise convs (dilations 1, 2, 4), summed, and a 1x1 conv to the saliency logit,
upsampled to the input size.

Widths are per block and per scale (``block_widths``), so a configuration pruned by dynamic weight
decay (operators/dynamic_weight_decay.py) can be rebuilt from its channel counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from backbones.resnet import merge_octave
from operators.octconv import GOctConvBNAct
from operators.registry import OperatorError

DEPTHS = (3, 4, 6, 4)
WIDTHS = ((12, 12), (24, 24), (36, 36), (48, 48))
"""Channels (high, low) per stage of the default CSNet (about 100K parameters)."""

Scales = tuple[int, ...]


def _ratios(scales: Sequence[int]) -> list[float]:
    total = sum(scales)
    return [c / total for c in scales]


class ILBlock(nn.Module):
    """One octave 1x1 gOctConv and two depthwise 3x3 gOctConvs, each with per-scale BN + PReLU."""

    def __init__(self, in_scales: Scales, out_scales: Scales, stride: int = 1) -> None:
        super().__init__()
        cin, cout = sum(in_scales), sum(out_scales)
        self.octave = GOctConvBNAct(cin, cout, 1, stride, _ratios(in_scales), _ratios(out_scales))
        self.depthwise = nn.Sequential(*(GOctConvBNAct(cout, cout, 3, 1, _ratios(out_scales), _ratios(out_scales),
                                                       cross_scale=False, depthwise=True) for _ in range(2)))
        self.residual = tuple(in_scales) == tuple(out_scales) and stride == 1

    def forward(self, x: Tensor | tuple) -> Tensor | tuple:
        y = self.depthwise(self.octave(x))
        if not self.residual:
            return y
        return tuple(a + b for a, b in zip(y, x))


class CSNet(nn.Module):
    """CSNet: gOctConv feature extractor plus cross-stage fusion; forward returns saliency logits (N, 1, H, W)."""

    def __init__(self, stem: int = 16, widths: Sequence[Scales] = WIDTHS, depths: Sequence[int] = DEPTHS,
                 block_widths: Sequence[Sequence[Scales]] | None = None, fuse: int = 32,
                 dilations: Sequence[int] = (1, 2, 4), in_chans: int = 3, op: str = "conv", **unused: Any) -> None:
        super().__init__()
        if op not in ("conv", "goctconv"):
            raise OperatorError(f"csnet is built from gOctConvs and has no slot for operator {op!r}; use op=conv "
                                "(the unmodified network) or put the operator into another backbone")
        plan = block_widths or [[tuple(w)] * d for w, d in zip(widths, depths)]
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.PReLU(stem))
        self.stages = nn.ModuleList()
        self.feature_info = []
        scales: Scales = (stem,)
        reduction = 2
        for s, blocks in enumerate(plan):
            stage = []
            for b, out in enumerate(blocks):
                stride = 2 if s > 0 and b == 0 else 1
                stage.append(ILBlock(scales, tuple(out), stride))
                scales = tuple(out)
            reduction *= 2 if s > 0 else 1
            self.stages.append(nn.Sequential(*stage))
            self.feature_info.append(dict(num_chs=sum(scales), reduction=reduction, module=f"stages.{s}"))
        self.merge = nn.ModuleList(
            GOctConvBNAct(sum(blocks[-1]), fuse, 1, 1, _ratios(blocks[-1]), [1.0]) for blocks in plan[-3:])
        self.fuse = GOctConvBNAct(3 * fuse, fuse, 1, 1, [1 / 3, 1 / 3, 1 / 3], [1.0])
        self.dilated = nn.ModuleList(
            nn.Sequential(nn.Conv2d(fuse, fuse, 3, padding=d, dilation=d, groups=fuse, bias=False),
                          nn.BatchNorm2d(fuse), nn.PReLU(fuse)) for d in dilations)
        self.head = nn.Conv2d(fuse, 1, 1)
        self.num_features = fuse

    def forward_stages(self, x: Tensor) -> list[Tensor | tuple]:
        """Outputs of every stage (per-scale tuples)."""
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs, each merged into one full-width tensor (timm's feature API)."""
        take, _ = feature_take_indices(len(self.stages), indices)
        stages = self.forward_stages(x)
        feats = [merge_octave(out) for i, out in enumerate(stages) if i in take]
        return feats if intermediates_only else (self.forward(x), feats)

    def forward(self, x: Tensor) -> Tensor:
        stages = self.forward_stages(x)
        merged = [m(out) for m, out in zip(self.merge, stages[-3:])]
        fused = self.fuse(tuple(merged))
        y = sum(branch(fused) for branch in self.dilated)
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


default_cfgs = generate_default_cfgs({"csnet": dict(
    url="", num_classes=1, input_size=(3, 224, 224), crop_pct=1.0, interpolation="bilinear",
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stem.0", classifier="head")})


@register_model
def csnet(pretrained: bool = False, **kwargs: Any) -> CSNet:
    """CSNet for salient-object detection (about 100K parameters); returns saliency logits at input size."""
    if pretrained:
        raise ValueError("csnet: no pretrained weights ship with bench (offline suite)")
    kwargs.pop("num_classes", None)
    kwargs.pop("op_kwargs", None)
    return build_model_with_cfg(CSNet, "csnet", pretrained,
                                feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **kwargs)

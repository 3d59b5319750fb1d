"""mmdet parts of the light-head two-stage detectors, ThunderNet (Qin et al., ICCV 2019) and Light-Head R-CNN
(Li et al., 2017), registered in mmdet's ``MODELS``.

Both detectors are mmdet's own ``TwoStageDetector`` (its RPN and RoI machinery, assigners, samplers, box
coders and losses) with three parts of ours: a neck returning two maps, the thin R-CNN feature map first
and the RPN's input last; ``LastLevelRPNHead``, mmdet's RPN head on that last map; and
``PSRoIAlignExtractor``, position-sensitive RoI align (torchvision's CPU and CUDA kernels) of the first map,
which mmdet's ``StandardRoIHead`` hands its extractor (``x[:1]``).

- ``ThunderNetNeck``: the Context Enhancement Module (CEM) on C4 and C5; the compressed RPN's shared conv
  (5x5 depthwise + 1x1), which sits in the neck because the Spatial Attention Module (SAM) re-weights the
  CEM features with its output before the R-CNN stage; SAM. It returns (SAM output, RPN features), so the
  R-CNN loss also trains the RPN features through SAM, as in the paper.
- ``LightHeadNeck``: the large separable convolution on C5 (the thin map), and C4 for the RPN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from mmdet.models.dense_heads import RPNHead
from mmdet.models.roi_heads.roi_extractors import BaseRoIExtractor
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn
from torchvision.ops import PSRoIAlign

from backbones.operator_slot import UpsampleSlots
from tasks.detection.models import fit_to

RPN_INIT_STD = 0.01
"""N(0, 0.01): the init of mmdet's RPN convs, of the ThunderNet reproduction's RPN and SAM, and of Light-Head
R-CNN's large separable conv (its official code)."""


def c4_c5(values: Sequence[Any], what: str, network: str) -> tuple[Any, Any]:
    """The (C4, C5) pair of ``values``; anything but two entries is refused, saying what the network takes."""
    if len(values) != 2:
        raise ValueError(f"{network} takes two backbone levels (C4 at stride 16, C5 at stride 32); got {len(values)} "
                         f"{what}")
    return values[0], values[1]


class ContextEnhancement(nn.Module):
    """ThunderNet's CEM: C4, 2x-upsampled C5 and the broadcast global average of C5, each 1x1 to ``out_channels``,
    summed; the C5 path's 2x upsampling is an upsample slot (``nearest``, the reproduction's, by default)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, upsampler: str = "nearest",
                 upsampler_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        c4, c5 = c4_c5(in_channels, "in_channels", "ThunderNet's CEM")
        self.lateral4 = nn.Conv2d(c4, out_channels, 1)
        self.lateral5 = nn.Conv2d(c5, out_channels, 1)
        self.global5 = nn.Conv2d(c5, out_channels, 1)
        slots = UpsampleSlots(upsampler, dict(upsampler_kwargs or {}), network="ThunderNet CEM")
        self.upsample = slots("c5", out_channels)
        self.upsample_metadata = slots.metadata()

    def forward(self, c4: Tensor, c5: Tensor) -> Tensor:
        up = fit_to(self.upsample(self.lateral5(c5)), c4)
        return self.lateral4(c4) + up + self.global5(c5.mean((2, 3), keepdim=True))


def compressed_rpn_conv(channels: int, rpn_channels: int) -> nn.Sequential:
    """ThunderNet's RPN conv: 5x5 depthwise, then 1x1 to ``rpn_channels`` (each BN + ReLU, as the reproduction), in
    place of the usual 3x3 256-channel conv."""
    return nn.Sequential(nn.Conv2d(channels, channels, 5, padding=2, groups=channels, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                         nn.Conv2d(channels, rpn_channels, 1, bias=False), nn.BatchNorm2d(rpn_channels),
                         nn.ReLU(inplace=True))


class SpatialAttention(nn.Module):
    """ThunderNet's SAM: the CEM features times sigmoid(BN(1x1 conv(RPN features))), so that the R-CNN stage sees the
    regions the RPN finds, and its loss also trains the RPN features."""

    def __init__(self, rpn_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(rpn_channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, features: Tensor, rpn_features: Tensor) -> Tensor:
        return features * torch.sigmoid(self.norm(self.conv(rpn_features)))


@MODELS.register_module()
class ThunderNetNeck(BaseModule):
    """CEM, the compressed RPN's shared conv and SAM: (SAM output for PS RoI align, RPN features for the RPN head)."""

    def __init__(self, in_channels: Sequence[int], cem_channels: int = 245, rpn_channels: int = 256,
                 upsampler: str = "nearest", upsampler_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.cem = ContextEnhancement(in_channels, cem_channels, upsampler, upsampler_kwargs)
        self.rpn_conv = compressed_rpn_conv(cem_channels, rpn_channels)
        self.sam = SpatialAttention(rpn_channels, cem_channels)
        self.upsample_metadata = self.cem.upsample_metadata

    def init_weights(self) -> None:
        """The reproduction's init: Xavier uniform for the CEM's 1x1 convs, N(0, 0.01) for the RPN conv's and SAM's
        (its RPN head's); BatchNorm at 1/0 and the upsampler at its paper's init."""
        for conv in (self.cem.lateral4, self.cem.lateral5, self.cem.global5):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        for module in (*self.rpn_conv, self.sam.conv):
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=RPN_INIT_STD)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        c4, c5 = c4_c5(inputs, "feature maps", "ThunderNetNeck")
        cem = self.cem(c4, c5)
        rpn = self.rpn_conv(cem)
        return self.sam(cem, rpn), rpn


class LargeSeparableConv(nn.Module):
    """Light-Head R-CNN's large separable convolution: (k x 1 then 1 x k) + (1 x k then k x 1), each pair
    ``in_channels`` -> ``mid_channels`` -> ``out_channels``; a k x k receptive field at 2k weights per channel pair."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int = 15) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"LargeSeparableConv: kernel_size must be odd (the map keeps its size), got {kernel_size}")
        k, p = kernel_size, kernel_size // 2
        self.column = nn.Sequential(nn.Conv2d(in_channels, mid_channels, (k, 1), padding=(p, 0)),
                                    nn.Conv2d(mid_channels, out_channels, (1, k), padding=(0, p)))
        self.row = nn.Sequential(nn.Conv2d(in_channels, mid_channels, (1, k), padding=(0, p)),
                                 nn.Conv2d(mid_channels, out_channels, (k, 1), padding=(p, 0)))

    def forward(self, x: Tensor) -> Tensor:
        return self.column(x) + self.row(x)


@MODELS.register_module()
class LightHeadNeck(BaseModule):
    """Light-Head R-CNN's neck: the thin map ReLU(large separable conv(C5)) for PS RoI align, and C4 for the RPN."""

    def __init__(self, in_channels: Sequence[int], mid_channels: int = 256, out_channels: int = 490,
                 kernel_size: int = 15) -> None:
        super().__init__()
        _, c5 = c4_c5(in_channels, "in_channels", "LightHeadNeck")
        self.separable = LargeSeparableConv(c5, mid_channels, out_channels, kernel_size)

    def init_weights(self) -> None:
        """The official code's init: N(0, 0.01) weights, zero biases."""
        for conv in self.separable.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.normal_(conv.weight, std=RPN_INIT_STD)
                nn.init.zeros_(conv.bias)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        c4, c5 = c4_c5(inputs, "feature maps", "LightHeadNeck")
        return F.relu(self.separable(c5)), c4


@MODELS.register_module()
class LastLevelRPNHead(RPNHead):
    """mmdet's RPNHead on the neck's last map only (the light-head necks return (R-CNN map, RPN map));
    ``num_convs=0`` gives it no conv of its own, where the neck computed the RPN features (ThunderNet)."""

    def _init_layers(self) -> None:
        if self.num_convs:
            super()._init_layers()
            return
        if self.feat_channels != self.in_channels:
            raise ValueError(f"LastLevelRPNHead with num_convs=0 has no conv to change channels: feat_channels "
                             f"({self.feat_channels}) must equal in_channels ({self.in_channels})")
        self.rpn_conv = nn.Identity()
        self.rpn_cls = nn.Conv2d(self.in_channels, self.num_base_priors * self.cls_out_channels, 1)
        self.rpn_reg = nn.Conv2d(self.in_channels, self.num_base_priors * self.bbox_coder.encode_size, 1)

    def forward(self, x: tuple[Tensor, ...]) -> tuple[list[Tensor], list[Tensor]]:
        return super().forward(tuple(x[-1:]))


@MODELS.register_module()
class PSRoIAlignExtractor(BaseRoIExtractor):
    """Position-sensitive RoI align of one map (torchvision's ``PSRoIAlign``, ``roi_layer=dict(type="PSRoIAlign",
    output_size=k, sampling_ratio=s)``): ``out_channels`` x k x k channels pool to ``out_channels`` k x k maps, bin
    (i, j) of map c from channel (c * k + i) * k + j, as R-FCN, Light-Head R-CNN and ThunderNet pool."""

    def build_roi_layers(self, layer_cfg: Mapping[str, Any], featmap_strides: Sequence[int]) -> nn.ModuleList:
        cfg = dict(layer_cfg)
        if cfg.pop("type", None) != "PSRoIAlign" or len(featmap_strides) != 1:
            raise ValueError(f"PSRoIAlignExtractor pools one map with roi_layer type 'PSRoIAlign'; got roi_layer "
                             f"{dict(layer_cfg)} on {len(featmap_strides)} maps (featmap_strides={featmap_strides})")
        return nn.ModuleList(PSRoIAlign(spatial_scale=1.0 / stride, **cfg) for stride in featmap_strides)

    def forward(self, feats: Sequence[Tensor], rois: Tensor, roi_scale_factor: float | None = None) -> Tensor:
        layer = self.roi_layers[0]
        size = layer.output_size if isinstance(layer.output_size, int) else layer.output_size[0]
        feat = feats[0]
        if feat.shape[1] != self.out_channels * size * size:
            raise ValueError(f"PSRoIAlignExtractor: {self.out_channels} maps of {size}x{size} pool from "
                             f"{self.out_channels * size * size} channels, and the feature map has {feat.shape[1]}")
        if roi_scale_factor is not None:
            rois = self.roi_rescale(rois, roi_scale_factor)
        return layer(feat, rois.type_as(feat))

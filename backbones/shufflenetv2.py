"""Operator-swappable ShuffleNetV2 (Ma et al., ECCV 2018) and ThunderNet's SNet (Qin et al., ICCV 2019).

The operator replaces every depthwise spatial conv of the shuffle units (3x3 in ShuffleNetV2, 5x5 in
SNet); ``op="conv"`` keeps them depthwise, i.e. the unmodified networks.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from backbones.operator_slot import SlotFiller, operator_module_ids
from backbones.staged import StagedNet
from operators.conv import Pointwise

WIDTHS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024), 1.5: (24, 176, 352, 704, 1024),
          2.0: (24, 244, 488, 976, 2048)}
"""ShuffleNetV2 channels per stage: stem, stages 2-4, conv5 (the paper's Table 5)."""
SNET_WIDTHS = {49: (24, 60, 120, 240, 512), 146: (24, 132, 264, 528, None), 535: (48, 248, 496, 992, None)}
"""SNet channels (ThunderNet, Table 1); SNet146/535 have no conv5."""


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def pw_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(Pointwise(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShuffleUnit(nn.Module):
    """Stride 1: split, transform one half, concat, shuffle. Stride 2: both branches downsample."""

    def __init__(self, fill: SlotFiller, name: str, cin: int, cout: int, stride: int, kernel_size: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                fill(f"{name}.branch1.spatial", cin, cin, kernel_size, stride, depthwise=True), nn.BatchNorm2d(cin),
                pw_bn_relu(cin, half))
        else:
            self.branch1 = nn.Identity()
        self.branch2 = nn.Sequential(
            pw_bn_relu(cin if stride > 1 else half, half),
            fill(f"{name}.branch2.spatial", half, half, kernel_size, stride, depthwise=True), nn.BatchNorm2d(half),
            pw_bn_relu(half, half))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            keep, change = x.chunk(2, dim=1)
            y = torch.cat([keep, self.branch2(change)], dim=1)
        else:
            y = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        return channel_shuffle(y)


class ShuffleNetV2(StagedNet):
    """ShuffleNetV2-style network: stem conv, max-pool, three stages of shuffle units, optional conv5."""

    def __init__(self, widths: Sequence[int | None], kernel_size: int = 3, repeats: Sequence[int] = (4, 8, 4),
                 op: str = "conv", op_kwargs: Mapping[str, Any] | None = None, num_classes: int = 1000,
                 in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0, name: str = "shufflenetv2") -> None:
        super().__init__()
        fill = SlotFiller(op, op_kwargs or {}, network=name)
        stem = widths[0]
        stages = [nn.Sequential(nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                nn.ReLU(inplace=True))]
        self.feature_info = [dict(num_chs=stem, reduction=2, module="stages.0")]
        cin, reduction = stem, 4
        for s, (cout, n) in enumerate(zip(widths[1:4], repeats)):
            units = [ShuffleUnit(fill, f"stage{s + 2}.{i}", cin if i == 0 else cout, cout, 2 if i == 0 else 1,
                                 kernel_size) for i in range(n)]
            if s == 0:
                units.insert(0, nn.MaxPool2d(3, 2, 1))
            reduction *= 2
            stages.append(nn.Sequential(*units))
            self.feature_info.append(dict(num_chs=cout, reduction=reduction, module=f"stages.{s + 1}"))
            cin = cout
        self.stages = nn.ModuleList(stages)
        last = widths[4]
        self.final = pw_bn_relu(cin, last) if last else nn.Identity()
        if last:  # conv5 is a feature level past the stages (ThunderNet's C5 on SNet49); timm's default leaves it out
            self.feature_info.append(dict(num_chs=last, reduction=reduction, module="final"))
        self.op_metadata = fill.metadata()
        self.finish(last or cin, num_classes, global_pool, drop_rate)
        inside_ops = operator_module_ids(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in inside_ops:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _cfg(size: int = 224) -> dict[str, Any]:
    return dict(url="", num_classes=1000, input_size=(3, size, size), pool_size=(size // 32, size // 32),
                crop_pct=0.875, interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                first_conv="stages.0.0", classifier="classifier")


# SNets are ThunderNet's detection backbones, run at 320x320 there.
default_cfgs = generate_default_cfgs({"op_shufflenetv2": _cfg(), "snet49": _cfg(320), "snet146": _cfg(320),
                                      "snet535": _cfg(320)})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> ShuffleNetV2:
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights ship with bench (offline suite)")
    return build_model_with_cfg(ShuffleNetV2, variant, pretrained, name=variant,
                                feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **kwargs)


@register_model
def op_shufflenetv2(pretrained: bool = False, width: float = 1.0, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNetV2 at 0.5x, 1.0x (2.28M parameters), 1.5x or 2.0x."""
    if width not in WIDTHS:
        raise ValueError(f"op_shufflenetv2: width must be one of {sorted(WIDTHS)}, got {width}")
    return _create("op_shufflenetv2", pretrained, widths=WIDTHS[width], **kwargs)


@register_model
def snet49(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ThunderNet's SNet49: ShuffleNetV2 with 5x5 depthwise convs, 60/120/240 channels and a 512-channel conv5."""
    return _create("snet49", pretrained, widths=SNET_WIDTHS[49], kernel_size=5, **kwargs)


@register_model
def snet146(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ThunderNet's SNet146 (132/264/528 channels, no conv5)."""
    return _create("snet146", pretrained, widths=SNET_WIDTHS[146], kernel_size=5, **kwargs)


@register_model
def snet535(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ThunderNet's SNet535 (248/496/992 channels, 48-channel stem, no conv5)."""
    return _create("snet535", pretrained, widths=SNET_WIDTHS[535], kernel_size=5, **kwargs)

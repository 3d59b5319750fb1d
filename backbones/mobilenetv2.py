"""Operator-swappable MobileNetV2 (Sandler et al., CVPR 2018): the operator replaces each block's depthwise 3x3."""

from collections.abc import Mapping
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import make_divisible
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from backbones.operator_slot import SlotFiller, operator_module_ids
from backbones.staged import StagedNet
from operators.conv import Pointwise

# expansion t, output channels c, repeats n, first stride s (the paper's Table 2)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1))
STAGE_ENDS = (0, 1, 2, 4, 6)
"""Settings rows closing each feature stage (strides 2, 4, 8, 16, 32)."""


def conv_bn_act(cin: int, cout: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    conv = (Pointwise(cin, cout, stride) if kernel_size == 1 else
            nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """1x1 expand -> operator slot (depthwise 3x3 in the original) -> 1x1 linear projection, residual when shapes allow."""

    def __init__(self, fill: SlotFiller, name: str, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.expand = conv_bn_act(cin, hidden, 1) if expand != 1 else nn.Identity()
        self.spatial = nn.Sequential(fill(f"{name}.spatial", hidden, hidden, 3, stride, depthwise=True),
                                     nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True))
        self.project = nn.Sequential(Pointwise(hidden, cout), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.spatial(self.expand(x)))
        return x + y if self.use_residual else y


class MobileNetV2(StagedNet):
    """MobileNetV2 with width multiplier; channels rounded to multiples of 8 as in the paper's code."""

    def __init__(self, width: float = 1.0, op: str = "conv", op_kwargs: Mapping[str, Any] | None = None,
                 num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.2) -> None:
        super().__init__()
        fill = SlotFiller(op, op_kwargs or {}, network="op_mobilenetv2")
        cin = make_divisible(32 * width, 8)
        stages, blocks = [], [conv_bn_act(in_chans, cin, 3, 2)]
        self.feature_info, reduction = [], 2
        for row, (t, c, n, s) in enumerate(SETTINGS):
            cout = make_divisible(c * width, 8)
            for i in range(n):
                blocks.append(InvertedResidual(fill, f"blocks.{row}.{i}", cin, cout, s if i == 0 else 1, t))
                cin = cout
            reduction *= s
            if row in STAGE_ENDS:
                stages.append(nn.Sequential(*blocks))
                self.feature_info.append(dict(num_chs=cout, reduction=reduction, module=f"stages.{len(stages) - 1}"))
                blocks = []
        self.stages = nn.ModuleList(stages)
        last = make_divisible(1280 * max(1.0, width), 8)
        self.final = conv_bn_act(cin, last, 1)
        self.op_metadata = fill.metadata()
        self.finish(last, num_classes, global_pool, drop_rate)
        inside_ops = operator_module_ids(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in inside_ops:
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


default_cfgs = generate_default_cfgs({"op_mobilenetv2": dict(
    url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, interpolation="bicubic",
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stages.0.0.0", classifier="classifier")})


@register_model
def op_mobilenetv2(pretrained: bool = False, width: float = 1.0, **kwargs: Any) -> MobileNetV2:
    """MobileNetV2 (``width`` multiplier, default 1.0: 3.5M parameters)."""
    if pretrained:
        raise ValueError("op_mobilenetv2: no pretrained weights ship with bench (offline suite)")
    return build_model_with_cfg(MobileNetV2, "op_mobilenetv2", pretrained, width=width,
                                feature_cfg=dict(feature_cls="getter"), **kwargs)

"""Xception-A: DFANet's backbone (Li et al., CVPR 2019), operator-swappable, with its fc attention.

conv1 (3x3, 8 channels, stride 2), then enc2/enc3/enc4 of 4/6/4 Xception blocks with separable
convs of [12, 12, 48], [24, 24, 96] and [48, 48, 192] channels (the paper's Table 1), each encoder's
first block halving the resolution. The fc attention squeezes enc4 through a 1000-way fully connected
layer and a 1x1 conv back to 192 channels, and rescales enc4 with it. The operator replaces every
depthwise 3x3 conv of the separable convs (``op="conv"`` keeps them depthwise).

DFANet re-enters cascaded copies at their encoders: ``stem=False`` leaves conv1 out (stage 0 is then
the identity) and ``encoder_in_chans`` sets what each encoder takes (its input concatenated with the
previous copy's features). ``features_only`` offers the fc-attention output as feature 4 (stride 16).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn

from backbones.operator_slot import SlotFiller, operator_module_ids
from backbones.staged import StagedNet
from operators.conv import Pointwise

ENCODERS = (((12, 12, 48), 4), ((24, 24, 96), 6), ((48, 48, 192), 4))


class SeparableConv(nn.Module):
    """Operator slot (depthwise 3x3 in the original) -> BN -> pointwise 1x1 -> BN -> ReLU."""

    def __init__(self, fill: SlotFiller, slot: str, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.spatial = fill(slot, cin, cin, 3, stride, depthwise=True)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pointwise = Pointwise(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn2(self.pointwise(self.bn1(self.spatial(x)))))


class XceptionBlock(nn.Module):
    """Three separable convs (the first strides) plus a 1x1 projection shortcut where the shape changes."""

    def __init__(self, fill: SlotFiller, slot: str, cin: int, widths: Sequence[int], stride: int) -> None:
        super().__init__()
        chans = [cin, *widths]
        self.convs = nn.Sequential(*(SeparableConv(fill, f"{slot}.sep{i}", chans[i], chans[i + 1],
                                                   stride if i == 0 else 1) for i in range(3)))
        self.shortcut = (nn.Identity() if stride == 1 and cin == chans[-1] else
                         nn.Sequential(Pointwise(cin, chans[-1], stride), nn.BatchNorm2d(chans[-1])))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x) + self.shortcut(x)


class FCAttention(nn.Module):
    """DFANet's fc attention: global pool -> FC(1000) -> 1x1 conv + ReLU -> channel weights rescaling the input."""

    def __init__(self, channels: int, hidden: int = 1000) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, hidden, bias=False)
        # no BatchNorm on this 1x1 map: it would fail at batch size 1 and add nothing per-pixel
        self.conv = nn.Sequential(nn.Conv2d(hidden, channels, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        weights = self.conv(self.fc(self.pool(x).flatten(1)).reshape(n, -1, 1, 1))
        return x * weights


class XceptionA(StagedNet):
    """Xception-A: conv1, enc2, enc3, enc4 (the features), fc attention, then the classifier."""

    def __init__(self, op: str = "conv", op_kwargs: Mapping[str, Any] | None = None, num_classes: int = 1000,
                 in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0, stem: bool = True,
                 encoder_in_chans: Sequence[int] | None = None) -> None:
        super().__init__()
        fill = SlotFiller(op, op_kwargs or {}, network="xception_a")
        stages: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_chans, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8),
                                                 nn.ReLU(inplace=True)) if stem else nn.Identity()]
        self.feature_info = [dict(num_chs=8, reduction=2, module="stages.0")]
        cin, reduction = 8, 2
        entries = list(encoder_in_chans) if encoder_in_chans is not None else [None] * len(ENCODERS)
        if len(entries) != len(ENCODERS):
            raise ValueError(f"xception_a: encoder_in_chans needs {len(ENCODERS)} values, got {entries}")
        for e, ((widths, depth), entry) in enumerate(zip(ENCODERS, entries)):
            cin = entry or cin
            blocks = [XceptionBlock(fill, f"enc{e + 2}.{b}", cin if b == 0 else widths[-1], widths, 2 if b == 0 else 1)
                      for b in range(depth)]
            stages.append(nn.Sequential(*blocks))
            cin, reduction = widths[-1], reduction * 2
            self.feature_info.append(dict(num_chs=cin, reduction=reduction, module=f"stages.{e + 1}"))
        self.stages = nn.ModuleList(stages)
        self.final = FCAttention(cin)
        self.feature_info.append(dict(num_chs=cin, reduction=reduction, module="final"))
        self.op_metadata = fill.metadata()
        self.finish(cin, num_classes, global_pool, drop_rate)
        inside_ops = operator_module_ids(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in inside_ops:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


default_cfgs = generate_default_cfgs({"xception_a": dict(
    url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(14, 14), crop_pct=0.875, interpolation="bilinear",
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="stages.0.0", classifier="classifier")})


@register_model
def xception_a(pretrained: bool = False, **kwargs: Any) -> XceptionA:
    """DFANet's Xception-A backbone with fc attention."""
    if pretrained:
        raise ValueError("xception_a: no pretrained weights ship with bench (offline suite)")
    return build_model_with_cfg(XceptionA, "xception_a", pretrained,
                                feature_cfg=dict(feature_cls="getter", out_indices=(0, 1, 2, 3)), **kwargs)

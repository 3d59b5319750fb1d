"""The segmentation networks: BiSeNetV1 (Yu et al., ECCV 2018) and DFANet (Li et al., CVPR 2019).

Both take any conv-kind operator in their backbones' slots and any upsample-kind operator in their
learned-feature upsamplings (`UpsampleSlots`); what stays fixed across operators is said per network.
A network pads its input to a multiple of its output stride (with 0, the mean after normalisation) and
crops its logits back, so any image size works. In training mode a network returns ``(logits, aux)``,
``aux`` the auxiliary heads' logits (weighted into the loss); in eval mode the logits alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.operator_slot import UpsampleSlots, operator_module_ids


class ConvBNReLU(nn.Sequential):
    """k x k conv (no bias) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SegmentationNet(nn.Module):
    """Pads the input to a multiple of ``stride`` and crops the outputs; subclasses implement ``predict``."""

    stride: int = 32
    op_metadata: dict[str, Any]

    def head_modules(self) -> list[nn.Module]:
        """The modules trained at the recipe's ``head_lr_mult`` (BiSeNet's reference: fusion and output heads)."""
        return []

    def predict(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, list[Tensor]]:
        h, w = x.shape[-2:]
        ph, pw = -h % self.stride, -w % self.stride
        logits, aux = self.predict(F.pad(x, (0, pw, 0, ph)) if ph or pw else x)
        logits, aux = logits[..., :h, :w], [a[..., :h, :w] for a in aux]
        return (logits, aux) if self.training else logits


def init_own_convs(net: nn.Module, skip: set[int]) -> None:
    """BiSeNet's reference init (kaiming normal, a=1; zero biases) for every conv outside ``skip``."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in skip:
            nn.init.kaiming_normal_(m.weight, a=1)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class AttentionRefinement(nn.Module):
    """ARM: 3x3 conv-BN-ReLU, then channel attention (global average -> 1x1 -> BN -> sigmoid) multiplying it."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout, 1, bias=False),
                                       nn.BatchNorm2d(cout), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x * self.attention(x)


class FeatureFusion(nn.Module):
    """FFM: concat -> 1x1 conv-BN-ReLU; its features plus themselves weighted by a squeeze-excite attention."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 1)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cout, cout // 4, 1, bias=False),
                                       nn.ReLU(inplace=True), nn.Conv2d(cout // 4, cout, 1, bias=False), nn.Sigmoid())

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        x = self.conv(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class ShuffleHead(nn.Module):
    """Output head: 3x3 conv-BN-ReLU, 1x1 conv to ``classes * up^2`` and pixel shuffle x``up`` to input resolution."""

    def __init__(self, cin: int, mid: int, classes: int, up: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.out = nn.Conv2d(mid, classes * up * up, 1)
        self.shuffle = nn.PixelShuffle(up)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.out(self.conv(x)))


def _levels(info: Any, reductions: Sequence[int]) -> list[int]:
    """Feature indices of the last level at each wanted reduction."""
    have = info.reduction()
    missing = [r for r in reductions if r not in have]
    if missing:
        raise ValueError(f"the backbone has no feature at stride(s) {missing} (its strides: {have})")
    return [max(i for i, r in enumerate(have) if r == want) for want in reductions]


class BiSeNetV1(SegmentationNet):
    """BiSeNetV1 as CoinCheung/BiSeNet builds it (`lib/models/bisenetv1.py`), on any of our timm backbones.

    Spatial path (7x7/2, 3x3/2, 3x3/2 to 64 channels, 1x1 to 128: 1/8), context path on the backbone's
    1/16 and 1/32 features (ARMs on 1/16 and 1/32, the global-average tail, two 2x upsample slots,
    nearest in the reference), FFM (256), output head with 1x1 conv + pixel shuffle x8 (the paper:
    bilinear; the reference's choice is kept fixed for every operator) and auxiliary heads on the
    context path's 1/8 (x8) and 1/16 (x16) outputs.
    """

    def __init__(self, num_classes: int, backbone: str = "resnet18", op: str = "conv",
                 op_kwargs: Mapping[str, Any] | None = None, upsampler: str = "nearest",
                 upsampler_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        from backbones import model_name

        probe = timm.create_model(model_name(backbone), features_only=True)
        self.backbone = timm.create_model(model_name(backbone), features_only=True, op=op, op_kwargs=dict(op_kwargs or {}),
                                          out_indices=_levels(probe.feature_info, (16, 32)))
        c16, c32 = self.backbone.feature_info.channels()
        self.spatial = nn.Sequential(ConvBNReLU(3, 64, 7, 2), ConvBNReLU(64, 64, 3, 2), ConvBNReLU(64, 64, 3, 2),
                                     ConvBNReLU(64, 128, 1))
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(c32, 128, 1))
        self.arm32, self.arm16 = AttentionRefinement(c32, 128), AttentionRefinement(c16, 128)
        slots = UpsampleSlots(upsampler, dict(upsampler_kwargs or {}), network="bisenetv1")
        self.up32, self.up16 = slots("context.up32", 128), slots("context.up16", 128)
        self.refine32, self.refine16 = ConvBNReLU(128, 128, 3), ConvBNReLU(128, 128, 3)
        self.ffm = FeatureFusion(128 + 128, 256)
        self.head = ShuffleHead(256, 256, num_classes, 8)
        self.aux8, self.aux16 = ShuffleHead(128, 64, num_classes, 8), ShuffleHead(128, 64, num_classes, 16)
        self.op_metadata = {**getattr(self.backbone, "op_metadata", {"op": op}), **slots.metadata()}
        init_own_convs(self, {id(m) for m in self.backbone.modules()} | operator_module_ids(self))

    def head_modules(self) -> list[nn.Module]:
        return [self.ffm, self.head, self.aux8, self.aux16]

    def predict(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        feat16, feat32 = self.backbone(x)
        context32 = self.arm32(feat32) + self.global_context(feat32)
        up32 = self.refine32(self.up32(context32))  # 1/16
        up16 = self.refine16(self.up16(self.arm16(feat16) + up32))  # 1/8
        logits = self.head(self.ffm(self.spatial(x), up16))
        return logits, [self.aux8(up16), self.aux16(up32)] if self.training else []


class DFANet(SegmentationNet):
    """DFANet (A): three cascaded Xception-A backbones with sub-network and sub-stage aggregation, and its decoder.

    Backbone j > 1 re-enters at enc2 with the previous backbone's enc2 output and its fc-attention output
    upsampled x4 (fixed bilinear, the aggregation, not the decoder), and each of its later stages takes the
    previous backbone's same-depth stage output beside its own input (concatenated). The decoder (as the
    public reimplementations build it) reduces the three enc2 outputs and the three fc-attention outputs to
    32 channels (1x1 conv-BN-ReLU), brings them to 1/4 with upsample slots (x1/x2/x4 and x4/x8/x16),
    fuses the low-level sum with a 1x1 conv-BN-ReLU, adds the high-level ones, classifies with a 1x1 conv
    and upsamples the logits x4 bilinearly (fixed) to the input.
    """

    stride = 64

    def __init__(self, num_classes: int, op: str = "conv", op_kwargs: Mapping[str, Any] | None = None,
                 upsampler: str = "bilinear", upsampler_kwargs: Mapping[str, Any] | None = None,
                 width: int = 32) -> None:
        super().__init__()
        kwargs = {"op": op, "op_kwargs": dict(op_kwargs or {}), "num_classes": 0}
        first = timm.create_model("xception_a", **kwargs)
        channels = [info["num_chs"] for info in first.feature_info[1:4]]  # enc2, enc3, enc4: 48, 96, 192
        entry = (channels[0] + channels[2], channels[1] + channels[0], channels[2] + channels[1])
        self.backbones = nn.ModuleList([first, *(timm.create_model("xception_a", stem=False, encoder_in_chans=entry,
                                                                   **kwargs) for _ in range(2))])
        self.low = nn.ModuleList(ConvBNReLU(channels[0], width, 1) for _ in range(3))
        self.high = nn.ModuleList(ConvBNReLU(channels[2], width, 1) for _ in range(3))
        slots = UpsampleSlots(upsampler, dict(upsampler_kwargs or {}), network="dfanet")
        self.low_up = nn.ModuleList([nn.Identity(), slots("decoder.low2", width, 2), slots("decoder.low3", width, 4)])
        self.high_up = nn.ModuleList(slots(f"decoder.high{j + 1}", width, 4 * 2**j) for j in range(3))
        self.fuse = ConvBNReLU(width, width, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.op_metadata = {**first.op_metadata, **slots.metadata()}
        init_own_convs(self, {id(m) for b in self.backbones for m in b.modules()} | operator_module_ids(self))

    def _backbone(self, j: int, x: Tensor, previous: list[Tensor] | None) -> list[Tensor]:
        """enc2, enc3, enc4 and fc-attention outputs of backbone ``j`` (re-entering with ``previous``'s)."""
        net, outs = self.backbones[j], []
        x = net.stages[0](x) if previous is None else x
        for k in range(1, 4):
            if previous is not None:
                x = torch.cat([previous[k - 1], x], dim=1)
            x = net.stages[k](x)
            outs.append(x)
        return [*outs, net.final(x)]

    def predict(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        size = x.shape[-2:]
        outs, previous = [], None
        for j in range(3):
            entry = x if previous is None else F.interpolate(previous[3], scale_factor=4, mode="bilinear",
                                                              align_corners=False)
            previous = self._backbone(j, entry, previous)
            outs.append(previous)
        low = sum(up(conv(o[0])) for up, conv, o in zip(self.low_up, self.low, outs))
        high = sum(up(conv(o[3])) for up, conv, o in zip(self.high_up, self.high, outs))
        logits = self.classifier(self.fuse(low) + high)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False), []


MODELS = {"bisenetv1": BiSeNetV1, "dfanet": DFANet}
"""``model=`` names; the first is the default."""

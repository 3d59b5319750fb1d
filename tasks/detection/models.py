"""mmdet building blocks of the detection task: our timm backbones, and an FPN with any registered upsampler.

Both are registered in mmdet's ``MODELS`` registry (as ``BenchBackbone`` and ``OpFPN``) so detector configs
name them like any mmdet module. Imported only when the detection task builds a detector: mmdet is an
optional extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor, nn

from backbones.operator_slot import UpsampleSlots

EXTRA_SOURCES = ("on_input", "on_lateral", "on_output")


def fit_to(up: Tensor, like: Tensor) -> Tensor:
    """``up`` (an upsampled map) at ``like``'s size: the extra row/column of a ceil-strided level cropped."""
    h, w = like.shape[2:]
    if up.shape[2] >= h and up.shape[3] >= w:
        return up[:, :, :h, :w]
    return F.interpolate(up, size=(h, w), mode="nearest")


@MODELS.register_module(name="BenchBackbone")
class TimmBackbone(BaseModule):
    """One of our timm backbones (``features_only``) with ``op`` in its slots, returning a tuple of feature maps."""

    def __init__(self, name: str, op: str = "conv", op_kwargs: Mapping[str, Any] | None = None,
                 out_indices: Sequence[int] = (1, 2, 3, 4), channels_last: bool = False) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        from backbones import model_name

        self.body = timm.create_model(model_name(name), op=op, op_kwargs=dict(op_kwargs or {}), features_only=True,
                                      out_indices=tuple(out_indices))
        self.channels: list[int] = self.body.feature_info.channels()
        self.strides: list[int] = self.body.feature_info.reduction()
        self.op_metadata: dict[str, Any] = getattr(getattr(self.body, "model", self.body), "op_metadata", {})

    def init_weights(self) -> None:
        """Keep the backbone's own initialisation (torchvision's for the network, the paper's for operators)."""

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.body(x.contiguous(memory_format=self.memory_format)))


@MODELS.register_module(name="OpFPN")
class OpFPN(BaseModule):
    """mmdet's FPN, except that each top-down 2x upsampling is a registered upsample-kind operator.

    Same arguments, layers, parameter names and initialisation as ``mmdet.models.necks.FPN``; with
    ``upsampler="nearest"`` it is the stock FPN (an upsampled map larger than its lateral is cropped,
    which for nearest equals mmdet's resize to the lateral's size whenever sizes halve exactly, as they
    do after mmdet's padding to a multiple of 32).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 add_extra_convs: bool | str = False, relu_before_extra_convs: bool = False,
                 upsampler: str = "nearest", upsampler_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs and add_extra_convs not in EXTRA_SOURCES:
            raise ValueError(f"OpFPN: add_extra_convs must be False or one of {EXTRA_SOURCES}, got {add_extra_convs!r}")
        self.in_channels, self.out_channels, self.num_outs = list(in_channels), out_channels, num_outs
        self.start_level, self.add_extra_convs = start_level, add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs
        used = len(self.in_channels) - start_level
        if num_outs < used:
            raise ValueError(f"OpFPN: num_outs ({num_outs}) is below the {used} backbone levels it uses")
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, act_cfg=None, inplace=False)
                                           for c in self.in_channels[start_level:])
        self.fpn_convs = nn.ModuleList(ConvModule(out_channels, out_channels, 3, padding=1, act_cfg=None,
                                                  inplace=False) for _ in range(used))
        if add_extra_convs:
            for i in range(num_outs - used):
                source = self.in_channels[-1] if i == 0 and add_extra_convs == "on_input" else out_channels
                self.fpn_convs.append(ConvModule(source, out_channels, 3, stride=2, padding=1, act_cfg=None,
                                                 inplace=False))
        self.upsampler = upsampler
        slots = UpsampleSlots(upsampler, dict(upsampler_kwargs or {}), network="OpFPN")
        self.upsamplers = nn.ModuleList(slots(f"top_down.{i}", out_channels) for i in range(used - 1))
        self.upsample_metadata = slots.metadata()

    def init_weights(self) -> None:
        """mmdet FPN's init (Xavier uniform) for the FPN's own convs; upsamplers keep their paper's init."""
        for conv in [*self.lateral_convs, *self.fpn_convs]:
            nn.init.xavier_uniform_(conv.conv.weight)
            nn.init.zeros_(conv.conv.bias)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"OpFPN expects {len(self.in_channels)} feature maps, got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + fit_to(self.upsamplers[i - 1](laterals[i]), laterals[i - 1])
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        used = len(outs)
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {"on_input": inputs[-1], "on_lateral": laterals[-1], "on_output": outs[-1]}
                outs.append(self.fpn_convs[used](source[self.add_extra_convs]))
                for i in range(used + 1, self.num_outs):
                    previous = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](previous))
        return tuple(outs)

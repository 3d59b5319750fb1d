"""How a network puts an operator into one of its slots, the same way in every family.

Conv slots (`SlotFiller`): the spatial convs of a backbone take any conv-kind operator. Upsample slots
(`UpsampleSlots`): the learned-feature upsamplings of a decoder, neck or fusion head take any
upsample-kind operator; a slot that offers a guide (an image or a lateral feature) passes it to
operators that take one, and the others run unguided in the same slot.

A slot asks for (in_channels, out_channels, kernel_size, stride). The operator fills it directly if
it declares what the slot needs. A strided slot whose operator cannot stride becomes 2x2 average
pooling (ceil mode) followed by the operator at stride 1, the fallback OctConv's authors use for
downsampling; every fallback is recorded so results can state it. A slot that needs a channel change
the operator cannot make is refused with an error naming the backbone, the slot and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from operators.registry import OperatorError, OpInfo, create_op, create_upsampler, op_info


def operator_of_kind(name: str, kind: str, takers: str) -> OpInfo:
    """The registry entry of ``name``; an operator of another kind is refused, saying who takes which kind."""
    info = op_info(name)
    if info.kind != kind:
        raise OperatorError(f"{takers} take {kind}-kind operators, and {name!r} is {info.kind}-kind "
                            "(`bench list ops`)")
    return info


class PoolThenOp(nn.Module):
    """Stride fallback: 2x2 average pooling (ceil mode, partial windows averaged) then the operator at stride 1."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return self.op(self.pool(x))


@dataclass
class SlotFiller:
    """Builds operator slots for one network and remembers the fallbacks it used."""

    op: str
    op_kwargs: Mapping[str, Any] = field(default_factory=dict)
    network: str = "network"
    stride_fallbacks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.info = operator_of_kind(self.op, "conv", f"{self.network}: backbones")

    def __call__(self, slot: str, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, depthwise: bool = False) -> nn.Module:
        """The module for one slot; ``depthwise`` slots stay depthwise convs when the operator is the baseline ``conv``."""
        if depthwise and self.op == "conv":
            return create_op("conv", in_channels, out_channels, kernel_size, stride, groups=in_channels,
                             **self.op_kwargs)
        if self.info.multiscale:
            raise OperatorError(
                f"{self.network}: operator {self.op!r} exchanges per-scale tensors, so swapping it into single "
                "slots would not be that operator; use a network converted for it (op_resnet* with op=octconv "
                "builds Oct-ResNet; task=saliency model=csnet is built from goctconv)")
        if in_channels != out_channels and not self.info.channel_change:
            raise OperatorError(
                f"{self.network}: slot {slot} maps {in_channels} to {out_channels} channels, but operator "
                f"{self.op!r} preserves channels (channel_change=False)")
        op_stride = stride if self.info.stride else 1
        try:
            op = create_op(self.op, in_channels, out_channels, kernel_size, op_stride, **self.op_kwargs)
        except OperatorError as err:
            raise OperatorError(f"{self.network}: slot {slot} ({in_channels} channels, {kernel_size}x{kernel_size}, "
                                f"stride {stride}): {err}") from None
        if op_stride != stride:
            self.stride_fallbacks.append(slot)
            return PoolThenOp(op)
        return op

    def metadata(self) -> dict[str, Any]:
        """What was put where, for the model's ``op_metadata`` attribute and result records."""
        return {"op": self.op, "op_kwargs": dict(self.op_kwargs), "op_source": self.info.source,
                "stride_fallback": "avgpool2x2_then_op" if self.stride_fallbacks else None,
                "stride_fallback_slots": list(self.stride_fallbacks)}


def operator_module_ids(model: nn.Module) -> set[int]:
    """ids of every module inside a registered operator instance, which keeps its paper's own initialisation."""
    return {id(sub) for m in model.modules() if getattr(m, "bench_op", None) is not None for sub in m.modules()}


class Unguided(nn.Module):
    """An upsampler that takes no guide, in a slot that offers one: the guide is dropped."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: Tensor, guide: Tensor | None = None) -> Tensor:
        return self.op(x)


@dataclass
class UpsampleSlots:
    """Builds the upsample slots of one network (every slot is called ``slot(x, guide=None)``) and records them."""

    upsampler: str
    upsampler_kwargs: Mapping[str, Any] = field(default_factory=dict)
    network: str = "network"
    filled: list[str] = field(default_factory=list)
    unguided: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.info = operator_of_kind(self.upsampler, "upsample", f"{self.network}: upsample slots")

    def __call__(self, slot: str, channels: int, scale_factor: int = 2, guide_channels: int | None = None
                 ) -> nn.Module:
        """The module for one slot: ``channels`` in and out, ``scale_factor`` x larger, guided where it can be."""
        guided = guide_channels is not None and self.info.guide
        try:
            op = create_upsampler(self.upsampler, channels, scale_factor,
                                  guide_channels=guide_channels if guided else None, **self.upsampler_kwargs)
        except OperatorError as err:
            raise OperatorError(f"{self.network}: upsample slot {slot} ({channels} channels, x{scale_factor}): "
                                f"{err}") from None
        self.filled.append(slot)
        if guide_channels is not None and not guided:
            self.unguided.append(slot)
            return Unguided(op)
        return op

    def metadata(self) -> dict[str, Any]:
        """What was put where, for result records."""
        return {"upsampler": self.upsampler, "upsampler_kwargs": dict(self.upsampler_kwargs),
                "upsampler_source": self.info.source, "upsample_slots": list(self.filled),
                "unguided_slots": list(self.unguided)}

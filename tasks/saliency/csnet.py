"""CSNet (SOD100K, Gao et al., ECCV 2020) as its official training code builds it, and the CSF head alone.

Read from ShangHua-Gao/SOD100K ``CSNet_training/model/csnet.py`` (facts, not code): 18 ILBlocks (one
stem block, then stages of 3, 4, 6 and 4). An ILBlock is a gOctConv (3x3 in the stem block and where it
strides, 1x1 elsewhere) and two per-scale depthwise 3x3 convs, each followed by per-scale BatchNorm
and PReLU, with no residual. The stem block runs at full resolution on the RGB image; stages 2-4 halve
it; every stage holds two scales (split 1:1) except the last block of stages 2-4, which merges them
into one. Widths are 20, 40, 80, 80 per stage (``expand`` multiplies them: the official training uses
2 before pruning). The cross-stage fusion (CSF) head takes the three single-scale outputs of stages
2-4 as the three scales of a 1x1 gOctConv (each input's width // 3 channels), then per scale five
parallel dilated 3x3 convs (dilations 1, 2, 4, 8, 16; concatenated, BN, PReLU), then a 1x1 gOctConv
to one scale (the sum of the widths), a 1x1 conv to the saliency logit and bilinear upsampling to
the input size.

Every width is learnable: `CSNetWidths` holds them all, `CSNet.pruned` removes the channels whose
BatchNorm gamma dynamic weight decay drove below a threshold and rebuilds the network from the
widths that remain. The CSF head's upward cross-scale paths are upsample slots (``upsampler``,
bilinear as the paper); the in-stage octave paths keep gOctConv's own bilinear upsampling.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.operator_slot import UpsampleSlots
from operators.dynamic_weight_decay import kept_channels, prune_inputs, prune_outputs
from operators.octconv import GOctConvBNAct
from operators.registry import OperatorError

DEPTHS = (3, 4, 6, 4)
BASE_WIDTH = 20
STAGE_WIDTHS = (1, 2, 4, 4)
"""Stage widths as multiples of the base width (20: 20, 40, 80, 80 channels)."""
DILATIONS = (1, 2, 4, 8, 16)
Scales = tuple[int, ...]
Slot = Callable[[str, int, int], nn.Module]


def _ratios(scales: Sequence[int]) -> list[float]:
    total = sum(scales)
    return [c / total for c in scales]


def _dilation_split(channels: int) -> Scales:
    """Channels per dilation: an equal share each, the remainder on the largest dilation (official rule)."""
    each = channels // len(DILATIONS)
    return (*([each] * (len(DILATIONS) - 1)), channels - each * (len(DILATIONS) - 1))


@dataclass(frozen=True)
class CSNetWidths:
    """Every learnable width of CSNet: per ILBlock and per scale, the CSF head's per scale and per dilation."""

    blocks: tuple[Scales, ...]
    """Output channels per scale of each of the 18 ILBlocks (stem block first)."""
    fuse: Scales
    """The CSF head's first 1x1 gOctConv, per scale (the outputs of stages 2, 3, 4)."""
    dilated: tuple[Scales, ...]
    """Per fused scale, the channels of each dilated conv (dilations 1, 2, 4, 8, 16)."""
    out: int
    """The CSF head's last 1x1 gOctConv (one scale), read by the 1x1 classifier."""

    @classmethod
    def initial(cls, expand: float = 1.0) -> CSNetWidths:
        """The official starting widths (``init_layers`` with basic split 1:1), base width 20 x ``expand``."""
        base = round(BASE_WIDTH * expand)
        blocks: list[Scales] = []
        for stage, depth in enumerate((1, *DEPTHS)):
            width = base * STAGE_WIDTHS[max(stage - 1, 0)]
            for b in range(depth):
                last = stage >= 2 and b == depth - 1
                blocks.append((width,) if last else (round(width / 2), round(width / 2)))
        sides = [sum(blocks[i]) for i in _stage_ends()]
        fuse = tuple(side // 3 for side in sides)
        return cls(tuple(blocks), fuse, tuple(_dilation_split(c) for c in fuse), sum(fuse))

    @classmethod
    def from_dict(cls, widths: Mapping[str, Any]) -> CSNetWidths:
        """From the plain form records and ``model.block_widths`` hold."""
        try:
            made = cls(tuple(tuple(int(c) for c in b) for b in widths["blocks"]), tuple(int(c) for c in widths["fuse"]),
                       tuple(tuple(int(c) for c in d) for d in widths["dilated"]), int(widths["out"]))
        except (KeyError, TypeError, ValueError) as err:
            raise OperatorError(f"csnet: model.block_widths must hold blocks, fuse, dilated and out ({err})") from None
        if len(made.blocks) != 1 + sum(DEPTHS) or len(made.fuse) != 3 or len(made.dilated) != 3:
            raise OperatorError(f"csnet: model.block_widths needs {1 + sum(DEPTHS)} blocks, 3 fused scales and 3 "
                                f"dilation splits; got {len(made.blocks)}, {len(made.fuse)}, {len(made.dilated)}")
        return made

    def as_dict(self) -> dict[str, Any]:
        return {k: [list(x) for x in v] if k in ("blocks", "dilated") else (list(v) if k == "fuse" else v)
                for k, v in asdict(self).items()}


def _stage_ends() -> list[int]:
    """Indices of the last ILBlock of stages 2, 3 and 4 (the CSF head's inputs)."""
    ends, index = [], 0
    for depth in (1, *DEPTHS):
        index += depth
        ends.append(index - 1)
    return ends[2:]


def _stride(index: int) -> int:
    """2 for the first block of stages 2-4, else 1."""
    starts = [1 + sum(DEPTHS[:s]) for s in range(1, len(DEPTHS))]
    return 2 if index in starts else 1


class ILBlock(nn.Module):
    """A gOctConv (3x3 where it strides or reads the image, else 1x1) and two per-scale depthwise 3x3 convs."""

    def __init__(self, in_scales: Scales, out_scales: Scales, stride: int = 1, first: bool = False) -> None:
        super().__init__()
        kernel = 3 if first or stride == 2 else 1
        self.octave = GOctConvBNAct(sum(in_scales), sum(out_scales), kernel, stride, _ratios(in_scales),
                                    _ratios(out_scales))
        self.depthwise = nn.Sequential(*(GOctConvBNAct(sum(out_scales), sum(out_scales), 3, 1, _ratios(out_scales),
                                                       _ratios(out_scales), cross_scale=False, depthwise=True)
                                         for _ in range(2)))
        if tuple(self.octave.out_scales) != tuple(out_scales):
            raise OperatorError(f"csnet: block widths {out_scales} cannot be split as gOctConv splits channels")

    def forward(self, x: Tensor | tuple) -> Tensor | tuple:
        return self.depthwise(self.octave(x))


class DilatedBlock(nn.Module):
    """Parallel dilated 3x3 convs (dilations 1, 2, 4, 8, 16) concatenated, then BN and PReLU (official MSBlock)."""

    def __init__(self, in_channels: int, split: Scales) -> None:
        super().__init__()
        self.convs = nn.ModuleDict({str(d): nn.Conv2d(in_channels, c, 3, padding=d, dilation=d, bias=False)
                                    for d, c in zip(DILATIONS, split) if c})
        self.norm, self.act = nn.BatchNorm2d(sum(split)), nn.PReLU(sum(split))

    @property
    def split(self) -> Scales:
        return tuple(self.convs[str(d)].out_channels if str(d) in self.convs else 0 for d in DILATIONS)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(torch.cat([conv(x) for conv in self.convs.values()], 1)))

    def prune(self, keep_in: Tensor, threshold: float) -> Tensor:
        """Keep the inputs ``keep_in`` and the outputs whose gamma exceeds ``threshold``; returns the kept outputs."""
        magnitude = self.norm.weight.detach().abs()
        keep = torch.nonzero(magnitude > threshold).flatten()
        keep = keep if keep.numel() else magnitude.argmax().reshape(1)
        start, convs = 0, {}
        for key, conv in self.convs.items():
            local = keep[(keep >= start) & (keep < start + conv.out_channels)] - start
            start += conv.out_channels
            if local.numel():
                new = nn.Conv2d(len(keep_in), len(local), 3, padding=conv.padding, dilation=conv.dilation, bias=False)
                new.weight.data.copy_(conv.weight.detach()[local][:, keep_in])
                convs[key] = new
        self.convs = nn.ModuleDict(convs)
        norm = nn.BatchNorm2d(len(keep), eps=self.norm.eps, momentum=self.norm.momentum)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(norm, name).data.copy_(getattr(self.norm, name).detach()[keep])
        norm.num_batches_tracked.copy_(self.norm.num_batches_tracked)
        act = nn.PReLU(len(keep))
        act.weight.data.copy_(self.act.weight.detach()[keep])
        self.norm, self.act = norm.train(self.norm.training), act
        return keep


class CSFHead(nn.Module):
    """Cross-stage fusion: 1x1 gOctConv over three stages' outputs, per-scale dilated convs, 1x1 gOctConv to one."""

    def __init__(self, in_scales: Scales, fuse: Scales, dilated: Sequence[Scales], out: int,
                 slot: Slot | None = None) -> None:
        super().__init__()
        self.fuse = GOctConvBNAct(sum(in_scales), sum(fuse), 1, 1, _ratios(in_scales), _ratios(fuse),
                                  upsample=(lambda key, c, f: slot(f"csf.fuse.{key}", c, f)) if slot else None)
        self.dilated = nn.ModuleList(DilatedBlock(c, split) for c, split in zip(fuse, dilated))
        widths = [sum(split) for split in dilated]
        self.out = GOctConvBNAct(sum(widths), out, 1, 1, _ratios(widths), [1.0],
                                 upsample=(lambda key, c, f: slot(f"csf.out.{key}", c, f)) if slot else None)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        fused = self.fuse(tuple(feats))
        return self.out(tuple(block(x) for block, x in zip(self.dilated, fused)))


class CSNet(nn.Module):
    """CSNet from its widths; ``forward`` returns saliency logits (N, 1, H, W); H and W multiples of 16."""

    stride = 16

    def __init__(self, widths: CSNetWidths | None = None, upsampler: str = "bilinear",
                 upsampler_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.widths = widths or CSNetWidths.initial()
        self.upsampler, self.upsampler_kwargs = upsampler, dict(upsampler_kwargs or {})
        blocks, scales = [], (3,)
        for index, out in enumerate(self.widths.blocks):
            blocks.append(ILBlock(scales, out, _stride(index), first=index == 0))
            scales = out
        self.blocks = nn.ModuleList(blocks)
        slots = UpsampleSlots(upsampler, self.upsampler_kwargs, network="csnet")
        sides = tuple(sum(self.widths.blocks[i]) for i in _stage_ends())
        self.head = CSFHead(sides, self.widths.fuse, self.widths.dilated, self.widths.out, slot=slots)
        self.classifier = nn.Conv2d(self.widths.out, 1, 1)
        self.op_metadata = {"op": "goctconv", **slots.metadata()}

    def decay_units(self) -> list[GOctConvBNAct]:
        """The units dynamic weight decay acts on: every gOctConv of the ILBlocks (the official hooks)."""
        return [unit for block in self.blocks for unit in (block.octave, *block.depthwise)]

    def forward(self, x: Tensor) -> Tensor:
        feats, ends = [], set(_stage_ends())
        y = x
        for index, block in enumerate(self.blocks):
            y = block(y)
            if index in ends:
                feats.append(y)
        logits = self.classifier(self.head(feats))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def pruned(self, threshold: float) -> CSNet:
        """A new CSNet without the channels whose gamma is at most ``threshold``, rebuilt from the widths left.

        Each ILBlock's width is decided by its gOctConv's gammas (its depthwise convs follow it), each CSF
        layer's by its own; at least one channel per scale is kept (the official code lets a scale vanish).
        """
        if any(p.numel() for unit in (self.head.fuse, self.head.out) for p in unit.conv.upsample.parameters()):
            raise OperatorError(f"csnet: pruning rebuilds the CSF head, whose upsample slots hold learned weights "
                                f"with upsampler={self.upsampler}; prune with a parameter-free upsampler")
        net = copy.deepcopy(self)
        previous = None
        outputs = []
        for block in net.blocks:
            if previous is not None:
                prune_inputs(block.octave, previous)
            keep = kept_channels(block.octave, threshold)
            prune_outputs(block.octave, keep)
            for unit in block.depthwise:
                prune_outputs(unit, keep)
            outputs.append(keep)
            previous = keep
        head = net.head
        prune_inputs(head.fuse, [outputs[i][0] for i in _stage_ends()])
        keep_fuse = kept_channels(head.fuse, threshold)
        prune_outputs(head.fuse, keep_fuse)
        keep_dilated = [block.prune(keep, threshold) for block, keep in zip(head.dilated, keep_fuse)]
        prune_inputs(head.out, keep_dilated)
        (keep_out,) = kept_channels(head.out, threshold)
        prune_outputs(head.out, [keep_out])
        classifier = nn.Conv2d(len(keep_out), 1, 1)
        classifier.weight.data.copy_(net.classifier.weight.detach()[:, keep_out])
        classifier.bias.data.copy_(net.classifier.bias.detach())
        net.classifier = classifier
        widths = CSNetWidths(tuple(tuple(len(k) for k in keep) for keep in outputs),
                             tuple(len(k) for k in keep_fuse), tuple(block.split for block in head.dilated),
                             len(keep_out))
        rebuilt = CSNet(widths, self.upsampler, self.upsampler_kwargs)
        rebuilt.load_state_dict(net.state_dict())  # strict: the rebuilt network is exactly the pruned one
        return rebuilt.train(self.training)


class CSFNet(nn.Module):
    """The CSF head on a timm backbone's last three feature levels (the paper's ResNet + CSF row)."""

    def __init__(self, backbone: str = "resnet18", op: str = "conv", op_kwargs: Mapping[str, Any] | None = None,
                 upsampler: str = "bilinear", upsampler_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        from backbones import model_name

        probe = timm.create_model(model_name(backbone), features_only=True)
        levels = list(range(len(probe.feature_info)))[-3:]
        self.backbone = timm.create_model(model_name(backbone), features_only=True, out_indices=levels, op=op,
                                          op_kwargs=dict(op_kwargs or {}))
        reductions = self.backbone.feature_info.reduction()
        if [b / a for a, b in itertools.pairwise(reductions)] != [2, 2]:
            raise OperatorError(f"csf: backbone {backbone}'s last three levels have strides {reductions}; the CSF "
                                "head fuses three levels a factor 2 apart")
        self.stride = reductions[-1]
        sides = tuple(self.backbone.feature_info.channels())
        fuse = tuple(side // 3 for side in sides)
        slots = UpsampleSlots(upsampler, dict(upsampler_kwargs or {}), network="csf")
        self.head = CSFHead(sides, fuse, [_dilation_split(c) for c in fuse], sum(fuse), slot=slots)
        self.classifier = nn.Conv2d(sum(fuse), 1, 1)
        self.op_metadata = {**getattr(self.backbone, "op_metadata", {"op": op}), **slots.metadata()}

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.head(self.backbone(x)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

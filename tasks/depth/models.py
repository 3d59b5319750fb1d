"""The joint depth upsampling network (PAC's `PacJointUpsample`) with an upsample slot per 2x stage.

Structured as NVlabs/pacnet ``task_jointUpsampling/models.py`` ``PacJointUpsample`` at its default widths:
a target branch on the normalised low-resolution depth (three 5x5 convs to 32 channels, ReLU between),
a guidance branch on the RGB image (three 5x5 convs, 32, 32, then 16 channels per 2x stage), log2(scale)
upsampling stages (32 -> 32 channels, ReLU after each), then a final branch (5x5 conv 32, ReLU, 5x5 conv to
one channel). Each stage is an upsample slot: the registered upsampler receives the stage's 16-channel guide
slice, resized bilinearly to the stage's output resolution as PAC does. Upsamplers that take no guide run
unguided in the same slots, and then the guidance branch, which nothing would read, is not built (nor
with ``guided=False``, the unguided ablation of a guided upsampler). ``Interpolate`` is the non-learned
row: the low-resolution depth upsampled by a parameter-free upsampler (bilinear; or ``jbu``, joint bilateral
upsampling guided by the RGB image), nothing trained.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from backbones.operator_slot import UpsampleSlots
from bench.errors import ConfigError
from operators.registry import create_upsampler, op_info

GUIDE_PER_STAGE = 16
WIDTH = 32
KERNEL = 5


def branch(channels: list[int]) -> nn.Sequential:
    """5x5 convs through ``channels`` with a ReLU between consecutive ones (none after the last)."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(pairwise(channels)):
        layers.append(nn.Conv2d(cin, cout, KERNEL, padding=KERNEL // 2))
        if i < len(channels) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def stages_for(scale: int) -> int:
    """Number of 2x stages of ``scale`` (4, 8 or 16)."""
    stages = int(math.log2(scale))
    if 2**stages != scale or stages < 1:
        raise ValueError(f"scale must be a power of 2 (4, 8 or 16), got {scale}")
    return stages


class JointUpsampler(nn.Module):
    """PAC's joint upsampling network, its PAC transposed convs replaced by upsample slots."""

    def __init__(self, scale: int, upsampler: str = "pac", upsampler_kwargs: Mapping[str, Any] | None = None,
                 guide_channels: int = 3, guided: bool = True) -> None:
        super().__init__()
        self.scale, stages = scale, stages_for(scale)
        slots = UpsampleSlots(upsampler, dict(upsampler_kwargs or {}), network="depth")
        self.guided = guided and slots.info.guide
        self.target = branch([1, WIDTH, WIDTH, WIDTH])
        self.guidance = branch([guide_channels, WIDTH, WIDTH, GUIDE_PER_STAGE * stages]) if self.guided else None
        self.ups = nn.ModuleList(slots(f"up{i + 1}", WIDTH, 2, guide_channels=GUIDE_PER_STAGE if self.guided else None)
                                 for i in range(stages))
        self.final = branch([WIDTH, WIDTH, 1])
        self.upsample_metadata = {**slots.metadata(), "unguided_slots": [] if self.guided else list(slots.filled)}

    def forward(self, low: Tensor, guide: Tensor) -> Tensor:
        """Normalised high-resolution depth (N, 1, H, W) from ``low`` (N, 1, H/s, W/s) and ``guide`` (N, 3, H, W)."""
        x = self.target(low)
        g = self.guidance(guide) if self.guidance is not None else None
        for i, up in enumerate(self.ups):
            if g is None:
                x = F.relu(up(x))
                continue
            size = (low.shape[-2] * 2 ** (i + 1), low.shape[-1] * 2 ** (i + 1))
            part = g[:, i * GUIDE_PER_STAGE:(i + 1) * GUIDE_PER_STAGE]
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
            x = F.relu(up(x, part))
        return self.final(x)


class Interpolate(nn.Module):
    """The non-learned rows: the low-resolution depth upsampled by a parameter-free upsampler, guided by the RGB
    image where the upsampler takes a guide (``jbu``) and ``guided``."""

    def __init__(self, scale: int, upsampler: str = "bilinear", upsampler_kwargs: Mapping[str, Any] | None = None,
                 guide_channels: int = 3, guided: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.guided = guided and op_info(upsampler).guide
        self.up = create_upsampler(upsampler, 1, scale, guide_channels=guide_channels if self.guided else None,
                                   **dict(upsampler_kwargs or {}))
        if any(True for _ in self.up.parameters()):
            raise ConfigError(f"model=interpolate is the non-learned row; upsampler {upsampler!r} has parameters "
                             "(use nearest, bilinear or jbu, or the trained network)")
        self.upsample_metadata = {"upsampler": upsampler, "upsample_slots": ["low_to_high"],
                                  "unguided_slots": [] if self.guided else ["low_to_high"]}

    def forward(self, low: Tensor, guide: Tensor) -> Tensor:
        return self.up(low, guide) if self.guided else self.up(low)


MODELS = {"pac_net": JointUpsampler, "interpolate": Interpolate}
"""``model=`` names; the first is the default."""

"""The papers' ablations as checks of the suite: each names its variants and the ordering its paper found.

The leaderboard finds the variants' rows (same task, section, model and recipe), tabulates them and says of
each claimed ordering whether the suite reproduces it: ``yes`` or ``no`` when the gap between the two means
exceeds twice its standard error, ``within noise`` otherwise (a claim one seed per variant cannot settle says
so). A claim is an ordering, never a hard-coded figure: the papers' own numbers are in ``source``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One line of a paper's ablation table: its label there and the leaderboard row (``op(kwargs)``) that runs it."""

    label: str
    op: str


@dataclass(frozen=True)
class Claim:
    """The paper's finding that variant ``lower`` scores below variant ``higher`` (labels of the ablation)."""

    lower: str
    higher: str


@dataclass(frozen=True)
class Ablation:
    """A paper's ablation table, run on ``recipe`` of ``task``."""

    title: str
    source: str
    task: str
    recipe: str
    variants: tuple[Variant, ...]
    claims: tuple[Claim, ...]

    def variant(self, label: str) -> Variant:
        return next(v for v in self.variants if v.label == label)


BASELINE = Variant("baseline (conv)", "conv")

ABLATIONS: tuple[Ablation, ...] = (
    Ablation(
        title="DDF: dynamic branches and filter normalisation",
        source="DDF paper's ablation (Zhou et al., CVPR 2021): spatial filters alone clearly below the static "
               "baseline, channel filters alone above it, both best; filter normalisation above a sigmoid.",
        task="classification", recipe="standard",
        variants=(BASELINE, Variant("spatial only", "ddf(branches=spatial)"),
                  Variant("channel only", "ddf(branches=channel)"),
                  Variant("sigmoid instead of FN", "ddf(filter_norm=sigmoid)"),
                  Variant("DDF (both, FN)", "ddf"),
                  Variant("both, FN + learnable spatial mean (official option; no paper claim)",
                          "ddf(spatial_mean=True)")),
        claims=(Claim("spatial only", "baseline (conv)"), Claim("baseline (conv)", "channel only"),
                Claim("channel only", "DDF (both, FN)"), Claim("spatial only", "DDF (both, FN)"),
                Claim("sigmoid instead of FN", "DDF (both, FN)")),
    ),
    Ablation(
        title="SCConv: SRU, CRU and both",
        source="SCConv paper (Li et al., CVPR 2023): SRU then CRU is the configuration it adopts over either unit "
               "alone, and ResNet-50 + SCConv is +0.26 top-1 over ResNet-50 on ImageNet. SRU mixes no pixels, so "
               "'SRU alone' is read as SRU then the 3x3 conv; SRU with nothing after it is shown, without a claim.",
        task="classification", recipe="standard",
        variants=(BASELINE, Variant("SRU alone", "sru(conv=True)"), Variant("CRU alone", "cru"),
                  Variant("SRU then CRU", "scconv"),
                  Variant("SRU with no conv after it (no paper claim)", "sru")),
        claims=(Claim("SRU alone", "SRU then CRU"), Claim("CRU alone", "SRU then CRU"),
                Claim("baseline (conv)", "SRU then CRU")),
    ),
    Ablation(
        title="OctConv: the low-frequency ratio alpha",
        source="OctConv's official README (Chen et al., ICCV 2019; pre-act ResNet-50 on ImageNet): baseline 77.0, "
               "alpha 0.125: 78.2, 0.25: 78.0, 0.5: 77.4, 0.75: 76.7 top-1.",
        task="classification", recipe="standard",
        variants=(BASELINE, Variant("alpha 0.125", "octconv(alpha=0.125)"),
                  Variant("alpha 0.25", "octconv(alpha=0.25)"), Variant("alpha 0.5", "octconv"),
                  Variant("alpha 0.75", "octconv(alpha=0.75)")),
        claims=(Claim("alpha 0.25", "alpha 0.125"), Claim("alpha 0.5", "alpha 0.25"),
                Claim("baseline (conv)", "alpha 0.5"), Claim("alpha 0.75", "baseline (conv)")),
    ),
)


def verdict(lower: Sequence[float], higher: Sequence[float], higher_is_better: bool = True) -> str:
    """Whether per-seed scores ``higher`` beat ``lower`` as claimed: ``yes``/``no`` beyond twice the standard
    error of the gap between the means, else ``within noise``; the gap is in the scores' units."""
    if not lower or not higher:
        return "not run"
    gap = (sum(higher) / len(higher) - sum(lower) / len(lower)) * (1 if higher_is_better else -1)
    if len(lower) < 2 or len(higher) < 2:
        return f"unsettled: one seed ({gap:+.2f})"
    se = math.sqrt(_variance(lower) / len(lower) + _variance(higher) / len(higher))
    if abs(gap) <= 2 * se:
        return f"within noise ({gap:+.2f}, 2 SE {2 * se:.2f})"
    return f"{'yes' if gap > 0 else 'no'} ({gap:+.2f}, 2 SE {2 * se:.2f})"


def _variance(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)

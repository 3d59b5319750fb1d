"""Salient-object detection scores (max F, MAE, S, mean E, weighted F) from pysodmetrics, kept per image for DDP.

Each image is scored on its own by pysodmetrics (validated against Fan's MATLAB toolbox) and its values and
256-threshold curves are stored as ``cat`` states, so gathering them across processes and averaging over images
gives exactly what pysodmetrics' accumulating evaluators report for the whole test set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from py_sod_metrics import MAE, Emeasure, FmeasureHandler, FmeasureV2, Smeasure, WeightedFmeasure
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

BETA2 = 0.3
"""beta^2 of the F-measure curve (the field's convention, pysodmetrics' default)."""
ALPHA = 0.5
"""S-measure's weight of the object score against the region score."""
STATES = ("f_curve", "e_curve", "mae", "s_measure", "weighted_f")
"""Per-image states: the F- and E-measure curves over 256 thresholds, then the three single values."""


def quantise(prob: Tensor, size: tuple[int, int]) -> np.ndarray:
    """A (1, h, w) probability map resized to the ground truth's size and truncated to 8 bits, as SOD100K saves it."""
    resized = F.interpolate(prob[None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return (resized * 255).int().to(torch.uint8).detach().cpu().numpy()


def score_image(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """One uint8 prediction's scores against its uint8 ground truth, from pysodmetrics evaluators fed this image only.

    A fresh evaluator per image makes its ``get_results()`` (a mean over one image) that image's score, through
    pysodmetrics' own ``step``: its normalisation (gt ``> 128``; the prediction scaled to [0, 1] and min-max
    stretched, MATLAB's ``mapminmax``) and its per-image special cases (an empty gt's weighted F is 0).
    """
    fmeasure = FmeasureV2({"fm": FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=BETA2)})
    mae, smeasure, emeasure, weighted_f = MAE(), Smeasure(alpha=ALPHA), Emeasure(), WeightedFmeasure()
    for evaluator in (fmeasure, mae, smeasure, emeasure, weighted_f):
        evaluator.step(pred, gt)
    return {
        "f_curve": fmeasure.get_results()["fm"]["dynamic"],
        "e_curve": emeasure.get_results()["em"]["curve"],
        "mae": mae.get_results()["mae"],
        "s_measure": smeasure.get_results()["sm"],
        "weighted_f": weighted_f.get_results()["wfm"],
    }


def check_inputs(probs: Tensor, gts: Sequence[Tensor]) -> None:
    """Refuse a batch that is not N one-channel probability maps with N 2-D uint8 ground truths (e.g. raw logits)."""
    if probs.ndim != 4 or probs.shape[1] != 1:
        raise ValueError(f"probs must be (N, 1, h, w), got {tuple(probs.shape)}")
    if len(gts) != len(probs):
        raise ValueError(f"{len(probs)} predictions but {len(gts)} ground truths")
    if any(gt.ndim != 2 or gt.dtype != torch.uint8 for gt in gts):
        raise ValueError("each ground truth must be a 2-D uint8 (H, W) tensor with values 0-255")
    if probs.numel() and (probs.min() < 0 or probs.max() > 1):
        raise ValueError("probs must lie in [0, 1] (the sigmoid of the logits, not the logits)")


class SaliencyMetrics(Metric):
    """Max F-measure, MAE, S-measure, mean E-measure and weighted F over a test set, at each gt's original size.

    ``update`` resizes each prediction to its ground truth's size (bilinear, ``align_corners=False``), truncates it
    to 8 bits (``(p * 255).int()``, SOD100K's saved maps) and scores it with pysodmetrics, which binarises the gt as
    ``gt > 128`` and min-max stretches the prediction. ``compute`` averages the per-image values and curves over
    images, then takes the max of the F curve and the mean of the E curve; it raises ``ValueError`` when no image
    was scored, rather than report NaN.
    """

    is_differentiable = False
    higher_is_better = None  # mixed: MAE is lower-is-better, the other four higher-is-better
    full_state_update = False

    f_curve: list[Tensor]
    e_curve: list[Tensor]
    mae: list[Tensor]
    s_measure: list[Tensor]
    weighted_f: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        """Register one ``cat`` state per per-image score, so DDP gathers every image's values."""
        super().__init__(**kwargs)
        for name in STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, probs: Tensor, gts: Sequence[Tensor]) -> None:
        """Score each (1, h, w) probability map in ``probs`` against its (H_i, W_i) uint8 ground truth in ``gts``."""
        check_inputs(probs, gts)
        for prob, gt in zip(probs, gts):
            scores = score_image(quantise(prob, (gt.shape[0], gt.shape[1])), gt.detach().cpu().numpy())
            for name in STATES:
                # One leading image axis (scalars -> (1,), curves -> (1, 256)), on the metric's device for NCCL.
                value = torch.as_tensor(scores[name], dtype=torch.float64, device=self.device)[None]
                getattr(self, name).append(value)

    def compute(self) -> dict[str, Tensor]:
        """The dataset's scores as 0-dim float64 tensors: means over images, then max F / mean E over thresholds."""
        if len(self.mae) == 0:  # a list before DDP's sync, one tensor over all processes' images after it
            raise ValueError("SaliencyMetrics.compute() called before any image was scored (no update)")
        mean = {name: dim_zero_cat(getattr(self, name)).mean(dim=0) for name in STATES}
        return {
            "max_f": mean["f_curve"].max(),
            "mae": mean["mae"],
            "s_measure": mean["s_measure"],
            "mean_e": mean["e_curve"].mean(),
            "weighted_f": mean["weighted_f"],
        }

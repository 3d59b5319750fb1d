"""SaliencyMetrics: hand-computed scores, the resize and 8-bit truncation, pysodmetrics' accumulating API, DDP's cat."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from py_sod_metrics import MAE, Emeasure, Fmeasure, FmeasureHandler, FmeasureV2, Smeasure, WeightedFmeasure
from torch import Tensor

from tasks.saliency.metrics import STATES, SaliencyMetrics

TOL = 1e-6
KEYS = ("max_f", "mae", "s_measure", "mean_e", "weighted_f")


def square_gt() -> Tensor:
    """A 4x4 uint8 ground truth whose top-left 2x2 block (4 of 16 pixels) is salient."""
    gt = torch.zeros(4, 4, dtype=torch.uint8)
    gt[:2, :2] = 255
    return gt


def scores(probs: Tensor, gts: list[Tensor]) -> dict[str, float]:
    """One metric's compute() on one batch, as floats."""
    metric = SaliencyMetrics()
    metric.update(probs, gts)
    return {key: value.item() for key, value in metric.compute().items()}


def random_pairs(seed: int, count: int) -> tuple[list[Tensor], list[Tensor]]:
    """``count`` (1, 1, 12, 12) probability maps at the network's size and uint8 gts of other sizes, one empty."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(16, 20), (9, 13), (24, 18), (12, 12), (15, 31), (10, 10)][:count]
    probs = [torch.rand(1, 1, 12, 12, generator=gen) for _ in sizes]
    gts = [((torch.rand(size, generator=gen) > 0.6) * 255).to(torch.uint8) for size in sizes]
    gts[-1].zero_()  # a gt without salient pixels exercises pysodmetrics' empty-gt branches
    return probs, gts


def test_hand_computed_max_f_and_mae() -> None:
    """1.0 on 3 of the 4 salient pixels, 0.5 on one background pixel, 0 elsewhere.

    Quantised: 255 (x3), int(127.5) = 127 (x1), 0 (x12); min 0 and max 255, so pysodmetrics' min-max stretch keeps it.
    MAE = (1 [the missed salient pixel] + 127/255 [the background pixel]) / 16 = 382 / 4080.
    F = 1.3 P R / (0.3 P + R), the prediction binarised as pred >= t:
      t = 0:        16 positives, 4 true: P = 1/4, R = 1   -> F = 0.325 / 1.075 = 13/43
      t = 1..127:    4 positives, 3 true: P = 3/4, R = 3/4 -> F = 3/4
      t = 128..255:  3 positives, 3 true: P = 1,   R = 3/4 -> F = 0.975 / 1.05 = 13/14 (the max)
    """
    probs = torch.zeros(1, 1, 4, 4)
    probs[0, 0, 0, :2] = 1.0
    probs[0, 0, 1, 0] = 1.0
    probs[0, 0, 3, 3] = 0.5
    result = scores(probs, [square_gt()])
    assert result["max_f"] == pytest.approx(13 / 14, abs=TOL)
    assert result["mae"] == pytest.approx(382 / 4080, abs=TOL)


def test_perfect_prediction() -> None:
    """The gt itself as probabilities scores max_f 1, mae 0 and s_measure 1."""
    gt = square_gt()
    result = scores((gt / 255.0)[None, None], [gt])
    assert result["max_f"] == pytest.approx(1, abs=TOL)
    assert result["mae"] == pytest.approx(0, abs=TOL)
    assert result["s_measure"] == pytest.approx(1, abs=TOL)


def test_all_zero_prediction() -> None:
    """An all-zero map finds nothing at any threshold t >= 1, so its max F is the t = 0 point (every pixel positive).

    The curve, like Fan's toolbox, includes t = 0: P = 4/16, R = 1 -> F = 13/43, not 0. MAE = 4/16.
    """
    result = scores(torch.zeros(1, 1, 4, 4), [square_gt()])
    assert result["max_f"] == pytest.approx(13 / 43, abs=TOL)
    assert result["mae"] == pytest.approx(4 / 16, abs=TOL)


def test_prediction_is_resized_to_the_gt() -> None:
    """A 2x2 map [[1, 1], [0, 0]] is scored as its bilinear (align_corners=False) 4x4 upsampling, truncated to 8 bits.

    Its rows become 1, 0.75, 0.25, 0 -> 255, int(191.25) = 191, int(63.75) = 63, 0; gt: top two rows salient.
    MAE = 4 * (64 + 63) / 255 / 16 = 127 / 1020 (align_corners=True or rounding would give other values).
    """
    probs = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None, None]
    gt = torch.zeros(4, 4, dtype=torch.uint8)
    gt[:2] = 255
    assert scores(probs, [gt])["mae"] == pytest.approx(127 / 1020, abs=TOL)


def test_prediction_is_truncated_to_8_bits() -> None:
    """0.999 is stored as int(254.745) = 254: against an empty gt MAE is 254/255 (rounding: 1, no quantisation: 0.999)."""
    result = scores(torch.full((1, 1, 2, 2), 0.999), [torch.zeros(4, 4, dtype=torch.uint8)])
    assert result["mae"] == pytest.approx(254 / 255, abs=1e-9)
    assert result["s_measure"] == pytest.approx(1 / 255, abs=1e-9)  # an empty gt's S-measure is 1 - mean(pred)


def accumulated_reference(probs: list[Tensor], gts: list[Tensor]) -> dict[str, float]:
    """pysodmetrics' accumulating evaluators stepped over the same resized, truncated uint8 predictions."""
    fmeasure = FmeasureV2({"fm": FmeasureHandler(with_dynamic=True, with_adaptive=False, beta=0.3)})
    mae, smeasure, emeasure, weighted_f = MAE(), Smeasure(alpha=0.5), Emeasure(), WeightedFmeasure()
    for prob, gt in zip(probs, gts):
        resized = F.interpolate(prob, size=tuple(gt.shape), mode="bilinear", align_corners=False)[0, 0]
        pred = (resized * 255).int().to(torch.uint8).numpy()
        for evaluator in (fmeasure, mae, smeasure, emeasure, weighted_f):
            evaluator.step(pred, gt.numpy())
    return {
        "max_f": float(fmeasure.get_results()["fm"]["dynamic"].max()),
        "mae": float(mae.get_results()["mae"]),
        "s_measure": float(smeasure.get_results()["sm"]),
        "mean_e": float(emeasure.get_results()["em"]["curve"].mean()),
        "weighted_f": float(weighted_f.get_results()["wfm"]),
    }


def test_equals_pysodmetrics_accumulating_api() -> None:
    """Per-image scores averaged over images equal pysodmetrics' own dataset results, up to float64 rounding."""
    probs, gts = random_pairs(seed=0, count=6)
    metric = SaliencyMetrics()
    metric.update(torch.cat(probs[:4]), gts[:4])  # one batch, then a second: accumulation across updates
    metric.update(torch.cat(probs[4:]), gts[4:])
    result = {key: value.item() for key, value in metric.compute().items()}
    assert set(result) == set(KEYS)
    assert result == pytest.approx(accumulated_reference(probs, gts), abs=1e-12)


# Only to check FmeasureV2 against the deprecated Fmeasure; the metric itself uses FmeasureV2.
@pytest.mark.filterwarnings("ignore:This class will be removed in the future")
def test_max_f_equals_deprecated_fmeasure() -> None:
    """max_f also equals the max of the deprecated Fmeasure's mean curve (the class most SOD papers ran)."""
    probs, gts = random_pairs(seed=1, count=4)
    fmeasure = Fmeasure(beta=0.3)
    for prob, gt in zip(probs, gts):
        resized = F.interpolate(prob, size=tuple(gt.shape), mode="bilinear", align_corners=False)[0, 0]
        fmeasure.step((resized * 255).int().to(torch.uint8).numpy(), gt.numpy())
    expected = float(fmeasure.get_results()["fm"]["curve"].max())
    assert scores(torch.cat(probs), gts)["max_f"] == pytest.approx(expected, abs=1e-12)


# The metric given DDP's gathered states by hand was never updated, so torchmetrics warns on its compute().
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_merged_halves_equal_one_metric() -> None:
    """Two metrics with half the images each, merged (merge_state, or cat of states as DDP does), equal one metric."""
    probs, gts = random_pairs(seed=2, count=6)
    whole = SaliencyMetrics()
    whole.update(torch.cat(probs), gts)
    first, second = SaliencyMetrics(), SaliencyMetrics()
    first.update(torch.cat(probs[:3]), gts[:3])
    second.update(torch.cat(probs[3:]), gts[3:])
    gathered = SaliencyMetrics()
    for name in STATES:  # what DDP's sync leaves: each state one tensor, the processes' images concatenated
        setattr(gathered, name, torch.cat([torch.cat(getattr(first, name)), torch.cat(getattr(second, name))]))
    first.merge_state(second)
    expected = whole.compute()
    for merged in (first.compute(), gathered.compute()):
        for key in KEYS:
            assert merged[key].item() == pytest.approx(expected[key].item(), abs=1e-12)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_empty_metric_raises() -> None:
    """compute() without any scored image raises rather than report NaN."""
    with pytest.raises(ValueError, match="before any image was scored"):
        SaliencyMetrics().compute()


def test_logits_are_refused() -> None:
    """Values outside [0, 1] (logits passed by mistake) are refused."""
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SaliencyMetrics().update(torch.full((1, 1, 4, 4), 3.0), [square_gt()])


def test_states_are_per_image() -> None:
    """Each state holds one row per image: scalars (N,), curves (N, 256)."""
    probs, gts = random_pairs(seed=3, count=3)
    metric = SaliencyMetrics()
    metric.update(torch.cat(probs), gts)
    assert torch.cat(metric.mae).shape == (3,)
    assert torch.cat(metric.f_curve).shape == (3, 256)
    assert torch.cat(metric.e_curve).shape == (3, 256)
    assert np.isfinite(torch.cat(metric.weighted_f).numpy()).all()

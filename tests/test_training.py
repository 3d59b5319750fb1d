"""The shared trained-task core: one LR schedule for every recipe, and upsample slots for any network."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from backbones.operator_slot import Unguided, UpsampleSlots
from bench.config import compose
from operators import list_ops
from operators.registry import OperatorError
from tasks.training import lr_factor


def recipe(**overrides: object):
    base = compose("run", ["task=classification", "recipe=quick"]).recipe
    return OmegaConf.merge(base, overrides)


def test_warmup_in_epochs_or_iterations_starts_at_the_ratio() -> None:
    by_epochs = recipe(warmup_epochs=1.0, warmup_ratio=0.1, schedule="cosine")
    by_iters = recipe(warmup_epochs=0.0, warmup_iters=10, warmup_ratio=0.1, schedule="cosine")
    for r in (by_epochs, by_iters):
        assert lr_factor(r, 0, 100, 10) == pytest.approx(0.1)
        assert lr_factor(r, 5, 100, 10) == pytest.approx(0.55)
        assert lr_factor(r, 10, 100, 10) == pytest.approx(1.0)  # cosine starts where warm-up ends


def test_cosine_multistep_and_poly_after_warmup() -> None:
    cosine = recipe(warmup_epochs=0.0, schedule="cosine")
    assert [lr_factor(cosine, s, 100, 10) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0])
    steps = recipe(warmup_epochs=0.0, schedule="multistep", milestones=[3, 6], gamma=0.5)
    assert [lr_factor(steps, s, 100, 10) for s in (29, 30, 59, 60)] == pytest.approx([1.0, 0.5, 0.5, 0.25])
    poly = recipe(warmup_epochs=0.0, schedule="poly", power=0.9)
    assert [lr_factor(poly, s, 100, 10) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5**0.9, 0.0])
    warm_poly = recipe(warmup_iters=20, warmup_ratio=0.0, schedule="poly", power=1.0)
    assert lr_factor(warm_poly, 60, 100, 10) == pytest.approx(0.5)  # decays over the steps after warm-up


def test_an_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="cosine, multistep or poly"):
        lr_factor(recipe(schedule="linear"), 5, 100, 10)


@pytest.mark.parametrize("upsampler", list_ops("upsample"))
def test_every_upsampler_fills_a_slot_guided_where_it_can_be(upsampler: str) -> None:
    slots = UpsampleSlots(upsampler, network="toy decoder")
    plain, guided = slots("decoder.0", 8), slots("decoder.1", 8, guide_channels=3)
    x, guide = torch.randn(2, 8, 5, 6), torch.randn(2, 3, 10, 12)
    assert plain(x).shape == guided(x, guide).shape == (2, 8, 10, 12)
    meta = slots.metadata()
    assert meta["upsample_slots"] == ["decoder.0", "decoder.1"] and meta["upsampler"] == upsampler
    assert isinstance(guided, Unguided) == (meta["unguided_slots"] == ["decoder.1"])
    if isinstance(guided, Unguided):
        assert torch.equal(guided(x, guide), guided.op(x))  # the guide is dropped, not misused


def test_a_conv_operator_is_refused_in_an_upsample_slot() -> None:
    with pytest.raises(OperatorError, match="toy decoder: upsample slots take upsample-kind operators"):
        UpsampleSlots("ddf", network="toy decoder")


def test_upsample_slot_errors_name_the_network_and_slot() -> None:
    slots = UpsampleSlots("carafe", {"up_kernel": 4}, network="toy decoder")
    with pytest.raises(OperatorError, match="toy decoder: upsample slot head.up .*must be odd"):
        slots("head.up", 16)

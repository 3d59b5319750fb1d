"""Recipes: the global batch is kept for every world size; lr follows the global batch."""

from __future__ import annotations

import pytest

from bench.config import compose
from bench.recipes import RecipeError, plan_batches


@pytest.mark.parametrize("world, per_device, accumulate", [(1, 128, 8), (2, 128, 4), (8, 128, 1), (64, 16, 1)])
def test_imagenet_recipe_keeps_global_batch(world: int, per_device: int, accumulate: int) -> None:
    plan = plan_batches(compose("run", ["task=classification", "recipe=imagenet"]).recipe, world)
    assert (plan.per_device_batch, plan.accumulate) == (per_device, accumulate)
    assert plan.per_device_batch * plan.accumulate * world == plan.global_batch == 1024
    assert plan.lr == pytest.approx(0.4)


def test_lr_scales_with_global_batch_and_bad_splits_are_refused() -> None:
    recipe = compose("run", ["task=classification", "recipe=cifar", "recipe.global_batch=256"]).recipe
    assert plan_batches(recipe, 1).lr == pytest.approx(0.1)  # 0.05 at 128 -> 0.1 at 256
    with pytest.raises(RecipeError, match="cannot be split evenly over 3 devices"):
        plan_batches(recipe, 3)


def test_recipes_state_their_protocols() -> None:
    cifar = compose("run", ["task=classification", "recipe=cifar"]).recipe
    assert (cifar.epochs, cifar.lr, cifar.weight_decay, list(cifar.milestones)) == (200, 0.05, 5e-4, [100, 150])
    imagenet = compose("run", ["task=classification", "recipe=imagenet"]).recipe
    assert (imagenet.epochs, imagenet.schedule, imagenet.precision) == (120, "cosine", "16-mixed")
    standard = compose("run", ["task=classification", "recipe=standard"]).recipe
    assert standard.default_backbone == "op_resnet29"  # the protocol names its network; quick leaves the task's
    assert compose("run", ["task=classification"]).recipe.default_backbone is None


def test_each_recipe_builds_its_optimizer_and_an_unknown_one_exits_2(capsys: pytest.CaptureFixture) -> None:
    import torch

    from bench.cli import main
    from tasks.training import build_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    cifar = build_optimizer(params, compose("run", ["task=classification", "recipe=cifar", "recipe.nesterov=true"]).recipe, 0.05)
    assert isinstance(cifar, torch.optim.SGD) and cifar.defaults["nesterov"] and cifar.defaults["momentum"] == 0.9
    quick = build_optimizer(params, compose("run", ["task=classification", "recipe=quick"]).recipe, 2e-3)
    assert isinstance(quick, torch.optim.AdamW) and quick.defaults["weight_decay"] == 0.05
    coco = build_optimizer(params, compose("run", ["task=detection", "recipe=coco_1x"]).recipe, 0.02)
    assert isinstance(coco, torch.optim.SGD) and not coco.defaults["nesterov"]  # detection recipes state no Nesterov
    sod = build_optimizer(params, compose("run", ["task=saliency", "recipe=sod100k"]).recipe, 1e-4)
    assert type(sod) is torch.optim.Adam and sod.defaults["betas"] == (0.9, 0.99)  # L2 in the gradient, as SOD100K
    assert sod.defaults["weight_decay"] == 5e-3
    assert main(["run", "task=classification", "recipe.optimizer=adamww"]) == 2
    assert "Did you mean 'adamw'" in capsys.readouterr().err

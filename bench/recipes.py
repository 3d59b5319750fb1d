"""Recipes fix the protocol; this derives how to run it on a given number of devices.

The global batch (and so the result) never depends on the world size: the per-device batch and the
gradient accumulation are chosen so that per_device * world_size * accumulate == global batch, with
the per-device batch capped by the recipe's ``max_device_batch``. The learning rate is the recipe's
lr scaled linearly from its ``base_batch`` to the global batch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from omegaconf import DictConfig

from bench.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw", "adam")
"""What a recipe's ``optimizer`` may name (SGD with momentum, optionally Nesterov; AdamW; Adam with L2 decay)."""


class RecipeError(ConfigError):
    """A recipe that cannot be run as specified on this many devices (a usage error: exit 2, before training)."""


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's global batch is split across devices and accumulation steps."""

    global_batch: int
    world_size: int
    per_device_batch: int
    accumulate: int
    lr: float

    def to_dict(self) -> dict:
        return asdict(self)


def plan_batches(recipe: DictConfig, world_size: int) -> BatchPlan:
    """Per-device batch and accumulation that reproduce ``recipe.global_batch`` on ``world_size`` devices."""
    total, cap = int(recipe.global_batch), int(recipe.max_device_batch)
    if total % world_size:
        raise RecipeError(f"recipe {recipe.name}: global batch {total} cannot be split evenly over {world_size} "
                          f"devices; use a device count that divides {total}")
    per_rank = total // world_size
    accumulate = math.ceil(per_rank / cap)
    while per_rank % accumulate:
        accumulate += 1
    per_device = per_rank // accumulate
    if 2 * per_device <= min(cap, per_rank) and per_device < per_rank:
        better = sorted({b * world_size * math.ceil(per_rank / b) for b in range(max(1, cap // 2), cap + 1)})[:3]
        raise RecipeError(f"recipe {recipe.name}: global batch {total} on {world_size} device(s) is {per_rank} per "
                          f"device, and with at most {cap} per step (recipe.max_device_batch) the only even split "
                          f"is {accumulate} accumulated micro-batches of {per_device}, far below the cap. Use a "
                          f"global batch such as {', '.join(map(str, better))}, or another recipe.max_device_batch.")
    lr = float(recipe.lr) * total / float(recipe.base_batch)
    return BatchPlan(total, world_size, per_device, accumulate, lr)

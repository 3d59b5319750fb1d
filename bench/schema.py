"""Typed schemas of the configs: Hydra validates overrides against them, so a wrong type is caught early."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class ProfileTaskConfig:
    """Operator profiling at one input shape."""

    name: str = "profile"
    batch: int = 8
    channels: int = 256
    out_channels: Optional[int] = None
    size: Optional[int] = None
    kernel_size: int = 3
    stride: int = 1
    channels_last: bool = True
    device: str = "cpu"
    threads: Optional[int] = None
    warmup: int = 5
    iters: int = 30
    train: bool = True


@dataclass
class RunConfig:
    """Keys shared by every task."""

    task: Any = None
    op: str = "conv"
    backbone: Optional[str] = None
    op_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    results_dir: str = "leaderboards/results"


def register_schemas() -> None:
    """Make the schemas available to the YAML configs' defaults lists."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="task", name="profile_schema", node=ProfileTaskConfig)

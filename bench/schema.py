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
    compile: bool = False
    warmup: int = 5
    iters: int = 30
    train: bool = True
    baseline: Optional[str] = None
    baseline_rounds: int = 7
    baseline_processes: int = 3


@dataclass
class ClassificationTaskConfig:
    """Image classification."""

    name: str = "classification"
    default_backbone: str = "resnet20"
    profile_batch: int = 32


@dataclass
class DetectionTaskConfig:
    """Object detection with an mmdet detector around one of our backbones."""

    name: str = "detection"
    profile_batch: int = 2


@dataclass
class DataSource:
    """Where a dataset comes from: a local path, or the built-in generator with its seed, image size and split sizes."""

    name: str = "shapes"
    source: str = "shapes"
    path: Optional[str] = None
    generator_seed: int = 0
    image_size: int = 32
    train_size: int = 0
    val_size: int = 0
    test_size: int = 0


@dataclass
class DataConfig(DataSource):
    """A classification dataset: built-in generator, hub id or local path, and how to read it."""

    hub_id: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    val_fraction: float = 0.1
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])


@dataclass
class DetectionDataConfig(DataSource):
    """A COCO-format detection dataset: ``path/annotations/instances_{split}.json`` and ``path/{split}/``."""

    train_split: str = "train2017"
    val_split: str = "val2017"
    test_split: str = "val2017"
    annotations: str = "annotations/instances_{split}.json"
    images: str = "{split}"


@dataclass
class TrainingRecipe:
    """What every training protocol states; the global batch is kept whatever the world size."""

    name: str = "quick"
    source: str = ""
    global_batch: int = 128
    max_device_batch: int = 128
    epochs: int = 1
    optimizer: str = "sgd"
    lr: float = 0.1
    base_batch: int = 128  # lr is stated for this global batch and scaled linearly with it
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    flip: bool = True
    precision: str = "32-true"
    eval_batch: int = 256


@dataclass
class RecipeConfig(TrainingRecipe):
    """A classification protocol: per-step cosine or step schedule, warm-up in epochs, crop augmentation."""

    nesterov: bool = False
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    crop_padding: int = 0
    random_resized_crop: bool = False


@dataclass
class DetectionRecipeConfig(TrainingRecipe):
    """A detection protocol: model widths, mmdet-style warm-up and step schedule, resize bounds."""

    default_backbone: str = "resnet18"
    fpn_channels: int = 256
    head_convs: int = 4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    grad_clip: Optional[float] = None
    min_size: int = 800
    max_size: int = 1333


@dataclass
class TrainerConfig:
    """Where and how Lightning runs the recipe."""

    name: str = "auto"
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: Optional[str] = None
    num_workers: int = 0
    channels_last: bool = True


@dataclass
class RunConfig:
    """Keys shared by every task."""

    task: Any = None
    data: Any = None  # each data/*.yaml declares its schema (classification or detection)
    recipe: Any = None  # likewise for recipe/*.yaml
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    op: str = "conv"
    backbone: Optional[str] = None
    op_kwargs: dict[str, Any] = field(default_factory=dict)
    upsampler: Optional[str] = None
    detector: Optional[str] = None
    upsampler_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    results_dir: str = "leaderboards/results"
    runs_dir: str = "outputs/runs"
    resume: bool = False
    devices: Optional[int] = None
    num_nodes: Optional[int] = None


def register_schemas() -> None:
    """Make the schemas available to the YAML configs' defaults lists."""
    store = ConfigStore.instance()
    store.store(name="run_schema", node=RunConfig)
    store.store(group="task", name="profile_schema", node=ProfileTaskConfig)
    store.store(group="task", name="classification_schema", node=ClassificationTaskConfig)
    store.store(group="task", name="detection_schema", node=DetectionTaskConfig)
    store.store(group="data", name="classification_schema", node=DataConfig)
    store.store(group="data", name="detection_schema", node=DetectionDataConfig)
    store.store(group="recipe", name="classification_schema", node=RecipeConfig)
    store.store(group="recipe", name="detection_schema", node=DetectionRecipeConfig)

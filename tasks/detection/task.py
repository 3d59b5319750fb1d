"""Object detection: mmdet 3 detectors (RetinaNet, Faster R-CNN, ThunderNet, Light-Head R-CNN) trained by Lightning.

`bench run task=detection op=ddf upsampler=ddf_up` builds the detector of its config file
(`configs/<detector>.py`: mmdet's own model-zoo config for RetinaNet and Faster R-CNN + FPN, with our FPN
taking any registered upsampler top-down; ours for the light-head detectors), with one of our backbones
(operator in its slots), trains it on a recipe and reports COCO mAP (torchmetrics) on the test split.
The LightningModule calls the detector's ``data_preprocessor`` and its ``loss`` / ``predict`` modes;
Lightning owns the loop, devices, precision, DDP and checkpoints. mmdet is imported only here, and only
when a detector is built.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import timm
from lightning_utilities.core.imports import RequirementCache
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from bench.errors import ConfigError, unknown_name_message
from bench.measure import profile_model
from bench.recipes import BatchPlan
from bench.schema import TrainingRecipe
from bench.tasks import Metric, TaskResult, TaskSpec
from tasks.detection import configs
from tasks.detection.data import DetectionData, DetectionDataConfig
from tasks.training import TrainingJob, check_finite, configure_optimizers, train_and_test

DEFAULT_DETECTOR = "retinanet"
DEFAULT_UPSAMPLER = "nearest"
"""The stock upsampling of the FPN's top-down path and of ThunderNet's CEM."""
METRICS = {"mAP": "map", "mAP50": "map_50", "mAP75": "map_75", "mAP_small": "map_small",
           "mAP_medium": "map_medium", "mAP_large": "map_large", "mAR100": "mar_100"}
"""Record metric name -> torchmetrics MeanAveragePrecision key (COCO protocol)."""
PER_DETECTOR_KEYS = ("default_backbone", "fpn_channels", "head_convs", "min_size", "max_size", "train_sizes",
                     "anchor_scales", "separable_mid_channels")
"""Recipe keys a recipe may leave null and set per detector (``detectors.<name>.<key>``)."""
REQUIRED_KEYS = ("min_size", "max_size")
"""Recipe keys every detector needs a value of, from the recipe or its section."""


@dataclass
class DetectionTaskConfig:
    """Object detection with an mmdet detector around one of our backbones."""

    name: str = "detection"
    profile_batch: int = 2


@dataclass
class DetectionRecipe(TrainingRecipe):
    """A detection protocol: model widths, input sizes and augmentation beside the shared schedule; a key of
    `PER_DETECTOR_KEYS` left null takes its value from ``detectors.<detector>`` (one recipe, several detectors)."""

    default_backbone: Optional[str] = "resnet18"
    fpn_channels: Optional[int] = 256
    head_convs: Optional[int] = 4
    grad_clip: Optional[float] = None
    min_size: Optional[int] = 800
    max_size: Optional[int] = 1333
    keep_ratio: bool = True
    """Resize keeping the aspect ratio (shorter side ``min_size``, longer at most ``max_size``); false: to a
    ``min_size`` square (ThunderNet's 320x320)."""
    train_sizes: Optional[list[int]] = None
    """Multi-scale training: each training image is resized to one of these, at random (null: ``min_size``)."""
    ssd_augment: bool = False
    """SSD's photometric distortion, zoom-out (x1-4) and min-IoU random crop before resizing (ThunderNet's training)."""
    anchor_scales: Optional[list[float]] = None
    """RPN anchor scales (x the stride, 16) of ThunderNet and Light-Head R-CNN; null: theirs (2-32, 32-512 px)."""
    separable_mid_channels: Optional[int] = None
    """Light-Head R-CNN's C_mid; null: its config's 256 (the paper's large setting; 64 is the small one)."""
    detectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-detector values of the keys this recipe leaves null: ``thundernet: {min_size: 160}``."""


@dataclass
class DetectionKeys:
    """Top-level keys only detection accepts."""

    detector: Optional[str] = None  # retinanet (None), faster_rcnn, thundernet or light_head_rcnn (configs/)


@dataclass(frozen=True)
class Levels:
    """The backbone levels a detector's neck takes: timm feature indices, their channels and strides."""

    indices: list[int]
    channels: list[int]
    strides: list[int]


def require_mmdet() -> None:
    """Raise a :class:`ConfigError` with the install command if mmdet (an optional extra) is missing."""
    missing = [str(req) for req in (RequirementCache("mmdet>=3.3"), RequirementCache("mmcv>=2.0")) if not req]
    if missing:
        raise ConfigError(f"task=detection needs mmdet 3.3 and mmcv 2 with ops, which are not installed "
                          f"({'; '.join(missing)}). Install them with `make install` (or see README, Detection).")


def detector_name(cfg: DictConfig) -> str:
    """The detector ``cfg`` asks for (``detector=``, default RetinaNet); an unknown one is a :class:`ConfigError`."""
    name = cfg.detector or DEFAULT_DETECTOR
    if name not in configs.detector_names():
        raise ConfigError(unknown_name_message("detector", name, configs.detector_names()))
    return name


def detector_recipe(cfg: DictConfig) -> DictConfig:
    """``cfg.recipe`` with each key it leaves null taken from its ``detectors.<detector>`` section.

    A value set in the recipe (or on the command line) wins over the section's; a section of an unknown
    detector, a key that cannot be set per detector, or a needed key left without a value is a
    :class:`ConfigError`.
    """
    name, recipe = detector_name(cfg), copy.deepcopy(cfg.recipe)
    for section, values in recipe.detectors.items():
        if section not in configs.detector_names():
            why = unknown_name_message("detector", section, configs.detector_names())
            raise ConfigError(f"recipe={recipe.name}, section detectors.{section}: {why}")
        if unknown := sorted(set(values) - set(PER_DETECTOR_KEYS)):
            raise ConfigError(f"recipe={recipe.name}: detectors.{section} sets {', '.join(unknown)}; a detector's "
                              f"section takes {', '.join(PER_DETECTOR_KEYS)} (the schedule is the recipe's).")
    for key, value in (recipe.detectors.get(name) or {}).items():
        if recipe[key] is None:
            recipe[key] = value
    if missing := [key for key in REQUIRED_KEYS if recipe[key] is None]:
        raise ConfigError(f"recipe={recipe.name} gives detector={name} no {' or '.join(missing)}: set recipe.KEY, or "
                          f"recipe.detectors.{name}.KEY, for {', '.join(missing)}.")
    return recipe


def with_detector_recipe(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose recipe is the detector's (`detector_recipe`), for its data, model and profile."""
    resolved = copy.deepcopy(cfg)
    resolved.recipe = detector_recipe(cfg)
    return resolved


def backbone_levels(backbone: str, detector: str, wanted: Mapping[str, Any]) -> Levels:
    """The backbone levels ``wanted`` names, each the last feature map at its stride (SNet49's conv5 at 32):
    ``last=n``, the last n strides, or ``strides=[...]``; a backbone without them is a :class:`ConfigError`."""
    from backbones import model_name

    info = timm.create_model(model_name(backbone)).feature_info  # every level, a conv5 past the stages included
    last_at = {level["reduction"]: i for i, level in enumerate(info)}
    strides = sorted(last_at)[-wanted["last"]:] if "last" in wanted else list(wanted["strides"])
    if len(strides) < wanted.get("last", 0) or any(s not in last_at for s in strides):
        need = f"the last {wanted['last']} strides" if "last" in wanted else f"strides {strides}"
        raise ConfigError(f"detector={detector} takes backbone feature maps at {need}; backbone={backbone} has them at "
                          f"strides {sorted(last_at)}. Choose another backbone (`bench list backbones`).")
    indices = [last_at[s] for s in strides]
    return Levels(indices, [info[i]["num_chs"] for i in indices], strides)


def pyramid_strides(level_strides: list[int], neck: Mapping[str, Any]) -> list[int]:
    """Strides of the neck's outputs: the levels it uses (from ``start_level``), then extra outputs halving again."""
    used = level_strides[neck.get("start_level", 0):]
    extra = neck.get("num_outs", len(used)) - len(used)
    return used + [used[-1] * 2 ** (i + 1) for i in range(extra)]


def run_value(values: Mapping[str, Any], name: str) -> Any:
    """The run value ``name`` of a detector config's ``run_values``: keys and list indices joined by dots."""
    value: Any = values
    try:
        for part in name.split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"a detector config's run_values names {name!r}, which is not a run value "
                         f"({', '.join(values)}, recipe.<key>)") from None
    return value


def has_upsampling(detector: str) -> bool:
    """Whether ``detector``'s neck has an upsample slot (its config sets ``upsampler``)."""
    return "upsampler" in configs.load(detector).run_values.values()


def detector_config(cfg: DictConfig, backbone: str, upsampler: str | None, num_classes: int) -> dict[str, Any]:
    """mmdet's model config of ``cfg``'s detector (`configs`) with our backbone and the run's values in its keys."""
    name, recipe = detector_name(cfg), detector_recipe(cfg)
    spec = configs.load(name)
    levels = backbone_levels(backbone, name, spec.levels)
    values = {"num_classes": num_classes, "level_channels": levels.channels, "level_strides": levels.strides,
              "pyramid_strides": pyramid_strides(levels.strides, spec.model.neck), "upsampler": upsampler,
              "upsampler_kwargs": OmegaConf.to_container(cfg.upsampler_kwargs, resolve=True),
              "recipe": OmegaConf.to_container(recipe, resolve=True)}
    options: dict[str, Any] = {
        "model.backbone": {"type": "BenchBackbone", "name": backbone, "op": cfg.op,
                           "op_kwargs": OmegaConf.to_container(cfg.op_kwargs, resolve=True),
                           "out_indices": levels.indices, "channels_last": bool(cfg.trainer.channels_last)},
        "model.neck.in_channels": levels.channels}
    for key, value_name in spec.run_values.items():
        if (value := run_value(values, value_name)) is not None:  # None leaves the config's own value
            options[key] = value
    spec.merge_from_dict(options)
    return spec.model.to_dict()


def build_detector(model_cfg: dict[str, Any]) -> nn.Module:
    """Build (and initialise, as mmdet's runner would) the detector of an mmdet model config."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger

    import tasks.detection.light_head  # registers the light-head detectors' necks, RPN head and RoI extractor
    import tasks.detection.models  # noqa: F401  registers BenchBackbone and OpFPN

    register_all_modules(init_default_scope=True)
    MMLogger.get_current_instance().setLevel("WARNING")  # init_weights logs every parameter at INFO
    detector = MODELS.build(ConfigDict(copy.deepcopy(model_cfg)))  # mmdet reads cfg.attr
    detector.init_weights()
    return detector


def to_mmdet(batch: dict[str, list[Any]]) -> dict[str, Any]:
    """Our batch (images, XYXY boxes, labels) as the ``inputs`` / ``data_samples`` an mmdet preprocessor takes."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for image, boxes, labels, image_id, (h0, w0) in zip(batch["image"], batch["boxes"], batch["labels"],
                                                        batch["image_id"], batch["orig_size"]):
        h, w = image.shape[-2:]
        sample = DetDataSample(metainfo={"img_id": image_id, "img_shape": (h, w), "ori_shape": (h0, w0),
                                         "scale_factor": (w / w0, h / h0)})
        sample.gt_instances = InstanceData(bboxes=boxes.as_subclass(Tensor).float(), labels=labels)
        samples.append(sample)
    return {"inputs": [image.as_subclass(Tensor) for image in batch["image"]], "data_samples": samples}


class DetectionModule(L.LightningModule):
    """Trains an mmdet detector with its own losses; tests with COCO mAP on the original image scale."""

    def __init__(self, detector: nn.Module, recipe: DictConfig, plan: BatchPlan) -> None:
        super().__init__()
        self.detector, self.recipe, self.plan = detector, recipe, plan
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox")

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> Tensor:
        data = self.detector.data_preprocessor(to_mmdet(batch), True)
        loss, parts = self.detector.parse_losses(self.detector(**data, mode="loss"))
        check_finite(loss, self.global_step)
        self.log_dict({name: value for name, value in parts.items() if name != "loss"}, batch_size=len(batch["image"]))
        self.log("train_loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        data = self.detector.data_preprocessor(to_mmdet(batch), False)
        results = self.detector(**data, mode="predict")  # boxes rescaled to the original image
        preds = [{"boxes": r.pred_instances.bboxes, "scores": r.pred_instances.scores,
                  "labels": r.pred_instances.labels} for r in results]
        targets = [{"boxes": boxes.as_subclass(Tensor) / boxes.new_tensor(s.scale_factor).repeat(2),
                    "labels": labels, "iscrowd": crowd.long()}
                   for boxes, labels, crowd, s in zip(batch["boxes"], batch["labels"], batch["iscrowd"],
                                                     data["data_samples"])]
        self.test_map.update(preds, targets)

    def on_test_epoch_end(self) -> None:
        scores = self.test_map.compute()
        self.log_dict({f"test_{name}": scores[key].float() for name, key in METRICS.items()}, sync_dist=False)
        self.test_map.reset()

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.recipe, self.plan.lr)


class FeatureExtractor(nn.Module):
    """Backbone + neck of a detector as one image -> feature-maps module, for profiling."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.neck = detector.backbone, detector.neck

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.neck(self.backbone(x))


def run(cfg: DictConfig, run_dir: str) -> TaskResult:
    """Train, test (COCO mAP) and profile backbone + neck of the detector ``cfg`` describes."""
    require_mmdet()
    kind, resolved = detector_name(cfg), with_detector_recipe(cfg)
    backbone = cfg.backbone or resolved.recipe.default_backbone
    upsampler = (cfg.upsampler or DEFAULT_UPSAMPLER) if has_upsampling(kind) else None

    def build(plan: BatchPlan) -> TrainingJob:
        data = DetectionData(resolved, plan.per_device_batch)
        model_cfg = detector_config(resolved, backbone, upsampler, len(data.class_names))
        detector = build_detector(model_cfg)

        def profile() -> dict[str, Any]:
            efficiency = profile_model(FeatureExtractor(detector), int(resolved.recipe.min_size),
                                       cfg.task.profile_batch, channels_last=bool(cfg.trainer.channels_last))
            return {**efficiency, "params": sum(p.numel() for p in detector.parameters()),
                    "scope": "params: whole detector; MACs, latency: backbone + neck at min_size x min_size"}

        return TrainingJob(DetectionModule(detector, cfg.recipe, plan), data, profile, backbone=backbone,
                           op_metadata={**detector.backbone.op_metadata,
                                        **getattr(detector.neck, "upsample_metadata", {})},
                           gradient_clip_val=cfg.recipe.grad_clip,
                           fields={"upsampler": upsampler, "detector": kind, "mmdet_config": model_cfg})

    return train_and_test(cfg, run_dir, build)


def validate(cfg: DictConfig) -> None:
    """Reported before any data is generated: an unknown detector, a recipe without the detector's values, a
    non-positive anchor scale, a backbone without the detector's levels, an upsampler where nothing upsamples."""
    name, recipe = detector_name(cfg), detector_recipe(cfg)
    if recipe.anchor_scales is not None and min(recipe.anchor_scales, default=0) <= 0:
        raise ConfigError(f"recipe.anchor_scales={list(recipe.anchor_scales)}: give one or more positive scales.")
    backbone = cfg.backbone or recipe.default_backbone
    if not backbone:
        raise ConfigError(f"recipe={recipe.name} names no default backbone for detector={name}: set backbone=.")
    require_mmdet()
    backbone_levels(backbone, name, configs.load(name).levels)
    if cfg.upsampler and not has_upsampling(name):
        raise ConfigError(f"upsampler={cfg.upsampler}: detector={name} has no upsampling to swap (its neck in "
                          f"configs/{name}.py has no upsample slot); drop upsampler=.")


TASK = TaskSpec(
    name="detection",
    description="object detection: an mmdet RetinaNet, Faster R-CNN + FPN, ThunderNet or Light-Head R-CNN around a "
                "backbone with the operator",
    run=run,
    metrics=tuple(Metric(name, unit="%", scale=100, floor=0.0, description=f"COCO {name} (torchmetrics)")
                  for name in METRICS),
    primary="mAP",
    config_dir=Path(__file__).parent / "conf",
    task_schema=DetectionTaskConfig,
    data_schema=DetectionDataConfig,
    recipe_schema=DetectionRecipe,
    keys=DetectionKeys,
    upsample_slots=True,
    defaults={"data": "shapes", "recipe": "quick"},
    baseline={"op": "conv", "upsampler": DEFAULT_UPSAMPLER},
    model_keys=("detector",),
    default_model="retinanet + the recipe's default backbone for the detector (quick: resnet18, snet146 for "
                  "thundernet; coco_1x: resnet50)",
    profiled="params: the whole detector; MACs and latency: backbone + neck at recipe.min_size squared (ThunderNet's "
             "neck includes its RPN's shared conv and SAM, Light-Head R-CNN's the large separable conv)",
    ranges={"task.profile_batch": (1, None), "recipe.fpn_channels": (1, None), "recipe.head_convs": (0, None),
            "recipe.min_size": (1, None), "recipe.max_size": (1, None), "recipe.grad_clip": (0, None),
            "recipe.separable_mid_channels": (1, None)},
    validate=validate,
)

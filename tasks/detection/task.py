"""Object detection: real mmdet 3 detectors (RetinaNet or Faster R-CNN + FPN) trained by Lightning.

`bench run task=detection op=ddf upsampler=ddf_up` builds the detector from mmdet's own model-zoo
config, replacing its backbone by one of ours (operator in its slots) and its FPN by ours (any
registered upsampler top-down), trains it on a recipe and reports COCO mAP (torchmetrics) on the test
split. The LightningModule calls the detector's ``data_preprocessor`` and its ``loss`` / ``predict``
modes; Lightning owns the loop, devices, precision, DDP and checkpoints. mmdet is imported only here,
and only when a detector is built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
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
from tasks.detection.data import DetectionData, DetectionDataConfig
from tasks.training import TrainingJob, check_finite, configure_optimizers, train_and_test

BASE_CONFIGS = {"retinanet": "retinanet_r50_fpn.py", "faster_rcnn": "faster-rcnn_r50_fpn.py"}
"""mmdet's model-zoo configs each detector starts from (shipped inside the mmdet package)."""
DEFAULT_DETECTOR = "retinanet"
DEFAULT_UPSAMPLER = "nearest"
"""The stock FPN's top-down upsampling."""
METRICS = {"mAP": "map", "mAP50": "map_50", "mAP75": "map_75", "mAP_small": "map_small",
           "mAP_medium": "map_medium", "mAP_large": "map_large", "mAR100": "mar_100"}
"""Record metric name -> torchmetrics MeanAveragePrecision key (COCO protocol)."""
FPN_LEVELS = 4
"""Backbone levels handed to the FPN: the last four feature maps (C2-C5 of a ResNet)."""


@dataclass
class DetectionTaskConfig:
    """Object detection with an mmdet detector around one of our backbones."""

    name: str = "detection"
    profile_batch: int = 2


@dataclass
class DetectionRecipe(TrainingRecipe):
    """A detection protocol: model widths, gradient clipping and resize bounds beside the shared schedule."""

    default_backbone: str = "resnet18"
    fpn_channels: int = 256
    head_convs: int = 4
    grad_clip: Optional[float] = None
    min_size: int = 800
    max_size: int = 1333


@dataclass
class DetectionKeys:
    """Top-level keys only detection accepts."""

    detector: Optional[str] = None  # retinanet (None) or faster_rcnn


def require_mmdet() -> None:
    """Raise a :class:`ConfigError` with the install command if mmdet (an optional extra) is missing."""
    missing = [str(req) for req in (RequirementCache("mmdet>=3.3"), RequirementCache("mmcv>=2.0")) if not req]
    if missing:
        raise ConfigError(f"task=detection needs mmdet 3.3 and mmcv 2 with ops, which are not installed "
                          f"({'; '.join(missing)}). Install them with `make install` (or see README, Detection).")


def backbone_levels(backbone: str) -> tuple[list[int], list[int], list[int]]:
    """Feature indices, channels and strides of the backbone levels the FPN uses."""
    from backbones import model_name

    info = timm.create_model(model_name(backbone), features_only=True).feature_info
    indices = list(range(len(info.channels())))[-FPN_LEVELS:]
    return indices, [info.channels()[i] for i in indices], [info.reduction()[i] for i in indices]


def detector_name(cfg: DictConfig) -> str:
    """The detector ``cfg`` asks for (``detector=``, default RetinaNet); an unknown one is a :class:`ConfigError`."""
    name = cfg.detector or DEFAULT_DETECTOR
    if name not in BASE_CONFIGS:
        raise ConfigError(unknown_name_message("detector", name, list(BASE_CONFIGS)))
    return name


def detector_config(cfg: DictConfig, backbone: str, upsampler: str, num_classes: int) -> dict[str, Any]:
    """mmdet's model config for ``cfg.detector`` with our backbone, our FPN and the recipe's sizes."""
    import mmdet
    from mmengine.config import Config

    detector, r = detector_name(cfg), cfg.recipe
    base = Path(mmdet.__file__).parent / ".mim" / "configs" / "_base_" / "models" / BASE_CONFIGS[detector]
    model = copy.deepcopy(Config.fromfile(str(base)).model.to_dict())
    indices, channels, strides = backbone_levels(backbone)
    width = int(r.fpn_channels)
    model["data_preprocessor"]["bgr_to_rgb"] = False  # our loaders give RGB; mean/std are already in RGB order
    model["backbone"] = {"type": "BenchBackbone", "name": backbone, "op": cfg.op,
                         "op_kwargs": OmegaConf.to_container(cfg.op_kwargs, resolve=True), "out_indices": indices,
                         "channels_last": bool(cfg.trainer.channels_last)}
    neck = model["neck"]
    neck.update(type="OpFPN", in_channels=channels, out_channels=width, upsampler=upsampler,
                upsampler_kwargs=OmegaConf.to_container(cfg.upsampler_kwargs, resolve=True))
    start = neck.get("start_level", 0)
    levels = [strides[start] * 2**i for i in range(neck["num_outs"])]  # extra levels halve again
    if detector == "retinanet":
        head = model["bbox_head"]
        head.update(num_classes=num_classes, in_channels=width, feat_channels=width, stacked_convs=int(r.head_convs))
        head["anchor_generator"]["strides"] = levels
    else:
        model["rpn_head"].update(in_channels=width, feat_channels=width)
        model["rpn_head"]["anchor_generator"]["strides"] = levels
        roi = model["roi_head"]
        roi["bbox_roi_extractor"].update(out_channels=width, featmap_strides=levels[:FPN_LEVELS])
        roi["bbox_head"].update(in_channels=width, num_classes=num_classes)
    return model


def build_detector(model_cfg: dict[str, Any]) -> nn.Module:
    """Build (and initialise, as mmdet's runner would) the detector of an mmdet model config."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import ConfigDict
    from mmengine.logging import MMLogger

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
    """Backbone + FPN of a detector as one image -> feature-maps module, for profiling."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.backbone, self.neck = detector.backbone, detector.neck

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.neck(self.backbone(x))


def run(cfg: DictConfig, run_dir: str) -> TaskResult:
    """Train, test (COCO mAP) and profile backbone + FPN of the detector ``cfg`` describes."""
    require_mmdet()
    kind = detector_name(cfg)
    backbone, upsampler = cfg.backbone or cfg.recipe.default_backbone, cfg.upsampler or DEFAULT_UPSAMPLER

    def build(plan: BatchPlan) -> TrainingJob:
        data = DetectionData(cfg, plan.per_device_batch)
        model_cfg = detector_config(cfg, backbone, upsampler, len(data.class_names))
        detector = build_detector(model_cfg)

        def profile() -> dict[str, Any]:
            efficiency = profile_model(FeatureExtractor(detector), int(cfg.recipe.min_size), cfg.task.profile_batch,
                                       channels_last=bool(cfg.trainer.channels_last))
            return {**efficiency, "params": sum(p.numel() for p in detector.parameters()),
                    "scope": "params: whole detector; MACs, latency: backbone + FPN at min_size x min_size"}

        return TrainingJob(DetectionModule(detector, cfg.recipe, plan), data, profile, backbone=backbone,
                           op_metadata={**detector.backbone.op_metadata, **detector.neck.upsample_metadata},
                           gradient_clip_val=cfg.recipe.grad_clip,
                           fields={"upsampler": upsampler, "detector": kind, "mmdet_config": model_cfg})

    return train_and_test(cfg, run_dir, build)


def validate(cfg: DictConfig) -> None:
    """An unknown detector is a config mistake, reported before any data is generated."""
    detector_name(cfg)


TASK = TaskSpec(
    name="detection",
    description="object detection: an mmdet RetinaNet or Faster R-CNN + FPN around a backbone with the operator",
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
    default_model="retinanet + recipe.default_backbone (resnet18 in quick, resnet50 in coco_1x)",
    profiled="params: the whole detector; MACs and latency: backbone + FPN at recipe.min_size squared",
    ranges={"task.profile_batch": (1, None), "recipe.fpn_channels": (1, None), "recipe.head_convs": (0, None),
            "recipe.min_size": (1, None), "recipe.max_size": (1, None), "recipe.grad_clip": (0, None)},
    validate=validate,
)

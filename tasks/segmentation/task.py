"""Semantic segmentation: BiSeNetV1 or DFANet with the operator in their backbones and the upsampler in their decoders.

`bench run task=segmentation op=ddf upsampler=ddf_up` trains ``model`` (default BiSeNetV1 on ResNet-18)
with OHEM cross-entropy (plus its auxiliary heads), validates mIoU every epoch, reports mIoU, pixel
accuracy and per-class IoU (torchmetrics, at the label's full resolution, ignore index excluded) on the
test split, then profiles the whole network at the recipe's crop size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from timm.optim import param_groups_weight_decay
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from bench.errors import ConfigError, unknown_name_message
from bench.measure import profile_model
from bench.recipes import BatchPlan
from bench.schema import TrainingRecipe
from bench.tasks import Metric, PerModel, TaskResult, TaskSpec
from tasks.segmentation.data import SegmentationData, SegmentationDataConfig
from tasks.segmentation.models import MODELS, SegmentationNet
from tasks.training import TrainingJob, check_finite, configure_optimizers, train_and_test

DEFAULT_MODEL = next(iter(MODELS))
STOCK_UPSAMPLER = {"bisenetv1": "nearest", "dfanet": "bilinear"}
"""Each network's reference upsampling (CoinCheung/BiSeNet: nearest; DFANet: bilinear): its stock row."""


@dataclass
class SegmentationTaskConfig:
    """Semantic segmentation."""

    name: str = "segmentation"
    default_backbone: str = "resnet18"
    """BiSeNetV1's context path when ``backbone=null``; DFANet is built from xception_a."""
    profile_batch: int = 4
    """Throughput and train-step batch of the efficiency measurement; at least 2, since a BatchNorm on a
    pooled (or 1x1) map cannot train on one image."""


@dataclass
class SegmentationRecipe(TrainingRecipe):
    """A segmentation protocol: crops, multi-scale augmentation, OHEM and the reference's parameter groups."""

    crop_size: int = 64
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """Random rescale of image and mask by a factor in this range before the crop."""
    ohem_keep: Optional[float] = 0.7
    """OHEM: keep pixels whose loss exceeds -log(ohem_keep) (at least 1/16 of the valid ones); None: plain CE."""
    aux_weight: float = 1.0
    head_lr_mult: float = 1.0
    """Learning-rate multiplier of the fusion and output heads (BiSeNet's reference: 10)."""
    no_decay_norm_bias: bool = True
    """No weight decay on norm weights and biases (BiSeNet's reference)."""


@dataclass
class SegmentationKeys:
    """Top-level keys only segmentation accepts."""

    model: Optional[str] = None  # bisenetv1 (None) or dfanet


OHEM_MIN_FRACTION = 16
"""OHEM keeps at least 1/16 of the valid pixels (BiSeNet's reference)."""


def ohem_cross_entropy(logits: Tensor, target: Tensor, ignore_index: int, keep: float | None) -> Tensor:
    """Cross-entropy over the hard pixels: those with loss above -log(``keep``), or the n/16 hardest if fewer.

    ``keep=None`` is the plain mean over valid pixels. Ignored pixels never count.
    """
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    valid = int((target != ignore_index).sum())
    if valid == 0:
        return loss.sum() * 0.0
    if keep is None:
        return loss.sum() / valid
    hard = loss[loss > -math.log(keep)]
    n_min = valid // OHEM_MIN_FRACTION
    if hard.numel() < n_min:
        hard = loss.topk(n_min).values
    return hard.mean() if hard.numel() else loss.sum() * 0.0


def parameter_groups(model: SegmentationNet, recipe: DictConfig, lr: float) -> list[dict[str, Any]]:
    """timm's decay / no-decay split (norms and biases undecayed if the recipe says so), each split again into
    body and heads, the heads at ``head_lr_mult`` x lr."""
    heads = {id(p) for m in model.head_modules() for p in m.parameters()}
    decay = float(recipe.weight_decay)
    split = (param_groups_weight_decay(model, decay) if recipe.no_decay_norm_bias else
             [{"params": list(model.parameters()), "weight_decay": decay}])
    groups = []
    for group in split:
        for is_head, mult in ((False, 1.0), (True, float(recipe.head_lr_mult))):
            params = [p for p in group["params"] if (id(p) in heads) == is_head]
            if params:
                groups.append({"params": params, "weight_decay": group["weight_decay"], "lr": lr * mult})
    return groups


class SegmentationModule(L.LightningModule):
    """OHEM training of ``model`` (main plus weighted auxiliary heads); mIoU and pixel accuracy in evaluation."""

    def __init__(self, model: SegmentationNet, class_names: list[str], ignore_index: int, recipe: DictConfig,
                 plan: BatchPlan, channels_last: bool = True) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model, self.recipe, self.plan = model.to(memory_format=self.memory_format), recipe, plan
        self.class_names, self.ignore_index = class_names, ignore_index
        classes = len(class_names)
        self.metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            self.metrics[f"{stage}_mIoU"] = MulticlassJaccardIndex(classes, ignore_index=ignore_index, average="macro")
            self.metrics[f"{stage}_pixel_acc"] = MulticlassAccuracy(classes, ignore_index=ignore_index,
                                                                    average="micro")
        self.per_class = MulticlassJaccardIndex(classes, ignore_index=ignore_index, average="none")
        self.class_iou: dict[str, float] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def _loss(self, logits: Tensor, mask: Tensor) -> Tensor:
        return ohem_cross_entropy(logits, mask, self.ignore_index, self.recipe.ohem_keep)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits, aux = self(batch["image"])
        main = self._loss(logits, batch["mask"])
        loss = main + self.recipe.aux_weight * sum((self._loss(a, batch["mask"]) for a in aux), torch.zeros(()))
        check_finite(loss, self.global_step)
        self.log("train_loss", loss, prog_bar=True)
        if aux:
            self.log("train_main_loss", main)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        logits, mask = self(batch["image"]), batch["mask"]
        if logits.shape[-2:] != mask.shape[-2:]:  # scored at the label's full resolution
            logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        preds = logits.argmax(1)
        for name in ("mIoU", "pixel_acc"):
            metric = self.metrics[f"{stage}_{name}"]
            metric.update(preds, mask)
            self.log(f"{stage}_{name}", metric, prog_bar=stage == "val" and name == "mIoU")
        if stage == "test":
            self.per_class.update(preds, mask)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.class_iou = {name: float(v) for name, v in zip(self.class_names, self.per_class.compute())}
        self.per_class.reset()

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.recipe, self.plan.lr,
                                    parameter_groups(self.model, self.recipe, self.plan.lr))


class Logits(nn.Module):
    """The network as an image -> logits module in both modes, for profiling."""

    def __init__(self, net: SegmentationNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out


def model_name(cfg: DictConfig) -> str:
    """The network ``cfg`` asks for (``model=``, default BiSeNetV1); an unknown one is a :class:`ConfigError`."""
    name = cfg.model or DEFAULT_MODEL
    if name not in MODELS:
        raise ConfigError(unknown_name_message("segmentation model", name, list(MODELS)))
    return name


def build_model(cfg: DictConfig, num_classes: int) -> tuple[SegmentationNet, str | None, str]:
    """The network, its backbone's name and its upsampler, from the config."""
    name = model_name(cfg)
    upsampler = cfg.upsampler or STOCK_UPSAMPLER[name]
    common = {"op": cfg.op, "op_kwargs": OmegaConf.to_container(cfg.op_kwargs, resolve=True), "upsampler": upsampler,
              "upsampler_kwargs": OmegaConf.to_container(cfg.upsampler_kwargs, resolve=True)}
    if name == "dfanet":
        return MODELS[name](num_classes, **common), "xception_a", upsampler
    backbone = cfg.backbone or cfg.task.default_backbone
    return MODELS[name](num_classes, backbone=backbone, **common), backbone, upsampler


def run(cfg: DictConfig, run_dir: str) -> TaskResult:
    """Train, test and profile the segmentation network ``cfg`` describes."""
    name = model_name(cfg)
    built: list[SegmentationModule] = []

    def build(plan: BatchPlan) -> TrainingJob:
        data = SegmentationData(cfg, plan.per_device_batch)
        model, backbone, upsampler = build_model(cfg, len(data.class_names))
        module = SegmentationModule(model, data.class_names, int(cfg.data.ignore_index), cfg.recipe, plan,
                                    cfg.trainer.channels_last)
        built.append(module)

        def profile() -> dict[str, Any]:
            efficiency = profile_model(Logits(model), int(cfg.recipe.crop_size), cfg.task.profile_batch,
                                       channels_last=bool(cfg.trainer.channels_last))
            return {**efficiency, "scope": "the whole network (auxiliary heads excluded) at crop_size x crop_size"}

        return TrainingJob(module, data, profile, backbone=backbone, op_metadata=model.op_metadata,
                           fields={"model": name, "upsampler": upsampler})

    result = train_and_test(cfg, run_dir, build, validation_metric="val_mIoU")
    result.fields["class_iou"] = built[-1].class_iou  # per-class test IoU, kept in the record
    return result


def validate(cfg: DictConfig) -> None:
    """An unknown model, or a backbone DFANet cannot take, is a config mistake reported before any data is made."""
    name = model_name(cfg)
    if name == "dfanet" and cfg.backbone not in (None, "xception_a"):
        raise ConfigError(f"model=dfanet is built from three xception_a backbones; backbone={cfg.backbone} cannot be "
                          "used (drop backbone=, or use model=bisenetv1 for another backbone).")
    low, high = cfg.recipe.scale_range
    if not 0 < low <= high:
        raise ConfigError(f"recipe.scale_range={list(cfg.recipe.scale_range)}: give [low, high] with 0 < low <= high.")
    if cfg.recipe.ohem_keep is not None and not 0 < cfg.recipe.ohem_keep < 1:
        raise ConfigError(f"recipe.ohem_keep={cfg.recipe.ohem_keep}: a probability strictly between 0 and 1 "
                          "(or null for plain cross-entropy).")


TASK = TaskSpec(
    name="segmentation",
    description="semantic segmentation: BiSeNetV1 or DFANet, the operator in the backbone, the upsampler in the decoder",
    run=run,
    metrics=(Metric("mIoU", unit="%", scale=100, description="test mean IoU over the classes present (torchmetrics)"),
             Metric("pixel_acc", unit="%", scale=100, description="test pixel accuracy"),
             Metric("val_mIoU", unit="%", scale=100, description="validation mIoU after the last epoch")),
    primary="mIoU",
    config_dir=Path(__file__).parent / "conf",
    task_schema=SegmentationTaskConfig,
    data_schema=SegmentationDataConfig,
    recipe_schema=SegmentationRecipe,
    keys=SegmentationKeys,
    upsample_slots=True,
    defaults={"data": "shapes", "recipe": "quick"},
    baseline={"op": "conv", "upsampler": PerModel("model", STOCK_UPSAMPLER)},
    model_keys=("model",),
    default_model="bisenetv1 + task.default_backbone (resnet18)",
    profiled="the whole network (auxiliary heads excluded) at recipe.crop_size squared",
    ranges={"task.profile_batch": (2, None), "recipe.crop_size": (1, None), "recipe.aux_weight": (0, None),
            "recipe.head_lr_mult": (0, None), "data.num_classes": (1, 255), "data.ignore_index": (0, 255)},
    validate=validate,
)

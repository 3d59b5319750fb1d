"""Image classification: a timm backbone with the operator in its slots, trained by Lightning on a recipe.

`bench run task=classification op=ddf` trains on ``data.train`` for the recipe's fixed schedule,
reports top-1/top-5/loss on ``data.test`` (and top-1 on ``data.validation``), then profiles the trained
network. The LightningModule is thin: Lightning owns the loop, devices, precision, DDP and checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import lightning as L
import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from bench.measure import profile_model
from bench.recipes import BatchPlan
from bench.schema import TrainingRecipe
from bench.tasks import Metric, TaskResult, TaskSpec
from tasks.classification.data import ClassificationData, ClassificationDataConfig
from tasks.training import TrainingJob, check_finite, configure_optimizers, train_and_test


@dataclass
class ClassificationTaskConfig:
    """Image classification."""

    name: str = "classification"
    default_backbone: str = "resnet20"
    profile_batch: int = 32


@dataclass
class ClassificationRecipe(TrainingRecipe):
    """A classification protocol: the shared schedule plus label smoothing and crop augmentation."""

    label_smoothing: float = 0.0
    crop_padding: int = 0
    random_resized_crop: bool = False
    default_backbone: Optional[str] = None
    """The network the protocol is defined on, used when ``backbone=null`` (else the task's default)."""


class ClassificationModule(L.LightningModule):
    """Cross-entropy training of ``model`` with the recipe's optimizer and per-step schedule."""

    def __init__(self, model: nn.Module, classes: int, recipe: DictConfig, plan: BatchPlan,
                 channels_last: bool = True) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model, self.recipe, self.plan = model.to(memory_format=self.memory_format), recipe, plan
        self.metrics = nn.ModuleDict({f"{stage}_top{k}": MulticlassAccuracy(classes, top_k=min(k, classes))
                                      for stage in ("val", "test") for k in (1, 5)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=self.memory_format))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["image"]), batch["label"], label_smoothing=self.recipe.label_smoothing)
        check_finite(loss, self.global_step)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict, stage: str) -> None:
        logits = self(batch["image"])
        self.log(f"{stage}_loss", F.cross_entropy(logits, batch["label"]), sync_dist=True, prog_bar=stage == "val")
        for k in (1, 5):
            metric = self.metrics[f"{stage}_top{k}"]
            metric.update(logits, batch["label"])
            self.log(f"{stage}_top{k}", metric, prog_bar=stage == "val" and k == 1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.recipe, self.plan.lr)


def run(cfg: DictConfig, run_dir: str) -> TaskResult:
    """Train, test and profile the backbone with ``cfg.op`` in its slots."""
    from backbones import model_name

    backbone = cfg.backbone or cfg.recipe.default_backbone or cfg.task.default_backbone

    def build(plan: BatchPlan) -> TrainingJob:
        data = ClassificationData(cfg, plan.per_device_batch)
        model = timm.create_model(model_name(backbone), op=cfg.op, num_classes=data.num_classes,
                                  op_kwargs=OmegaConf.to_container(cfg.op_kwargs, resolve=True))
        module = ClassificationModule(model, data.num_classes, cfg.recipe, plan, cfg.trainer.channels_last)
        return TrainingJob(module, data, lambda: profile_model(model, int(cfg.data.image_size), cfg.task.profile_batch),
                           backbone=backbone, op_metadata=getattr(model, "op_metadata", {}))

    return train_and_test(cfg, run_dir, build, validation_metric="val_top1")


TASK = TaskSpec(
    name="classification",
    description="image classification: a backbone with the operator in its slots, trained on a recipe",
    run=run,
    metrics=(Metric("top1", unit="%", scale=100, description="test top-1 accuracy"),
             Metric("top5", unit="%", scale=100, description="test top-5 accuracy"),
             Metric("loss", higher_is_better=False, description="test cross-entropy"),
             Metric("val_top1", unit="%", scale=100, description="validation top-1 after the last epoch")),
    primary="top1",
    config_dir=Path(__file__).parent / "conf",
    task_schema=ClassificationTaskConfig,
    data_schema=ClassificationDataConfig,
    recipe_schema=ClassificationRecipe,
    defaults={"data": "shapes", "recipe": "quick"},
    default_model="resnet20",
    profiled="the whole trained network at data.image_size",
    ranges={"task.profile_batch": (1, None), "recipe.label_smoothing": (0, 1), "recipe.crop_padding": (0, None)},
)

"""Image classification: a timm backbone with the operator in its slots, trained by Lightning on a recipe.

`bench run task=classification op=ddf` trains on ``data.train`` for the recipe's fixed schedule,
reports top-1/top-5/loss on ``data.test`` (and top-1 on ``data.validation``), then profiles the trained
network. The LightningModule is thin: Lightning owns the loop, devices, precision, DDP and checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy
from torchvision.transforms import v2

from bench.recipes import BatchPlan, plan_batches
from bench.results import hardware
from tasks import register_task
from tasks.data import load_classification, num_classes, with_transform
from tasks.training import build_optimizer, build_trainer, check_finite, fit


def image_transforms(data: DictConfig, recipe: DictConfig, train: bool) -> v2.Compose:
    """torchvision v2 pipeline: the recipe's augmentation for training, resize + centre crop for evaluation."""
    size = int(data.image_size)
    steps: list[Any] = [v2.PILToTensor()]
    if train and recipe.random_resized_crop:
        steps.append(v2.RandomResizedCrop(size, antialias=True))
    else:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        if train and recipe.crop_padding:
            steps.append(v2.RandomCrop(size, padding=int(recipe.crop_padding), padding_mode="reflect"))
    if train and recipe.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]
    return v2.Compose(steps)


class ClassificationData(L.LightningDataModule):
    """Train/validation/test loaders over a Hugging Face dataset with lazily applied transforms."""

    def __init__(self, cfg: DictConfig, per_device_batch: int) -> None:
        super().__init__()
        self.cfg, self.per_device_batch = cfg, per_device_batch
        self.splits = load_classification(cfg.data, cfg.seed)
        self.num_classes = num_classes(self.splits)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = with_transform(self.splits[split], image_transforms(self.cfg.data, self.cfg.recipe, train))
        workers = int(self.cfg.trainer.num_workers)
        return DataLoader(ds, batch_size=self.per_device_batch if train else int(self.cfg.recipe.eval_batch),
                          shuffle=train, drop_last=train, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


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
        r = self.recipe
        opt = build_optimizer(self.parameters(), r, self.plan.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = total / max(1, r.epochs)
        warmup = int(r.warmup_epochs * per_epoch)
        milestones = [int(m * per_epoch) for m in r.milestones]

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if r.schedule == "cosine":
                return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            return r.gamma ** sum(step >= m for m in milestones)

        schedule = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@register_task("classification")
def run(cfg: DictConfig, run_dir: str) -> dict[str, Any]:
    """Train, test and profile; returns metrics, efficiency and the batch plan."""
    from backbones import model_name
    from bench.measure import profile_model

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    probe = build_trainer(cfg, run_dir, progress=False)  # the world size decides the batch plan
    plan = plan_batches(cfg.recipe, probe.world_size)
    trainer = build_trainer(cfg, run_dir, accumulate=plan.accumulate)
    data = ClassificationData(cfg, plan.per_device_batch)
    backbone = cfg.backbone or cfg.task.default_backbone
    model = timm.create_model(model_name(backbone), op=cfg.op, num_classes=data.num_classes,
                              op_kwargs=OmegaConf.to_container(cfg.op_kwargs, resolve=True))
    module = ClassificationModule(model, data.num_classes, cfg.recipe, plan, cfg.trainer.channels_last)
    resumed_step = fit(cfg, run_dir, trainer, module, data)
    val = dict(trainer.callback_metrics)  # trainer.test replaces these
    (test,) = trainer.test(module, datamodule=data, verbose=False)
    metrics = {"top1": float(test["test_top1"]), "top5": float(test["test_top5"]), "loss": float(test["test_loss"]),
               "val_top1": float(val.get("val_top1", float("nan")))}
    efficiency = profile_model(model, int(data.cfg.data.image_size), cfg.task.profile_batch) if trainer.is_global_zero \
        else {}
    return {"metrics": metrics, "efficiency": efficiency, "backbone": backbone, "batch_plan": plan.to_dict(),
            "steps": int(trainer.global_step), "resumed_from_step": resumed_step, "world_size": trainer.world_size,
            "precision": str(trainer.precision), "op_metadata": getattr(model, "op_metadata", {}),
            "hardware": hardware(str(module.device))}

"""Training plumbing shared by the trained tasks: the Lightning Trainer of a config, resuming, divergence.

Tasks stay thin: each builds its LightningModule and data, then calls :func:`fit` here, so every task
checkpoints, resumes and reports interruptions and divergence the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint, RichProgressBar
from omegaconf import DictConfig

from bench.recipes import OPTIMIZERS


class DivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


def build_optimizer(params: Any, recipe: DictConfig, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer (SGD with momentum, Nesterov if the recipe says so, or AdamW) at ``lr``."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=bool(recipe.get("nesterov", False)),
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"recipe {recipe.name}: optimizer must be one of {OPTIMIZERS}, got {recipe.optimizer!r}")


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Raise :class:`DivergedError` if ``loss`` is NaN or infinite (the run is then recorded as diverged)."""
    if not torch.isfinite(loss):
        raise DivergedError(f"training loss is {loss.item()} at step {step}")


def build_trainer(cfg: DictConfig, run_dir: str, accumulate: int = 1, progress: bool = True,
                  gradient_clip_val: float | None = None) -> L.Trainer:
    """A Lightning Trainer for the config: devices/strategy from ``trainer``, schedule and precision from ``recipe``."""
    t, r = cfg.trainer, cfg.recipe
    # last.ckpt: overwritten every epoch and kept; interrupted.ckpt: written on Ctrl-C or a crash (Lightning
    # deletes it once a run completes). resume=true continues from the newer of the two.
    callbacks: list[Any] = [ModelCheckpoint(dirpath=run_dir, filename="last", save_top_k=1, enable_version_counter=False),
                            OnExceptionCheckpoint(run_dir, filename="interrupted")]
    if progress:
        callbacks.append(RichProgressBar())
    devices, nodes = cfg.devices or t.devices, cfg.num_nodes or t.num_nodes
    return L.Trainer(max_epochs=r.epochs, accelerator=t.accelerator, devices=devices, num_nodes=nodes,
                     strategy=t.strategy, precision=t.precision or r.precision, accumulate_grad_batches=accumulate,
                     gradient_clip_val=gradient_clip_val, callbacks=callbacks, logger=False,
                     enable_model_summary=False, default_root_dir=run_dir, enable_progress_bar=progress,
                     num_sanity_val_steps=0)


def fit(cfg: DictConfig, run_dir: str, trainer: L.Trainer, module: L.LightningModule,
        data: L.LightningDataModule) -> int | None:
    """Train, continuing from the run's newest checkpoint when ``resume=true``; returns the step resumed from."""
    saved = [p for p in (Path(run_dir) / "interrupted.ckpt", Path(run_dir) / "last.ckpt") if p.exists()]
    resume_from = str(max(saved, key=lambda p: p.stat().st_mtime)) if cfg.resume and saved else None
    resumed_step = torch.load(resume_from, map_location="cpu", weights_only=False)["global_step"] if resume_from \
        else None
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    except SystemExit:
        if trainer.interrupted:  # Lightning saved interrupted.ckpt (OnExceptionCheckpoint) and exits on Ctrl-C
            raise KeyboardInterrupt("training interrupted; rerun the same command with resume=true") from None
        raise
    return resumed_step

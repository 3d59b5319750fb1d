"""The trained-task skeleton every training task shares: batch plan, Trainer, fit/resume, test, profile, result.

A task supplies what is its own (a LightningModule, a LightningDataModule, how to profile the trained
model) through :func:`train_and_test`; everything else happens here, the same way for every task:
the world-size probe and batch plan, the Lightning Trainer with its checkpoints and CSV log, resuming,
divergence, the learning-curve summary, the test pass and the typed :class:`~bench.tasks.TaskResult`.
The one learning-rate schedule of every recipe is :func:`lr_factor`.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from bench.errors import ConfigError
from bench.recipes import OPTIMIZERS, BatchPlan, plan_batches
from bench.results import hardware
from bench.tasks import TaskResult

CHECKPOINTS = ("interrupted.ckpt", "last.ckpt")
"""Written in a run's ``checkpoints/`` folder: on Ctrl-C or a crash, and after every epoch."""
CURVE_POINTS = 50
"""About this many training-loss points per run are kept in the record (the CSV log keeps every logged step)."""


class DivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


def build_optimizer(params: Any, recipe: DictConfig, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer (SGD with momentum, Nesterov if the recipe says so, AdamW or Adam) at ``lr``."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=bool(recipe.nesterov),
                               weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adam":  # L2 decay added to the gradient, as torch.optim.Adam (SOD100K's optimiser)
        return torch.optim.Adam(params, lr=lr, betas=tuple(recipe.get("betas", (0.9, 0.999))),
                                weight_decay=recipe.weight_decay)
    raise ValueError(f"recipe {recipe.name}: optimizer must be one of {OPTIMIZERS}, got {recipe.optimizer!r}")


def lr_factor(recipe: DictConfig, step: int, total: int, per_epoch: float) -> float:
    """The recipe's learning-rate multiplier at optimizer step ``step`` of ``total`` (``per_epoch`` steps an epoch).

    Linear warm-up from ``warmup_ratio`` over ``warmup_iters`` steps or ``warmup_epochs`` epochs (as mmdet
    and timm: the ratio at step 0, 1 at the end), then ``cosine`` to 0, ``multistep`` (x ``gamma`` at each
    milestone epoch) or ``poly`` ((1 - progress) ** ``power``).
    """
    warmup = int(recipe.warmup_iters) or int(recipe.warmup_epochs * per_epoch)
    if step < warmup:
        return recipe.warmup_ratio + (1 - recipe.warmup_ratio) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if recipe.schedule == "poly":
        return max(0.0, 1 - progress) ** recipe.power
    if recipe.schedule == "multistep":
        return recipe.gamma ** sum(step >= int(m * per_epoch) for m in recipe.milestones)
    raise ValueError(f"recipe {recipe.name}: schedule must be cosine, multistep or poly, got {recipe.schedule!r}")


def configure_optimizers(module: L.LightningModule, recipe: DictConfig, lr: float, params: Any = None
                         ) -> dict[str, Any]:
    """What a LightningModule's ``configure_optimizers`` returns: the recipe's optimizer and per-step schedule.

    ``params`` (default: all of the module's) may be parameter groups with their own ``lr`` and ``weight_decay``;
    the schedule scales every group's learning rate alike.
    """
    opt = build_optimizer(module.parameters() if params is None else params, recipe, lr)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    per_epoch = total / max(1, int(recipe.epochs))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(recipe, step, total, per_epoch))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def check_finite(loss: torch.Tensor, step: int) -> None:
    """Raise :class:`DivergedError` if ``loss`` is NaN or infinite (the run is then recorded as diverged)."""
    if not torch.isfinite(loss):
        raise DivergedError(f"training loss is {loss.item()} at step {step}")


class LearningCurve(Callback):
    """A compact learning curve for the record: mean train loss every ~1/50 of the run, a validation figure per epoch.

    Its state is saved in checkpoints, so a resumed run keeps the curve it had.
    """

    def __init__(self, validation_metric: str | None) -> None:
        self.validation_metric = validation_metric
        self.train_loss: list[list[float]] = []
        self.validation: list[list[float]] = []
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._every = 1

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._every = max(1, int(trainer.estimated_stepping_batches) // CURVE_POINTS)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Lightning hands back the loss divided by the accumulation; the curve shows the loss itself. Summed on
        # the device, so the training loop never waits for it; synchronised (and averaged over ranks) once a point.
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach() * trainer.accumulate_grad_batches
        self._sum = loss if self._sum is None else self._sum + loss
        self._count += 1
        step = trainer.global_step
        if step and step % self._every == 0 and (not self.train_loss or self.train_loss[-1][0] != step):
            mean = trainer.strategy.reduce(self._sum / self._count, reduce_op="mean")
            self.train_loss.append([step, float(mean)])
            self._sum, self._count = None, 0

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.validation_metric or "")
        if value is not None and not trainer.sanity_checking:
            self.validation.append([trainer.current_epoch + 1, float(value)])

    def curves(self) -> dict[str, list[list[float]]]:
        out = {"train_loss": self.train_loss}
        if self.validation:
            out[self.validation_metric] = self.validation
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "validation": self.validation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_loss, self.validation = state["train_loss"], state["validation"]


class CheckpointOnException(Callback):
    """Saves ``interrupted.ckpt`` when training stops on an exception or Ctrl-C; removed once the run completes.

    Lightning's own OnExceptionCheckpoint also makes ``fit(ckpt_path=None)`` resume from the last
    checkpoint, which would silently continue an earlier run; this one only saves.
    """

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / CHECKPOINTS[0])

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.path = trainer.strategy.broadcast(self.path)  # every process saves where global rank zero does

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, ConfigError):  # a mistake (bad data met mid-run) is no state to resume from
            trainer.save_checkpoint(self.path)

    def teardown(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if not trainer.interrupted and trainer.state.status.value == "finished":
            trainer.strategy.remove_checkpoint(self.path)


def build_trainer(cfg: DictConfig, run_dir: str, accumulate: int = 1, progress: bool = True,
                  gradient_clip_val: float | None = None, callbacks: tuple[Callback, ...] = ()) -> L.Trainer:
    """A Lightning Trainer for the config: devices/strategy from ``trainer``, schedule and precision from ``recipe``.

    It checkpoints to ``run_dir/checkpoints/`` and logs every logged figure at every step with Lightning's CSV
    logger to ``run_dir/logs/version_0/metrics.csv``.
    """
    t, r = cfg.trainer, cfg.recipe
    # last.ckpt: overwritten every epoch and kept; interrupted.ckpt: written on Ctrl-C or a crash, deleted
    # once the run completes. resume=true continues from the newest of these among the configuration's runs.
    folder = Path(run_dir) / "checkpoints"
    kept: list[Callback] = [ModelCheckpoint(dirpath=folder, filename="last", save_top_k=1,
                                            enable_version_counter=False),
                            CheckpointOnException(folder), *callbacks]
    if progress:
        kept.append(RichProgressBar())
    devices, nodes = cfg.devices or t.devices, cfg.num_nodes or t.num_nodes
    return L.Trainer(max_epochs=r.epochs, accelerator=t.accelerator, devices=devices, num_nodes=nodes,
                     strategy=t.strategy, precision=t.precision or r.precision, accumulate_grad_batches=accumulate,
                     gradient_clip_val=gradient_clip_val, callbacks=kept,
                     logger=CSVLogger(run_dir, name="logs") if progress else False, log_every_n_steps=1,
                     enable_model_summary=False, default_root_dir=run_dir, enable_progress_bar=progress,
                     num_sanity_val_steps=0)


def latest_checkpoint(run_dir: str, stage: str = "") -> Path | None:
    """The newest checkpoint of ``stage`` in any earlier run of this configuration (the siblings of ``run_dir``)."""
    found = [p for attempt in Path(run_dir).parent.glob("*") for name in CHECKPOINTS
             if (p := attempt / stage / "checkpoints" / name).exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _say(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(message, file=sys.stderr, flush=True)


def fit(cfg: DictConfig, run_dir: str, trainer: L.Trainer, module: L.LightningModule,
        data: L.LightningDataModule, stage: str = "") -> int | None:
    """Train from scratch, or with ``resume=true`` from the newest checkpoint of this configuration's runs.

    Returns the step resumed from (None: from scratch). Checkpoints are read with ``weights_only=True``:
    a checkpoint file can hold tensors and plain data, never code that runs when it is loaded.
    """
    resume_from = latest_checkpoint(run_dir, stage) if cfg.resume else None
    resumed_step = None
    if resume_from is not None:
        resumed_step = int(torch.load(resume_from, map_location="cpu", weights_only=True)["global_step"])
        _say(f"resuming from {resume_from} (step {resumed_step})")
    elif cfg.resume:
        _say("resume=true, but no run of this configuration left a checkpoint: training from scratch")
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume_from) if resume_from else None, weights_only=True)
    except SystemExit:
        if trainer.interrupted:  # Ctrl-C: interrupted.ckpt is saved (CheckpointOnException) and Lightning exits
            raise KeyboardInterrupt("training interrupted; rerun the same command with resume=true") from None
        raise
    return resumed_step


@dataclass
class TrainingJob:
    """What a trained task builds for one run once the batch plan is known."""

    module: L.LightningModule
    data: L.LightningDataModule
    profile: Callable[[], dict[str, Any]]
    """Efficiency of the trained model (called on global rank zero only)."""
    backbone: str | None = None
    op_metadata: dict[str, Any] | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    """Task-specific record fields (``upsampler``, ``detector``, ...)."""
    gradient_clip_val: float | None = None


def require_training_steps(data: L.LightningDataModule, plan: BatchPlan) -> None:
    """Refuse, as a configuration mistake, a run whose training split cannot fill one global batch (no step)."""
    samples = len(data.train_dataloader().dataset)
    if samples < plan.global_batch:
        raise ConfigError(f"the training split has {samples} samples, fewer than one global batch of "
                          f"{plan.global_batch} (incomplete batches are dropped), so not one optimizer step would "
                          "run. Lower recipe.global_batch or train on more data (data.train_size for shapes).")


LIGHTNING_NOTICES = ("lightning.pytorch", "lightning.fabric")
"""Loggers of Lightning's INFO notices (devices found, a logging tip, "fit stopped: max_epochs reached")."""


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's notices a user cannot act on, silenced: its INFO lines and its own pytree deprecation warning.

    Warnings about the run itself (and everything at WARNING and above) still show.
    """
    loggers = [logging.getLogger(name) for name in LIGHTNING_NOTICES]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        try:
            yield
        finally:
            for log, level in zip(loggers, levels):
                log.setLevel(level)


def train_and_test(cfg: DictConfig, run_dir: str, build: Callable[[BatchPlan], TrainingJob],
                   validation_metric: str | None = None, train: bool = True, stage: str = "") -> TaskResult:
    """Train the job ``build`` makes for this world size on the recipe, test it, profile it: the task's result.

    The record's metrics are every ``test_<name>`` the module logs (as ``<name>``), plus
    ``validation_metric`` (e.g. ``val_top1``) after the last epoch where the task validates (absent if
    no validation ran). ``train=False`` tests a method that learns nothing (a non-learned baseline row).
    A run of several stages (train, then fine-tune) names each: its checkpoints and logs go to
    ``run_dir/stage`` and ``resume=true`` resumes each stage from its own checkpoints.
    """
    stage_dir = str(Path(run_dir) / stage)
    with quiet_lightning():
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        probe = build_trainer(cfg, stage_dir, progress=False)  # the world size decides the batch plan
        plan = plan_batches(cfg.recipe, probe.world_size)
        curve = LearningCurve(validation_metric)
        job = build(plan)
        trainer = build_trainer(cfg, stage_dir, accumulate=plan.accumulate, gradient_clip_val=job.gradient_clip_val,
                                callbacks=(curve,))
        resumed_step = None
        if train:
            require_training_steps(job.data, plan)
            resumed_step = fit(cfg, run_dir, trainer, job.module, job.data, stage)
        validated = trainer.callback_metrics.get(validation_metric) if validation_metric else None  # test resets
        (test,) = trainer.test(job.module, datamodule=job.data, verbose=False)
    metrics = {name.removeprefix("test_"): float(value) for name, value in test.items() if name.startswith("test_")}
    if validated is not None:
        metrics[validation_metric] = float(validated)
    return TaskResult(metrics=metrics, efficiency=job.profile() if trainer.is_global_zero else {},
                      hardware=hardware(str(job.module.device)), world_size=trainer.world_size,
                      precision=str(trainer.precision), backbone=job.backbone, op_metadata=job.op_metadata,
                      batch_plan=plan.to_dict(), steps=int(trainer.global_step), resumed_from_step=resumed_step,
                      curves=curve.curves(), fields=job.fields)

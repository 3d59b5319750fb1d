"""Joint depth upsampling (PAC's protocol): `bench run task=depth upsampler=ddf_up scale=8`.

The network (`models.JointUpsampler`, PAC's `PacJointUpsample`) upsamples a low-resolution depth map
``scale`` x with the RGB image as guide; every 2x stage is an upsample slot holding ``upsampler``
(default ``pac``). Trained with L2 on the normalised depth (PAC), tested with RMSE per image then
averaged over images (PAC's metric), MAE and delta1, all on the high-resolution depth in metres with
the dataset's border excluded; RMSE and MAE are reported in cm (PAC's table's unit). ``model=interpolate``
is the non-learned row (``upsampler=bilinear``: the low-resolution depth upsampled bilinearly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import MeanMetric

from bench.errors import ConfigError, unknown_name_message
from bench.measure import batch_one_efficiency
from bench.recipes import BatchPlan
from bench.schema import TrainingRecipe
from bench.tasks import Metric, TaskResult, TaskSpec
from tasks.depth.data import DepthData, DepthDataConfig
from tasks.depth.models import MODELS
from tasks.training import TrainingJob, check_finite, configure_optimizers, train_and_test

DEFAULT_MODEL = next(iter(MODELS))
DEFAULT_UPSAMPLER = {"pac_net": "pac", "interpolate": "bilinear"}
SCALES = (4, 8, 16)
GUIDES = ("rgb", "none")
DELTA1 = 1.25


@dataclass
class DepthTaskConfig:
    """Joint depth upsampling."""

    name: str = "depth"
    profile_size: int = 256
    """Efficiency figures at this high-resolution size (PAC's training crop)."""


@dataclass
class DepthRecipe(TrainingRecipe):
    """A joint upsampling protocol: the training crop beside the shared schedule."""

    crop_size: int = 256


@dataclass
class DepthKeys:
    """Top-level keys only depth accepts."""

    scale: int = 4  # 4, 8 or 16
    model: Optional[str] = None  # pac_net (None) or interpolate (the non-learned row)
    guide: str = "rgb"  # rgb: the RGB image guides the upsamplers that take a guide; none: every slot unguided


def restore(normalised: Tensor, depth_range: Tensor) -> Tensor:
    """Depth in metres from the network's [0, 1] output and each sample's (min, max) of its low-resolution input."""
    lo, hi = depth_range[:, 0].view(-1, 1, 1, 1), depth_range[:, 1].view(-1, 1, 1, 1)
    return normalised * (hi - lo) + lo


def centre_crop(x: Tensor, like: Tensor) -> Tensor:
    """``x`` cropped to ``like``'s size, centred (the evaluation border cut off the output as off the target)."""
    (h, w), (th, tw) = x.shape[-2:], like.shape[-2:]
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top:top + th, left:left + tw]


def per_image_errors(pred: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per image: RMSE and MAE (metres), and the share of pixels within 1.25x of the truth (delta1)."""
    diff = pred - target
    valid = target > 0
    ratio = torch.maximum(pred / target.clamp_min(1e-6), target / pred.clamp_min(1e-6))
    within = ((ratio < DELTA1) & valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1)
    return {"rmse": diff.pow(2).flatten(1).mean(1).sqrt(), "mae": diff.abs().flatten(1).mean(1), "delta1": within}


class DepthModule(L.LightningModule):
    """L2 training on the normalised depth; per-image RMSE / MAE / delta1 on the metric depth in evaluation."""

    def __init__(self, net: nn.Module, recipe: DictConfig, plan: BatchPlan | None) -> None:
        super().__init__()
        self.net, self.recipe, self.plan = net, recipe, plan
        self.means = nn.ModuleDict({f"{stage}_{name}": MeanMetric() for stage in ("val", "test")
                                    for name in ("rmse", "mae", "delta1")})

    def forward(self, low: Tensor, guide: Tensor) -> Tensor:
        return self.net(low, guide)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = centre_crop(self(batch["low"], batch["guide"]), batch["target"])
        lo, hi = batch["range"][:, 0].view(-1, 1, 1, 1), batch["range"][:, 1].view(-1, 1, 1, 1)
        loss = F.mse_loss(out, (batch["target"] - lo) / (hi - lo))
        check_finite(loss, self.global_step)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> None:
        pred = restore(centre_crop(self(batch["low"], batch["guide"]), batch["target"]), batch["range"])
        for name, values in per_image_errors(pred, batch["target"]).items():
            metric = self.means[f"{stage}_{name}"]
            metric.update(values)
            self.log(f"{stage}_{name}", metric, prog_bar=stage == "val" and name == "rmse")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.recipe, self.plan.lr)


def model_name(cfg: DictConfig) -> str:
    name = cfg.model or DEFAULT_MODEL
    if name not in MODELS:
        raise ConfigError(unknown_name_message("depth model", name, list(MODELS)))
    return name


def profile(net: nn.Module, size: int, scale: int) -> dict[str, Any]:
    """Params, MACs and batch-1 latency of ``net`` upsampling a (size / scale)^2 depth map to size^2."""
    low, guide = torch.rand(1, 1, size // scale, size // scale), torch.rand(1, 3, size, size)
    return batch_one_efficiency(net, [low, guide],
                                f"the whole network, a {size // scale}^2 depth map and a {size}^2 guide to {size}^2")


def run(cfg: DictConfig, run_dir: str) -> TaskResult:
    """Train (unless non-learned), test and profile the joint upsampler ``cfg`` describes."""
    name = model_name(cfg)
    upsampler = cfg.upsampler or DEFAULT_UPSAMPLER[name]
    scale = int(cfg.scale)

    def build(plan: BatchPlan) -> TrainingJob:
        data = DepthData(cfg, plan.per_device_batch)
        kwargs = OmegaConf.to_container(cfg.upsampler_kwargs, resolve=True)
        net = MODELS[name](scale, upsampler, kwargs, guided=cfg.guide == "rgb")
        return TrainingJob(DepthModule(net, cfg.recipe, plan), data,
                           lambda: profile(net, int(cfg.task.profile_size), scale),
                           op_metadata=net.upsample_metadata,
                           fields={"upsampler": upsampler, "model": name, "scale": scale,
                                   "guide": "rgb" if net.guided else "none"})

    return train_and_test(cfg, run_dir, build, validation_metric="val_rmse", train=name != "interpolate")


def validate(cfg: DictConfig) -> None:
    """Scale, model and the operator (this network has no conv-operator slots) are checked before anything runs."""
    if cfg.scale not in SCALES:
        raise ConfigError(f"scale={cfg.scale}: joint depth upsampling runs at {', '.join(map(str, SCALES))}.")
    model_name(cfg)
    if cfg.guide not in GUIDES:
        raise ConfigError(f"guide={cfg.guide}: the depth network's upsamplers are guided by {' or '.join(GUIDES)}.")
    if cfg.op != "conv":
        raise ConfigError(f"op={cfg.op}: the depth network has no conv-operator slots (its convs are PAC's plain "
                          "ones); compare upsample-kind operators with upsampler=NAME.")
    if int(cfg.task.profile_size) % int(cfg.scale):
        raise ConfigError(f"task.profile_size={cfg.task.profile_size} is not a multiple of scale={cfg.scale}.")


TASK = TaskSpec(
    name="depth",
    description="joint depth upsampling (PAC protocol): the upsampler in every 2x stage of PAC's network, RGB-guided",
    run=run,
    metrics=(Metric("rmse", higher_is_better=False, unit="cm", scale=100,
                    description="test RMSE per image, averaged over images (PAC), border excluded"),
             Metric("mae", higher_is_better=False, unit="cm", scale=100, description="test mean absolute error"),
             Metric("delta1", unit="%", scale=100, description="test share of pixels within 1.25x of the truth"),
             Metric("val_rmse", higher_is_better=False, unit="cm", scale=100,
                    description="validation RMSE after the last epoch")),
    primary="rmse",
    config_dir=Path(__file__).parent / "conf",
    task_schema=DepthTaskConfig,
    data_schema=DepthDataConfig,
    recipe_schema=DepthRecipe,
    keys=DepthKeys,
    upsample_slots=True,
    defaults={"data": "shapes", "recipe": "quick"},
    baseline={"model": "interpolate", "guide": "none", "upsampler": "bilinear"},
    model_keys=("model", "guide"),
    section_keys=("scale",),
    default_model="pac_net (PAC's PacJointUpsample) with upsampler=pac, scale=4, guided by the RGB image",
    profiled="the whole network at task.profile_size squared (PAC's crop, 256)",
    ranges={"task.profile_size": (1, None), "recipe.crop_size": (1, None), "data.eval_border": (0, None)},
    validate=validate,
)

"""Salient-object detection (`bench run task=saliency`): CSNet with dynamic weight decay, pruning and fine-tuning.

``model=csnet`` (default) is SOD100K's CSNet (`csnet.py`), trained from scratch with BCE-with-logits and
dynamic weight decay on the gammas of its ILBlocks (``recipe.dynamic_weight_decay``, 3 as the official;
0 is the ablation). ``prune=true`` then removes the channels whose gamma fell to ``recipe.prune_threshold``
or below, rebuilds the smaller network and fine-tunes it (``recipe.finetune_*``); the record keeps the
metrics and costs of all three stages and the learned widths. ``model=csf`` puts the same CSF head on
any timm backbone with ``op=`` in its slots. Scored with pysodmetrics (`metrics.py`) on predictions
resized to each ground truth and quantised to 8 bits, as the official evaluation does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from bench.errors import ConfigError, unknown_name_message
from bench.measure import batch_one_efficiency
from bench.recipes import BatchPlan
from bench.schema import TrainingRecipe
from bench.tasks import Metric, TaskResult, TaskSpec
from operators.dynamic_weight_decay import DynamicWeightDecay, parameter_groups
from operators.registry import OperatorError
from tasks.saliency.csnet import CSFNet, CSNet, CSNetWidths
from tasks.saliency.data import SaliencyData, SaliencyDataConfig
from tasks.saliency.metrics import SaliencyMetrics
from tasks.training import TrainingJob, check_finite, configure_optimizers, train_and_test

MODELS = ("csnet", "csf")
METRICS = ("max_f", "mae", "s_measure", "mean_e", "weighted_f")
STAGES = ("trained", "pruned", "finetuned")


@dataclass
class SaliencyTaskConfig:
    """Salient-object detection."""

    name: str = "saliency"
    default_backbone: str = "resnet18"
    """The backbone of ``model=csf`` when ``backbone=null``."""
    profile_size: int = 224
    """Parameters, MACs and latency at this input size (SOD100K's 224 x 224)."""


@dataclass
class SaliencyRecipe(TrainingRecipe):
    """A saliency protocol: input size and augmentation, dynamic weight decay, the pruning threshold, fine-tuning."""

    image_size: int = 224
    crop_margin: int = 15
    """Training trims 0..crop_margin-1 pixels from each side before resizing (SOD100K's augmentation)."""
    flip: bool = True
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    """Adam's betas (SOD100K: 0.9, 0.99)."""
    dynamic_weight_decay: float = 3.0
    """Weight of the dynamic decay on CSNet's ILBlock gammas; 0 turns it off (plain weight decay on them)."""
    gamma_lr_mult: float = 1.0
    """Learning-rate multiplier of CSNet's ILBlock gammas, with or without dynamic decay (1 as the official; a short
    protocol needs more: Adam moves a gamma at most about lr per step, so reaching zero from 1 takes 1 / lr steps)."""
    prune_threshold: float = 1e-20
    finetune_epochs: int = 300
    finetune_lr: float = 1e-4
    finetune_milestones: list[int] = field(default_factory=lambda: [50, 100])


@dataclass
class SaliencyKeys:
    """Top-level keys only saliency accepts."""

    model: Optional[str] = None  # csnet (None) or csf
    expand: float = 1.0  # csnet: width multiplier of the starting widths (the official training uses 2)
    block_widths: Any = None  # csnet: every width (a pruned run's record), instead of expand
    prune: bool = False  # csnet: prune after training, then fine-tune


class SaliencyModule(L.LightningModule):
    """BCE-with-logits training (dynamic weight decay applied before each step); pysodmetrics scores per test set."""

    def __init__(self, net: nn.Module, recipe: DictConfig, plan: BatchPlan, test_names: list[str],
                 decay_weight: float) -> None:
        super().__init__()
        self.net, self.recipe, self.plan, self.test_names = net, recipe, plan, test_names
        self.decay = DynamicWeightDecay.for_model(net, decay_weight) if decay_weight > 0 else None
        self.val_metrics = SaliencyMetrics()
        self.test_metrics = nn.ModuleList(SaliencyMetrics() for _ in test_names)
        self.scores: dict[str, dict[str, float]] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.binary_cross_entropy_with_logits(self(batch["image"]), batch["mask"])
        check_finite(loss, self.global_step)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.decay is not None:
            self.decay.apply()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(torch.sigmoid(self(batch["image"])), batch["gt"])

    def on_validation_epoch_end(self) -> None:
        scores = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val_mae", scores["mae"].float(), prog_bar=True, sync_dist=False)
        self.log("val_max_f", scores["max_f"].float(), sync_dist=False)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_metrics[dataloader_idx].update(torch.sigmoid(self(batch["image"])), batch["gt"])

    def on_test_epoch_end(self) -> None:
        for index, (name, metric) in enumerate(zip(self.test_names, self.test_metrics)):
            scores = {key: float(value) for key, value in metric.compute().items()}
            metric.reset()
            self.scores[name] = scores
            prefix = "test_" if index == 0 else f"test_{name}_"
            for key, value in scores.items():
                self.log(prefix + key, value, add_dataloader_idx=False)

    def configure_optimizers(self) -> dict:
        """CSNet: its ILBlock gammas in their own group (at ``gamma_lr_mult`` x the rate, without plain decay
        under dynamic weight decay, with it in the ablation); other networks: one group."""
        if not isinstance(self.net, CSNet):
            return configure_optimizers(self, self.recipe, self.plan.lr)
        groups = parameter_groups(self.net, float(self.recipe.weight_decay), dynamic=self.decay is not None,
                                  gamma_lr=self.plan.lr * float(self.recipe.gamma_lr_mult))
        return configure_optimizers(self, self.recipe, self.plan.lr, groups)


def model_name(cfg: DictConfig) -> str:
    name = cfg.model or MODELS[0]
    if name not in MODELS:
        raise ConfigError(unknown_name_message("saliency model", name, list(MODELS)))
    return name


def csnet_widths(cfg: DictConfig) -> CSNetWidths:
    """The widths ``block_widths`` gives, else the official starting widths times ``expand``."""
    if cfg.block_widths is not None:
        return CSNetWidths.from_dict(OmegaConf.to_container(cfg.block_widths, resolve=True))
    return CSNetWidths.initial(float(cfg.expand))


def build_net(cfg: DictConfig, upsampler: str) -> tuple[nn.Module, str | None]:
    """The network and its backbone's name."""
    kwargs = OmegaConf.to_container(cfg.upsampler_kwargs, resolve=True)
    if model_name(cfg) == "csnet":
        return CSNet(csnet_widths(cfg), upsampler, kwargs), None
    backbone = cfg.backbone or cfg.task.default_backbone
    return CSFNet(backbone, cfg.op, OmegaConf.to_container(cfg.op_kwargs, resolve=True), upsampler, kwargs), backbone


def profile(net: nn.Module, size: int) -> dict[str, Any]:
    """Parameters, MACs and batch-1 latency of the whole network at ``size`` squared."""
    return batch_one_efficiency(net, [torch.rand(1, 3, size, size)], f"the whole network at {size} x {size}")


def finetune_config(cfg: DictConfig, widths: CSNetWidths) -> DictConfig:
    """The run's config for the fine-tuning stage: the pruned widths, the fine-tuning schedule, no dynamic decay."""
    tuned = cfg.copy()
    with open_dict(tuned):
        tuned.block_widths = widths.as_dict()
        tuned.recipe.epochs = int(cfg.recipe.finetune_epochs)
        tuned.recipe.lr = float(cfg.recipe.finetune_lr)
        tuned.recipe.milestones = list(cfg.recipe.finetune_milestones)
        tuned.recipe.dynamic_weight_decay = 0.0
    return tuned


def run(cfg: DictConfig, run_dir: str) -> TaskResult:
    """Train, test and profile the saliency network; with ``prune=true`` also prune, test and fine-tune it."""
    name = model_name(cfg)
    upsampler = cfg.upsampler or "bilinear"
    built: list[SaliencyModule] = []
    size = int(cfg.task.profile_size)

    def job(stage_cfg: DictConfig, net: nn.Module | None, backbone: str | None = None) -> Any:
        def build(plan: BatchPlan) -> TrainingJob:
            data = SaliencyData(stage_cfg, plan.per_device_batch)
            model, bb = (net, backbone) if net is not None else build_net(stage_cfg, upsampler)
            weight = float(stage_cfg.recipe.dynamic_weight_decay) if name == "csnet" else 0.0
            module = SaliencyModule(model, stage_cfg.recipe, plan, data.test_names, weight)
            built.append(module)
            return TrainingJob(module, data, lambda: profile(model, size), backbone=bb,
                               op_metadata=model.op_metadata, fields=fields(model))
        return build

    def fields(model: nn.Module) -> dict[str, Any]:
        out: dict[str, Any] = {"model": name, "upsampler": upsampler, "prune": "pruned" if cfg.prune else None,
                               "dwd": None, "expand": None}
        if isinstance(model, CSNet):
            out["dwd"] = f"dwd={float(cfg.recipe.dynamic_weight_decay):g}"
            out["expand"] = f"x{float(cfg.expand):g}" if cfg.block_widths is None else "widths"
            out["widths"] = model.widths.as_dict()
        return out

    trained = train_and_test(cfg, run_dir, job(cfg, None), validation_metric="val_mae", stage="train")
    if not cfg.prune:
        trained.fields["test_sets"] = built[-1].scores
        return trained
    try:
        pruned_net = built[-1].net.pruned(float(cfg.recipe.prune_threshold))
    except OperatorError as err:
        raise ConfigError(str(err)) from None
    tuned_cfg = finetune_config(cfg, pruned_net.widths)
    pruned = train_and_test(tuned_cfg, run_dir, job(tuned_cfg, pruned_net), train=False, stage="pruned")
    tuned = train_and_test(tuned_cfg, run_dir, job(tuned_cfg, pruned_net), validation_metric="val_mae",
                           stage="finetune")
    tuned.fields["stages"] = {stage: {"metrics": result.metrics, "params": result.efficiency.get("params"),
                                      "macs": result.efficiency.get("macs"), "steps": result.steps}
                              for stage, result in zip(STAGES, (trained, pruned, tuned))}
    tuned.fields["test_sets"] = built[-1].scores
    tuned.fields["widths_before"] = built[0].net.widths.as_dict()
    tuned.steps += trained.steps
    return tuned


def validate(cfg: DictConfig) -> None:
    """Model, backbone, operator, sizes and pruning are checked before any data is made."""
    name = model_name(cfg)
    if name == "csnet":
        if cfg.op != "conv":
            raise ConfigError(f"op={cfg.op}: CSNet is built from gOctConvs and has no conv-operator slots; compare "
                              "operators with model=csf backbone=NAME op=NAME (the CSF head on a standard backbone).")
        if cfg.backbone is not None:
            raise ConfigError(f"backbone={cfg.backbone}: CSNet is its own backbone; use model=csf for another one.")
        try:
            csnet_widths(cfg)
        except OperatorError as err:
            raise ConfigError(str(err)) from None
    elif cfg.prune:
        raise ConfigError("prune=true prunes CSNet's learnable channels (dynamic weight decay); model=csf has none.")
    if int(cfg.recipe.image_size) % 32 or int(cfg.task.profile_size) % 32:
        raise ConfigError(f"recipe.image_size={cfg.recipe.image_size} and task.profile_size={cfg.task.profile_size} "
                          "must be multiples of 32 (the networks' output stride).")
    if cfg.expand <= 0:
        raise ConfigError(f"expand={cfg.expand}: a positive width multiplier.")


TASK = TaskSpec(
    name="saliency",
    description="salient-object detection: CSNet (gOctConv, dynamic weight decay, pruning) or the CSF head on a backbone",
    run=run,
    metrics=(Metric("max_f", unit="%", scale=100, description="test max F-measure (beta^2 0.3; pysodmetrics)"),
             Metric("mae", higher_is_better=False, unit="%", scale=100, description="test mean absolute error"),
             Metric("s_measure", unit="%", scale=100, description="test S-measure (alpha 0.5)"),
             Metric("mean_e", unit="%", scale=100, description="test mean E-measure"),
             Metric("weighted_f", unit="%", scale=100, description="test weighted F-measure"),
             Metric("val_mae", higher_is_better=False, unit="%", scale=100,
                    description="validation MAE after the last epoch"),
             Metric("stages.trained.metrics.max_f", unit="%", scale=100, title="max_f before pruning",
                    description="prune=true: test max F of the trained network, before pruning"),
             Metric("stages.pruned.metrics.max_f", unit="%", scale=100, title="max_f pruned",
                    description="prune=true: test max F right after pruning, before fine-tuning"),
             Metric("stages.trained.params", unit="M", scale=1e-6, title="params before pruning",
                    description="prune=true: parameters of the trained network, before pruning")),
    primary="max_f",
    config_dir=Path(__file__).parent / "conf",
    task_schema=SaliencyTaskConfig,
    data_schema=SaliencyDataConfig,
    recipe_schema=SaliencyRecipe,
    keys=SaliencyKeys,
    upsample_slots=True,
    defaults={"data": "shapes", "recipe": "quick"},
    baseline={"op": "conv", "upsampler": "bilinear"},
    model_keys=("model", "expand", "dwd", "prune"),
    default_model="csnet (SOD100K) with dynamic weight decay 3, bilinear upsample slots",
    profiled="the whole network at task.profile_size squared (224, SOD100K's input)",
    ranges={"task.profile_size": (32, None), "recipe.image_size": (32, None), "recipe.crop_margin": (1, None),
            "recipe.dynamic_weight_decay": (0, None), "recipe.prune_threshold": (0, None),
            "recipe.finetune_epochs": (1, None)},
    validate=validate,
)

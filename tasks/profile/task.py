"""The `profile` task: what an operator costs, bare or inside a backbone.

`bench profile op=ddf` measures the operator alone at one input shape; `bench profile
backbone=resnet50 op=ddf` measures the whole network: parameters, MACs per image (operators' own
formulas), batch-1 latency (median and IQR), throughput at a larger batch, train step time and
activation memory, all on the current device and recorded with it. ``task.compile=true`` times the
torch.compile'd model instead (the deployed speed; no train step). ``task.baseline=conv`` also times
the same backbone with the baseline operator, interleaved with this one in the same process, and
records the latency ratios (``efficiency.vs_baseline``): the figure that survives a drifting load.
``task.baseline_processes=N`` repeats that comparison in N fresh Python processes and records the
median, because on some machines a whole process runs small ops slower than the next one does.
"""

from __future__ import annotations

import importlib
import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from timm.data import resolve_data_config

from bench.errors import ConfigError, unknown_name_message
from bench.measure import Profile, compare_latency, example_input, profile_model, profile_module, to_layout
from bench.results import hardware
from bench.tasks import Metric, TaskResult, TaskSpec
from operators.registry import OperatorError, create_op, create_upsampler, list_ops, op_info

OPERATOR_SIZE = 28
"""Default spatial size of bare-operator profiles (the DDF paper's timing protocol at 256 channels)."""


@dataclass
class ProfileTaskConfig:
    """Operator profiling at one input shape, or a whole backbone at its input size."""

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


def build_operator(cfg: DictConfig) -> tuple[torch.nn.Module, Any]:
    """The operator named by ``cfg.op`` and a random input of the configured shape (per scale if multi-scale)."""
    t = cfg.task
    kwargs = OmegaConf.to_container(cfg.op_kwargs, resolve=True)
    if op_info(cfg.op).kind == "conv":
        module = create_op(cfg.op, t.channels, t.out_channels or t.channels, kernel_size=t.kernel_size,
                           stride=t.stride, **kwargs)
    else:
        module = create_upsampler(cfg.op, t.channels, **kwargs)
    return module, example_input(module, t.batch, t.channels, t.size or OPERATOR_SIZE)


def build_backbone(cfg: DictConfig, op: str | None = None) -> tuple[torch.nn.Module, int]:
    """The backbone with ``cfg.op`` (or ``op``, with its defaults) in its slots, and its input size.

    The input size is the model's own unless task.size is set.
    """
    from backbones import model_name

    kwargs = OmegaConf.to_container(cfg.op_kwargs, resolve=True) if op is None else {}
    model = timm.create_model(model_name(cfg.backbone), op=op or cfg.op, op_kwargs=kwargs)
    size = cfg.task.size or resolve_data_config({}, model=model)["input_size"][-1]
    return model, size


def _build_baseline(cfg: DictConfig) -> torch.nn.Module:
    """The backbone with ``task.baseline`` in its slots; an operator the backbone refuses is a config mistake."""
    try:
        return build_backbone(cfg, op=cfg.task.baseline)[0]
    except OperatorError as err:
        raise ConfigError(f"task.baseline={cfg.task.baseline} cannot be the baseline here: {err}") from None


def _compare_with_baseline(cfg: DictConfig, model: torch.nn.Module, reference: torch.nn.Module,
                           size: int) -> dict[str, float]:
    """`compare_latency` with the task's settings."""
    t = cfg.task
    return compare_latency(model, reference, size, t.batch, device=torch.device(t.device), rounds=t.baseline_rounds,
                           iters=t.iters, channels_last=t.channels_last, compile=t.compile)


def _compare_from_scratch(config: dict[str, Any], modules: list[str]) -> dict[str, float]:
    """The baseline comparison of ``config`` from scratch: the body of each fresh process.

    ``modules`` define the two operators; importing them registers operators that are neither
    built in nor plugins (a user's own module), as they were in the parent.
    """
    for name in modules:
        importlib.import_module(name)
    cfg = OmegaConf.create(config)
    if cfg.task.threads is not None:
        torch.set_num_threads(cfg.task.threads)
    model, size = build_backbone(cfg)
    return _compare_with_baseline(cfg, model, _build_baseline(cfg), size)


def _defining_modules(*ops: str) -> list[str]:
    """Modules whose import registers ``ops`` (a script's own ``__main__`` is re-run by spawn itself)."""
    modules = {getattr(op_info(op).factory, "__module__", None) for op in ops}
    return sorted(m for m in modules if m and m != "__main__")


def compare_in_fresh_processes(cfg: DictConfig) -> dict[str, Any]:
    """``task.baseline_processes`` baseline comparisons, each in a new interpreter; the median and each one.

    One process at a time (never two timing at once). An operator registered at run time (inside a
    function) does not exist in a new interpreter; the comparison then fails, saying so.
    """
    config = OmegaConf.to_container(cfg, resolve=True)
    modules = _defining_modules(cfg.op, cfg.task.baseline)
    runs = []
    for _ in range(cfg.task.baseline_processes):
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            try:
                runs.append(pool.submit(_compare_from_scratch, config, modules).result())
            except Exception as err:
                raise RuntimeError(f"the baseline comparison in a fresh process failed: {type(err).__name__}: "
                                   f"{str(err).rstrip('.')}. A fresh process knows built-in operators, plugins and "
                                   "operators registered by importing a module or the script; "
                                   "task.baseline_processes=1 compares in this process instead.") from err
    return {**{key: statistics.median(r[key] for r in runs) for key in runs[0]}, "per_process": runs}


def run(cfg: DictConfig, run_dir: str) -> TaskResult:
    """Profile ``cfg.op`` (inside ``cfg.backbone`` if set); returns cost figures and the hardware."""
    t = cfg.task
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    device = torch.device(t.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"task.device={t.device} but torch sees no CUDA device here; use task.device=cpu.")
    if cfg.backbone:
        model, size = build_backbone(cfg)
        reference = _build_baseline(cfg) if t.baseline else None  # a pairing that cannot work fails before timing
        efficiency = profile_model(model, size, t.batch, device=device, warmup=t.warmup, iters=t.iters,
                                   train=t.train, channels_last=t.channels_last, compile=t.compile)
        if reference is not None:
            if t.baseline_processes > 1:
                del reference
                ratios = compare_in_fresh_processes(cfg)
            else:
                ratios = _compare_with_baseline(cfg, model, reference, size)
            efficiency["vs_baseline"] = {"op": t.baseline, "rounds": t.baseline_rounds,
                                         "processes": t.baseline_processes, **ratios}
        return TaskResult(efficiency=efficiency, op_metadata=model.op_metadata, hardware=hardware(t.device))
    module, x = build_operator(cfg)
    module, x = to_layout(module, x, t.channels_last)
    prof: Profile = profile_module(module, [x], device=device, warmup=t.warmup, iters=t.iters, train=t.train,
                                   compile=t.compile)
    efficiency = {**prof.to_dict(), "latency_ms": {"median": prof.latency_ms, "iqr": prof.latency_iqr_ms,
                                                   "batch": t.batch}}
    efficiency.pop("latency_iqr_ms")
    return TaskResult(efficiency={**efficiency, "channels_last": t.channels_last, "compiled": t.compile},
                      hardware=hardware(t.device))


def validate(cfg: DictConfig) -> None:
    """Thread count, and ``task.baseline``: it compares whole networks, so it needs a backbone, rounds, processes."""
    t = cfg.task
    if t.threads is not None and t.threads < 1:
        raise ConfigError(f"task.threads={t.threads}: give a positive number of CPU threads, or leave it unset "
                          "for torch's default (one per core).")
    if t.baseline is None:
        return
    if not cfg.get("backbone"):
        raise ConfigError(f"task.baseline={t.baseline} compares a backbone with two operators; name one "
                          "(backbone=resnet50), or drop task.baseline to profile the bare operator.")
    if t.baseline not in (conv_ops := list_ops("conv")):
        raise ConfigError(unknown_name_message("baseline operator (task.baseline)", str(t.baseline), conv_ops))
    if t.baseline_rounds < 1:
        raise ConfigError(f"task.baseline_rounds={t.baseline_rounds}: give at least one round.")
    if t.baseline_processes < 1:
        raise ConfigError(f"task.baseline_processes={t.baseline_processes}: give at least one process "
                          "(1 compares in this process).")


TASK = TaskSpec(
    name="profile",
    description="what an operator costs, bare at one input shape or inside a backbone (bench profile)",
    run=run,
    metrics=(Metric("latency_ms", higher_is_better=False, unit="ms", description="median inference latency"),),
    primary="latency_ms",
    config_dir=Path(__file__).parent / "conf",
    task_schema=ProfileTaskConfig,
    profiled="the bare operator at task.batch x task.channels x task.size^2, or the backbone at its input size",
    cost_plots=False,
    op_kinds=("conv", "upsample"),
    default_model="the bare operator (backbone=null)",
    ranges={"task.batch": (1, None), "task.channels": (1, None), "task.out_channels": (1, None),
            "task.size": (1, None), "task.kernel_size": (1, None), "task.stride": (1, None), "task.warmup": (0, None),
            "task.iters": (1, None)},
    validate=validate,
)

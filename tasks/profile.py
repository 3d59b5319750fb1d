"""The `profile` task: cost of one operator at one input shape (params, MACs, latency, memory).

`bench profile op=ddf` (or `bench run task=profile op=ddf`) measures what an operator costs before
it is put into a network; every figure lands in a result record with its hardware.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench.config import ConfigError
from bench.profile import profile_module
from bench.results import hardware
from operators.registry import create_op, create_upsampler, example_input, op_info
from tasks import register_task


def build_operator(cfg: DictConfig) -> tuple[torch.nn.Module, list]:
    """The operator named by ``cfg.op`` and a random input of the configured shape (per scale if multi-scale)."""
    t = cfg.task
    kwargs = OmegaConf.to_container(cfg.op_kwargs, resolve=True)
    if op_info(cfg.op).kind == "conv":
        module = create_op(cfg.op, t.channels, t.out_channels or t.channels, kernel_size=t.kernel_size,
                           stride=t.stride, **kwargs)
    else:
        module = create_upsampler(cfg.op, t.channels, **kwargs)
    x = example_input(module, t.batch, t.channels, t.size)
    if t.channels_last:
        module = module.to(memory_format=torch.channels_last)
        x = _to_channels_last(x)
    return module, [x]


def _to_channels_last(x):
    if isinstance(x, torch.Tensor):
        return x.contiguous(memory_format=torch.channels_last)
    return tuple(_to_channels_last(t) if t is not None else None for t in x)


@register_task("profile")
def run(cfg: DictConfig) -> dict[str, Any]:
    """Profile ``cfg.op``; returns the cost figures and the hardware they were measured on."""
    t = cfg.task
    if t.threads:
        torch.set_num_threads(t.threads)
    device = torch.device(t.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"task.device={t.device} but torch sees no CUDA device here; use task.device=cpu.")
    module, inputs = build_operator(cfg)
    cost = profile_module(module, inputs, device=device, warmup=t.warmup, iters=t.iters, train=t.train)
    return {"metrics": {}, "cost": cost.to_dict(), "hardware": hardware(t.device)}

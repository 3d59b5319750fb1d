"""Cost of a model or operator: parameters, MACs, latency and activation memory (the measurement library).

Every task that reports efficiency measures through here: `profile_model` for an image model,
`compare_latency` for two networks timed interleaved, `example_input` for an operator's input.

MACs come from torch's FLOP counter for ordinary layers, with every registered operator's subtree
replaced by that operator's own formula: generic counters miss unfold, elementwise and custom
kernels, which undercounts dynamic filters.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from operators.registry import mac_formula


def map_tensors(fn: Callable[[Tensor], Any], obj: Any) -> Any:
    """Apply ``fn`` to every tensor in a (nested) tuple/list, keeping the structure and Nones."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, o) for o in obj)
    return obj


def _tensors(obj: Any) -> list[Tensor]:
    found: list[Tensor] = []
    map_tensors(found.append, obj)
    return found


def count_params(model: nn.Module) -> int:
    """Learnable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def counter_macs(model: nn.Module, *inputs: Any) -> int:
    """MACs torch's FLOP counter sees in one forward (FLOPs / 2); blind to custom and elementwise ops."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return counter.get_total_flops() // 2


def count_macs(model: nn.Module, *inputs: Any) -> int:
    """MACs of one forward of ``model`` on ``inputs``, using operators' own formulas where registered."""
    formulas: dict[str, int] = {}
    handles = []
    root = type(model).__name__

    def outermost_ops() -> list[tuple[str, nn.Module, Callable[..., int]]]:
        found, covered = [], []
        for name, module in model.named_modules():
            if any(name.startswith(prefix + ".") for prefix in covered):
                continue
            formula = mac_formula(module)
            if formula is not None:
                found.append((name, module, formula))
                covered.append(name)
        return found

    for name, module, formula in outermost_ops():
        key = f"{root}.{name}" if name else root

        def record(mod: nn.Module, args: tuple, key: str = key, formula: Callable[..., int] = formula) -> None:
            formulas[key] = formulas.get(key, 0) + int(formula(mod, *args))

        handles.append(module.register_forward_pre_hook(record))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    per_module = counter.get_flop_counts()
    seen_inside_ops = sum(sum(per_module.get(key, {}).values()) for key in formulas)
    return (counter.get_total_flops() - seen_inside_ops) // 2 + sum(formulas.values())


def saved_activation_bytes(model: nn.Module, *inputs: Any) -> int:
    """Bytes of tensors autograd keeps for backward in one training forward (device independent).

    Counts each storage once, so views and re-saved tensors are not double counted; parameters are
    excluded. This is the training-memory cost an operator adds, measured the same on CPU and GPU.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(*inputs)
    return sum(seen.values())


GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20
"""glibc's ceiling for ``M_MMAP_THRESHOLD`` on 64-bit: larger blocks are always mapped fresh."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h
_malloc_policy: str | None = None


def retain_freed_memory() -> str:
    """Make glibc's malloc keep freed blocks (up to 32 MiB) for reuse instead of returning them to the OS.

    By default glibc maps large blocks fresh and trims the heap after frees, so a CPU forward pays
    page faults for its activations and weight reorders on every call: on a 2-core EPYC, ResNet-50's
    batch-8 forward took 0.61x-0.93x the time with this policy (batch 1 within noise; docs/performance.md).
    PyTorch's CPU tuning guide swaps in jemalloc or tcmalloc for the same reason. Idempotent; returns
    the policy in force (`malloc_policy`).
    """
    global _malloc_policy
    if _malloc_policy is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            retained = (libc.mallopt(_M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX) == 1
                        and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1)
        except (OSError, AttributeError):
            retained = False
        _malloc_policy = "glibc, freed memory retained" if retained else "system default"
    return _malloc_policy


def malloc_policy() -> str:
    """The CPU allocator policy this process times under, recorded with every result; changes nothing."""
    return _malloc_policy or "system default"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(fn: Callable[[], Any], device: torch.device, *, warmup: int = 5, iters: int = 20,
                    min_seconds: float = 0.0) -> dict[str, float]:
    """Wall-clock latency of ``fn`` in milliseconds: median and interquartile range after warm-up.

    Synchronises the device around every call. Keeps iterating past ``iters`` until ``min_seconds``
    of measurement have passed, so very fast calls are not dominated by timer noise. CPU memory is
    reused rather than page-faulted back (`retain_freed_memory`), for every model alike.
    """
    retain_freed_memory()
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    quartiles = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "iqr_ms": quartiles[2] - quartiles[0],
            "min_ms": min(times), "iters": len(times)}


def interleaved_latency(fns: Mapping[str, Callable[[], Any]], device: torch.device, *, rounds: int,
                        iters: int, warmup: int = 2) -> dict[str, list[float]]:
    """Median latency (ms) of each of ``fns`` in every one of ``rounds`` round-robin rounds.

    Load on a shared machine drifts over minutes, so models timed one after another are not
    comparable; here every round times every model back to back (the order reversed each round), so
    a ratio between two models' samples of one round compares them under the same load.
    """
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            samples[name].append(measure_latency(fns[name], device, warmup=1, iters=iters)["median_ms"])
    return samples


@dataclass
class Profile:
    """Cost figures of one model on one input shape (MACs per sample, as papers report them)."""

    params: int
    macs: int
    macs_per_sample: int
    input_shape: Any
    """Shape of the first input ([N, C, H, W]), or one shape per scale for multi-scale operators."""
    latency_ms: float
    latency_iqr_ms: float
    throughput_per_s: float
    train_step_ms: float | None
    saved_activation_mb: float | None
    peak_memory_mb: float | None
    compile_s: float | None = None
    """Seconds the first compiled call took (compilation included); None when timed eagerly."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COMPILED_VARIANTS = 256
"""Compiled variants (model instance x input shape) one model class may hold: a full `op=all` sweep fits."""


def compile_for_inference(model: nn.Module, inputs: Sequence[Any]) -> tuple[Callable[..., Any], float]:
    """``model`` compiled by torch.compile (inductor) for ``inputs``' shapes, and the seconds compiling took.

    Weights are frozen into the graph (inductor's ``freezing``), so BatchNorm folds into convs and
    conv weights are prepacked once. On the CPU the graph's kernels are called from generated C++
    (``cpp_wrapper``), not Python; on CUDA the graph is replayed as a CUDA graph (mode "reduce-overhead"),
    so launches cost nothing per kernel: the deployed speed either way. The model must be in
    eval mode; call it under ``torch.inference_mode()``. Models of one class share a compile cache, so
    a sweep may hold many entries; the cap is raised, and reaching it fails loudly instead of silently
    running eagerly.
    """
    from torch._dynamo import config as dynamo_config
    from torch._inductor import config as inductor_config

    on_cuda = any(t.is_cuda for t in _tensors(list(inputs)))
    compiled = torch.compile(model, dynamic=False, mode="reduce-overhead" if on_cuda else None)
    start = time.perf_counter()
    try:
        with (inductor_config.patch(freezing=True, cpp_wrapper=not on_cuda),
              dynamo_config.patch(recompile_limit=COMPILED_VARIANTS, fail_on_recompile_limit_hit=True)):
            compiled(*inputs)
    except Exception as err:  # inductor raises many types (no C++ compiler, unsupported op, ...)
        raise RuntimeError(f"torch.compile could not compile {type(model).__name__} for inference: {err}. "
                           "Inductor needs a working C++ compiler on CPU (Triton on CUDA); profile eagerly "
                           "with task.compile=false.") from err
    return compiled, time.perf_counter() - start


def profile_module(
    model: nn.Module,
    inputs: Sequence[Tensor],
    *,
    device: torch.device,
    warmup: int = 5,
    iters: int = 20,
    train: bool = True,
    compile: bool = False,
) -> Profile:
    """Profile ``model`` on ``inputs``: inference latency in eval mode, a forward+backward step if ``train``.

    ``compile=True`` times inference of the torch.compile'd model instead (`compile_for_inference`);
    the train step is then not timed, as compiling training is a different measurement.
    """
    wants_training = train
    model = model.to(device)
    inputs = map_tensors(lambda t: t.to(device), list(inputs))
    batch = next(iter(_tensors(inputs))).shape[0]
    model.eval()
    macs = count_macs(model, *inputs)
    compile_s = None
    with torch.inference_mode():
        forward = model
        if compile:
            forward, compile_s = compile_for_inference(model, inputs)
            train = False
        infer = measure_latency(lambda: forward(*inputs), device, warmup=warmup, iters=iters)
    model.train()
    grad_inputs = map_tensors(lambda t: t.detach().requires_grad_(t.is_floating_point()), inputs)
    step_ms = peak = None
    # training mode only when asked: a BatchNorm on a pooled 1x1 map cannot train at batch 1
    saved = saved_activation_bytes(model, *grad_inputs) if wants_training else None
    if train:
        def step() -> None:
            loss = sum(o.float().mean() for o in _tensors(model(*grad_inputs)))
            loss.backward()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step_ms = measure_latency(step, device, warmup=max(1, warmup // 2), iters=max(3, iters // 2))["median_ms"]
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
    return Profile(
        params=count_params(model), macs=macs, macs_per_sample=macs // batch,
        input_shape=map_tensors(lambda t: list(t.shape), inputs[0]), latency_ms=infer["median_ms"], latency_iqr_ms=infer["iqr_ms"],
        throughput_per_s=batch / infer["median_ms"] * 1e3, train_step_ms=step_ms,
        saved_activation_mb=saved / 2**20 if saved is not None else None, peak_memory_mb=peak, compile_s=compile_s,
    )


def example_input(module: nn.Module, batch: int, channels: int, size: int,
                  generator: torch.Generator | None = None) -> Tensor | tuple[Tensor | None, ...]:
    """A random input in the layout ``module`` expects: one tensor, or one per scale for multi-scale
    operators (``module.in_scales``: channels per scale, 0 = absent; scale i at ceil(size / 2^i))."""
    scales = getattr(module, "in_scales", None)
    if scales is not None and len(scales) > 1:
        return tuple(torch.randn(batch, c, -(-size // 2**i), -(-size // 2**i), generator=generator) if c else None
                     for i, c in enumerate(scales))
    return torch.randn(batch, channels, size, size, generator=generator)


def to_layout(model: nn.Module, x: Any, channels_last: bool) -> tuple[nn.Module, Any]:
    """``model`` and its input(s) in channels-last memory format when ``channels_last``, else unchanged."""
    if not channels_last:
        return model, x
    return (model.to(memory_format=torch.channels_last),
            map_tensors(lambda t: t.contiguous(memory_format=torch.channels_last), x))


def profile_model(model: nn.Module, size: int, batch: int, *, device: torch.device | str = "cpu",
                  warmup: int = 5, iters: int = 30, train: bool = True, channels_last: bool = True,
                  compile: bool = False) -> dict[str, Any]:
    """Efficiency of an image model at ``size``: batch-1 latency, throughput and train step at ``batch``.

    ``compile=True`` times the torch.compile'd model (compiled once per input shape) and no train step.
    """
    device = torch.device(device)
    was_training = model.training
    model, one = to_layout(model, torch.randn(1, 3, size, size), channels_last)
    _, many = to_layout(model, torch.randn(batch, 3, size, size), channels_last)
    single = profile_module(model, [one], device=device, warmup=warmup, iters=iters, train=False, compile=compile)
    batched = profile_module(model, [many], device=device, warmup=warmup, iters=max(3, iters // 3), train=train,
                             compile=compile)
    model.train(was_training)
    return {
        "params": single.params, "macs": single.macs, "input_shape": [3, size, size],
        "latency_ms": {"median": single.latency_ms, "iqr": single.latency_iqr_ms, "batch": 1},
        "throughput_per_s": batched.throughput_per_s, "throughput_batch": batch,
        "train_step_ms": batched.train_step_ms, "saved_activation_mb": batched.saved_activation_mb,
        "peak_mem_mb": batched.peak_memory_mb, "channels_last": channels_last, "compiled": compile,
        "compile_s": single.compile_s + batched.compile_s if compile else None,
    }


def batch_one_efficiency(model: nn.Module, inputs: Sequence[Tensor], scope: str) -> dict[str, Any]:
    """A record's efficiency block for a network timed at batch 1 only (params, MACs, latency on the CPU):
    for networks whose inputs are not one image, or whose batch-1 latency is the figure that matters."""
    result = profile_module(model, inputs, device=torch.device("cpu"), train=False)
    return {"params": result.params, "macs": result.macs, "input_shape": list(inputs[-1].shape[1:]),
            "latency_ms": {"median": result.latency_ms, "iqr": result.latency_iqr_ms, "batch": 1},
            "throughput_per_s": result.throughput_per_s, "throughput_batch": 1, "scope": scope}


def compare_latency(model: nn.Module, reference: nn.Module, size: int, batch: int, *,
                    device: torch.device, rounds: int, iters: int, channels_last: bool = True,
                    compile: bool = False) -> dict[str, float]:
    """Inference latency of ``model`` over ``reference``'s at batch 1 and ``batch``, timed interleaved.

    Every round times both back to back (`interleaved_latency`); a ratio is the median over rounds of
    that round's ratio, so load that drifts while measuring cancels out. ``compile=True`` compares the
    two compiled models.
    """
    nets = {key: net.to(device).eval() for key, net in (("model", model), ("reference", reference))}
    ratios = {}
    with torch.inference_mode():
        for n in dict.fromkeys((1, batch)):
            fns = {}
            for key, net in nets.items():
                net, x = to_layout(net, torch.randn(n, 3, size, size, device=device), channels_last)
                forward = compile_for_inference(net, [x])[0] if compile else net
                fns[key] = lambda forward=forward, x=x: forward(x)
            per_round = max(1, iters // 4 if n == 1 else iters // 15)
            samples = interleaved_latency(fns, device, rounds=rounds, iters=per_round)
            ratios[f"batch_{n}"] = statistics.median(m / r for m, r in zip(samples["model"], samples["reference"]))
    return ratios

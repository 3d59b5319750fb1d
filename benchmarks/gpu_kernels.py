"""DDF and CARAFE on a CUDA GPU: the Triton kernels against cuDNN baselines, in the DDF paper's timing protocol.

Sections, run in this order (each a list of records in the JSON, each printed as it is measured):
- ``check``: the kernels against the tap loop (float64) on this GPU at small shapes, every variant: forward and
  gradients, max relative error, pass or fail. Read it first: timings of wrong kernels mean nothing.
- ``ddf_op``: the functional op (Triton kernels; the tap loop they replace) against a cuDNN depthwise 3x3 and a
  dense 3x3 conv, 256 channels, (32, 256, S, S) for S in 224, 112, 56, 28, 14, 7; forward and forward+backward;
  fp32 and bf16; NCHW as the official protocol, plus channels-last for the kernel and the depthwise conv.
- ``upsample``: CARAFE's reassembly (kernels; loop), the CARAFE and DDF-Up modules and bilinear + 3x3 conv, x2
  from (32, 256, S/2, S/2) for the even sizes above (outputs 224 to 14), forward and forward+backward, fp32, bf16.
- ``resnet50``: DDF-ResNet-50 against ResNet-50 (``op_resnet50`` with op=ddf / op=conv), batch 1, 32, 256 at
  224x224, fp32 channels-last inference (the suite's GPU convention), eager and compiled as `bench profile
  task.compile=true` compiles (inductor, frozen weights, CUDA graphs).

Timing: warm-up calls, then CUDA events around every call; the iteration count is set so a case takes about
``--seconds`` of GPU time (at least 5, at most 200 calls); medians are reported. A case that fails (out of
memory, a compile error) is recorded with its error and the run goes on. The run stops starting new cases after
``--budget`` seconds and records the rest as skipped, so it fits ~8 minutes on an H200 in one go.

Run: python benchmarks/gpu_kernels.py --json benchmarks/results/gpu_kernels_h200.json [--quick]
     [--sections check,ddf_op,upsample,resnet50] [--seconds 0.25] [--budget 420]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from typing import Any

import torch
from torch import Tensor, nn

import operators.ddf as ddf_module
from bench.results import hardware
from operators import create_upsampler, gpu
from operators.carafe import reassemble, reassemble_loop
from operators.ddf import ddf

DEVICE = "cuda"
SIZES = (224, 112, 56, 28, 14, 7)
QUICK_SIZES = (56, 14)
BATCH, CHANNELS = 32, 256
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHECK_DTYPES = {**DTYPES, "fp64": torch.float64}
TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2, "fp64": 1e-12}
"""Largest relative error a check passes with: float32 sums; one bf16 rounding; float64 sums."""
MODES = ("forward", "forward_backward")
RESNET_BATCHES = (1, 32, 256)
RESNET_SIZE = 224
SECTIONS = ("check", "ddf_op", "upsample", "resnet50")
CHECKS = [(3, 1, 1, "mul"), (3, 2, 2, "add"), (5, 1, 2, "add"), (5, 2, 1, "mul"), (7, 1, 1, "mul"), (7, 2, 2, "add")]
"""(k, stride, dilation, combine) checked, in both layouts: each k with each stride, dilation and combine (every
variant compiles its own three kernels, about a second each, so not the whole product)."""
QUICK_CHECKS = [(3, 1, 1, "mul"), (3, 2, 2, "add"), (5, 2, 1, "mul"), (7, 1, 2, "add")]


class Run:
    """The records so far, the time budget, and how long one case may time."""

    def __init__(self, budget_s: float, seconds: float) -> None:
        self.deadline, self.seconds = time.monotonic() + budget_s, seconds
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        """Keep a record and print it as one line (progress for whoever watches the run)."""
        self.records.append(record)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()), flush=True)

    def attempt(self, labels: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> None:
        """Record ``labels`` with what ``measure`` returns: skipped past the budget, its error if it fails."""
        if time.monotonic() > self.deadline:
            self.add({**labels, "skipped": "time budget spent"})
            return
        try:
            self.add({**labels, **measure()})
        except Exception as err:  # noqa: BLE001 - out of memory, a Triton or inductor compile error: record, go on
            self.add({**labels, "error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"})
        finally:
            torch.cuda.empty_cache()

    def time(self, labels: dict[str, Any], fn: Callable[[], Any]) -> None:
        """Record the latency of ``fn`` under ``labels``."""
        self.attempt(labels, lambda: cuda_latency(fn, self.seconds))


def cuda_latency(fn: Callable[[], Any], seconds: float, warmup: int = 3, least: int = 5, most: int = 200
                 ) -> dict[str, float]:
    """Milliseconds per call of ``fn`` from CUDA events around every call, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    fn()
    end.record()
    end.synchronize()
    iters = max(least, min(most, int(seconds * 1e3 / max(begin.elapsed_time(end), 1e-3))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, stop in events:
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(stop) for start, stop in events)
    return {"median_ms": statistics.median(times), "min_ms": times[0], "iters": iters}


@contextlib.contextmanager
def ddf_loop() -> Iterator[None]:
    """DDF's tap loop instead of the kernels (BENCH_DDF_BACKEND=torch), inside."""
    before, ddf_module.BACKEND = ddf_module.BACKEND, "torch"
    try:
        yield
    finally:
        ddf_module.BACKEND = before


def looped(step: Callable[[], Any]) -> Callable[[], Any]:
    """``step`` run entirely with DDF's tap loop: its backward too, which autograd runs after the forward."""

    def run() -> Any:
        with ddf_loop():
            return step()

    return run


def forward_only(fn: Callable[..., Tensor], *inputs: Tensor) -> Callable[[], Any]:
    """One forward call in inference mode (as compiled models are compiled for)."""

    def step() -> Tensor:
        with torch.inference_mode():
            return fn(*inputs)

    return step


def forward_backward(fn: Callable[..., Tensor], inputs: list[Tensor], params: list[Tensor]) -> Callable[[], Any]:
    """One forward and backward call: gradients of every input and parameter, none accumulated."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    grad: list[Tensor] = []  # the output's gradient, drawn at the first (warm-up) call

    def step() -> Any:
        y = fn(*leaves)
        if not grad:
            grad.append(torch.randn_like(y))
        return torch.autograd.grad(y, leaves + params, grad[0])

    return step


def relative_error(got: Tensor, want: Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``want``."""
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-12)).item()


def check_ddf(k: int, stride: int, dilation: int, combine: str, layout: str, dtype: str) -> dict[str, Any]:
    """Kernels against the float64 loop on the same values: forward and the three gradients."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    n, c, h, w = 2, 24, 15, 13
    ho, wo = math.ceil(h / stride), math.ceil(w / stride)
    shapes = [(n, c, h, w), (n, c, k, k), (n, k * k, ho, wo), (n, c, ho, wo)]
    x, ch, sp, g = (torch.randn(s, generator=gen, device=DEVICE).to(CHECK_DTYPES[dtype]) for s in shapes)
    if layout == "channels_last":
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    assert ddf_module._triton_kernels(x) is not None, "the kernels must be what runs"
    leaves = [t.detach().requires_grad_() for t in (x, ch, sp)]
    y = ddf(*leaves, k, dilation, stride, combine)
    got = [y, *torch.autograd.grad(y, leaves, g)]
    mul = combine == "mul"
    want = [ddf_module._forward_loop(x.double(), ch.double(), sp.double(), k, dilation, stride, mul),
            *ddf_module._backward_loop(g.double(), x.double(), ch.double(), sp.double(), k, dilation, stride, mul)]
    error = max(relative_error(a, b) for a, b in zip(got, want))
    return {"max_relative_error": error, "passed": error <= TOLERANCE[dtype]}


def check_carafe(k: int, scale: int, layout: str, dtype: str) -> dict[str, Any]:
    """Reassembly kernels against autograd of the float64 loop: forward and both gradients."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    n, c, h, w = 2, 24, 9, 7
    x = torch.randn(n, c, h, w, generator=gen, device=DEVICE).to(DTYPES[dtype])
    weights = torch.randn(n, k * k, scale, scale, h, w, generator=gen, device=DEVICE).softmax(1).to(DTYPES[dtype])
    g = torch.randn(n, c, h * scale, w * scale, generator=gen, device=DEVICE).to(DTYPES[dtype])
    if layout == "channels_last":
        x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    leaves = [t.detach().requires_grad_() for t in (x, weights)]
    y = reassemble(*leaves, k, scale)
    got = [y, *torch.autograd.grad(y, leaves, g)]
    oracle = [t.detach().double().requires_grad_() for t in (x, weights)]
    y64 = reassemble_loop(*oracle, k, scale)
    want = [y64, *torch.autograd.grad(y64, oracle, g.double())]
    error = max(relative_error(a, b) for a, b in zip(got, want))
    return {"max_relative_error": error, "passed": error <= TOLERANCE[dtype]}


def section_check(run: Run, quick: bool) -> None:
    """The DDF variants (fp32 in both layouts, some in bf16 and fp64), then CARAFE's."""
    variants = QUICK_CHECKS if quick else CHECKS
    runs = [(v, layout, "fp32") for v, layout in itertools.product(variants, ("nchw", "channels_last"))]
    runs += [(v, "channels_last", "bf16") for v in variants[::3]] + [((5, 2, 2, "mul"), "nchw", "fp64")]
    for (k, stride, dilation, combine), layout, dtype in runs:
        labels = {"section": "check", "op": "ddf", "k": k, "stride": stride, "dilation": dilation,
                  "combine": combine, "layout": layout, "dtype": dtype}
        run.attempt(labels, functools.partial(check_ddf, k, stride, dilation, combine, layout, dtype))
    for k, scale, layout, dtype in [(5, 2, "nchw", "fp32"), (5, 2, "channels_last", "bf16"), (3, 4, "nchw", "fp32")]:
        labels = {"section": "check", "op": "carafe", "k": k, "scale": scale, "layout": layout, "dtype": dtype}
        run.attempt(labels, functools.partial(check_carafe, k, scale, layout, dtype))


def section_ddf_op(run: Run, sizes: tuple[int, ...]) -> None:
    """The functional op against cuDNN's depthwise and dense 3x3 convs, the DDF paper's protocol."""
    for dtype_name, size in itertools.product(DTYPES, sizes):
        dtype = DTYPES[dtype_name]
        x = torch.randn(BATCH, CHANNELS, size, size, device=DEVICE, dtype=dtype)
        ch = torch.randn(BATCH, CHANNELS, 3, 3, device=DEVICE, dtype=dtype) * 0.1
        sp = torch.randn(BATCH, 9, size, size, device=DEVICE, dtype=dtype) * 0.1
        x_cl = x.contiguous(memory_format=torch.channels_last)
        depthwise = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS, bias=False).to(DEVICE, dtype)
        dense = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, bias=False).to(DEVICE, dtype)
        depthwise_cl = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS, bias=False).to(
            DEVICE, dtype, memory_format=torch.channels_last)
        methods: dict[str, tuple[Callable[..., Tensor], list[Tensor], list[Tensor]]] = {
            "ddf_triton": (ddf, [x, ch, sp], []),
            "ddf_triton_channels_last": (ddf, [x_cl, ch, sp], []),
            "ddf_loop": (ddf, [x, ch, sp], []),
            "depthwise3x3_cudnn": (depthwise, [x], list(depthwise.parameters())),
            "depthwise3x3_cudnn_channels_last": (depthwise_cl, [x_cl], list(depthwise_cl.parameters())),
            "dense3x3_cudnn": (dense, [x], list(dense.parameters())),
        }
        for name, (fn, inputs, params) in methods.items():
            labels = {"section": "ddf_op", "dtype": dtype_name, "size": size, "method": name}
            steps = {"forward": forward_only(fn, *inputs), "forward_backward": forward_backward(fn, inputs, params)}
            for mode, step in steps.items():
                run.time({**labels, "mode": mode}, looped(step) if name == "ddf_loop" else step)
        del x, ch, sp, x_cl, methods


def bilinear_conv(channels: int) -> nn.Module:
    """The plain upsampler CARAFE is compared with: bilinear x2, then a dense 3x3 conv."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                         nn.Conv2d(channels, channels, 3, padding=1))


def section_upsample(run: Run, sizes: tuple[int, ...]) -> None:
    """CARAFE's reassembly alone (kernels, loop) and the upsampler modules, x2 to each protocol size."""
    for dtype_name, size in itertools.product(DTYPES, sizes):
        dtype, s = DTYPES[dtype_name], size // 2
        x = torch.randn(BATCH, CHANNELS, s, s, device=DEVICE, dtype=dtype)
        weights = torch.randn(BATCH, 25, 2, 2, s, s, device=DEVICE, dtype=dtype).softmax(1)
        modules = {"carafe_module": create_upsampler("carafe", CHANNELS), "ddf_up_module": create_upsampler(
            "ddf_up", CHANNELS), "bilinear_conv3x3": bilinear_conv(CHANNELS)}
        methods: dict[str, tuple[Callable[..., Tensor], list[Tensor], list[Tensor]]] = {
            "carafe_reassemble_triton": (lambda a, b: reassemble(a, b, 5, 2), [x, weights], []),
            "carafe_reassemble_loop": (lambda a, b: reassemble_loop(a, b, 5, 2), [x, weights], []),
        }
        for name, module in modules.items():
            module = module.to(DEVICE, dtype)
            methods[name] = (module, [x], list(module.parameters()))
        for name, (fn, inputs, params) in methods.items():
            labels = {"section": "upsample", "dtype": dtype_name, "output_size": 2 * s, "method": name}
            run.time({**labels, "mode": "forward"}, forward_only(fn, *inputs))
            run.time({**labels, "mode": "forward_backward"}, forward_backward(fn, inputs, params))
        del x, weights, modules, methods


def compiled_latency(model: nn.Module, x: Tensor, seconds: float) -> dict[str, Any]:
    """Compile ``model`` for ``x`` as `bench profile task.compile=true` does, then time it."""
    from bench.measure import compile_for_inference

    with torch.inference_mode():
        compiled, compile_s = compile_for_inference(model, [x])
    return {"compile_s": compile_s, **cuda_latency(forward_only(compiled, x), seconds)}


def section_resnet50(run: Run, batches: tuple[int, ...]) -> None:
    """DDF-ResNet-50 against ResNet-50, fp32 channels-last inference: eager at every batch, then compiled."""
    import timm

    import backbones  # noqa: F401  registers op_resnet50

    models = {op: timm.create_model("op_resnet50", op=op).eval().to(DEVICE, memory_format=torch.channels_last)
              for op in ("conv", "ddf")}
    inputs = {b: torch.randn(b, 3, RESNET_SIZE, RESNET_SIZE, device=DEVICE).contiguous(memory_format=torch.channels_last)
              for b in batches}
    for (batch, x), (op, model) in itertools.product(inputs.items(), models.items()):
        run.time({"section": "resnet50", "op": op, "batch": batch, "mode": "eager"}, forward_only(model, x))
    for (batch, x), (op, model) in itertools.product(inputs.items(), models.items()):  # compiling takes the time
        run.attempt({"section": "resnet50", "op": op, "batch": batch, "mode": "compiled"},
                    functools.partial(compiled_latency, model, x, run.seconds))


def _median(records: list[dict[str, Any]], **labels: Any) -> float | None:
    """The median of the record with exactly these labels, if it was measured."""
    return next((r["median_ms"] for r in records
                 if "median_ms" in r and all(r.get(k) == v for k, v in labels.items())), None)


def ratios(records: list[dict[str, Any]]) -> dict[str, float]:
    """The figures to read: DDF and CARAFE against their baselines and against the loops the kernels replace."""
    pairs = []  # (name, labels of the numerator, labels of the denominator)
    for dtype, mode, size in itertools.product(DTYPES, MODES, SIZES):
        at = {"section": "ddf_op", "dtype": dtype, "mode": mode, "size": size}
        for top, bottom in [("ddf_triton", "depthwise3x3_cudnn"), ("ddf_triton", "dense3x3_cudnn"),
                            ("ddf_loop", "ddf_triton"),
                            ("ddf_triton_channels_last", "depthwise3x3_cudnn_channels_last")]:
            pairs.append((f"{top} / {bottom} {dtype} {mode} S={size}", {**at, "method": top}, {**at, "method": bottom}))
        at = {"section": "upsample", "dtype": dtype, "mode": mode, "output_size": size}
        for top, bottom in [("carafe_module", "bilinear_conv3x3"), ("ddf_up_module", "bilinear_conv3x3"),
                            ("carafe_reassemble_loop", "carafe_reassemble_triton")]:
            pairs.append((f"{top} / {bottom} {dtype} {mode} out={size}", {**at, "method": top},
                          {**at, "method": bottom}))
    for mode, batch in itertools.product(("eager", "compiled"), RESNET_BATCHES):
        at = {"section": "resnet50", "mode": mode, "batch": batch}
        pairs.append((f"ddf_resnet50 / resnet50 {mode} batch={batch}", {**at, "op": "ddf"}, {**at, "op": "conv"}))
    out = {}
    for name, top, bottom in pairs:
        a, b = _median(records, **top), _median(records, **bottom)
        if a is not None and b is not None:
            out[name] = a / b
    return out


def refusal() -> str | None:
    """Why this machine cannot run the benchmark (no CUDA device, no Triton kernels), or None."""
    if not torch.cuda.is_available():
        return (f"benchmarks/gpu_kernels.py times the Triton kernels of DDF and CARAFE on a CUDA GPU, and torch "
                f"{torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device here. Run it on a "
                "machine with an NVIDIA GPU and a CUDA build of torch; on the CPU, benchmarks/ddf_speed.py times "
                "the compiled CPU kernel instead.")
    if importlib.util.find_spec("triton") is None or gpu.kernels_for(torch.empty(0, device=DEVICE), "ddf") is None:
        return ("benchmarks/gpu_kernels.py needs Triton, which this environment cannot import, so DDF and CARAFE "
                "would run as their PyTorch tap loops and there would be no kernels to time. Install the triton "
                "version your torch names (PyPI's CUDA builds of torch ship with it).")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write every record, the ratios and the hardware here")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {QUICK_SIZES}, a covering set of checks, ResNet-50 at batch 1 and 32, "
                             "0.05 s per case")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {SECTIONS}")
    parser.add_argument("--seconds", type=float, default=None, help="GPU time per case (default 0.25; 0.05 quick)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds after which no new case starts")
    args = parser.parse_args()
    if (why := refusal()) is not None:
        sys.exit(why)
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        sys.exit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    run = Run(args.budget, args.seconds or (0.05 if args.quick else 0.25))
    sizes = QUICK_SIZES if args.quick else SIZES
    torch.manual_seed(0)
    started = time.monotonic()
    if "check" in sections:
        section_check(run, args.quick)
    if "ddf_op" in sections:
        section_ddf_op(run, sizes)
    if "upsample" in sections:
        section_upsample(run, tuple(s for s in sizes if s % 2 == 0))
    if "resnet50" in sections:
        section_resnet50(run, RESNET_BATCHES[:2] if args.quick else RESNET_BATCHES)
    result = {
        "protocol": {"batch": BATCH, "channels": CHANNELS, "sizes": sizes, "seconds_per_case": run.seconds,
                     "quick": args.quick, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "tile": gpu.TILE, "wall_s": time.monotonic() - started},
        "versions": {"torch": torch.__version__, "triton": version("triton"), "cuda": torch.version.cuda},
        "hardware": hardware("cuda"),
        "checks_passed": all(r.get("passed", True) for r in run.records),
        "ratios": ratios(run.records),
        "records": run.records,
    }
    print(json.dumps({k: result[k] for k in ("checks_passed", "ratios")}, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()

"""The Triton kernels of DDF and CARAFE (operators/gpu) against their tap-loop oracles, and their dispatch, on the CPU.

Why a subprocess: triton 3.7.1 decides whether a kernel is compiled or interpreted once, when ``@triton.jit``
runs (it reads ``TRITON_INTERPRET`` through ``triton.knobs.runtime.interpret`` at decoration), that is when
operators.gpu.ddf is first imported in the process. Setting the variable at the top of this module is not
reliable in a whole-suite run (on a GPU machine an earlier test may have imported the kernels compiled), and it
would leak into every later test that defines Triton code (inductor's kernels would be interpreted too). So the
interpreter checks (CASES) run in one child process started with TRITON_INTERPRET=1 on this very file; it reports
each case as JSON and each case is one test here. The dispatch is tested in this process, with the device check
(operators.gpu.on_cuda) patched; so is the compilation of the kernels for an H200 (sm_90a), which needs no GPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

import operators.carafe as carafe_module
import operators.ddf as ddf_module
from operators import OperatorError, create_upsampler, gpu
from operators.carafe import reassemble, reassemble_loop
from operators.ddf import DDF, DDFUp, ddf

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed (it ships with PyPI's CUDA torch)")
REPORT = "TRITON-INTERPRETER-REPORT "
"""Prefix of the child's one line of results (anything else it prints is left alone)."""
HALF = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def through_kernels(on: bool = True) -> Iterator[None]:
    """CPU tensors take the CUDA path (the Triton kernels) inside; outside, DDF runs its loop (the oracle)."""
    before = gpu.on_cuda, ddf_module.BACKEND
    gpu.on_cuda = (lambda x: True) if on else before[0]
    ddf_module.BACKEND = "auto" if on else "torch"
    try:
        yield
    finally:
        gpu.on_cuda, ddf_module.BACKEND = before


def assert_rounded(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """``got`` in ``dtype`` is ``want`` (float64) accumulated in float32 or better, then rounded once to ``dtype``."""
    assert got.dtype == dtype, f"{name}: dtype {got.dtype}, want {dtype}"
    if dtype in HALF:  # one unit in the last place: what a single rounding of a float32 sum can cost
        ulp = 2.0 ** -(7 if dtype == torch.bfloat16 else 10)
        err = (got.double() - want).abs() - (want.abs() * ulp + 1e-6)
        assert err.max() <= 0, f"{name}: off by more than one {dtype} ulp (worst excess {err.max().item():.3g})"
    else:
        tol = 1e-12 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def _ddf_case(k: int, stride: int, dilation: int, combine: str, channels_last: bool = False,
              dtype: torch.dtype = torch.float32, channel_dtype: torch.dtype | None = None,
              small_tiles: bool = False, size: tuple[int, int, int, int] = (2, 5, 7, 6)) -> Callable[[], None]:
    """One DDF variant through ``ddf`` (custom op, autograd, kernels) against the float64 loop on the same values."""

    def check() -> None:
        gen = torch.Generator().manual_seed(k * 100 + stride * 10 + dilation)
        n, c, h, w = size
        ho, wo = math.ceil(h / stride), math.ceil(w / stride)
        x = torch.randn(n, c, h, w, generator=gen).to(dtype)
        ch = torch.randn(n, c, k, k, generator=gen).to(channel_dtype or dtype)
        sp = torch.randn(n, k * k, ho, wo, generator=gen).to(dtype)
        g = torch.randn(n, c, ho, wo, generator=gen).to(dtype)
        if channels_last:
            x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
        leaves = [t.detach().requires_grad_() for t in (x, ch, sp)]
        with through_kernels(), tiles(small_tiles):
            y = ddf(*leaves, k, dilation, stride, combine)
            grads = torch.autograd.grad(y, leaves, g)
        want_y = ddf_module._forward_loop(x.double(), ch.double(), sp.double(), k, dilation, stride, combine == "mul")
        wants = ddf_module._backward_loop(g.double(), x.double(), ch.double(), sp.double(), k, dilation, stride,
                                          combine == "mul")
        assert y.is_contiguous(memory_format=gpu.output_format(x)) and grads[0].is_contiguous(
            memory_format=gpu.output_format(x)), "outputs keep the input's layout"
        for name, got, want, like in zip(("y", "grad x", "grad channel", "grad spatial"), (y, *grads),
                                         (want_y, *wants), (x, x, ch, sp)):
            assert_rounded(got, want, like.dtype, name)

    return check


@contextlib.contextmanager
def tiles(small: bool) -> Iterator[None]:
    """Tiles of 8 elements when ``small`` (2 x 4 in NCHW, 4 x 2 channels-last): many programs, partial blocks."""
    before = gpu.TILE, gpu.CONTIGUOUS_BLOCK
    if small:
        gpu.TILE, gpu.CONTIGUOUS_BLOCK = 8, 4
    try:
        yield
    finally:
        gpu.TILE, gpu.CONTIGUOUS_BLOCK = before


def _carafe_case(k: int, scale: int, channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 small_tiles: bool = False, size: tuple[int, int, int, int] = (2, 5, 4, 3)) -> Callable[[], None]:
    """One CARAFE variant through ``reassemble`` (custom op, autograd, kernels) against autograd of the loop."""

    def check() -> None:
        gen = torch.Generator().manual_seed(k * 10 + scale)
        n, c, h, w = size
        x = torch.randn(n, c, h, w, generator=gen).to(dtype)
        weights = torch.randn(n, k * k, scale, scale, h, w, generator=gen).softmax(1).to(dtype)
        g = torch.randn(n, c, h * scale, w * scale, generator=gen).to(dtype)
        if channels_last:
            x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
        leaves = [t.detach().requires_grad_() for t in (x, weights)]
        with through_kernels(), tiles(small_tiles):
            y = reassemble(*leaves, k, scale)
            grads = torch.autograd.grad(y, leaves, g)
        oracle = [t.detach().double().requires_grad_() for t in (x, weights)]
        want_y = reassemble_loop(*oracle, k, scale)
        wants = torch.autograd.grad(want_y, oracle, g.double())
        assert y.is_contiguous(memory_format=gpu.output_format(x)), "the output keeps the input's layout"
        for name, got, want, like in zip(("y", "grad x", "grad kernels"), (y, *grads), (want_y.detach(), *wants),
                                         (x, x, weights)):
            assert_rounded(got, want, like.dtype, name)

    return check


def _modules() -> None:
    """DDF (stride 2, channels-last) and guided DDF-Up: outputs and every parameter's gradient, kernels vs loop."""
    torch.manual_seed(0)
    cases = [(DDF(8, stride=2), (torch.randn(2, 8, 7, 7).contiguous(memory_format=torch.channels_last),)),
             (DDFUp(8, guide_channels=3), (torch.randn(2, 8, 5, 4), torch.randn(2, 3, 10, 8))),
             (create_upsampler("carafe", 8), (torch.randn(2, 8, 4, 5),))]
    for module, inputs in cases:
        results = []
        for on in (True, False):
            module.zero_grad()
            with through_kernels(on):
                y = module(*inputs)
                y.square().sum().backward()
            results.append([y.detach()] + [p.grad.clone() for p in module.parameters()])
        name = type(module).__name__
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def _opcheck() -> None:
    """Fake (meta) and real outputs agree in shape, dtype and strides with the kernels in place (torch.compile's view)."""
    x = torch.randn(1, 3, 5, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    ch, sp = torch.randn(1, 3, 3, 3, requires_grad=True), torch.randn(1, 9, 3, 2, requires_grad=True)
    weights = torch.randn(1, 9, 2, 2, 5, 4).softmax(1).requires_grad_()
    with through_kernels():
        torch.library.opcheck(torch.ops.bench.ddf.default, (x, ch, sp, 3, 1, 2, True))
        torch.library.opcheck(torch.ops.bench.carafe_reassemble.default, (x, weights, 3, 2))


def _compiled() -> None:
    """torch.compile traces both operators into one graph each (forward and backward) with the kernels inside."""
    x = torch.randn(1, 3, 5, 4).contiguous(memory_format=torch.channels_last)
    ch, sp, weights = torch.randn(1, 3, 3, 3), torch.randn(1, 9, 3, 2), torch.randn(1, 9, 2, 2, 5, 4).softmax(1)
    calls = [(lambda a, b, c: ddf(a, b, c, 3, 1, 2, "add"), (x, ch, sp)),
             (lambda a, b: reassemble(a, b, 3, 2), (x, weights))]
    with through_kernels():
        for fn, inputs in calls:
            results = []
            for run in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
                leaves = [t.detach().requires_grad_() for t in inputs]
                y = run(*leaves)
                results.append([y, *torch.autograd.grad(y.square().sum(), leaves)])
            for got, want in zip(*results):
                torch.testing.assert_close(got, want)
    torch._dynamo.reset()


def _dispatch_reaches_the_kernels() -> None:
    """With the device check saying CUDA, both operators resolve to the kernel modules, interpreted."""
    import triton

    x = torch.zeros(1, 1, 1, 1)
    with through_kernels():
        assert ddf_module._triton_kernels(x).__name__ == "operators.gpu.ddf"
        assert gpu.kernels_for(x, "carafe").__name__ == "operators.gpu.carafe"
    assert triton.knobs.runtime.interpret, "the child must run interpreted"


CASES: dict[str, Callable[[], None]] = {
    "ddf-mul-k3": _ddf_case(3, 1, 1, "mul"),
    "ddf-add-k3": _ddf_case(3, 1, 1, "add"),
    "ddf-mul-k3-stride2-odd-channels_last": _ddf_case(3, 2, 1, "mul", channels_last=True, size=(2, 5, 7, 5)),
    "ddf-add-k3-stride2-dilation2-small_tiles": _ddf_case(3, 2, 2, "add", small_tiles=True, size=(1, 3, 7, 5)),
    "ddf-mul-k3-dilation2-channels_last-small_tiles": _ddf_case(3, 1, 2, "mul", channels_last=True, small_tiles=True,
                                                                size=(1, 6, 5, 3)),
    "ddf-mul-k5-dilation2-channels_last": _ddf_case(5, 1, 2, "mul", channels_last=True),
    "ddf-mul-k5-stride2": _ddf_case(5, 2, 1, "mul"),
    "ddf-add-k7": _ddf_case(7, 1, 1, "add"),
    "ddf-mul-k7-stride2-dilation2-channels_last": _ddf_case(7, 2, 2, "mul", channels_last=True, size=(2, 5, 9, 7)),
    "ddf-float64-k5-stride2-dilation2": _ddf_case(5, 2, 2, "mul", dtype=torch.float64, size=(2, 5, 7, 5)),
    "ddf-bf16-fp32_channel_filter": _ddf_case(3, 1, 1, "mul", dtype=torch.bfloat16, channel_dtype=torch.float32),
    "ddf-bf16-add-stride2-channels_last": _ddf_case(3, 2, 1, "add", channels_last=True, dtype=torch.bfloat16),
    "ddf-fp16-mul-k5": _ddf_case(5, 1, 1, "mul", dtype=torch.float16),
    "carafe-k5-x2": _carafe_case(5, 2),
    "carafe-k3-x2-channels_last-small_tiles": _carafe_case(3, 2, channels_last=True, small_tiles=True,
                                                           size=(1, 5, 3, 2)),
    "carafe-k3-x4-odd-small_tiles": _carafe_case(3, 4, small_tiles=True, size=(1, 3, 1, 3)),
    "carafe-float64-k5-x2": _carafe_case(5, 2, dtype=torch.float64),
    "carafe-bf16-k5-x2": _carafe_case(5, 2, dtype=torch.bfloat16),
    "modules-ddf-ddf_up-carafe": _modules,
    "opcheck": _opcheck,
    "torch.compile": _compiled,
    "dispatch": _dispatch_reaches_the_kernels,
}


def _run_cases() -> None:
    """The child's work: every case, each reported as None (passed) or its traceback."""
    results = {}
    for name, case in CASES.items():
        try:
            case()
            results[name] = None
        except Exception:  # noqa: BLE001 - each case's failure is reported to its own test in the parent
            results[name] = traceback.format_exc()
    print(REPORT + json.dumps(results), flush=True)


@pytest.fixture(scope="module")
def interpreted() -> dict[str, str | None]:
    """Run CASES once in a child with TRITON_INTERPRET=1 (see the module docstring); its report, case by case."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=500, check=False)
    lines = [ln for ln in run.stdout.splitlines() if ln.startswith(REPORT)]
    if run.returncode or not lines:
        pytest.fail(f"the interpreter child failed (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return json.loads(lines[-1][len(REPORT):])


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_kernels_match_the_loop_under_the_interpreter(interpreted: dict[str, str | None], case: str) -> None:
    if interpreted[case] is not None:
        pytest.fail(interpreted[case], pytrace=False)


def test_tiles_run_along_the_contiguous_axis_and_fit_the_tensor() -> None:
    assert gpu.tile(256, 56 * 56, channels_last=False) == (8, 128)  # NCHW: pixels are contiguous
    assert gpu.tile(256, 56 * 56, channels_last=True) == (128, 8)
    assert gpu.tile(3, 5, channels_last=False) == (4, 8) and gpu.tile(3, 5, channels_last=True) == (4, 8)


@needs_triton
def test_cuda_tensors_take_the_kernels_and_cpu_tensors_keep_their_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    x, weights = torch.randn(1, 2, 3, 3), torch.randn(1, 9, 2, 2, 3, 3).softmax(1)
    assert ddf_module._triton_kernels(x) is None and gpu.kernels_for(x, "carafe") is None
    through_op = []
    monkeypatch.setattr(carafe_module, "_reassemble_op", lambda *args: through_op.append(args) or reassemble_loop(*args))
    reassemble(x, weights, 3, 2)
    assert not through_op, "on the CPU CARAFE keeps its loop (and autograd through it)"
    monkeypatch.setattr(gpu, "on_cuda", lambda t: True)
    assert ddf_module._triton_kernels(x).__name__ == "operators.gpu.ddf"
    assert gpu.kernels_for(x, "carafe").__name__ == "operators.gpu.carafe"
    reassemble(x, weights, 3, 2)
    assert len(through_op) == 1, "on CUDA CARAFE goes through its custom op, whose implementation runs the kernels"
    monkeypatch.setattr(ddf_module, "BACKEND", "torch")
    assert ddf_module._triton_kernels(x) is None, "BENCH_DDF_BACKEND=torch: the loop on every device"


def test_without_triton_cuda_runs_the_loops_and_warns_once_per_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where Triton cannot be imported, DDF and CARAFE on CUDA fall back to their loops, forward and backward."""
    monkeypatch.setitem(sys.modules, "triton", None)  # any `import triton` now raises ImportError
    for name in ("operators.gpu.ddf", "operators.gpu.carafe"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(gpu, "on_cuda", lambda t: True)
    monkeypatch.setattr(ddf_module, "_use_cpp", lambda t: False)  # as on CUDA, where the CPU kernel never applies
    gpu._load.cache_clear()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ch = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    sp = torch.randn(1, 9, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 9, 2, 2, 5, 4, generator=gen, dtype=torch.float64).softmax(1).requires_grad_()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert torch.autograd.gradcheck(lambda a, b, c: ddf(a, b, c, 3, 1, 2), (x, ch, sp))
            assert torch.autograd.gradcheck(lambda a, b: reassemble(a, b, 3, 2), (x, weights))
        y, want = reassemble(x, weights, 3, 2), reassemble_loop(x, weights, 3, 2)
        torch.testing.assert_close(y, want)
        for got, expected in zip(torch.autograd.grad(y.sum(), (x, weights)),
                                 torch.autograd.grad(want.sum(), (x, weights))):
            torch.testing.assert_close(got, expected)
    finally:
        gpu._load.cache_clear()
    said = [str(w.message) for w in caught if "Triton GPU kernels cannot be used" in str(w.message)]
    assert [m.split(":")[0] for m in said] == ["ddf", "carafe"], said
    assert "PyTorch loop" in said[0] and "install the triton version" in said[0]


def test_carafe_refuses_kernels_of_the_wrong_shape() -> None:
    with pytest.raises(OperatorError, match=r"kernels must be \(1, 9, 2, 2, 3, 3\)"):
        reassemble(torch.randn(1, 2, 3, 3), torch.randn(1, 9, 2, 2, 3, 4), 3, 2)


class _Recorder:
    """Stands in for a Triton kernel: records each launch's arguments instead of running it."""

    def __init__(self, kernel: object) -> None:
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return lambda *args, **constants: self.launches.append((args, constants))


_TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


@needs_triton
def test_kernels_compile_for_an_h200_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel, launched as the operators launch it, compiles to an sm_90a cubin (ptxas ships with Triton).

    The interpreter accepts programs the compiler rejects (types, layouts, constexpr use); this catches those.
    """
    import triton

    if triton.knobs.runtime.interpret:
        pytest.skip("TRITON_INTERPRET=1 is set for the whole run: the kernels here are interpreted, not compiled")
    try:
        from triton.backends import backends
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as err:
        pytest.skip(f"this Triton has no ahead-of-time compiler API ({err})")
    if "nvidia" not in backends:
        pytest.skip(f"this Triton has no NVIDIA backend (only {sorted(backends)})")
    from operators.gpu import carafe as carafe_kernels
    from operators.gpu import ddf as ddf_kernels

    recorders = {}
    for module in (ddf_kernels, carafe_kernels):
        for name in [n for n in vars(module) if n.endswith("_kernel")]:
            recorders[name, module.__name__] = recorder = _Recorder(getattr(module, name))
            monkeypatch.setattr(module, name, recorder)
    for dtype, channel_dtype, layout, k, stride, dilation, mul in [
            (torch.float32, torch.float32, torch.contiguous_format, 3, 1, 1, True),
            (torch.bfloat16, torch.float32, torch.channels_last, 7, 2, 2, False)]:
        x = torch.randn(2, 16, 9, 9, dtype=dtype).contiguous(memory_format=layout)
        ch = torch.randn(2, 16, k, k, dtype=channel_dtype)
        sp = torch.randn(2, k * k, math.ceil(9 / stride), math.ceil(9 / stride), dtype=dtype)
        y = ddf_kernels.forward(x, ch, sp, k, dilation, stride, mul)
        ddf_kernels.backward(torch.randn_like(y), x, ch, sp, k, dilation, stride, mul)
        weights = torch.randn(2, k * k, 2, 2, 9, 9, dtype=dtype)
        y = carafe_kernels.forward(x, weights, k, 2)
        carafe_kernels.backward(torch.randn_like(y), x, weights, k, 2)
    for (name, _), recorder in recorders.items():
        assert len(recorder.launches) == 2, f"{name} was not launched by both variants"
        for args, constants in recorder.launches:
            signature = {arg: f"*{_TYPES[v.dtype]}" if isinstance(v, torch.Tensor) else "i32"
                         for arg, v in zip(recorder.kernel.arg_names, args)}
            signature.update(dict.fromkeys(constants, "constexpr"))
            triton.compile(ASTSource(recorder.kernel, signature, constants), target=GPUTarget("cuda", 90, 32))


def test_the_gpu_benchmark_refuses_without_cuda_and_reads_its_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_kernels.py"
    spec = importlib.util.spec_from_file_location("gpu_kernels_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "sees no CUDA device here" in benchmark.refusal()
    at = {"section": "ddf_op", "dtype": "bf16", "mode": "forward", "size": 56}
    records = [{**at, "method": "ddf_triton", "median_ms": 2.0}, {**at, "method": "depthwise3x3_cudnn", "median_ms": 1.0},
               {**at, "method": "ddf_loop", "median_ms": 10.0}, {**at, "method": "dense3x3_cudnn", "error": "OOM"},
               {"section": "resnet50", "op": "ddf", "batch": 32, "mode": "eager", "median_ms": 3.0},
               {"section": "resnet50", "op": "conv", "batch": 32, "mode": "eager", "median_ms": 2.0}]
    assert benchmark.ratios(records) == {"ddf_triton / depthwise3x3_cudnn bf16 forward S=56": 2.0,
                                         "ddf_loop / ddf_triton bf16 forward S=56": 5.0,
                                         "ddf_resnet50 / resnet50 eager batch=32": 1.5}


if __name__ == "__main__":
    _run_cases()

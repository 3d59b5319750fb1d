"""MAC counting, parameters, latency and activation memory."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.measure import (COMPILED_VARIANTS, compile_for_inference, count_macs, count_params, counter_macs,
                           interleaved_latency, malloc_policy, measure_latency, profile_module, retain_freed_memory,
                           saved_activation_bytes)
from bench.results import hardware
from operators import create_op, create_upsampler, register_op
from bench.measure import compare_latency


def test_counter_and_formula_agree_on_plain_layers() -> None:
    model = nn.Sequential(create_op("conv", 3, 8), nn.ReLU(), create_op("dwconv", 8, 16, stride=2))
    x = torch.randn(2, 3, 9, 9)
    expected = 2 * 9 * 9 * 8 * 3 * 9 + 2 * 5 * 5 * (8 * 9 + 8 * 16)
    assert count_macs(model, x) == counter_macs(model, x) == expected


def test_operator_formula_replaces_what_the_counter_cannot_see(restore_registry: None) -> None:
    @register_op("hidden", kind="conv", channel_change=False, stride=False, macs=lambda m, x: 1000 * x.shape[0])
    class Hidden(nn.Module):
        """Ordinary conv plus work the counter misses (elementwise), counted by the formula instead."""

        def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1) -> None:
            super().__init__()
            self.inner = nn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * x

    head = nn.Conv2d(4, 4, 1, bias=False)
    model = nn.Sequential(head, nn.Sequential(create_op("hidden", 4, 4), create_op("hidden", 4, 4)))
    x = torch.randn(3, 4, 5, 5)
    head_macs = 3 * 4 * 4 * 25
    assert counter_macs(model, x) == head_macs * 3  # the counter only sees the 1x1 convs
    assert count_macs(model, x) == head_macs + 2 * 3000


def test_upsampler_macs() -> None:
    x = torch.randn(1, 4, 6, 6)
    assert count_macs(create_upsampler("nearest", 4), x) == 0
    assert count_macs(create_upsampler("bilinear", 4), x) == 4 * 4 * 12 * 12
    assert count_macs(create_upsampler("deconv", 4), x) == counter_macs(create_upsampler("deconv", 4), x)


def test_params_and_saved_activations() -> None:
    conv = nn.Conv2d(4, 8, 3, bias=False)
    assert count_params(conv) == 4 * 8 * 9
    x = torch.randn(2, 4, 10, 10, requires_grad=True)
    # a conv keeps its input (and its weight, which is not an activation) for backward
    assert saved_activation_bytes(conv, x) == x.numel() * 4
    relu_net = nn.Sequential(conv, nn.ReLU())
    assert saved_activation_bytes(relu_net, x) == x.numel() * 4 + 2 * 8 * 8 * 8 * 4


def test_latency_and_profile_record() -> None:
    stats = measure_latency(lambda: torch.ones(10).sum(), torch.device("cpu"), warmup=1, iters=5)
    assert stats["iters"] == 5 and stats["median_ms"] > 0
    prof = profile_module(create_op("conv", 8, 8), [torch.randn(2, 8, 8, 8)], device=torch.device("cpu"),
                          warmup=1, iters=3)
    assert prof.macs == 2 * prof.macs_per_sample == 2 * 8 * 8 * 9 * 64
    assert prof.params == 8 * 8 * 9
    assert prof.train_step_ms > 0 and prof.throughput_per_s > 0


def test_interleaved_latency_alternates_models_round_by_round() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    samples = interleaved_latency(fns, torch.device("cpu"), rounds=3, iters=2, warmup=1)
    assert {name: len(v) for name, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    timed = calls[3:]  # after one warm-up call each; every timing is one warm-up call plus two timed ones
    assert timed == [n for n in "abc" for _ in range(3)] + [n for n in "cba" for _ in range(3)] \
        + [n for n in "abc" for _ in range(3)]


class _Sleeper(nn.Module):
    """A model whose forward takes a known wall time, to check ratios without depending on the machine's speed."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x


def test_compare_latency_is_the_ratio_of_the_two_models_times() -> None:
    ratios = compare_latency(_Sleeper(0.006), _Sleeper(0.002), size=4, batch=2, device=torch.device("cpu"),
                             rounds=3, iters=4)
    assert set(ratios) == {"batch_1", "batch_2"}
    assert all(2.0 < r < 3.5 for r in ratios.values()), ratios


def _resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_timings_reuse_freed_memory_instead_of_faulting_it_back() -> None:
    """After a timing, a freed 16 MiB tensor stays in the process (glibc would otherwise unmap it)."""
    measure_latency(lambda: None, torch.device("cpu"), warmup=0, iters=1)
    policy = malloc_policy()
    assert hardware("cpu")["malloc"] == policy == retain_freed_memory()
    if policy != "glibc, freed memory retained":
        pytest.skip(f"malloc here is not glibc's ({policy})")
    x = torch.ones(4 * 2**20)
    written = _resident_bytes()
    del x
    assert _resident_bytes() > written - 8 * 2**20


def test_compiled_inference_matches_the_eager_model() -> None:
    model = nn.Sequential(create_op("conv", 4, 8), nn.BatchNorm2d(8), nn.ReLU(), create_op("dwconv", 8, 8)).eval()
    nn.init.uniform_(model[1].running_mean)  # a BatchNorm that is not the identity, folded when frozen
    x = torch.randn(2, 4, 9, 9)
    with torch.inference_mode():
        compiled, seconds = compile_for_inference(model, [x])
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    assert seconds > 0


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu()


def test_a_sweep_compiles_every_model_of_one_class() -> None:
    """More instances than dynamo's default cap of 8 per class each get compiled, none silently runs eagerly."""
    from torch._dynamo.utils import counters

    assert COMPILED_VARIANTS > 9
    before = counters["frames"]["ok"]
    with torch.inference_mode():
        for _ in range(9):
            compile_for_inference(_Tiny().eval(), [torch.randn(1, 2, 5, 5)])
    assert counters["frames"]["ok"] - before == 9

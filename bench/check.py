"""`bench check op=NAME`: run an operator against the contract every benchmarked operator must meet.

Each check returns pass, fail (with the reason) or skip (the operator does not claim the feature).
Declared capabilities are checked both ways: a claimed feature must work, and an unclaimed one must
be refused with a clear error rather than silently misbehave.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from bench.measure import counter_macs, example_input
from operators.registry import OperatorError, OpInfo, create_op, create_upsampler, mac_formula, op_info

Status = Literal["pass", "fail", "skip"]


@dataclass
class CheckResult:
    """Outcome of one conformance check."""

    check: str
    status: Status
    detail: str = ""


class CheckFailed(AssertionError):
    """A contract violation, with a message for the operator's author."""


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def flat(y: Tensor | Sequence[Tensor | None]) -> list[Tensor]:
    """The tensors of an output, whether one tensor or per-scale (None for absent scales)."""
    return [y] if isinstance(y, Tensor) else [t for t in y if t is not None]


class OperatorHarness:
    """Builds an operator and inputs of a chosen shape for the checks.

    Multi-scale operators (``module.in_scales`` / ``out_scales``: channels per scale, 0 = absent)
    get one tensor per scale at 1/2^i resolution and must return one per scale.
    """

    def __init__(self, info: OpInfo, channels: int = 16, size: int = 9, seed: int = 0) -> None:
        self.info, self.channels, self.size, self.seed = info, channels, size, seed

    def build(self, out_channels: int | None = None, stride: int = 1, seed: int | None = None, **kw) -> nn.Module:
        torch.manual_seed(self.seed if seed is None else seed)
        if self.info.kind == "conv":
            return create_op(self.info.name, self.channels, out_channels or self.channels, stride=stride, **kw)
        return create_upsampler(self.info.name, self.channels, **kw)

    def inputs(self, module: nn.Module, batch: int = 2, size: int | None = None,
               guide_channels: int | None = None) -> tuple:
        gen = torch.Generator().manual_seed(self.seed + 1)
        s = size or self.size
        x = example_input(module, batch, self.channels, s, gen)
        if guide_channels:
            return x, torch.randn(batch, guide_channels, 2 * s, 2 * s, generator=gen)
        return (x,)

    def expected_shapes(self, module: nn.Module, batch: int, size: int, out_channels: int | None = None,
                        stride: int = 1) -> list[tuple[int, ...]]:
        if self.info.kind == "upsample":
            return [(batch, self.channels, 2 * size, 2 * size)]
        out = -(-size // stride)
        scales = getattr(module, "out_scales", None) or [out_channels or self.channels]
        return [(batch, c, -(-out // 2**j), -(-out // 2**j)) for j, c in enumerate(scales) if c]


def _shapes(y: Tensor | Sequence[Tensor | None]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in flat(y)]


def _shape_check(h: OperatorHarness, size: int, **build) -> None:
    module = h.build(**build).eval()
    with torch.no_grad():
        y = module(*h.inputs(module, size=size))
    want = h.expected_shapes(module, 2, size, build.get("out_channels"), build.get("stride", 1))
    _expect(_shapes(y) == want, f"input {size}x{size}: output shape(s) {_shapes(y)}, expected {want}")


def _refused(build: Callable[[], nn.Module], feature: str) -> None:
    try:
        build()
    except OperatorError:
        return
    raise CheckFailed(f"{feature} is not declared, yet the operator was built without an OperatorError")


def check_odd_and_even_sizes(h: OperatorHarness) -> None:
    for size in (h.size, h.size + 1):
        _shape_check(h, size)


def check_stride2(h: OperatorHarness) -> str | None:
    if h.info.kind != "conv":
        return "upsample kind"
    if not h.info.stride:
        _refused(lambda: h.build(stride=2), "stride 2")
        return None
    for size in (h.size, h.size + 1):
        _shape_check(h, size, stride=2)
    return None


def check_channel_change(h: OperatorHarness) -> str | None:
    if h.info.kind != "conv":
        return "upsample kind"
    if not h.info.channel_change:
        _refused(lambda: h.build(out_channels=2 * h.channels), "channel change")
        return None
    _shape_check(h, h.size, out_channels=2 * h.channels)
    _shape_check(h, h.size, out_channels=h.channels // 2, stride=2 if h.info.stride else 1)
    return None


def check_dilation(h: OperatorHarness) -> str | None:
    if h.info.kind != "conv":
        return "upsample kind"
    if not h.info.dilation:
        _refused(lambda: h.build(dilation=2), "dilation")
        return None
    _shape_check(h, h.size, dilation=2)
    return None


def check_guide(h: OperatorHarness) -> str | None:
    if h.info.kind != "upsample":
        return "conv kind"
    if not h.info.guide:
        _refused(lambda: h.build(guide_channels=4), "a guidance feature")
        return None
    module = h.build(guide_channels=4).eval()
    with torch.no_grad():
        y = module(*h.inputs(module, guide_channels=4))
    _expect(_shapes(y) == h.expected_shapes(module, 2, h.size), f"guided output shape(s) {_shapes(y)}")
    return None


def check_batch_one(h: OperatorHarness) -> None:
    module = h.build().train()
    y = module(*h.inputs(module, batch=1))
    _expect(_shapes(y) == h.expected_shapes(module, 1, h.size), f"batch 1 in train mode gave {_shapes(y)}")


def check_finite(h: OperatorHarness) -> None:
    module = h.build().train()
    _expect(all(torch.isfinite(t).all() for t in flat(module(*h.inputs(module)))), "train-mode output is not finite")
    with torch.no_grad():
        y = module.eval()(*h.inputs(module))
    _expect(all(torch.isfinite(t).all() for t in flat(y)), "eval-mode output has NaN or Inf values")


def check_gradients(h: OperatorHarness) -> None:
    module = h.build().train()
    (x, *rest) = h.inputs(module)
    leaves = [t.requires_grad_(True) for t in flat(x)]
    gen = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in flat(module(x, *rest)))
    loss.backward()
    for i, leaf in enumerate(leaves):
        _expect(leaf.grad is not None and bool(leaf.grad.abs().sum() > 0), f"no gradient reaches input {i}")
        _expect(bool(torch.isfinite(leaf.grad).all()), f"gradient of input {i} has NaN or Inf values")
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    _expect(not missing, f"parameters without gradient: {', '.join(missing)}")
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    _expect(not bad, f"parameters with non-finite gradient: {', '.join(bad)}")


def _same(a: Tensor | Sequence, b: Tensor | Sequence, atol: float = 0.0) -> bool:
    fa, fb = flat(a), flat(b)
    return len(fa) == len(fb) and all(torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(fa, fb))


def check_eval_determinism(h: OperatorHarness) -> None:
    module = h.build().eval()
    inputs = h.inputs(module)
    with torch.no_grad():
        a, b = module(*inputs), module(*inputs)
    _expect(_same(a, b), "two eval-mode forwards on the same input differ")


def check_state_dict(h: OperatorHarness) -> None:
    source = h.build(seed=1)
    source.train()(*h.inputs(source))  # update running statistics, which must travel too
    target = h.build(seed=2)
    target.load_state_dict(source.state_dict())
    inputs = h.inputs(source)
    with torch.no_grad():
        a, b = source.eval()(*inputs), target.eval()(*inputs)
    _expect(_same(a, b), "a fresh instance loaded with the state_dict gives different outputs")


def check_jit_trace(h: OperatorHarness) -> str | None:
    if not h.info.jit_trace:
        return "not claimed"
    module = h.build().eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, h.inputs(module), check_trace=False)
        other = h.inputs(module, size=h.size + 4)
        _expect(_same(traced(*other), module(*other), atol=1e-5),
                "the traced module disagrees with eager on a new input size")
    return None


def check_jit_script(h: OperatorHarness) -> str | None:
    if not h.info.script:
        return "not claimed"
    module = h.build().eval()
    inputs = h.inputs(module)
    with torch.no_grad():
        _expect(_same(torch.jit.script(module)(*inputs), module(*inputs), atol=1e-5),
                "the scripted module disagrees with eager")
    return None


def check_compile(h: OperatorHarness) -> str | None:
    if not h.info.compile:
        return "not claimed"
    module = h.build().eval()
    inputs = h.inputs(module)
    torch._dynamo.reset()
    # aot_eager runs dynamo and AOTAutograd (what breaks on untraceable code) without inductor's slow codegen.
    compiled = torch.compile(copy.deepcopy(module), backend="aot_eager")
    with torch.no_grad():
        _expect(_same(compiled(*inputs), module(*inputs), atol=1e-5), "torch.compile output disagrees with eager")
    return None


def check_macs(h: OperatorHarness) -> str:
    module = h.build().eval()
    inputs = h.inputs(module)
    formula = mac_formula(module)
    _expect(formula is not None, "no MAC formula: pass macs= to register_op or define module.macs(*inputs)")
    declared = int(formula(module, *inputs))
    seen = counter_macs(module, *inputs)
    if h.info.exact_macs:
        _expect(declared == seen, f"formula says {declared:,} MACs, the FLOP counter sees {seen:,}")
        return f"{declared:,} MACs = counter"
    _expect(declared >= seen, f"formula says {declared:,} MACs, fewer than the {seen:,} the counter sees")
    return f"{declared:,} MACs >= counter's {seen:,}"


CHECKS: dict[str, Callable[[OperatorHarness], str | None]] = {
    "output shape, odd and even sizes": check_odd_and_even_sizes,
    "stride 2 (ceil(H/2))": check_stride2,
    "channel change": check_channel_change,
    "dilation": check_dilation,
    "guidance feature": check_guide,
    "batch size 1": check_batch_one,
    "finite outputs": check_finite,
    "gradients reach input and parameters": check_gradients,
    "eval-mode determinism": check_eval_determinism,
    "state_dict round-trip": check_state_dict,
    "torch.jit.trace": check_jit_trace,
    "torch.jit.script": check_jit_script,
    "torch.compile": check_compile,
    "MAC formula vs counter": check_macs,
}
SKIPPED_WHEN_UNCLAIMED = {"torch.jit.trace", "torch.jit.script", "torch.compile"}


def run_checks(name: str, *, channels: int = 16, size: int = 9, only: list[str] | None = None) -> list[CheckResult]:
    """Run every conformance check (or those in ``only``) on operator ``name``."""
    harness = OperatorHarness(op_info(name), channels=channels, size=size)
    results = []
    for check, fn in CHECKS.items():
        if only is not None and check not in only:
            continue
        try:
            note = fn(harness)
        except CheckFailed as err:
            results.append(CheckResult(check, "fail", str(err)))
            continue
        except Exception as err:  # noqa: BLE001 - any crash inside the operator is a failed check
            results.append(CheckResult(check, "fail", f"{type(err).__name__}: {err}"))
            continue
        skipped = note is not None and (check in SKIPPED_WHEN_UNCLAIMED or note.endswith("kind"))
        results.append(CheckResult(check, "skip" if skipped else "pass", note or ""))
    return results

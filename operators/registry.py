"""The operator registry: every conv- and upsample-kind operator the suite can benchmark.

Operators register with :func:`register_op`; users build them with :func:`create_op` /
:func:`create_upsampler`. Each entry declares what it supports and how many multiply-accumulates
it performs, so the suite can check and count operators that generic counters cannot see.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from timm.layers import register_notrace_module
from torch import nn

from bench.errors import unknown_name_message

OpKind = Literal["conv", "upsample"]
MacFormula = Callable[..., int]
"""``macs(module, *forward_args) -> int``: multiply-accumulates of one forward call."""

KINDS: tuple[OpKind, ...] = ("conv", "upsample")
BUILTIN = "built-in"


class OperatorError(ValueError):
    """A request the registry cannot satisfy (unknown name, unsupported argument, clash)."""


@dataclass(frozen=True)
class OpInfo:
    """What the registry knows about one operator."""

    name: str
    kind: OpKind
    factory: Callable[..., nn.Module]
    paper: str | None = None
    stride: bool = True
    """Accepts ``stride=2`` (output size ceil(H / 2))."""
    dilation: bool = False
    channel_change: bool = True
    """Accepts ``out_channels != in_channels`` (conv kind only)."""
    guide: bool = False
    """Accepts a guidance feature (upsample kind only)."""
    multiscale: bool = False
    """Takes and returns per-scale tensors (OctConv-style); needs a network built for it."""
    jit_trace: bool = True
    compile: bool = True
    script: bool = False
    """Compiles with ``torch.jit.script`` (off for custom autograd functions and per-scale tuples; opt-in)."""
    macs: MacFormula | None = None
    exact_macs: bool = False
    """The formula should equal what torch's FLOP counter sees (no hidden ops inside)."""
    source: str = BUILTIN
    description: str = ""

    @property
    def supports(self) -> list[str]:
        """Short capability labels for tables."""
        conv = self.kind == "conv"
        flags = {"stride": self.stride and conv, "dilation": self.dilation and conv,
                 "channel change": self.channel_change and conv, "guide": self.guide and not conv,
                 "multi-scale": self.multiscale,
                 "jit.trace": self.jit_trace, "jit.script": self.script, "compile": self.compile}
        return [label for label, on in flags.items() if on]


_REGISTRY: dict[str, OpInfo] = {}
_source_stack: list[str] = [BUILTIN]


@contextmanager
def registering_from(source: str) -> Iterator[None]:
    """Attribute operators registered inside this block to ``source`` (a plugin's distribution)."""
    _source_stack.append(source)
    try:
        yield
    finally:
        _source_stack.pop()


def register_op(
    name: str,
    *,
    kind: OpKind,
    paper: str | None = None,
    override: bool = False,
    **capabilities: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering an ``nn.Module`` class (or a factory returning one) as operator ``name``.

    ``capabilities`` are :class:`OpInfo` fields (``stride``, ``dilation``, ``channel_change``,
    ``guide``, ``jit_trace``, ``script``, ``compile``, ``macs``, ``exact_macs``, ``description``). Without
    ``macs=``, the module's own ``macs(*forward_args)`` method is the formula.
    Registering an existing name raises unless ``override=True``.
    """
    if kind not in KINDS:
        raise OperatorError(f"operator {name!r}: kind must be one of {KINDS}, got {kind!r}")
    known = {f.name for f in OpInfo.__dataclass_fields__.values()} - {"name", "kind", "factory", "paper", "source"}
    unknown = set(capabilities) - known
    if unknown:
        raise OperatorError(f"operator {name!r}: unknown capability {sorted(unknown)}; known: {sorted(known)}")

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and not override:
            other = _REGISTRY[name]
            raise OperatorError(
                f"operator {name!r} is already registered (by {other.source}); "
                "pass override=True to register_op to replace it deliberately")
        description = capabilities.pop("description", None) or _first_line(factory.__doc__)
        _REGISTRY[name] = OpInfo(name=name, kind=kind, factory=factory, paper=paper,
                                 source=_source_stack[-1], description=description, **capabilities)
        return factory

    return decorate


def unregister_op(name: str) -> None:
    """Remove an operator (for tests and for plugins that replace themselves)."""
    _REGISTRY.pop(name, None)


def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc).splitlines()[0] if doc else ""


def _ensure_loaded() -> None:
    from operators.plugins import load_plugins

    load_plugins()


def list_ops(kind: OpKind | None = None) -> list[str]:
    """Names of registered operators (built-in and plugins), optionally of one kind, sorted."""
    _ensure_loaded()
    if kind is not None and kind not in KINDS:
        raise OperatorError(f"kind must be one of {KINDS}, got {kind!r}")
    return sorted(n for n, info in _REGISTRY.items() if kind is None or info.kind == kind)


def op_info(name: str) -> OpInfo:
    """The registry entry of ``name``; an unknown name raises with the closest matches."""
    _ensure_loaded()
    if name not in _REGISTRY:
        raise OperatorError(unknown_name_message("operator", name, list(_REGISTRY)))
    return _REGISTRY[name]


FIXED_ARGUMENTS = {"conv": ("in_channels", "out_channels", "kernel_size", "stride"),
                   "upsample": ("channels", "scale_factor", "guide_channels")}
"""Constructor arguments the suite passes itself; ``op_kwargs`` / ``upsampler_kwargs`` give the others."""


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`OperatorError` naming the accepted arguments if operator ``name`` takes none of ``kwargs``."""
    info = op_info(name)
    try:
        plain = inspect.signature(info.factory).parameters
    except (TypeError, ValueError):  # a builtin or C factory without a signature: nothing to check here
        return
    try:  # the annotations as types (a plugin's string annotations may name what cannot be imported here)
        parameters = dict(inspect.signature(info.factory, eval_str=True).parameters)
    except Exception:  # noqa: BLE001 - unresolvable annotations: the defaults' types are checked instead
        parameters = {key: p.replace(annotation=inspect.Parameter.empty) for key, p in plain.items()}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p not in FIXED_ARGUMENTS[info.kind] and p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    fixed = sorted(set(kwargs) & set(FIXED_ARGUMENTS[info.kind]))
    if fixed:
        raise OperatorError(f"operator {name!r}: {', '.join(fixed)} is set by the network or task, not by its "
                            f"arguments; its own arguments are: {', '.join(accepted) or '(none)'}.")
    if unknown:
        raise OperatorError(f"operator {name!r} takes no argument {', '.join(map(repr, unknown))}; its arguments "
                            f"are: {', '.join(accepted) or '(none)'} (`bench list ops` and its docstring say what "
                            "they do).")
    for key, value in kwargs.items():
        scalars = _scalar_types(parameters[key])
        if scalars and not _fits(value, scalars):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in scalars)
            raise OperatorError(f"operator {name!r}: argument {key!r} takes a {names}, not {value!r} (on the command "
                                f"line: true/false for a bool, a number for an int or float).")


_SCALARS = (bool, int, float, str, type(None))


def _scalar_types(parameter: inspect.Parameter) -> tuple[type, ...]:
    """The plain types (bool, int, float, str, None) an argument's annotation allows, or, unannotated, its default's
    type; empty when the argument takes anything else (a tuple, a module, a Literal), which is left unchecked."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return (type(parameter.default),) if type(parameter.default) in _SCALARS[:-1] else ()
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    allowed = typing.get_args(annotation) if union else (annotation,)
    return allowed if all(t in _SCALARS for t in allowed) and set(allowed) != {type(None)} else ()


def _fits(value: Any, scalars: tuple[type, ...]) -> bool:
    """Whether ``value`` is one of ``scalars``; an int fits a float, a bool fits only a bool (so ``conv=maybe``
    or ``alpha=true`` is refused rather than read as truthy or as 1)."""
    return type(value) in scalars or (type(value) is int and float in scalars)


def _tag(module: nn.Module, info: OpInfo) -> nn.Module:
    """Mark ``module`` as an instance of ``info`` so the MAC counter uses the operator's formula, and make its
    class a leaf of timm's FX tracing: an operator is the unit the suite measures, and one with shape- or
    tuple-dependent control flow could not be traced through (torch's own modules are leaves already)."""
    module.bench_op = info.name
    if not type(module).__module__.startswith("torch."):
        register_notrace_module(type(module))
    return module


def create_op(
    name: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    **kwargs: Any,
) -> nn.Module:
    """Build conv-kind operator ``name`` mapping ``in_channels`` to ``out_channels``.

    Spatial output size is ``ceil(H / stride)``. Requests outside the operator's declared
    capabilities (stride, dilation, channel change) raise :class:`OperatorError` saying why.
    """
    info = op_info(name)
    if info.kind != "conv":
        raise OperatorError(f"operator {name!r} is {info.kind}-kind; build it with create_upsampler")
    if stride not in (1, 2):
        raise OperatorError(f"operator {name!r}: stride must be 1 or 2, got {stride}")
    if stride != 1 and not info.stride:
        raise OperatorError(f"operator {name!r} does not support stride {stride} (it declares stride=False)")
    if kwargs.get("dilation", 1) != 1 and not info.dilation:
        raise OperatorError(f"operator {name!r} does not support dilation (it declares dilation=False)")
    if in_channels != out_channels and not info.channel_change:
        raise OperatorError(
            f"operator {name!r} preserves channels and cannot map {in_channels} to {out_channels} channels")
    check_kwargs(name, kwargs)
    module = info.factory(in_channels, out_channels, kernel_size=kernel_size, stride=stride, **kwargs)
    return _tag(module, info)


def create_upsampler(
    name: str,
    channels: int,
    scale_factor: int = 2,
    guide_channels: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build upsample-kind operator ``name``; its forward is ``(x, guide=None)``, output ``scale_factor`` x larger."""
    info = op_info(name)
    if info.kind != "upsample":
        raise OperatorError(f"operator {name!r} is {info.kind}-kind; build it with create_op")
    if guide_channels is not None and not info.guide:
        raise OperatorError(f"upsampler {name!r} takes no guidance feature (it declares guide=False)")
    check_kwargs(name, kwargs)
    module = info.factory(channels, scale_factor=scale_factor, guide_channels=guide_channels, **kwargs)
    return _tag(module, info)


def mac_formula(module: nn.Module) -> MacFormula | None:
    """The MAC formula of a tagged operator instance, or None for ordinary modules."""
    name = getattr(module, "bench_op", None)
    if name is None or name not in _REGISTRY:
        return None
    info = _REGISTRY[name]
    if info.macs is not None:
        return info.macs
    own = getattr(module, "macs", None)
    return (lambda m, *args: own(*args)) if callable(own) else None

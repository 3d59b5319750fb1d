"""Operator-swappable backbones, registered with timm (`timm.create_model("op_resnet50", op="ddf")`).

Importing this package registers the ``op_*`` models with timm's registry; every factory takes
``op`` (any registered conv-kind operator) and ``op_kwargs``.
"""

import functools

import timm

from backbones import mobilenetv2, resnet, shufflenetv2, xception_a  # noqa: F401  registers the models  isort: skip
from bench.errors import unknown_name_message
from operators.registry import OperatorError


@functools.cache
def _models() -> tuple[str, ...]:
    """timm names of the models this package registered (found by their entry point's module)."""
    return tuple(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith(__name__))


def list_backbones() -> list[str]:
    """Backbone names as users type them (``resnet50`` for the model ``op_resnet50``)."""
    return sorted(name.removeprefix("op_") for name in _models())


def model_name(backbone: str) -> str:
    """timm model name of ``backbone`` (``resnet50`` -> ``op_resnet50``); unknown names raise with suggestions."""
    for candidate in (f"op_{backbone}", backbone):
        if candidate in _models():
            return candidate
    raise OperatorError(unknown_name_message("backbone", backbone, list_backbones()))


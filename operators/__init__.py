"""Operators under benchmark: a registry of conv- and upsample-kind modules, built-in and from plugins."""

from operators.registry import (
    OperatorError,
    OpInfo,
    create_op,
    create_upsampler,
    list_ops,
    op_info,
    register_op,
    unregister_op,
)

# Importing the built-in operator modules registers them.
from operators import carafe, conv, ddf, jbu, octconv, pac, scconv, upsample  # noqa: E402,F401  isort: skip

__all__ = ["OpInfo", "OperatorError", "create_op", "create_upsampler", "list_ops", "op_info",
           "register_op", "unregister_op"]

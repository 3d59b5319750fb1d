"""Benchmark tasks: each turns a composed config into metrics (and cost) for one result record.

A task is a function ``run(cfg, run_dir) -> dict`` registered under the name that ``task=NAME`` selects;
``run_dir`` is where it keeps checkpoints. The dict's keys (metrics, efficiency, ...) go into the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from operators.registry import unknown_name_message

TaskFn = Callable[[DictConfig, str], dict[str, Any]]
_TASKS: dict[str, TaskFn] = {}


def register_task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator registering a task runner under ``name``."""

    def decorate(fn: TaskFn) -> TaskFn:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        _TASKS[name] = fn
        return fn

    return decorate


def get_task(name: str) -> TaskFn:
    """The runner of task ``name``; an unknown name raises ``KeyError`` with the available ones."""
    if name not in _TASKS:
        raise KeyError(unknown_name_message("task", name, list(_TASKS)))
    return _TASKS[name]


def list_tasks() -> list[str]:
    """Registered task names."""
    return sorted(_TASKS)


from tasks import classification, detection, profile  # noqa: F401  registers the built-in tasks  isort: skip

"""Shared fixtures: temporary plugin distributions and isolated operator and task registries."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import tasks
from operators import registry
from operators.plugins import _loaded


@pytest.fixture
def restore_registry() -> Iterator[None]:
    """Undo operators registered (or plugins loaded) by a test."""
    before, loaded = dict(registry._REGISTRY), set(_loaded)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)
    _loaded.clear()
    _loaded.update(loaded)


@pytest.fixture
def bench_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh cache for generated datasets (``$BENCH_CACHE``), so tests never share or reuse one."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def restore_tasks() -> Iterator[None]:
    """Undo tasks registered (or task plugins loaded) by a test."""
    before, loaded = dict(tasks._TASKS), set(tasks._loaded)
    yield
    tasks._TASKS.clear()
    tasks._TASKS.update(before)
    tasks._loaded.clear()
    tasks._loaded.update(loaded)


def write_distribution(root: Path, dist: str, files: dict[str, str], entry_points: str) -> None:
    """A real installed distribution in ``root``: its files and a ``*.dist-info`` with ``entry_points.txt``."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def install_task_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_tasks: None
                        ) -> Callable[[str, dict[str, str], str], Path]:
    """Write a distribution declaring ``bench.tasks`` entry points and put it on ``sys.path``."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def install(dist: str, files: dict[str, str], entry_points: str) -> Path:
        write_distribution(root, dist, files, entry_points)
        for name in files:
            sys.modules.pop(name.split("/")[0].removesuffix(".py"), None)
        return root

    return install


@pytest.fixture
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_registry: None
                   ) -> Callable[[str, str, str], Path]:
    """Write a real distribution (package + ``*.dist-info`` with an entry point) and put it on ``sys.path``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, module: str, source: str, entry_point: str | None = None) -> Path:
        write_distribution(tmp_path, dist, {f"{module}.py": source},
                           f"[bench.operators]\n{dist} = {entry_point or module}\n")
        sys.modules.pop(module, None)
        return tmp_path

    return install

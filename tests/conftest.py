"""Shared fixtures: temporary plugin distributions and an isolated registry."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_registry: None
                   ) -> Callable[[str, str, str], Path]:
    """Write a real distribution (package + ``*.dist-info`` with an entry point) and put it on ``sys.path``."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def install(dist: str, module: str, source: str, entry_point: str | None = None) -> Path:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[bench.operators]\n{dist} = {entry_point or module}\n")
        sys.modules.pop(module, None)
        return tmp_path

    return install

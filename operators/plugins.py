"""Operators from other installed packages, through the ``bench.operators`` entry-point group.

A plugin declares, in its own ``pyproject.toml``::

    [project.entry-points."bench.operators"]
    myop = "my_package.ops"          # a module whose import registers operators
    other = "my_package.ops:setup"   # or a callable that registers them when called

Each plugin is loaded once; a broken one only warns, naming the plugin and its distribution.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint

from bench.plugins import load_entry_points
from operators.registry import registering_from

GROUP = "bench.operators"
_loaded: set[tuple[str, str]] = set()


class PluginWarning(UserWarning):
    """An installed operator plugin could not be loaded."""


def _register_entry_point(ep: EntryPoint, dist: str) -> None:
    """Import (or call) one entry point, attributing what it registers to its distribution."""
    with registering_from(dist):
        target = ep.load()
        if callable(target):
            target()


def load_plugins() -> None:
    """Import every not-yet-loaded ``bench.operators`` entry point, warning on failures."""
    load_entry_points(GROUP, _loaded, _register_entry_point, PluginWarning, "operator")

"""Operators from other installed packages, through the ``bench.operators`` entry-point group.

A plugin declares, in its own ``pyproject.toml``::

    [project.entry-points."bench.operators"]
    myop = "my_package.ops"          # a module whose import registers operators
    other = "my_package.ops:setup"   # or a callable that registers them when called

Each plugin is loaded once; a broken one only warns, naming the plugin and its distribution.
"""

from __future__ import annotations

import warnings
from importlib.metadata import EntryPoint, entry_points

from operators.registry import registering_from

GROUP = "bench.operators"
_loaded: set[tuple[str, str]] = set()


class PluginWarning(UserWarning):
    """An installed operator plugin could not be loaded."""


def _distribution(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.module


def load_plugins() -> None:
    """Import every not-yet-loaded ``bench.operators`` entry point, warning on failures."""
    for ep in entry_points(group=GROUP):
        key = (ep.name, ep.value)
        if key in _loaded:
            continue
        _loaded.add(key)
        dist = _distribution(ep)
        try:
            with registering_from(dist):
                target = ep.load()
                if callable(target):
                    target()
        except Exception as err:  # noqa: BLE001 - any plugin failure must not take the suite down
            warnings.warn(
                f"bench operator plugin {ep.name!r} ({ep.value}, from distribution {dist!r}) failed to load "
                f"and is skipped: {type(err).__name__}: {err}",
                PluginWarning,
                stacklevel=2,
            )

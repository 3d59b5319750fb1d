"""Loading plugins from installed distributions' entry points, the same way for operators and tasks.

Each entry point is loaded once; one that fails warns, naming the plugin and its distribution, and is
skipped, so a broken plugin never takes the suite down.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

_scans: dict[str, tuple[tuple, list[EntryPoint]]] = {}


def distribution(ep: EntryPoint) -> str:
    """The name of the distribution that declares ``ep`` (its module where that is unknown)."""
    return ep.dist.name if ep.dist is not None else ep.module


def _path_state() -> tuple:
    """``sys.path`` with each folder's modification time: it changes when a distribution is added to one."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, None))
    return tuple(state)


def group_entry_points(group: str) -> list[EntryPoint]:
    """The entry points of ``group``; the metadata of every installed distribution is read again only when
    ``sys.path`` or one of its folders changed (a scan takes milliseconds, and registries ask often)."""
    state = _path_state()
    cached = _scans.get(group)
    if cached is None or cached[0] != state:
        cached = _scans[group] = (state, list(entry_points(group=group)))
    return cached[1]


def load_entry_points(group: str, loaded: set[tuple[str, str]], load: Callable[[EntryPoint, str], None],
                      warning: type[Warning], what: str) -> None:
    """Call ``load(ep, distribution)`` for every entry point of ``group`` not in ``loaded``; failures warn."""
    for ep in group_entry_points(group):
        key = (ep.name, ep.value)
        if key in loaded:
            continue
        loaded.add(key)
        dist = distribution(ep)
        try:
            load(ep, dist)
        except Exception as err:  # noqa: BLE001 - any plugin failure must not take the suite down
            warnings.warn(f"bench {what} plugin {ep.name!r} ({ep.value}, from distribution {dist!r}) failed to "
                          f"load and is skipped: {type(err).__name__}: {err}", warning, stacklevel=3)

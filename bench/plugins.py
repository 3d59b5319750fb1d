"""Loading plugins from installed distributions' entry points, the same way for operators and tasks.

Each entry point is loaded once; one that fails warns, naming the plugin and its distribution, and is
skipped, so a broken plugin never takes the suite down.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points


def distribution(ep: EntryPoint) -> str:
    """The name of the distribution that declares ``ep`` (its module where that is unknown)."""
    return ep.dist.name if ep.dist is not None else ep.module


def load_entry_points(group: str, loaded: set[tuple[str, str]], load: Callable[[EntryPoint, str], None],
                      warning: type[Warning], what: str) -> None:
    """Call ``load(ep, distribution)`` for every entry point of ``group`` not in ``loaded``; failures warn."""
    for ep in entry_points(group=group):
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

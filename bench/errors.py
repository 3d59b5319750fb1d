"""Mistakes explained for a person: the error types the CLI turns into one paragraph and exit code 2."""

from __future__ import annotations

import difflib

USAGE_EXIT = 2
"""The exit code of a mistake (bad override, unknown name, missing data): never worth retrying."""


class ConfigError(ValueError):
    """A configuration mistake, explained for a person."""


class DataError(ConfigError):
    """Data that cannot be found or read, explained for a person (a usage error: exit 2, no record)."""


def unknown_name_message(what: str, name: str, available: list[str]) -> str:
    """One paragraph: what was asked, the closest match, and everything available."""
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(sorted(available)) or "(none)"
    return f"Unknown {what} {name!r}.{hint} Available: {listing}."

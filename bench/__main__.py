"""``python -m bench``: the `bench` command (how sweep launchers start each job with this interpreter)."""

from bench.cli import entry

entry()

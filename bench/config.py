"""Hydra-style configuration: compose `bench/conf` with KEY=VALUE overrides, expand sweeps, explain mistakes.

Errors are raised as :class:`ConfigError` with one paragraph for a person (what was wrong, what is
available, the closest match); the CLI prints it and exits 2.
"""

from __future__ import annotations

import difflib
import itertools
from importlib import resources

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bench.recipes import OPTIMIZERS
from bench.schema import register_schemas
from operators.registry import OperatorError, list_ops, unknown_name_message

CONFIG_MODULE = "bench.conf"
OPEN_KEYS = ("op_kwargs", "upsampler_kwargs")
"""Dict keys whose sub-keys are free (operator arguments): ``op_kwargs.x=1`` adds ``x``."""
DETECTION_KEYS = ("upsampler", "detector")
"""Top-level keys that only the detection task reads; other tasks refuse them rather than ignore them."""
TASK_SCOPED = ("data", "recipe")
"""Groups whose options can be task-specific: ``recipe/detection_quick.yaml`` is ``recipe=quick`` for detection."""


class ConfigError(ValueError):
    """A configuration mistake, explained for a person."""


def config_groups() -> dict[str, list[str]]:
    """Option names of each config group shipped in ``bench/conf`` (schemas excluded)."""
    root = resources.files(CONFIG_MODULE)
    groups: dict[str, list[str]] = {}
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith("_"):
            groups[entry.name] = sorted(f.name[:-5] for f in entry.iterdir() if f.name.endswith(".yaml"))
    return groups


def task_options(groups: dict[str, list[str]], group: str, task: str) -> dict[str, str]:
    """Option names of ``group`` as ``task`` sees them, mapped to their files.

    A task with its own ``<task>_<name>.yaml`` files in the group uses only those (by ``<name>``);
    every other task uses the unprefixed files.
    """
    files = groups.get(group, [])
    own = {f[len(task) + 1:]: f for f in files if f.startswith(f"{task}_")}
    if own:
        return own
    prefixes = tuple(f"{t}_" for t in groups.get("task", []))
    return {f: f for f in files if not f.startswith(prefixes)}


def _default_choices(config_name: str) -> dict[str, str]:
    """The group choices of the primary config's defaults list (``task: profile`` ...)."""
    primary = OmegaConf.load(str(resources.files(CONFIG_MODULE) / f"{config_name}.yaml"))
    return {k: str(v) for entry in primary.get("defaults", []) if isinstance(entry, DictConfig) for k, v in entry.items()}


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Parse overrides with Hydra's grammar; a syntax error becomes a :class:`ConfigError`."""
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(f"Cannot parse the override(s) {' '.join(overrides)}: {err}") from None


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """The cartesian product of sweep overrides: ``op=a,b seed=0,1`` gives four override lists."""
    choices = []
    for override in parse_overrides(overrides):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)]


def _base_config(config_name: str, group_overrides: list[str]) -> DictConfig:
    register_schemas()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=group_overrides)


def _check_key(cfg: DictConfig, key: str) -> None:
    """Raise with the closest known key if ``key`` names nothing in ``cfg``."""
    if OmegaConf.select(cfg, key, default="__missing__") != "__missing__":
        return
    known = sorted(_leaf_keys(cfg))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"Unknown config key {key!r}.{hint} Known keys: {', '.join(known)}. "
                      "Print the whole composed config with `bench run --cfg`.")


def _leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        path = f"{prefix}{key}"
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and path not in OPEN_KEYS:
            keys.extend(_leaf_keys(node, path + "."))
        else:
            keys.append(path)
    return keys


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``config_name`` with ``overrides`` (no sweeps), validating groups, keys, types and ``op``."""
    parsed = parse_overrides(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps:
        raise ConfigError(f"{' '.join(sweeps)} is a sweep; add -m (multirun) to run every combination.")
    groups = config_groups()
    choices = _default_choices(config_name)
    group_lines, value_lines = [], []
    for o in parsed:
        key = o.get_key_element()
        if key in groups:
            value = o.value()
            if key not in TASK_SCOPED and value not in groups[key]:
                raise ConfigError(unknown_name_message(f"{key} config", str(value), groups[key]))
            choices[key] = str(value)
            if key not in TASK_SCOPED:
                group_lines.append(o.input_line)
        else:
            value_lines.append(o)
    task = choices.get("task", "")
    for key in TASK_SCOPED:
        options = task_options(groups, key, task)
        if choices.get(key) not in options:
            raise ConfigError(unknown_name_message(f"{key} config for task={task}", str(choices.get(key)),
                                                   list(options)))
        group_lines.append(f"{key}={options[choices[key]]}")
    try:
        base = _base_config(config_name, group_lines)
        lines = []
        for o in value_lines:
            key = o.get_key_element()
            if key.split(".")[0] in OPEN_KEYS and not o.is_add() and "." in key:
                lines.append("++" + o.input_line)  # operator kwargs: add or replace freely
                continue
            if not (o.is_add() or o.is_force_add() or o.is_delete()):
                _check_key(base, key)
            lines.append(o.input_line)
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = hydra_compose(config_name=config_name, overrides=group_lines + lines)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from None
    if "op" in cfg and cfg.op not in (available := list_ops()):
        raise ConfigError(unknown_name_message("operator", str(cfg.op), available))
    for key in DETECTION_KEYS:
        if cfg.get(key) and task != "detection":
            raise ConfigError(f"{key}={cfg.get(key)} only applies to task=detection (this is task={task}); drop it.")
    if cfg.get("recipe") and cfg.recipe.optimizer not in OPTIMIZERS:
        raise ConfigError(unknown_name_message("optimizer (recipe.optimizer)", str(cfg.recipe.optimizer),
                                               list(OPTIMIZERS)))
    if (threads := cfg.get("task", {}).get("threads")) is not None and threads < 1:
        raise ConfigError(f"task.threads={threads}: give a positive number of CPU threads, or leave it unset "
                          "for torch's default (one per core).")
    if (baseline := cfg.get("task", {}).get("baseline")) is not None:
        _check_baseline(cfg, str(baseline))
    if cfg.get("upsampler") and cfg.upsampler not in (upsamplers := list_ops("upsample")):
        raise ConfigError(unknown_name_message("upsampler", str(cfg.upsampler), upsamplers))
    if cfg.get("backbone"):
        from backbones import model_name

        try:
            model_name(cfg.backbone)
        except OperatorError as err:
            raise ConfigError(str(err)) from None
    return cfg


def _check_baseline(cfg: DictConfig, baseline: str) -> None:
    """``task.baseline`` compares whole networks: it needs a backbone, a conv-kind operator, a round and a process."""
    if not cfg.get("backbone"):
        raise ConfigError(f"task.baseline={baseline} compares a backbone with two operators; name one "
                          "(backbone=resnet50), or drop task.baseline to profile the bare operator.")
    if baseline not in (conv_ops := list_ops("conv")):
        raise ConfigError(unknown_name_message("baseline operator (task.baseline)", baseline, conv_ops))
    if cfg.task.baseline_rounds < 1:
        raise ConfigError(f"task.baseline_rounds={cfg.task.baseline_rounds}: give at least one round.")
    if cfg.task.baseline_processes < 1:
        raise ConfigError(f"task.baseline_processes={cfg.task.baseline_processes}: give at least one process "
                          "(1 compares in this process).")


def expand_all_ops(overrides: list[str]) -> tuple[list[str], bool]:
    """Replace ``op=all`` by every operator that fits (conv kind when a backbone is named); True if replaced."""
    if "op=all" not in overrides:
        return overrides, False
    with_backbone = any(o.startswith("backbone=") and o != "backbone=null" for o in overrides)
    ops = list_ops("conv" if with_backbone else None)
    return [f"op={','.join(ops)}" if o == "op=all" else o for o in overrides], True


def _explain(err: Exception) -> str:
    """Turn Hydra/OmegaConf's layered messages into one paragraph naming the key and the expectation."""
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        reason = str(getattr(cause, "msg", cause)).splitlines()[0]
        return f"Invalid value for {cause.full_key!r}: {reason}."
    return " ".join(str(err).split())

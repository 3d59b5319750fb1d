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

from bench.errors import ConfigError, unknown_name_message
from bench.recipes import OPTIMIZERS
from bench.schema import RANGES, out_of_range, register_schemas, task_keys
from bench.tasks import TaskSpec, get_task, list_tasks
from operators.registry import OperatorError, check_kwargs, list_ops, op_info

CONFIG_MODULE = "bench.conf"
OPEN_KEYS = ("op_kwargs", "upsampler_kwargs")
"""Dict keys whose sub-keys are free (operator arguments): ``op_kwargs.x=1`` adds ``x``."""
DEFAULT_TASK = "profile"
"""The task of `bench run` without ``task=``."""
TASK_GROUPS = ("task", "data", "recipe")
"""Groups whose options come from the task's own config folder (`TaskSpec.config_dir`), not from bench/conf."""


def config_groups() -> dict[str, list[str]]:
    """Option names of each config group shipped in ``bench/conf`` (the task-independent ones)."""
    root = resources.files(CONFIG_MODULE)
    groups: dict[str, list[str]] = {}
    for entry in root.iterdir():
        if entry.is_dir() and not entry.name.startswith("_"):
            groups[entry.name] = sorted(f.name[:-5] for f in entry.iterdir() if f.name.endswith(".yaml"))
    return groups


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


def _hydra_compose(config_name: str, spec: TaskSpec, lines: list[str]) -> DictConfig:
    """Hydra's compose of ``config_name`` with ``spec``'s config folder on the search path."""
    register_schemas(spec)
    folder = spec.config_dir.resolve().as_posix().replace("\\", "\\\\").replace("'", "\\'") if spec.config_dir else None
    search = [f"hydra.searchpath=['file://{folder}']"] if folder else []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=[*search, *lines])


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


def _task_groups(spec: TaskSpec, choices: dict[str, str]) -> list[str]:
    """``+task=...``, ``+data=...``, ``+recipe=...`` for ``spec``, each choice checked against its configs."""
    lines = [f"+task={spec.name}"]
    for group, schema in (("data", spec.data_schema), ("recipe", spec.recipe_schema)):
        options = spec.options(group)
        if schema is None or not options:
            if group in choices:
                raise ConfigError(f"{group}={choices[group]}: task={spec.name} takes no {group} config; drop it.")
            continue
        choice = choices.get(group, spec.defaults.get(group, options[0]))
        if choice not in options:
            raise ConfigError(unknown_name_message(f"{group} config for task={spec.name}", choice, options))
        lines.append(f"+{group}={choice}")
    return lines


def _foreign_key(spec: TaskSpec, key: str) -> str | None:
    """Why ``key`` is refused if another task declares it as its own top-level key, else None."""
    owners = [name for name in list_tasks() if name != spec.name and key in task_keys(get_task(name))]
    if not owners:
        return None
    return (f"{key} only applies to {', '.join(f'task={o}' for o in owners)} (this is task={spec.name}); "
            "drop it.")


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose ``config_name`` with ``overrides`` (no sweeps), validating groups, keys, types and ``op``."""
    parsed = parse_overrides(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps:
        raise ConfigError(f"{' '.join(sweeps)} is a sweep; add -m (multirun) to run every combination.")
    groups = config_groups()
    choices = {"task": DEFAULT_TASK}
    group_lines, value_lines = [], []
    for o in parsed:
        key = o.get_key_element()
        if key in TASK_GROUPS:
            choices[key] = str(o.value())
        elif key in groups:
            if o.value() not in groups[key]:
                raise ConfigError(unknown_name_message(f"{key} config", str(o.value()), groups[key]))
            group_lines.append(o.input_line)
        else:
            value_lines.append(o)
    spec = get_task(choices["task"])
    group_lines += _task_groups(spec, choices)
    try:
        base = _hydra_compose(config_name, spec, group_lines)
        lines = []
        for o in value_lines:
            key = o.get_key_element()
            if key.split(".")[0] in OPEN_KEYS and not o.is_add() and "." in key and key.split(".")[0] in base:
                lines.append("++" + o.input_line)  # operator kwargs: add or replace freely
                continue
            top = o.key_or_group.split(".")[0]
            if top not in base and (why := _foreign_key(spec, top)):
                if o.value() is None and "." not in o.key_or_group:
                    continue  # another task's key set to null (a sweep over tasks): nothing to refuse
                raise ConfigError(f"{o.input_line.lstrip('+~')}: {why}")
            if not (o.is_add() or o.is_force_add() or o.is_delete()):
                _check_key(base, key)
            lines.append(o.input_line)
        cfg = _hydra_compose(config_name, spec, group_lines + lines)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from None
    _validate(cfg, spec)
    return cfg


def _validate(cfg: DictConfig, spec: TaskSpec) -> None:
    """Checks every task shares (ranges, operator and its arguments, upsampler, optimizer, backbone), then the task's."""
    for key, bounds in {**RANGES, **spec.ranges}.items():
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (why := out_of_range(key, value, bounds)):
            raise ConfigError(why)
    if cfg.op not in list_ops():
        raise ConfigError(unknown_name_message("operator", str(cfg.op), list_ops()))
    if (kind := op_info(cfg.op).kind) not in spec.op_kinds:
        raise ConfigError(f"op={cfg.op} is {kind}-kind; task={spec.name} takes {' or '.join(spec.op_kinds)}-kind "
                          f"operators: {', '.join(op for k in spec.op_kinds for op in list_ops(k))}.")
    if cfg.get("upsampler") and cfg.upsampler not in (upsamplers := list_ops("upsample")):
        raise ConfigError(unknown_name_message("upsampler", str(cfg.upsampler), upsamplers))
    try:
        check_kwargs(cfg.op, cfg.op_kwargs)
        if cfg.get("upsampler"):
            check_kwargs(cfg.upsampler, cfg.upsampler_kwargs)
    except OperatorError as err:
        raise ConfigError(f"{err} Set them with op_kwargs.NAME=VALUE (upsampler_kwargs.NAME for the upsampler).") \
            from None
    if cfg.get("recipe") and cfg.recipe.optimizer not in OPTIMIZERS:
        raise ConfigError(unknown_name_message("optimizer (recipe.optimizer)", str(cfg.recipe.optimizer),
                                               list(OPTIMIZERS)))
    if cfg.get("backbone"):
        from backbones import model_name

        try:
            model_name(cfg.backbone)
        except OperatorError as err:
            raise ConfigError(str(err)) from None
    recipe = cfg.get("recipe") or {}
    if recipe.get("warmup_iters") and recipe.get("warmup_epochs"):
        raise ConfigError(f"recipe.warmup_iters={recipe.warmup_iters} and recipe.warmup_epochs={recipe.warmup_epochs} "
                          "both set the warm-up; set one of them to 0.")
    if spec.validate is not None:
        spec.validate(cfg)


def expand_all_ops(overrides: list[str]) -> tuple[list[str], bool]:
    """Replace ``op=all`` by every operator the task takes (conv kind only inside a backbone); True if replaced."""
    if "op=all" not in overrides:
        return overrides, False
    tasks = [o.split("=", 1)[1] for o in overrides if o.startswith("task=")]
    names = tasks[-1].split(",") if tasks else [DEFAULT_TASK]  # a sweep over tasks: what every one of them takes
    kinds = tuple(k for k in ("conv", "upsample") if all(k in get_task(name).op_kinds for name in names))
    if any(o.startswith("backbone=") and o != "backbone=null" for o in overrides):
        kinds = ("conv",)
    ops = [op for kind in kinds for op in list_ops(kind)]
    return [f"op={','.join(sorted(ops))}" if o == "op=all" else o for o in overrides], True


def _explain(err: Exception) -> str:
    """Turn Hydra/OmegaConf's layered messages into one paragraph naming the key and the expectation."""
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        reason = str(getattr(cause, "msg", cause)).splitlines()[0]
        return f"Invalid value for {cause.full_key!r}: {reason}."
    return " ".join(str(err).split())

"""The `bench` command: run tasks, profile and check operators, list what is available.

Overrides are Hydra-style ``KEY=VALUE`` pairs; mistakes are explained in one paragraph with exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.config import compose, config_groups, expand_all_ops, expand_sweeps
from bench.errors import USAGE_EXIT, ConfigError
from operators.registry import OperatorError

console = Console()
errors = Console(stderr=True, soft_wrap=True)  # messages keep paths and commands on one line



def _run_configs(command: str, overrides: list[str], multirun: bool, show_cfg: bool,
                 fixed: Sequence[str] = (), json_path: str | None = None) -> int:
    from bench.runner import run
    from bench.sweep import launch, make_jobs

    overrides, all_ops = expand_all_ops(overrides)
    multirun = multirun or all_ops
    sweep = expand_sweeps(overrides) if multirun else [overrides]
    configs = [compose("run", [*fixed, *ov]) for ov in sweep]  # validate every job before running any
    if show_cfg:
        for cfg in configs:
            console.print(OmegaConf.to_yaml(cfg), end="", markup=False, highlight=False)
        return 0
    done = []

    def run_one(cfg, line: str) -> bool:
        """One job in this process: True when it succeeded (or cannot be built: a sweep skips it)."""
        try:
            record, path = run(cfg, line)
        except ConfigError:
            raise
        except OperatorError as err:
            if not multirun:
                raise
            errors.print(f"[yellow]skipped[/yellow]: {escape(str(err))}")  # a pairing that cannot be built
            return True
        except Exception as err:  # noqa: BLE001 - one failed job must not stop the sweep
            notes = "".join(f" ({note})" for note in getattr(err, "__notes__", []))
            errors.print(f"[red]job failed[/red]: {escape(f'{type(err).__name__}: {err}{notes}')}")
            return False
        if path is not None:  # None: not the global rank-zero process of a multi-process run
            _print_summary(record, path)
            done.append(record)
        return True

    if not multirun:
        failed = 0 if run_one(configs[0], shlex.join(["bench", command, *overrides])) else 1
    else:
        jobs = make_jobs(command, sweep, configs)
        failed = launch(jobs, lambda job: (console.rule(job.line), run_one(job.cfg, job.line))[1],
                        lambda line: console.print(line, markup=False, highlight=False))
    if json_path:
        Path(json_path).write_text(json.dumps(done if multirun else done[0], indent=2, sort_keys=True) + "\n")
        console.print(f"json: {json_path}", markup=False, highlight=False)
    return 1 if failed else 0


def cmd_sweep_status(overrides: list[str]) -> int:
    """`bench sweep status -m ...`: every job of the sweep those overrides describe, and where it stands."""
    from bench.sweep import make_jobs, states

    overrides, _ = expand_all_ops(overrides)
    sweep = expand_sweeps(overrides)
    jobs = make_jobs("run", sweep, [compose("run", ov) for ov in sweep])
    table = Table(title=f"sweep: {len(jobs)} jobs")
    for column in ("#", "job", "state", "where", "detail"):
        table.add_column(column, overflow="fold")
    shared = set.intersection(*(set(job.overrides) for job in jobs)) if len(jobs) > 1 else set()
    counts: dict[str, int] = {}
    for index, (job, state) in enumerate(zip(jobs, states(jobs))):
        counts[state.state] = counts.get(state.state, 0) + 1
        table.add_row(str(index + 1), " ".join(o for o in job.overrides if o not in shared), state.state, state.where,
                      state.detail)
    console.print(table)
    console.print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())), markup=False, highlight=False)
    return 0


def _rows(values: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten one level of nested figures (``latency_ms.median``) into printable rows."""
    rows = []
    for key, value in values.items():
        if isinstance(value, dict):
            rows += _rows(value, f"{prefix}{key}.")
        elif value is None or isinstance(value, list):
            continue
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            rows.append((prefix + key, str(value)))
        else:
            rows.append((prefix + key, f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"))
    return rows


def _print_summary(record: dict, path) -> None:
    title = f"{record['task']}: op={record['op']}" + (f" backbone={record['backbone']}" if record.get("backbone")
                                                       else "")
    table = Table(title=title, show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, shown in _rows({**record.get("metrics", {}), **record.get("efficiency", {})}):
        table.add_row(key, shown)
    table.add_row("hardware", (record["provenance"].get("hardware") or {}).get("label", "?"))
    table.add_row("wall time (s)", f"{record['wall_time_s']:.1f}")
    console.print(table)
    console.print(f"result: {path}", markup=False, highlight=False)


def _parse_pairs(pairs: list[str], allowed: dict[str, type]) -> dict[str, object]:
    values: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"Expected one of {', '.join(f'{k}=...' for k in allowed)}; got {pair!r}.")
        try:
            values[key] = allowed[key](raw)
        except ValueError:
            raise ConfigError(f"{key} expects {allowed[key].__name__}, got {raw!r}.") from None
    return values


def cmd_check(args: argparse.Namespace) -> int:
    from bench.check import run_checks
    from operators.registry import list_ops

    values = _parse_pairs(args.overrides, {"op": str, "channels": int, "size": int})
    if "op" in values:
        names = [str(values.pop("op"))]
    elif args.all:
        names = list_ops()
    else:
        raise ConfigError("Name the operator to check, e.g. `bench check op=conv`, or pass --all.")
    failed = 0
    for name in names:
        results = run_checks(name, **values)
        table = Table(title=f"bench check op={name}")
        for column in ("check", "result", "detail"):
            table.add_column(column)
        style = {"pass": "green", "fail": "bold red", "skip": "yellow"}
        for r in results:
            table.add_row(r.check, f"[{style[r.status]}]{r.status}[/]", r.detail)
        console.print(table)
        bad = sum(r.status == "fail" for r in results)
        failed += bad
        console.print(f"{name}: {sum(r.status == 'pass' for r in results)} passed, {bad} failed, "
                      f"{sum(r.status == 'skip' for r in results)} skipped")
    return 1 if failed else 0


def cmd_list(args: argparse.Namespace) -> int:
    from operators.registry import list_ops, op_info

    if args.what == "ops":
        table = Table(title="operators")
        for column in ("name", "kind", "paper", "supports", "source"):
            table.add_column(column)
        for name in list_ops():
            info = op_info(name)
            table.add_row(name, info.kind, info.paper or "-", ", ".join(info.supports), info.source)
        console.print(table)
        return 0
    if args.what == "tasks":
        _print_tasks()
        return 0
    if args.what == "recipes":
        _print_recipes()
        return 0
    if args.what == "backbones":
        from backbones import list_backbones

        names = list_backbones()
    elif args.what == "data":
        from bench.tasks import get_task, list_tasks

        names = [f"{name} (task={task})" for task in list_tasks() for name in get_task(task).options("data")]
    else:
        names = config_groups().get(args.what, [])
    for name in names:
        console.print(name, markup=False, highlight=False)
    if not names:
        console.print(f"(no {args.what} available yet)")
    return 0


def _print_tasks() -> None:
    """Every task with its metrics (direction, unit), primary metric, own keys, baseline and source."""
    from bench.schema import task_keys
    from bench.tasks import get_task, list_tasks

    table = Table(title="tasks")
    for column in ("name", "what", "metrics (primary first)", "own keys", "default model", "profiled",
                   "leaderboard baseline", "source"):
        table.add_column(column)
    for name in list_tasks():
        spec = get_task(name)
        ordered = sorted(spec.metrics, key=lambda m: m.name != spec.primary)
        metrics = ", ".join(f"{m.label} {'↑' if m.higher_is_better else '↓'}" for m in ordered)
        baseline = ", ".join(f"{k}={v}" for k, v in spec.baseline.items())
        table.add_row(name, spec.description, metrics, ", ".join(task_keys(spec)) or "-", spec.default_model or "-",
                      spec.profiled or "-", baseline, spec.source)
    console.print(table)
    console.print("↑ higher is better, ↓ lower is better; own keys: top-level keys only that task accepts",
                  highlight=False)


def _print_recipes() -> None:
    """Every task's recipes: batch, epochs, optimizer, schedule, precision, where the protocol comes from."""
    from bench.tasks import get_task, list_tasks

    table = Table(title="recipes")
    for column in ("task", "name", "global batch", "epochs", "optimizer, lr", "schedule", "precision", "source"):
        table.add_column(column)
    for task in list_tasks():
        for name in get_task(task).options("recipe"):
            r = compose("run", [f"task={task}", f"recipe={name}"]).recipe
            schedule = f"{r.schedule} at {list(r.milestones)}" if r.schedule == "multistep" else r.schedule
            table.add_row(task, name, str(r.global_batch), str(r.epochs), f"{r.optimizer} {r.lr} @ {r.base_batch}",
                          schedule, r.precision, r.source)
    console.print(table)


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from bench.leaderboard import generate

    out = Path(args.out)
    dirs = [out / "results", *map(Path, args.results)]
    missing = [d for d in dirs[1:] if not d.is_dir()]
    if missing:
        raise ConfigError(f"--results {missing[0]} is not a folder of result records.")
    made = generate([d for d in dirs if d.is_dir()], out)
    for path, reason in made.invalid:
        errors.print(f"[yellow]skipped[/yellow] {escape(reason)}")
    console.print(f"{made.rows} rows, {made.failed} failed runs, {len(made.invalid)} skipped files, "
                  f"{len(made.duplicates)} duplicate runs not averaged", highlight=False)
    for path in made.paths:
        console.print(f"wrote {path}", markup=False, highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="Multi-task benchmark suite for efficient "
                                     "convolution operators.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run a task: bench run task=profile op=ddf seed=0"),
                            ("profile", "profile an operator or a backbone: bench profile backbone=resnet50 op=ddf")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (Hydra syntax)")
        p.add_argument("-m", "--multirun", action="store_true", help="sweep: op=conv,ddf seed=0,1,2")
        p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
        p.add_argument("--json", metavar="FILE", help="also write the result record(s) to FILE")
    p = sub.add_parser("sweep", help="where a sweep's jobs stand: bench sweep status -m op=conv,ddf seed=0,1,2")
    p.add_argument("action", choices=["status"])
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="[-m] the sweep's KEY=VALUE overrides, as given to "
                   "bench run -m")
    p = sub.add_parser("check", help="operator conformance suite: bench check op=NAME")
    p.add_argument("overrides", nargs="*", help="op=NAME [channels=16] [size=9]")
    p.add_argument("--all", action="store_true", help="check every registered operator")
    p = sub.add_parser("leaderboard", help="regenerate leaderboards/ (Markdown, CSV, HTML) from result records")
    p.add_argument("--results", action="append", default=[], metavar="DIR",
                   help="another folder of result records (leaderboards/results is always read)")
    p.add_argument("--out", default="leaderboards", help="where README.md, results.csv and index.html go")
    p = sub.add_parser("list", help="list ops, backbones, tasks, data or recipes")
    p.add_argument("what", nargs="?", default="ops", choices=["ops", "backbones", "tasks", "data", "recipes"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `bench` console command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run_configs("run", args.overrides, args.multirun, args.cfg, json_path=args.json)
        if args.command == "profile":
            return _run_configs("profile", args.overrides, args.multirun, args.cfg, fixed=["task=profile"],
                                json_path=args.json)
        if args.command == "sweep":
            return cmd_sweep_status([o for o in args.overrides if o not in ("-m", "--multirun")])
        if args.command == "check":
            return cmd_check(args)
        if args.command == "leaderboard":
            return cmd_leaderboard(args)
        return cmd_list(args)
    except (ConfigError, OperatorError, KeyError) as err:
        message = err.args[0] if err.args else str(err)
        errors.print(f"[bold red]error:[/bold red] {escape(str(message))}", highlight=False)
        return USAGE_EXIT
    except KeyboardInterrupt:
        errors.print("interrupted; finished results are kept")
        return 130


def entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())

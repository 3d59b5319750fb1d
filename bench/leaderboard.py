"""`bench leaderboard`: Markdown, CSV and a static HTML page generated from result records.

Records are grouped by task and dataset, then by platform: the device kind (every CPU host is one platform, each
GPU model its own), precision and compilation. Metrics pool the seeds of a platform whichever host ran them;
latency and throughput get one column per host (timings from different machines are never averaged or ranked
together). One row per (backbone, operator, upsampler, recipe) aggregates its seeds: metrics as mean +/- std with
the seed count. Everything task-specific comes from the task's `TaskSpec`: the metric columns (in its order, shown
in its units), the primary metric and its direction (rows sorted best first, the Pareto front on the right side),
and the baseline rule of the deltas. A row holds one sample per seed: a copy of a record (same ``run_id``) or a
repeated run of the same configuration and seed is listed under "Duplicate runs (not averaged)" and the newest run
(by end time) is kept. Runs that did not succeed are listed apart; files that are not valid records (NaN or
Infinity, a number given as a string, ...) are reported by path with the reason and skipped. The papers' ablations
(`bench.ablations`) get their own tables, with a verdict on each ordering the paper found. The same inputs always
give byte-identical outputs.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
import shlex
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.ablations import ABLATIONS, Ablation, Variant, verdict
from bench.results import NOT_IDENTITY, RecordError, read_record
from bench.tasks import Metric, find_task

KEY_FIELDS = {"op": 1, "upsampler": 2}
"""Row-key positions of the record fields a baseline rule may replace."""


@dataclass(frozen=True)
class TaskView:
    """What the leaderboard reads of a task: its metrics in order, the primary one, the baseline rule."""

    metrics: tuple[Metric, ...]
    primary: Metric
    baseline: Mapping[str, str]
    model_keys: tuple[str, ...] = ()
    cost_plots: bool = True
    section_keys: tuple[str, ...] = ()

    def model_label(self, record: Mapping[str, Any]) -> str:
        """The row key's model part: the model keys' values, then the backbone (RetinaNet and Faster R-CNN never
        mix)."""
        return " ".join([*(str(record[k]) for k in self.model_keys if record.get(k)), record.get("backbone") or "-"])

    def section_label(self, record: Mapping[str, Any]) -> str:
        """The data part of a section title: the dataset, then the section keys' values (``shapes, scale=4``)."""
        return ", ".join([record.get("data") or "-", *(f"{k}={record[k]}" for k in self.section_keys
                                                       if record.get(k) is not None)])

    def metric(self, name: str) -> Metric:
        """The declared metric ``name``, or a plain higher-is-better one for a figure the task did not declare."""
        return next((m for m in self.metrics if m.name == name), Metric(name))

    def columns(self, seen: set[str]) -> list[Metric]:
        """The metric columns of a section: declared ones that appear, in the task's order, then the others."""
        declared = [m for m in self.metrics if m.name in seen]
        return declared + [Metric(name) for name in sorted(seen - {m.name for m in declared})]


def task_view(task: str, records: Iterable[dict[str, Any]] = ()) -> TaskView:
    """The view of ``task`` from its spec; a task that is not installed ranks by its first metric, higher first."""
    spec = find_task(task)
    if spec is not None:
        return TaskView(spec.metrics, spec.primary_metric, spec.baseline, spec.model_keys, spec.cost_plots,
                        spec.section_keys)
    names = sorted({m for r in records for m in r.get("metrics", {})})
    metrics = tuple(Metric(name) for name in names) or (Metric("-"),)
    return TaskView(metrics, metrics[0], {"op": "conv"})


@dataclass(frozen=True)
class Duplicate:
    """A record left out of its row's averages: another record of the same seed was kept instead."""

    path: Path
    record: dict[str, Any]
    kept: Path
    reason: str


@dataclass
class Row:
    """One (backbone, op, upsampler, recipe) configuration aggregated over its seeds, one record per seed."""

    key: tuple[str, str, str, str]
    records: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(r["seed"] for _, r in self.records if r.get("seed") is not None)

    def values(self, name: str, floor: float | None = None) -> list[float]:
        """Figure ``name`` of each record that has it; values below ``floor`` mean "not measured" and are left out."""
        return [float(v) for _, r in self.records if (v := _figure(r, name)) is not None
                and (floor is None or v >= floor)]

    def metric(self, name: str, floor: float | None = None) -> tuple[float, float] | None:
        """Mean and std over seeds of figure ``name``; values below ``floor`` mean "not measured" and are left out."""
        values = self.values(name, floor)
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def efficiency(self, name: str) -> Any:
        _, first = self.records[0]
        return _figure(first, name)

    def on(self, machine: str) -> Row:
        """The row's records measured on host ``machine``: its timings, never averaged with another host's."""
        return Row(self.key, [(path, r) for path, r in self.records if host(r) == machine])


def hosts(rows: Iterable[Row]) -> list[str]:
    """The hosts a section's records ran on, sorted."""
    return sorted({host(r) for row in rows for _, r in row.records})


def _figure(record: dict[str, Any], name: str) -> Any:
    """A test metric, an efficiency figure, or (a dotted name) the number at that path of the record."""
    if name in record.get("metrics", {}):
        return record["metrics"][name]
    if "." in name:
        value: Any = record
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    value = record.get("efficiency", {}).get(name)
    return value.get("median") if isinstance(value, dict) else value


def collect(dirs: Iterable[Path]) -> tuple[list[tuple[Path, dict]], list[tuple[Path, str]]]:
    """Every valid record under ``dirs`` (sorted by path) and every invalid file with its reason."""
    valid, invalid = [], []
    for path in sorted({p for d in dirs for p in Path(d).rglob("*.json") if not p.name.startswith(".tmp")}):
        try:
            valid.append((path, read_record(path)))
        except RecordError as err:
            invalid.append((path, str(err)))
    return valid, invalid


def host(record: dict[str, Any]) -> str:
    """The machine a record's latency was measured on (CPU model and thread count, or GPU model)."""
    return (record["provenance"].get("hardware") or {}).get("label") or "unknown hardware"


def _platform(record: dict[str, Any]) -> str:
    """What a record's metrics depend on besides its configuration: the device kind (any CPU host is ``CPU``:
    another host's float sums differ, not its distribution of results), precision and compilation."""
    hw = record["provenance"].get("hardware") or {}
    precision = record["provenance"].get("precision")
    compiled = (record.get("efficiency") or {}).get("compiled")
    return (("CPU" if hw.get("device") == "cpu" else host(record)) + (f", {precision}" if precision else "")
            + (", torch.compile" if compiled else ""))


def _with_kwargs(name: str | None, kwargs: dict[str, Any] | None) -> str:
    """``octconv`` or ``octconv(alpha=0.25)``: runs with different operator arguments are different rows."""
    if not name:
        return "-"
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})" if kwargs else name


def _protocol(record: dict[str, Any]) -> str:
    """Fingerprint of the recipe and data settings a record ran with (the data location excepted). A recipe
    setting left unset (null) counts as absent, so a field added later with a null default changes no protocol."""
    config = record.get("config", {})
    data = {k: v for k, v in (config.get("data") or {}).items() if k != "path"}
    recipe = {k: v for k, v in (config.get("recipe") or {}).items() if v is not None}
    text = json.dumps({"recipe": recipe, "data": data}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _recipe_labels(records: list[tuple[Path, dict]]) -> dict[Path, str]:
    """The recipe name, suffixed with the protocol fingerprint where one name ran with different settings,
    so that a recipe edited between runs (or overridden on the command line) is never averaged with itself."""
    named = {path: (r["task"], r.get("data"), r.get("recipe") or "-") for path, r in records}
    protocols = {path: _protocol(r) for path, r in records}
    variants: dict[tuple, set[str]] = defaultdict(set)
    for path, name in named.items():
        variants[name].add(protocols[path])
    return {path: name[2] + (f"@{protocols[path]}" if len(variants[name]) > 1 else "") for path, name in named.items()}


def _finished(record: dict[str, Any]) -> datetime:
    """When a run ended (``provenance.end_time``, else ``created``); the oldest possible time if neither parses."""
    for text in (record["provenance"].get("end_time"), record.get("created")):
        try:
            when = datetime.fromisoformat(text) if text else None
        except ValueError:
            when = None
        if when is not None:
            return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return datetime.min.replace(tzinfo=timezone.utc)


def _why_duplicate(record: dict[str, Any], kept: dict[str, Any]) -> str:
    if record["run_id"] == kept["run_id"]:
        return f"same run_id ({record['run_id']})"
    mine, theirs = record["provenance"]["config_hash"], kept["provenance"]["config_hash"]
    if mine and mine == theirs:
        return f"same configuration (config_hash {mine[:12]}) and seed {record.get('seed')}"
    return (f"same row and seed {record.get('seed')}, configuration differs "
            f"(config_hash {mine[:12] or '-'} vs {theirs[:12] or '-'})")


def _one_per_seed(row: Row) -> None:
    """Keep one record per seed in ``row``, the newest run; the others become the row's duplicates.

    Records without a seed are only ever duplicates of copies of themselves (the same ``run_id``).
    """
    by_seed: dict[Any, list[tuple[Path, dict[str, Any]]]] = defaultdict(list)
    for path, r in row.records:
        by_seed[("seed", r["seed"]) if r.get("seed") is not None else ("run", r["run_id"])].append((path, r))
    kept = set()
    for runs in by_seed.values():
        runs = sorted(sorted(runs, key=lambda run: run[0]), key=lambda run: _finished(run[1]), reverse=True)
        (kept_path, kept_record), *others = runs  # newest first; ties: the first path
        kept.add(kept_path)
        row.duplicates += [Duplicate(path, r, kept_path, _why_duplicate(r, kept_record)) for path, r in others]
    row.records = [(path, r) for path, r in row.records if path in kept]
    row.duplicates.sort(key=lambda d: d.path)


def group(records: list[tuple[Path, dict]]) -> dict[tuple[str, str, str], list[Row]]:
    """Successful records by (task, data, platform), each a list of rows sorted by the primary metric.

    Each row keeps one record per seed (see :func:`_one_per_seed`); the rest are in its ``duplicates``.
    """
    tables: dict[tuple[str, str, str], dict[tuple, Row]] = defaultdict(dict)
    succeeded = [(path, record) for path, record in records if record["status"] == "success"]
    recipes = _recipe_labels(succeeded)
    for path, record in succeeded:
        view = task_view(record["task"])
        section = (record["task"], view.section_label(record), _platform(record))
        key = (view.model_label(record), _with_kwargs(record.get("op"), record.get("op_kwargs")),
               _with_kwargs(record.get("upsampler"), record["config"].get("upsampler_kwargs")), recipes[path])
        tables[section].setdefault(key, Row(key)).records.append((path, record))
    for rows in tables.values():
        for row in rows.values():
            _one_per_seed(row)
    out = {}
    for section, rows in sorted(tables.items()):
        primary = task_view(section[0], (r for row in rows.values() for _, r in row.records)).primary

        def order(row: Row, primary: Metric = primary) -> tuple:
            value = row.metric(primary.name, primary.floor)
            score = float("-inf") if value is None else (value[0] if primary.higher_is_better else -value[0])
            return (-score, row.key)

        out[section] = sorted(rows.values(), key=order)
    return out


def _fmt(value: tuple[float, float] | None, n: int, scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    mean, std = value
    return f"{mean * scale:.{digits}f} +/- {std * scale:.{digits}f} (n={n})" if n > 1 else f"{mean * scale:.{digits}f}"


def section_view(section: tuple[str, str, str], rows: list[Row]) -> TaskView:
    """The task view of a leaderboard section (its task's spec, or what its records show)."""
    return task_view(section[0], (r for row in rows for _, r in row.records))


RESUMED_MARK = "*"
RESUMED_NOTE = ("A seed marked * was resumed from a checkpoint: its result is not bit-identical to an "
                "uninterrupted run (the data order and random state of the interrupted epoch differ).")


def _any_resumed(tables: dict) -> bool:
    return any(r.get("resumed_from_step") is not None for rows in tables.values() for row in rows
               for _, r in row.records)


def _seeds(row: Row) -> str:
    """The row's seeds, each resumed run's marked (`RESUMED_MARK`)."""
    marked = sorted((r["seed"], RESUMED_MARK if r.get("resumed_from_step") is not None else "")
                    for _, r in row.records if r.get("seed") is not None)
    return ",".join(f"{seed}{mark}" for seed, mark in marked) or "-"


def ranking(view: TaskView) -> str:
    """One line saying how a section is ranked and what its deltas compare against."""
    primary, baseline = view.primary, ", ".join(f"{k}={v}" for k, v in view.baseline.items())
    return f"Ranked by {primary.label}, {primary.direction}; deltas against the same row with {baseline}."


def _baseline(view: TaskView, rows: list[Row], row: Row) -> Row | None:
    """The row's configuration with the task's baseline fields (``op=conv``, its stock upsampler) in place."""
    key, record = list(row.key), row.records[0][1]
    values = {name: value(record) if callable(value) else value for name, value in view.baseline.items()}
    for name, value in values.items():
        if name in KEY_FIELDS and key[KEY_FIELDS[name]] != "-" and value is not None:
            key[KEY_FIELDS[name]] = value
    if models := {name: value for name, value in values.items() if name in view.model_keys and value is not None}:
        key[0] = view.model_label({**record, **models})
    return next((r for r in rows if r.key == tuple(key)), None)


def _delta(view: TaskView, rows: list[Row], row: Row) -> str:
    base, primary = _baseline(view, rows, row), view.primary
    mine = row.metric(primary.name, primary.floor)
    theirs = base.metric(primary.name, primary.floor) if base else None
    if base is None or base is row or mine is None or theirs is None:
        return "-"
    return f"{(mine[0] - theirs[0]) * primary.scale:+.2f}"


def _command(row: Row) -> str:
    """The command that reproduces the row: one seed's command, or a sweep over the row's seeds, without the
    keys that only said where its outputs went (``results_dir=``, ``runs_dir=``, ...)."""
    command = row.records[0][1]["provenance"]["command"]
    try:
        said = shlex.split(command)
    except ValueError:  # not a shell command line (an edited record): show it as recorded
        return command
    words = [w for w in said if w.split("=")[0] not in NOT_IDENTITY]
    if len(row.seeds) < 2:
        return command if words == said else shlex.join(words)
    words = [w for w in words if not w.startswith("seed=")]
    return shlex.join([*words[:2], "-m", *words[2:], f"seed={','.join(map(str, row.seeds))}"])


CONVERGENCE_MARGIN = 0.01
"""A row is still improving when its mean validation curve's last point beats the one before by more than this
share of that point (1%): its place against the other rows is not settled."""
CONVERGENCE_NOTE = ("converged: whether the row's validation curve (mean over seeds) had flattened at the end; "
                    f"'no (+x%)' when its last point improved on the one before by more than {CONVERGENCE_MARGIN:.0%}.")


def validation_curve(view: TaskView, row: Row) -> tuple[str, list[tuple[float, float]]] | None:
    """The row's validation curve of its primary metric (else its first one), averaged over seeds."""
    names = sorted({n for _, r in row.records for n in (r.get("curves") or {}) if n.startswith("val_")})
    if not names:
        return None
    name = f"val_{view.primary.name}" if f"val_{view.primary.name}" in names else names[0]
    return name, mean_curve([r["curves"][name] for _, r in row.records if (r.get("curves") or {}).get(name)])


def convergence(view: TaskView, row: Row) -> str:
    """``yes``, ``no (+x%)`` (the last validation point still gained more than the margin) or ``-`` (no curve)."""
    found = validation_curve(view, row)
    if found is None or len(found[1]) < 2:
        return "-"
    name, points = found
    declared = {m.name: m for m in view.metrics}
    metric = declared.get(name) or declared.get(name.removeprefix("val_")) or Metric(name)
    (_, before), (_, last) = points[-2:]
    gain = (last - before) if metric.higher_is_better else (before - last)
    share = gain / abs(before) if before else float("inf") if gain > 0 else 0.0
    return f"no (+{share:.0%})" if share > CONVERGENCE_MARGIN else "yes"


def table_rows(section: tuple[str, str, str], rows: list[Row], link_root: Path) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of one section, shared by the renderers: the last two cells of a row are the
    result paths (relative to ``link_root``) and the reproduction command, which each renderer formats."""
    view = section_view(section, rows)
    found = {m for row in rows for _, r in row.records for m in r.get("metrics", {})}
    paths = {m.name for m in view.metrics if "." in m.name and any(row.values(m.name) for row in rows)}
    metrics = view.columns(found | paths)
    ratios = any(r.get("efficiency", {}).get("vs_baseline") for row in rows for _, r in row.records)
    converged = {row.key: convergence(view, row) for row in rows}
    curves = any(flag != "-" for flag in converged.values())
    baseline = "+".join(str(v) if not callable(v) else f"stock {k}" for k, v in view.baseline.items())
    machines = hosts(rows)
    on = {machine: f", {machine}" if len(machines) > 1 else "" for machine in machines}
    header = ["backbone", "op", "upsampler", "recipe", *(m.label for m in metrics),
              f"delta {view.primary.name} vs {baseline}", "params (M)", "GMACs",
              *(["Pareto front (GMACs)"] if view.cost_plots else []),
              *(f"latency (ms){on[m]}" for m in machines), *(["latency vs baseline (interleaved)"] if ratios else []),
              *(f"throughput (/s){on[m]}" for m in machines),
              *(["converged"] if curves else []), "seeds", "results", "reproduce"]
    front = {rows[i].key for i in front_rows(view, rows, "GMACs")} if view.cost_plots else set()
    cells = []
    for row in rows:
        params, macs = row.efficiency("params"), row.efficiency("macs")
        timed = [row.on(m) for m in machines]
        # n counts the records that have the figure: a metric a run could not report is not a sample
        cells.append([*row.key, *(_fmt(row.metric(m.name, m.floor), len(row.values(m.name, m.floor)), m.scale)
                                  for m in metrics),
                      _delta(view, rows, row),
                      f"{params / 1e6:.2f}" if params else "-", f"{macs / 1e9:.3f}" if macs else "-",
                      *(["yes" if row.key in front else ""] if view.cost_plots else []),
                      *(_fmt(t.metric("latency_ms"), len(t.values("latency_ms"))) for t in timed),
                      *([_vs_baseline(row)] if ratios else []),
                      *(f"{x:.1f}" if t.records and (x := t.efficiency("throughput_per_s")) else "-" for t in timed),
                      *([converged[row.key]] if curves else []),
                      _seeds(row), [_rel(p, link_root) for p, _ in row.records],
                      _command(row)])
    return header, cells


@dataclass(frozen=True)
class AblationTable:
    """One paper's ablation as found in one leaderboard section: its variants' rows (None where not run)."""

    ablation: Ablation
    section: tuple[str, str, str]
    model: str
    recipe: str
    rows: tuple[tuple[Variant, Row | None], ...]

    @property
    def title(self) -> str:
        return f"{self.ablation.title}: {self.section[0]} on {self.section[1]}, {self.model}, {self.recipe}"


ABLATIONS_NOTE = ("Each paper's ablation run on the suite: its variants' rows (same section, model and recipe) and, "
                  "for each ordering the paper found, whether the suite reproduces it: yes or no when the gap between "
                  "the means exceeds twice its standard error, within noise otherwise. The bracketed gap is the "
                  "claimed-higher variant minus the claimed-lower one: positive agrees with the paper.")


def ablation_tables(tables: dict) -> list[AblationTable]:
    """Every declared ablation with at least two of its variants run in the same section, model and recipe."""
    found = []
    for ablation in ABLATIONS:
        for section, rows in tables.items():
            if section[0] != ablation.task:
                continue
            groups = sorted({(row.key[0], row.key[3]) for row in rows
                             if row.key[3].split("@")[0] == ablation.recipe and row.key[2] == "-"})
            for model, recipe in groups:
                by_op = {row.key[1]: row for row in rows
                         if (row.key[0], row.key[3], row.key[2]) == (model, recipe, "-")}
                matched = tuple((v, by_op.get(v.op)) for v in ablation.variants)
                if sum(row is not None for _, row in matched) >= 2:
                    found.append(AblationTable(ablation, section, model, recipe, matched))
    return found


def ablation_cells(table: AblationTable) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, one row of cells per variant, and one line per claimed ordering with its verdict."""
    view = section_view(table.section, [row for _, row in table.rows if row is not None])
    primary, rows = view.primary, {v.label: row for v, row in table.rows}
    baseline = rows.get(table.ablation.variants[0].label)
    header = ["variant", "row", primary.label, f"delta vs {table.ablation.variants[0].label}", "converged", "seeds"]
    cells = []
    for variant, row in table.rows:
        if row is None:
            cells.append([variant.label, variant.op, "not run", "-", "-", "-"])
            continue
        mine, base = row.metric(primary.name, primary.floor), baseline and baseline.metric(primary.name, primary.floor)
        delta = f"{(mine[0] - base[0]) * primary.scale:+.2f}" if mine and base and row is not baseline else "-"
        n = len(row.values(primary.name, primary.floor))
        cells.append([variant.label, variant.op, _fmt(mine, n, primary.scale), delta, convergence(view, row),
                      _seeds(row)])
    claims = []
    for claim in table.ablation.claims:
        low, high = rows.get(claim.lower), rows.get(claim.higher)
        scores = [[v * primary.scale for v in r.values(primary.name, primary.floor)] if r else [] for r in (low, high)]
        relation = "<" if primary.higher_is_better else ">"
        claims.append(f"{claim.lower} {relation} {claim.higher}: {verdict(*scores, primary.higher_is_better)}")
    return header, cells, claims


def _vs_baseline(row: Row) -> str:
    """The interleaved latency ratios of `task.baseline`, per batch size, averaged over the row's records."""
    found = [r["efficiency"]["vs_baseline"] for _, r in row.records if r.get("efficiency", {}).get("vs_baseline")]
    if not found:
        return "-"
    batches = sorted({int(k.removeprefix("batch_")) for f in found for k in f if k.startswith("batch_")})
    means = [statistics.fmean(f[f"batch_{b}"] for f in found if f"batch_{b}" in f) for b in batches]
    baselines = "/".join(sorted({f["op"] for f in found}))
    return " / ".join(f"{m:.2f}x" for m in means) + f" {baselines} (batch {' / '.join(map(str, batches))})"


def duplicates(tables: dict) -> list[tuple[tuple[str, str, str], Row, Duplicate]]:
    """Every record left out of a row as a duplicate run, with its section and row, in section and row order."""
    return [(section, row, dup) for section, rows in tables.items() for row in rows for dup in row.duplicates]


def _seed(record: dict[str, Any]) -> str:
    return "-" if record.get("seed") is None else str(record["seed"])


DUPLICATES_NOTE = ("One sample per configuration and seed: of records with the same seed in a row (copies of one "
                   "record, or the same configuration run again), the newest run is kept and these are left out.")


HOSTS_NOTE = ("A section is one platform (every CPU host is one; each GPU model, precision and compilation its "
              "own): its metrics pool the seeds run on any of its hosts, its latencies and throughputs are per host, "
              "in one column per host, and compare only within a column.")


def timed_on(rows: list[Row]) -> str:
    """The hosts of a section, each with how many of its records ran there."""
    counts = {m: sum(len(row.on(m).records) for row in rows) for m in hosts(rows)}
    return "ran on " + ", ".join(f"{m} ({n} run{'s' if n > 1 else ''})" for m, n in counts.items())


def render_markdown(tables: dict, failed: list[tuple[Path, dict]], invalid: list[tuple[Path, str]],
                    link_root: Path) -> str:
    lines = ["# Leaderboards", "", "Generated by `bench leaderboard` from the result records; do not edit by hand.",
             "Metrics are mean +/- std over seeds, in the units of their column.", HOSTS_NOTE, CONVERGENCE_NOTE,
             *([RESUMED_NOTE] if _any_resumed(tables) else []), ""]
    for section, rows in tables.items():
        task, data, platform = section
        header, cells = table_rows(section, rows, link_root)
        lines += [f"## {task} on {data}", "", f"Hardware: {platform}; {timed_on(rows)}", "",
                  ranking(section_view(section, rows)), "",
                  "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for *values, paths, command in cells:
            links = " ".join(f"[{i + 1}]({p})" for i, p in enumerate(paths))
            lines.append("| " + " | ".join(v.replace("|", "\\|") for v in [*values, links, f"`{command}`"]) + " |")
        lines.append("")
    if found := ablation_tables(tables):
        lines += ["## Papers' ablations", "", ABLATIONS_NOTE, ""]
        for table in found:
            header, cells, claims = ablation_cells(table)
            lines += [f"### {table.title}", "", f"Hardware: {table.section[2]}", "", table.ablation.source, "",
                      "| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
                      *("| " + " | ".join(cells_row) + " |" for cells_row in cells), "",
                      "The paper's orderings, as reproduced here:", "", *(f"- {claim}" for claim in claims), ""]
    if dups := duplicates(tables):
        columns = ["task", "data", "platform", "backbone", "op", "upsampler", "recipe", "seed", "result",
                   "kept instead", "why"]
        lines += ["## Duplicate runs (not averaged)", "", DUPLICATES_NOTE, "",
                  "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for (task, data, hardware), row, dup in dups:
            path, kept = _rel(dup.path, link_root), _rel(dup.kept, link_root)
            cells = [task, data, hardware, *row.key, _seed(dup.record), f"[{path}]({path})",
                     f"[{kept}]({kept})", dup.reason]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    if failed:
        lines += ["## Failed, diverged or interrupted runs", "", "| status | task | op | backbone | error | result |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for path, r in failed:
            error = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")[:200]
            lines.append(f"| {r['status']} | {r['task']} | {r.get('op')} | {r.get('backbone') or '-'} | {error} | "
                         f"[record]({_rel(path, link_root)}) |")
        lines.append("")
    if invalid:
        lines += ["## Skipped files", ""] + [f"- {reason}" for _, reason in invalid]
        lines.append("")
    return "\n".join(lines)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def render_csv(tables: dict, link_root: Path) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["task", "data", "platform", "hardware", "backbone", "op", "upsampler", "recipe", "seed", "status",
                     "metric", "value", "params", "macs", "latency_ms", "result"])
    for (task, data, platform), rows in tables.items():
        for row in rows:
            for path, r in row.records:
                for metric, value in sorted(r.get("metrics", {}).items()) or [("-", "")]:
                    writer.writerow([task, data, platform, host(r), *row.key, r.get("seed"), r["status"], metric, value,
                                     _figure(r, "params"), _figure(r, "macs"), _figure(r, "latency_ms"),
                                     _rel(path, link_root)])
    return out.getvalue()


def _pareto(points: list[tuple[float, float]], higher: bool) -> list[int]:
    """Indices of points no other point beats on both cost (lower x) and quality."""
    best = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and (y2 >= y if higher else y2 <= y)) and (x2, y2) != (x, y)
                        for x2, y2 in points)
        if not dominated:
            best.append(i)
    return best


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "bench"  # stable element ids: byte-identical output
    return plt


def _svg(plt: Any, fig: Any) -> str:
    """The finished figure as inline SVG (no metadata, so the same data give the same bytes); closes it."""
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = out.getvalue()
    return re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)


def cost_points(view: TaskView, rows: list[Row], cost: str) -> list[tuple[int, tuple[float, float]]]:
    """(row index, (cost, primary metric in display units)) of every row that has both; ``cost`` is GMACs or latency."""
    primary, points = view.primary, []
    for i, row in enumerate(rows):
        metric = row.metric(primary.name, primary.floor)
        x = (row.efficiency("macs") or 0) / 1e9 if cost == "GMACs" else (row.metric("latency_ms") or (None,))[0]
        if metric is not None and x:
            points.append((i, (float(x), metric[0] * primary.scale)))
    return points


def front_rows(view: TaskView, rows: list[Row], cost: str) -> list[int]:
    """Indices of the rows on the Pareto front of ``cost`` against the primary metric, in its direction."""
    plotted = cost_points(view, rows, cost)
    return [plotted[i][0] for i in _pareto([p for _, p in plotted], view.primary.higher_is_better)]


def plot_svg(section: tuple[str, str, str], rows: list[Row], cost: str, machine: str = "") -> str | None:
    """Inline SVG: the primary metric against ``cost`` (GMACs, or latency on host ``machine``), Pareto front
    marked; None if no data.

    The front is the upper-left for a higher-is-better metric and the lower-left for a lower-is-better one.
    """
    view = section_view(section, rows)
    if not view.cost_plots:
        return None
    primary = view.primary
    plotted = cost_points(view, rows, cost)
    if not plotted:
        return None
    points = [point for _, point in plotted]
    labels = [f"{rows[i].key[1]} ({rows[i].key[0]})" for i, _ in plotted]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.scatter(*zip(*points), color="#4477aa")
    for (x, y), label in zip(points, labels):
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted(points[i] for i in _pareto(points, primary.higher_is_better))
    ax.plot(*zip(*front), color="#cc3311", linestyle="--", label="Pareto front")
    ax.set_xlabel("GMACs" if cost == "GMACs" else f"latency (ms) on {machine}")
    ax.set_ylabel(f"{primary.label}, {primary.direction}")
    ax.set_title(f"{section[0]} on {section[1]}", fontsize=9)
    ax.legend(fontsize=7)
    return _svg(plt, fig)


def mean_curve(curves: list[list[list[float]]]) -> list[tuple[float, float]]:
    """Seeds' curves averaged point by point over the points they share (same configuration, same steps)."""
    length = min(len(c) for c in curves)
    return [(curves[0][i][0], statistics.fmean(c[i][1] for c in curves)) for i in range(length)]


def curve_svg(section: tuple[str, str, str], rows: list[Row]) -> str | None:
    """Inline SVG of the section's learning curves, one line per row (mean over seeds); None without curves.

    One panel per curve name the records hold: the training loss per step, a validation figure per epoch.
    """
    names = sorted({name for row in rows for _, r in row.records for name in (r.get("curves") or {})},
                   key=lambda n: (n != "train_loss", n))
    if not names:
        return None
    view = section_view(section, rows)
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        metric = view.metric(name) if name in {m.name for m in view.metrics} else view.metric(name.removeprefix("val_"))
        metric = metric if name != "train_loss" else Metric(name)
        for row in rows:
            curves = [r["curves"][name] for _, r in row.records if (r.get("curves") or {}).get(name)]
            if curves and (points := mean_curve(curves)):
                xs, ys = zip(*points)
                ax.plot(xs, [y * metric.scale for y in ys], marker="." if len(xs) < 20 else None, linewidth=1,
                        label=f"{row.key[1]} ({row.key[0]}, {row.key[2]})" if row.key[2] != "-" else
                        f"{row.key[1]} ({row.key[0]})")
        ax.set_xlabel("step" if name == "train_loss" else "epoch")
        ax.set_ylabel(f"{name} ({metric.unit})" if metric.unit else name)
        ax.set_title(f"{section[0]} on {section[1]}: {name}", fontsize=9)
        ax.legend(fontsize=6)
    return _svg(plt, fig)


SORT_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const asc = th.dataset.asc !== "1"; th.dataset.asc = asc ? "1" : "0";
  const key = r => { const t = r.cells[col].innerText; const v = parseFloat(t); return isNaN(v) ? t : v; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (asc ? 1 : -1))
    .forEach(r => body.appendChild(r));
}));
"""


def render_html(tables: dict, failed: list[tuple[Path, dict]], invalid: list[tuple[Path, str]],
                link_root: Path) -> str:
    """One self-contained page: a sortable table and two plots per section, no network needed."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>bench leaderboards</title><style>",
             "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}th{cursor:pointer;background:#eee}"
             ".plots{display:flex;gap:1em;flex-wrap:wrap}",
             "</style></head><body><h1>bench leaderboards</h1>",
             *([f"<p>{html.escape(RESUMED_NOTE)}</p>"] if _any_resumed(tables) else []),
             "<p>Metrics: mean &plusmn; std over seeds. Click a column header to sort. "
             f"{html.escape(HOSTS_NOTE)}</p>", f"<p>{html.escape(CONVERGENCE_NOTE)}</p>"]
    for section, rows in tables.items():
        header, cells = table_rows(section, rows, link_root)
        parts.append(f"<h2>{html.escape(section[0])} on {html.escape(section[1])}</h2>"
                     f"<p>Hardware: {html.escape(section[2])}; {html.escape(timed_on(rows))}</p>"
                     f"<p>{html.escape(ranking(section_view(section, rows)))}</p><table class='sortable'><thead><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for *values, paths, command in cells:
            links = " ".join(f"<a href='{html.escape(p)}'>{i + 1}</a>" for i, p in enumerate(paths))
            parts.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values)
                         + f"<td>{links}</td><td><code>{html.escape(command)}</code></td></tr>")
        parts.append("</tbody></table><div class='plots'>")
        latency = [plot_svg(section, [t for row in rows if (t := row.on(m)).records], "latency", m)
                   for m in hosts(rows)]
        parts += [svg for svg in (plot_svg(section, rows, "GMACs"), *latency, curve_svg(section, rows)) if svg]
        parts.append("</div>")
    if found := ablation_tables(tables):
        parts.append(f"<h2>Papers' ablations</h2><p>{html.escape(ABLATIONS_NOTE)}</p>")
        for table in found:
            header, cells, claims = ablation_cells(table)
            parts.append(f"<h3>{html.escape(table.title)}</h3><p>Hardware: {html.escape(table.section[2])}</p>"
                         f"<p>{html.escape(table.ablation.source)}</p><table><thead><tr>"
                         + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                                   for row in cells)
                         + "</tbody></table><ul>" + "".join(f"<li>{html.escape(c)}</li>" for c in claims) + "</ul>")
    if dups := duplicates(tables):
        parts.append(f"<h2>Duplicate runs (not averaged)</h2><p>{html.escape(DUPLICATES_NOTE)}</p><ul>")
        for (task, data, hardware), row, dup in dups:
            path, kept = _rel(dup.path, link_root), _rel(dup.kept, link_root)
            parts.append(f"<li>{html.escape(f'{task} on {data} ({hardware}): ' + ' '.join(row.key))} "
                         f"seed {html.escape(_seed(dup.record))}: "
                         f"<a href='{html.escape(path)}'>{html.escape(path)}</a>, kept "
                         f"<a href='{html.escape(kept)}'>{html.escape(kept)}</a> instead: "
                         f"{html.escape(dup.reason)}</li>")
        parts.append("</ul>")
    if failed:
        parts.append("<h2>Failed, diverged or interrupted runs</h2><ul>")
        parts += [f"<li>{html.escape(r['status'])}: {html.escape(r['task'])} op={html.escape(str(r.get('op')))} "
                  f"({html.escape(_rel(p, link_root))}): {html.escape((r.get('error') or '')[:200])}</li>"
                  for p, r in failed]
        parts.append("</ul>")
    if invalid:
        parts.append("<h2>Skipped files</h2><ul>")
        parts += [f"<li>{html.escape(reason)}</li>" for _, reason in invalid]
        parts.append("</ul>")
    parts.append(f"<script>{SORT_SCRIPT}</script></body></html>\n")
    return "".join(parts)


@dataclass
class Generated:
    """What :func:`generate` wrote and what it skipped."""

    paths: list[Path]
    rows: int
    failed: int
    invalid: list[tuple[Path, str]]
    duplicates: list[Path] = field(default_factory=list)
    """Records left out of the averages as duplicate runs (listed in the outputs)."""


def _write(path: Path, text: str) -> Path:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def generate(results_dirs: Iterable[Path], out_dir: Path) -> Generated:
    """Read every record under ``results_dirs`` and (re)write README.md, results.csv and index.html in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()
    records, invalid = collect(Path(d).resolve() for d in results_dirs)
    tables = group(records)
    failed = [(p, r) for p, r in records if r["status"] != "success"]
    paths = [_write(out_dir / "README.md", render_markdown(tables, failed, invalid, root)),
             _write(out_dir / "results.csv", render_csv(tables, root)),
             _write(out_dir / "index.html", render_html(tables, failed, invalid, root))]
    return Generated(paths, sum(len(rows) for rows in tables.values()), len(failed), invalid,
                     [dup.path for _, _, dup in duplicates(tables)])

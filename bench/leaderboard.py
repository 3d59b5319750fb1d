"""`bench leaderboard`: Markdown, CSV and a static HTML page generated from result records.

Records are grouped by task and dataset, then by the hardware their latency was measured on (timings
from different machines or precisions are never ranked together). One row per (backbone, operator,
upsampler, recipe) aggregates its seeds: metrics as mean +/- std with the seed count. Rows are sorted by
the task's primary metric and show the difference to the `conv` baseline of the same backbone and
recipe. Runs that did not succeed are listed apart; files that are not valid records are reported by
path with the reason and skipped. The same inputs always give byte-identical outputs.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.results import RecordError, read_record

PRIMARY = {"classification": ("top1", True), "detection": ("mAP", True), "profile": ("latency_ms", False)}
"""Primary metric of each task and whether higher is better (profile ranks by latency)."""


@dataclass
class Row:
    """One (backbone, op, upsampler, recipe) configuration aggregated over its seeds."""

    key: tuple[str, str, str, str]
    records: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(r["seed"] for _, r in self.records if r.get("seed") is not None)

    def metric(self, name: str) -> tuple[float, float] | None:
        values = [float(_figure(r, name)) for _, r in self.records if _figure(r, name) is not None]
        if not values:
            return None
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    def efficiency(self, name: str) -> Any:
        _, first = self.records[0]
        return _figure(first, name)


def _figure(record: dict[str, Any], name: str) -> Any:
    if name in record.get("metrics", {}):
        value = record["metrics"][name]
        return None if value < 0 and name.startswith(("mAP", "mAR")) else value  # COCO's -1: no such objects
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


def _hardware(record: dict[str, Any]) -> str:
    """Where and how latencies were measured: compiled and eager timings are never ranked together."""
    hw = record["provenance"].get("hardware") or {}
    precision = record["provenance"].get("precision")
    compiled = (record.get("efficiency") or {}).get("compiled")
    return (hw.get("label", "unknown hardware") + (f", {precision}" if precision else "")
            + (", torch.compile" if compiled else ""))


def _with_kwargs(name: str | None, kwargs: dict[str, Any] | None) -> str:
    """``octconv`` or ``octconv(alpha=0.25)``: runs with different operator arguments are different rows."""
    if not name:
        return "-"
    return f"{name}({', '.join(f'{k}={v}' for k, v in sorted(kwargs.items()))})" if kwargs else name


def _protocol(record: dict[str, Any]) -> str:
    """Fingerprint of the recipe and data settings a record ran with (the data location excepted)."""
    config = record.get("config", {})
    data = {k: v for k, v in (config.get("data") or {}).items() if k != "path"}
    text = json.dumps({"recipe": config.get("recipe"), "data": data}, sort_keys=True, default=str)
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


def group(records: list[tuple[Path, dict]]) -> dict[tuple[str, str, str], list[Row]]:
    """Successful records by (task, data, hardware), each a list of rows sorted by the primary metric."""
    tables: dict[tuple[str, str, str], dict[tuple, Row]] = defaultdict(dict)
    succeeded = [(path, record) for path, record in records if record["status"] == "success"]
    recipes = _recipe_labels(succeeded)
    for path, record in succeeded:
        section = (record["task"], record.get("data") or "-", _hardware(record))
        model = record.get("backbone") or "-"
        if record.get("detector"):  # RetinaNet and Faster R-CNN rows are never averaged together
            model = f"{record['detector']} {model}"
        key = (model, _with_kwargs(record.get("op"), record.get("op_kwargs")),
               _with_kwargs(record.get("upsampler"), record["config"].get("upsampler_kwargs")), recipes[path])
        tables[section].setdefault(key, Row(key)).records.append((path, record))
    out = {}
    for section, rows in sorted(tables.items()):
        name, higher = PRIMARY.get(section[0], ("top1", True))

        def order(row: Row) -> tuple:
            value = row.metric(name)
            score = float("-inf") if value is None else (value[0] if higher else -value[0])
            return (-score, row.key)

        out[section] = sorted(rows.values(), key=order)
    return out


def _fmt(value: tuple[float, float] | None, n: int, scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    mean, std = value
    return f"{mean * scale:.{digits}f} +/- {std * scale:.{digits}f} (n={n})" if n > 1 else f"{mean * scale:.{digits}f}"


def _percent(metric: str) -> float:
    """Accuracies and COCO APs/ARs are shown in %."""
    return 100.0 if metric.startswith(("top", "val_top", "mAP", "mAR")) else 1.0


def _baseline(rows: list[Row], row: Row) -> Row | None:
    """The stock model of the row's backbone and recipe: the conv operator (and nearest, where there is an upsampler)."""
    upsampler = "-" if row.key[2] == "-" else "nearest"
    return next((r for r in rows if (r.key[0], r.key[1], r.key[2], r.key[3]) ==
                 (row.key[0], "conv", upsampler, row.key[3])), None)


def _delta(rows: list[Row], row: Row, name: str, scale: float) -> str:
    base = _baseline(rows, row)
    mine, theirs = row.metric(name), base.metric(name) if base else None
    if base is None or base is row or mine is None or theirs is None:
        return "-"
    return f"{(mine[0] - theirs[0]) * scale:+.2f}"


def _command(row: Row) -> str:
    """The command that reproduces the row: one seed's command, or a sweep over the row's seeds."""
    command = row.records[0][1]["provenance"]["command"]
    if len(row.seeds) < 2:
        return command
    words = [w for w in shlex.split(command) if not w.startswith("seed=")]
    return shlex.join([*words[:2], "-m", *words[2:], f"seed={','.join(map(str, row.seeds))}"])


def table_rows(section: tuple[str, str, str], rows: list[Row], link_root: Path) -> tuple[list[str], list[list[Any]]]:
    """Header and cells of one section, shared by the renderers: the last two cells of a row are the
    result paths (relative to ``link_root``) and the reproduction command, which each renderer formats."""
    name, _ = PRIMARY.get(section[0], ("top1", True))
    scale = _percent(name)
    metrics = sorted({m for row in rows for _, r in row.records for m in r.get("metrics", {})})
    ratios = section[0] == "profile"
    header = ["backbone", "op", "upsampler", "recipe", *metrics, f"delta {name} vs conv", "params (M)", "GMACs",
              "latency (ms)", *(["latency vs baseline (interleaved)"] if ratios else []), "throughput (/s)", "seeds",
              "results", "reproduce"]
    cells = []
    for row in rows:
        n = len(row.records)
        params, macs = row.efficiency("params"), row.efficiency("macs")
        throughput = row.efficiency("throughput_per_s")
        cells.append([*row.key, *(_fmt(row.metric(m), n, _percent(m)) for m in metrics),
                      _delta(rows, row, name, scale),
                      f"{params / 1e6:.2f}" if params else "-", f"{macs / 1e9:.3f}" if macs else "-",
                      _fmt(row.metric("latency_ms"), n), *([_vs_baseline(row)] if ratios else []),
                      f"{throughput:.1f}" if throughput else "-",
                      ",".join(map(str, row.seeds)) or "-", [_rel(p, link_root) for p, _ in row.records],
                      _command(row)])
    return header, cells


def _vs_baseline(row: Row) -> str:
    """The interleaved latency ratios of `task.baseline`, per batch size, averaged over the row's records."""
    found = [r["efficiency"]["vs_baseline"] for _, r in row.records if r.get("efficiency", {}).get("vs_baseline")]
    if not found:
        return "-"
    batches = sorted({int(k.removeprefix("batch_")) for f in found for k in f if k.startswith("batch_")})
    means = [statistics.fmean(f[f"batch_{b}"] for f in found if f"batch_{b}" in f) for b in batches]
    baselines = "/".join(sorted({f["op"] for f in found}))
    return " / ".join(f"{m:.2f}x" for m in means) + f" {baselines} (batch {' / '.join(map(str, batches))})"


def render_markdown(tables: dict, failed: list[tuple[Path, dict]], invalid: list[tuple[Path, str]],
                    link_root: Path) -> str:
    lines = ["# Leaderboards", "", "Generated by `bench leaderboard` from the result records; do not edit by hand.",
             "Metrics are mean +/- std over seeds (top-1/top-5/mAP in %). Latencies are only comparable within "
             "a hardware section.", ""]
    for section, rows in tables.items():
        task, data, hardware = section
        header, cells = table_rows(section, rows, link_root)
        lines += [f"## {task} on {data}", "", f"Hardware: {hardware}", "",
                  "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for *values, paths, command in cells:
            links = " ".join(f"[{i + 1}]({p})" for i, p in enumerate(paths))
            lines.append("| " + " | ".join(v.replace("|", "\\|") for v in [*values, links, f"`{command}`"]) + " |")
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
    writer.writerow(["task", "data", "hardware", "backbone", "op", "upsampler", "recipe", "seed", "status", "metric",
                     "value", "params", "macs", "latency_ms", "result"])
    for (task, data, hardware), rows in tables.items():
        for row in rows:
            for path, r in row.records:
                for metric, value in sorted(r.get("metrics", {}).items()) or [("-", "")]:
                    writer.writerow([task, data, hardware, *row.key, r.get("seed"), r["status"], metric, value,
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


def plot_svg(section: tuple[str, str, str], rows: list[Row], cost: str) -> str | None:
    """Inline SVG: the primary metric against ``cost`` (GMACs or latency), Pareto front marked; None if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, higher = PRIMARY.get(section[0], ("top1", True))
    if section[0] == "profile":
        return None
    points, labels = [], []
    for row in rows:
        metric = row.metric(name)
        x = row.efficiency("macs") / 1e9 if cost == "GMACs" else (row.metric("latency_ms") or (None,))[0]
        if metric is not None and x:
            points.append((float(x), metric[0] * (100 if name in ("top1", "mAP") else 1)))
            labels.append(f"{row.key[1]} ({row.key[0]})")
    if not points:
        return None
    matplotlib.rcParams["svg.hashsalt"] = "bench"  # stable element ids: byte-identical output
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.scatter(*zip(*points), color="#4477aa")
    for (x, y), label in zip(points, labels):
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted(points[i] for i in _pareto(points, higher))
    ax.plot(*zip(*front), color="#cc3311", linestyle="--", label="Pareto front")
    ax.set_xlabel("GMACs" if cost == "GMACs" else "latency (ms)")
    ax.set_ylabel(f"{name} (%)" if name in ("top1", "mAP") else name)
    ax.set_title(f"{section[0]} on {section[1]}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    svg = out.getvalue()
    return re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.S)


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
             "<p>Metrics: mean &plusmn; std over seeds. Click a column header to sort. Latencies are comparable "
             "only within a hardware section.</p>"]
    for section, rows in tables.items():
        header, cells = table_rows(section, rows, link_root)
        parts.append(f"<h2>{html.escape(section[0])} on {html.escape(section[1])}</h2>"
                     f"<p>Hardware: {html.escape(section[2])}</p><table class='sortable'><thead><tr>")
        parts += [f"<th>{html.escape(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for *values, paths, command in cells:
            links = " ".join(f"<a href='{html.escape(p)}'>{i + 1}</a>" for i, p in enumerate(paths))
            parts.append("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in values)
                         + f"<td>{links}</td><td><code>{html.escape(command)}</code></td></tr>")
        parts.append("</tbody></table><div class='plots'>")
        parts += [svg for svg in (plot_svg(section, rows, "GMACs"), plot_svg(section, rows, "latency")) if svg]
        parts.append("</div>")
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
    return Generated(paths, sum(len(rows) for rows in tables.values()), len(failed), invalid)

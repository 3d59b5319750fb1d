"""Render `bench profile backbone=... op=all --json FILE` records as the operator table of docs/performance.md.

Usage: python benchmarks/profile_table.py FILE [--ratios RATIOS] [--doc docs/performance.md]
Prints the table; with --doc, replaces the block between the `<!-- profile-table -->` markers of that file.
The committed table comes from benchmarks/results/resnet50_ops.json (FILE) and
benchmarks/results/resnet50_ratios.json (RATIOS).
The eager ratio to `conv` (batch 1 and 8) is the records' own ``vs_baseline`` when they were
profiled with ``task.baseline=conv`` (interleaved, median over fresh processes); otherwise RATIOS,
the JSON of benchmarks/interleaved_latency.py (interleaved, one process); otherwise the ratio of the
sequential runs, which a shared machine's drift distorts. RATIOS also supplies the compiled column.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

START, END = "<!-- profile-table -->", "<!-- /profile-table -->"


def _eager_ratio(op: str, eff: dict, base: dict | None, ratios: dict | None) -> str:
    """Latency over conv's at batch 1 / the throughput batch, from the best source the inputs hold."""
    if own := eff.get("vs_baseline"):
        return " / ".join(f"{own[f'batch_{b}']:.2f}x" for b in (1, eff["throughput_batch"]))
    if ratios and op in ratios["batches"]["1"]:
        return " / ".join(f"{ratios['batches'][b][op]['vs_conv']:.2f}x" for b in ("1", "8"))
    if base:
        return f"{eff['latency_ms']['median'] / base['efficiency']['latency_ms']['median']:.2f}x (sequential)"
    return "-"


def _ratio_note(base: dict | None, ratios: dict | None, compiled: bool) -> str:
    """Where the table's ratio columns come from."""
    script = f"`python benchmarks/interleaved_latency.py{' --compile' if compiled else ''}`"
    own = base and base["efficiency"].get("vs_baseline")
    if not own:
        return f" Ratios to conv: {script} ({ratios['rounds']} interleaved rounds)." if ratios else ""
    note = (f" Eager ratios to conv: `task.baseline=conv` (median of {own.get('processes', 1)} fresh processes, "
            f"{own['rounds']} interleaved rounds each).")
    return note + (f" Compiled: {script} ({ratios['rounds']} interleaved rounds)." if compiled else "")


def render(records: list[dict], ratios: dict | None = None) -> str:
    """One row per operator; latency ratios to `conv` as the module docstring says."""
    by_op = {r["config"]["op"]: r for r in records if r["status"] == "success"}
    base = by_op.get("conv")
    first = next(iter(by_op.values()))
    cfg, hw = first["config"], first["provenance"]["hardware"]
    compiled = bool(ratios and ratios.get("compiled"))
    note = _ratio_note(base, ratios, compiled)
    lines = [
        f"`{first['provenance']['command'].split(' op=')[0]} op=all` on {hw['label']}, "
        f"{cfg['backbone']} at {first['efficiency']['input_shape'][-1]}x{first['efficiency']['input_shape'][-1]}, "
        f"channels-last={first['efficiency']['channels_last']}, torch {first['provenance']['versions'].get('torch')}.{note}",
        "",
        "| op | params (M) | GMACs | latency b1 (ms, median +/- IQR) | vs conv b1 / b8 (interleaved) | "
        + ("compiled: b1 latency; vs conv b1 / b8 | " if compiled else "")
        + f"throughput b{first['efficiency']['throughput_batch']} (img/s) | train step (ms) | activations (MB) | "
        "stride fallback |",
        "| --- | ---: | ---: | ---: | ---: | " + ("---: | " if compiled else "") + "---: | ---: | ---: | --- |",
    ]
    for op, r in by_op.items():
        c = r["efficiency"]
        ratio = _eager_ratio(op, c, base, ratios)
        fast = "-"
        if compiled and op in ratios["batches"]["1"]:
            fast = f"{ratios['batches']['1'][op]['compiled_ms']:.1f} ms; " + " / ".join(
                f"{ratios['batches'][b][op]['compiled_vs_conv']:.2f}x" for b in ("1", "8"))
        fallback = "avg-pool" if r.get("op_metadata", {}).get("stride_fallback") else "-"
        lines.append(f"| {op} | {c['params'] / 1e6:.2f} | {c['macs'] / 1e9:.2f} | "
                     f"{c['latency_ms']['median']:.1f} +/- {c['latency_ms']['iqr']:.1f} | {ratio} | "
                     + (f"{fast} | " if compiled else "") + f"{c['throughput_per_s']:.1f} | "
                     + (f"{c['train_step_ms']:.0f}" if c.get("train_step_ms") is not None else "-")
                     + f" | {c['saved_activation_mb']:.0f} | {fallback} |")
    return "\n".join(lines)


def replace_table(doc: Path, table: str) -> None:
    """Write ``table`` between the profile-table markers of ``doc``, leaving the rest of the file as it is."""
    text = doc.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{doc} has no {START} ... {END} block to replace")
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    doc.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", help="JSON list written by bench profile --json "
                        "(committed: benchmarks/results/resnet50_ops.json)")
    parser.add_argument("--ratios", help="JSON from benchmarks/interleaved_latency.py "
                        "(committed: benchmarks/results/resnet50_ratios.json)")
    parser.add_argument("--doc", metavar="FILE", help="Markdown file whose profile-table block to replace in place "
                        "(the committed one: docs/performance.md)")
    args = parser.parse_args()
    ratios = json.loads(Path(args.ratios).read_text()) if args.ratios else None
    table = render(json.loads(Path(args.records).read_text()), ratios)
    print(table)
    if args.doc:
        replace_table(Path(args.doc), table)


if __name__ == "__main__":
    main()

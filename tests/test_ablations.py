"""The papers' ablations on the leaderboard: the verdict rule on hand-made scores and the rendered tables."""

from __future__ import annotations

from pathlib import Path

from bench.ablations import ABLATIONS, verdict
from bench.leaderboard import generate
from bench.results import new_record, write_record


def test_verdict_separates_gaps_from_noise() -> None:
    assert verdict([80.0, 82.0, 81.0], [90.0, 91.0, 89.0]).startswith("yes (+9.00, 2 SE ")
    assert verdict([90.0, 91.0, 89.0], [80.0, 82.0, 81.0]).startswith("no (-9.00, ")
    assert verdict([80.0, 86.0], [82.0, 85.0]).startswith("within noise (+0.50, 2 SE ")
    assert verdict([80.0], [85.0]) == "unsettled: one seed (+5.00)"
    assert verdict([], [85.0, 86.0]) == "not run"
    assert verdict([0.3, 0.31], [0.2, 0.21], higher_is_better=False).startswith("yes (+0.10")  # an error metric


def test_every_claim_names_variants_of_its_ablation() -> None:
    for ablation in ABLATIONS:
        labels = {v.label for v in ablation.variants}
        assert all({c.lower, c.higher} <= labels for c in ablation.claims), ablation.title
        assert len({v.op for v in ablation.variants}) == len(ablation.variants)


def _record(folder: Path, op: str, op_kwargs: dict, seed: int, top1: float, recipe: str = "standard") -> None:
    config = {"op": op, "op_kwargs": op_kwargs, "seed": seed, "backbone": "op_resnet29", "data": {"name": "shapes"},
              "recipe": {"name": recipe}}
    r = new_record("classification", config, f"bench run task=classification op={op} seed={seed}", f"{seed}" * 64)
    r.update(status="success", metrics={"top1": top1},
             curves={"val_top1": [[1, top1 - 0.001], [2, top1]]},
             efficiency={"params": 1000, "macs": 10_000, "latency_ms": {"median": 1.0, "iqr": 0.1, "batch": 1}})
    r["provenance"]["hardware"] = {"label": "CPU A"}
    write_record(r, folder)


def test_the_leaderboard_tabulates_an_ablation_and_checks_its_orderings(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    for seed, (conv, ddf, spatial) in enumerate([(0.90, 0.40, 0.20), (0.92, 0.38, 0.22), (0.91, 0.42, 0.21)]):
        _record(folder, "conv", {}, seed, conv)
        _record(folder, "ddf", {}, seed, ddf)
        _record(folder, "ddf", {"branches": "spatial"}, seed, spatial)
        _record(folder, "ddf", {"branches": "spatial"}, seed, 0.99, recipe="quick")  # another protocol: not mixed in
    generate([folder], tmp_path)
    md = (tmp_path / "README.md").read_text()
    table = md.split("### DDF: dynamic branches and filter normalisation: classification on shapes, op_resnet29, "
                     "standard")[1].split("###")[0]
    assert "| spatial only | ddf(branches=spatial) | 21.00 +/- 1.00 (n=3) | -70.00 | yes | 0,1,2 |" in table
    assert "| channel only | ddf(branches=channel) | not run |" in table
    assert "- spatial only < baseline (conv): yes (+70.00, 2 SE " in table
    assert "- channel only < DDF (both, FN): not run" in table
    assert "- spatial only < DDF (both, FN): yes (+19.00" in table
    assert "OctConv" not in md and "SCConv" not in md  # fewer than two of their variants ran
    page = (tmp_path / "index.html").read_text()
    assert "<h2>Papers' ablations</h2>" in page and "<li>spatial only &lt; baseline (conv): yes (+70.00" in page

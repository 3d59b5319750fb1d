"""`bench leaderboard`: aggregation over seeds, hardware groups, failed runs, invalid files, determinism."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from bench.cli import main
from bench.leaderboard import collect, generate
from bench.results import new_record, read_record, write_record


def record(results: Path, op: str, seed: int, top1: float, *, hardware: str = "CPU A", status: str = "success",
           macs: int = 40_000_000, latency: float = 3.0, compiled: bool = False) -> Path:
    config = {"op": op, "seed": seed, "backbone": "resnet20", "data": {"name": "shapes"}, "recipe": {"name": "quick"}}
    r = new_record("classification", config, f"bench run task=classification op={op} seed={seed}", "h" * 64)
    r.update(status=status, metrics={"top1": top1, "top5": 0.99} if status == "success" else {},
             efficiency={"params": 272_474, "macs": macs, "latency_ms": {"median": latency, "iqr": 0.1, "batch": 1},
                         "throughput_per_s": 1000.0, "compiled": compiled})
    r["provenance"]["hardware"] = {"label": hardware}
    if status != "success":
        r["error"] = "FloatingPointError: training loss is nan"
    return write_record(r, results)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    folder = tmp_path / "leaderboards" / "results"
    for seed, top1 in enumerate((0.80, 0.82, 0.84)):
        record(folder, "conv", seed, top1)
    for seed, top1 in enumerate((0.86, 0.88)):
        record(folder, "ddf", seed, top1, macs=22_000_000, latency=2.5)
    record(folder, "scconv", 0, 0.5, status="diverged")
    record(folder, "conv", 0, 0.70, hardware="GPU B")
    return folder


def test_rows_aggregate_seeds_sort_and_show_baseline_deltas(results: Path) -> None:
    made = generate([results], results.parent)
    md = (results.parent / "README.md").read_text()
    cpu = md.split("Hardware: CPU A")[1].split("## ")[0]
    ddf_line, conv_line = [line for line in cpu.splitlines() if line.startswith("| resnet20")]
    assert "| ddf |" in ddf_line and "| conv |" in conv_line  # sorted by top-1, best first
    assert "87.00 +/- 1.41 (n=2)" in ddf_line and "82.00 +/- 2.00 (n=3)" in conv_line
    assert "| +5.00 |" in ddf_line  # ddf minus the conv baseline of the same backbone and recipe
    assert "`bench run -m task=classification op=ddf seed=0,1`" in ddf_line
    assert made.rows == 3 and made.failed == 1


def detection_record(results: Path, detector: str, op: str, upsampler: str, m_ap: float) -> Path:
    config = {"op": op, "seed": 0, "backbone": "resnet18", "upsampler": upsampler, "data": {"name": "shapes"},
              "recipe": {"name": "quick"}}
    r = new_record("detection", config, f"bench run task=detection op={op} upsampler={upsampler}", "d" * 64)
    r.update(status="success", detector=detector, upsampler=upsampler,
             metrics={"mAP": m_ap, "mAP50": 2 * m_ap, "mAP_large": -1.0}, efficiency={"params": 1000, "macs": 10**9})
    r["provenance"]["hardware"] = {"label": "CPU A"}
    return write_record(r, results)


def test_detection_rows_split_by_detector_and_upsampler(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    detection_record(folder, "retinanet", "conv", "nearest", 0.30)
    detection_record(folder, "retinanet", "ddf", "ddf_up", 0.35)
    detection_record(folder, "faster_rcnn", "conv", "nearest", 0.40)
    generate([folder], tmp_path)
    lines = [line for line in (tmp_path / "README.md").read_text().splitlines() if " resnet18 |" in line]
    cells = [[c.strip() for c in line.split("|")[1:4]] for line in lines]
    assert cells == [["faster_rcnn resnet18", "conv", "nearest"], ["retinanet resnet18", "ddf", "ddf_up"],
                     ["retinanet resnet18", "conv", "nearest"]]  # sorted by mAP; detectors never averaged together
    assert "| +5.00 |" in lines[1]  # mAP delta to conv of the same detector, backbone and recipe
    assert "| 35.00 | 70.00 | - |" in lines[1]  # APs in %; COCO's -1 (no large objects) is shown as missing


def test_segmentation_deltas_compare_with_each_models_stock_upsampler(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    for model, backbone, op, upsampler, miou in (("bisenetv1", "resnet18", "conv", "nearest", 0.50),
                                                 ("bisenetv1", "resnet18", "conv", "carafe", 0.53),
                                                 ("dfanet", "xception_a", "conv", "bilinear", 0.40),
                                                 ("dfanet", "xception_a", "dwconv", "bilinear", 0.38),
                                                 ("dfanet", "xception_a", "conv", "nearest", 0.45)):
        config = {"op": op, "seed": 0, "backbone": backbone, "upsampler": upsampler, "data": {"name": "shapes"},
                  "recipe": {"name": "quick"}}
        r = new_record("segmentation", config, f"bench run task=segmentation model={model} op={op}", "s" * 64)
        r.update(status="success", model=model, backbone=backbone, upsampler=upsampler,
                 metrics={"mIoU": miou, "pixel_acc": 0.9}, efficiency={"params": 1000, "macs": 10**9})
        r["provenance"]["hardware"] = {"label": "CPU A"}
        write_record(r, folder)
    generate([folder], tmp_path)
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line
            for line in (tmp_path / "README.md").read_text().splitlines() if line.startswith("| bisenetv1")
            or line.startswith("| dfanet")}
    assert "| +3.00 |" in rows[("bisenetv1 resnet18", "conv", "carafe")]  # against BiSeNet's stock nearest
    assert "| +5.00 |" in rows[("dfanet xception_a", "conv", "nearest")]  # against DFANet's stock bilinear
    assert "| -2.00 |" in rows[("dfanet xception_a", "dwconv", "bilinear")]


def test_hardware_is_never_mixed_and_failed_runs_are_listed_apart(results: Path) -> None:
    generate([results], results.parent)
    md = (results.parent / "README.md").read_text()
    assert md.count("## classification on shapes") == 2
    gpu = md.split("Hardware: GPU B")[1].split("## ")[0]
    assert "70.00" in gpu and "82.00" not in gpu
    failed = md.split("## Failed, diverged or interrupted runs")[1]
    assert "diverged" in failed and "training loss is nan" in failed
    assert "| scconv |" not in md.split("## Failed")[0]
    csv = (results.parent / "results.csv").read_text()
    assert csv.count(",ddf,") == 4 and "scconv" not in csv  # 2 seeds x (top1, top5)


def test_cpu_hosts_pool_their_seeds_and_keep_their_own_timings(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    for seed, (top1, machine, latency) in enumerate([(0.80, "Intel X (2 threads)", 3.0),
                                                      (0.84, "AMD Y (2 threads)", 5.0),
                                                      (0.82, "AMD Y (2 threads)", 7.0)]):
        edit(record(folder, "conv", seed, top1, latency=latency),
             lambda r, machine=machine: r["provenance"].update(hardware={"device": "cpu", "label": machine}))
    record(folder, "conv", 0, 0.70, hardware="GPU B")  # no CPU device: its own platform
    generate([folder], tmp_path)
    md = (tmp_path / "README.md").read_text()
    assert md.count("## classification on shapes") == 2
    cpu = md.split("Hardware: CPU; ran on AMD Y (2 threads) (2 runs), Intel X (2 threads) (1 run)")[1].split("## ")[0]
    header = next(line for line in cpu.splitlines() if line.startswith("| backbone"))
    cells = dict(zip(header.split(" | "), next(line for line in cpu.splitlines() if "| conv |" in line).split(" | ")))
    assert cells["top1 (%)"] == "82.00 +/- 2.00 (n=3)"  # the seeds of both hosts
    assert cells["latency (ms), AMD Y (2 threads)"] == "6.00 +/- 1.41 (n=2)"  # each host's timings alone
    assert cells["latency (ms), Intel X (2 threads)"] == "3.00"
    assert "70.00" not in cpu
    page = (tmp_path / "index.html").read_text()
    assert "latency (ms) on AMD Y (2 threads)" in page and "latency (ms) on Intel X (2 threads)" in page


def test_compiled_timings_get_their_own_section(results: Path) -> None:
    record(results, "ddf", 0, 0.86, latency=1.0, compiled=True)
    generate([results], results.parent)
    md = (results.parent / "README.md").read_text()
    compiled = md.split("Hardware: CPU A, torch.compile")[1].split("## ")[0]
    assert "| ddf |" in compiled and "| conv |" not in compiled
    assert md.count("## classification on shapes") == 3


def test_invalid_files_are_reported_and_skipped(results: Path, capsys: pytest.CaptureFixture) -> None:
    (results / "classification" / "corrupt.json").write_text("{oops")
    (results / "classification" / "wrong.json").write_text('{"schema_version": 1, "task": "x"}')
    assert main(["leaderboard", "--out", str(results.parent)]) == 0
    out = capsys.readouterr()
    assert "corrupt.json" in out.err and "wrong.json" in out.err and "2 skipped files" in out.out
    md = (results.parent / "README.md").read_text()
    assert "## Skipped files" in md and "corrupt.json" in md and "run_id" in md


def test_output_is_byte_identical_for_the_same_inputs(results: Path, tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in generate([results], results.parent).paths}
    second = {p.name: p.read_bytes() for p in generate([results], results.parent).paths}
    assert first == second
    html = first["index.html"].decode()
    assert html.count("<svg") == 4 and "Pareto front" in html and "<table class='sortable'>" in html
    assert not re.search(r'(src|href)="https?://', html) and "<link" not in html  # self-contained


def test_missing_results_folder_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["leaderboard", "--results", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "is not a folder" in capsys.readouterr().err


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_page_renders_in_headless_chromium(results: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for this test; `make test` installs it (apt-get install chromium)"
    page = generate([results], results.parent).paths[2]
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=180).stdout
    assert dom.count("<table class=\"sortable\">") == 2 and dom.count("<svg") == 4
    assert "Pareto front" in dom and "resnet20" in dom
    artifacts = Path(os.environ.get("BENCH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "leaderboard.png"
    shot.unlink(missing_ok=True)
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri()],
                   capture_output=True, timeout=180)
    image = Image.open(shot).convert("L")
    low, high = image.getextrema()
    assert image.size == (1280, 1600) and high - low > 100  # something was drawn, not a blank page


def test_committed_records_are_valid() -> None:
    """Everything shipped under leaderboards/results must be a valid record (the leaderboard is built from it)."""
    committed = Path(__file__).resolve().parents[1] / "leaderboards" / "results"
    _, invalid = collect([committed])
    assert invalid == []


def test_different_protocols_or_operator_arguments_are_never_averaged(tmp_path: Path) -> None:
    folder = tmp_path / "leaderboards" / "results"
    for seed in (0, 1):
        record(folder, "conv", seed, 0.8)
    edited = record(folder, "conv", 2, 0.4)  # same recipe name, edited recipe: a different protocol
    r = read_record(edited)
    r["config"]["recipe"]["epochs"] = 1
    edited.write_text(json.dumps(r))
    later = record(folder, "conv", 3, 0.8)  # a recipe field added later with a null default: the same protocol
    r = read_record(later)
    r["config"]["recipe"]["default_backbone"] = None
    later.write_text(json.dumps(r))
    alpha = record(folder, "octconv", 0, 0.6)
    r = read_record(alpha)
    r["op_kwargs"] = {"alpha": 0.25}
    alpha.write_text(json.dumps(r))
    generate([folder], folder.parent)
    rows = [line for line in (folder.parent / "README.md").read_text().splitlines() if line.startswith("| resnet20")]
    quick_rows = [line for line in rows if "| conv |" in line]
    assert len(quick_rows) == 2 and len({line.split(" | ")[3] for line in quick_rows}) == 2
    assert any("80.00 +/- 0.00 (n=3)" in line for line in quick_rows)
    assert any("| octconv(alpha=0.25) |" in line for line in rows)


def profile_record(results: Path, op: str, seed: int, vs_baseline: dict | None) -> Path:
    config = {"op": op, "seed": seed, "backbone": "resnet50", "data": None, "recipe": None}
    r = new_record("profile", config, f"bench profile backbone=resnet50 op={op} task.baseline=conv", "p" * 64)
    r.update(status="success", efficiency={"params": 10**6, "macs": 10**9, "compiled": False,
                                           "latency_ms": {"median": 50.0, "iqr": 1.0, "batch": 1},
                                           **({"vs_baseline": vs_baseline} if vs_baseline else {})})
    r["provenance"]["hardware"] = {"label": "CPU A"}
    return write_record(r, results)


def test_profile_rows_show_the_interleaved_ratio_to_the_baseline(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    profile_record(folder, "octconv", 0, {"op": "conv", "rounds": 7, "batch_1": 0.78, "batch_8": 0.64})
    profile_record(folder, "octconv", 1, {"op": "conv", "rounds": 7, "batch_1": 0.82, "batch_8": 0.66})
    profile_record(folder, "dwconv", 0, None)
    generate([folder], tmp_path)
    lines = (tmp_path / "README.md").read_text().splitlines()
    assert "latency vs baseline (interleaved)" in next(line for line in lines if line.startswith("| backbone"))
    oct_line = next(line for line in lines if "| octconv |" in line)
    dw_line = next(line for line in lines if "| dwconv |" in line)
    assert "| 0.80x / 0.65x conv (batch 1 / 8) |" in oct_line  # means over the row's two records
    assert "| 50.00 | - | - | 0 |" in dw_line  # no baseline: no ratio (nor throughput)


@pytest.mark.parametrize("ratios", [{"op": "conv", "rounds": 7, "batch_1": -0.5},
                                    {"op": "conv", "rounds": 7, "batch_1": "fast"},
                                    {"op": "conv", "rounds": 0, "batch_1": 0.8},
                                    {"op": "conv", "rounds": 7, "processes": 0, "batch_1": 0.8},
                                    {"op": "conv", "rounds": 7, "processes": 2, "batch_1": 0.8,
                                     "per_process": [{"batch_1": 0.8}, {"batch_1": 0}]}])
def test_a_record_with_a_broken_baseline_ratio_is_skipped(tmp_path: Path, ratios: dict) -> None:
    folder = tmp_path / "results"
    path = profile_record(folder, "octconv", 0, {"op": "conv", "rounds": 7, "batch_1": 0.8})
    r = read_record(path)
    r["efficiency"]["vs_baseline"] = ratios
    path.write_text(json.dumps(r))
    valid, invalid = collect([folder])
    assert valid == [] and invalid[0][0] == path and "vs_baseline" in invalid[0][1]


def test_learning_curves_are_plotted_per_section_and_old_records_without_them_still_render(tmp_path: Path) -> None:
    folder = tmp_path / "leaderboards" / "results"
    for op, losses in (("conv", (2.0, 1.0, 0.5)), ("ddf", (2.3, 2.2, 2.1))):
        for seed in (0, 1):
            path = record(folder, op, seed, 0.8 if op == "conv" else 0.3)
            r = json.loads(path.read_text())
            r["curves"] = {"train_loss": [[10 * (i + 1), loss + 0.1 * seed] for i, loss in enumerate(losses)],
                           "val_top1": [[1, 0.5], [2, 0.7 if op == "conv" else 0.2]]}
            path.write_text(json.dumps(r))
            assert read_record(path)["curves"]["train_loss"][0] == [10, losses[0] + 0.1 * seed]
    record(folder, "dwconv", 0, 0.6)  # an older record: no curves
    html = generate([folder], folder.parent).paths[2].read_text()
    assert html.count("<svg") == 3  # GMACs and latency fronts, then one learning-curve figure
    r = json.loads(next(folder.glob("classification/*conv-s0*.json")).read_text())
    r["curves"] = {"train_loss": [[1, "not a number"]]}
    (folder / "classification" / "broken.json").write_text(json.dumps(r))
    _, invalid = collect([folder])
    assert [p.name for p, _ in invalid] == ["broken.json"]


def test_mean_curve_averages_seeds_over_their_common_points() -> None:
    from bench.leaderboard import mean_curve

    assert mean_curve([[[1, 1.0], [2, 3.0]], [[1, 2.0], [2, 5.0], [3, 9.0]]]) == [(1, 1.5), (2, 4.0)]


def edit(path: Path, change) -> Path:
    """Rewrite record ``path`` with ``change`` applied to its raw JSON (Python's json writes NaN and Infinity)."""
    r = json.loads(path.read_text())
    change(r)
    path.write_text(json.dumps(r))
    return path


@pytest.mark.parametrize("change", [
    lambda r: r["metrics"].update(top1=float("nan")),
    lambda r: r["metrics"].update(top1=float("inf")),
    lambda r: r["metrics"].update(top1="0.9"),
    lambda r: r["metrics"].update(top5=float("-inf")),
    lambda r: r["efficiency"].update(params="272474"),
    lambda r: r["efficiency"].update(macs="40000000"),
    lambda r: r["efficiency"].update(throughput_per_s="1000"),
    lambda r: r["efficiency"]["latency_ms"].update(median="3.0"),
    lambda r: r["efficiency"]["latency_ms"].update(iqr=float("inf")),
    lambda r: r["provenance"].update(hardware="CPU A"),
    lambda r: r.update(curves={"train_loss": [[1, float("nan")]]}),
])
def test_a_record_with_a_non_finite_or_string_figure_is_skipped_not_a_crash(results: Path, change,
                                                                             capsys: pytest.CaptureFixture) -> None:
    bad = edit(record(results, "conv", 3, 0.9), change)
    assert main(["leaderboard", "--out", str(results.parent)]) == 0
    assert "1 skipped files" in capsys.readouterr().out
    md = (results.parent / "README.md").read_text()
    skipped = md.split("## Skipped files")[1]
    assert bad.name in skipped and "not a valid result record" in skipped
    assert "82.00 +/- 2.00 (n=3)" in md  # the valid conv records, without the broken one
    assert bad.name in (results.parent / "index.html").read_text().split("<h2>Skipped files</h2>")[1]


def test_duplicate_runs_are_listed_and_not_averaged(results: Path) -> None:
    folder = results / "classification"
    original = next(folder.glob("*-conv-s0-*.json"))
    copy = folder / ("z-copy-" + original.name)
    shutil.copy(original, copy)  # the same record twice: same run_id
    older = next(folder.glob("*-conv-s1-*.json"))
    edit(older, lambda r: r["provenance"].update(end_time="2026-01-01T00:00:00+00:00"))
    rerun = edit(record(results, "conv", 1, 0.86),  # the same configuration and seed run again, later
                 lambda r: r["provenance"].update(end_time="2026-01-02T00:00:00+00:00"))
    made = generate([results], results.parent)
    md = (results.parent / "README.md").read_text()
    conv_line = next(line for line in md.split("Hardware: CPU A")[1].splitlines() if "| conv |" in line)
    assert "83.33 +/- 3.06 (n=3)" in conv_line and "| 0,1,2 |" in conv_line  # 0.80, 0.86 (newest seed 1), 0.84
    assert "seed=0,1,2`" in conv_line and conv_line.count("](results/") == 3
    dups = md.split("## Duplicate runs (not averaged)")[1].split("## ")[0]
    rel = lambda p: p.relative_to(results.parent).as_posix()  # noqa: E731
    copy_line = next(line for line in dups.splitlines() if rel(copy) in line)
    assert f"[{rel(original)}]" in copy_line and "same run_id" in copy_line
    older_line = next(line for line in dups.splitlines() if rel(older) in line)
    assert f"[{rel(rerun)}]" in older_line and "same configuration (config_hash hhhhhhhhhhhh) and seed 1" in older_line
    assert len([line for line in dups.splitlines() if line.startswith("| classification")]) == 2
    page = (results.parent / "index.html").read_text().split("<h2>Duplicate runs (not averaged)</h2>")[1]
    assert rel(copy) in page and rel(older) in page and "same run_id" in page
    assert sorted(made.duplicates) == sorted([copy, older])
    csv = (results.parent / "results.csv").read_text()
    assert rel(copy) not in csv and rel(older) not in csv and csv.count(",conv,") == 2 * (3 + 1)  # + GPU B
    again = {p.name: p.read_bytes() for p in generate([results], results.parent).paths}
    assert again == {p.name: p.read_bytes() for p in made.paths}


def test_a_metric_a_run_could_not_report_is_not_counted_as_a_sample(results: Path) -> None:
    path = next((results / "classification").glob("*-ddf-s1-*.json"))
    edit(path, lambda r: (r["metrics"].pop("top5"), r.update(metrics_missing={"top5": "not finite: nan"})))
    generate([results], results.parent)
    ddf_line = next(line for line in (results.parent / "README.md").read_text().splitlines() if "| ddf |" in line)
    assert "| 87.00 +/- 1.41 (n=2) | 99.00 |" in ddf_line  # top-5 from the one seed that has it


def test_resumed_runs_are_marked_as_not_bit_reproducible(tmp_path: Path) -> None:
    folder = tmp_path / "leaderboards" / "results"
    for seed in (0, 1):
        path = record(folder, "conv", seed, 0.8)
        r = json.loads(path.read_text())
        r["resumed_from_step"] = 40 if seed == 1 else None
        path.write_text(json.dumps(r))
    md = (generate([folder], folder.parent).paths[0]).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| resnet20 | conv"))
    assert "| 0,1* |" in row and "A seed marked * was resumed from a checkpoint" in md
    clean = tmp_path / "clean" / "results"
    record(clean, "conv", 0, 0.8)
    assert "resumed from a checkpoint" not in generate([clean], clean.parent).paths[0].read_text()


def test_depth_sections_split_by_scale_and_compare_with_the_non_learned_row(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    for scale, model, guide, upsampler, rmse in ((4, "interpolate", "none", "bilinear", 0.80),
                                                 (4, "pac_net", "rgb", "ddf_up", 0.60),
                                                 (4, "pac_net", "none", "ddf_up", 0.75),
                                                 (4, "pac_net", "none", "deconv", 0.70),
                                                 (8, "interpolate", "none", "bilinear", 1.10),
                                                 (8, "pac_net", "rgb", "pac", 1.00)):
        config = {"op": "conv", "seed": 0, "upsampler": upsampler, "data": {"name": "shapes"},
                  "recipe": {"name": "quick"}}
        r = new_record("depth", config, f"bench run task=depth model={model} upsampler={upsampler} scale={scale}",
                       "p" * 64)
        r.update(status="success", model=model, guide=guide, scale=scale, upsampler=upsampler,
                 metrics={"rmse": rmse, "mae": rmse / 2, "delta1": 0.9}, efficiency={"params": 1000, "macs": 10**9})
        r["provenance"]["hardware"] = {"label": "CPU A"}
        write_record(r, folder)
    generate([folder], tmp_path)
    md = (tmp_path / "README.md").read_text()
    x4, x8 = md.split("depth on shapes, scale=4")[1].split("depth on shapes, scale=8")
    rows4 = [line for line in x4.splitlines() if line.startswith(("| pac_net", "| interpolate"))]
    assert [row.split("|")[1].strip() + " " + row.split("|")[3].strip() for row in rows4] == [
        "pac_net rgb - ddf_up", "pac_net none - deconv", "pac_net none - ddf_up", "interpolate none - bilinear"]
    assert "| -20.00 |" in rows4[0] and "| -10.00 |" in rows4[1] and "| -5.00 |" in rows4[2]  # cm vs bilinear
    assert "| -10.00 |" in next(line for line in x8.splitlines() if line.startswith("| pac_net rgb"))


def curve_record(folder: Path, op: str, seed: int, val: list[float]) -> None:
    path = record(folder, op, seed, val[-1])
    r = json.loads(path.read_text())
    r["curves"] = {"train_loss": [[10, 2.0], [20, 1.5]], "val_top1": [[i + 1, v] for i, v in enumerate(val)]}
    path.write_text(json.dumps(r))


def test_rows_whose_validation_curve_still_rises_are_flagged(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    curve_record(folder, "conv", 0, [0.50, 0.79, 0.800])
    curve_record(folder, "conv", 1, [0.50, 0.80, 0.802])  # the mean gains 0.75% at the end: flat
    curve_record(folder, "ddf", 0, [0.30, 0.50, 0.60])  # +20% in the last epoch
    curve_record(folder, "dwconv", 0, [0.30, 0.50, 0.45])  # fell: nothing more to gain from the schedule
    record(folder, "octconv", 0, 0.5)  # no curves
    generate([folder], tmp_path)
    md = (tmp_path / "README.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| backbone"))
    column = [c.strip() for c in header.split("|")].index("converged")
    flags = {line.split("|")[2].strip(): line.split("|")[column].strip()
             for line in md.splitlines() if line.startswith("| resnet20")}
    assert flags == {"conv": "yes", "ddf": "no (+20%)", "dwconv": "yes", "octconv": "-"}
    assert "more than 1%" in md and "converged" in (tmp_path / "index.html").read_text()


def test_saliency_pruned_rows_show_their_stages_beside_the_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    for prune, max_f in ((None, 0.80), ("pruned", 0.82)):
        config = {"op": "conv", "seed": 0, "upsampler": "bilinear", "data": {"name": "shapes"},
                  "recipe": {"name": "quick"}}
        r = new_record("saliency", config, "bench run task=saliency" + (" prune=true" if prune else ""), "s" * 64)
        r.update(status="success", model="csnet", expand="x1", dwd="dwd=3", prune=prune, upsampler="bilinear",
                 metrics={"max_f": max_f, "mae": 0.1}, efficiency={"params": 100_000, "macs": 10**8})
        if prune:
            r["stages"] = {"trained": {"params": 211_000, "metrics": {"max_f": 0.77}},
                           "pruned": {"params": 100_000, "metrics": {"max_f": 0.67}}}
        r["provenance"]["hardware"] = {"label": "CPU A"}
        write_record(r, folder)
    generate([folder], tmp_path)
    lines = (tmp_path / "README.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| backbone") and "max_f before pruning (%)" in line)
    assert "max_f pruned (%)" in header and "params before pruning (M)" in header
    pruned = next(line for line in lines if line.startswith("| csnet x1 dwd=3 pruned"))
    plain = next(line for line in lines if line.startswith("| csnet x1 dwd=3 -"))
    assert "| 77.00 | 67.00 | 0.21 |" in pruned and "| - | - | - |" in plain


def test_reproduce_commands_leave_out_where_outputs_went(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    for seed in (0, 1):
        record(folder, "ddf", seed, 0.5)
    path = record(folder, "conv", 0, 0.6)
    edit(path, lambda r: r["provenance"].update(command="bench run op=conv seed=0 results_dir=/tmp/x runs_dir=/tmp/y"))
    edit(record(folder, "ddf", 2, 0.5), lambda r: r["provenance"].update(command="bench run op=ddf seed=2 rerun=true"))
    generate([folder], tmp_path)
    md = (tmp_path / "README.md").read_text()
    assert "`bench run op=conv seed=0`" in md and "/tmp/x" not in md and "/tmp/y" not in md and "rerun" not in md
    assert "`bench run -m task=classification op=ddf seed=0,1,2`" in md

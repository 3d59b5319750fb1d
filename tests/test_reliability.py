"""Mistakes are caught before any work, and nothing a run writes is lost, leaked or private by accident."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.results import new_record, write_record

from test_classification import TINY


pytestmark = pytest.mark.usefixtures("bench_cache")  # generated data goes to a fresh cache


@pytest.mark.parametrize("override, message", [
    ("op_kwargs.bogus=1", "operator 'ddf' takes no argument 'bogus'; its arguments are: "),
    ("op_kwargs.stride=2", "stride is set by the network or task"),
    ("op_kwargs.spatial_mean=maybe", "argument 'spatial_mean' takes a bool, not 'maybe'"),
    ("recipe.max_device_batch=0", "recipe.max_device_batch=0 is out of range: it must be at least 1."),
    ("recipe.global_batch=0", "recipe.global_batch=0 is out of range"),
    ("recipe.eval_batch=0", "recipe.eval_batch=0 is out of range"),
    ("recipe.epochs=-1", "recipe.epochs=-1 is out of range"),
    ("recipe.epochs=0", "recipe.epochs=0 is out of range"),
    ("data.image_size=0", "data.image_size=0 is out of range"),
    ("seed=-1", "seed=-1 is out of range: it must be between 0 and 4294967295."),
    (f"seed={2**70}", "is out of range: it must be between 0 and 4294967295."),
    ("recipe.warmup_iters=10", "both set the warm-up"),
    ("recipe.global_batch=7 recipe.max_device_batch=4", "the only even split is 7 accumulated micro-batches of 1"),
    ("data.train_size=16", "the training split has 16 samples, fewer than one global batch of 32"),
])
def test_config_mistakes_exit_2_before_any_record(override: str, message: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    args = [*TINY, "op=ddf", *override.split(), f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not list(tmp_path.glob("r/**/*.json"))


def test_an_unwritable_results_folder_is_refused_before_training(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the results folder should be")
    assert main(["run", *TINY, f"results_dir={blocked}/r", f"runs_dir={tmp_path}/runs"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"results_dir={blocked}/r cannot hold result records" in err and "recorded" not in err
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_a_failed_run_says_where_its_record_is(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", *TINY, "recipe.lr=1e30", "recipe.epochs=2", f"results_dir={tmp_path}/r",
                 f"runs_dir={tmp_path}/runs"]) == 1
    (path,) = tmp_path.glob("r/classification/*.json")
    assert f"recorded as status=diverged: {path}" in " ".join(capsys.readouterr().err.split())


def test_values_read_from_the_environment_stay_out_of_records_and_errors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("BENCH_TEST_TOKEN", str(tmp_path / "s3cr3t-t0ken"))  # runs_dir: the run's folder goes there
    args = ["task=profile", "op=conv", "task.batch=1", "task.channels=4", "task.size=8", "task.warmup=0",
            "task.iters=2", "task.train=false", f"results_dir={tmp_path}/r"]
    assert main(["run", *args, "runs_dir=${oc.env:BENCH_TEST_TOKEN}"]) == 0
    (path,) = tmp_path.glob("r/profile/*.json")
    text = path.read_text()
    assert "s3cr3t-t0ken" not in text and "${oc.env:BENCH_TEST_TOKEN}" in json.loads(text)["config"]["runs_dir"]
    code = ("import sys; from bench.cli import main; sys.exit(main(['run', 'task=classification', "
            "'data=imagefolder', 'data.path=${oc.env:BENCH_TEST_TOKEN}', 'results_dir=" + f"{tmp_path}/r2" + "']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "BENCH_TEST_TOKEN": "s3cr3t-t0ken"})
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert "s3cr3t-t0ken" not in out.stderr + out.stdout and "${oc.env:BENCH_TEST_TOKEN}" in out.stderr


def test_records_and_caches_follow_the_umask(tmp_path: Path, bench_cache: Path) -> None:
    old = os.umask(0o002)  # a group-shared folder
    try:
        path = write_record(new_record("profile", {"op": "conv", "seed": 0}, "bench profile"), tmp_path)
        from tasks.classification.data import shapes

        shapes(seed=0, size=8, train=2, validation=1, test=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o664
    (cache,) = bench_cache.iterdir()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o775


def test_the_demo_writes_its_own_board_not_the_committed_one() -> None:
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo = makefile.split("\ndemo:")[1].split("\n\n")[0]
    assert "results_dir=$(DEMO)/results" in demo and "leaderboard --out $(DEMO)" in demo
    assert "DEMO := outputs/demo" in makefile and "leaderboards" not in demo.replace("leaderboard --out", "")


NOISE = ("was called without a model", "no last checkpoint available", "LeafSpec", "TracerWarning",
         "GPU available:", "litlogger", "to estimate number of stepping batches", "stopped: `max_epochs",
         "exists and is not empty")


def test_a_clean_run_and_check_print_no_noise(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_CACHE": str(tmp_path / "cache")}
    bench = str(Path(sys.executable).parent / "bench")
    runs = [[bench, "run", *TINY, f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"],
            [bench, "run", *TINY, f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"],  # a second run, same dir
            [bench, "check", "op=octconv", "size=9"]]
    for command in runs:
        out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        printed = out.stdout + out.stderr
        assert [n for n in NOISE if n in printed] == [], printed[-3000:]


def test_records_state_what_bit_identical_results_depend_on(tmp_path: Path) -> None:
    assert main(["run", "task=profile", "op=conv", "task.batch=1", "task.channels=4", "task.size=8",
                 "task.iters=2", "task.warmup=0", "task.train=false", f"results_dir={tmp_path}"]) == 0
    (path,) = tmp_path.glob("profile/*.json")
    hardware = json.loads(path.read_text())["provenance"]["hardware"]
    assert hardware["torch_threads"] >= 1 and hardware["cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "SVE256",
                                                                               "ZVECTOR", "VSX", "NO AVX")

"""Result records are complete and written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import results
from bench.results import new_record, write_record


def test_record_has_provenance_and_round_trips(tmp_path: Path) -> None:
    record = new_record("profile", {"op": "conv", "seed": 3}, "bench profile seed=3")
    record["status"] = "success"
    path = write_record(record, tmp_path)
    assert path.parent == tmp_path / "profile" and "-conv-s3-" in path.name
    loaded = json.loads(path.read_text())
    assert loaded == record
    assert loaded["schema_version"] == results.SCHEMA_VERSION
    assert {"command", "git_commit", "git_dirty", "python", "versions", "config_hash", "start_time"} <= set(
        loaded["provenance"])
    assert loaded["op"] == "conv" and loaded["seed"] == 3


def test_interrupted_write_leaves_no_file_and_keeps_existing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write_record(new_record("profile", {"op": "conv", "seed": 0}, "bench profile"), tmp_path)
    before = first.read_text()

    def interrupted(*args, **kwargs) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(results.json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_record(new_record("profile", {"op": "conv", "seed": 1}, "bench profile"), tmp_path)
    assert sorted(p.name for p in (tmp_path / "profile").iterdir()) == [first.name]
    assert first.read_text() == before


def _valid(tmp_path: Path) -> Path:
    record = new_record("profile", {"op": "conv", "seed": 0}, "bench profile")
    record["status"] = "success"
    return write_record(record, tmp_path)


def test_records_are_validated_on_write_and_read(tmp_path: Path) -> None:
    path = _valid(tmp_path)
    assert results.read_record(path)["status"] == "success"
    bad = new_record("profile", {"op": "conv", "seed": 0}, "bench profile")
    bad["status"] = "great"
    with pytest.raises(results.RecordError, match="status"):
        write_record(bad, tmp_path)
    assert len(list((tmp_path / "profile").iterdir())) == 1  # nothing written


@pytest.mark.parametrize("content, reason", [("{not json", "cannot read a JSON record"), ("[1, 2]", "JSON object"),
                                             ('{"schema_version": 1}', "run_id")])
def test_corrupt_or_invalid_files_are_named_with_the_reason(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(results.RecordError, match="broken.json") as err:
        results.read_record(path)
    assert reason in str(err.value)


def test_non_finite_metrics_are_omitted_with_the_reason_never_written_as_nan(tmp_path: Path) -> None:
    record = new_record("profile", {"op": "conv", "seed": 0}, "bench profile")
    record.update(status="success", metrics={"top1": 0.5, "val_top1": float("nan"), "loss": float("-inf")})
    path = write_record(record, tmp_path)

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} written to {path.name}")

    loaded = json.loads(path.read_text(), parse_constant=refuse)  # strict JSON: no NaN, no Infinity
    assert loaded["metrics"] == {"top1": 0.5}
    assert loaded["metrics_missing"] == {"val_top1": "not finite: nan", "loss": "not finite: -inf"}
    assert loaded == record  # the caller's record says what was written
    assert results.read_record(path)["metrics_missing"]["val_top1"] == "not finite: nan"


def test_a_non_finite_number_outside_the_metrics_fails_loudly_and_writes_nothing(tmp_path: Path) -> None:
    record = new_record("profile", {"op": "conv", "seed": 0}, "bench profile")
    record.update(status="success", wall_time_s=float("nan"))
    with pytest.raises(results.RecordError, match="wall_time_s"):
        write_record(record, tmp_path)
    assert not (tmp_path / "profile").exists() or list((tmp_path / "profile").iterdir()) == []


@pytest.mark.parametrize("where, value, reason", [
    ("metrics.top1", float("nan"), "finite number"),
    ("metrics.top1", float("inf"), "finite number"),
    ("metrics.top1", "0.5", "valid number"),
    ("metrics.top1", True, "valid number"),
    ("efficiency.latency_ms.median", float("nan"), "finite number"),
    ("efficiency.latency_ms.iqr", "0.1", "valid number"),
    ("efficiency.params", "272474", "valid integer"),
    ("efficiency.macs", float("inf"), "valid integer"),
    ("efficiency.throughput_per_s", "1000", "valid number"),
    ("efficiency.throughput_per_s", float("nan"), "finite number"),
    ("metrics_missing.val_top1", 5, "valid string"),
    ("metrics_missing.top1", "not finite: nan", "both reported and listed"),
])
def test_the_schema_refuses_non_finite_numbers_and_numeric_strings(tmp_path: Path, where: str, value: object,
                                                                   reason: str) -> None:
    record = new_record("profile", {"op": "conv", "seed": 0}, "bench profile")
    record.update(status="success", metrics={"top1": 0.5},
                  efficiency={"params": 10, "macs": 20, "throughput_per_s": 1.0,
                              "latency_ms": {"median": 3.0, "iqr": 0.1, "batch": 1}})
    path = write_record(record, tmp_path)
    raw = json.loads(path.read_text())
    *parents, name = where.split(".")
    target = raw
    for key in parents:
        target = target.setdefault(key, {})
    target[name] = value
    path.write_text(json.dumps(raw))  # Python's json writes NaN and Infinity, as a hand-edited file may hold
    with pytest.raises(results.RecordError, match=str(path.name)) as err:
        results.read_record(path)
    assert where.split(".")[0] in str(err.value) and reason in str(err.value)


def test_read_record_returns_the_validated_normalised_record(tmp_path: Path) -> None:
    record = new_record("classification", {"op": "conv", "seed": 0}, "bench run")
    record.update(status="success", metrics={"top1": 1}, curves={"train_loss": [[10, 2]]}, steps=10,
                  efficiency={"params": 5, "latency_ms": {"median": 3, "iqr": 0, "batch": 1}, "extra": [1, 2]})
    path = write_record(record, tmp_path)
    raw = json.loads(path.read_text())
    raw["seed"] = "0"  # lax fields are coerced: what the reader gets is what was validated
    path.write_text(json.dumps(raw))
    loaded = results.read_record(path)
    assert loaded == results.ResultRecord.model_validate(raw).model_dump(mode="json", exclude_unset=True)
    assert loaded["seed"] == 0 and isinstance(loaded["metrics"]["top1"], float)
    assert isinstance(loaded["efficiency"]["latency_ms"]["median"], float)
    assert loaded["curves"] == {"train_loss": [[10.0, 2.0]]}
    assert loaded["steps"] == 10 and loaded["efficiency"]["extra"] == [1, 2]  # extra fields kept
    assert "curves" not in results.read_record(_valid(tmp_path))  # nothing the file lacks is added

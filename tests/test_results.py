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

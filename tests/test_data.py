"""Data: the scene generator's views, the cached shapes dataset, and real on-disk formats through the user path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import compose
from bench.errors import DataError
from tasks.classification.data import ClassificationData, load_classification, shapes, with_transform
from tasks.shapes import CLASSES, render_scene


pytestmark = pytest.mark.usefixtures("bench_cache")  # generated data goes to a fresh cache


def data_cfg(name: str, **overrides: object):
    cfg = compose("run", ["task=classification", f"data={name}", *(f"data.{k}={v}" for k, v in overrides.items())])
    return cfg.data


def test_scenes_are_deterministic_and_views_agree() -> None:
    a, b = render_scene(3, 17), render_scene(3, 17)
    assert np.array_equal(a.image, b.image) and a.label == b.label
    assert not np.array_equal(render_scene(4, 17).image, a.image)
    for index in range(20):
        scene = render_scene(0, index, size=48)
        main = scene.objects[0]
        x0, y0, x1, y1 = main.box
        ys, xs = np.nonzero(main.mask)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
        visible = main.mask & (scene.depth == main.depth)
        assert visible.sum() > 0.5 * main.mask.sum()  # the main object is nearest, mostly unoccluded
    labels = [render_scene(0, i).label for i in range(2000)]
    assert set(labels) == set(range(len(CLASSES)))
    assert max(np.bincount(labels)) < 2.5 * min(np.bincount(labels))


def test_shapes_dataset_is_generated_once_and_cached(bench_cache: Path) -> None:
    ds = shapes(seed=1, size=16, train=20, validation=8, test=8)
    assert {k: len(v) for k, v in ds.items()} == {"train": 20, "validation": 8, "test": 8}
    assert ds["train"].features["label"].names == list(CLASSES)
    (folder,) = bench_cache.iterdir()
    stamp = folder.stat().st_mtime_ns
    again = shapes(seed=1, size=16, train=20, validation=8, test=8)
    assert folder.stat().st_mtime_ns == stamp and again["test"]["label"] == ds["test"]["label"]
    assert ds["train"][0]["image"].size == (16, 16)
    tensors = with_transform(ds["train"], lambda img: torch.from_numpy(np.asarray(img)).permute(2, 0, 1))
    assert tensors[0]["image"].shape == (3, 16, 16) and isinstance(tensors[0]["label"], int)


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8))


def test_imagefolder_layout(tmp_path: Path) -> None:
    for split in ("train", "validation"):
        for cls in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                _image(i).save(folder / f"{i}.png")
    ds = load_classification(data_cfg("imagefolder", path=tmp_path / "imgs"))
    assert len(ds["train"]) == 6 and len(ds["validation"]) == 6 and len(ds["test"]) == 6
    assert ds["train"].features["label"].names == ["cat", "dog"]


def test_parquet_and_disk_layouts(tmp_path: Path) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    table = datasets.Dataset.from_dict({"image": [_image(i) for i in range(10)], "label": [i % 2 for i in range(10)]},
                                       features=features)
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    table.select(range(4)).to_parquet(str(tmp_path / "pq" / "test-00000.parquet"))
    ds = load_classification(data_cfg("parquet", path=tmp_path / "pq"))
    assert len(ds["train"]) == 10 and len(ds["test"]) == 4 and len(ds["validation"]) == 4
    table.save_to_disk(str(tmp_path / "disk"))
    ds = load_classification(data_cfg("disk", path=tmp_path / "disk", val_fraction=0.2))
    assert len(ds["train"]) == 8 and len(ds["validation"]) == 2


def test_renamed_columns_like_cifar(tmp_path: Path) -> None:
    table = datasets.Dataset.from_dict({"img": [_image(i) for i in range(4)], "fine_label": [0, 1, 2, 3]},
                                       features=datasets.Features({"img": datasets.Image(),
                                                                   "fine_label": datasets.ClassLabel(num_classes=4)}))
    datasets.DatasetDict({"train": table, "test": table}).save_to_disk(str(tmp_path / "c100"))
    ds = load_classification(data_cfg("disk", path=tmp_path / "c100", image_column="img", label_column="fine_label"))
    assert ds["train"].column_names == ["image", "label"]
    with pytest.raises(DataError, match="no \\['label'\\] column"):
        load_classification(data_cfg("disk", path=tmp_path / "c100", image_column="img"))


def test_missing_data_is_explained_without_traceback(tmp_path: Path) -> None:
    bench = Path(sys.executable).parent / "bench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    for args, expected in ((["data=imagefolder", f"data.path={tmp_path}/nope"], "does not exist"),
                           (["data=cifar10"], "uoft-cs/cifar10")):
        out = subprocess.run([str(bench), "run", "task=classification", *args, f"results_dir={tmp_path}/r"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 2, out.stderr[-2000:]
        assert expected in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    assert not list((tmp_path / "r").rglob("*.json"))  # no record (the writability check may make the folder)


def _jpeg_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> Path:
    """An imagefolder dataset of real JPEG files: root/{train,validation}/CLASS/i.jpg."""
    for split in ("train", "validation"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                _image(i).save(root / split / cls / f"{i}.jpg", quality=90)
    return root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # what an interrupted copy or download leaves


def _one_paragraph(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_truncated_jpeg_is_named_before_training(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "imgs")
    bad = root / "train" / "dog" / "1.jpg"
    _truncate(bad)
    with pytest.raises(OSError):
        Image.open(bad).load()  # really truncated: PIL refuses it
    with pytest.raises(DataError) as caught:
        load_classification(data_cfg("imagefolder", path=root))  # when the data is loaded, before any training
    text = _one_paragraph(caught.value)
    assert str(bad) in text and "truncated" in text.lower() and "re-export" in text and "delete it" in text
    assert "1 image cannot be read" in text  # the valid files are not listed


def test_undecodable_image_is_named_when_read_even_in_a_loader_worker(tmp_path: Path) -> None:
    root = _jpeg_folder(tmp_path / "imgs")
    bad = root / "train" / "cat" / "2.jpg"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes())  # not an image
    for workers in (0, 1):
        cfg = compose("run", ["task=classification", "data=imagefolder", f"data.path={root}", "data.image_size=8",
                              f"trainer.num_workers={workers}"])
        data = ClassificationData(cfg, per_device_batch=6)  # the end scan cannot tell; loading works
        with pytest.raises(DataError) as caught:
            for _ in data.train_dataloader():
                pass
        text = _one_paragraph(caught.value)  # not torch's "Caught ... in DataLoader worker" and its traceback
        assert text.startswith(f"image file {bad} cannot be read") and "re-export" in text, text
        batch = next(iter(data.val_dataloader()))  # the valid split still loads
        assert batch["image"].shape[1:] == (3, 8, 8) and batch["label"].dtype == torch.int64


def test_corrupt_image_in_parquet_names_split_row_and_column(tmp_path: Path) -> None:
    import io

    blobs = []
    for i in range(6):
        buffer = io.BytesIO()
        _image(i).save(buffer, format="JPEG")
        blobs.append(buffer.getvalue())
    blobs[4] = blobs[4][: len(blobs[4]) // 2]
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    table = datasets.Dataset.from_dict({"img": [{"bytes": b, "path": None} for b in blobs],
                                        "label": [i % 2 for i in range(6)]}, features=features)
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    with pytest.raises(DataError) as caught:
        load_classification(data_cfg("parquet", path=tmp_path / "pq", image_column="img"))
    text = _one_paragraph(caught.value)
    assert "row 4 of the train split (column 'img')" in text and "re-export" in text


def test_string_labels_are_refused_when_loaded(tmp_path: Path) -> None:
    names = ["cat", "dog", "cat", "bird", "dog", "cat"]
    features = datasets.Features({"image": datasets.Image(), "species": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": [_image(i) for i in range(6)], "species": names}, features=features)
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    with pytest.raises(DataError) as caught:
        load_classification(data_cfg("parquet", path=tmp_path / "pq", label_column="species"))
    text = _one_paragraph(caught.value)
    assert "label column 'species' holds string values (e.g. 'cat'" in text
    assert "ClassLabel" in text and "integer" in text
    floats = datasets.Dataset.from_dict({"image": [_image(i) for i in range(4)], "label": [0.0, 1.0, 0.0, 1.0]})
    floats.save_to_disk(str(tmp_path / "floats"))
    with pytest.raises(DataError, match="'label' holds float64 values"):
        load_classification(data_cfg("disk", path=tmp_path / "floats"))
    unlabelled = datasets.Dataset.from_dict({"image": [_image(i) for i in range(4)], "label": [0, 1, -1, 1]})
    unlabelled.save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(DataError, match="holds -1"):
        load_classification(data_cfg("disk", path=tmp_path / "unlabelled"))

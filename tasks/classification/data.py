"""Classification data through Hugging Face `datasets`: the built-in `shapes` scenes and real datasets.

Every source ends as a ``DatasetDict`` with ``train``/``validation``/``test`` splits and ``image`` /
``label`` columns; images are decoded and transformed lazily on access (torchvision.transforms.v2).
Missing data raises :class:`DataError` saying where bench looked and how to get the data; so does bad
data, naming what is bad: a label column that does not hold integer class ids (checked when the data
is loaded), and an image that cannot be decoded (a cheap scan before training finds truncated JPEG and
PNG files; any other undecodable image stops the run when it is first read). A corrupt image is
fatal, never skipped: skipping would silently change the dataset a result is measured on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bench.errors import DataError
from bench.schema import DataSource
from tasks.shapes import CLASSES, SPLIT_OFFSETS, cached_view, render_scene

SHAPES_VERSION = 1
"""Bumped whenever the generator's output changes, so stale caches are never reused."""


@dataclass
class ClassificationDataConfig(DataSource):
    """A classification dataset: built-in generator, hub id or local path, and how to read it."""

    hub_id: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    val_fraction: float = 0.1
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])


def shapes(seed: int = 0, size: int = 32, train: int = 10_000, validation: int = 2_000, test: int = 2_000
           ) -> datasets.DatasetDict:
    """The shapes classification view, generated once per (seed, size, split sizes) and cached on disk."""
    counts = {"train": train, "validation": validation, "test": test}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})

    def write(folder: Path) -> None:
        splits = {}
        for split, count in counts.items():
            scenes = (render_scene(seed, SPLIT_OFFSETS[split] + i, size) for i in range(count))
            images, labels = zip(*((Image.fromarray(s.image), s.label) for s in scenes)) if count else ((), ())
            splits[split] = datasets.Dataset.from_dict({"image": list(images), "label": list(labels)},
                                                       features=features)
        datasets.DatasetDict(splits).save_to_disk(str(folder))

    path = cached_view(f"shapes-v{SHAPES_VERSION}-seed{seed}-{size}px-{train}-{validation}-{test}", write)
    return datasets.load_from_disk(str(path))


def _how_to_get(cfg: DictConfig) -> str:
    if cfg.source == "hub":
        return (f"It is not in the local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}) and this machine "
                f"cannot download it. On a machine with internet access run `python -c \"import datasets; "
                f"datasets.load_dataset('{cfg.hub_id}').save_to_disk('DIR')\"`, copy DIR here and use "
                "data=disk data.path=DIR (or copy the Hugging Face cache folder).")
    return "Check the path, or see README.md (Data) for the expected layout."


def _load_source(cfg: DictConfig) -> datasets.DatasetDict:
    if cfg.source == "hub":
        return datasets.load_dataset(cfg.hub_id)
    path = Path(str(cfg.path or ""))
    if not cfg.path or not path.exists():
        raise DataError(f"data={cfg.name}: data.path={cfg.path!r} does not exist. {_how_to_get(cfg)}")
    if cfg.source == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=str(path))
    if cfg.source == "parquet":
        files = {split: sorted(str(p) for p in path.glob(f"{split}*.parquet")) for split in
                 ("train", "validation", "test")}
        files = {split: found for split, found in files.items() if found}
        if "train" not in files:
            raise DataError(f"data=parquet: no train*.parquet file in {path} (expected train*.parquet, "
                            "optionally validation*.parquet and test*.parquet)")
        return datasets.load_dataset("parquet", data_files=files)
    if cfg.source == "disk":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        return loaded
    raise DataError(f"data.source={cfg.source!r} is not one of shapes, hub, imagefolder, parquet, disk")


class CorruptImageError(DataError):
    """An image that cannot be decoded, named for a person (file, or split/row/column) with what to do.

    Raised inside a DataLoader worker it reaches the main process rebuilt by torch from one string holding
    "Caught CorruptImageError in DataLoader worker process N" and the worker's traceback; the constructor
    takes the original message back out of it, so the CLI still prints one paragraph.
    """

    def __init__(self, text: str = "") -> None:
        if text.startswith(f"Caught {type(self).__name__} "):
            lines = re.findall(rf"^\S*{type(self).__name__}: (.+)$", text, flags=re.MULTILINE)
            text = lines[-1] if lines else text
        super().__init__(text)


_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
"""What PIL raises for a corrupt, truncated or unreadable image (UnidentifiedImageError is an OSError)."""

_TO_FIX = "re-export or replace it, or delete it, then rerun"


def _where(name: str, split: str, row: int, column: str, value: dict) -> str:
    """The image for a person: its file when it is one on disk, else split, row and column (and stored name)."""
    path = value.get("path") if isinstance(value, dict) else None
    if path and not value.get("bytes"):
        return f"image file {path}"
    stored = f", stored as {path!r}" if path else ""
    return f"the image in row {row} of the {split} split (column {column!r}{stored}) of data={name}"


def _read(feature: datasets.Image, value: Any) -> tuple[Optional[Image.Image], str]:
    """The decoded image and "", or None and why it cannot be read."""
    try:
        return feature.decode_example(value), ""
    except FileNotFoundError:
        return None, "the file does not exist"
    except _READ_ERRORS as err:
        return None, f"{type(err).__name__}: {err}"


def _unreadable(what: str, count: int = 1) -> str:
    return (f"{what}. {'It is' if count == 1 else 'Each is'} corrupt, truncated or missing: {_TO_FIX}. Corrupt "
            "images stop the run rather than being skipped, so every result is measured on the whole dataset.")


def _decode(feature: datasets.Image, value: Any, where: Callable[[], str]) -> Image.Image:
    image, reason = _read(feature, value)
    if image is None:
        raise CorruptImageError(_unreadable(f"{where()} cannot be read ({reason})"))
    return image


_JPEG, _PNG, _PNG_END = b"\xff\xd8\xff", b"\x89PNG", b"\xaeB`\x82"  # PNG files end with IEND's fixed CRC


def _looks_truncated(head: bytes, tail: bytes) -> bool:
    """A JPEG that does not end with its EOI marker, or a PNG that does not end with IEND: worth decoding."""
    if head.startswith(_JPEG):
        return not tail.rstrip(b"\x00").endswith(b"\xff\xd9")
    if head.startswith(_PNG):
        return not tail.endswith(_PNG_END)
    return len(head) < 4  # empty or nearly so; other formats are checked when they are read


def _file_ends(path: str) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, f.seek(0, 2) - 16))
        return head, f.read()


def _suspect_rows(column: pa.ChunkedArray) -> Iterator[int]:
    """Rows whose image looks truncated or missing, from the first and last bytes of each (nothing is decoded)."""
    start, local = 0, []
    for chunk in column.chunks:
        fields = dict(zip((f.name for f in chunk.type), chunk.flatten()))
        blobs, paths = fields.get("bytes"), fields.get("path")
        if blobs is not None and not (pa.types.is_binary(blobs.type) or pa.types.is_large_binary(blobs.type)):
            blobs = blobs.cast(pa.large_binary())
        has_bytes = np.zeros(len(chunk), bool) if blobs is None else ~np.asarray(blobs.is_null(), bool)
        if has_bytes.any():  # read in place (memory-mapped): only the pages holding each image's ends are touched
            buffers = blobs.buffers()
            width = np.int64 if pa.types.is_large_binary(blobs.type) else np.int32
            offsets = np.frombuffer(buffers[1], width)[blobs.offset:blobs.offset + len(blobs) + 1]
            data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
            for row in np.nonzero(has_bytes)[0]:
                begin, end = int(offsets[row]), int(offsets[row + 1])
                if _looks_truncated(data[begin:begin + 4].tobytes(), data[max(begin, end - 16):end].tobytes()):
                    yield start + int(row)
        if paths is not None and not has_bytes.all():
            local += [(start + row, path) for row, (path, inline) in enumerate(zip(paths.to_pylist(), has_bytes))
                      if path and not inline and "://" not in path]  # remote files are only read when used
        start += len(chunk)

    def check(item: tuple[int, str]) -> int | None:
        try:
            return item[0] if _looks_truncated(*_file_ends(item[1])) else None
        except OSError:
            return item[0]

    with ThreadPoolExecutor(8) as pool:
        yield from (row for row in pool.map(check, local) if row is not None)


def check_images(ds: datasets.DatasetDict, name: str, column: str) -> None:
    """Before training: every JPEG/PNG in ``column`` read at its ends, suspects decoded; DataError naming the bad.

    Cheap (a few bytes per image, no decoding unless an image looks truncated or is missing), so it finds a
    truncated download or copy before any training; other corruption is caught when the image is read.
    """
    bad, seen = [], set()
    for split, part in ds.items():
        feature = part.features.get(column)
        if not isinstance(feature, datasets.Image) or id(part.data) in seen:
            continue
        seen.add(id(part.data))
        table = part.data.column(column)
        for row in _suspect_rows(table):
            value = table[row].as_py()
            image, reason = _read(feature, value)
            if image is None:
                bad.append(f"{_where(name, split, row, column, value)} ({reason})")
    if bad:
        listed = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CorruptImageError(_unreadable(f"data={name}: {len(bad)} image{'s' if len(bad) > 1 else ''} cannot be "
                                            f"read: {listed}", len(bad)))


_INTEGER_TYPES = {f"{sign}int{bits}" for sign in ("", "u") for bits in (8, 16, 32, 64)}


def check_labels(ds: datasets.DatasetDict, cfg: DictConfig) -> None:
    """The ``label`` column holds integer class ids 0.. (ClassLabel or an integer type) in every split.

    String (or float, or nested) labels are refused rather than mapped: which id a string gets would depend on
    which strings each split holds and on how they sort ("10" before "9"); the message says how to map them.
    """
    name, column = cfg.name, cfg.label_column
    for split, part in ds.items():
        feature = part.features["label"]
        values = part.data.column("label")
        if not (isinstance(feature, datasets.ClassLabel)
                or (isinstance(feature, datasets.Value) and feature.dtype in _INTEGER_TYPES)):
            sample = next((v for v in values.slice(0, 100).to_pylist() if v is not None), None)
            kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
            load = (f"d.load_dataset('{cfg.hub_id}')" if cfg.source == "hub" else
                    f"d.load_dataset('parquet', data_dir='{cfg.path}')" if cfg.source == "parquet" else
                    f"d.load_from_disk('{cfg.path}')")
            encode = (f"python -c \"import datasets as d; ds = {load}; names = sorted({{v for s in ds.values() for v "
                      f"in s.unique('{column}')}}); ds.cast_column('{column}', d.ClassLabel(names=names))"
                      ".save_to_disk('OUT')\"")
            raise DataError(f"data={name}: the label column {column!r} holds {kind} values (e.g. {sample!r} in the "
                            f"{split} split), but classification needs integer class ids 0..C-1. Map the labels to "
                            "integers, or store the column as a ClassLabel feature with the same names in every "
                            f"split (e.g. {encode}) and use data=disk data.path=OUT. bench does "
                            "not map strings itself: the ids would depend on which labels each split holds.")
        if values.null_count:
            raise DataError(f"data={name}: the label column {column!r} has {values.null_count} empty value(s) in the "
                            f"{split} split; every row needs a class id: drop or label those rows.")
        low = pc.min(values).as_py()
        high = pc.max(values).as_py()
        if low is not None and low < 0:
            raise DataError(f"data={name}: the label column {column!r} holds {low} in the {split} split; class ids "
                            "must be 0..C-1 (a negative id usually marks an unlabelled split, which cannot be "
                            "scored): drop those rows or use a labelled split.")
        if isinstance(feature, datasets.ClassLabel) and high is not None and high >= feature.num_classes:
            raise DataError(f"data={name}: the label column {column!r} holds {high} in the {split} split, but its "
                            f"ClassLabel feature has only {feature.num_classes} classes: fix the labels or the "
                            "feature's names.")


def _standardise(ds: datasets.DatasetDict, cfg: DictConfig, seed: int) -> datasets.DatasetDict:
    """Rename columns to image/label and make sure train, validation and test splits exist."""
    renames = {cfg.image_column: "image", cfg.label_column: "label"}
    ds = datasets.DatasetDict({k: v.rename_columns({a: b for a, b in renames.items() if a != b and a in v.column_names})
                               for k, v in ds.items()})
    for split in ds.values():
        missing = {"image", "label"} - set(split.column_names)
        if missing:
            raise DataError(f"data={cfg.name}: no {sorted(missing)} column (columns: {split.column_names}); set "
                            "data.image_column / data.label_column")
    if "validation" not in ds:
        source = "test" if "test" in ds else "train"
        if source == "train":
            parts = ds["train"].train_test_split(test_size=cfg.val_fraction, seed=seed)
            ds["train"], ds["validation"] = parts["train"], parts["test"]
        else:
            ds["validation"] = ds["test"]
    if "test" not in ds:
        ds["test"] = ds["validation"]
    return datasets.DatasetDict({k: ds[k] for k in ("train", "validation", "test")})


def load_classification(cfg: DictConfig, seed: int = 0) -> datasets.DatasetDict:
    """The dataset named by ``cfg`` (a `data/*.yaml` group entry) as train/validation/test with image/label."""
    if cfg.source == "shapes":
        return shapes(cfg.generator_seed, cfg.image_size, cfg.train_size, cfg.val_size, cfg.test_size)
    try:
        raw = _load_source(cfg)
    except DataError:
        raise
    except (FileNotFoundError, ConnectionError, datasets.exceptions.DatasetNotFoundError, OSError) as err:
        raise DataError(f"data={cfg.name}: cannot load it ({type(err).__name__}: {err}). {_how_to_get(cfg)}") from None
    ds = _standardise(raw, cfg, seed)
    check_labels(ds, cfg)
    check_images(raw, cfg.name, cfg.image_column)  # the loaded splits: row numbers as in the user's files
    return ds


def num_classes(ds: datasets.DatasetDict) -> int:
    """Number of classes: from the ClassLabel feature when present, else from the labels seen."""
    feature = ds["train"].features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    return int(max(max(ds[s]["label"]) for s in ds)) + 1


class TransformedImages(Dataset):
    """A split whose images are decoded on access (an undecodable one raises a DataError naming it) and transformed.

    Batches are read with one ``__getitems__`` call, as for a Hugging Face dataset, so loading stays columnar.
    """

    def __init__(self, ds: datasets.Dataset, transform: Callable[[Any], Any], name: str = "?",
                 image_column: str = "image") -> None:
        self.feature = ds.features["image"]
        if isinstance(self.feature, datasets.Image):
            ds = ds.cast_column("image", datasets.Image(mode=self.feature.mode, decode=False))
        self.ds, self.transform, self.name, self.image_column = ds.with_format(None), transform, name, image_column

    def __len__(self) -> int:
        return len(self.ds)

    def _row(self, index: int) -> int:
        """The row in the loaded split's table (a carved validation split is a view of train)."""
        indices = getattr(self.ds, "_indices", None)
        return int(indices.column(0)[index].as_py()) if indices is not None else index

    def _image(self, value: Any, index: int) -> Image.Image:
        if not isinstance(self.feature, datasets.Image):
            return value
        return _decode(self.feature, value, lambda: _where(self.name, self.ds.split or "?", self._row(index),
                                                           self.image_column, value))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        batch = self.ds[list(indices)]
        return [{"image": self.transform(self._image(value, index).convert("RGB")), "label": label}
                for index, value, label in zip(indices, batch["image"], batch["label"])]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]


def with_transform(ds: datasets.Dataset, transform: Callable[[Any], Any], name: str = "?",
                   image_column: str = "image") -> TransformedImages:
    """``ds`` decoding images on access through ``transform`` (PIL image -> tensor), keeping labels.

    ``name`` (the ``data=`` entry) and ``image_column`` (the user's column name) go into the error for an image
    that cannot be decoded.
    """
    return TransformedImages(ds, transform, name, image_column)


def image_transforms(data: DictConfig, recipe: DictConfig, train: bool) -> v2.Compose:
    """torchvision v2 pipeline: the recipe's augmentation for training, resize + centre crop for evaluation."""
    size = int(data.image_size)
    steps: list[Any] = [v2.PILToTensor()]
    if train and recipe.random_resized_crop:
        steps.append(v2.RandomResizedCrop(size, antialias=True))
    else:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        if train and recipe.crop_padding:
            steps.append(v2.RandomCrop(size, padding=int(recipe.crop_padding), padding_mode="reflect"))
    if train and recipe.flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(data.mean), list(data.std))]
    return v2.Compose(steps)


class ClassificationData(L.LightningDataModule):
    """Train/validation/test loaders over a Hugging Face dataset with lazily applied transforms."""

    def __init__(self, cfg: DictConfig, per_device_batch: int) -> None:
        super().__init__()
        self.cfg, self.per_device_batch = cfg, per_device_batch
        self.splits = load_classification(cfg.data, cfg.seed)
        self.num_classes = num_classes(self.splits)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = with_transform(self.splits[split], image_transforms(self.cfg.data, self.cfg.recipe, train),
                            self.cfg.data.name, self.cfg.data.image_column)
        workers = int(self.cfg.trainer.num_workers)
        return DataLoader(ds, batch_size=self.per_device_batch if train else int(self.cfg.recipe.eval_batch),
                          shuffle=train, drop_last=train, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

"""Classification data through Hugging Face `datasets`: the built-in `shapes` scenes and real datasets.

Every source ends as a ``DatasetDict`` with ``train``/``validation``/``test`` splits and ``image`` /
``label`` columns; transforms are applied lazily with ``set_transform`` (torchvision.transforms.v2).
Missing data raises :class:`DataError` saying where bench looked and how to get the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import lightning as L
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader
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
    return _standardise(raw, cfg, seed)


def num_classes(ds: datasets.DatasetDict) -> int:
    """Number of classes: from the ClassLabel feature when present, else from the labels seen."""
    feature = ds["train"].features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return feature.num_classes
    return int(max(max(ds[s]["label"]) for s in ds)) + 1


def with_transform(ds: datasets.Dataset, transform: Callable[[Any], Any]) -> datasets.Dataset:
    """``ds`` decoding images on access through ``transform`` (PIL image -> tensor), keeping labels."""

    def apply(batch: dict[str, list]) -> dict[str, list]:
        return {"image": [transform(img.convert("RGB")) for img in batch["image"]], "label": batch["label"]}

    out = ds.with_format(None)
    out.set_transform(apply)
    return out


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
        ds = with_transform(self.splits[split], image_transforms(self.cfg.data, self.cfg.recipe, train))
        workers = int(self.cfg.trainer.num_workers)
        return DataLoader(ds, batch_size=self.per_device_batch if train else int(self.cfg.recipe.eval_batch),
                          shuffle=train, drop_last=train, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

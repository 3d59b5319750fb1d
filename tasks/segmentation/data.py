"""Segmentation data through Hugging Face `datasets`: Cityscapes, image/mask folders (VOC, ADE20K) and `shapes`.

Every source becomes, per split, a ``datasets.Dataset`` of ``image`` / ``mask`` (``datasets.Image``
columns, decoded on access) plus the file names for error messages. Masks hold class ids per pixel
(``ignore_index``, 255, marks pixels that are not scored); Cityscapes' label ids are mapped to its 19
train ids. Image and mask go through one torchvision.transforms.v2 pipeline as ``tv_tensors``, so a
random scale, crop or flip moves both the same way. A missing mask, a mask of another size than its
image, a colour (RGB) mask or a class id at or above ``num_classes`` is a :class:`DataError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import datasets
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from bench.errors import DataError
from bench.schema import DataSource
from tasks.shapes import CLASSES, SPLIT_OFFSETS, cached_view, open_image, png_bytes, render_scene

SHAPES_SEGMENTATION_VERSION = 1
"""Bumped whenever the segmentation view's output changes, so stale caches are never reused."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
"""Cityscapes label id -> train id (the official 19 evaluated classes); every other id is ignored."""
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")


@dataclass
class SegmentationDataConfig(DataSource):
    """A segmentation dataset: where it is, its splits, its classes and the image normalisation."""

    num_classes: int = 11
    ignore_index: int = 255
    class_names: list[str] = field(default_factory=list)
    train_split: str = "train"
    val_split: str = "validation"
    test_split: str = "test"
    images: str = "images/{split}"
    """segfolder: the image folder of a split, relative to ``path``."""
    masks: str = "masks/{split}"
    """segfolder: the mask folder (PNG class ids, same file stem as the image) of a split."""
    split_lists: Optional[str] = None
    """segfolder: a folder of ``<split>.txt`` files listing each split's image stems (VOC's
    ``ImageSets/Segmentation``); None: every image of the split's folder."""
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


def names_of(cfg: DictConfig) -> list[str]:
    """Class names of the dataset: configured, Cityscapes' own, or ``class_<id>``."""
    if cfg.class_names:
        return list(cfg.class_names)
    if cfg.source == "cityscapes":
        return list(CITYSCAPES_CLASSES)
    if cfg.source == "shapes":
        return ["background", *CLASSES]
    return [f"class_{i}" for i in range(int(cfg.num_classes))]


FEATURES = datasets.Features({"image": datasets.Image(decode=False), "mask": datasets.Image(decode=False),
                              "image_file": datasets.Value("string"), "mask_file": datasets.Value("string")})


def _from_pairs(pairs: list[tuple[Path, Path]]) -> datasets.Dataset:
    """A split of (image file, mask file) pairs as a Hugging Face dataset with lazily decoded image columns."""
    return datasets.Dataset.from_dict({"image": [str(i) for i, _ in pairs], "mask": [str(m) for _, m in pairs],
                                       "image_file": [str(i) for i, _ in pairs],
                                       "mask_file": [str(m) for _, m in pairs]}, features=FEATURES)


def write_shapes(folder: Path, seed: int, size: int, counts: dict[str, int]) -> None:
    """The shapes segmentation view: every scene's image and its class map (background 0, shape k as k + 1).

    Distractors are labelled with their class like the main object: a pixel's class is that of the shape seen there.
    """
    splits = {}
    for split, count in counts.items():
        images, masks, names = [], [], []
        for i in range(count):
            scene = render_scene(seed, SPLIT_OFFSETS[split] + i, size, distractors=(1, 3),
                                 distractor_scale=(0.12, 0.2))
            images.append(png_bytes(scene.image))
            masks.append(png_bytes(scene.class_map()))
            names.append(f"shapes/{split}/{i:07d}")
        splits[split] = datasets.Dataset.from_dict(
            {"image": [{"bytes": b, "path": None} for b in images], "mask": [{"bytes": b, "path": None} for b in masks],
             "image_file": [f"{n}.png" for n in names], "mask_file": [f"{n}_mask.png" for n in names]},
            features=FEATURES)
    datasets.DatasetDict(splits).save_to_disk(str(folder))


def shapes_splits(cfg: DictConfig) -> datasets.DatasetDict:
    """The cached shapes segmentation view (generated once per seed, size and split sizes)."""
    counts = {"train": int(cfg.train_size), "validation": int(cfg.val_size), "test": int(cfg.test_size)}
    name = (f"shapes-segmentation-v{SHAPES_SEGMENTATION_VERSION}-seed{cfg.generator_seed}-{cfg.image_size}px-"
            + "-".join(map(str, counts.values())))
    path = cached_view(name, lambda folder: write_shapes(folder, int(cfg.generator_seed), int(cfg.image_size),
                                                        counts))
    return datasets.load_from_disk(str(path))


def _require_folder(cfg: DictConfig, what: str) -> Path:
    root = Path(str(cfg.path or ""))
    if not cfg.path or not root.is_dir():
        raise DataError(f"data={cfg.name}: data.path={cfg.path!r} is not a folder. Point data.path at {what}.")
    return root


def cityscapes_pairs(cfg: DictConfig, split: str) -> list[tuple[Path, Path]]:
    """Cityscapes as distributed: ``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with their ``gtFine`` label ids."""
    root = _require_folder(cfg, "the Cityscapes root (the folder holding leftImg8bit/ and gtFine/)")
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    if not images:
        raise DataError(f"data={cfg.name}: no image in {root / 'leftImg8bit' / split}/CITY/*_leftImg8bit.png; "
                        "is data.path the Cityscapes root and the split name right (train, val, test)?")
    pairs = []
    for image in images:
        stem = image.name.removesuffix("_leftImg8bit.png")
        mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
        pairs.append((image, _existing_mask(cfg, image, mask)))
    return pairs


def _existing_mask(cfg: DictConfig, image: Path, mask: Path) -> Path:
    if not mask.is_file():
        raise DataError(f"data={cfg.name}: the mask of {image} is missing: expected {mask}.")
    return mask


def folder_pairs(cfg: DictConfig, split: str) -> list[tuple[Path, Path]]:
    """An image folder and a mask folder per split, matched by file stem (optionally listed in ``split_lists``)."""
    root = _require_folder(cfg, "a folder with an image folder and a mask folder per split (README, Segmentation)")
    image_dir, mask_dir = root / cfg.images.format(split=split), root / cfg.masks.format(split=split)
    for what, folder in (("image", image_dir), ("mask", mask_dir)):
        if not folder.is_dir():
            raise DataError(f"data={cfg.name}: the {what} folder of split {split!r} is missing: {folder}. Set "
                            f"data.images / data.masks (now {cfg.images!r} / {cfg.masks!r}).")
    images = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    if cfg.split_lists:
        listing = root / cfg.split_lists / f"{split}.txt"
        if not listing.is_file():
            raise DataError(f"data={cfg.name}: the split list {listing} is missing (data.split_lists="
                            f"{cfg.split_lists!r}).")
        stems = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        if missing := [s for s in stems if s not in images]:
            raise DataError(f"data={cfg.name}: {listing} lists {len(missing)} image(s) not in {image_dir}, e.g. "
                            f"{missing[0]!r}.")
    else:
        stems = list(images)
    if not stems:
        raise DataError(f"data={cfg.name}: no image in {image_dir} (suffixes {', '.join(IMAGE_SUFFIXES)}).")
    return [(images[s], _existing_mask(cfg, images[s], mask_dir / f"{s}.png")) for s in stems]


def load_splits(cfg: DictConfig) -> dict[str, datasets.Dataset]:
    """The train/validation/test splits ``cfg`` names, as Hugging Face datasets of image/mask files."""
    if cfg.source == "shapes":
        return dict(shapes_splits(cfg))
    pairs_of = {"cityscapes": cityscapes_pairs, "segfolder": folder_pairs}.get(cfg.source)
    if pairs_of is None:
        raise DataError(f"data.source={cfg.source!r} is not a segmentation source (shapes, cityscapes, segfolder)")
    splits = {"train": cfg.train_split, "validation": cfg.val_split, "test": cfg.test_split}
    return {role: _from_pairs(pairs_of(cfg, split)) for role, split in splits.items() if split}


def label_map(cfg: DictConfig) -> np.ndarray | None:
    """A lookup table from stored mask values to class ids (Cityscapes' label ids -> train ids), or None."""
    if cfg.source != "cityscapes":
        return None
    table = np.full(256, int(cfg.ignore_index), np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return table


class SegmentationSplit(Dataset):
    """One split: image and mask decoded, checked and transformed together; masks become int64 class ids."""

    def __init__(self, ds: datasets.Dataset, cfg: DictConfig, transform: v2.Transform) -> None:
        self.ds, self.cfg, self.transform, self.lut = ds, cfg, transform, label_map(cfg)

    def __len__(self) -> int:
        return len(self.ds)

    def _read(self, row: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        name, mask_name = row["image_file"], row["mask_file"]
        try:
            with open_image(row["image"]) as img:
                image = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise DataError(f"data={self.cfg.name}: cannot read the image {name} ({err})") from None
        try:
            with open_image(row["mask"]) as m:
                if m.mode in ("RGB", "RGBA"):
                    raise DataError(f"data={self.cfg.name}: the mask {mask_name} is a colour ({m.mode}) image; masks "
                                    "hold one class id per pixel (a palette or grey-level PNG).")
                mask = np.asarray(m)
        except OSError as err:
            raise DataError(f"data={self.cfg.name}: cannot read the mask {mask_name} ({err})") from None
        if mask.shape != image.shape[:2]:
            raise DataError(f"data={self.cfg.name}: the mask {mask_name} is {mask.shape[1]}x{mask.shape[0]} but its "
                            f"image {name} is {image.shape[1]}x{image.shape[0]}; a mask must match its image.")
        if self.lut is not None:
            mask = self.lut[mask]
        classes, ignore = int(self.cfg.num_classes), int(self.cfg.ignore_index)
        bad = (mask >= classes) & (mask != ignore)
        if bad.any():
            raise DataError(f"data={self.cfg.name}: the mask {mask_name} holds class id {int(mask[bad].max())}, but "
                            f"data.num_classes={classes} (ids 0..{classes - 1}, {ignore} ignored).")
        return image, mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self._read(self.ds[index])
        sample = {"image": tv_tensors.Image(torch.from_numpy(image.copy()).permute(2, 0, 1)),
                  "mask": tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64)))}
        out = self.transform(sample)
        return {"image": out["image"].as_subclass(torch.Tensor),
                "mask": out["mask"].as_subclass(torch.Tensor).long()}


class RandomScale(v2.Transform):
    """Resize image and mask together by one factor drawn uniformly from ``scale_range`` (masks: nearest)."""

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale_range = scale_range

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        scale = float(torch.empty(1).uniform_(*self.scale_range))
        return {"size": [max(1, round(h * scale)), max(1, round(w * scale))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(v2.functional.resize, inpt, size=params["size"], antialias=True)


def segmentation_transforms(data: DictConfig, recipe: DictConfig, train: bool) -> v2.Compose:
    """Training: random scale, crop (padded with the ignore id) and flip of image and mask; evaluation: the full image."""
    steps: list[v2.Transform] = []
    if train:
        low, high = recipe.scale_range
        if (low, high) != (1, 1):
            steps.append(RandomScale((float(low), float(high))))
        crop = int(recipe.crop_size)
        steps.append(v2.RandomCrop(crop, pad_if_needed=True,
                                   fill={tv_tensors.Image: 0, tv_tensors.Mask: int(data.ignore_index)}))
        if recipe.flip:
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
              v2.Normalize(list(data.mean), list(data.std))]
    return v2.Compose(steps)


def pad_collate(ignore_index: int):
    """Stack a batch, padding images (with 0, the mean after normalisation) and masks (with the ignore id)
    to the largest size in it, so evaluation images of different sizes share a batch."""

    def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        h = max(s["mask"].shape[-2] for s in samples)
        w = max(s["mask"].shape[-1] for s in samples)

        def pad(t: torch.Tensor, value: float) -> torch.Tensor:
            return F.pad(t, (0, w - t.shape[-1], 0, h - t.shape[-2]), value=value)

        return {"image": torch.stack([pad(s["image"], 0.0) for s in samples]),
                "mask": torch.stack([pad(s["mask"], ignore_index) for s in samples])}

    return collate


class SegmentationData(L.LightningDataModule):
    """Train, validation and test loaders over the configured splits."""

    def __init__(self, cfg: DictConfig, per_device_batch: int) -> None:
        super().__init__()
        self.cfg, self.per_device_batch = cfg, per_device_batch
        self.splits = load_splits(cfg.data)
        if not len(self.splits.get("train", ())):
            raise DataError(f"data={cfg.data.name}: the training split is empty")
        self.class_names = names_of(cfg.data)
        if len(self.class_names) != int(cfg.data.num_classes):
            raise DataError(f"data={cfg.data.name}: {len(self.class_names)} class names for data.num_classes="
                            f"{cfg.data.num_classes}")

    def _loader(self, role: str, train: bool) -> DataLoader:
        split = SegmentationSplit(self.splits[role], self.cfg.data,
                                  segmentation_transforms(self.cfg.data, self.cfg.recipe, train))
        workers = int(self.cfg.trainer.num_workers)
        return DataLoader(split, batch_size=self.per_device_batch if train else int(self.cfg.recipe.eval_batch),
                          shuffle=train, drop_last=train, collate_fn=pad_collate(int(self.cfg.data.ignore_index)),
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", False) if len(self.splits.get("validation", ())) else []

    def test_dataloader(self) -> DataLoader:
        if not len(self.splits.get("test", ())):
            raise DataError(f"data={self.cfg.data.name}: the test split is empty")
        return self._loader("test", False)

"""Salient-object detection data through Hugging Face `datasets`: image/mask folders (SOD100K's layout, DUTS)
and `shapes`.

Every source becomes, per split, a ``datasets.Dataset`` of ``image`` / ``mask`` (``datasets.Image`` columns,
decoded on access) plus the file names for error messages. A mask is a grey PNG of saliency 0-255, read as a
soft target in [0, 1] (antialiased edges stay grey, as SOD100K trains on them).

DUTS is not a source of its own: its folders (``DUTS-TR/DUTS-TR-Image`` + ``DUTS-TR-Mask``, alike for
``DUTS-TE``) are just other ``images`` / ``masks`` patterns and split names, so ``data=duts`` is
``source: salfolder`` configured by ``conf/data/duts.yaml``; messages name the dataset by ``data.name``.
Extra test sets (ECSSD, PASCAL-S, HKU-IS, DUT-OMRON, SOD in the common ``images/`` + ``GT/`` layout) are
folders listed in ``extra_test``, each scored separately under its folder's name.

Training follows SOD100K's ``prepare_data.py``: a random trim of 0..crop_margin-1 pixels from each side, a
horizontal flip, a resize to image_size squared (bilinear for image and soft mask alike). Evaluation resizes
only the image; the ground truth keeps its size (the metric resizes predictions back to it). A missing
folder or mask, an unreadable file or a mask of another size than its image is a :class:`DataError`
naming the file; sizes are checked when a sample is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from bench.errors import DataError
from bench.schema import DataSource
from tasks.shapes import SPLIT_OFFSETS, cached_view, open_image, png_bytes, render_scene

SHAPES_SALIENCY_VERSION = 1
"""Bumped whenever the saliency view's output changes, so stale caches are never reused."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MASK_SUFFIX = ".png"


@dataclass
class SaliencyDataConfig(DataSource):
    """A salient-object dataset: where it is, its splits, its folder layout and any extra test sets."""

    train_split: str = "train"
    val_split: str | None = None
    test_split: str = "test"
    images: str = "{split}/images"
    """salfolder: the image folder of a split, relative to ``path`` ({split} is replaced)."""
    masks: str = "{split}/GT"
    """salfolder: the mask folder (grey PNG, same file stem as the image) of a split."""
    extra_test: list[str] = field(default_factory=list)
    """Extra test sets, each a folder (relative ones under ``path``) scored separately under its name."""
    extra_images: str = "images"
    """The image folder inside each extra test set."""
    extra_masks: str = "GT"
    """The mask folder inside each extra test set."""


FEATURES = datasets.Features({"image": datasets.Image(decode=False), "mask": datasets.Image(decode=False),
                              "image_file": datasets.Value("string"), "mask_file": datasets.Value("string")})


def write_shapes(folder: Path, seed: int, size: int, counts: dict[str, int]) -> None:
    """The shapes saliency view: each scene's image and its main object's visible pixels as a 0/255 grey PNG.

    The main object is the salient one: the largest, the nearest (never hidden) and whole inside the image.
    """
    splits = {}
    for split, count in counts.items():
        rows: dict[str, list] = {"image": [], "mask": [], "image_file": [], "mask_file": []}
        for i in range(count):
            scene = render_scene(seed, SPLIT_OFFSETS[split] + i, size, distractors=(1, 3),
                                 distractor_scale=(0.12, 0.2))
            mask = scene.visible(scene.objects[0]).astype(np.uint8) * 255
            rows["image"].append({"bytes": png_bytes(scene.image), "path": None})
            rows["mask"].append({"bytes": png_bytes(mask), "path": None})
            rows["image_file"].append(f"shapes/{split}/{i:07d}.png")
            rows["mask_file"].append(f"shapes/{split}/{i:07d}_mask.png")
        splits[split] = datasets.Dataset.from_dict(rows, features=FEATURES)
    datasets.DatasetDict(splits).save_to_disk(str(folder))


def shapes_splits(cfg: DictConfig) -> dict[str, datasets.Dataset]:
    """The cached shapes saliency view (generated once per seed, size and split sizes)."""
    counts = {"train": int(cfg.train_size), "validation": int(cfg.val_size), "test": int(cfg.test_size)}
    name = (f"shapes-saliency-v{SHAPES_SALIENCY_VERSION}-seed{cfg.generator_seed}-{cfg.image_size}px-"
            + "-".join(map(str, counts.values())))
    path = cached_view(name, lambda folder: write_shapes(folder, int(cfg.generator_seed), int(cfg.image_size),
                                                        counts))
    return dict(datasets.load_from_disk(str(path)))


def pair_rows(cfg: DictConfig, image_dir: Path, mask_dir: Path, what: str, hint: str) -> datasets.Dataset:
    """The images of ``image_dir`` with their same-stem PNG masks in ``mask_dir``, as rows of file paths."""
    for kind, folder in (("image", image_dir), ("mask", mask_dir)):
        if not folder.is_dir():
            raise DataError(f"data={cfg.name}: the {kind} folder of {what} is missing: {folder}. {hint}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"data={cfg.name}: no image in {image_dir} (suffixes {', '.join(IMAGE_SUFFIXES)}).")
    masks = [mask_dir / f"{image.stem}{MASK_SUFFIX}" for image in images]
    for image, mask in zip(images, masks):
        if not mask.is_file():
            raise DataError(f"data={cfg.name}: the mask of {image} is missing: expected {mask}.")
    files = {"image_file": [str(p) for p in images], "mask_file": [str(p) for p in masks]}
    return datasets.Dataset.from_dict({"image": files["image_file"], "mask": files["mask_file"], **files},
                                      features=FEATURES)


def split_rows(cfg: DictConfig, split: str) -> datasets.Dataset:
    """salfolder: one split's image and mask folders (``data.images`` / ``data.masks`` under ``data.path``)."""
    root = Path(str(cfg.path or ""))
    if not cfg.path or not root.is_dir():
        raise DataError(f"data={cfg.name}: data.path={cfg.path!r} is not a folder. Point data.path at a folder with "
                        f"{cfg.images} and {cfg.masks} per split (README, Saliency).")
    return pair_rows(cfg, root / cfg.images.format(split=split), root / cfg.masks.format(split=split),
                     f"split {split!r}", f"Set data.images / data.masks (now {cfg.images!r} / {cfg.masks!r}).")


def extra_rows(cfg: DictConfig, entry: str) -> datasets.Dataset:
    """One extra test set: a folder (absolute, or relative to ``data.path``) with its image and mask folders."""
    folder = (Path(str(cfg.path)) if cfg.path else Path()) / entry
    if not folder.is_dir():
        raise DataError(f"data={cfg.name}: the extra test set {entry!r} is not a folder: {folder}. Each entry of "
                        f"data.extra_test is a folder holding {cfg.extra_images}/ and {cfg.extra_masks}/.")
    return pair_rows(cfg, folder / cfg.extra_images, folder / cfg.extra_masks, f"extra test set {folder.name!r}",
                     f"Set data.extra_images / data.extra_masks (now {cfg.extra_images!r} / {cfg.extra_masks!r}).")


def load_splits(cfg: DictConfig) -> dict[str, datasets.Dataset]:
    """The train/validation/test splits ``cfg`` names, as Hugging Face datasets of image/mask files."""
    if cfg.source == "shapes":
        return shapes_splits(cfg)
    if cfg.source == "salfolder":
        roles = {"train": cfg.train_split, "validation": cfg.val_split, "test": cfg.test_split}
        return {role: split_rows(cfg, split) for role, split in roles.items() if split}
    raise DataError(f"data.source={cfg.source!r} is not a saliency source (shapes, salfolder)")


def read_pair(row: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3, grey mask uint8 H x W) of one row, refusing unreadable files and mismatched sizes."""
    decoded = []
    for column, mode in (("image", "RGB"), ("mask", "L")):
        try:
            with open_image(row[column]) as img:
                decoded.append(np.asarray(img.convert(mode)))
        except OSError as err:
            raise DataError(f"data={name}: cannot read the {column} {row[f'{column}_file']} ({err})") from None
    image, mask = decoded
    if mask.shape != image.shape[:2]:
        raise DataError(f"data={name}: the mask {row['mask_file']} is {mask.shape[1]}x{mask.shape[0]} but its image "
                        f"{row['image_file']} is {image.shape[1]}x{image.shape[0]}; a mask must match its image.")
    return image, mask


class RandomSideTrim(v2.Transform):
    """Cut 0..margin-1 pixels off each of the four sides independently (SOD100K's random crop)."""

    def __init__(self, margin: int) -> None:
        super().__init__()
        self.margin = margin

    def _draw(self, length: int) -> tuple[int, int]:
        """Trims of both ends of one axis, never leaving it under one pixel."""
        limit = min(self.margin - 1, (length - 1) // 2)
        return int(torch.randint(0, limit + 1, ())), int(torch.randint(0, limit + 1, ()))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        """One trim for every input of a sample, so image and mask keep the same region."""
        h, w = v2.query_size(flat_inputs)
        (top, bottom), (left, right) = self._draw(h), self._draw(w)
        return {"top": top, "left": left, "height": h - top - bottom, "width": w - left - right}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """Crop ``inpt`` to the drawn region."""
        return self._call_kernel(v2.functional.crop, inpt, **params)


class SoftResize(v2.Transform):
    """Resize images and soft masks bilinearly (antialias off, like cv2.resize); v2 resizes a Mask nearest."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = [size, size]

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        """``inpt`` at ``size`` x ``size``, kept as its tv_tensor type."""
        out = v2.functional.resize_image(inpt.as_subclass(torch.Tensor), self.size,
                                         interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
        return tv_tensors.wrap(out, like=inpt)


def saliency_transforms(recipe: DictConfig, train: bool) -> v2.Compose:
    """Training: trim, flip and resize of image and mask together, then normalisation; evaluation: resize only."""
    steps: list[v2.Transform] = []
    if train:
        if int(recipe.crop_margin) > 1:
            steps.append(RandomSideTrim(int(recipe.crop_margin)))
        if recipe.flip:
            steps.append(v2.RandomHorizontalFlip())
    steps += [SoftResize(int(recipe.image_size)), v2.Normalize(list(IMAGENET_DEFAULT_MEAN), list(IMAGENET_DEFAULT_STD))]
    return v2.Compose(steps)


class SaliencySplit(Dataset):
    """One split: training samples ``image`` (3, S, S) and soft ``mask`` (1, S, S) in [0, 1]; evaluation samples
    ``image``, the ground truth ``gt`` (H, W) uint8 at its own size and the image's ``name`` (file stem)."""

    def __init__(self, ds: datasets.Dataset, name: str, transform: v2.Compose, train: bool) -> None:
        self.ds, self.name, self.transform, self.train = ds, name, transform, train

    def __len__(self) -> int:
        """Samples in the split."""
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``, read, checked and transformed."""
        row = self.ds[index]
        image, mask = read_pair(row, self.name)
        pixels = tv_tensors.Image(torch.from_numpy(image.copy()).permute(2, 0, 1).float().div(255))
        if self.train:
            soft = tv_tensors.Mask(torch.from_numpy(mask.copy()).float().div(255)[None])
            out = self.transform({"image": pixels, "mask": soft})
            return {"image": out["image"].as_subclass(torch.Tensor), "mask": out["mask"].as_subclass(torch.Tensor)}
        return {"image": self.transform(pixels).as_subclass(torch.Tensor), "gt": torch.from_numpy(mask.copy()),
                "name": Path(row["image_file"]).stem}


def eval_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the (equal-sized) images of a batch; keep ground truths (sizes differ) and names as lists."""
    return {"image": torch.stack([s["image"] for s in samples]), "gt": [s["gt"] for s in samples],
            "name": [s["name"] for s in samples]}


class SaliencyData(L.LightningDataModule):
    """Train, validation and test loaders; the test loaders are the main test set, then each extra one."""

    def __init__(self, cfg: DictConfig, per_device_batch: int) -> None:
        super().__init__()
        self.cfg, self.per_device_batch = cfg, per_device_batch
        self.splits = load_splits(cfg.data)
        if not len(self.splits.get("train", ())):
            raise DataError(f"data={cfg.data.name}: the training split is empty")
        self.extra = [extra_rows(cfg.data, entry) for entry in cfg.data.extra_test]
        main = cfg.data.name if cfg.data.source == "shapes" else cfg.data.test_split
        self.test_names: list[str] = [str(main), *(Path(str(entry)).name for entry in cfg.data.extra_test)]

    def _loader(self, ds: datasets.Dataset, train: bool) -> DataLoader:
        """A loader over ``ds``: shuffled full batches for training, ``recipe.eval_batch`` for evaluation."""
        split = SaliencySplit(ds, self.cfg.data.name, saliency_transforms(self.cfg.recipe, train), train)
        workers = int(self.cfg.trainer.num_workers)
        return DataLoader(split, batch_size=self.per_device_batch if train else int(self.cfg.recipe.eval_batch),
                          shuffle=train, drop_last=train, collate_fn=None if train else eval_collate,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        """The training split, augmented."""
        return self._loader(self.splits["train"], True)

    def val_dataloader(self) -> DataLoader | list:
        """The validation split, or [] when there is none."""
        return self._loader(self.splits["validation"], False) if len(self.splits.get("validation", ())) else []

    def test_dataloader(self) -> list[DataLoader]:
        """The main test split, then each extra test set (named as in ``test_names``)."""
        return [self._loader(ds, False) for ds in (self.splits["test"], *self.extra)]

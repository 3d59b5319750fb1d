"""Detection data in the COCO layout: real COCO-format sets and the `shapes` detection view share one loader.

A dataset is ``root/annotations/instances_{split}.json`` plus the images under ``root/{split}/`` (COCO
2017 as distributed; the patterns are configurable). The built-in `shapes` view writes its scenes in
exactly that layout once (under $BENCH_CACHE), so the synthetic default exercises the real loader.
Samples carry torchvision ``tv_tensors`` so transforms.v2 moves the boxes with the image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from bench.errors import DataError
from bench.schema import DataSource
from tasks.shapes import CLASSES, SPLIT_OFFSETS, cached_view, render_scene

SHAPES_DETECTION_VERSION = 3
"""Bumped whenever the detection view's output changes, so stale caches are never reused."""
MEAN_PIXEL = (124, 116, 104)
"""The ImageNet mean in 0-255 RGB: the fill of zoom-out (mmdet's Expand fills with the normalisation mean)."""
MIN_VISIBLE = 0.4
"""An object is boxed when at least this fraction of it is visible (the rest is hidden behind nearer objects)."""
MIN_PIXELS = 12


@dataclass
class DetectionDataConfig(DataSource):
    """A COCO-format detection dataset: ``path/annotations/instances_{split}.json`` and ``path/{split}/``."""

    train_split: str = "train2017"
    val_split: str = "val2017"
    test_split: str = "val2017"
    annotations: str = "annotations/instances_{split}.json"
    images: str = "{split}"


def shapes_annotations(seed: int, index: int, size: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Scene ``index`` as an image and COCO-style annotations (box of the visible part, class, area)."""
    scene = render_scene(seed, index, size, distractors=(1, 3), distractor_scale=(0.12, 0.2), inside=True)
    annotations = []
    for obj in scene.objects:
        visible = scene.visible(obj)
        if visible.sum() < max(MIN_PIXELS, MIN_VISIBLE * obj.mask.sum()):
            continue
        ys, xs = np.nonzero(visible)
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        annotations.append({"category_id": obj.label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": float(visible.sum()), "iscrowd": 0})
    return scene.image, annotations


def write_shapes_coco(root: Path, seed: int, size: int, counts: dict[str, int]) -> None:
    """Write the shapes detection view to ``root`` in the COCO layout (PNG images, instances json per split)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    for split, count in counts.items():
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, objects = shapes_annotations(seed, SPLIT_OFFSETS[split] + i, size)
            name = f"{i:07d}.png"
            Image.fromarray(image).save(root / split / name)
            images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
            annotations += [{**obj, "id": len(annotations) + k + 1, "image_id": i + 1} for k, obj in enumerate(objects)]
        coco = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))


def shapes_root(cfg: DictConfig) -> Path:
    """The cached COCO-layout folder of the shapes detection view, generated on first use (atomically)."""
    counts = {cfg.train_split: int(cfg.train_size), cfg.val_split: int(cfg.val_size),
              cfg.test_split: int(cfg.test_size)}
    unknown = sorted(set(counts) - set(SPLIT_OFFSETS))
    if unknown:
        raise DataError(f"data={cfg.name}: the shapes view has the splits {', '.join(SPLIT_OFFSETS)}; "
                        f"data.*_split names {', '.join(map(repr, unknown))}.")
    tag = "-".join(f"{s}{n}" for s, n in counts.items())
    name = f"shapes-detection-v{SHAPES_DETECTION_VERSION}-seed{cfg.generator_seed}-{cfg.image_size}px-{tag}"
    return cached_view(name, lambda folder: write_shapes_coco(folder, int(cfg.generator_seed), int(cfg.image_size),
                                                              counts))


class CocoDetection(Dataset):
    """A COCO-format split: image (uint8 CHW ``tv_tensors.Image``), XYXY boxes, contiguous labels, crowd flags.

    Category ids are mapped to 0..K-1 in id order. ``train=True`` drops crowd boxes and images without
    any box (as mmdet does); evaluation keeps every image and marks crowd regions for the metric.
    """

    def __init__(self, annotations: Path, images: Path, transform: v2.Transform | None = None,
                 train: bool = False) -> None:
        try:
            coco = json.loads(annotations.read_text())
            self.categories = sorted(coco["categories"], key=lambda c: c["id"])
            records = {img["id"]: img for img in coco["images"]}
            boxes: dict[int, list[dict]] = {i: [] for i in records}
            for ann in coco["annotations"]:
                if not (train and ann.get("iscrowd", 0)):
                    boxes[ann["image_id"]].append(ann)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{annotations}: not a readable COCO instances file ({type(err).__name__}: {err})") \
                from None
        self.label_of = {c["id"]: i for i, c in enumerate(self.categories)}
        self.images, self.transform = images, transform
        ids = sorted(records)
        if train:
            ids = [i for i in ids if any(a["bbox"][2] > 1 and a["bbox"][3] > 1 for a in boxes[i])]
        self.items = [(records[i], boxes[i]) for i in ids]

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record, anns = self.items[index]
        path = self.images / record["file_name"]
        try:
            with Image.open(path) as img:
                image = tv_tensors.Image(torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1))
        except OSError as err:
            raise DataError(f"{path}: cannot read this image of the dataset ({err})") from None
        h, w = image.shape[-2:]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        xyxy = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        sample = {"image": image,
                  "boxes": tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(h, w)),
                  "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
                  "iscrowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
                  "image_id": int(record["id"]), "orig_size": (int(h), int(w))}
        return self.transform(sample) if self.transform is not None else sample


def ssd_augmentation() -> list[v2.Transform]:
    """SSD's training augmentation, as mmdet's PhotoMetricDistortion, Expand (x1-4, mean-filled, p=0.5) and
    MinIoURandomCrop (IoU 0.1-0.9 or none, crops of at least 0.3) do it: ThunderNet's reproduction trains so."""
    return [v2.RandomPhotometricDistort(), v2.RandomZoomOut(fill={tv_tensors.Image: MEAN_PIXEL, "others": 0}),
            v2.RandomIoUCrop(min_scale=0.3)]


def resize(recipe: DictConfig, size: int) -> v2.Resize:
    """Resize to ``size``: the shorter side (the longer at most ``max_size``), or a ``size`` square without
    ``keep_ratio``."""
    if not recipe.keep_ratio:
        return v2.Resize((size, size), antialias=True)
    return v2.Resize(size, max_size=int(recipe.max_size) if recipe.max_size > size else None, antialias=True)


def detection_transforms(recipe: DictConfig, train: bool) -> v2.Compose:
    """Training: SSD augmentation if asked, flip, resize to ``min_size`` (or one of ``train_sizes`` at random), drop
    degenerate boxes; evaluation: resize to ``min_size``."""
    steps: list[v2.Transform] = []
    if train and recipe.ssd_augment:
        steps += ssd_augmentation()
    if train and recipe.flip:
        steps.append(v2.RandomHorizontalFlip())
    sizes = [int(s) for s in recipe.train_sizes or [recipe.min_size]] if train else [int(recipe.min_size)]
    steps += [v2.RandomChoice([resize(recipe, s) for s in sizes]) if len(sizes) > 1 else resize(recipe, sizes[0]),
              v2.ClampBoundingBoxes()]
    if train:
        steps.append(v2.SanitizeBoundingBoxes(labels_getter=lambda s: (s["labels"], s["iscrowd"])))
    return v2.Compose(steps)


def split_paths(cfg: DictConfig, split: str) -> tuple[Path, Path]:
    """Annotation file and image folder of ``split``; a missing one raises :class:`DataError` saying what to set."""
    if cfg.source == "shapes":
        root = shapes_root(cfg)
    elif cfg.source == "coco":
        if not cfg.path or not Path(str(cfg.path)).is_dir():
            raise DataError(f"data={cfg.name}: data.path={cfg.path!r} is not a folder. Point data.path at a COCO-format "
                            "dataset: DIR/annotations/instances_train2017.json with images in DIR/train2017/ (and the "
                            "same for val2017); other layouts set data.annotations / data.images / data.*_split.")
        root = Path(str(cfg.path))
    else:
        raise DataError(f"data.source={cfg.source!r} is not a detection source (shapes or coco)")
    annotations, images = root / cfg.annotations.format(split=split), root / cfg.images.format(split=split)
    for what, path in (("annotation file", annotations), ("image folder", images)):
        if not path.exists():
            raise DataError(f"data={cfg.name}: the {what} of split {split!r} is missing: {path}. Check data.path "
                            f"and data.annotations / data.images (now {cfg.annotations!r} / {cfg.images!r}).")
    return annotations, images


def collate(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Images differ in size, so a batch is a dict of lists; the detector's preprocessor pads them."""
    return {key: [s[key] for s in samples] for key in samples[0]}


class DetectionData(L.LightningDataModule):
    """Train and test loaders over COCO-format splits (the shapes view is written in that format)."""

    def __init__(self, cfg: DictConfig, per_device_batch: int) -> None:
        super().__init__()
        self.cfg, self.per_device_batch = cfg, per_device_batch
        self.train_set = CocoDetection(*split_paths(cfg.data, cfg.data.train_split),
                                       detection_transforms(cfg.recipe, train=True), train=True)
        self.test_set = CocoDetection(*split_paths(cfg.data, cfg.data.test_split),
                                      detection_transforms(cfg.recipe, train=False))
        if not len(self.train_set):
            raise DataError(f"data={cfg.data.name}: split {cfg.data.train_split!r} has no image with a box to train on")
        self.class_names = self.train_set.class_names

    def _loader(self, dataset: CocoDetection, batch: int, train: bool) -> DataLoader:
        workers = int(self.cfg.trainer.num_workers)
        return DataLoader(dataset, batch_size=batch, shuffle=train, drop_last=train, collate_fn=collate,
                          num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.per_device_batch, True)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, int(self.cfg.recipe.eval_batch), False)

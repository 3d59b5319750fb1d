"""Joint depth upsampling data (PAC's protocol): NYU Depth v2 labeled, RGB + 16-bit depth folders, and `shapes`.

Every source is, per split, a Hugging Face ``datasets.Dataset`` whose rows say where a sample's RGB guide
and metric depth (metres) are; pixels are read on access. A sample (`JointUpsamplingSample`) is built as
PAC builds it (NVlabs/pacnet ``AssembleJointUpsamplingInputs``): a random crop and flip for training,
the low-resolution depth by centre decimation (the pixel at offset (s-1)//2 of every s x s block),
normalised to [0, 1] by its own min/max (a flat one gets +/-0.5), the guide in [0, 1], and the
high-resolution target with the evaluation border cut off (the network's output is cropped alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import datasets
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from bench.errors import DataError
from bench.schema import DataSource
from tasks.shapes import SPLIT_OFFSETS, cached_view, open_image, png_bytes, render_scene

SHAPES_DEPTH_VERSION = 1
"""Bumped whenever the depth view's output changes, so stale caches are never reused."""
NYU_FILE = "nyu_depth_v2_labeled.mat"
NYU_TRAIN = 1000
"""PAC's split of the 1449 labeled images: the first 1000 train, the last 449 test."""
MM = 1000.0
"""16-bit depth PNGs hold millimetres."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class DepthDataConfig(DataSource):
    """A joint depth upsampling dataset: where it is, its splits and the evaluation border."""

    train_split: str = "train"
    val_split: Optional[str] = None
    test_split: str = "test"
    eval_border: int = 6
    """Output pixels this close to the image border are excluded from loss and metrics (PAC: 6 on NYU)."""
    rgb: str = "{split}/rgb"
    """depthfolder: the RGB folder of a split, relative to ``path``."""
    depth: str = "{split}/depth"
    """depthfolder: the 16-bit PNG depth folder (millimetres, same file stem as the RGB image)."""


FEATURES = datasets.Features({"rgb": datasets.Image(decode=False), "depth": datasets.Image(decode=False),
                              "rgb_file": datasets.Value("string"), "depth_file": datasets.Value("string")})
NYU_FEATURES = datasets.Features({"index": datasets.Value("int32"), "file": datasets.Value("string")})


def write_shapes(folder: Path, seed: int, size: int, counts: dict[str, int]) -> None:
    """The shapes depth view: each scene's RGB image and its depth map (a tilted floor, objects in front), the
    depth stored as a 16-bit PNG in millimetres exactly like `depthfolder`."""
    splits = {}
    for split, count in counts.items():
        rows: dict[str, list] = {"rgb": [], "depth": [], "rgb_file": [], "depth_file": []}
        for i in range(count):
            scene = render_scene(seed, SPLIT_OFFSETS[split] + i, size, distractors=(1, 3),
                                 distractor_scale=(0.12, 0.2))
            rows["rgb"].append({"bytes": png_bytes(scene.image), "path": None})
            rows["depth"].append({"bytes": png_bytes(np.round(scene.depth * MM).astype(np.uint16)), "path": None})
            rows["rgb_file"].append(f"shapes/{split}/{i:07d}.png")
            rows["depth_file"].append(f"shapes/{split}/{i:07d}_depth.png")
        splits[split] = datasets.Dataset.from_dict(rows, features=FEATURES)
    datasets.DatasetDict(splits).save_to_disk(str(folder))


def shapes_splits(cfg: DictConfig) -> dict[str, datasets.Dataset]:
    counts = {"train": int(cfg.train_size), "validation": int(cfg.val_size), "test": int(cfg.test_size)}
    name = (f"shapes-depth-v{SHAPES_DEPTH_VERSION}-seed{cfg.generator_seed}-{cfg.image_size}px-"
            + "-".join(map(str, counts.values())))
    path = cached_view(name, lambda folder: write_shapes(folder, int(cfg.generator_seed), int(cfg.image_size),
                                                        counts))
    return dict(datasets.load_from_disk(str(path)))


def nyu_file(cfg: DictConfig) -> Path:
    """The labeled NYUv2 file: ``data.path`` itself or ``data.path/nyu_depth_v2_labeled.mat``."""
    path = Path(str(cfg.path or ""))
    found = path if path.is_file() else path / NYU_FILE
    if not cfg.path or not found.is_file():
        raise DataError(f"data={cfg.name}: {found} does not exist. Point data.path at {NYU_FILE} (NYU Depth v2's "
                        "labeled set as distributed, an HDF5 file) or at the folder holding it.")
    return found


def nyu_splits(cfg: DictConfig) -> dict[str, datasets.Dataset]:
    """PAC's split of the labeled set as rows (image indices into the HDF5 file; the pixels stay in it)."""
    import h5py

    path = nyu_file(cfg)
    try:
        with h5py.File(path, "r") as f:
            shapes = {key: f[key].shape for key in ("images", "depths")}
    except (OSError, KeyError) as err:
        raise DataError(f"data={cfg.name}: {path} is not NYU Depth v2's labeled .mat (an HDF5 file with 'images' "
                        f"N x 3 x W x H uint8 and 'depths' N x W x H float32): {type(err).__name__}: {err}") from None
    n = shapes["images"][0]
    if len(shapes["images"]) != 4 or shapes["images"][1] != 3 or shapes["depths"] != (n, *shapes["images"][2:]):
        raise DataError(f"data={cfg.name}: {path} holds images {shapes['images']} and depths {shapes['depths']}; "
                        "expected N x 3 x W x H and N x W x H.")
    train = min(NYU_TRAIN, n - 1)
    rows = {"train": range(train), "test": range(train, n)}
    return {split: datasets.Dataset.from_dict({"index": list(r), "file": [str(path)] * len(r)}, features=NYU_FEATURES)
            for split, r in rows.items()}


def folder_pairs(cfg: DictConfig, split: str) -> datasets.Dataset:
    """RGB images and 16-bit depth PNGs of one split, matched by file stem."""
    root = Path(str(cfg.path or ""))
    if not cfg.path or not root.is_dir():
        raise DataError(f"data={cfg.name}: data.path={cfg.path!r} is not a folder. Point data.path at a folder with "
                        f"{cfg.rgb} and {cfg.depth} per split (README, Depth).")
    rgb_dir, depth_dir = root / cfg.rgb.format(split=split), root / cfg.depth.format(split=split)
    for what, folder in (("RGB", rgb_dir), ("depth", depth_dir)):
        if not folder.is_dir():
            raise DataError(f"data={cfg.name}: the {what} folder of split {split!r} is missing: {folder}.")
    images = sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"data={cfg.name}: no image in {rgb_dir}.")
    pairs = []
    for image in images:
        depth = depth_dir / f"{image.stem}.png"
        if not depth.is_file():
            raise DataError(f"data={cfg.name}: the depth map of {image} is missing: expected {depth}.")
        pairs.append((str(image), str(depth)))
    return datasets.Dataset.from_dict({"rgb": [i for i, _ in pairs], "depth": [d for _, d in pairs],
                                       "rgb_file": [i for i, _ in pairs], "depth_file": [d for _, d in pairs]},
                                      features=FEATURES)


def load_splits(cfg: DictConfig) -> dict[str, datasets.Dataset]:
    """The splits ``cfg`` names: ``train``, ``test`` and, where the source has one, ``validation``."""
    if cfg.source == "shapes":
        return shapes_splits(cfg)
    if cfg.source == "nyuv2":
        return nyu_splits(cfg)
    if cfg.source == "depthfolder":
        roles = {"train": cfg.train_split, "validation": cfg.val_split, "test": cfg.test_split}
        return {role: folder_pairs(cfg, split) for role, split in roles.items() if split}
    raise DataError(f"data.source={cfg.source!r} is not a depth source (shapes, nyuv2, depthfolder)")


def read_pair(row: dict[str, Any], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3, depth float32 H x W in metres) of one row of any source."""
    if "index" in row:  # NYUv2: stored W x H, transposed to H x W as PAC does
        import h5py

        with h5py.File(row["file"], "r") as f:
            rgb = np.ascontiguousarray(f["images"][row["index"]].transpose(2, 1, 0))
            depth = np.ascontiguousarray(f["depths"][row["index"]].T).astype(np.float32)
        return rgb, depth
    try:
        with open_image(row["rgb"]) as img:
            rgb = np.asarray(img.convert("RGB"))
        with open_image(row["depth"]) as d:
            if d.mode not in ("I;16", "I;16B", "I", "L"):
                raise DataError(f"data={name}: {row['depth_file']} is a {d.mode} image; depth maps are 16-bit "
                                "single-channel PNGs in millimetres.")
            depth = np.asarray(d).astype(np.float32) / MM
    except OSError as err:
        raise DataError(f"data={name}: cannot read {row['rgb_file']} or {row['depth_file']} ({err})") from None
    if depth.shape != rgb.shape[:2]:
        raise DataError(f"data={name}: the depth map {row['depth_file']} is {depth.shape[1]}x{depth.shape[0]} but its "
                        f"image {row['rgb_file']} is {rgb.shape[1]}x{rgb.shape[0]}.")
    return rgb, depth


def centre_decimate(depth: np.ndarray, scale: int) -> np.ndarray:
    """The pixel at offset (s-1)//2 of every s x s block: PAC's 'center' low-resolution input."""
    offset = (scale - 1) // 2
    return depth[..., offset::scale, offset::scale]


def normalise(low: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``low`` scaled to [0, 1] by its own min/max (a flat map gets min - 0.5, max + 0.5), and that range."""
    lo, hi = float(low.min()), float(low.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return (low - lo) / (hi - lo), lo, hi


def crop_border(x: np.ndarray | torch.Tensor, border: int) -> Any:
    """``x`` without its outer ``border`` pixels (the last two axes)."""
    return x[..., border:x.shape[-2] - border, border:x.shape[-1] - border] if border else x


class JointUpsamplingSamples(Dataset):
    """One split as PAC's samples: ``low`` (1, H/s, W/s) in [0, 1], ``guide`` (3, H, W) in [0, 1], ``target``
    (1, H - 2b, W - 2b) in metres and ``range`` (min, max) of the low-resolution depth."""

    def __init__(self, ds: datasets.Dataset, cfg: DictConfig, scale: int, crop: int | None, flip: bool) -> None:
        self.ds, self.cfg, self.scale, self.crop, self.flip = ds, cfg, scale, crop, flip

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rgb, depth = read_pair(self.ds[index], self.cfg.name)
        h, w = depth.shape
        if self.crop:
            if h < self.crop or w < self.crop:
                raise DataError(f"data={self.cfg.name}: an image of {w}x{h} is smaller than the training crop "
                                f"recipe.crop_size={self.crop}.")
            i, j = (int(torch.randint(0, n - self.crop + 1, ())) for n in (h, w))
            rgb, depth = rgb[i:i + self.crop, j:j + self.crop], depth[i:i + self.crop, j:j + self.crop]
        else:  # evaluation: the largest multiple of the scale (NYU's 640 x 480 is one for 4, 8 and 16)
            h, w = h - h % self.scale, w - w % self.scale
            rgb, depth = rgb[:h, :w], depth[:h, :w]
        if self.flip and torch.rand(()) < 0.5:
            rgb, depth = rgb[:, ::-1], depth[:, ::-1]
        low, lo, hi = normalise(centre_decimate(depth, self.scale))
        target = crop_border(depth, int(self.cfg.eval_border))
        return {"low": torch.from_numpy(np.ascontiguousarray(low, np.float32))[None],
                "guide": torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div(255),
                "target": torch.from_numpy(np.ascontiguousarray(target, np.float32))[None],
                "range": torch.tensor([lo, hi], dtype=torch.float32)}


class DepthData(L.LightningDataModule):
    """Train / validation / test loaders over the configured splits at the run's upsampling scale."""

    def __init__(self, cfg: DictConfig, per_device_batch: int) -> None:
        super().__init__()
        self.cfg, self.per_device_batch = cfg, per_device_batch
        self.splits = load_splits(cfg.data)
        crop = int(cfg.recipe.crop_size)
        if crop % cfg.scale:
            raise DataError(f"recipe.crop_size={crop} is not a multiple of scale={cfg.scale}.")
        if crop <= 2 * int(cfg.data.eval_border):
            raise DataError(f"recipe.crop_size={crop} leaves nothing inside data.eval_border={cfg.data.eval_border}.")

    def _loader(self, role: str, train: bool) -> DataLoader:
        samples = JointUpsamplingSamples(self.splits[role], self.cfg.data, int(self.cfg.scale),
                                         int(self.cfg.recipe.crop_size) if train else None,
                                         bool(self.cfg.recipe.flip) and train)
        workers = int(self.cfg.trainer.num_workers)
        return DataLoader(samples, batch_size=self.per_device_batch if train else int(self.cfg.recipe.eval_batch),
                          shuffle=train, drop_last=train, num_workers=workers, persistent_workers=workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("validation", False) if len(self.splits.get("validation", ())) else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

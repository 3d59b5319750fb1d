"""`task=saliency` data: the shapes view, SOD100K's and DUTS' folder layouts with extra test sets, image/mask
alignment under SOD100K's augmentation, and bad inputs refused with the file named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import tv_tensors

from bench.errors import DataError
from tasks.saliency import data as saliency_data
from tasks.saliency.data import RandomSideTrim, SaliencyData, SaliencyDataConfig
from tasks.shapes import SPLIT_OFFSETS, render_scene

CONF = Path(saliency_data.__file__).parent / "conf" / "data"
SIZES = {"a": (20, 16), "b": (24, 18), "c": (20, 20)}
"""Image stem -> (width, height) of the tiny folder datasets."""


def data_cfg(name: str, **overrides: Any) -> dict[str, Any]:
    """``conf/data/<name>.yaml`` over the schema's defaults (an unknown key fails), with ``overrides``."""
    schema = OmegaConf.structured(SaliencyDataConfig)
    yaml = OmegaConf.load(CONF / f"{name}.yaml")
    assert yaml.pop("defaults") == ["saliency_schema", "_self_"]
    return OmegaConf.to_container(OmegaConf.merge(schema, yaml, overrides))


def run_cfg(data: dict[str, Any], image_size: int = 16, crop_margin: int = 4, flip: bool = True) -> DictConfig:
    """A run config holding what the data module reads."""
    return OmegaConf.create({"data": data, "trainer": {"num_workers": 0},
                             "recipe": {"image_size": image_size, "crop_margin": crop_margin, "flip": flip,
                                        "eval_batch": 2}})


def save(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (RGB or grey uint8) as an image file, its format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_pairs(image_dir: Path, mask_dir: Path, suffixes: tuple[str, ...] = (".jpg", ".png", ".bmp")) -> None:
    """Images of ``SIZES`` with soft grey masks of the same stem, plus a stray file and a mask without image."""
    rng = np.random.default_rng(0)
    for (stem, (w, h)), suffix in zip(SIZES.items(), suffixes):
        save(image_dir / f"{stem}{suffix}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4:, : w // 2], mask[0, 0] = 255, 128  # an antialiased grey edge pixel
        save(mask_dir / f"{stem}.png", mask)
    (image_dir / "notes.txt").write_text("not an image")
    save(mask_dir / "orphan.png", np.zeros((4, 4), np.uint8))


def sod100k(root: Path) -> None:
    """A tiny dataset in SOD100K's layout: ``{split}/images`` + ``{split}/GT`` for train and test."""
    for split in ("train", "test"):
        write_pairs(root / split / "images", root / split / "GT")


def duts(root: Path) -> None:
    """A tiny DUTS as distributed, plus ECSSD and PASCAL-S in the common ``images/`` + ``GT/`` layout."""
    for split in ("DUTS-TR", "DUTS-TE"):
        write_pairs(root / split / f"{split}-Image", root / split / f"{split}-Mask", (".jpg",) * 3)
    for extra in ("ECSSD", "PASCAL-S"):
        write_pairs(root / extra / "images", root / extra / "GT")


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """A normalised (3, H, W) image back in [0, 1]."""
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN), torch.tensor(IMAGENET_DEFAULT_STD)
    return image * std[:, None, None] + mean[:, None, None]


def test_shapes_view_masks_the_main_object_once(bench_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = run_cfg(data_cfg("shapes", image_size=24, train_size=3, val_size=2, test_size=4))
    module = SaliencyData(cfg, per_device_batch=2)
    assert {role: len(ds) for role, ds in module.splits.items()} == {"train": 3, "validation": 2, "test": 4}
    assert module.test_names == ["shapes"]
    (test,) = module.test_dataloader()
    for i in range(4):
        scene = render_scene(0, SPLIT_OFFSETS["test"] + i, 24, distractors=(1, 3), distractor_scale=(0.12, 0.2))
        gt = test.dataset[i]["gt"].numpy()
        assert np.array_equal(gt, scene.visible(scene.objects[0]).astype(np.uint8) * 255)
        assert set(np.unique(gt)) == {0, 255}
    monkeypatch.setattr(saliency_data, "write_shapes", lambda *args: pytest.fail("the view was written twice"))
    assert len(SaliencyData(cfg, per_device_batch=2).splits["train"]) == 3
    assert len(list(bench_cache.iterdir())) == 1


def test_salfolder_pairs_by_stem_and_builds_train_and_eval_samples(tmp_path: Path) -> None:
    sod100k(tmp_path)
    module = SaliencyData(run_cfg(data_cfg("salfolder", path=str(tmp_path))), per_device_batch=2)
    rows = module.splits["train"]
    assert [Path(f).stem for f in rows["image_file"]] == [Path(f).stem for f in rows["mask_file"]] == ["a", "b", "c"]
    assert module.val_dataloader() == [] and module.test_names == ["test"]
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 1, 16, 16) and batch["mask"].dtype == torch.float32
    assert 0 <= batch["mask"].min() and batch["mask"].max() <= 1
    (test,) = module.test_dataloader()
    sample = test.dataset[1]
    assert sample["image"].shape == (3, 16, 16) and sample["name"] == "b"
    assert sample["gt"].dtype == torch.uint8 and sample["gt"].shape == (18, 24) and sample["gt"][0, 0] == 128


def test_soft_mask_is_kept_without_augmentation(tmp_path: Path) -> None:
    sod100k(tmp_path)
    module = SaliencyData(run_cfg(data_cfg("salfolder", path=str(tmp_path)), image_size=20, crop_margin=1,
                                  flip=False), per_device_batch=1)
    mask = module.train_dataloader().dataset[2]["mask"][0]
    expected = np.asarray(Image.open(tmp_path / "train" / "GT" / "c.png"), np.float32) / 255
    assert torch.allclose(mask, torch.from_numpy(expected)) and mask[0, 0] == pytest.approx(128 / 255)


def test_trim_flip_and_resize_move_the_mask_with_the_image(tmp_path: Path) -> None:
    """An image whose red channel is its mask keeps it so after trim, flip and resize; a mask flipped alone does
    not (the mask is not mirror-symmetric)."""
    rng = np.random.default_rng(1)
    mask = (rng.random((18, 24)) > 0.5).astype(np.uint8) * 255
    image = rng.integers(0, 255, (18, 24, 3), dtype=np.uint8)
    image[..., 0] = mask
    save(tmp_path / "train" / "images" / "x.png", image)
    save(tmp_path / "train" / "GT" / "x.png", mask)
    save(tmp_path / "test" / "images" / "x.png", image)
    save(tmp_path / "test" / "GT" / "x.png", mask)
    split = SaliencyData(run_cfg(data_cfg("salfolder", path=str(tmp_path)), image_size=16, crop_margin=6),
                         per_device_batch=1).train_dataloader().dataset
    torch.manual_seed(0)
    for _ in range(8):
        sample = split[0]
        red = denormalise(sample["image"])[0]
        assert torch.allclose(red, sample["mask"][0], atol=1e-5)
        assert not torch.allclose(red, sample["mask"][0].flip(-1), atol=1e-2)
        assert torch.equal(red > 0.5, sample["mask"][0] > 0.5)


def test_side_trim_cuts_each_side_by_at_most_margin_minus_one() -> None:
    torch.manual_seed(0)
    coords = torch.arange(20 * 24, dtype=torch.float32).reshape(1, 20, 24)
    sizes = set()
    for _ in range(30):
        image, mask = RandomSideTrim(4)(tv_tensors.Image(coords), tv_tensors.Mask(coords.clone()))
        image = image.as_subclass(torch.Tensor)
        assert torch.equal(image, mask.as_subclass(torch.Tensor))
        top, left = divmod(int(image[0, 0, 0]), 24)
        bottom, right = 20 - top - image.shape[1], 24 - left - image.shape[2]
        assert max(top, left, bottom, right) <= 3 and min(top, left, bottom, right) >= 0
        sizes.add(image.shape)
    assert len(sizes) > 5


def test_duts_layout_with_extra_test_sets(tmp_path: Path) -> None:
    duts(tmp_path)
    data = data_cfg("duts", path=str(tmp_path), extra_test=["ECSSD", str(tmp_path / "PASCAL-S")])
    module = SaliencyData(run_cfg(data), per_device_batch=2)
    assert module.test_names == ["DUTS-TE", "ECSSD", "PASCAL-S"]
    assert len(module.train_dataloader()) == 1  # 3 images, full batches of 2
    loaders = module.test_dataloader()
    assert [Path(loader.dataset.ds["image_file"][0]).parent.parent.name for loader in loaders] == \
        ["DUTS-TE", "ECSSD", "PASCAL-S"]
    batches = list(loaders[2])
    assert batches[0]["image"].shape == (2, 3, 16, 16) and batches[1]["name"] == ["c"]
    assert [tuple(gt.shape) for b in batches for gt in b["gt"]] == [(h, w) for w, h in SIZES.values()]


def missing_mask(root: Path) -> tuple[str, ...]:
    """Delete a training mask: the message names the mask it expected."""
    (root / "train" / "GT" / "b.png").unlink()
    return (str(root / "train" / "GT" / "b.png"),)


def mismatched_mask(root: Path) -> tuple[str, ...]:
    """A training mask of another size than its image: the message names both files and sizes."""
    save(root / "train" / "GT" / "a.png", np.zeros((5, 7), np.uint8))
    return str(root / "train" / "GT" / "a.png"), str(root / "train" / "images" / "a.jpg"), "7x5", "20x16"


def unreadable_image(root: Path) -> tuple[str, ...]:
    """A training image that is not an image file."""
    (root / "train" / "images" / "a.jpg").write_bytes(b"not a jpeg")
    return (str(root / "train" / "images" / "a.jpg"),)


def missing_split(root: Path) -> tuple[str, ...]:
    """A test split without its mask folder."""
    (root / "test" / "GT").rename(root / "test" / "masks")
    return (str(root / "test" / "GT"),)


@pytest.mark.parametrize("break_it", [missing_mask, mismatched_mask, unreadable_image, missing_split])
def test_bad_folders_are_a_data_error_naming_the_file(tmp_path: Path, break_it: Any) -> None:
    sod100k(tmp_path)
    named = break_it(tmp_path)
    with pytest.raises(DataError) as err:
        module = SaliencyData(run_cfg(data_cfg("salfolder", path=str(tmp_path))), per_device_batch=1)
        list(module.train_dataloader())
    assert all(part in str(err.value) for part in named), str(err.value)


@pytest.mark.parametrize("where", ["path", "extra"])
def test_missing_folders_are_refused_when_the_module_is_built(tmp_path: Path, where: str) -> None:
    sod100k(tmp_path)
    path, extra = (tmp_path / "nowhere", []) if where == "path" else (tmp_path, ["HKU-IS"])
    with pytest.raises(DataError, match="nowhere" if where == "path" else "HKU-IS"):
        SaliencyData(run_cfg(data_cfg("salfolder", path=str(path), extra_test=extra)), per_device_batch=1)

"""`task=segmentation`: the real-format loaders on tiny data, image/mask alignment under augmentation, OHEM, the
metrics on a hand-computed case, both networks with non-default operators and upsamplers, bad inputs, a tiny run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from bench.cli import main
from bench.config import compose
from tasks.segmentation.data import SegmentationData, SegmentationSplit, load_splits, segmentation_transforms
from tasks.segmentation.models import BiSeNetV1, DFANet
from tasks.segmentation.task import SegmentationModule, ohem_cross_entropy, parameter_groups

pytestmark = pytest.mark.usefixtures("bench_cache")  # generated data goes to a fresh cache

TINY = ["task=segmentation", "data.train_size=8", "data.val_size=2", "data.test_size=4", "data.image_size=64"]


def png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    """Write ``array`` as a PNG: grey or RGB, or a palette PNG of indices (how VOC stores its masks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        image = Image.new("P", (array.shape[1], array.shape[0]))
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
        image.putdata(array.flatten().tolist())
    else:
        image = Image.fromarray(array)
    image.save(path)


def cityscapes(root: Path, mask_size: tuple[int, int] = (16, 32)) -> None:
    """A tiny Cityscapes in the official layout: two cities in train, one in val; label ids 7 (road), 26 (car), 0."""
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                    np.random.default_rng(k).integers(0, 255, (16, 32, 3), dtype=np.uint8))
                ids = np.zeros(mask_size, np.uint8)
                ids[:8], ids[8:, :16] = 7, 26
                png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)


def test_cityscapes_loader_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    cityscapes(tmp_path)
    cfg = compose("run", ["task=segmentation", "data=cityscapes", f"data.path={tmp_path}"])
    splits = load_splits(cfg.data)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (4, 2, 2)
    sample = SegmentationSplit(splits["train"], cfg.data, segmentation_transforms(cfg.data, cfg.recipe, False))[0]
    mask = sample["mask"]
    assert sample["image"].shape == (3, 16, 32) and mask.dtype == torch.int64
    assert (mask[:8] == 0).all() and (mask[8:, :16] == 13).all() and (mask[8:, 16:] == 255).all()  # road, car, void


def voc(root: Path, bad: str | None = None) -> None:
    """A tiny VOC 2012 layout: JPEGImages, palette-PNG SegmentationClass (255 border), split lists."""
    for i in range(3):
        png(root / "JPEGImages" / f"2007_{i:06d}.jpg", np.full((12, 20, 3), 40 * i, np.uint8))
        mask = np.zeros((12, 20), np.uint8)
        mask[3:9, 5:15], mask[0] = i + 1, 255
        if bad == "size" and i == 1:
            mask = mask[:10]
        if bad == "class" and i == 2:
            mask[5, 5] = 30
        if not (bad == "missing" and i == 0):
            png(root / "SegmentationClass" / f"2007_{i:06d}.png", mask, palette=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000000\n2007_000001\n2007_000002\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n")


VOC = ["data=segfolder", "data.images=JPEGImages", "data.masks=SegmentationClass",
       "data.split_lists=ImageSets/Segmentation"]


def test_segfolder_reads_voc_palette_masks_and_split_lists(tmp_path: Path) -> None:
    voc(tmp_path)
    cfg = compose("run", ["task=segmentation", *VOC, f"data.path={tmp_path}"])
    data = SegmentationData(cfg, 2)
    assert len(data.splits["train"]) == 3 and len(data.splits["validation"]) == 1
    batch = next(iter(data.test_dataloader()))
    mask = batch["mask"][0]
    assert (mask[0] == 255).all() and (mask[3:9, 5:15] == 3).all() and (mask[10:] == 0).all()


@pytest.mark.parametrize("bad, says", [("missing", "mask of"), ("size", "must match its image"),
                                       ("class", "class id 30")])
def test_bad_segfolder_data_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture, bad: str,
                                             says: str) -> None:
    voc(tmp_path, bad)
    args = ["run", "task=segmentation", *VOC, f"data.path={tmp_path}", "recipe.epochs=1", "recipe.global_batch=2",
            f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert "2007_00000" in err  # names the file


def test_colour_masks_and_missing_folders_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png(tmp_path / "images" / "train" / "a.png", np.zeros((8, 8, 3), np.uint8))
    png(tmp_path / "masks" / "train" / "a.png", np.zeros((8, 8, 3), np.uint8))
    cfg = compose("run", ["task=segmentation", "data=segfolder", f"data.path={tmp_path}", "data.val_split=train",
                          "data.test_split=train"])
    split = SegmentationSplit(load_splits(cfg.data)["train"], cfg.data,
                              segmentation_transforms(cfg.data, cfg.recipe, False))
    with pytest.raises(Exception, match="colour"):
        split[0]
    assert main(["run", "task=segmentation", "data=cityscapes", f"data.path={tmp_path}/nowhere"]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_shapes_view_labels_every_visible_shape() -> None:
    from tasks.shapes import render_scene

    cfg = compose("run", TINY)
    splits = load_splits(cfg.data)
    sample = SegmentationSplit(splits["test"], cfg.data, segmentation_transforms(cfg.data, cfg.recipe, False))[1]
    scene = render_scene(0, 20_000_001, 64, distractors=(1, 3), distractor_scale=(0.12, 0.2))
    assert np.array_equal(sample["mask"].numpy(), scene.class_map())
    assert set(np.unique(scene.class_map())) == {0, *(o.label + 1 for o in scene.objects if scene.visible(o).any())}


def self_encoding_split(overrides: list[str]) -> SegmentationSplit:
    """The training split of shapes with each image replaced by its own mask (grey level 20 x class)."""
    cfg = compose("run", [*TINY, *overrides])
    split = SegmentationSplit(load_splits(cfg.data)["train"], cfg.data,
                              segmentation_transforms(cfg.data, cfg.recipe, True))
    read = split._read

    def encoded(row: dict) -> tuple[np.ndarray, np.ndarray]:
        _, mask = read(row)
        return np.repeat(mask[..., None] * 20, 3, -1).astype(np.uint8), mask

    split._read = encoded
    return split


def agreement(sample: dict, mask: torch.Tensor) -> float:
    decoded = torch.round((sample["image"][0] * 0.25 + 0.5) * 255 / 20)
    valid = mask != 255
    return (decoded[valid] == mask[valid]).float().mean().item()


def test_augmentation_moves_the_mask_with_the_image() -> None:
    """An image that encodes its own mask still encodes it after crop and flip (exactly) and rescaling (up to
    the resampled edges); a mask that drifted from its image (here: flipped alone) would not."""
    torch.manual_seed(0)
    exact = self_encoding_split(["recipe.crop_size=40"])
    for i in range(8):
        sample = exact[i]
        assert sample["mask"].shape == (40, 40) and agreement(sample, sample["mask"]) == 1.0
    scaled = self_encoding_split(["recipe.scale_range=[0.6,1.8]", "recipe.crop_size=48"])
    for i in range(8):
        sample = scaled[i]
        assert sample["mask"].shape == (48, 48)
        aligned, drifted = agreement(sample, sample["mask"]), agreement(sample, sample["mask"].flip(-1))
        assert aligned > 0.85 and aligned > drifted + 0.05, (aligned, drifted)


def test_ohem_keeps_hard_pixels_or_the_hardest_sixteenth() -> None:
    target = torch.zeros(1, 4, 8, dtype=torch.long)
    target[0, 0, 0] = 255
    logits = torch.zeros(1, 2, 4, 8)
    logits[0, 0] = 5.0  # confident and right: loss log(1 + e^-5) ~ 0.0067 < -log(0.7)
    logits[0, 0, 3, :2] = -5.0  # two confidently wrong pixels: loss log(1 + e^5) ~ 5.0067
    hard = math.log1p(math.exp(5))
    assert ohem_cross_entropy(logits, target, 255, 0.7).item() == pytest.approx(hard, rel=1e-4)
    logits[0, 0, 3, :2] = 5.0  # nothing hard: the n/16 hardest (31 valid pixels -> 1) are averaged
    assert ohem_cross_entropy(logits, target, 255, 0.7).item() == pytest.approx(math.log1p(math.exp(-5)), rel=1e-4)
    plain = ohem_cross_entropy(logits, target, 255, None)
    assert plain.item() == pytest.approx(math.log1p(math.exp(-5)), rel=1e-4)
    assert ohem_cross_entropy(logits, torch.full_like(target, 255), 255, 0.7).item() == 0.0


class Fixed(torch.nn.Module):
    """A 'network' whose logits are given (for the metric test)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


@pytest.mark.filterwarnings("ignore:You are trying to")
def test_miou_and_pixel_accuracy_on_a_hand_computed_case() -> None:
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])  # 6 valid pixels
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 1]]])  # ignored pixels' predictions never count
    logits = torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    cfg = compose("run", TINY)
    module = SegmentationModule(Fixed(logits), ["a", "b", "c", "absent"], 255, cfg.recipe, None, channels_last=False)
    module._evaluate({"image": torch.zeros(1, 3, 2, 4), "mask": target}, "test")
    # IoU: class 0: tp 1, fp 1 (pred 0 at a class-2 pixel), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: 1/2.
    # Class 3 is in neither prediction nor label: left out of the mean.
    assert module.metrics["test_mIoU"].compute().item() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert module.metrics["test_pixel_acc"].compute().item() == pytest.approx(4 / 6)
    module.on_test_epoch_end()
    assert module.class_iou["b"] == pytest.approx(2 / 3) and module.class_iou["absent"] == 0.0


def test_bisenet_with_ddf_and_ddf_up_trains_on_odd_sizes() -> None:
    net = BiSeNetV1(5, op="ddf", upsampler="ddf_up").train()
    assert net.op_metadata["op"] == "ddf" and net.op_metadata["upsample_slots"] == ["context.up32", "context.up16"]
    logits, aux = net(torch.randn(2, 3, 50, 70))
    assert logits.shape == (2, 5, 50, 70) and [a.shape for a in aux] == [(2, 5, 50, 70)] * 2
    (logits.mean() + sum(a.mean() for a in aux)).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.eval()(torch.randn(1, 3, 33, 47)).shape == (1, 5, 33, 47)


def test_dfanet_with_dwconv_and_carafe_trains() -> None:
    net = DFANet(3, op="dwconv", upsampler="carafe").train()
    assert len(net.op_metadata["upsample_slots"]) == 5 and net.op_metadata["op"] == "dwconv"
    logits, aux = net(torch.randn(2, 3, 64, 96))
    assert logits.shape == (2, 3, 64, 96) and aux == []
    logits.mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_xception_a_fc_attention_survives_feature_extraction() -> None:
    features = timm.create_model("xception_a", features_only=True, out_indices=(1, 2, 3, 4))
    x = torch.randn(1, 3, 64, 64)
    *_, enc4, fca = features(x)
    assert features.feature_info.channels() == [48, 96, 192, 192] and fca.shape == enc4.shape
    assert not torch.equal(fca, enc4)  # the attention rescales enc4
    assert len(timm.create_model("xception_a", features_only=True)(x)) == 4  # the default stays the four stages


def test_bisenet_parameter_count_is_the_references() -> None:
    """CoinCheung/BiSeNet's BiSeNetV1 (pixel-shuffle heads) on ResNet-18, counted from its layer list."""
    classes = 19
    resnet18 = 11_176_512  # torchvision resnet18 without its fc

    def cbr(cin: int, cout: int, k: int) -> int:
        return cin * cout * k * k + 2 * cout

    spatial = cbr(3, 64, 7) + 2 * cbr(64, 64, 3) + cbr(64, 128, 1)
    context = cbr(512, 128, 3) + 128 * 128 + 256 + cbr(256, 128, 3) + 128 * 128 + 256 + 2 * cbr(128, 128, 3) \
        + cbr(512, 128, 1)
    ffm = cbr(256, 256, 1) + 256 * 64 * 2
    heads = [(256, 256, 8), (128, 64, 8), (128, 64, 16)]
    out = sum(cbr(cin, mid, 3) + mid * classes * up * up + classes * up * up for cin, mid, up in heads)
    assert sum(p.numel() for p in BiSeNetV1(classes).parameters()) == resnet18 + spatial + context + ffm + out


def test_reference_parameter_groups() -> None:
    cfg = compose("run", [*TINY, "recipe=cityscapes"])
    net = BiSeNetV1(3)
    groups = parameter_groups(net, cfg.recipe, 0.01)
    head = {id(p) for m in net.head_modules() for p in m.parameters()}
    for group in groups:
        ids = {id(p) for p in group["params"]}
        assert group["lr"] == pytest.approx(0.1 if ids <= head else 0.01) and (ids <= head or not ids & head)
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else 5e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_unknown_model_and_dfanet_backbone_are_refused(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "task=segmentation", "model=bisenet"]) == 2
    assert "bisenetv1" in capsys.readouterr().err
    assert main(["run", "task=segmentation", "model=dfanet", "backbone=resnet18"]) == 2
    assert "xception_a" in capsys.readouterr().err
    assert main(["run", "task=segmentation", "upsampler=ddf"]) == 2  # a conv-kind operator in an upsample slot


def test_tiny_run_writes_a_segmentation_record(tmp_path: Path) -> None:
    args = [*TINY, "model=dfanet", "op=dwconv", "recipe.epochs=1", "recipe.global_batch=4", "recipe.eval_batch=4",
            "recipe.warmup_iters=1", "task.profile_batch=2", f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 0
    (path,) = sorted((tmp_path / "r").glob("segmentation/*.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "success" and (record["model"], record["op"], record["upsampler"]) == \
        ("dfanet", "dwconv", "bilinear")
    assert record["backbone"] == "xception_a" and record["steps"] == 2
    assert {"mIoU", "pixel_acc", "val_mIoU"} <= set(record["metrics"])
    assert all(0.0 <= v <= 1.0 for v in record["metrics"].values())
    assert set(record["class_iou"]) == {"background", "circle", "square", "triangle", "diamond", "cross", "star",
                                        "ring", "hexagon", "ellipse", "arrow"}
    assert record["efficiency"]["params"] > 0 and record["efficiency"]["macs"] > 0


@pytest.mark.parametrize("op", ["dwconv", "octconv", "scconv", "sru", "cru"])
def test_bisenet_takes_each_conv_operator_that_fits_resnet18(op: str) -> None:
    net = BiSeNetV1(3, op=op).train()
    logits, aux = net(torch.randn(2, 3, 64, 64))
    (logits.mean() + sum(a.mean() for a in aux)).backward()
    assert net.op_metadata["op"] == op and logits.shape == (2, 3, 64, 64)


def test_a_multiscale_operator_is_refused_with_the_reason() -> None:
    with pytest.raises(Exception, match="per-scale tensors"):
        BiSeNetV1(3, op="goctconv")

"""`task=detection`: our FPN against mmdet's, detectors for every upsampler and conv operator, the COCO
loader on a real-format dataset, the schedule, a loss that decreases, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.config import compose
from operators.registry import list_ops

pytest.importorskip("mmdet", reason="detection extra not installed")

from tasks.detection.data import CocoDetection, DetectionData, collate, detection_transforms  # noqa: E402
from tasks.detection.task import build_detector, detector_config, to_mmdet, with_detector_recipe  # noqa: E402
from tasks.training import lr_factor  # noqa: E402

TINY = ["task=detection", "data.image_size=64", "data.train_size=8", "data.val_size=2", "data.test_size=4",
        "recipe.min_size=64", "recipe.max_size=64", "recipe.fpn_channels=16", "recipe.head_convs=1"]
CONV_OPS = ("conv", "dwconv", "octconv", "ddf", "scconv", "sru", "cru")


pytestmark = pytest.mark.usefixtures("bench_cache")  # generated data goes to a fresh cache


def forward_loss_predict(overrides: list[str]) -> None:
    """Build the detector of ``overrides``, then run loss (finite, with gradients) and predict on shapes images."""
    cfg = with_detector_recipe(compose("run", [*TINY, *overrides]))  # quick's backbone is per detector
    data = DetectionData(cfg, 2)
    model_cfg = detector_config(cfg, cfg.backbone or cfg.recipe.default_backbone, cfg.upsampler or "nearest", 10)
    detector = build_detector(model_cfg)
    batch = collate([data.train_set[i] for i in range(2)])
    losses = detector(**detector.data_preprocessor(to_mmdet(batch), True), mode="loss")
    loss, _ = detector.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in detector.backbone.parameters())
    detector.eval()
    batch = collate([data.test_set[i] for i in range(2)])
    with torch.no_grad():
        results = detector(**detector.data_preprocessor(to_mmdet(batch), False), mode="predict")
    assert len(results) == 2 and results[0].pred_instances.bboxes.shape[1] == 4


def test_fpn_with_nearest_is_mmdets_fpn() -> None:
    from mmdet.models.necks import FPN

    from tasks.detection.models import OpFPN

    channels = [32, 64, 128, 256]
    for kwargs in ({"start_level": 1, "add_extra_convs": "on_input"}, {"start_level": 0},
                   {"start_level": 1, "add_extra_convs": "on_output", "relu_before_extra_convs": True}):
        theirs, ours = FPN(channels, 32, 5, **kwargs), OpFPN(channels, 32, 5, **kwargs)
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
        ours.load_state_dict(theirs.state_dict())  # same layers under the same names
        xs = [torch.randn(2, c, 64 // 2**i, 64 // 2**i) for i, c in enumerate(channels)]
        for a, b in zip(theirs(xs), ours(xs), strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("upsampler", list_ops("upsample"))
def test_fpn_takes_every_upsampler(upsampler: str) -> None:
    from tasks.detection.models import OpFPN

    fpn = OpFPN([16, 32, 64], 16, 4, upsampler=upsampler)
    outs = fpn([torch.randn(1, c, 32 // 2**i, 32 // 2**i) for i, c in enumerate((16, 32, 64))])
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4]
    assert len(fpn.upsamplers) == 2 and all(getattr(u, "bench_op", None) == upsampler for u in fpn.upsamplers)


@pytest.mark.parametrize("upsampler", list_ops("upsample"))
def test_retinanet_builds_and_trains_with_every_upsampler(upsampler: str) -> None:
    forward_loss_predict([f"upsampler={upsampler}"])


@pytest.mark.parametrize("upsampler", ["nearest", "ddf_up"])
def test_faster_rcnn_builds_and_trains(upsampler: str) -> None:
    forward_loss_predict(["detector=faster_rcnn", f"upsampler={upsampler}"])


@pytest.mark.parametrize("op", CONV_OPS)
def test_detector_with_each_conv_operator_in_the_backbone(op: str) -> None:
    forward_loss_predict([f"op={op}"])


def test_composed_config_is_mmdets_with_our_parts() -> None:
    cfg = compose("run", ["task=detection", "recipe=coco_1x", "backbone=resnet50", "upsampler=carafe"])
    model = detector_config(cfg, "resnet50", "carafe", 80)
    assert model["type"] == "RetinaNet" and model["backbone"]["type"] == "BenchBackbone"
    assert model["neck"]["type"] == "OpFPN" and model["neck"]["in_channels"] == [256, 512, 1024, 2048]
    assert model["neck"]["upsampler"] == "carafe" and model["neck"]["out_channels"] == 256
    assert model["bbox_head"]["anchor_generator"]["strides"] == [8, 16, 32, 64, 128]
    assert model["bbox_head"]["num_classes"] == 80 and model["bbox_head"]["stacked_convs"] == 4
    faster = detector_config(compose("run", ["task=detection", "recipe=coco_1x", "detector=faster_rcnn"]),
                             "resnet50", "nearest", 20)
    assert faster["rpn_head"]["anchor_generator"]["strides"] == [4, 8, 16, 32, 64]
    assert faster["roi_head"]["bbox_roi_extractor"]["featmap_strides"] == [4, 8, 16, 32]
    assert faster["roi_head"]["bbox_head"]["num_classes"] == 20


def test_coco_1x_schedule() -> None:
    recipe = compose("run", ["task=detection", "recipe=coco_1x"]).recipe
    assert (recipe.global_batch, recipe.lr, recipe.momentum, recipe.weight_decay) == (16, 0.02, 0.9, 1e-4)
    assert (recipe.epochs, list(recipe.milestones), recipe.min_size, recipe.max_size) == (12, [8, 11], 800, 1333)
    per_epoch = 7330  # COCO train2017 at batch 16
    total = 12 * per_epoch
    assert lr_factor(recipe, 0, total, per_epoch) == pytest.approx(0.001)
    assert lr_factor(recipe, 250, total, per_epoch) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(recipe, 500, total, per_epoch) == 1.0
    assert lr_factor(recipe, 8 * per_epoch - 1, total, per_epoch) == 1.0
    assert lr_factor(recipe, 8 * per_epoch, total, per_epoch) == pytest.approx(0.1)
    assert lr_factor(recipe, 11 * per_epoch, total, per_epoch) == pytest.approx(0.01)


def write_coco(root: Path) -> None:
    """A tiny COCO 2017-layout dataset: non-contiguous category ids, a crowd box, an image without boxes."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    for name, size in (("a.jpg", (40, 30)), ("b.png", (20, 20))):
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(root / "val2017" / name)
    coco = {"images": [{"id": 5, "file_name": "a.jpg", "width": 40, "height": 30},
                       {"id": 9, "file_name": "b.png", "width": 20, "height": 20}],
            "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 4, 10, 6], "area": 60, "iscrowd": 0},
                            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1}]}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))


def test_coco_loader_reads_the_real_layout(tmp_path: Path) -> None:
    write_coco(tmp_path)
    ann, images = tmp_path / "annotations" / "instances_val2017.json", tmp_path / "val2017"
    evaluation = CocoDetection(ann, images)
    assert evaluation.class_names == ["cat", "dog"] and len(evaluation) == 2  # ids in order: 3 -> 0, 7 -> 1
    first = evaluation[0]
    assert first["image"].shape == (3, 30, 40) and first["image_id"] == 5 and first["orig_size"] == (30, 40)
    assert first["boxes"].tolist() == [[2, 4, 12, 10], [0, 0, 5, 5]]  # xywh -> xyxy
    assert first["labels"].tolist() == [1, 0] and first["iscrowd"].tolist() == [False, True]
    assert len(evaluation[1]["boxes"]) == 0
    train = CocoDetection(ann, images, train=True)
    assert len(train) == 1 and train[0]["labels"].tolist() == [1]  # crowd dropped, empty image skipped
    recipe = compose("run", ["task=detection", "recipe.min_size=60", "recipe.max_size=100", "recipe.flip=false"]).recipe
    resized = CocoDetection(ann, images, detection_transforms(recipe, train=False))[0]
    assert resized["image"].shape == (3, 60, 80) and resized["boxes"][0].tolist() == [4, 8, 24, 20]


def test_flip_moves_the_boxes_with_the_image(tmp_path: Path) -> None:
    write_coco(tmp_path)
    recipe = compose("run", ["task=detection", "recipe.min_size=30", "recipe.max_size=40"]).recipe
    data = CocoDetection(tmp_path / "annotations" / "instances_val2017.json", tmp_path / "val2017",
                         detection_transforms(recipe, train=True), train=True)
    seen = set()
    for _ in range(30):
        seen.add(tuple(data[0]["boxes"][0].tolist()))
    assert seen == {(2, 4, 12, 10), (28, 4, 38, 10)}


def test_shapes_view_is_written_in_the_coco_layout() -> None:
    cfg = compose("run", TINY).data
    data = DetectionData(compose("run", TINY), 2)
    assert data.class_names[:3] == ["circle", "square", "triangle"] and len(data.test_set) == cfg.test_size
    boxes = [data.test_set[i]["boxes"] for i in range(len(data.test_set))]
    assert all(1 <= len(b) <= 4 for b in boxes)  # the main object and up to three whole distractors
    assert all(((b[:, :2] >= 0) & (b[:, 2:] <= cfg.image_size) & (b[:, 2:] > b[:, :2])).all() for b in boxes)
    again = DetectionData(compose("run", TINY), 2)  # cached: same files, same content
    assert torch.equal(again.test_set[0]["boxes"], data.test_set[0]["boxes"])


def test_missing_or_corrupt_coco_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "task=detection", "data=coco", f"data.path={tmp_path}/nowhere"]) == 2
    assert "data.path" in capsys.readouterr().err
    assert main(["run", "task=detection", "detector=faster_rccn"]) == 2
    assert "Did you mean 'faster_rcnn'" in capsys.readouterr().err
    assert main(["run", "task=classification", "upsampler=carafe"]) == 2
    err = capsys.readouterr().err
    assert "only applies to task=" in err and "task=detection" in err and "task=segmentation" in err
    write_coco(tmp_path)
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{not json")
    assert main(["run", "task=detection", "data=coco", f"data.path={tmp_path}", "data.train_split=val2017"]) == 2
    assert "not a readable COCO instances file" in capsys.readouterr().err


def test_training_decreases_the_loss() -> None:
    cfg = compose("run", [*TINY, "seed=0"])
    torch.manual_seed(0)
    data = DetectionData(cfg, 4)
    detector = build_detector(detector_config(cfg, "resnet18", "nearest", 10))
    batch = collate([data.train_set[i] for i in range(4)])
    opt = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(12):
        loss, _ = detector.parse_losses(detector(**detector.data_preprocessor(to_mmdet(batch), True), mode="loss"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_tiny_run_writes_a_detection_record(tmp_path: Path) -> None:
    args = [*TINY, "op=ddf", "upsampler=ddf_up", "recipe.epochs=1", "recipe.global_batch=4", "recipe.eval_batch=4",
            "recipe.warmup_iters=1", "task.profile_batch=1", f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 0
    (path,) = sorted((tmp_path / "r").glob("detection/*.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "success" and (record["op"], record["upsampler"]) == ("ddf", "ddf_up")
    assert (record["data"], record["recipe"], record["backbone"], record["detector"]) == \
        ("shapes", "quick", "resnet18", "retinanet")
    assert {"mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large"} <= set(record["metrics"])
    assert all(-1.0 <= v <= 1.0 for v in record["metrics"].values())
    assert record["steps"] == 2 and record["mmdet_config"]["neck"]["upsampler"] == "ddf_up"
    assert record["op_metadata"]["op"] == "ddf"
    assert record["efficiency"]["params"] > record["efficiency"]["macs"] / 1e6 > 0

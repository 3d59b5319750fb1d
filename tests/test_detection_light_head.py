"""`task=detection detector=thundernet|light_head_rcnn`: the light-head parts on odd sizes, PS RoI align's wiring,
the CEM's three inputs, SAM's gradient into the RPN features, a train and a predict step of each detector, the
parameter counts we report against the papers, the recipes, and tiny runs through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.cli import main
from bench.config import compose
from bench.errors import ConfigError

pytest.importorskip("mmdet", reason="detection extra not installed")

from tasks.detection.data import DetectionData, collate, detection_transforms  # noqa: E402
from tasks.detection.light_head import (  # noqa: E402
    ContextEnhancement,
    LargeSeparableConv,
    LastLevelRPNHead,
    LightHeadNeck,
    PSRoIAlignExtractor,
    ThunderNetNeck,
)
from tasks.detection.task import (  # noqa: E402
    build_detector,
    detector_config,
    detector_recipe,
    to_mmdet,
    with_detector_recipe,
)

TINY = ["task=detection", "data.image_size=64", "data.train_size=8", "data.val_size=2", "data.test_size=4",
        "recipe.min_size=64", "recipe.max_size=64"]
C4, C5 = (2, 12, 9, 7), (2, 20, 5, 4)
"""Odd-sized C4 and C5 (a 9x7 stride-16 map; its ceil-halved stride-32 map is 5x4)."""

pytestmark = pytest.mark.usefixtures("bench_cache")


def params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_cem_sums_c4_upsampled_c5_and_broadcast_global_c5() -> None:
    cem = ContextEnhancement([12, 20], 245)
    c4, c5 = torch.randn(C4), torch.randn(C5)
    out = cem(c4, c5)
    assert out.shape == (2, 245, 9, 7)
    up = F.interpolate(cem.lateral5(c5), scale_factor=2, mode="nearest")[:, :, :9, :7]  # 10x8 cropped to 9x7
    glb = cem.global5(c5.mean((2, 3), keepdim=True))
    assert glb.shape == (2, 245, 1, 1)  # one vector per image, broadcast over the map
    torch.testing.assert_close(out, cem.lateral4(c4) + up + glb)
    with pytest.raises(ValueError, match="two backbone levels"):
        ContextEnhancement([12, 20, 20], 245)


def test_thundernet_neck_shapes_and_sam_trains_the_rpn_features() -> None:
    neck = ThunderNetNeck([12, 20])
    neck.init_weights()
    sam, rpn = neck([torch.randn(C4), torch.randn(C5)])
    assert sam.shape == (2, 245, 9, 7) and rpn.shape == (2, 256, 9, 7)
    rpn.retain_grad()
    sam.square().mean().backward()  # an R-CNN-side loss only
    assert rpn.grad is not None and rpn.grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in neck.rpn_conv.parameters())
    features, rpn_features = torch.randn(2, 245, 3, 3), torch.randn(2, 256, 3, 3)
    attention = torch.sigmoid(neck.sam.norm(neck.sam.conv(rpn_features)))
    torch.testing.assert_close(neck.sam(features, rpn_features), features * attention)


def test_large_separable_conv_and_light_head_neck_shapes() -> None:
    lsc = LargeSeparableConv(20, 8, 490, 15)
    assert lsc(torch.randn(C5)).shape == (2, 490, 5, 4)
    assert params(lsc) == 2 * (20 * 15 * 8 + 8 + 8 * 15 * 490 + 490)  # k x 1 and 1 x k pairs, with biases
    assert lsc.column[0].kernel_size == (15, 1) and lsc.row[0].kernel_size == (1, 15)
    with pytest.raises(ValueError, match="odd"):
        LargeSeparableConv(20, 8, 490, 14)
    neck = LightHeadNeck([12, 20], mid_channels=8)
    c4 = torch.randn(C4)
    thin, rpn = neck([c4, torch.randn(C5)])
    assert thin.shape == (2, 490, 5, 4) and thin.min() >= 0 and rpn is c4


def test_ps_roi_align_pools_245_channels_to_5_maps_of_7x7() -> None:
    extractor = PSRoIAlignExtractor(dict(type="PSRoIAlign", output_size=7, sampling_ratio=2), 5, [16])
    feat = torch.arange(245.0).view(1, 245, 1, 1).expand(1, 245, 9, 7).contiguous()  # channel i holds i
    rois = torch.tensor([[0.0, 0.0, 0.0, 100.0, 90.0], [0.0, 20.0, 10.0, 60.0, 70.0]])
    out = extractor((feat,), rois)
    assert out.shape == (2, 5, 7, 7)
    c, i, j = torch.meshgrid(torch.arange(5), torch.arange(7), torch.arange(7), indexing="ij")
    torch.testing.assert_close(out, ((c * 7 + i) * 7 + j).float().expand(2, 5, 7, 7))  # bin (i, j) of map c
    with pytest.raises(ValueError, match="pool from 245 channels"):
        extractor((torch.randn(1, 256, 9, 7),), rois)
    with pytest.raises(ValueError, match="PSRoIAlign"):
        PSRoIAlignExtractor(dict(type="RoIAlign", output_size=7), 5, [16])


def test_last_level_rpn_head_reads_the_last_map() -> None:
    head = LastLevelRPNHead(in_channels=16, feat_channels=16, num_convs=0,
                            anchor_generator=dict(type="AnchorGenerator", scales=[1, 2], ratios=[1.0], strides=[16]))
    assert isinstance(head.rpn_conv, torch.nn.Identity)
    scores, deltas = head((torch.randn(2, 245, 9, 7), torch.randn(2, 16, 9, 7)))
    assert [s.shape for s in scores] == [(2, 2, 9, 7)] and [d.shape for d in deltas] == [(2, 8, 9, 7)]
    with pytest.raises(ValueError, match="must equal in_channels"):
        LastLevelRPNHead(in_channels=16, feat_channels=32, num_convs=0,
                         anchor_generator=dict(type="AnchorGenerator", scales=[1], ratios=[1.0], strides=[16]))


def tiny_detector(overrides: list[str]) -> tuple[torch.nn.Module, DetectionData, dict]:
    """The detector of ``overrides`` on tiny shapes data, with its composed mmdet config."""
    cfg = with_detector_recipe(compose("run", [*TINY, *overrides]))
    data = DetectionData(cfg, 2)
    upsampler = None if cfg.detector == "light_head_rcnn" else "nearest"
    model_cfg = detector_config(cfg, cfg.backbone or cfg.recipe.default_backbone, upsampler, len(data.class_names))
    return build_detector(model_cfg), data, model_cfg


@pytest.mark.parametrize("overrides, levels", [
    (["detector=thundernet", "backbone=snet146"], [264, 528]),
    (["detector=thundernet", "backbone=snet49", "op=ddf"], [120, 512]),  # SNet49's C5 is its 512-channel conv5
    (["detector=light_head_rcnn", "backbone=resnet18"], [256, 512]),
])
def test_train_and_predict_step(overrides: list[str], levels: list[int]) -> None:
    torch.manual_seed(0)
    detector, data, model_cfg = tiny_detector(overrides)
    assert model_cfg["neck"]["in_channels"] == levels
    batch = collate([data.train_set[i] for i in range(2)])
    losses = detector(**detector.data_preprocessor(to_mmdet(batch), True), mode="loss")
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= set(losses)
    loss, _ = detector.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    assert [n for n, p in detector.named_parameters() if p.grad is None] == []
    detector.eval()
    batch = collate([data.test_set[i] for i in range(2)])
    with torch.no_grad():
        results = detector(**detector.data_preprocessor(to_mmdet(batch), False), mode="predict")
    assert len(results) == 2 and results[0].pred_instances.bboxes.shape[1] == 4
    assert (results[0].pred_instances.labels < len(data.class_names)).all()


def test_rcnn_loss_reaches_thundernets_rpn_conv_through_sam() -> None:
    detector, data, _ = tiny_detector(["detector=thundernet"])
    batch = collate([data.train_set[i] for i in range(2)])
    losses = detector(**detector.data_preprocessor(to_mmdet(batch), True), mode="loss")
    (losses["loss_cls"] + losses["loss_bbox"]).backward()  # the R-CNN stage's losses alone
    assert detector.neck.rpn_conv[3].weight.grad.abs().sum() > 0
    assert detector.rpn_head.rpn_cls.weight.grad is None


def test_snet49_keeps_its_conv5_for_the_cem() -> None:
    detector, _, model_cfg = tiny_detector(["detector=thundernet", "backbone=snet49"])
    assert model_cfg["backbone"]["out_indices"] == [2, 4]
    final = detector.backbone.body.model.final  # timm's FeatureGetterNet around the pruned SNet49
    assert not isinstance(final, torch.nn.Identity) and final[0].out_channels == 512  # conv5 kept


def test_parameter_counts_we_report() -> None:
    """ThunderNet-SNet146 on COCO (80 classes) and Light-Head R-CNN's head on ResNet-101's 2048-channel C5."""
    cfg = with_detector_recipe(compose("run", ["task=detection", "detector=thundernet", "recipe=thundernet_coco"]))
    thunder = build_detector(detector_config(cfg, "snet146", "nearest", 80))
    assert params(thunder.backbone) == 1_043_748  # SNet146 without its classifier
    assert params(thunder.neck.cem) == 324_135
    assert params(thunder.neck.rpn_conv) + params(thunder.rpn_head) == 69_847 + 32_125
    assert params(thunder.neck.sam) == 63_210
    assert params(thunder.roi_head) == 662_929
    assert params(thunder) == 2_195_994
    large = LargeSeparableConv(2048, 256, 490)
    small = LargeSeparableConv(2048, 64, 490)
    assert (params(large), params(small)) == (19_493_332, 4_874_068)
    cfg = with_detector_recipe(compose("run", ["task=detection", "detector=light_head_rcnn", "recipe=light_head_coco"]))
    model_cfg = detector_config(cfg, "resnet101", None, 80)
    assert model_cfg["rpn_head"]["in_channels"] == 1024 and model_cfg["neck"]["mid_channels"] == 256
    light = build_detector(model_cfg)
    assert params(light.neck) == 19_493_332
    assert params(light.roi_head) == 1_005_568 + 165_969 + 655_680  # fc 490 -> 2048, 81 scores, 80 x 4 deltas
    assert params(light.rpn_head) == 4_719_104 + 7_695 + 30_780  # 3x3 512 conv on C4, 15 anchors
    assert params(light) == 42_500_160 + 19_493_332 + 1_827_217 + 4_757_579


def test_recipes_resolve_per_detector() -> None:
    quick = detector_recipe(compose("run", ["task=detection", "detector=thundernet"]))
    assert (quick.default_backbone, quick.min_size, list(quick.anchor_scales)) == ("snet146", 160, [1, 2, 4, 8])
    assert detector_recipe(compose("run", ["task=detection"])).min_size == 96  # RetinaNet's quick input unchanged
    override = detector_recipe(compose("run", ["task=detection", "detector=light_head_rcnn", "recipe.min_size=64"]))
    assert (override.min_size, override.max_size) == (64, 128)  # a value set on the command line wins
    thunder = detector_recipe(compose("run", ["task=detection", "detector=thundernet", "recipe=thundernet_coco"]))
    assert (thunder.min_size, thunder.keep_ratio, list(thunder.train_sizes), thunder.ssd_augment) == \
        (320, False, [240, 360, 480], True)
    assert (thunder.global_batch, thunder.lr, thunder.epochs, list(thunder.milestones)) == (64, 0.01, 400, [200, 300])
    light = detector_recipe(compose("run", ["task=detection", "detector=light_head_rcnn", "recipe=light_head_coco"]))
    assert (light.default_backbone, light.lr, light.epochs, list(light.milestones)) == ("resnet101", 0.01, 20, [13, 17])
    with pytest.raises(ConfigError, match="a detector's section takes"):
        compose("run", ["task=detection", "+recipe.detectors.thundernet.epochs=3"])
    with pytest.raises(ConfigError, match="Did you mean 'thundernet'"):
        compose("run", ["task=detection", "+recipe.detectors.thundernt.min_size=3"])


def test_square_multi_scale_and_ssd_training_transforms() -> None:
    cfg = with_detector_recipe(compose("run", [*TINY, "detector=thundernet", "recipe.keep_ratio=false",
                                               "recipe.train_sizes=[48,80]", "recipe.ssd_augment=true"]))
    data = DetectionData(cfg, 2)
    data.train_set.transform = detection_transforms(cfg.recipe, train=True)
    torch.manual_seed(0)
    sizes = set()
    for i in range(16):
        sample = data.train_set[i % len(data.train_set)]
        h, w = sample["image"].shape[-2:]
        sizes.add((h, w))
        boxes = sample["boxes"]
        assert len(boxes) == len(sample["labels"]) and (boxes[:, 2:] > boxes[:, :2]).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    assert sizes == {(48, 48), (80, 80)}
    assert data.test_set[0]["image"].shape[-2:] == (64, 64)


def test_config_mistakes_exit_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "task=detection", "detector=light_head_rcnn", "upsampler=carafe"]) == 2
    assert "has no upsampling to swap" in capsys.readouterr().err
    assert main(["run", "task=detection", "detector=thundernet", "backbone=xception_a"]) == 2
    assert "strides [16, 32]" in capsys.readouterr().err
    assert main(["run", "task=detection", "detector=thundernet", "recipe.anchor_scales=[0,2]"]) == 2
    assert "positive scales" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, upsampler, neck", [
    (["detector=thundernet", "backbone=snet146"], "nearest", "ThunderNetNeck"),
    (["detector=light_head_rcnn", "recipe.separable_mid_channels=16"], None, "LightHeadNeck"),
])
def test_tiny_run_writes_a_record(tmp_path: Path, overrides: list[str], upsampler: str | None, neck: str) -> None:
    args = [*TINY, *overrides, "recipe.epochs=1", "recipe.global_batch=4", "recipe.eval_batch=4",
            "recipe.warmup_iters=1", "task.profile_batch=1", f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", *args]) == 0
    (path,) = sorted((tmp_path / "r").glob("detection/*.json"))
    record = json.loads(path.read_text())
    assert record["status"] == "success" and record["detector"] == overrides[0].split("=")[1]
    assert record["upsampler"] == upsampler and record["mmdet_config"]["neck"]["type"] == neck
    assert record["mmdet_config"]["type"] == "TwoStageDetector"
    assert {"mAP", "mAP50", "mAP75"} <= set(record["metrics"])
    assert all(-1.0 <= v <= 1.0 for v in record["metrics"].values())
    assert record["steps"] == 2 and record["efficiency"]["params"] > 0 and record["efficiency"]["macs"] > 0

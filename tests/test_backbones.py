"""Backbones: timm integration, fidelity to the reference networks, and every operator in every backbone."""

from __future__ import annotations

import pytest
import timm
import torch

import backbones  # noqa: F401  registers the models
from operators import OperatorError, list_ops

SMALL = {"op_resnet18": 32, "op_resnet50": 32, "op_resnet20": 16, "op_mobilenetv2": 32, "op_shufflenetv2": 32,
         "snet49": 32, "xception_a": 32}


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet101"])
def test_conv_resnet_equals_timm_parameter_count(name: str) -> None:
    assert params(timm.create_model(f"op_{name}", op="conv")) == params(timm.create_model(name))


def test_parameter_counts_match_the_papers() -> None:
    assert params(timm.create_model("op_resnet50")) == 25_557_032
    assert round(params(timm.create_model("op_resnet50", op="ddf")) / 1e6, 1) == 16.8
    assert round(params(timm.create_model("op_resnet101", op="ddf")) / 1e6, 1) == 28.1
    assert params(timm.create_model("op_mobilenetv2")) == pytest.approx(3.5e6, rel=0.02)
    assert params(timm.create_model("op_shufflenetv2")) == pytest.approx(2.28e6, rel=0.02)
    oct_r50 = timm.create_model("op_resnet50", op="octconv")
    assert params(oct_r50) == 25_557_032  # octave convs split channels, they do not add weights


def test_timm_api_features_and_data_config() -> None:
    assert {"op_resnet50", "op_resnet20", "op_mobilenetv2", "op_shufflenetv2"} <= set(timm.list_models("op_*"))
    m = timm.create_model("op_resnet50", op="ddf", num_classes=10)
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert timm.data.resolve_data_config({}, model=m)["input_size"] == (3, 224, 224)
    assert timm.data.resolve_data_config({}, model=timm.create_model("op_resnet20"))["input_size"] == (3, 32, 32)
    f = timm.create_model("op_resnet50", op="ddf", features_only=True, out_indices=(1, 2, 3, 4))
    feats = f(torch.randn(1, 3, 65, 65))
    assert [t.shape[1] for t in feats] == f.feature_info.channels() == [256, 512, 1024, 2048]
    assert [t.shape[-1] for t in feats] == [17, 9, 5, 3]
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("op_resnet50", pretrained=True)


def test_octresnet_structure_follows_the_paper() -> None:
    m = timm.create_model("op_resnet50", op="octconv", op_kwargs={"alpha": 0.25})
    first, stage4_first, stage4_rest = m.layer1[0], m.layer4[0], m.layer4[1]
    assert first.convs[0].in_scales == [64]  # alpha_in = 0: takes the plain stem output
    assert first.convs[0].out_scales == [48, 16]  # alpha 0.25
    assert stage4_first.convs[-1].out_scales == [2048]  # alpha_out = 0: returns a plain tensor
    assert type(stage4_rest).__name__ == "Bottleneck"  # the rest of stage 4 is plain
    assert first.downsample[0].out_scales == [192, 64]  # the projection is octave too
    y = m(torch.randn(1, 3, 63, 63))  # sizes not divisible by 32 work
    assert y.shape == (1, 1000)
    assert m.op_metadata["octave_alpha"] == 0.25


def test_stride_fallback_is_recorded() -> None:
    m = timm.create_model("op_resnet50", op="scconv")
    assert m.op_metadata["stride_fallback"] == "avgpool2x2_then_op"
    assert m.op_metadata["stride_fallback_slots"] == ["layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    assert timm.create_model("op_resnet50", op="ddf").op_metadata["stride_fallback"] is None


def test_cifar_bottleneck_resnets_put_the_operator_where_the_papers_do() -> None:
    assert round(params(timm.create_model("op_resnet164")) / 1e6, 1) == 1.7  # He et al. 2016: 1.7M
    m = timm.create_model("op_resnet29", op="ddf")
    slots = [name for name, module in m.named_modules() if getattr(module, "bench_op", None) == "ddf"]
    assert slots == [f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3)]  # every bottleneck's 3x3
    assert m.op_metadata["stride_fallback"] is None and m.layer2[0].conv2.stride == 2  # DDF strides natively
    assert timm.create_model("op_resnet29", op="scconv").op_metadata["stride_fallback_slots"] == [
        "layer2.0.conv2", "layer3.0.conv2"]
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_width_multiplier_scales_every_stage() -> None:
    wide = timm.create_model("op_resnet29", width_multiplier=2, op="ddf")
    stages = (wide.layer1, wide.layer2, wide.layer3)
    assert [stage[0].conv1.out_channels for stage in stages] == [32, 64, 128]
    assert wide.num_features == 512 and wide.conv1.out_channels == 32
    assert wide(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    narrow = params(timm.create_model("op_resnet29", width_multiplier=0.5))
    base = params(timm.create_model("op_resnet29"))
    assert 0.2 < narrow / base < 0.3  # the 1x1 convs, most of the weights, shrink with the square of the width
    with pytest.raises(ValueError, match="width_multiplier must be positive"):
        timm.create_model("op_resnet29", width_multiplier=0)


def test_depthwise_slots_stay_depthwise_for_the_baseline() -> None:
    m = timm.create_model("op_mobilenetv2")
    assert m.stages[1][0].spatial[0].groups == 96
    assert timm.create_model("snet49").stages[1][1].branch2[1].kernel_size == (5, 5)


@pytest.mark.parametrize("op", list_ops("conv"))
@pytest.mark.parametrize("name", list(SMALL))
def test_every_operator_in_every_backbone(name: str, op: str) -> None:
    """Each pair builds and trains a step on a small input, or refuses saying which slot and why."""
    try:
        model = timm.create_model(name, op=op, num_classes=5)
    except OperatorError as err:
        message = str(err)
        assert name in message and op in message or "slot" in message, message
        return
    x = torch.randn(2, 3, SMALL[name], SMALL[name])
    y = model(x)
    assert y.shape == (2, 5)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_xception_a_follows_dfanet_table() -> None:
    m = timm.create_model("xception_a", features_only=True)
    assert m.feature_info.channels() == [8, 48, 96, 192]
    assert m.feature_info.reduction() == [2, 4, 8, 16]
    full = timm.create_model("xception_a")
    assert [len(s) for s in full.stages[1:]] == [4, 6, 4]
    assert full.final.fc.out_features == 1000  # fc attention through a 1000-way layer
    assert full.stages[1][0].convs[0].spatial.groups == 8  # separable: depthwise 3x3 in the baseline


@pytest.mark.parametrize("name", list(SMALL))
def test_pooling_follows_timm_unpooled_catavgmax_and_kept_on_reset(name: str) -> None:
    size = SMALL[name]
    x = torch.randn(2, 3, size, size)
    unpooled = timm.create_model(name, num_classes=0, global_pool="")
    features = unpooled(x)
    assert features.dim() == 4 and features.shape[1] == unpooled.num_features == unpooled.head_hidden_size
    both = timm.create_model(name, num_classes=7, global_pool="catavgmax")
    assert both.head_hidden_size == 2 * both.num_features == both.get_classifier().in_features
    assert both(x).shape == (2, 7) and both.forward_head(both.forward_features(x), pre_logits=True).shape == (
        2, 2 * both.num_features)
    both.reset_classifier(3)  # timm's default keeps the pooling it has
    assert both.global_pool.pool_type == "catavgmax" and both(x).shape == (2, 3)
    both.reset_classifier(0, "max")
    assert both.head_hidden_size == both.num_features and both(x).shape == (2, both.num_features)
    with pytest.raises(ValueError, match="needs num_classes=0"):
        timm.create_model(name, num_classes=5, global_pool="")


@pytest.mark.parametrize("name", list(SMALL))
def test_a_misspelt_argument_is_refused_not_ignored(name: str) -> None:
    with pytest.raises(TypeError, match="op_kwarg"):
        timm.create_model(name, op_kwarg={"alpha": 0.25})


@pytest.mark.parametrize("name, op", [("op_resnet18", "conv"), ("op_resnet50", "ddf"), ("op_resnet50", "octconv"),
                                      ("op_resnet20", "conv"), ("op_mobilenetv2", "conv"), ("xception_a", "conv")])
@pytest.mark.parametrize("out_indices", [(0,), (0, 1, 2), (1, 3), (2,)])
def test_features_only_leaves_no_parameter_without_a_gradient(name: str, op: str, out_indices: tuple) -> None:
    model = timm.create_model(name, op=op, features_only=True, out_indices=out_indices)
    feats = model(torch.randn(2, 3, SMALL[name], SMALL[name]))
    assert len(feats) == len(out_indices)
    sum(f.float().mean() for f in feats).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []

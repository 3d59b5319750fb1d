"""timm's model tests (huggingface/pytorch-image-models ``tests/test_models.py``), rewritten for our models.

Each test is named after the timm test it follows and checks what that one checks, over every model we
register with ``op="conv"`` and one non-default operator per code path (the basic block's and the
bottleneck's slot, Oct-ResNet, the staged networks' slots). Inputs are smaller than timm's where the check
does not depend on the size, so the file runs in well under a minute on two CPU cores.
"""

import math

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models import group_parameters, model_entrypoint
from timm.optim import param_groups_layer_decay
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import backbones  # noqa: F401  registers the models
from operators import op_info

OURS = sorted(n for n in timm.list_models() if model_entrypoint(n).__module__.startswith("backbones."))
CASES = [(name, "conv") for name in OURS] + [
    ("op_resnet20", "ddf"), ("op_resnet18", "dwconv"), ("op_resnet50", "ddf"), ("op_resnet50", "octconv"),
    ("op_resnet20", "scconv"), ("op_mobilenetv2", "ddf"), ("op_shufflenetv2", "dwconv"), ("xception_a", "ddf")]
IDS = [f"{name}-{op}" for name, op in CASES]
SIZE = 64
"""Input side for the checks that hold at any size (timm's own tests use the default or a reduced one)."""


def create(name: str, op: str, **kwargs) -> torch.nn.Module:
    return timm.create_model(name, op=op, **kwargs)


def small_input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    side = min(SIZE, model.pretrained_cfg["input_size"][-1])
    return torch.randn(batch, model.pretrained_cfg["input_size"][0], side, side)


def test_every_registered_model_is_covered() -> None:
    assert set(OURS) == {name for name, _ in CASES} and len(OURS) >= 12


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_forward(name: str, op: str) -> None:
    model = create(name, op, num_classes=5).eval()
    out = model(small_input(model))
    assert out.shape == (2, 5) and not torch.isnan(out).any()


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_backward(name: str, op: str) -> None:
    model = create(name, op, num_classes=5)
    model(small_input(model)).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", OURS)
def test_model_default_cfgs(name: str) -> None:
    """At the default input size: unpooled features match ``pool_size`` and ``num_features``; the head's width
    is ``head_hidden_size``; removing the classifier, then the pooling, gives pooled then unpooled features;
    the cfg's classifier and first conv name real weights."""
    model = create(name, "conv").eval()
    cfg = model.pretrained_cfg
    assert model.num_classes == cfg["num_classes"] and model.num_features > 0 and model.head_hidden_size > 0
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[1:] == (model.num_features, *cfg["pool_size"])
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre_logits.shape
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        unpooled = create(name, "conv", num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape
    weights = create(name, "conv").state_dict()
    assert f"{cfg['classifier']}.weight" in weights and f"{cfg['first_conv']}.weight" in weights


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "catavgmax", "fast"])
@pytest.mark.parametrize("name", ["op_resnet20", "op_mobilenetv2"])
def test_every_global_pool_type(name: str, pool: str) -> None:
    model = create(name, "conv", num_classes=3, global_pool=pool)
    x = small_input(model)
    assert model(x).shape == (2, 3)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_forward_features(name: str, op: str) -> None:
    """``features_only`` (timm's default getter): one map per ``feature_info`` entry, its channels and stride."""
    model = create(name, op, features_only=True).eval()
    x = small_input(model, batch=1)
    outputs = model(x)
    assert len(outputs) == len(model.feature_info.channels()) >= 3
    for channels, reduction, out in zip(model.feature_info.channels(), model.feature_info.reduction(), outputs):
        assert out.shape[1] == channels and not torch.isnan(out).any()
        assert out.shape[-1] <= math.ceil(x.shape[-1] / reduction) + 1


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_forward_intermediates(name: str, op: str) -> None:
    """forward_intermediates: the final map equals forward_features, also with gradient checkpointing on."""
    model = create(name, op).eval()
    x = small_input(model, batch=1)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert [t.shape[1] for t in intermediates] == [f["num_chs"] for f in model.feature_info]
        assert torch.allclose(final, model.forward_features(x))
        model.set_grad_checkpointing()
        assert torch.allclose(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, op", [("op_resnet20", "conv"), ("op_resnet50", "octconv"), ("op_mobilenetv2", "ddf"),
                                      ("xception_a", "conv")])
def test_set_grad_checkpointing_recomputes_and_keeps_the_gradients(name: str, op: str) -> None:
    model = create(name, op, num_classes=3, drop_rate=0.0)
    x = small_input(model)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    inner = next(m for m in (model.layer2 if hasattr(model, "layer2") else model.stages[2]).modules()
                 if isinstance(m, torch.nn.BatchNorm2d))
    calls: list[int] = []
    inner.register_forward_hook(lambda *_: calls.append(1))
    model(x).sum().backward()
    assert len(calls) == 2  # forward, then once more in the backward pass
    for n, p in model.named_parameters():  # BatchNorm's batch statistics are the same in the recomputation
        assert torch.allclose(p.grad, plain[n], rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_group_matcher(name: str, op: str) -> None:
    """Every parameter is in one group (stem first, classifier last), fine groups refine coarse ones, and
    timm's layer-wise lr decay builds on them."""
    model = create(name, op)
    fine, coarse = group_parameters(model, model.group_matcher()), group_parameters(model, model.group_matcher(True))
    names = sorted(n for n, _ in model.named_parameters())
    assert sorted(n for group in fine.values() for n in group) == names
    assert len(fine) > len(coarse) >= 3
    first, last = next(iter(fine.values())), list(fine.values())[-1]
    assert any(n.startswith(model.pretrained_cfg["first_conv"]) for n in first)
    assert any(n.startswith(model.pretrained_cfg["classifier"]) for n in last)
    scales = {g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=0.5)}
    assert len(scales) == len(fine) and max(scales) == 1.0


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_in_chans(name: str, op: str) -> None:
    model = create(name, op, in_chans=1, num_classes=2)
    assert model.state_dict()[f"{model.pretrained_cfg['first_conv']}.weight"].shape[1] == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_forward_torchscript(name: str, op: str) -> None:
    if not op_info(op).script:
        pytest.skip(f"operator {op!r} declares script=False (custom autograd functions or per-scale tuples)")
    model = create(name, op, num_classes=4).eval()
    x = small_input(model, batch=1)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), rtol=1e-4, atol=1e-5)


def fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """The whole model as an FX graph (timm's ``_create_fx_model``): our operators and timm's are leaves."""
    tracer = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer)


@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_model_forward_fx(name: str, op: str) -> None:
    model = create(name, op, num_classes=4).eval()
    x = small_input(model, batch=1)
    traced = fx_model(model).eval()
    with torch.no_grad():
        (out,) = traced(x).values()
        assert torch.allclose(out, model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, op", [("op_resnet20", "conv"), ("op_resnet50", "octconv"), ("op_mobilenetv2", "ddf")])
def test_model_backward_fx(name: str, op: str) -> None:
    model = create(name, op, num_classes=4)
    (out,) = fx_model(model).train()(small_input(model)).values()
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("feature_cls", ["fx", "hook"])
@pytest.mark.parametrize("name, op", CASES, ids=IDS)
def test_fx_and_hook_feature_extraction_report_what_they_return(name: str, op: str, feature_cls: str) -> None:
    """timm's other two ``features_only`` paths read module outputs: for Oct-ResNet each octave stage's merged
    map, not its (high, low) pair."""
    model = create(name, op, features_only=True, feature_cls=feature_cls).eval()
    getter = create(name, op, features_only=True).eval()
    x = small_input(model, batch=1)
    with torch.no_grad():
        outputs = model(x)
    outputs = list(outputs.values()) if isinstance(outputs, dict) else outputs
    assert [t.shape[1] for t in outputs] == model.feature_info.channels() == getter.feature_info.channels()

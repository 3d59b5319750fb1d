"""Operator-swappable ResNets: ImageNet ResNet-18/34/50/101, CIFAR ResNet-20/56 and 29/164, and Oct-ResNet.

One operator per block fills the block's spatial slot: the bottleneck's 3x3 ``conv2`` (as the DDF
and SCConv papers do) and the basic block's channel-preserving second 3x3 conv; everything else is
the unmodified network, so ``op="conv"`` is exactly torchvision's/timm's ResNet.

``op="octconv"`` converts the whole network to Oct-ResNet as the OctConv paper's code
(facebookresearch/OctConv) does: every conv of every block (1x1 and 3x3, and the downsample
projections) is an octave conv; stage 1's first block takes the plain stem output (alpha_in=0);
stage 4 is plain: its first block's first 1x1 conv and projection take the octave input and return
plain tensors (alpha_in=alpha, alpha_out=0), and every other conv of stage 4 is plain. At 224x224
and alpha 0.5 this costs 2.367 GMACs, 0.579 of ResNet-50's 4.089 (the paper: 2.4 of 4.1;
benchmarks/octconv_macs.py).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module
from timm.models import build_model_with_cfg, checkpoint, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from backbones.operator_slot import SlotFiller, operator_module_ids
from backbones.staged import ClassifierHead
from operators.conv import Pointwise
from operators.octconv import OctConv

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Module):
    """3x3 (stride, channel change) -> BN -> ReLU -> operator slot (3x3, channel-preserving) -> BN, plus shortcut."""

    expansion = 1

    def __init__(self, fill: SlotFiller, name: str, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = fill(f"{name}.conv2", planes, planes, 3, 1)
        self.bn2 = _bn(planes)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)).add_(shortcut))  # in place into the fresh BN output


class Bottleneck(nn.Module):
    """1x1 -> operator slot (3x3, stride) -> 1x1 (x4), each followed by BN, plus shortcut."""

    expansion = 4

    def __init__(self, fill: SlotFiller, name: str, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = Pointwise(in_channels, planes)
        self.bn1 = _bn(planes)
        self.conv2 = fill(f"{name}.conv2", planes, planes, 3, stride)
        self.bn2 = _bn(planes)
        self.conv3 = Pointwise(planes, out)
        self.bn3 = _bn(out)
        self.act = nn.ReLU(inplace=True)
        self.downsample = _projection(in_channels, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        return self.act(self.bn3(self.conv3(y)).add_(shortcut))  # in place into the fresh BN output


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(Pointwise(in_channels, out_channels, stride), _bn(out_channels))


@register_notrace_module  # per-frequency tuples: a leaf of timm's FX tracing
class OctNorm(nn.Module):
    """BatchNorm (and optionally ReLU) applied per frequency of an octave tensor."""

    def __init__(self, scales: Sequence[int], act: bool) -> None:
        super().__init__()
        self.norms = nn.ModuleList(_bn(c) for c in scales)
        self.act = act

    def forward(self, xs: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        single = isinstance(xs, Tensor)
        ys = [norm(x) for norm, x in zip(self.norms, [xs] if single else xs)]
        ys = [F.relu(y, inplace=True) for y in ys] if self.act else ys
        return ys[0] if single else tuple(ys)


def _add_relu(a: Tensor | tuple, b: Tensor | tuple) -> Tensor | tuple:
    """relu(a + b) written into ``a`` (a fresh BatchNorm output), per frequency for octave tensors."""
    if isinstance(a, Tensor):
        return a.add_(b).relu_()
    return tuple(x.add_(y).relu_() for x, y in zip(a, b))


@register_notrace_module
class OctBlock(nn.Module):
    """A basic block or bottleneck whose every conv is an octave conv (Oct-ResNet)."""

    def __init__(self, bottleneck: bool, in_channels: int, planes: int, stride: int, alpha_in: float,
                 alpha_out: float, alpha: float) -> None:
        super().__init__()
        self.expansion = 4 if bottleneck else 1
        out = planes * self.expansion
        mid_alpha = alpha_out if alpha_out == 0 else alpha
        if bottleneck:
            # where the block returns a plain tensor (stage 4's first), its first 1x1 conv already does, as in
            # the authors' code: stage 4's 3x3 convs never run on its 3.5x3.5 (at 224) low-frequency maps
            specs = [(in_channels, planes, 1, 1, alpha_in, mid_alpha),
                     (planes, planes, 3, stride, mid_alpha, mid_alpha), (planes, out, 1, 1, mid_alpha, alpha_out)]
        else:
            specs = [(in_channels, planes, 3, stride, alpha_in, mid_alpha), (planes, out, 3, 1, mid_alpha, alpha_out)]
        self.convs = nn.ModuleList(OctConv(ci, co, k, s, a_in, a_out) for ci, co, k, s, a_in, a_out in specs)
        self.norms = nn.ModuleList(OctNorm(conv.out_scales, act=i < len(specs) - 1)
                                   for i, conv in enumerate(self.convs))
        self.downsample = None
        if stride != 1 or in_channels != out or alpha_in != alpha_out:  # also where octave layout changes
            proj = OctConv(in_channels, out, 1, stride, alpha_in, alpha_out)
            self.downsample = nn.Sequential(proj, OctNorm(proj.out_scales, act=False))

    def forward(self, x: Tensor | tuple) -> Tensor | tuple:
        shortcut = x if self.downsample is None else self.downsample(x)
        for conv, norm in zip(self.convs, self.norms):
            x = norm(conv(x))
        return _add_relu(x, shortcut)


@register_notrace_module
class OctaveFeature(nn.Module):
    """An octave stage's output as one full-width tensor (`merge_octave`): the module that timm's hook and FX
    feature extraction read for an octave stage, whose own output is a (high, low) pair."""

    def forward(self, x: tuple[Tensor, Tensor]) -> Tensor:
        return merge_octave(x)


class ResNet(ClassifierHead, nn.Module):
    """ResNet with an operator in every block's spatial slot; ImageNet (4 stages) or CIFAR (3 stages) stem.

    ``width_multiplier`` scales the stem and every stage's width (16/32/64 or 64/128/256/512), as wide ResNets do.
    """

    classifier_attr = "fc"

    def __init__(self, block: str, layers: Sequence[int], op: str = "conv", op_kwargs: Mapping[str, Any] | None = None,
                 num_classes: int = 1000, in_chans: int = 3, cifar_stem: bool = False, alpha: float = 0.5,
                 global_pool: str = "avg", drop_rate: float = 0.0, name: str = "resnet",
                 width_multiplier: float = 1.0) -> None:
        super().__init__()
        if width_multiplier <= 0:
            raise ValueError(f"{name}: width_multiplier must be positive, got {width_multiplier}")
        bottleneck = block == "bottleneck"
        block_cls = Bottleneck if bottleneck else BasicBlock
        expansion = block_cls.expansion
        self.num_classes, self.drop_rate, self.grad_checkpointing = num_classes, drop_rate, False
        base = (16, 32, 64) if cifar_stem else (64, 128, 256, 512)
        widths = tuple(max(1, round(w * width_multiplier)) for w in base)
        stem = widths[0]
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_chans, stem, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_chans, stem, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = _bn(stem)
        self.act1 = nn.ReLU(inplace=True)
        octave = op == "octconv"
        self.octave_features = nn.ModuleDict()
        fill = SlotFiller(op, op_kwargs or {}, network=name)
        channels, reduction = stem, 1 if cifar_stem else 4
        self.feature_info = [dict(num_chs=stem, reduction=reduction // 2 if not cifar_stem else 1, module="act1")]
        alpha = float((op_kwargs or {}).get("alpha", alpha)) if octave else 0.0
        for s, (width, depth) in enumerate(zip(widths, layers)):
            stride = 1 if s == 0 else 2
            blocks = []
            for b in range(depth):
                slot = f"layer{s + 1}.{b}"
                if octave:
                    last_stage = s == len(widths) - 1
                    a_in = 0.0 if (s == 0 and b == 0) or (last_stage and b > 0) else alpha
                    a_out = 0.0 if last_stage else alpha
                    if last_stage and b > 0:
                        blocks.append(block_cls(SlotFiller("conv", {}, f"oct-{name}"), slot, channels, width))
                    else:
                        blocks.append(OctBlock(bottleneck, channels, width, stride if b == 0 else 1, a_in, a_out,
                                               alpha))
                else:
                    blocks.append(block_cls(fill, slot, channels, width, stride if b == 0 else 1))
                channels = width * expansion
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
            reduction *= stride
            module = f"layer{s + 1}"
            if octave and s < len(widths) - 1:  # stages 1-3 return (high, low) pairs
                self.octave_features[module] = OctaveFeature()
                module = f"octave_features.{module}"
            self.feature_info.append(dict(num_chs=channels, reduction=reduction, module=module))
        self.num_stages = len(widths)
        if self.num_stages == 3:
            self.layer4 = nn.Identity()
        self.num_features = channels
        self.reset_classifier(num_classes, global_pool)
        self.op_metadata = {**fill.metadata(), "octave_alpha": alpha if octave else None}
        self._init_weights()

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Also replace the stages after the last feature taken by Identity, as timm does: unused parameters
        would get no gradient (DDP then fails without find_unused_parameters)."""
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        for s in range(max(take) + 1, self.num_stages + 1):
            setattr(self, f"layer{s}", nn.Identity())
        return take

    def _init_weights(self) -> None:
        """torchvision's init for the network's own layers; operators keep the init their paper specifies."""
        inside_ops = operator_module_ids(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and id(m) not in inside_ops:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d) and id(m) not in inside_ops:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stem and stage outputs (timm's feature API); octave stages are merged into one full-width tensor."""
        count = self.num_stages + 1
        take, max_index = feature_take_indices(count, indices)
        feats = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take:
            feats.append(x)
        x = self.maxpool(x)
        for s in range(1, count):
            if stop_early and s > max_index:
                break
            x = getattr(self, f"layer{s}")(x)
            if s in take:
                feats.append(merge_octave(x))
        if intermediates_only:
            return feats
        return merge_octave(x), feats

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay, as timm's ResNet: the stem, then each stage or block."""
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    def forward_features(self, x: Tensor) -> Tensor:
        if len(self.octave_features) or (self.grad_checkpointing and not torch.jit.is_scripting()):
            return self._forward_stages(x)
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))  # named, not looked up, so that TorchScript compiles it
        return self.layer4(x)  # an Identity in the 3-stage CIFAR networks

    @torch.jit.unused
    def _forward_stages(self, x: Tensor) -> Tensor:
        """The stages one by one: each checkpointed under `set_grad_checkpointing`; each octave stage's pair
        also goes through its `OctaveFeature`, whose merged map only feature extraction reads (a concatenation
        per stage, negligible beside the stage)."""
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for s in range(1, self.num_stages + 1):
            name = f"layer{s}"
            stage = getattr(self, name)
            x = checkpoint(stage, x) if self.grad_checkpointing else stage(x)
            if name in self.octave_features:
                self.octave_features[name](x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def merge_octave(x: Tensor | tuple) -> Tensor:
    """One tensor from an octave pair: the low-frequency part upsampled (nearest) and concatenated."""
    if isinstance(x, Tensor):
        return x
    high, low = x
    return torch.cat([high, F.interpolate(low, size=high.shape[-2:], mode="nearest")], dim=1)


def _cfg(cifar: bool = False, **kwargs: Any) -> dict[str, Any]:
    if cifar:
        base = dict(input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0, mean=CIFAR_MEAN, std=CIFAR_STD,
                    num_classes=10)
    else:
        base = dict(input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875, mean=IMAGENET_DEFAULT_MEAN,
                    std=IMAGENET_DEFAULT_STD, num_classes=1000)
    return dict(url="", interpolation="bilinear", first_conv="conv1", classifier="fc", **base, **kwargs)


default_cfgs = generate_default_cfgs({
    "op_resnet18": _cfg(), "op_resnet34": _cfg(), "op_resnet50": _cfg(), "op_resnet101": _cfg(),
    "op_resnet20": _cfg(cifar=True), "op_resnet56": _cfg(cifar=True),
    "op_resnet29": _cfg(cifar=True), "op_resnet164": _cfg(cifar=True),
})


def _create(variant: str, block: str, layers: Sequence[int], pretrained: bool = False, **kwargs: Any) -> ResNet:
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights ship with bench (offline suite); use pretrained=False")
    features = tuple(range(len(layers) + 1))  # stem, then every stage
    return build_model_with_cfg(ResNet, variant, pretrained, block=block, layers=layers, name=variant,
                                feature_cfg=dict(feature_cls="getter", out_indices=features), **kwargs)


@register_model
def op_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-18 with the operator in each basic block's second 3x3 conv."""
    return _create("op_resnet18", "basic", (2, 2, 2, 2), pretrained, **kwargs)


@register_model
def op_resnet34(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-34 with the operator in each basic block's second 3x3 conv."""
    return _create("op_resnet34", "basic", (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def op_resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-50 with the operator in each bottleneck's 3x3 conv2."""
    return _create("op_resnet50", "bottleneck", (3, 4, 6, 3), pretrained, **kwargs)


@register_model
def op_resnet101(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """ResNet-101 with the operator in each bottleneck's 3x3 conv2."""
    return _create("op_resnet101", "bottleneck", (3, 4, 23, 3), pretrained, **kwargs)


@register_model
def op_resnet20(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 wide, projection shortcuts)."""
    return _create("op_resnet20", "basic", (3, 3, 3), pretrained, cifar_stem=True, **kwargs)


@register_model
def op_resnet56(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR ResNet-56 (3 stages of 9 basic blocks)."""
    return _create("op_resnet56", "basic", (9, 9, 9), pretrained, cifar_stem=True, **kwargs)


@register_model
def op_resnet29(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR bottleneck ResNet-29 (3 stages of 3 bottlenecks, 16/32/64 wide, x4 outputs): the CPU-sized member of
    ResNet-164's family, the operator in every bottleneck's 3x3 conv2, strided ones included."""
    return _create("op_resnet29", "bottleneck", (3, 3, 3), pretrained, cifar_stem=True, **kwargs)


@register_model
def op_resnet164(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """CIFAR bottleneck ResNet-164 (3 stages of 18 bottlenecks; He et al., Identity Mappings, ECCV 2016, its
    original post-activation form: 1.7M parameters)."""
    return _create("op_resnet164", "bottleneck", (18, 18, 18), pretrained, cifar_stem=True, **kwargs)

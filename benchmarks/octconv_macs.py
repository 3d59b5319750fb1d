"""Does our Oct-ResNet-50 cost what the OctConv paper's conversion costs, stage by stage?

The OctConv paper (Chen et al., ICCV 2019) reports 2.4 GFLOPs (multiply-accumulates) for
Oct-ResNet-50 at alpha = 0.5 against 4.1 for ResNet-50; the public PyTorch port
d-li14/octconv.pytorch reports 2.367 of 4.089. This script counts, at 224 x 224 and batch 1, the
MACs of the stem, each of the four stages and the head of

* ``resnet50``: ``timm.create_model("op_resnet50", op="conv")`` (the denominator of every ratio),
* ``ours``: ``timm.create_model("op_resnet50", op="octconv")`` as built by backbones/resnet.py,
* ``reference``: an independent re-expression, written here from a reading of the authors' code
  (facebookresearch/OctConv) and of d-li14/octconv.pytorch, of their conversion: every conv of
  every block and every projection shortcut octave; stage 1's first block takes the plain stem
  output (alpha_in = 0); the whole of stage 4 is plain, so the octave-to-plain transition is the
  first 1x1 conv of stage 4's first block and its projection; a stride-2 octave conv
  average-pools X^H before H->H and twice before H->L, pools X^L before L->L, and runs L->H on X^L
  as it is (at stride 2, X^L already has the high output's resolution), with no upsampling,

with two counters: ``bench.measure.count_macs`` (registered operators' own formulas, which also
count average-pooling accumulations) and ``bench.measure.counter_macs`` (torch's FlopCounterMode:
convolutions and the classifier only, the convention of the paper's and the port's GFLOPs). It
prints one table per counter and, with ``--json FILE``, writes every count to FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backbones  # noqa: E402,F401  (registers op_resnet50)
from bench.measure import count_macs, counter_macs  # noqa: E402

PAPER = {"resnet50_gmacs": 4.1, "oct_resnet50_gmacs": 2.4, "alpha": 0.5}
PORT = {"resnet50_gmacs": 4.089, "oct_resnet50_gmacs": 2.367}
PARTS = ("stem", "layer1", "layer2", "layer3", "layer4", "head")


def _pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 2, ceil_mode=True)


class RefOctConv(nn.Module):
    """The reference's octave conv: four separate paths, low channels = int(alpha * channels).

    ``pooled_l2h=True`` is the other reading of a strided octave conv (bench's before the fix): L->H
    also average-pools X^L first and then upsamples its output.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int, a_in: float, a_out: float,
                 pooled_l2h: bool = False) -> None:
        super().__init__()
        lo_in, lo_out = int(a_in * cin), int(a_out * cout)
        hi_in, hi_out = cin - lo_in, cout - lo_out
        self.stride, self.hi_out, self.lo_out, self.pooled_l2h = stride, hi_out, lo_out, pooled_l2h

        def conv(ci: int, co: int) -> nn.Conv2d | None:
            return nn.Conv2d(ci, co, k, 1, k // 2, bias=False) if ci and co else None

        self.h2h, self.h2l, self.l2h, self.l2l = conv(hi_in, hi_out), conv(hi_in, lo_out), conv(lo_in, hi_out), \
            conv(lo_in, lo_out)

    def forward(self, x: Tensor | tuple) -> tuple[Tensor, Tensor | None]:
        x_h, x_l = x if isinstance(x, tuple) else (x, None)
        if self.stride == 2:
            x_h = _pool(x_h)
        y_h = self.h2h(x_h)
        y_l = self.h2l(_pool(x_h)) if self.h2l is not None else None
        if x_l is not None:
            upsample = self.stride == 1 or self.pooled_l2h
            l2h = self.l2h(_pool(x_l) if self.stride == 2 and self.pooled_l2h else x_l)
            y_h = y_h + (F.interpolate(l2h, size=y_h.shape[-2:], mode="nearest") if upsample else l2h)
            if self.l2l is not None:
                y_l = y_l + self.l2l(_pool(x_l) if self.stride == 2 else x_l)
        return y_h, y_l


class RefConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, a_in: float, a_out: float, act: bool,
                 pooled_l2h: bool = False) -> None:
        super().__init__()
        self.conv = RefOctConv(cin, cout, k, stride, a_in, a_out, pooled_l2h)
        self.bn_h = nn.BatchNorm2d(self.conv.hi_out)
        self.bn_l = nn.BatchNorm2d(self.conv.lo_out) if self.conv.lo_out else None
        self.act = act

    def forward(self, x: Tensor | tuple) -> tuple[Tensor, Tensor | None]:
        y_h, y_l = self.conv(x)
        y_h = self.bn_h(y_h)
        y_l = self.bn_l(y_l) if y_l is not None else None
        if self.act:
            y_h, y_l = F.relu(y_h), (F.relu(y_l) if y_l is not None else None)
        return y_h, y_l


class RefBottleneck(nn.Module):
    """conv1 takes ``alphas[0]`` to ``alphas[1]``, conv2 to ``alphas[2]``, conv3 to ``alphas[3]``."""

    def __init__(self, cin: int, planes: int, stride: int, alphas: tuple[float, float, float, float],
                 pooled_l2h: bool = False) -> None:
        super().__init__()
        out = 4 * planes
        a_in, a1, a2, a_out = alphas
        self.conv1 = RefConvBN(cin, planes, 1, 1, a_in, a1, True, pooled_l2h)
        self.conv2 = RefConvBN(planes, planes, 3, stride, a1, a2, True, pooled_l2h)
        self.conv3 = RefConvBN(planes, out, 1, 1, a2, a_out, False, pooled_l2h)
        self.downsample = RefConvBN(cin, out, 1, stride, a_in, a_out, False, pooled_l2h) \
            if stride != 1 or cin != out else None

    def forward(self, x: Tensor | tuple) -> tuple[Tensor, Tensor | None]:
        identity = x if isinstance(x, tuple) else (x, None)
        if self.downsample is not None:
            identity = self.downsample(x)
        y_h, y_l = self.conv3(self.conv2(self.conv1(x)))
        y_h = F.relu(y_h + identity[0])
        y_l = F.relu(y_l + identity[1]) if y_l is not None else None
        return y_h, y_l


class RefOctResNet50(nn.Module):
    """The reference conversion of ResNet-50 (torchvision v1.5: stride on the 3x3) at ``alpha``.

    The two choices in which bench's conversion differed before the fix can be switched:
    ``transition="conv2"`` keeps stage 4's first 1x1 conv octave and makes its strided 3x3 the
    octave-to-plain conv; ``pooled_l2h=True`` pools X^L before L->H in strided convs (see RefOctConv).
    """

    def __init__(self, alpha: float = 0.5, num_classes: int = 1000, transition: str = "conv1",
                 pooled_l2h: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        for s, (planes, depth) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            last = s == 3
            blocks = []
            for b in range(depth):
                a_in = 0.0 if (s == 0 and b == 0) or (last and b > 0) else alpha
                a_out = 0.0 if last else alpha
                a1 = alpha if last and b == 0 and transition == "conv2" else a_out
                blocks.append(RefBottleneck(channels, planes, (1 if s == 0 else 2) if b == 0 else 1,
                                            (a_in, a1, a_out, a_out), pooled_l2h))
                channels = 4 * planes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        return _head(self)(x[0])


def _head(model: nn.Module) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), model.fc)


def per_part(model: nn.Module, counter, size: int = 224) -> dict[str, int]:
    """MACs of the stem, of each stage on the input the previous one gives it, and of the head."""
    x: Tensor | tuple = torch.randn(1, 3, size, size)
    counts = {}
    with torch.no_grad():
        stem = nn.Sequential(model.conv1, model.bn1, model.act1, model.maxpool)
        counts["stem"] = counter(stem, x)
        x = stem(x)
        for s in range(1, 5):
            layer = getattr(model, f"layer{s}")
            counts[f"layer{s}"] = counter(layer, x)
            x = layer(x)
        high = x[0] if isinstance(x, tuple) else x
        counts["head"] = counter(_head(model), high)
    counts["total"] = sum(counts[p] for p in PARTS)
    return counts


def table(title: str, counts: dict[str, dict[str, int]]) -> str:
    base = counts["resnet50"]
    lines = [f"{title}", f"{'part':<8} {'ResNet-50':>10} {'ours':>10} {'ratio':>6} {'reference':>10} {'ratio':>6}"
             f" {'ours-ref':>9}"]
    for part in (*PARTS, "total"):
        o, r, b = counts["ours"][part], counts["reference"][part], base[part]
        lines.append(f"{part:<8} {b / 1e6:>9.1f}M {o / 1e6:>9.1f}M {o / b:>6.3f} {r / 1e6:>9.1f}M {r / b:>6.3f}"
                     f" {(o - r) / 1e6:>+8.1f}M")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--json", type=Path, help="write the counts to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    models = {
        "resnet50": timm.create_model("op_resnet50", op="conv").eval(),
        "ours": timm.create_model("op_resnet50", op="octconv", op_kwargs={"alpha": args.alpha}).eval(),
        "reference": RefOctResNet50(args.alpha).eval(),
    }
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    results = {}
    for counter_name, counter in (("count_macs", count_macs), ("counter_macs", counter_macs)):
        counts = {name: per_part(m, counter, args.size) for name, m in models.items()}
        results[counter_name] = counts
        print(table(f"{counter_name} at {args.size}x{args.size}, batch 1, alpha {args.alpha}", counts))
        print()
    variants = {
        "reference (stage-4 transition at conv1, L->H unpooled)": dict(transition="conv1", pooled_l2h=False),
        "stage-4 transition at conv2 only": dict(transition="conv2", pooled_l2h=False),
        "strided L->H pooled only": dict(transition="conv1", pooled_l2h=True),
        "both (bench before the fix)": dict(transition="conv2", pooled_l2h=True),
    }
    base = results["counter_macs"]["resnet50"]
    variant_counts = {}
    print("counter_macs of the reference with each choice switched (MACs in M, ratio to ResNet-50)")
    print(f"{'variant':<56} " + " ".join(f"{p:>7}" for p in (*PARTS[1:5], "total")) + "  ratio")
    for name, kwargs in variants.items():
        counts = per_part(RefOctResNet50(args.alpha, **kwargs).eval(), counter_macs, args.size)
        variant_counts[name] = {"choices": kwargs, "macs": counts}
        print(f"{name:<56} " + " ".join(f"{counts[p] / 1e6:>7.1f}" for p in (*PARTS[1:5], "total"))
              + f"  {counts['total'] / base['total']:.3f}")
    print()
    image = torch.randn(1, 3, args.size, args.size)
    whole = {c: {name: counter(m, image) for name, m in models.items()}
             for c, counter in (("count_macs", count_macs), ("counter_macs", counter_macs))}
    assert all(whole[c][name] == results[c][name]["total"] for c in whole for name in models), "parts != whole"
    ratio = {c: {name: results[c][name]["total"] / results[c]["resnet50"]["total"] for name in ("ours", "reference")}
             for c in results}
    print(f"paper: {PAPER['oct_resnet50_gmacs']} / {PAPER['resnet50_gmacs']} GMACs = "
          f"{PAPER['oct_resnet50_gmacs'] / PAPER['resnet50_gmacs']:.3f}; d-li14 port: {PORT['oct_resnet50_gmacs']} / "
          f"{PORT['resnet50_gmacs']} = {PORT['oct_resnet50_gmacs'] / PORT['resnet50_gmacs']:.3f}")
    for c, r in ratio.items():
        print(f"{c}: ours {r['ours']:.3f}, reference {r['reference']:.3f} of ResNet-50")
    print(f"parameters: {params}")
    if args.json:
        record = {"question": __doc__.split("\n\n")[0], "size": args.size, "batch": 1, "alpha": args.alpha,
                  "paper": PAPER, "port_readme": PORT, "parameters": params, "macs": results,
                  "reference_variants_counter_macs": variant_counts,
                  "ratio_to_resnet50": ratio}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

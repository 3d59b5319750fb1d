"""OctConv and gOctConv semantics: paths, resampling, odd sizes, and the MAC saving."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.measure import counter_macs
from operators import OperatorError, create_op


def _zero_except(module: nn.Module, keep: str, rows: slice = slice(None)) -> None:
    """Zero every path's weights except ``keep`` (output ``rows`` of it), which becomes an identity 1x1 map."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.zero_()
            if name.startswith(keep) and p.dim() == 4:
                block = p[rows, :, p.shape[2] // 2, p.shape[3] // 2]
                block.copy_(torch.eye(block.shape[0], block.shape[1]))


def test_fused_low_conv_is_the_two_paper_paths() -> None:
    """from_low = [L->H ; L->L]: zeroing one half leaves exactly the other path."""
    m = create_op("octconv", 4, 4, kernel_size=1)
    x_h, x_l = torch.randn(1, 2, 6, 6), torch.randn(1, 2, 3, 3)
    _zero_except(m, "from_low", rows=slice(2, 4))  # only L->L
    y_h, y_l = m((x_h, x_l))
    assert torch.equal(y_h, torch.zeros_like(y_h)) and torch.allclose(y_l, x_l)


def test_alpha_zero_equals_plain_conv() -> None:
    oct_ = create_op("octconv", 6, 10, alpha_in=0.0, alpha_out=0.0)
    x = torch.randn(2, 6, 9, 9)
    assert torch.allclose(oct_(x), F.conv2d(x, oct_.h2h.weight, padding=1), atol=1e-6)


def test_first_middle_last_layers_and_odd_sizes() -> None:
    first = create_op("octconv", 3, 8, alpha_in=0.0, alpha_out=0.5)
    middle = create_op("octconv", 8, 16, stride=2)
    last = create_op("octconv", 16, 4, alpha_in=0.5, alpha_out=0.0)
    h, l = first(torch.randn(1, 3, 11, 11))
    assert h.shape == (1, 4, 11, 11) and l.shape == (1, 4, 6, 6)
    h, l = middle((h, l))
    assert h.shape == (1, 8, 6, 6) and l.shape == (1, 8, 3, 3)
    assert last((h, l)).shape == (1, 4, 6, 6)


def test_low_to_high_is_nearest_and_high_to_low_is_average_pool() -> None:
    m = create_op("octconv", 4, 4, kernel_size=1)
    x_h, x_l = torch.randn(1, 2, 7, 7), torch.randn(1, 2, 4, 4)
    _zero_except(m, "from_low", rows=slice(0, 2))  # the L->H half of the fused low-frequency conv
    y_h, y_l = m((x_h, x_l))
    assert torch.equal(y_l, torch.zeros_like(y_l))
    assert torch.equal(y_h, x_l.repeat_interleave(2, 2).repeat_interleave(2, 3)[:, :, :7, :7])
    _zero_except(m, "h2l")
    _, y_l = m((x_h, x_l))
    assert torch.allclose(y_l, F.avg_pool2d(x_h, 2, ceil_mode=True))
    assert torch.allclose(y_l[0, 0, 3, 3], x_h[0, 0, 6, 6])  # edge window averages only what exists


def test_mac_saving_matches_the_paper() -> None:
    """Octave conv costs 1 - 3/4 * alpha * (2 - alpha) of a plain conv (0.4375 at alpha 0.5)."""
    conv = create_op("conv", 64, 64)
    oct_ = create_op("octconv", 64, 64)
    x = torch.randn(1, 64, 16, 16)
    ratio = counter_macs(oct_, (x[:, :32], x[:, 32:, :8, :8])) / counter_macs(conv, x)
    assert ratio == pytest.approx(1 - 0.75 * 0.5 * 1.5)


def test_goctconv_three_scales_with_missing_input() -> None:
    m = create_op("goctconv", 12, 12, alpha_in=[0.5, 0.25, 0.25], alpha_out=[0.5, 0.25, 0.25])
    assert m.in_scales == [6, 3, 3]
    y0, y1, y2 = m((torch.randn(1, 6, 9, 9), None, torch.randn(1, 3, 3, 3)))
    assert y0.shape == (1, 6, 9, 9) and y1.shape == (1, 3, 5, 5) and y2.shape == (1, 3, 3, 3)


def test_goctconv_paths_maxpool_down_bilinear_up() -> None:
    m = create_op("goctconv", 4, 4, kernel_size=1)
    x0, x1 = torch.randn(1, 2, 9, 9), torch.randn(1, 2, 5, 5)
    _zero_except(m, "paths.0to1")
    assert torch.equal(m((x0, x1))[1], F.max_pool2d(x0, 2, ceil_mode=True))
    _zero_except(m, "paths.1to0")
    assert torch.allclose(m((x0, x1))[0], F.interpolate(x1, size=(9, 9), mode="bilinear", align_corners=False))


def test_goctconv_without_cross_scale_keeps_scales_apart() -> None:
    m = create_op("goctconv", 8, 8, cross_scale=False, depthwise=True)
    assert set(m.paths) == {"0to0", "1to1"} and m.paths["0to0"].groups == 4
    x0, x1 = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)
    y0, _ = m((x0, x1))
    assert torch.equal(y0, m((x0, torch.randn(1, 4, 4, 4)))[0])
    with pytest.raises(OperatorError, match="equal channels per scale"):
        create_op("goctconv", 8, 16, depthwise=True)


@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_in_place_sums_equal_the_paper_formula_forward_and_backward(size: int, layout: torch.memory_format) -> None:
    """The in-place L->H add gives the paper's sum and the same gradients, on even and odd sizes, with autograd and
    without it (where an exact 2x takes the broadcast add)."""
    m = create_op("octconv", 8, 6).to(memory_format=layout)
    x_h = torch.randn(2, 4, size, size).contiguous(memory_format=layout).requires_grad_()
    x_l = torch.randn(2, 4, (size + 1) // 2, (size + 1) // 2).contiguous(memory_format=layout).requires_grad_()

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        low = F.conv2d(x_l, m.from_low.weight, padding=1)
        y_h = F.conv2d(x_h, m.h2h.weight, padding=1) + F.interpolate(low[:, :3], size=(size, size), mode="nearest")
        pooled = F.avg_pool2d(x_h, 2, ceil_mode=True)
        return y_h, F.conv2d(pooled, m.h2l.weight, padding=1) + low[:, 3:]

    outs, refs = m((x_h, x_l)), reference()
    with torch.no_grad():
        inference = m((x_h, x_l))
    for out, inferred, ref in zip(outs, inference, refs):
        assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(inferred, ref, atol=1e-5)
    grads = torch.autograd.grad(sum(o.square().sum() for o in outs), [x_h, x_l, *m.parameters()])
    ref_grads = torch.autograd.grad(sum(r.square().sum() for r in refs), [x_h, x_l, *m.parameters()])
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4)


def test_strided_low_to_high_reads_the_low_input_unpooled() -> None:
    """Stride 2 (the authors' code): L->H convolves X^L as it is, at the output's high resolution, no upsampling."""
    m = create_op("octconv", 4, 4, kernel_size=1, stride=2)
    x_h, x_l = torch.randn(1, 2, 8, 8), torch.randn(1, 2, 4, 4)
    _zero_except(m, "from_low", rows=slice(0, 2))  # L->H only
    y_h, y_l = m((x_h, x_l))
    assert torch.equal(y_h, x_l) and torch.equal(y_l, torch.zeros_like(y_l))
    _zero_except(m, "from_low", rows=slice(2, 4))  # L->L only: X^L pooled
    assert torch.allclose(m((x_h, x_l))[1], F.avg_pool2d(x_l, 2))
    _zero_except(m, "h2h")
    assert torch.allclose(m((x_h, x_l))[0], F.avg_pool2d(x_h, 2))
    _zero_except(m, "h2l")
    assert torch.allclose(m((x_h, x_l))[1], F.avg_pool2d(x_h, 4))


@pytest.mark.parametrize("size", [14, 7])
def test_strided_mac_formula_is_the_counted_convs_plus_pooling(size: int) -> None:
    m = create_op("octconv", 64, 128, stride=2)
    x = (torch.randn(1, 32, size, size), torch.randn(1, 32, (size + 1) // 2, (size + 1) // 2))
    out = -(-size // 2)
    pooling = x[0].numel() + x[1].numel() + 32 * out * out  # X^H and X^L by the stride, X^H once more for H->L
    assert m.macs(x) == counter_macs(m, x) + pooling


def test_oct_resnet50_macs_match_the_paper() -> None:
    """The paper: 2.4 GFLOPs (MACs) for Oct-ResNet-50 at alpha 0.5 against 4.1 for ResNet-50, at 224x224.

    The authors' conversion (stage 4 plain from its first 1x1 conv on; strided L->H on unpooled X^L)
    counts 2.367 of 4.089 GMACs, as d-li14/octconv.pytorch reports (benchmarks/octconv_macs.py).
    """
    import timm

    import backbones  # noqa: F401

    x = torch.randn(1, 3, 224, 224)
    oct_r50 = timm.create_model("op_resnet50", op="octconv").eval()
    r50 = counter_macs(timm.create_model("op_resnet50", op="conv").eval(), x)
    oct_macs = counter_macs(oct_r50, x)
    assert (round(r50 / 1e9, 1), round(oct_macs / 1e9, 1)) == (4.1, 2.4)
    assert (r50, oct_macs) == (4_089_184_256, 2_367_143_936)
    stage4 = oct_r50.layer4[0]
    assert [c.out_scales for c in stage4.convs] == [[512], [512], [2048]]  # plain from the first 1x1 conv on
    assert stage4.convs[0].in_scales == [512, 512] and stage4.downsample[0].in_scales == [512, 512]


def test_one_alpha_sets_both_ratios_and_an_oct_resnet_reads_it_from_the_cli_kwargs() -> None:
    import timm

    import backbones  # noqa: F401  registers the backbones
    from bench.config import compose

    conv = create_op("octconv", 16, 16, alpha=0.25)
    assert conv.in_scales == conv.out_scales == [12, 4]
    cfg = compose("run", ["task=classification", "recipe=standard", "op=octconv", "op_kwargs.alpha=0.125"])
    net = timm.create_model(cfg.recipe.default_backbone, op="octconv", op_kwargs=dict(cfg.op_kwargs))
    assert net.op_metadata["octave_alpha"] == 0.125

"""On a CUDA device: every operator in every backbone matches its CPU result, trains a step, and runs in bf16 autocast.

Skipped where torch sees no GPU (CI); run on a GPU machine before publishing GPU numbers.
"""

from __future__ import annotations

import pytest
import timm
import torch

import backbones  # noqa: F401  registers the models
from operators import OperatorError, list_ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SIZES = {"op_resnet18": 64, "op_resnet50": 64, "op_mobilenetv2": 64, "op_shufflenetv2": 64, "snet49": 64,
         "xception_a": 64}


@pytest.mark.parametrize("op", list_ops("conv"))
@pytest.mark.parametrize("name", list(SIZES))
def test_cuda_matches_cpu_and_trains_in_bf16(name: str, op: str) -> None:
    try:
        model = timm.create_model(name, op=op, num_classes=5).eval()
    except OperatorError:
        return  # the pairing is refused on every device (tests/test_backbones.py checks the message)
    # float64: SRU's hard gate (weights >= 0.5) flips on float32 rounding, and TF32 would differ by ~1e-3
    model, x = model.double(), torch.randn(2, 3, SIZES[name], SIZES[name], dtype=torch.float64)
    for layout in (torch.contiguous_format, torch.channels_last):
        model = model.to(memory_format=layout)
        with torch.no_grad():
            expected = model(x.contiguous(memory_format=layout))
            got = model.cuda()(x.cuda().contiguous(memory_format=layout)).cpu()
        model = model.cpu()
        scale = expected.abs().max().clamp_min(1e-6)
        assert ((got - expected).abs().max() / scale) < 1e-9, f"{name} op={op} {layout}"
    model = model.float().cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x.float().cuda())
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)

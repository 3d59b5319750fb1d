"""Salient-object detection: CSNet as the official code builds it, dynamic weight decay, pruning, the task end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.measure import count_macs
from bench.results import read_record
from operators.dynamic_weight_decay import DynamicWeightDecay
from operators.octconv import GOctConvBNAct
from operators.registry import OperatorError
from tasks.saliency.csnet import CSFNet, CSNet, CSNetWidths

TINY = ["data.train_size=32", "data.val_size=8", "data.test_size=8", "data.image_size=32", "recipe.image_size=32",
        "recipe.global_batch=8", "recipe.max_device_batch=8", "recipe.base_batch=8", "recipe.eval_batch=8",
        "recipe.epochs=1", "recipe.crop_margin=2", "task.profile_size=32"]


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def formula_params(w: CSNetWidths) -> int:
    """CSNet's parameter count written out from its widths, layer by layer as the official code lays them out."""
    total, scales = 0, (3,)
    starts = {4, 8, 14}
    for index, out in enumerate(w.blocks):
        k2 = 9 if index == 0 or index in starts else 1
        total += k2 * sum(scales) * sum(out) + 3 * sum(out)  # gOctConv (every cross-scale path) + BN + PReLU
        total += 2 * (9 * sum(out) + 3 * sum(out))  # two depthwise 3x3 + BN + PReLU
        scales = out
    sides = [sum(w.blocks[i]) for i in (7, 13, 17)]
    total += sum(sides) * sum(w.fuse) + 3 * sum(w.fuse)
    for cin, split in zip(w.fuse, w.dilated):
        total += 9 * cin * sum(split) + 3 * sum(split)
    total += sum(sum(s) for s in w.dilated) * w.out + 3 * w.out
    return total + w.out + 1  # the 1x1 classifier with its bias


def test_csnet_follows_the_official_structure_and_widths() -> None:
    w = CSNetWidths.initial()
    assert len(w.blocks) == 18 and w.blocks[0] == (10, 10) and w.blocks[4] == (20, 20) and w.blocks[7] == (40,)
    assert w.blocks[13] == (80,) and w.blocks[17] == (80,) and w.fuse == (13, 26, 26) and w.out == 65
    assert w.dilated == ((2, 2, 2, 2, 5), (5, 5, 5, 5, 6), (5, 5, 5, 5, 6))
    net = CSNet(w)
    assert params(net) == formula_params(w) == 210_985
    wide = CSNetWidths.initial(2.0)
    assert wide.fuse == (26, 53, 53) and params(CSNet(wide)) == formula_params(wide) == 788_631
    block = net.blocks[5]
    assert block.octave.conv.cross_scale and not block.depthwise[0].conv.cross_scale
    assert [b.octave.conv.stride for b in net.blocks].count(2) == 3 and net.blocks[0].octave.conv.paths["0to0"].kernel_size == (3, 3)
    assert net(torch.randn(2, 3, 64, 96)).shape == (2, 1, 64, 96)
    assert CSNetWidths.from_dict(json.loads(json.dumps(w.as_dict()))) == w


def test_upsample_slots_are_the_csf_heads_upward_paths_and_count_their_macs() -> None:
    x = torch.randn(1, 3, 64, 64)
    plain, carafe = CSNet().eval(), CSNet(upsampler="carafe").eval()
    assert carafe.op_metadata["upsample_slots"] == ["csf.fuse.1to0", "csf.fuse.2to0", "csf.fuse.2to1", "csf.out.1to0",
                                                    "csf.out.2to0"]
    assert count_macs(carafe, x) > count_macs(plain, x) and carafe(x).shape == (1, 1, 64, 64)
    assert params(carafe) > params(plain)


def test_dynamic_decay_reads_the_units_output_after_prelu() -> None:
    """One channel, images [0, 2] and [4, 6], gamma 2: BN gives (-3,-1,1,3)/sqrt(5)*2, PReLU (slope 0.25)
    (-1.5,-0.5,2,6)/sqrt(5); per-image means -1/sqrt(5) and 4/sqrt(5), |.| averaged: 2.5/sqrt(5)."""
    unit = GOctConvBNAct(1, 1, 1, 1, [1.0], [1.0]).train()
    with torch.no_grad():
        unit.conv.paths["0to0"].weight.fill_(1.0)
        unit.norms[0].weight.fill_(2.0)
        unit.norms[0].eps = 1e-12  # (positive in training; negligible against the variance 5)
    decay = DynamicWeightDecay([unit], weight=3.0)
    unit(torch.tensor([[[[0.0, 2.0]]], [[[4.0, 6.0]]]])).sum().backward()
    before = unit.norms[0].weight.grad.clone()
    decay.apply()
    expected = 3.0 * (2.5 / math.sqrt(5)) * 2.0
    torch.testing.assert_close(unit.norms[0].weight.grad - before, torch.tensor([expected]))
    assert decay.activation == {}  # applied once per step
    assert len(DynamicWeightDecay.for_model(CSNet()).units) == 3 * 18  # the ILBlocks' units, not the CSF head's


def _silence(net: CSNet) -> None:
    """Zero gamma and beta of every third channel, as dynamic weight decay leaves a channel it prunes."""
    with torch.no_grad():
        for unit in [u for b in net.blocks for u in (b.octave, *b.depthwise)] + [net.head.fuse, net.head.out]:
            for norm in unit.norms:
                norm.weight[::3], norm.bias[::3] = 0.0, 0.0
        for block in net.head.dilated:
            block.norm.weight[1::4], block.norm.bias[1::4] = 0.0, 0.0


def test_pruning_keeps_the_kept_channels_outputs_and_rebuilds_from_the_widths() -> None:
    torch.manual_seed(0)
    net = CSNet().train()
    net(torch.randn(4, 3, 64, 64))  # running statistics that are not the defaults
    net.eval()
    _silence(net)
    small = net.pruned(1e-20)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(small(x), net(x), atol=1e-6, rtol=1e-5)
    assert small.widths.blocks[0] == (6, 6) and small.widths.out == 43
    assert params(small) == formula_params(small.widths) < params(net)
    assert params(CSNet(small.widths)) == params(small)
    with pytest.raises(OperatorError, match="parameter-free upsampler"):
        CSNet(upsampler="carafe").pruned(1e-20)


def test_csf_head_on_a_backbone_with_an_operator() -> None:
    net = CSFNet("resnet18", op="dwconv")
    assert net.stride == 32 and net.op_metadata["op"] == "dwconv"
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 1, 64, 64)


def test_saliency_runs_prunes_and_fine_tunes_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    where = [f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]
    assert main(["run", "task=saliency", "prune=true", "recipe.finetune_epochs=1", *TINY, *where]) == 0
    (path,) = (tmp_path / "r" / "saliency").glob("*.json")
    record = read_record(path)
    capsys.readouterr()
    assert main(["run", "task=saliency", "prune=true", "recipe.finetune_epochs=1", "resume=true", *TINY, *where]) == 0
    resumed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("resuming from")]
    assert [Path(line.split()[2]).parent.parent.name for line in resumed] == ["train", "finetune"]  # each stage its own
    again = read_record(max((tmp_path / "r" / "saliency").glob("*.json"), key=lambda p: read_record(p)["created"]))
    test_metrics = {k: v for k, v in record["metrics"].items() if k != "val_mae"}  # no epoch left to validate
    assert {k: again["metrics"][k] for k in test_metrics} == test_metrics and again["widths"] == record["widths"]
    assert record["status"] == "success" and record["prune"] == "pruned" and record["dwd"] == "dwd=3"
    assert set(record["stages"]) == {"trained", "pruned", "finetuned"}
    assert record["stages"]["trained"]["params"] == 210_985 and record["stages"]["pruned"]["steps"] == 0
    assert record["steps"] == record["stages"]["trained"]["steps"] + record["stages"]["finetuned"]["steps"]
    assert {"max_f", "mae", "s_measure", "mean_e", "weighted_f"} <= set(record["metrics"])
    assert CSNetWidths.from_dict(record["widths"]).blocks[0][0] <= 10
    assert main(["run", "task=saliency", "model=csf", "op=dwconv", "recipe.dynamic_weight_decay=0", *TINY,
                 *where]) == 0


@pytest.mark.parametrize("override, message", [
    (["op=ddf"], "no conv-operator slots"), (["model=csf", "prune=true"], "model=csf has none"),
    (["model=u2net"], "saliency model"), (["backbone=resnet18"], "its own backbone"),
    (["recipe.image_size=48"], "multiples of 32"), (["block_widths={blocks: [[1]]}"], "block_widths")])
def test_bad_saliency_requests_are_usage_errors(override: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert main(["run", "task=saliency", *override, f"results_dir={tmp_path}/r", f"runs_dir={tmp_path}/runs"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

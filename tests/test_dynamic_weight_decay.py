"""Dynamic weight decay and per-scale channel pruning for gOctConv networks."""

from __future__ import annotations

import torch
from torch import nn

from operators.dynamic_weight_decay import (DynamicWeightDecay, kept_channels, parameter_groups, prune_inputs,
                                            prune_outputs)
from operators.octconv import GOctConvBNAct


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(GOctConvBNAct(8, 12, alpha_in=[0.5, 0.5], alpha_out=[0.5, 0.5]),
                         GOctConvBNAct(12, 12, depthwise=True, cross_scale=False),
                         GOctConvBNAct(12, 8))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(4, 4, 9, 9, generator=gen), torch.randn(4, 4, 5, 5, generator=gen)


def test_decay_is_weighted_by_detached_activation_magnitude() -> None:
    net = _net().train()
    decay = DynamicWeightDecay.for_model(net, weight=3.0)
    assert len(decay.norms) == 6  # two scales in each of three units
    out = net(_inputs())
    sum(o.sum() for o in out).backward()
    norm = decay.norms[0]
    grad_before = norm.weight.grad.clone()
    act = decay.activation[norm]
    decay.apply()
    torch.testing.assert_close(norm.weight.grad - grad_before, 3.0 * act * norm.weight.detach())
    assert not act.requires_grad and act.shape == norm.weight.shape and (act >= 0).all()
    groups = parameter_groups(net, weight_decay=5e-3, gamma_lr=0.1)
    assert groups[0]["weight_decay"] == 5e-3 and groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    plain = parameter_groups(net, weight_decay=5e-3, dynamic=False)  # the ablation: the same split, plain decay
    assert plain[1]["weight_decay"] == 5e-3 and "lr" not in plain[1] and len(plain[1]["params"]) == 6
    decay.remove()


def test_dynamic_decay_drives_idle_gammas_down_faster() -> None:
    """With no task loss, gammas of strongly firing channels shrink faster than of quiet ones."""
    unit = GOctConvBNAct(4, 4, alpha_in=[1.0], alpha_out=[1.0]).train()
    decay = DynamicWeightDecay.for_model(unit, weight=3.0)
    with torch.no_grad():
        unit.norms[0].bias.copy_(torch.tensor([5.0, 5.0, 0.0, 0.0]))  # channels 0, 1 fire strongly
    opt = torch.optim.SGD(parameter_groups(unit), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        unit(torch.randn(2, 4, 6, 6))
        decay.apply()
        opt.step()
    gamma = unit.norms[0].weight.detach()
    assert gamma[:2].max() < gamma[2:].min() < 1.0


def test_pruning_keeps_outputs_of_kept_channels() -> None:
    net = _net().eval()
    x = _inputs()
    with torch.no_grad():
        for norm in net[0].norms:  # silence some channels of the first unit in each scale
            norm.weight[::2] = 0.0
    before = net[0](x)
    keep = kept_channels(net[0], threshold=1e-3)
    assert [len(k) for k in keep] == [3, 3]
    prune_outputs(net[0], keep)
    after = net[0](x)
    for b, a, idx in zip(before, after, keep):
        torch.testing.assert_close(a, b[:, idx])
    assert net[0].out_scales == [3, 3]
    prune_inputs(net[1], keep)  # depthwise consumer shrinks with it
    assert net[1].out_scales == [3, 3] and net[1].norms[0].num_features == 3
    prune_inputs(net[2], keep)
    y = net(x)
    assert [t.shape[1] for t in y] == [4, 4]
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in _net().parameters())

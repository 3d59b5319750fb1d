"""Learnable channel counts for gOctConv networks (SOD100K, ECCV 2020): dynamic weight decay, then pruning.

Dynamic weight decay pushes the BatchNorm gamma of each channel after a gOctConv towards zero with a
strength proportional to how much that channel fires: the gradient of ``weight / 2 * a_c * gamma_c^2``
with ``a_c`` the detached |global-average-pooled output| of the unit (after its PReLU, as the official
forward hook reads it) averaged over the batch, ``weight`` 3 by default. Channels whose gamma falls
below a threshold are then removed per scale, giving a smaller network whose kept channels compute
exactly what they did.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from operators.octconv import GOctConv, GOctConvBNAct


class DynamicWeightDecay:
    """Adds ``weight * activation_c * gamma_c`` to each tracked gamma's gradient; call :meth:`apply` before each optimizer step.

    Activations are recorded by forward hooks on the tracked units during the training forward.
    """

    def __init__(self, units: Iterable[GOctConvBNAct], weight: float = 3.0) -> None:
        self.weight = weight
        self.units = list(units)
        self.norms = [n for unit in self.units for n in unit.norms if isinstance(n, nn.BatchNorm2d)]
        self.activation: dict[nn.Module, Tensor] = {}
        self._hooks = [unit.register_forward_hook(self._record) for unit in self.units]

    @classmethod
    def for_model(cls, model: nn.Module, weight: float = 3.0) -> DynamicWeightDecay:
        """Track the model's :func:`decay_units`."""
        return cls(decay_units(model), weight)

    def _record(self, unit: nn.Module, inputs: tuple, output: Tensor | tuple) -> None:
        if not unit.training:
            return
        outputs = [output] if isinstance(output, Tensor) else list(output)
        for norm, out in zip(unit.norms, outputs):
            if isinstance(norm, nn.BatchNorm2d) and out is not None:
                self.activation[norm] = out.detach().mean((2, 3)).abs().mean(0)

    def apply(self) -> None:
        """Add the dynamic decay to the gammas' gradients (for norms seen since the last call), once."""
        for norm, act in self.activation.items():
            if norm.weight.grad is None:
                norm.weight.grad = torch.zeros_like(norm.weight)
            norm.weight.grad.add_(self.weight * act * norm.weight.detach())
        self.activation.clear()

    def remove(self) -> None:
        """Detach the hooks."""
        for hook in self._hooks:
            hook.remove()


def decay_units(model: nn.Module) -> list[GOctConvBNAct]:
    """The units whose gammas decide the widths: the model's ``decay_units()`` where it names them (CSNet: its
    ILBlocks), else every gOctConv unit."""
    if hasattr(model, "decay_units"):
        return model.decay_units()
    return [unit for unit in model.modules() if isinstance(unit, GOctConvBNAct)]


def parameter_groups(model: nn.Module, weight_decay: float = 5e-3, dynamic: bool = True,
                     gamma_lr: float | None = None) -> list[dict]:
    """Optimizer groups: the :func:`decay_units`' gammas (no plain decay when ``dynamic``, at ``gamma_lr`` if
    given), and every other parameter with ``weight_decay``; the ablation (``dynamic=False``) differs only there."""
    gammas = [n.weight for unit in decay_units(model) for n in unit.norms if isinstance(n, nn.BatchNorm2d)]
    tracked = {id(g) for g in gammas}
    rest = [p for p in model.parameters() if id(p) not in tracked and p.requires_grad]
    group = {"params": gammas, "weight_decay": 0.0 if dynamic else weight_decay}
    return [{"params": rest, "weight_decay": weight_decay}, group | ({"lr": gamma_lr} if gamma_lr else {})]


def kept_channels(unit: GOctConvBNAct, threshold: float) -> list[Tensor]:
    """Per output scale, the channel indices whose |gamma| exceeds ``threshold`` (at least one is kept)."""
    keep = []
    for norm in unit.norms:
        if not isinstance(norm, nn.BatchNorm2d):
            keep.append(torch.zeros(0, dtype=torch.long))
            continue
        magnitude = norm.weight.detach().abs()
        idx = torch.nonzero(magnitude > threshold).flatten()
        keep.append(idx if idx.numel() else magnitude.argmax().reshape(1))
    return keep


def _slice_conv(conv: nn.Conv2d, out_idx: Tensor | None, in_idx: Tensor | None) -> nn.Conv2d:
    weight = conv.weight.detach()
    depthwise = conv.groups == conv.in_channels and conv.groups > 1
    if out_idx is not None:
        weight = weight[out_idx]
    if in_idx is not None and not depthwise:
        weight = weight[:, in_idx]
    cout = weight.shape[0]
    cin = cout if depthwise else weight.shape[1] * conv.groups
    new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=cout if depthwise else conv.groups, bias=conv.bias is not None)
    new.weight.data.copy_(weight)
    if conv.bias is not None:
        new.bias.data.copy_(conv.bias.detach() if out_idx is None else conv.bias.detach()[out_idx])
    return new


def _prune_goct(conv: GOctConv, keep_out: Sequence[Tensor] | None, keep_in: Sequence[Tensor] | None) -> None:
    for key in list(conv.paths):
        i, j = (int(s) for s in key.split("to"))
        out_idx = keep_out[j] if keep_out is not None else None
        in_idx = keep_in[i] if keep_in is not None else None
        conv.paths[key] = _slice_conv(conv.paths[key], out_idx, in_idx)
    if keep_out is not None:
        conv.out_scales = [len(k) for k in keep_out]
    if keep_in is not None:
        conv.in_scales = [len(k) for k in keep_in]


def prune_outputs(unit: GOctConvBNAct, keep: Sequence[Tensor]) -> None:
    """Remove every output channel of ``unit`` not in ``keep`` (per scale), in place.

    A depthwise unit's inputs are its outputs' channels, so they are pruned together.
    """
    _prune_goct(unit.conv, keep, keep if _depthwise(unit.conv) else None)
    for j, idx in enumerate(keep):
        norm, act = unit.norms[j], unit.acts[j]
        if not isinstance(norm, nn.BatchNorm2d):
            continue
        new_norm = nn.BatchNorm2d(len(idx), eps=norm.eps, momentum=norm.momentum)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_norm, name).data.copy_(getattr(norm, name).detach()[idx])
        new_norm.num_batches_tracked.copy_(norm.num_batches_tracked)
        new_act = nn.PReLU(len(idx))
        new_act.weight.data.copy_(act.weight.detach()[idx])
        new_norm.train(norm.training)
        unit.norms[j], unit.acts[j] = new_norm, new_act


def prune_inputs(consumer: GOctConv | GOctConvBNAct, keep: Sequence[Tensor]) -> None:
    """Remove the input channels of ``consumer`` whose producer channels were pruned, in place."""
    conv = consumer.conv if isinstance(consumer, GOctConvBNAct) else consumer
    if not _depthwise(conv):
        _prune_goct(conv, None, keep)
    elif isinstance(consumer, GOctConvBNAct):
        prune_outputs(consumer, keep)  # depthwise: its outputs shrink with its inputs
    else:
        _prune_goct(conv, keep, keep)


def _depthwise(conv: GOctConv) -> bool:
    return any(p.groups > 1 and p.groups == p.in_channels for p in conv.paths.values())

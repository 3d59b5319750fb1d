"""A backbone as a list of stages plus a head, with timm's classifier and feature-extraction API."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices
from torch import Tensor, nn


class ClassifierHead:
    """timm's classifier API (pool, dropout, linear) for a network with ``num_features`` output channels.

    The linear layer is stored under ``classifier_attr`` (``fc`` for ResNets, as in timm).
    """

    classifier_attr = "classifier"

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of keeping them (timm's switch)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_attr)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none); ``global_pool=None`` keeps the current pooling, as in timm.

        ``global_pool=""`` returns the unpooled feature map (only without a classifier); the classifier's
        width follows the pooling's (``catavgmax`` doubles it), and so does ``head_hidden_size``.
        """
        if global_pool is None:
            global_pool = self.global_pool.pool_type if hasattr(self, "global_pool") else "avg"
        if not global_pool and num_classes:
            raise ValueError(f"global_pool='' leaves the feature map unpooled, so it needs num_classes=0 "
                             f"(got num_classes={num_classes})")
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        setattr(self, self.classifier_attr,
                nn.Linear(self.head_hidden_size, num_classes) if num_classes else nn.Identity())

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the classifier, which ``features_only`` never runs (unused parameters would break DDP)."""
        take, _ = feature_take_indices(len(self.feature_info), indices)
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def pool(self, x: Tensor) -> Tensor:
        """Global pooling then dropout: the head before the classifier (which each network names as timm does,
        and calls by name, so that TorchScript can compile the head)."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class StagedNet(ClassifierHead, nn.Module):
    """``stages`` (each halving resolution or more; their outputs are the features) -> ``final`` -> pool -> classifier.

    Subclasses build ``self.stages`` (a ModuleList), ``self.final`` and ``self.feature_info``, then call
    :meth:`finish`.
    """

    def finish(self, num_features: int, num_classes: int, global_pool: str = "avg", drop_rate: float = 0.0) -> None:
        self.num_features, self.num_classes, self.drop_rate = num_features, num_classes, drop_rate
        self.grad_checkpointing = False
        self.reset_classifier(num_classes, global_pool)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Also drop the stages after the last feature taken, and the final layers."""
        take = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        self.stages = self.stages[:max(take) + 1]
        if max(take) < len(self.stages):  # a feature past the stages is the final layers' output: they stay
            self.final = nn.Identity()
        return take

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs for timm's ``features_only`` (feature_cls="getter"); a ``feature_info`` entry past the
        stages is the output of ``final`` (Xception-A's fc attention)."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        feats = []
        for i, stage in enumerate(self.stages):
            if stop_early and i > max_index:
                break
            x = stage(x)
            if i in take:
                feats.append(x)
        if len(self.stages) in take:
            x = self.final(x)
            feats.append(x)
        elif not intermediates_only:
            x = self.final(x)
        if intermediates_only:
            return feats
        return x, feats

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for layer-wise lr decay (timm): the first stage is the stem, then each later stage
        (``coarse``) or each block of it; the final layers come last, before the classifier."""
        return dict(stem=r"^stages\.0\.", blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                                                 (r"^final", (99999,))])

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self.final(checkpoint_seq(self.stages, x))
        for stage in self.stages:
            x = stage(x)
        return self.final(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pool(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

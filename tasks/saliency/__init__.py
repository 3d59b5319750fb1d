"""Salient-object detection (`bench run task=saliency`): CSNet with dynamic weight decay and pruning, its data and configs (`conf/`)."""

from tasks.saliency.task import TASK

__all__ = ["TASK"]

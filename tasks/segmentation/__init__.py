"""Semantic segmentation (`bench run task=segmentation`): BiSeNetV1 and DFANet, their data and configs (`conf/`)."""

from tasks.segmentation.task import TASK

__all__ = ["TASK"]

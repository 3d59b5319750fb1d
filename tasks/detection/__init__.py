"""Object detection (`bench run task=detection`): the task, its COCO-format data, its mmdet parts (`models`), configs."""

from tasks.detection.task import TASK

__all__ = ["TASK"]

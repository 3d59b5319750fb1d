"""Image classification (`bench run task=classification`): the task, its data and its configs (`conf/`)."""

from tasks.classification.task import TASK

__all__ = ["TASK"]

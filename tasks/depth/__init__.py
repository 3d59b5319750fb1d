"""Joint depth upsampling (`bench run task=depth`): PAC's network and protocol, its data and configs (`conf/`)."""

from tasks.depth.task import TASK

__all__ = ["TASK"]

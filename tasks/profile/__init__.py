"""The `profile` task (`bench profile`): what an operator or a backbone with it costs; its config is in `conf/`."""

from tasks.profile.task import TASK

__all__ = ["TASK"]

"""Benchmark tasks: one package per task (``tasks/<name>/``: task, data, models, ``conf/``) over a small shared core.

The core is `training` (the trained-task skeleton, the LR schedule, the learning curve) and `shapes`
(the synthetic scene generator and the cache its views are written to). Each task declares itself
with a `bench.tasks.TaskSpec` named ``TASK``, found through the ``bench.tasks`` entry points in
``pyproject.toml``, exactly as a task from another installed package is.
"""

"""Operator-swappable backbones, registered with timm (`timm.create_model("op_resnet50", op="ddf")`).

Importing this package registers the ``op_*`` models with timm's registry; every factory takes
``op`` (any registered conv-kind operator) and ``op_kwargs``.
"""

from backbones import mobilenetv2, resnet, shufflenetv2  # noqa: F401  registers the models  isort: skip

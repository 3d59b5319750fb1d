"""Operator-swappable backbones, registered with timm (`timm.create_model("op_resnet50", op="ddf")`).

Importing this package registers the ``op_*`` models; none ship yet (see the backbones issue).
"""

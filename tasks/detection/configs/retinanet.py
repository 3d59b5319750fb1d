# RetinaNet + FPN: mmdet's model-zoo model, our backbone (operator in its slots) and our FPN (any upsampler).
_base_ = "mmdet::_base_/models/retinanet_r50_fpn.py"

levels = dict(last=4)  # the backbone's last four strides (C2-C5 of a ResNet; RetinaNet's FPN starts at C3)
run_values = {
    "model.neck.out_channels": "recipe.fpn_channels",
    "model.neck.upsampler": "upsampler",
    "model.neck.upsampler_kwargs": "upsampler_kwargs",
    "model.bbox_head.in_channels": "recipe.fpn_channels",
    "model.bbox_head.feat_channels": "recipe.fpn_channels",
    "model.bbox_head.stacked_convs": "recipe.head_convs",
    "model.bbox_head.num_classes": "num_classes",
    "model.bbox_head.anchor_generator.strides": "pyramid_strides",
}
model = dict(
    data_preprocessor=dict(bgr_to_rgb=False),  # our loaders give RGB; mmdet's mean/std are in RGB order
    backbone=dict(_delete_=True, type="BenchBackbone"),
    neck=dict(type="OpFPN"),
)

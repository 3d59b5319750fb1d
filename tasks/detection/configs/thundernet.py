# ThunderNet (Qin et al., ICCV 2019): the paper's detection part, trained with the settings of its public mmdet
# reproduction (qinzheng93/ThunderNet, config/ThunderNet.py). SNet backbones (backbone=snet49|snet146|snet535) at
# 320x320 in the paper. Differences to the reproduction: the R-CNN subnet has the paper's one 1024-d fc (the
# reproduction's Shared2FCBBoxHead has two); the CEM's 2x upsampling is an upsample slot (nearest by default).
levels = dict(strides=[16, 32])  # C4 and C5: SNet146/535's last stage, SNet49's 512-channel conv5
run_values = {
    "model.neck.upsampler": "upsampler",
    "model.neck.upsampler_kwargs": "upsampler_kwargs",
    "model.rpn_head.anchor_generator.scales": "recipe.anchor_scales",
    "model.roi_head.bbox_head.num_classes": "num_classes",
}
alpha, pool = 5, 7  # PS RoI align to 5 maps of 7x7: the CEM and SAM are 5 x 7 x 7 = 245 channels wide
model = dict(
    type="TwoStageDetector",
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=False, pad_size_divisor=32),
    backbone=dict(type="BenchBackbone"),
    neck=dict(type="ThunderNetNeck", cem_channels=alpha * pool * pool, rpn_channels=256),
    rpn_head=dict(
        type="LastLevelRPNHead", in_channels=256, feat_channels=256, num_convs=0,  # the neck computes its features
        anchor_generator=dict(type="AnchorGenerator", scales=[2, 4, 8, 16, 32], ratios=[0.5, 0.75, 1.0, 4 / 3, 2.0],
                              strides=[16]),  # 32-512 px
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
    roi_head=dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(type="PSRoIAlignExtractor",
                                roi_layer=dict(type="PSRoIAlign", output_size=pool, sampling_ratio=2),
                                out_channels=alpha, featmap_strides=[16]),
        bbox_head=dict(
            type="ConvFCBBoxHead", num_shared_fcs=1, fc_out_channels=1024, in_channels=alpha, roi_feat_size=pool,
            num_classes=80, reg_class_agnostic=False,
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
            allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                          match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
            pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=2000, max_per_img=200, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type="soft_nms", iou_threshold=0.5), max_per_img=100)),
)

# Light-Head R-CNN (Li et al., 2017) as its official code builds and trains it (zengarden/light_head_rcnn,
# experiments/lizeming/light_head_rcnn.ori_res101.coco.ps_roialign): RPN (3x3 512-channel conv) on C4, the large
# separable conv (k = 15, C_mid = 256, C_out = 10 x 7 x 7) on C5, PS RoI align, one 2048-d fc. The defaults are the
# paper's large setting (ResNet backbone, C_mid = 256; the small one, Xception-like, uses 64: recipe.
# separable_mid_channels). Differences: C5 is at stride 32 (the official ResNet-101 dilates conv5 to stride 16; our
# backbones do not), so PS RoI align pools at 1/32; mmdet's sigmoid RPN objectness (the official: 2-way softmax);
# mmdet's OHEMSampler with at most 25% positives (the official ranks all RoIs together); no x3 gradient on the
# separable conv.
levels = dict(strides=[16, 32])  # C4 feeds the RPN, C5 the large separable conv
run_values = {
    "model.neck.mid_channels": "recipe.separable_mid_channels",
    "model.rpn_head.in_channels": "level_channels.0",
    "model.rpn_head.anchor_generator.scales": "recipe.anchor_scales",
    "model.roi_head.bbox_head.num_classes": "num_classes",
}
alpha, pool = 10, 7  # the thin feature map: 10 x 7 x 7 = 490 channels, PS RoI aligned to 10 maps of 7x7
model = dict(
    type="TwoStageDetector",
    data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=False, pad_size_divisor=32),
    backbone=dict(type="BenchBackbone"),
    neck=dict(type="LightHeadNeck", mid_channels=256, out_channels=alpha * pool * pool, kernel_size=15),
    rpn_head=dict(
        type="LastLevelRPNHead", in_channels=1024, feat_channels=512,
        anchor_generator=dict(type="AnchorGenerator", scales=[2, 4, 8, 16, 32], ratios=[0.5, 1.0, 2.0],
                              strides=[16]),  # 32-512 px
        bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        loss_bbox=dict(type="SmoothL1Loss", beta=1.0 / 9.0, loss_weight=1.0)),  # sigma 3
    roi_head=dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(type="PSRoIAlignExtractor",
                                roi_layer=dict(type="PSRoIAlign", output_size=pool, sampling_ratio=2),
                                out_channels=alpha, featmap_strides=[32]),
        bbox_head=dict(
            type="ConvFCBBoxHead", num_shared_fcs=1, fc_out_channels=2048, in_channels=alpha, roi_feat_size=pool,
            num_classes=80, reg_class_agnostic=False,
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0],
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type="SmoothL1Loss", beta=1.0, loss_weight=2.0))),  # the official box loss x 2
    train_cfg=dict(
        rpn=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
            allowed_border=-1, pos_weight=-1, debug=False),
        rpn_proposal=dict(nms_pre=12000, max_per_img=2000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                          match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(type="OHEMSampler", num=256, pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
            pos_weight=-1, debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=6000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.0, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)),
)

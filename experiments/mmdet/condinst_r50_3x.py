# CondInst R50 3x multi-scale: mmdet's CondInst (CondInstBboxHead: FCOS with the
# controller, 169 dynamic parameters a location; CondInstMaskHead: three dynamic 1x1
# convs of 8 channels on the mask branch with relative coordinates, masks at 1/4,
# dice loss) on our FCOS (fcos_r50_3x.py: its head, backbone and data preprocessing),
# under CondInst's COCO recipe (experiments/condinst_r50_3x.yaml: 36 epochs, lr / 10 at
# epochs 28 and 33, 1,000 warm-up iterations from lr / 1000, shorter side 640-800).
# Set to our CondInst (pss/models/condinst.py) where mmdet's config allows: the mask
# branch on P3 only (mmdet's file fuses P3-P5) as 4 x [conv 3x3 (128), GN, ReLU] + a
# 1x1 conv (start_level = end_level = 0: its level conv and 3 stacked convs), GroupNorm
# as our head's (mmdet's file: BatchNorm); at most 300 masks trained. What it cannot be
# set to is in docs/mmdet.md ("CondInst"). Test: as FCOS's, masks at probability 0.5.
_base_ = ['./fcos_r50_3x.py']
max_epochs = 36

model = dict(
    type='CondInst',
    data_preprocessor=dict(pad_mask=True),
    bbox_head=dict(type='CondInstBboxHead', num_params=169),
    mask_head=dict(
        type='CondInstMaskHead',
        num_layers=3,
        feat_channels=8,
        size_of_interest=8,
        mask_out_stride=4,
        max_masks_to_train=300,
        mask_feature_head=dict(
            in_channels=256,
            feat_channels=128,
            start_level=0,
            end_level=0,
            out_channels=8,
            mask_stride=8,
            num_stacked_convs=3,
            norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
        loss_mask=dict(
            type='DiceLoss', use_sigmoid=True, activate=True, eps=5e-6, loss_weight=1.0)),
    test_cfg=dict(mask_thr=0.5))


def _with_masks(pipeline):
    """The pipeline with its annotations' masks loaded (polygons and RLE -> bitmaps)."""
    return [
        dict(step, with_mask=True, poly2mask=True) if step['type'] == 'LoadAnnotations'
        else step for step in pipeline
    ]


train_pipeline = [
    dict(step, scales=[(1333, short) for short in range(640, 801, 32)])
    if step['type'] == 'RandomChoiceResize' else step
    for step in _with_masks(_base_.train_dataloader.dataset.pipeline)
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=_with_masks(_base_.val_dataloader.dataset.pipeline)))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(_base_.param_scheduler[0], start_factor=0.001, end=1001),
    dict(_base_.param_scheduler[1], end=max_epochs, milestones=[28, 33]),
]
del max_epochs, train_pipeline, _with_masks

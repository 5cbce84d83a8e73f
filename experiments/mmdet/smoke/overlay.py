# CPU smoke variant of any config of experiments/mmdet/, merged on top of it (nested
# dicts merge, lists are replaced), like experiments/smoke/overlay.yaml for our engine:
#   python -m pss.mmdet.train experiments/mmdet/fcos_pss_r50_3x.py \
#       experiments/mmdet/smoke/overlay.py
# The same recipe as that file (see its comments): ResNet-18 at half width trained from
# scratch (trainable BatchNorm, nothing frozen), a 64-channel FPN/head with 2 convs per
# tower, the synthetic shapes set (96 px, objects 9-75 px; `pss_synthetic` says how to
# generate it when it is not there), 10 epochs of 100 iterations of 8 images, AdamW at
# 4e-3 (weight decay 0.05) / 10 at epoch 9, 200 warm-up iterations from 1/100, test at
# 144 px.
data_root = 'outputs/data/shapes-96/'
pss_synthetic = dict(train=1000, val=100, size=96, seed=0, sides=[9, 75])
classes = ('circle', 'square', 'triangle')

model = dict(
    backbone=dict(
        depth=18,
        base_channels=32,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        frozen_stages=-1,
        init_cfg=None,
        zero_init_residual=False),  # as torchvision's ResNet (and ours)
    neck=dict(
        in_channels=[32, 64, 128, 256],
        out_channels=64,
        # as our FPN (torchvision's kaiming_uniform_(a=1)), not mmdet's Xavier
        init_cfg=dict(type='Kaiming', layer='Conv2d', a=1, mode='fan_in',
                      nonlinearity='leaky_relu', distribution='uniform')),
    bbox_head=dict(num_classes=3, in_channels=64, feat_channels=64, stacked_convs=2))

train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/train.json',
        data_prefix=dict(img='train/'),
        indices=800,  # 100 iterations of 8 per epoch
        pipeline=[
            dict(type='LoadImageFromFile', imdecode_backend='pillow'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='RandomChoiceResize', scales=[(192, 96)], keep_ratio=True, backend='pillow'),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs'),
        ]))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        pipeline=[
            dict(type='LoadImageFromFile', imdecode_backend='pillow'),
            dict(type='Resize', scale=(192, 144), keep_ratio=True, backend='pillow'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(
                type='PackDetInputs',
                meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
        ]))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=10, val_interval=5)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=201),
    dict(type='MultiStepLR', begin=0, end=10, by_epoch=True, milestones=[9], gamma=0.1),
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=0.004, weight_decay=0.05, fused=True))
default_hooks = dict(logger=dict(interval=20))

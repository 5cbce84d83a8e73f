# CPU smoke variant of any config of experiments/mmdet/, merged on top of it (nested
# dicts merge, lists are replaced), like experiments/smoke/overlay.yaml for our engine:
#   python -m pss.mmdet.train experiments/mmdet/fcos_pss_r50_3x.py \
#       experiments/mmdet/smoke/overlay.py
# ResNet-18 trained from scratch (trainable BatchNorm, nothing frozen), a 64-channel
# FPN/head with 2 convs per tower, the synthetic shapes set (192 px; `pss_synthetic`
# says how to generate it when it is not there), 5 epochs of 60 iterations of 8 images,
# lr 0.01 (0.02 at batch 16) / 10 at epoch 4, 50 warm-up iterations, test at 192 px.
data_root = 'outputs/data/shapes-192/'
pss_synthetic = dict(train=1000, val=50, size=192, seed=0)
classes = ('circle', 'square', 'triangle')

model = dict(
    backbone=dict(
        depth=18,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        frozen_stages=-1,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
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
        indices=480,  # 60 iterations of 8 per epoch
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='RandomChoiceResize', scales=[(320, 128), (320, 160)], keep_ratio=True),
            dict(type='RandomFlip', prob=0.5),
            dict(type='PackDetInputs'),
        ]))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=dict(classes=classes),
        ann_file='annotations/val.json',
        data_prefix=dict(img='val/'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(320, 192), keep_ratio=True),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(
                type='PackDetInputs',
                meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
        ]))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=5, val_interval=1)
param_scheduler = [
    dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', begin=0, end=5, by_epoch=True, milestones=[4], gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(logger=dict(interval=10))

# The paper's training recipe (its section 4.1; docs/method.md) in mmdet's terms, shared by
# the four R50 3x configs of this folder (they take its parts: `_base_.recipe_3x.<part>`).
# SGD lr 0.01 at batch 16 (2 images x 8 GPUs; mmdet's `--auto-scale-lr` rescales for
# another batch), momentum 0.9, weight decay 1e-4, gradient clipping at norm 35 (no
# bias lr/decay multipliers); 36 epochs, lr / 10 at epochs 24 and 33 (the paper's text),
# linear warm-up over 500 iterations from 1/3 (the full lr at iteration 500, as detectron2's
# and our engine's: mmengine's LinearLR gets there at end - 1, hence end=501); multi-scale
# training, shorter side drawn from 480-800 (step 32), longer side at most 1333; test at
# 800 (mmdet's default).
# ResNet-50 in torchvision's layout with its ImageNet weights, as our own engine uses.
max_epochs = 36
recipe_3x = dict(
    backbone=dict(
        type='ResNet',
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    # Decoded and resized by Pillow, as our engine and detectron2 (the paper's) do:
    # OpenCV's bilinear resize, mmdet's default, gives other pixels.
    train_pipeline=[
        dict(type='LoadImageFromFile', imdecode_backend='pillow'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(
            type='RandomChoiceResize',
            scales=[(1333, short) for short in range(480, 801, 32)],
            keep_ratio=True,
            backend='pillow'),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ],
    test_pipeline=[
        dict(type='LoadImageFromFile', imdecode_backend='pillow'),
        dict(type='Resize', scale=(1333, 800), keep_ratio=True, backend='pillow'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(
            type='PackDetInputs',
            meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ],
    train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1),
    param_scheduler=[
        dict(type='LinearLR', start_factor=1.0 / 3, by_epoch=False, begin=0, end=501),
        dict(
            type='MultiStepLR',
            begin=0,
            end=max_epochs,
            by_epoch=True,
            milestones=[24, 33],
            gamma=0.1),
    ],
    optim_wrapper=dict(
        _delete_=True,
        type='OptimWrapper',
        optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001),
        clip_grad=dict(max_norm=35, norm_type=2)),
    auto_scale_lr=dict(enable=False, base_batch_size=16),
)
del max_epochs

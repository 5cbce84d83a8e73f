# GFocalV2's model and 2x recipe in mmdet's terms, shared by gfocalv2_r50_2x.py and
# gfocalv2_pss_r50_2x.py (each adds the plugin import: its own, or _pss.py's). Not a
# config on its own (the head comes from pss.mmdet.heads).
_base_ = ['mmdet::gfl/gfl_r50_fpn_ms-2x_coco.py', './_recipe_3x.py']
recipe = _base_.recipe_3x
max_epochs = 24

model = dict(
    data_preprocessor=recipe.data_preprocessor,
    backbone=recipe.backbone,
    bbox_head=dict(type='GFocalV2Head'))
# The paper recipe's training pipeline with GFocalV2's shorter sides.
train_pipeline = [
    dict(step, scales=[(1333, short) for short in range(480, 961, 32)])
    if step['type'] == 'RandomChoiceResize' else step
    for step in recipe.train_pipeline
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=recipe.test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
# The paper recipe's warm-up (500 iterations) and steps, at GFocalV2's factor and epochs.
param_scheduler = [
    dict(recipe.param_scheduler[0], start_factor=0.001),
    dict(recipe.param_scheduler[1], end=max_epochs, milestones=[16, 22]),
]
optim_wrapper = dict(recipe.optim_wrapper, clip_grad=None)
auto_scale_lr = recipe.auto_scale_lr
del recipe, max_epochs

# ATSS R50 3x multi-scale: mmdet's ATSS (one anchor per location, octave base scale 8,
# ATSSAssigner top-9, GIoU weight 2.0, center-ness) under the paper's recipe
# (_recipe_3x.py). Test: score 0.05, top 1000 per level, NMS 0.6, 100 per image.
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', './_recipe_3x.py']
recipe = _base_.recipe_3x

model = dict(data_preprocessor=recipe.data_preprocessor, backbone=recipe.backbone)
train_dataloader = dict(dataset=dict(pipeline=recipe.train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=recipe.test_pipeline))
test_dataloader = val_dataloader
train_cfg = recipe.train_cfg
param_scheduler = recipe.param_scheduler
optim_wrapper = recipe.optim_wrapper
auto_scale_lr = recipe.auto_scale_lr
del recipe

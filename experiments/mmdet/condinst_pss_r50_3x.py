# CondInst_PSS R50 3x multi-scale: condinst_r50_3x.py with the positive sample selector
# (pss.mmdet.CondInstPSSHead, settings in _pss.py): e2e keeps the top 100 instances by
# PSS score and computes only their masks, no box or mask NMS. Evaluated end to end;
# `--cfg-options model.test_cfg.mode=nms` evaluates the same model with CondInst's own
# inference (box NMS, then the kept instances' masks).
_base_ = ['./condinst_r50_3x.py', './_pss.py']

model = dict(
    bbox_head=dict(type='CondInstPSSHead', **_base_.pss_head),
    test_cfg=dict(mode='e2e', e2e_score_thr=0.0))

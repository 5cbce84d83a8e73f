# FCOS_PSS R50 3x multi-scale: fcos_r50_3x.py with the positive sample selector
# (pss.mmdet.FCOSPSSHead, settings in _pss.py). Evaluated end to end (no NMS);
# `--cfg-options model.test_cfg.mode=nms` evaluates the same model with NMS.
_base_ = ['./fcos_r50_3x.py', './_pss.py']

model = dict(
    bbox_head=dict(type='FCOSPSSHead', **_base_.pss_head),
    test_cfg=dict(mode='e2e', e2e_score_thr=0.0))

# ATSS_PSS R50 3x multi-scale: atss_r50_3x.py with the positive sample selector
# (pss.mmdet.ATSSPSSHead, settings in _pss.py). Evaluated end to end (no NMS);
# `--cfg-options model.test_cfg.mode=nms` evaluates the same model with NMS.
_base_ = ['./atss_r50_3x.py', './_pss.py']

model = dict(
    bbox_head=dict(type='ATSSPSSHead', **_base_.pss_head),
    test_cfg=dict(mode='e2e', e2e_score_thr=0.0))

# GFocalV2_PSS R50 2x multi-scale: GFocalV2 R50 2x (_gfocalv2_2x.py, as gfocalv2_r50_2x.py)
# with the positive sample selector (pss.mmdet.GFocalV2PSSHead, settings in _pss.py; the
# focal loss of L_pss takes alpha 0.25 and gamma = the QFL's beta), trained end to end.
# Evaluated end to end (no NMS); `--cfg-options model.test_cfg.mode=nms` evaluates the
# same model with NMS. (The authors' README row is two-step, which runs on our engine
# only: experiments/gfocalv2_pss_r50_two_step.yaml.)
_base_ = ['./_gfocalv2_2x.py', './_pss.py']

model = dict(
    bbox_head=dict(
        type='GFocalV2PSSHead',
        **dict(_base_.pss_head, loss_pss=dict(_base_.pss_head.loss_pss, focal_alpha=0.25))),
    test_cfg=dict(mode='e2e', e2e_score_thr=0.0))

# The positive sample selector's settings (docs/method.md), for the *_pss configs of
# this folder (they take them as `_base_.pss_head`): PSS branch of 2 conv-GN-ReLU + a
# 1-channel conv on the regression tower, stop-grad; one-to-one target by Hungarian
# matching on P^(1-0.8) IoU^0.8 inside mmdet's own one-to-many positives;
# L = L_base + 1.0 L_pss + 0.25 L_rank (margin 0.5, 100 negatives). The heads come from
# pss.mmdet. Not a config on its own.
custom_imports = dict(imports=['pss.mmdet.heads'], allow_failed_imports=False)
pss_head = dict(
    pss=dict(num_convs=2, branch='regression', stop_grad=True),
    one_to_one=dict(match='mul', alpha=0.8, solver='hungarian'),
    loss_pss=dict(pss_weight=1.0, rank_weight=0.25, rank_margin=0.5, rank_negatives=100))

# GFocalV2 R50 2x multi-scale: mmdet's GFL (one anchor per location, octave base scale 8,
# ATSSAssigner top-9, QFL beta 2, DFL weight 0.25 over 17 bins, GIoU weight 2.0) with
# v2's distribution-guided quality predictor (pss.mmdet.GFocalV2Head: mmdet 3.3 has no
# v2 head), under GFocalV2's own 2x recipe (implus/GFocalV2, gfocal_r50_fpn_ms2x.py; as
# experiments/gfocalv2_r50_2x.yaml): 24 epochs, SGD lr 0.01 at batch 16 / 10 at epochs 16
# and 22, linear warm-up over 500 iterations from 0.001 (the full lr at iteration 500,
# hence end=501), no gradient clipping, shorter side drawn from 480-960 (step 32). The
# backbone, data preprocessing, Pillow decoding and the test pipeline are _recipe_3x.py's.
# Test: score 0.05, top 1000 per level, NMS 0.6, 100 per image.
_base_ = ['./_gfocalv2_2x.py']
custom_imports = dict(imports=['pss.mmdet.heads'], allow_failed_imports=False)

"""PSS inside MMDetection 3.x: plugin heads, config translation and training on mmengine.

Installed with ``make mmdet`` (builds mmcv 2.1.0 for this torch, see install.sh).
An mmdet config loads the heads with

    custom_imports = dict(imports=["pss.mmdet.heads"], allow_failed_imports=False)

which registers ``FCOSPSSHead``, ``ATSSPSSHead``, ``GFocalV2Head``,
``GFocalV2PSSHead`` and ``CondInstPSSHead`` in mmdet's MODELS registry.
Importing ``pss`` or this package never imports mmdet or mmcv: only
:mod:`~pss.mmdet.heads`, :mod:`~pss.mmdet.train` and the modules they use do.
:mod:`~pss.mmdet.translate` (what our config means on mmdet's engine) imports neither
torch nor mmdet, so the sweep can check a cell before it is submitted.
"""

"""PSS inside MMDetection 3.x: plugin heads, weight conversion and training on mmengine.

Installed with ``make mmdet`` (builds mmcv 2.1.0 for this torch, see install.sh).
An mmdet config loads the heads with

    custom_imports = dict(imports=["pss.mmdet"], allow_failed_imports=False)

which registers ``FCOSPSSHead`` and ``ATSSPSSHead`` in mmdet's MODELS registry.
Importing ``pss`` itself never imports mmdet or mmcv; only this package does.
"""

from pss.mmdet.heads import ATSSPSSHead, FCOSPSSHead

__all__ = ["ATSSPSSHead", "FCOSPSSHead"]

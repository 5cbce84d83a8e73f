"""Detectors: ``Detector(cfg.model)`` builds fcos, atss, fcos_pss or atss_pss."""

from pss.contract import MODES
from pss.models.detector import Detector

__all__ = ["MODES", "Detector"]

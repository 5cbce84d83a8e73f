"""Detectors: ``Detector(cfg.model)`` builds fcos, atss, gfocalv2 or their _pss models."""

from pss.contract import MODES
from pss.models.detector import Detector

__all__ = ["MODES", "Detector"]

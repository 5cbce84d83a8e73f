"""Detectors: ``Detector(cfg.model)`` builds fcos, atss, fcos_pss or atss_pss."""

from pss.models.detector import MODES, Detector

__all__ = ["MODES", "Detector"]

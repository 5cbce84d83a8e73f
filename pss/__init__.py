"""NMS-free object detection with a positive sample selector (FCOS_PSS, ATSS_PSS)."""

__version__ = "0.1.0"

"""Deployment: a trained detector on image files, as one exportable graph, and drawn.

:mod:`~pss.deploy.graph` is the detector with its post-processing as one tensor-only
module (what ONNX export writes), :mod:`~pss.deploy.inference` runs it on image files
(from a checkpoint or an ONNX file) and :mod:`~pss.deploy.draw` draws detections.
The commands are ``python -m pss.predict``, ``pss.export`` and ``pss.visualize``.
"""

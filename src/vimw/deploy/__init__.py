"""Deployment: downstream models as files other runtimes load (ONNX)."""

from vimw.deploy.onnx import export_onnx, onnx_latency

__all__ = ["export_onnx", "onnx_latency"]

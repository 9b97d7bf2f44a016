"""A static HTML report of a zoo, downstream models and benchmark results (``vimw report``)."""

from vimw.report.build import build_report, read_jsonl

__all__ = ["build_report", "read_jsonl"]

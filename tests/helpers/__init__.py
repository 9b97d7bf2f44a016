"""Helpers for the reliability tests (tests/test_reliability*.py)."""

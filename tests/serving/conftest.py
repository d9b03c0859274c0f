"""Fixtures of the serving tests: `served` (see servekit.py)."""

from servekit import served

__all__ = ["served"]

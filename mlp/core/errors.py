"""Errors of the core that name the field of the request they are about."""

from __future__ import annotations


class SpecError(ValueError):
    """An invalid job spec; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


__all__ = ["SpecError"]

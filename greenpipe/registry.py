"""Kept for old imports: `Handlers` and `UnknownJob` live in greenpipe.handlers."""

from greenpipe.handlers import Handlers, UnknownJob

__all__ = ["Handlers", "UnknownJob"]

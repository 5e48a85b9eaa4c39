"""Fixtures of tests/operator (factories live in factories.py)."""

from tests.operator.factories import cfg, kernel, owner

__all__ = ["cfg", "kernel", "owner"]

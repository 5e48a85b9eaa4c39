"""Fixtures of tests/extender (helpers live in helpers.py)."""

from tests.extender.helpers import server_thread

__all__ = ["server_thread"]

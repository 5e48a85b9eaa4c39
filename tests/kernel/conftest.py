"""Fixtures: a replicated kernel as real processes on loopback, a client for it, and a GPU broker
(HTTP, over the in-process GpuLedger) for the tests that bind GPUs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from notebookos.kernel.local import BrokerServer


@pytest.fixture
def broker_server() -> Iterator[BrokerServer]:
    b = BrokerServer()
    yield b
    b.close()

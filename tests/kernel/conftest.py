"""Fixtures: a replicated kernel as real processes on loopback, a client for it, and a GPU broker
(HTTP, over the in-process GpuLedger) for the tests that bind GPUs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notebookos.kernel.local import LocalKernel
from tests.kernel.broker_server import BrokerServer


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[LocalKernel]:
    k = LocalKernel(tmp_path).start()
    try:
        yield k
    finally:
        k.stop()


# Uses whichever `kernel` the test module sees (some modules share one kernel per module).
@pytest.fixture
def kc(kernel: LocalKernel) -> Iterator[Any]:
    c = kernel.client()
    yield c
    c.stop_channels()


@pytest.fixture
def broker_server() -> Iterator[BrokerServer]:
    b = BrokerServer()
    yield b
    b.close()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--campaign-seeds",
        type=int,
        default=1,
        help="fault campaign: how many seeds to run (the first is the fixed one `make test` runs)",
    )
    parser.addoption("--campaign-cells", type=int, default=150, help="fault campaign: cells per seed")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "campaign_seed" in metafunc.fixturenames:
        n = metafunc.config.getoption("--campaign-seeds")
        metafunc.parametrize("campaign_seed", [1000 + i for i in range(n)])

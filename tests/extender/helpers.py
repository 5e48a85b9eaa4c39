"""Shared helpers for tests/extender: real aiohttp servers on 127.0.0.1 (free port), each in its own thread and loop,
so both async tests and hypothesis' sync tests can drive them over real HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from notebookos.labels import (
    GPU_INVENTORY_ANNOTATION,
    GPU_POOL_LABEL,
    KERNEL_LABEL,
    REPLICA_GPUS_ANNOTATION,
)


class ServerThread:
    """Runs the app built by `factory` (called on the server's loop) until stop()."""

    def __init__(self, factory: Callable[[], Awaitable[web.Application]]) -> None:
        self._factory = factory
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.app: web.Application | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as e:  # surface start-up failures to the test
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        self.app = await self._factory()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the server's loop (e.g. to inspect its state)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def kill(self) -> None:
        """Stop the loop where it stands, like a crashed process: handlers in flight never finish."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()


@pytest.fixture
def server_thread() -> Iterator[Callable[[Callable[[], Awaitable[web.Application]]], ServerThread]]:
    started: list[ServerThread] = []

    def start(factory: Callable[[], Awaitable[web.Application]]) -> ServerThread:
        s = ServerThread(factory).start()
        started.append(s)
        return s

    yield start
    for s in started:
        if s.loop.is_running():
            s.stop()
        elif not s.loop.is_closed():
            s.loop.call_soon(s.loop.stop)
            s.loop.run_forever()  # let the killed server's loop release its sockets
            s.loop.close()


def node_obj(name: str, gpus: int = 8, *, unschedulable: bool = False, healthy: int | None = None) -> dict[str, Any]:
    healthy = gpus if healthy is None else healthy
    inv = [
        {
            "index": i,
            "uuid": f"GPU-{name}-{i}",
            "memoryMiB": 81559,
            "model": "NVIDIA H100 80GB HBM3",
            "healthy": i < healthy,
        }
        for i in range(gpus)
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {GPU_POOL_LABEL: "true"},
            "annotations": {GPU_INVENTORY_ANNOTATION: json.dumps(inv)},
        },
        "spec": {"unschedulable": unschedulable},
        "status": {"capacity": {"nvidia.com/gpu": str(gpus)}},
    }


def replica_pod(
    kernel: str, replica: int = 1, gpus: int = 1, node: str | None = None, ns: str = "ns"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{kernel}-{replica}",
            "namespace": ns,
            "labels": {KERNEL_LABEL: kernel},
            "annotations": {REPLICA_GPUS_ANNOTATION: str(gpus)},
        },
        "spec": {"schedulerName": "notebookos-scheduler", **({"nodeName": node} if node else {})},
        "status": {"phase": "Running" if node else "Pending"},
    }

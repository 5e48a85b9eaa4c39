"""The GPU broker's core: the pure GpuLedger, one lock, and the durable store.

Every mutation holds the lock from the ledger decision until the durable record is written, so
two requests never see the same idle device, and a grant is answered only once it is durable: a
restarted broker rebuilds from the store and can never hand the same device out again.

Execution ids are the callers' (a cell's id), so they are only unique within a kernel: inside the
ledger each is scoped by its kernel (``ns/kernel#id``). One kernel can neither collide with nor
learn about another's executions. Stores and callers only ever see the plain id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import replace

from notebookos.policy.ledger import GpuLedger, Grant, Refusal

from .binding_store import BindingStore, StoreError, WrongNode
from .metrics import BrokerMetrics

log = logging.getLogger(__name__)

SCOPE = "#"  # kernel names and execution ids (see broker_app) never contain it


def scoped_id(kernel: str, execution_id: str) -> str:
    return f"{kernel}{SCOPE}{execution_id}"


def scoped(g: Grant) -> Grant:
    return replace(g, execution_id=scoped_id(g.kernel, g.execution_id))


def public(g: Grant) -> Grant:
    return replace(g, execution_id=g.execution_id.partition(SCOPE)[2])


class Broker:
    def __init__(self, store: BindingStore, metrics: BrokerMetrics | None = None) -> None:
        self.ledger = GpuLedger()
        self.store = store
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self.ready = False
        self._since: dict[str, float] = {}  # scoped execution id -> when granted (monotonic)

    async def start(self) -> list[Grant]:
        """Rebuild the ledger from the durable records; clears (and returns) stale ones."""
        async with self._lock:
            records = [scoped(g) for g in await self.store.load()]
            dropped = [public(g) for g in self.ledger.rebuild(records)]
            for g in dropped:
                log.warning("dropping stale GPU binding %s of %s replica %d", g.execution_id, g.kernel, g.replica)
                await self.store.clear(g)
            self.ready = True
            return dropped

    def set_inventory(self, node: str, devices: Iterable[str], healthy: Iterable[str] | None = None) -> None:
        self.ledger.set_node(node, list(devices), healthy)

    def remove_node(self, node: str) -> None:
        self.ledger.remove_node(node)

    def _refused(self, refusal: Refusal, kernel: str, replica: int, node: str, execution_id: str) -> Refusal:
        if self.metrics:
            self.metrics.refusals.labels(refusal.code).inc()
        out = Refusal(refusal.reason.replace(f"{kernel}{SCOPE}", ""), refusal.code)
        log.info(
            "refused %s replica %d on %s for %s: %s (%s)", kernel, replica, node, execution_id, out.reason, out.code
        )
        return out

    def _ended(self, grant: Grant, how: str) -> None:
        """Account the GPU-seconds of a grant that ends, and log it."""
        since = self._since.pop(grant.execution_id, None)
        seconds = len(grant.devices) * (time.monotonic() - since) if since is not None else 0.0
        if self.metrics:
            self.metrics.releases.inc()
            ns, _, name = grant.kernel.partition("/")
            self.metrics.gpu_seconds.labels(ns, name).inc(seconds)
        g = public(grant)
        log.info(
            "%s %s replica %d on %s: %s after %.1f GPU-seconds (%s)",
            how, g.kernel, g.replica, g.node, ", ".join(g.devices), seconds, g.execution_id,
        )  # fmt: skip

    async def acquire(self, kernel: str, replica: int, node: str, gpus: int, execution_id: str) -> Grant | Refusal:
        """kernel is namespace/name; the answer carries the caller's plain execution id."""
        sid = scoped_id(kernel, execution_id)
        async with self._lock:
            before = self.ledger.grant_for(sid)
            result = self.ledger.acquire(kernel, replica, node, gpus, sid)
            if isinstance(result, Refusal):
                return self._refused(result, kernel, replica, node, execution_id)
            if before is None:
                try:
                    await self.store.write(public(result))
                except WrongNode as e:
                    self.ledger.release(sid)
                    return self._refused(Refusal(str(e), "Conflict"), kernel, replica, node, execution_id)
                except Exception as e:
                    self.ledger.release(sid)  # not durable: not granted
                    raise StoreError(str(e)) from e
                self._since[sid] = time.monotonic()
                if self.metrics:
                    self.metrics.grants.inc()
                log.info(
                    "granted %s replica %d on %s: %s (%s)",
                    kernel, replica, node, ", ".join(result.devices), execution_id,
                )  # fmt: skip
            return public(result)

    async def release(self, kernel: str, execution_id: str) -> Grant | None:
        """Durable record first: if it cannot be cleared the grant stays and the caller retries."""
        sid = scoped_id(kernel, execution_id)
        async with self._lock:
            grant = self.ledger.grant_for(sid)
            if grant is None:
                return None
            await self.store.clear(public(grant))
            self.ledger.release(sid)
            self._ended(grant, "released")
            return public(grant)

    async def forget(self, kernel: str, execution_id: str) -> Grant | None:
        """The replica holding this execution's grant was deleted, and its record with it: free the
        devices in the ledger. Keyed by execution id, so a late deletion event of an old replica
        object never frees the grant of the one that replaced it."""
        async with self._lock:
            grant = self.ledger.release(scoped_id(kernel, execution_id))
            if grant is not None:
                self._ended(grant, "replica deleted, freed")
            return public(grant) if grant is not None else None

    def grants(self, node: str | None = None) -> list[Grant]:
        return [public(g) for g in self.ledger.grants() if node is None or g.node == node]

    def per_node(self) -> list[tuple[str, int, int, int | None]]:
        """(node, GPUs, bound, -) for metrics; the broker knows nothing of subscriptions."""
        out: list[tuple[str, int, int, int | None]] = []
        for node in self.ledger.nodes():
            bound = self.ledger.bound_count(node)
            out.append((node, bound + len(self.ledger.idle_devices(node)), bound, None))
        return out

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

    def _refused(self, refusal: Refusal, kernel: str) -> Refusal:
        if self.metrics:
            self.metrics.refusals.labels(refusal.code).inc()
        return Refusal(refusal.reason.replace(f"{kernel}{SCOPE}", ""), refusal.code)

    async def acquire(self, kernel: str, replica: int, node: str, gpus: int, execution_id: str) -> Grant | Refusal:
        """kernel is namespace/name; the answer carries the caller's plain execution id."""
        sid = scoped_id(kernel, execution_id)
        async with self._lock:
            before = self.ledger.grant_for(sid)
            result = self.ledger.acquire(kernel, replica, node, gpus, sid)
            if isinstance(result, Refusal):
                return self._refused(result, kernel)
            if before is None:
                try:
                    await self.store.write(public(result))
                except WrongNode as e:
                    self.ledger.release(sid)
                    return self._refused(Refusal(str(e), "Conflict"), kernel)
                except Exception as e:
                    self.ledger.release(sid)  # not durable: not granted
                    raise StoreError(str(e)) from e
                if self.metrics:
                    self.metrics.grants.inc()
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
            if self.metrics:
                self.metrics.releases.inc()
            return public(grant)

    async def forget(self, kernel: str, execution_id: str) -> Grant | None:
        """The replica holding this execution's grant was deleted, and its record with it: free the
        devices in the ledger. Keyed by execution id, so a late deletion event of an old replica
        object never frees the grant of the one that replaced it."""
        async with self._lock:
            grant = self.ledger.release(scoped_id(kernel, execution_id))
            if grant is not None:
                log.info("replica %s/%d deleted: freed %s", grant.kernel, grant.replica, ", ".join(grant.devices))
                if self.metrics:
                    self.metrics.releases.inc()
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

"""The GPU broker's core: the pure GpuLedger, one lock, and the durable store.

Every mutation holds the lock from the ledger decision until the durable record is written, so
two requests never see the same idle device, and a grant is answered only once it is durable: a
restarted broker rebuilds from the store and can never hand the same device out again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from notebookos.policy.ledger import GpuLedger, Grant, Refusal

from .binding_store import BindingStore, StoreError, WrongNode
from .metrics import BrokerMetrics

log = logging.getLogger(__name__)


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
            records = await self.store.load()
            dropped = self.ledger.rebuild(records)
            for g in dropped:
                log.warning("dropping stale GPU binding %s of %s replica %d", g.execution_id, g.kernel, g.replica)
                await self.store.clear(g)
            self.ready = True
            return dropped

    def set_inventory(self, node: str, devices: Iterable[str], healthy: Iterable[str] | None = None) -> None:
        self.ledger.set_node(node, list(devices), healthy)

    def remove_node(self, node: str) -> None:
        self.ledger.remove_node(node)

    async def acquire(self, kernel: str, replica: int, node: str, gpus: int, execution_id: str) -> Grant | Refusal:
        async with self._lock:
            before = self.ledger.grant_for(execution_id)
            result = self.ledger.acquire(kernel, replica, node, gpus, execution_id)
            if isinstance(result, Grant) and before is None:
                try:
                    await self.store.write(result)
                except WrongNode as e:
                    self.ledger.release(execution_id)
                    refusal = Refusal(str(e), "Conflict")
                    if self.metrics:
                        self.metrics.refusals.labels(refusal.code).inc()
                    return refusal
                except Exception as e:
                    self.ledger.release(execution_id)  # not durable: not granted
                    raise StoreError(str(e)) from e
                if self.metrics:
                    self.metrics.grants.inc()
            elif isinstance(result, Refusal) and self.metrics:
                self.metrics.refusals.labels(result.code).inc()
            return result

    async def release(self, execution_id: str) -> Grant | None:
        """Durable record first: if it cannot be cleared the grant stays and the caller retries."""
        async with self._lock:
            grant = self.ledger.grant_for(execution_id)
            if grant is None:
                return None
            await self.store.clear(grant)
            self.ledger.release(execution_id)
            if self.metrics:
                self.metrics.releases.inc()
            return grant

    async def forget(self, execution_id: str) -> Grant | None:
        """The replica holding this execution's grant was deleted, and its record with it: free the
        devices in the ledger. Keyed by execution id, so a late deletion event of an old replica
        object never frees the grant of the one that replaced it."""
        async with self._lock:
            grant = self.ledger.release(execution_id)
            if grant is not None:
                log.info("replica %s/%d deleted: freed %s", grant.kernel, grant.replica, ", ".join(grant.devices))
                if self.metrics:
                    self.metrics.releases.inc()
            return grant

    def per_node(self) -> list[tuple[str, int, int, int | None]]:
        """(node, GPUs, bound, -) for metrics; the broker knows nothing of subscriptions."""
        out: list[tuple[str, int, int, int | None]] = []
        for node in self.ledger.nodes():
            bound = self.ledger.bound_count(node)
            out.append((node, bound + len(self.ledger.idle_devices(node)), bound, None))
        return out

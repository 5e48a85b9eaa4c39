"""The GPU ledger: which physical device belongs to which replica right now.

Pure and synchronous. The GPU broker (scheduler_extender/) wraps it with HTTP, authentication and
durable records in each replica's ``status.gpuBinding``; the simulator and in-process tests use it
directly. Invariants (property-tested):

* a device is never granted to two executions at once;
* acquire and release are idempotent (same execution id -> same answer);
* a release names the execution it ends, so a late release of an old execution can never free the
  devices of a newer one;
* ``rebuild`` from the durable records restores exactly the live grants.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Grant:
    """Devices granted to one replica for one execution."""

    kernel: str
    replica: int
    node: str
    devices: tuple[str, ...]
    execution_id: str
    seq: int


@dataclass(frozen=True)
class Refusal:
    """Why an acquire could not be granted."""

    reason: str
    code: str = "Unavailable"  # Unavailable | Conflict | UnknownNode | Invalid


@dataclass
class _Node:
    devices: tuple[str, ...]
    healthy: set[str] = field(default_factory=set)


class GpuLedger:
    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}
        self._grants: dict[str, Grant] = {}  # execution id -> grant
        self._owner: dict[str, str] = {}  # device uuid -> execution id
        self._seq = 0

    # --- inventory ---------------------------------------------------------------------------------

    def set_node(self, node: str, devices: Sequence[str], healthy: Iterable[str] | None = None) -> None:
        """Declare (or update) a node's devices, as the node agent publishes them. Devices in use
        stay granted even if they disappear from the inventory; they are just not granted again."""
        devs = tuple(devices)
        self._nodes[node] = _Node(devs, set(devs if healthy is None else healthy))

    def remove_node(self, node: str) -> None:
        self._nodes.pop(node, None)

    def nodes(self) -> list[str]:
        return sorted(self._nodes)

    def idle_devices(self, node: str) -> list[str]:
        n = self._nodes.get(node)
        if n is None:
            return []
        return [d for d in n.devices if d in n.healthy and d not in self._owner]

    def bound_count(self, node: str) -> int:
        return sum(len(g.devices) for g in self._grants.values() if g.node == node)

    def grants(self) -> list[Grant]:
        return sorted(self._grants.values(), key=lambda g: g.seq)

    def grant_for(self, execution_id: str) -> Grant | None:
        return self._grants.get(execution_id)

    def grant_of_replica(self, kernel: str, replica: int) -> Grant | None:
        for g in self._grants.values():
            if g.kernel == kernel and g.replica == replica:
                return g
        return None

    # --- acquire / release ---------------------------------------------------------------------------

    def acquire(self, kernel: str, replica: int, node: str, gpus: int, execution_id: str) -> Grant | Refusal:
        if gpus < 0:
            return Refusal(f"gpus must be >= 0, got {gpus}", "Invalid")
        if not execution_id:
            return Refusal("execution id must not be empty", "Invalid")
        existing = self._grants.get(execution_id)
        if existing is not None:
            if (existing.kernel, existing.replica, existing.node, len(existing.devices)) == (
                kernel,
                replica,
                node,
                gpus,
            ):
                return existing  # idempotent retry
            return Refusal(
                f"execution {execution_id} already holds {len(existing.devices)} GPUs on {existing.node} "
                f"for {existing.kernel} replica {existing.replica}",
                "Conflict",
            )
        held = self.grant_of_replica(kernel, replica)
        if held is not None:
            return Refusal(
                f"replica {replica} of {kernel} still holds GPUs for execution {held.execution_id}; release it first",
                "Conflict",
            )
        if node not in self._nodes:
            return Refusal(f"node {node} has no GPU inventory", "UnknownNode")
        idle = self.idle_devices(node)
        if len(idle) < gpus:
            # The caller names the node (it asked for it); the reason says only what is missing.
            return Refusal(f"{len(idle)} idle GPUs, {gpus} needed", "Unavailable")
        self._seq += 1
        grant = Grant(kernel, replica, node, tuple(idle[:gpus]), execution_id, self._seq)
        self._grants[execution_id] = grant
        for d in grant.devices:
            self._owner[d] = execution_id
        return grant

    def release(self, execution_id: str) -> Grant | None:
        """End an execution's grant. Returns what was released, None if nothing was held (already
        released, or never granted): a stale release is a no-op by construction."""
        grant = self._grants.pop(execution_id, None)
        if grant is None:
            return None
        for d in grant.devices:
            if self._owner.get(d) == execution_id:
                del self._owner[d]
        return grant

    def release_replica(self, kernel: str, replica: int) -> Grant | None:
        """Release whatever a replica holds (its pod is gone)."""
        g = self.grant_of_replica(kernel, replica)
        return self.release(g.execution_id) if g else None

    # --- durability ------------------------------------------------------------------------------------

    def rebuild(self, records: Iterable[Grant]) -> list[Grant]:
        """Restore grants from durable records (replicas' status.gpuBinding) after a restart.

        Records are applied newest first (by seq); a record that names a device already owned by a
        newer record is stale and dropped. Returns the dropped records, so the caller can clear them.
        """
        self._grants.clear()
        self._owner.clear()
        dropped: list[Grant] = []
        seen_replicas: set[tuple[str, int]] = set()
        for rec in sorted(records, key=lambda g: g.seq, reverse=True):
            key = (rec.kernel, rec.replica)
            if rec.execution_id in self._grants or key in seen_replicas or any(d in self._owner for d in rec.devices):
                dropped.append(rec)
                continue
            self._grants[rec.execution_id] = rec
            seen_replicas.add(key)
            for d in rec.devices:
                self._owner[d] = rec.execution_id
        self._seq = max([self._seq, *(g.seq for g in self._grants.values()), *(g.seq for g in dropped)])
        return dropped

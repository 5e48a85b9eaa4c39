"""The simulator's mutable state: GPU hosts and kernels, and how the shared policy sees them."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from notebookos.policy.migration import Member
from notebookos.policy.placement import NodeView
from notebookos.sim.workload import Cell


@dataclass
class Host:
    name: str
    requested_at: float
    ready_at: float
    state: str = "provisioning"  # provisioning | ready | releasing
    replicas: set[tuple[int, int]] = field(default_factory=set)
    subscribed: int = 0
    bound: int = 0
    idle_since: float = 0.0
    _kernels: frozenset[str] | None = None
    _view: tuple[tuple[int, int, str, frozenset[str]], NodeView] | None = None

    def kernels(self) -> frozenset[str]:
        if self._kernels is None:
            self._kernels = frozenset(f"k{s}" for s, _ in self.replicas)
        return self._kernels

    def view(self, gpus: int) -> NodeView:
        """The host as the policy sees it; kept until the host changes (every tick asks for all of them)."""
        key = (self.subscribed, self.bound, self.state, self.kernels())
        if self._view is None or self._view[0] != key:
            self._view = (
                key,
                NodeView(self.name, gpus, self.subscribed, self.bound, key[3], self.state != "releasing"),
            )
        return self._view[1]

    def add(self, session: int, replica: int, gpus: int) -> None:
        self.replicas.add((session, replica))
        self.subscribed += gpus
        self._kernels = None

    def remove(self, session: int, replica: int, gpus: int) -> None:
        self.replicas.discard((session, replica))
        self.subscribed -= gpus
        self._kernels = None


@dataclass
class Kernel:
    session: int
    gpus: int
    hosts: list[str | None]
    up: list[float]
    queue: deque[Cell] = field(default_factory=deque)
    busy: bool = False
    """A cell is running, waiting for GPUs, or the kernel is syncing state after one."""
    running: bool = False
    """A cell runs (GPUs bound to replica ``last_exec``) or the kernel syncs its state after it."""
    ended: bool = False
    last_exec: int | None = None
    grant: str | None = None
    retry_at: float = -1.0
    last_end: float = -math.inf
    rebalance_after: float = -math.inf
    rebalance_backoff: float = 0.0

    def members(self, now: float) -> list[Member]:
        """Its replicas as the migration and drain rules see them: live once up, the executor's
        member executing while its cell runs or syncs."""
        return [Member(i, n, self.up[i] <= now, self.running and i == self.last_exec) for i, n in enumerate(self.hosts)]

"""Emptying a GPU node: where each of its replicas goes, and which nodes scale-in empties first.

Pure decisions, shared by the operator (node drains; it does not choose nodes to empty yet) and the simulator,
so the simulator measures the rules that run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from notebookos.policy.migration import Member, NodeKey
from notebookos.policy.placement import NodeView, ReplicaRequest, check_node, rank_key

DRAIN_SEARCH_STEPS = 2_000
"""Homes a drain plan tries before it gives up and keeps the node: a node whose replicas only fit
after that many tries is rarely the cheapest one to empty, and scale-in asks on every round."""

Move = tuple[str, int, str]
"""(kernel, replica id, target node)."""


@dataclass(frozen=True)
class Resident:
    """A kernel with a replica on the node to drain: its request and every member it has."""

    request: ReplicaRequest
    members: tuple[Member, ...]


def drain_plan(
    node: NodeView,
    residents: Sequence[Resident],
    others: Iterable[NodeView],
    ratio: float,
    rank: NodeKey = rank_key,
) -> list[Move] | None:
    """A new home on `others` for every replica on `node`, or None: not now, or not every replica
    has one (the node is kept).

    Not now while a resident kernel runs a cell (its executor finishes first, and its standbys carry
    the cell's commits) or has a member not live (one member of a kernel in motion at a time). Each
    move must pass `check_node` with the moves planned before it counted into its target (promised
    GPUs, the kernel's presence), so two moves never overfill a node or pair two siblings. Replicas
    go in the given order, each to the best node by `rank` that still leaves homes for the rest: a
    depth-first search whose first path is the greedy plan, stopped after DRAIN_SEARCH_STEPS tries.
    A standby holds no GPUs, so a move needs none idle."""
    if any(m.executing or not m.live for r in residents for m in r.members):
        return None
    todo = [(r.request, m.replica) for r in residents for m in r.members if m.node == node.name]
    views = {n.name: n for n in others if n.name != node.name}
    if any(all(check_node(n, req, ratio) is not None for n in views.values()) for req, _ in todo):
        return None  # a replica fits nowhere even alone: no need to search
    plan: list[Move] = []
    steps = 0

    def place(j: int) -> bool:
        nonlocal steps
        if j == len(todo):
            return True
        req, replica = todo[j]
        for t in sorted((n for n in views.values() if check_node(n, req, ratio) is None), key=rank):
            steps += 1
            if steps > DRAIN_SEARCH_STEPS:
                return False
            views[t.name] = replace(t, subscribed=t.subscribed + req.gpus, kernels=t.kernels | {req.kernel})
            plan.append((req.kernel, replica, t.name))
            if place(j + 1):
                return True
            plan.pop()
            views[t.name] = t
        return False

    return plan if place(0) else None


def scale_in_candidates(
    nodes: Iterable[NodeView], idle_s: Mapping[str, float], grace_s: float, max_replicas: int | None = None
) -> list[str]:
    """The nodes scale-in may empty, in the order to try them.

    Only nodes with no GPU bound, idle (`idle_s`: seconds since their last GPU was released) for at
    least `grace_s` (a node that costs less to keep than to get back is kept), and with at most
    `max_replicas` replicas (None: any). Fewest replicas first (fewest moves), then by name."""
    fits = [
        n
        for n in nodes
        if n.bound == 0
        and n.name in idle_s
        and idle_s[n.name] >= grace_s
        and (max_replicas is None or len(n.kernels) <= max_replicas)
    ]
    # one replica per kernel and node, so a node's kernels count its replicas
    return [n.name for n in sorted(fits, key=lambda n: (len(n.kernels), n.name))]

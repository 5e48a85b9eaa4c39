"""Which replica of a kernel runs a cell, which one moves when none can, and where it goes.

Pure decisions, shared by the live system (the router orders its executor candidates with
`executor_order`; the operator picks a migration with `victim` and `target`) and the simulator, so
the simulator measures the rules that run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from notebookos.policy.placement import NodeView, ReplicaRequest, check_node, rank_key

NodeKey = Callable[[NodeView], tuple[int, float, str]]


@dataclass(frozen=True)
class Member:
    """One replica of a kernel, as a migration decision sees it."""

    replica: int
    node: str | None
    """Where its current pod runs (None: not placed)."""
    live: bool = True
    """Its pod is up and in the Raft group (a member being replaced or moved is not)."""
    executing: bool = False
    """It runs a cell now (it holds GPUs): never moved under a running cell."""


def executor_order(candidates: Iterable[int], last: int | None, key: Callable[[int], Any] | None = None) -> list[int]:
    """Replicas to try as a cell's executor, best first: the previous executor (its node may have
    the model's data cached, its GPU memory warm), then the others by `key` (default: replica id)."""
    ids = list(candidates)  # read once: an iterator would be empty by the second look
    rest = sorted((i for i in ids if i != last), key=key if key is not None else (lambda i: i))
    return ([last] if last is not None and last in ids else []) + rest


def movable(members: Sequence[Member]) -> list[Member]:
    """The members a migration may move now: none while any member is not live or not placed (one
    member of a kernel in motion at a time, so a Raft majority stays up), never a cell's executor."""
    if not members or any(not m.live or m.node is None for m in members):
        return []
    return [m for m in members if not m.executing]


def victim(members: Sequence[Member], nodes: Mapping[str, NodeView]) -> int | None:
    """The replica to move when none of the kernel's nodes has its GPUs free, or None (wait).

    Among the `movable` members, the one on the most contended node (most GPUs bound, then most
    promised, then the lowest replica id): moving it frees the most."""
    allowed = movable(members)
    if not allowed:
        return None

    def load(m: Member) -> tuple[int, int, int]:
        view = nodes.get(m.node or "")
        return (view.bound if view else 0, view.subscribed if view else 0, -m.replica)

    return max(allowed, key=load).replica


def target(
    nodes: Iterable[NodeView],
    request: ReplicaRequest,
    ratio: float,
    rank: NodeKey = rank_key,
    *,
    idle: int | None = None,
) -> NodeView | None:
    """Where the moved replica goes: a node that has the cell's GPUs idle now and may take the
    replica (no sibling there, not cordoned, under its subscription cap), best by `rank`.

    `idle`: the GPUs the waiting cell needs free, when less than the kernel's per-cell request (the
    simulator's traces have cells smaller than their session's peak; live cells ask the request)."""
    need = request.gpus if idle is None else idle
    fits = [n for n in nodes if n.idle >= need and check_node(n, request, ratio) is None]
    return min(fits, key=rank, default=None)


def why_no_target(nodes: Iterable[NodeView], request: ReplicaRequest, ratio: float) -> str:
    """Why `target` found nothing, for the kernel's condition and Events: each node's reason."""
    reasons = []
    for n in sorted(nodes, key=lambda n: n.name):
        reason = check_node(n, request, ratio)
        if reason is None and n.idle < request.gpus:
            reason = f"{n.idle} of {n.gpus} GPUs idle, the kernel needs {request.gpus}"
        if reason is not None:
            reasons.append(f"{n.name}: {reason}")
    return "; ".join(reasons) if reasons else "there are no GPU nodes"

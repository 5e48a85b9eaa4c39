"""Placement and oversubscription: which GPU nodes may host a kernel replica, and which is best.

Pure code shared by the scheduler extender (live) and the simulator (what-if), so the simulator
measures the policy that runs. The rules follow the NotebookOS paper (section 3.6) and its
prototype's defaults:

* two replicas of one kernel never share a node;
* a node may be promised at most ``GPUs(node) x replicas x SR`` GPUs of requests, where SR is the
  cluster subscription ratio (demand / busy GPUs, a moving average over 5 samples, capped at
  ``max_subscription_ratio``, 7.0 by default, and equal to that cap while nothing is busy);
* among feasible nodes, prefer the most idle (unbound) GPUs, then the lowest subscription.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DEFAULT_MAX_SUBSCRIPTION_RATIO = 7.0
DEFAULT_REPLICAS = 3
DEFAULT_SMOOTHING_WINDOW = 5
# kube-scheduler's extender scores are 0..MaxExtenderPriority (10), multiplied by the extender weight.
MAX_EXTENDER_PRIORITY = 10


@dataclass(frozen=True)
class NodeView:
    """What placement needs to know about one GPU node."""

    name: str
    gpus: int
    """GPUs the node has (its inventory)."""
    subscribed: int = 0
    """GPUs promised to replicas placed on the node (each replica counts its kernel's per-cell GPUs)."""
    bound: int = 0
    """GPUs bound right now to executing replicas."""
    kernels: frozenset[str] = field(default_factory=frozenset)
    """Kernels (namespace/name) with a replica on the node."""
    schedulable: bool = True
    """False when cordoned, draining, or tainted for removal."""
    gpu_memory_bytes: int | None = None
    """Memory of each GPU, when the node agent published it."""

    @property
    def idle(self) -> int:
        return max(self.gpus - self.bound, 0)


@dataclass(frozen=True)
class ReplicaRequest:
    """A replica to place: its kernel and what each of its cells needs."""

    kernel: str
    gpus: int
    replicas: int = DEFAULT_REPLICAS
    gpu_memory_bytes: int | None = None


def subscription_cap(node: NodeView, ratio: float, replicas: int = DEFAULT_REPLICAS) -> float:
    """GPUs of requests the node may be promised."""
    return node.gpus * replicas * ratio


def subscription(node: NodeView, replicas: int = DEFAULT_REPLICAS) -> float:
    """The node's subscription ratio r_h = subscribed / (GPUs x replicas)."""
    if node.gpus <= 0:
        return math.inf if node.subscribed else 0.0
    return node.subscribed / (node.gpus * replicas)


def format_bytes(n: int) -> str:
    """A memory size as people write it: 79.6 GiB, 512 MiB, 100 bytes."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}".rstrip("0").rstrip(".") + f" {unit}"
    return f"{n} bytes"


def check_node(node: NodeView, request: ReplicaRequest, ratio: float) -> str | None:
    """None when the node can take the replica, else the reason it cannot (shown in pod events)."""
    if not node.schedulable:
        return "node is cordoned or being removed"
    if request.kernel in node.kernels:
        return f"node already hosts a replica of kernel {request.kernel}"
    if node.gpus < request.gpus:
        return f"node has {node.gpus} GPUs, the kernel needs {request.gpus} per cell"
    if (
        request.gpu_memory_bytes is not None
        and node.gpu_memory_bytes is not None
        and node.gpu_memory_bytes < request.gpu_memory_bytes
    ):
        return (
            f"node's GPUs have {format_bytes(node.gpu_memory_bytes)} of memory each, "
            f"the kernel needs {format_bytes(request.gpu_memory_bytes)}"
        )
    cap = subscription_cap(node, ratio, request.replicas)
    if node.subscribed + request.gpus > cap + 1e-9:
        return (
            f"GPU subscription cap reached: {node.subscribed} of {cap:g} GPUs promised "
            f"({node.gpus} GPUs x {request.replicas} replicas x ratio {ratio:.2f}), kernel needs {request.gpus} more"
        )
    return None


def filter_nodes(
    nodes: Iterable[NodeView], request: ReplicaRequest, ratio: float
) -> tuple[list[NodeView], dict[str, str]]:
    """Split nodes into those that can take the replica and, for the others, the reason why not."""
    feasible: list[NodeView] = []
    failed: dict[str, str] = {}
    for node in nodes:
        reason = check_node(node, request, ratio)
        if reason is None:
            feasible.append(node)
        else:
            failed[node.name] = reason
    return feasible, failed


def rank_key(node: NodeView, replicas: int = DEFAULT_REPLICAS) -> tuple[int, float, str]:
    """Sort key, best first: most idle GPUs, then lowest subscription, then name (deterministic)."""
    return (-node.idle, subscription(node, replicas), node.name)


def pack_key(node: NodeView, replicas: int = DEFAULT_REPLICAS) -> tuple[int, float, str]:
    """Sort key for best fit, best first: fewest idle GPUs, then highest subscription, then name.
    Keeps whole nodes free for large requests (used by the simulator's packing policies)."""
    return (node.idle, -subscription(node, replicas), node.name)


def rank_scores(nodes: Sequence[NodeView], replicas: int = DEFAULT_REPLICAS) -> dict[str, int]:
    """Extender scores straight from `rank_key`'s order: nodes are grouped by (idle GPUs,
    subscription) and the groups get evenly spaced scores from MAX_EXTENDER_PRIORITY (best) down
    to 0 (worst). Up to 11 distinct groups each get a score of their own, so the subscription
    tie-break survives the integer range; with more groups, neighbours may share a score but the
    order is never inverted."""
    if not nodes:
        return {}

    def level(n: NodeView) -> tuple[int, float]:
        return (-n.idle, round(subscription(n, replicas), 9))

    keys = [level(n) for n in nodes]
    levels = sorted(set(keys))
    if len(levels) == 1:
        return dict.fromkeys((n.name for n in nodes), MAX_EXTENDER_PRIORITY)
    span = len(levels) - 1
    score = {lv: round(MAX_EXTENDER_PRIORITY * (1 - i / span)) for i, lv in enumerate(levels)}
    return {n.name: score[k] for n, k in zip(nodes, keys, strict=True)}


class SubscriptionRatio:
    """The cluster subscription ratio SR = demand / busy GPUs, smoothed by a moving average.

    ``demand`` is the GPUs requested by live kernels (one count per kernel, not per replica) and
    ``busy`` the GPUs bound to executing replicas. With nothing busy SR is the cap, which is also its
    starting value (the prototype's behaviour).
    """

    def __init__(
        self,
        max_ratio: float = DEFAULT_MAX_SUBSCRIPTION_RATIO,
        window: int = DEFAULT_SMOOTHING_WINDOW,
    ) -> None:
        if max_ratio < 1.0:
            raise ValueError(f"max_ratio must be >= 1.0, got {max_ratio}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.max_ratio = max_ratio
        self._samples: deque[float] = deque(maxlen=window)

    @staticmethod
    def instantaneous(demand: float, busy: float, max_ratio: float) -> float:
        if busy <= 0:
            return max_ratio
        return min(max(demand / busy, 1.0), max_ratio)

    def update(self, demand: float, busy: float) -> float:
        self._samples.append(self.instantaneous(demand, busy, self.max_ratio))
        return self.value

    @property
    def value(self) -> float:
        if not self._samples:
            return self.max_ratio
        return sum(self._samples) / len(self._samples)

    @property
    def window_full(self) -> bool:
        """Scale-in is allowed only once the window has filled (prototype behaviour)."""
        return len(self._samples) == self._samples.maxlen

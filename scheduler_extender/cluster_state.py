"""What the extender knows about the cluster, kept current by watches (see informer.py).

The extender sees none of kube-scheduler's cache, so it keeps its own: GPU nodes (inventory),
replica pods bound to nodes (their kernel and per-cell GPUs) and the broker's GPU bindings
(KernelReplica status.gpuBinding). Per-node aggregates are maintained incrementally so a filter
over 5,000 nodes is one dictionary lookup per node, never a LIST against the API server.
Thread-safe: watches run in threads, handlers in the event loop.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from notebookos import labels
from notebookos.labels import GPU_INVENTORY_ANNOTATION, GPU_RESOURCE, KERNEL_LABEL, REPLICA_GPUS_ANNOTATION
from notebookos.policy.placement import NodeView

from .wire import parse_gpus

# Taints that mean "this node is going away": cluster-autoscaler and Karpenter.
REMOVAL_TAINTS = frozenset(
    {"ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted", "karpenter.sh/disruption", labels.SCALE_IN_TAINT_KEY}
)


@dataclass(frozen=True)
class NodeInfo:
    gpus: int
    gpu_memory_mib: int | None = None
    schedulable: bool = True


@dataclass(frozen=True)
class PodEntry:
    kernel: str  # namespace/kernel
    gpus: int
    node: str | None


def parse_inventory(raw: str) -> list[dict[str, Any]]:
    """The node agent's JSON list of {index, uuid, memoryMiB, model, healthy}; ValueError if malformed."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation {GPU_INVENTORY_ANNOTATION} is not JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"annotation {GPU_INVENTORY_ANNOTATION} must be a JSON list")
    for i, d in enumerate(data):
        if not isinstance(d, dict) or not isinstance(d.get("uuid"), str):
            raise ValueError(f"annotation {GPU_INVENTORY_ANNOTATION}[{i}] must be an object with a string uuid")
    return data


def _d(value: Any) -> Mapping[str, Any]:
    """The value if it is an object, else empty: node objects in requests are only loosely checked."""
    return value if isinstance(value, dict) else {}


@functools.lru_cache(maxsize=16384)
def _inventory_summary(raw: str) -> tuple[int, int | None] | None:
    """(healthy GPUs, smallest memory) of an inventory annotation, None if malformed. Cached: the
    scheduler sends the same annotations with every request when nodeCacheCapable is false."""
    try:
        inv = parse_inventory(raw)
    except ValueError:
        return None
    healthy = [d for d in inv if d.get("healthy", True) is not False]
    mems = [d["memoryMiB"] for d in healthy if type(d.get("memoryMiB")) is int]
    return len(healthy), (min(mems) if mems else None)


def node_info_from_object(node: Mapping[str, Any]) -> NodeInfo:
    """GPUs from the node agent's inventory (healthy devices), else the nvidia.com/gpu capacity."""
    meta = _d(node.get("metadata"))
    spec = _d(node.get("spec"))
    taints = spec.get("taints")
    schedulable = spec.get("unschedulable") is not True and not any(
        isinstance(t, dict) and t.get("key") in REMOVAL_TAINTS for t in (taints if isinstance(taints, list) else [])
    )
    raw = _d(meta.get("annotations")).get(GPU_INVENTORY_ANNOTATION)
    summary = _inventory_summary(raw) if isinstance(raw, str) else None
    if summary is not None:
        return NodeInfo(summary[0], summary[1], schedulable)
    cap = _d(_d(node.get("status")).get("capacity")).get(GPU_RESOURCE)
    try:
        gpus = max(int(cap), 0) if isinstance(cap, str | int) and not isinstance(cap, bool) else 0
    except ValueError:
        gpus = 0
    return NodeInfo(gpus, None, schedulable)


def pod_entry_from_object(pod: Mapping[str, Any]) -> PodEntry | None:
    """A live replica pod of a kernel, or None (not a replica, finished, or unreadable annotation)."""
    meta = pod.get("metadata") or {}
    kernel = (meta.get("labels") or {}).get(KERNEL_LABEL)
    annotations = meta.get("annotations") or {}
    if not kernel or REPLICA_GPUS_ANNOTATION not in annotations:
        return None
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    try:
        gpus = parse_gpus(annotations[REPLICA_GPUS_ANNOTATION])
    except ValueError:
        return None
    node = (pod.get("spec") or {}).get("nodeName") or None
    return PodEntry(f"{meta.get('namespace') or 'default'}/{kernel}", gpus, node)


def binding_from_replica(obj: Mapping[str, Any]) -> tuple[str, int] | None:
    """(node, bound GPUs) of a KernelReplica's status.gpuBinding, None when it holds none."""
    b = (obj.get("status") or {}).get("gpuBinding")
    if not isinstance(b, dict) or not isinstance(b.get("node"), str):
        return None
    devices = b.get("devices") or []
    return (b["node"], len(devices) if isinstance(devices, list) else 0)


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


class ClusterState:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, NodeInfo] = {}
        self._pods: dict[str, PodEntry] = {}
        self._bindings: dict[str, tuple[str, int]] = {}
        self._subscribed: Counter[str] = Counter()
        self._node_kernels: dict[str, Counter[str]] = {}
        self._bound: Counter[str] = Counter()
        self._kernel_pods: Counter[str] = Counter()
        self._kernel_gpus: dict[str, int] = {}
        # NodeViews are immutable: build each once and drop it when anything on its node changes,
        # so a filter over thousands of nodes mostly reuses them.
        self._view_cache: dict[str, tuple[NodeInfo, NodeView]] = {}
        self.synced: set[str] = set()
        """Which watches have completed their first LIST (nodes, pods, replicas)."""

    # --- updates (called from watch threads) --------------------------------------------------------

    def set_node(self, name: str, info: NodeInfo | None) -> None:
        with self._lock:
            self._view_cache.pop(name, None)
            if info is None:
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = info

    def replace_nodes(self, nodes: Mapping[str, NodeInfo]) -> None:
        with self._lock:
            self._nodes = dict(nodes)
            self._view_cache.clear()

    def set_pod(self, key: str, entry: PodEntry | None) -> None:
        with self._lock:
            self._remove_pod(key)
            if entry is not None:
                self._add_pod(key, entry)

    def replace_pods(self, pods: Mapping[str, PodEntry]) -> None:
        with self._lock:
            for key in list(self._pods):
                self._remove_pod(key)
            for key, entry in pods.items():
                self._add_pod(key, entry)

    def set_binding(self, key: str, binding: tuple[str, int] | None) -> None:
        with self._lock:
            old = self._bindings.pop(key, None)
            if old is not None:
                self._bound[old[0]] -= old[1]
                self._view_cache.pop(old[0], None)
            if binding is not None:
                self._bindings[key] = binding
                self._bound[binding[0]] += binding[1]
                self._view_cache.pop(binding[0], None)

    def replace_bindings(self, bindings: Mapping[str, tuple[str, int]]) -> None:
        with self._lock:
            self._bindings = dict(bindings)
            self._bound = Counter()
            self._view_cache.clear()
            for node, n in self._bindings.values():
                self._bound[node] += n

    def _add_pod(self, key: str, e: PodEntry) -> None:
        self._pods[key] = e
        self._kernel_pods[e.kernel] += 1
        self._kernel_gpus[e.kernel] = e.gpus
        if e.node:
            self._view_cache.pop(e.node, None)
            self._subscribed[e.node] += e.gpus
            self._node_kernels.setdefault(e.node, Counter())[e.kernel] += 1

    def _remove_pod(self, key: str) -> None:
        e = self._pods.pop(key, None)
        if e is None:
            return
        self._kernel_pods[e.kernel] -= 1
        if self._kernel_pods[e.kernel] <= 0:
            del self._kernel_pods[e.kernel]
            self._kernel_gpus.pop(e.kernel, None)
        if e.node:
            self._view_cache.pop(e.node, None)
            self._subscribed[e.node] -= e.gpus
            kc = self._node_kernels[e.node]
            kc[e.kernel] -= 1
            if kc[e.kernel] <= 0:
                del kc[e.kernel]

    # --- reads -------------------------------------------------------------------------------------

    def node_names(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def view(self, name: str, info: NodeInfo | None = None) -> NodeView | None:
        """NodeView of a node: its inventory from `info` (fresh from the request) or the cache, and
        what is placed and bound on it from the cache. None when the node is unknown."""
        with self._lock:
            return self._view(name, info)

    def views(self, names: Iterable[str], infos: Mapping[str, NodeInfo] | None = None) -> dict[str, NodeView | None]:
        with self._lock:
            return {n: self._view(n, infos.get(n) if infos else None) for n in names}

    def _view(self, name: str, info: NodeInfo | None) -> NodeView | None:
        info = info or self._nodes.get(name)
        if info is None:
            return None
        cached = self._view_cache.get(name)
        if cached is not None and (cached[0] is info or cached[0] == info):
            return cached[1]
        kernels = self._node_kernels.get(name)
        view = NodeView(
            name=name,
            gpus=info.gpus,
            subscribed=self._subscribed.get(name, 0),
            bound=self._bound.get(name, 0),
            kernels=frozenset(kernels) if kernels else frozenset(),
            schedulable=info.schedulable,
            gpu_memory_bytes=info.gpu_memory_mib * 2**20 if info.gpu_memory_mib is not None else None,
        )
        self._view_cache[name] = (info, view)
        return view

    def pod_node(self, key: str) -> str | None:
        """The node a replica pod is bound to, as the pod watch last reported it."""
        with self._lock:
            e = self._pods.get(key)
            return e.node if e is not None else None

    def demand(self) -> int:
        """GPUs requested by live kernels: each kernel's per-cell GPUs once, not once per replica."""
        with self._lock:
            return sum(self._kernel_gpus.values())

    def busy(self) -> int:
        """GPUs bound to executing replicas now."""
        with self._lock:
            return sum(n for _, n in self._bindings.values())

    def per_node(self) -> list[tuple[str, int, int, int]]:
        """(node, gpus, bound, subscribed) for every known node, for metrics."""
        with self._lock:
            return [
                (n, i.gpus, self._bound.get(n, 0), self._subscribed.get(n, 0)) for n, i in sorted(self._nodes.items())
            ]

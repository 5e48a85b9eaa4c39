"""Autoscaling rules: how many GPU hosts the cluster should have for a given GPU load.

Used by the simulator (the live pool is sized by the autoscaler; the operator asks it for nodes with
capacity requests, counted by `scale_out_demand`). The sizing rules follow the
NotebookOS prototype's static policy (paper section 3.8, `multiReplicaValidateCapacity`):

* scale-out target = max(ceil(load x factor / G), min_hosts + buffer);
* scale-in limit   = ceil(load x limit / G), raised to min_hosts + buffer when below it;
* at most ``max_release`` hosts are released per round, and only idle ones.

``load`` is the GPUs committed (bound to executing replicas) right now; G is GPUs per host.
`headroom_target` is the simulator's "ours" variant: it sizes for the recent peak of the load plus a
headroom of GPUs instead of a fixed buffer of whole hosts. `scale_out_demand` counts the new nodes
that requests no node can take need between them (the operator's capacity requests).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from notebookos.policy.placement import ReplicaRequest

DEFAULT_SCALE_OUT_FACTOR = 1.05
DEFAULT_SCALE_IN_LIMIT = 1.10
DEFAULT_BUFFER_HOSTS = 3
DEFAULT_MAX_RELEASE = 2
DEFAULT_INTERVAL_S = 30.0
DEMAND_SEARCH_STEPS = 2_000
"""Packings `scale_out_demand` tries below first-fit's count: exact for small inputs, bounded for
the hundreds of requests a full fixed cluster queues."""


@dataclass(frozen=True)
class ScalingRule:
    """The prototype's parameters, with its defaults (reference_impl.md section 3.1)."""

    gpus_per_host: int = 8
    scale_out_factor: float = DEFAULT_SCALE_OUT_FACTOR
    scale_in_limit: float = DEFAULT_SCALE_IN_LIMIT
    min_hosts: int = 0
    buffer_hosts: int = DEFAULT_BUFFER_HOSTS
    max_release: int = DEFAULT_MAX_RELEASE
    max_hosts: int | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_host < 1:
            raise ValueError(f"gpus_per_host must be >= 1, got {self.gpus_per_host}")
        if self.scale_out_factor < 1.0 or self.scale_in_limit < 1.0:
            raise ValueError("scale_out_factor and scale_in_limit must be >= 1.0")
        if self.min_hosts < 0 or self.buffer_hosts < 0 or self.max_release < 0:
            raise ValueError("min_hosts, buffer_hosts and max_release must be >= 0")


def _hosts_for(gpus: float, gpus_per_host: int) -> int:
    # 1e-9 keeps float noise (e.g. 16 * 1.05 / 8 = 2.1000000000000001) from adding a host.
    return max(0, math.ceil(gpus / gpus_per_host - 1e-9))


def _cap(hosts: int, rule: ScalingRule) -> int:
    return hosts if rule.max_hosts is None else min(hosts, rule.max_hosts)


def scale_out_target(load: float, rule: ScalingRule) -> int:
    """Hosts the cluster should have: ceil(load x factor / G), at least min_hosts + buffer."""
    floor = rule.min_hosts + rule.buffer_hosts
    return _cap(max(_hosts_for(load * rule.scale_out_factor, rule.gpus_per_host), floor), rule)


def scale_in_limit(load: float, rule: ScalingRule) -> int:
    """Fewest hosts scale-in may leave: ceil(load x limit / G), raised to min_hosts + buffer."""
    limit = _hosts_for(load * rule.scale_in_limit, rule.gpus_per_host)
    floor = rule.min_hosts + rule.buffer_hosts
    return max(limit, floor)


def hosts_to_add(size: int, load: float, rule: ScalingRule) -> int:
    """Hosts to request now (size counts hosts being provisioned)."""
    return max(0, scale_out_target(load, rule) - size)


def hosts_to_release(size: int, load: float, rule: ScalingRule) -> int:
    """Hosts scale-in may release this round: min(size - limit, max_release), never negative."""
    return max(0, min(size - scale_in_limit(load, rule), rule.max_release))


def headroom_target(peak_load: float, headroom_gpus: float, rule: ScalingRule) -> int:
    """Hosts for the recent peak load plus a headroom of GPUs, at least min_hosts.

    A buffer of whole hosts (3 x 8 GPUs) is idle capacity paid around the clock; a headroom sized in
    GPUs covers the next arrivals at a fraction of that when cells are small.
    """
    need = _hosts_for(peak_load * rule.scale_out_factor + headroom_gpus, rule.gpus_per_host)
    return _cap(max(need, rule.min_hosts), rule)


@dataclass(frozen=True)
class Demand:
    nodes: int
    """New nodes of the shape the requests need between them."""
    impossible: tuple[ReplicaRequest, ...] = ()
    """Requests for more GPUs than a node of the shape has: no new node of it helps them."""


def scale_out_demand(requests: Iterable[ReplicaRequest], gpus_per_node: int) -> Demand:
    """How many new nodes of `gpus_per_node` GPUs the requests that fit on no node now need.

    Each request wants its GPUs on one node and two replicas of a kernel never share one, so the
    count is a packing, not GPUs / node: first fit with the largest requests (then the kernels with
    the most replicas) first, then a depth-first search for fewer nodes, down to the lower bound
    (GPUs / node, one kernel's replicas, the requests over half a node), for DEMAND_SEARCH_STEPS tries."""
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be >= 1, got {gpus_per_node}")
    reqs = list(requests)
    impossible = tuple(r for r in reqs if r.gpus > gpus_per_node)
    per_kernel = Counter(r.kernel for r in reqs if r.gpus <= gpus_per_node)
    items = sorted(
        ((r.kernel, r.gpus) for r in reqs if r.gpus <= gpus_per_node),
        key=lambda it: (-it[1], -per_kernel[it[0]], it[0]),
    )
    if not items:
        return Demand(0, impossible)
    total = sum(g for _, g in items)
    bound = max(
        _hosts_for(total, gpus_per_node),
        max(per_kernel.values()),
        sum(1 for _, g in items if 2 * g > gpus_per_node),
    )
    bins: list[tuple[int, set[str]]] = []  # (GPUs left, kernels) per node
    for kernel, g in items:
        for j, (room, kernels) in enumerate(bins):
            if room >= g and kernel not in kernels:
                bins[j] = (room - g, kernels | {kernel})
                break
        else:
            bins.append((gpus_per_node - g, {kernel}))
    best = len(bins)
    if best == bound:
        return Demand(best, impossible)
    # the kernels of the requests from i on: all that tells two nodes apart for what is left to place
    later = [frozenset(k for k, _ in items[i:]) for i in range(len(items) + 1)]
    steps = 0

    def search(i: int, rooms: list[int], kernels: list[set[str]], left: int) -> None:
        # left: GPUs still to place; they need ceil((left - room now open) / node) more nodes
        nonlocal best, steps
        steps += 1
        if best == bound or steps > DEMAND_SEARCH_STEPS:
            return
        if len(rooms) + _hosts_for(max(left - sum(rooms), 0), gpus_per_node) >= best:
            return
        if i == len(items):
            best = len(rooms)
            return
        kernel, g = items[i]
        seen: set[tuple[int, frozenset[str]]] = set()
        for j in range(len(rooms)):
            alike = (rooms[j], frozenset(kernels[j] & later[i]))
            if rooms[j] >= g and kernel not in kernels[j] and alike not in seen:
                seen.add(alike)  # two such nodes are interchangeable for the requests left
                rooms[j] -= g
                kernels[j].add(kernel)
                search(i + 1, rooms, kernels, left - g)
                kernels[j].discard(kernel)
                rooms[j] += g
        rooms.append(gpus_per_node - g)
        kernels.append({kernel})
        search(i + 1, rooms, kernels, left - g)
        rooms.pop()
        kernels.pop()

    search(0, [], [], total)
    return Demand(best, impossible)

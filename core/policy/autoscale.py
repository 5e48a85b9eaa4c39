"""Autoscaling rules: how many GPU hosts the cluster should have for a given GPU load.

Pure functions shared by the operator (cluster-autoscaler hints) and the simulator. They follow the
NotebookOS prototype's static policy (paper section 3.8, `multiReplicaValidateCapacity`):

* scale-out target = max(ceil(load x factor / G), min_hosts + buffer);
* scale-in limit   = ceil(load x limit / G), raised to min_hosts + buffer when below it;
* at most ``max_release`` hosts are released per round, and only idle ones.

``load`` is the GPUs committed (bound to executing replicas) right now; G is GPUs per host.
`headroom_target` is the simulator's "ours" variant: it sizes for the recent peak of the load plus a
headroom of GPUs instead of a fixed buffer of whole hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SCALE_OUT_FACTOR = 1.05
DEFAULT_SCALE_IN_LIMIT = 1.10
DEFAULT_BUFFER_HOSTS = 3
DEFAULT_MAX_RELEASE = 2
DEFAULT_INTERVAL_S = 30.0


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

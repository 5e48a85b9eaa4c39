"""Prometheus metrics of the extender and the broker. Each service gets its own registry (several
can live in one test process); per-node gauges are computed at scrape time from the live state
rather than kept in thousands of gauge children."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PerNode = Callable[[], Iterable[tuple[str, int, int, int | None]]]  # (node, gpus, bound, subscribed or None)


class NodeGpuCollector(Collector):
    def __init__(self, per_node: PerNode, ratio: Callable[[], float] | None = None) -> None:
        self._per_node = per_node
        self._ratio = ratio

    def collect(self) -> Iterable[Metric]:
        bound = GaugeMetricFamily("notebookos_node_bound_gpus", "GPUs bound to executing replicas", labels=["node"])
        idle = GaugeMetricFamily("notebookos_node_idle_gpus", "GPUs not bound to any replica", labels=["node"])
        sub = GaugeMetricFamily(
            "notebookos_node_subscribed_gpus", "GPUs promised to replicas placed on the node", labels=["node"]
        )
        for node, gpus, b, s in self._per_node():
            bound.add_metric([node], b)
            idle.add_metric([node], max(gpus - b, 0))
            if s is not None:
                sub.add_metric([node], s)
        yield bound
        yield idle
        if sub.samples:
            yield sub
        if self._ratio is not None:
            yield GaugeMetricFamily(
                "notebookos_subscription_ratio", "Cluster subscription ratio (smoothed)", value=self._ratio()
            )


class ExtenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "notebookos_extender_requests", "Extender calls", ["verb", "outcome"], registry=registry
        )
        self.rejections = Counter(
            "notebookos_extender_node_rejections", "Nodes the filter rejected for a pod", registry=registry
        )
        self.latency = Histogram(
            "notebookos_extender_seconds",
            "Extender handler latency",
            ["verb"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )


class BrokerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.grants = Counter("notebookos_gpu_grants", "GPU grants made", registry=registry)
        self.releases = Counter("notebookos_gpu_releases", "GPU grants released", registry=registry)
        self.refusals = Counter("notebookos_gpu_refusals", "GPU acquires refused", ["code"], registry=registry)
        self.gpu_seconds = Counter(
            "notebookos_kernel_gpu_seconds_bound",
            "GPU-seconds bound to a kernel's replicas by grants that have ended (GPUs x seconds)",
            ["namespace", "kernel"],
            registry=registry,
        )
        self.latency = Histogram(
            "notebookos_broker_seconds",
            "Broker request latency",
            ["verb"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )

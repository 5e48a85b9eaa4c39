"""The operator's Prometheus metrics: GPU time per kernel as users and platform teams see it.

For each kernel the operator knows what it was promised (``spec.resources.gpus`` for as long as it
exists: what a platform that reserves GPUs per session would hold) and what was bound (the
kernel's ``status.gpuSecondsBound``, the broker's per-grant GPU-seconds summed by the operator).
The two side by side are the saving, live. Values are computed at scrape time from the last
reconcile of each kernel, so they cost nothing between scrapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class KernelSample:
    gpus: int
    created: datetime
    bound_seconds: float
    phase: str


class KernelMetrics(Collector):
    def __init__(self, registry: CollectorRegistry, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._kernels: dict[tuple[str, str], KernelSample] = {}
        self._lock = threading.Lock()
        self._clock = clock
        self.reconciles = Counter(
            "notebookos_operator_reconciles", "Reconciles done, by object kind", ["kind"], registry=registry
        )
        self.migrations = Counter(
            "notebookos_operator_migrations", "Replica moves ended, by outcome", ["outcome"], registry=registry
        )
        self.pending_gpus = Gauge(
            "notebookos_kernel_gpu_demand_pending",
            "GPUs a kernel needs that no node can give (it waits for a new GPU node)",
            ["namespace", "kernel"],
            registry=registry,
        )
        registry.register(self)

    def observe(self, namespace: str, name: str, sample: KernelSample) -> None:
        with self._lock:
            self._kernels[(namespace, name)] = sample

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._kernels.pop((namespace, name), None)
        try:
            self.pending_gpus.remove(namespace, name)
        except KeyError:
            pass

    def collect(self) -> Iterable[Metric]:
        now = self._clock()
        with self._lock:
            kernels = dict(self._kernels)
        labels = ["namespace", "kernel"]
        bound = GaugeMetricFamily(
            "notebookos_kernel_gpu_seconds_bound",
            "GPU-seconds bound to the kernel's replicas while they ran cells (status.gpuSecondsBound)",
            labels=labels,
        )
        promised = GaugeMetricFamily(
            "notebookos_kernel_gpu_seconds_promised",
            "GPU-seconds a reservation would have held: spec.resources.gpus since the kernel was made",
            labels=labels,
        )
        phases = GaugeMetricFamily("notebookos_kernels", "NotebookKernels by phase", labels=["phase"])
        by_phase: dict[str, int] = {}
        total_bound = total_promised = 0.0
        for (ns, name), k in sorted(kernels.items()):
            held = k.gpus * max(0.0, (now - k.created).total_seconds())
            bound.add_metric([ns, name], k.bound_seconds)
            promised.add_metric([ns, name], held)
            total_bound += k.bound_seconds
            total_promised += held
            by_phase[k.phase] = by_phase.get(k.phase, 0) + 1
        for phase, n in sorted(by_phase.items()):
            phases.add_metric([phase], n)
        yield bound
        yield promised
        yield phases
        yield GaugeMetricFamily(
            "notebookos_cluster_gpu_seconds_bound", "GPU-seconds bound, over every live kernel", value=total_bound
        )
        yield GaugeMetricFamily(
            "notebookos_cluster_gpu_seconds_promised",
            "GPU-seconds reservation would have held, over every live kernel",
            value=total_promised,
        )


def serve(port: int, host: str = "0.0.0.0") -> KernelMetrics:
    """Start /metrics on `port` (a thread of prometheus_client's) and return the collector."""
    registry = CollectorRegistry()
    metrics = KernelMetrics(registry)
    start_http_server(port, addr=host, registry=registry)
    return metrics

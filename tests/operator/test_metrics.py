"""The operator's /metrics: GPU-seconds promised and bound, per kernel and over the cluster, served
over real HTTP by prometheus_client."""

from __future__ import annotations

import socket
import urllib.request
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from notebookos.operator.metrics import KernelMetrics, KernelSample, serve

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _sorted_labels(sample: str) -> str:
    """`name{b="2",a="1"}` as `name{a="1",b="2"}`: exposition order is the library's business."""
    name, brace, rest = sample.partition("{")
    return name + brace + ",".join(sorted(rest.rstrip("}").split(","))) + "}" if brace else name


def _page(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[_sorted_labels(name)] = float(value)
    return out


def test_promised_and_bound_per_kernel_and_for_the_cluster() -> None:
    registry = CollectorRegistry()
    m = KernelMetrics(registry, clock=lambda: T0 + timedelta(hours=1))
    m.observe("ns", "a", KernelSample(gpus=2, created=T0, bound_seconds=600.0, phase="Ready"))
    m.observe("ns", "b", KernelSample(gpus=1, created=T0 + timedelta(minutes=30), bound_seconds=60.0, phase="Ready"))
    page = _page(registry)
    assert page['notebookos_kernel_gpu_seconds_promised{kernel="a",namespace="ns"}'] == 7200.0  # 2 GPUs x 1 h
    assert page['notebookos_kernel_gpu_seconds_bound{kernel="a",namespace="ns"}'] == 600.0
    assert page['notebookos_kernel_gpu_seconds_promised{kernel="b",namespace="ns"}'] == 1800.0
    assert page["notebookos_cluster_gpu_seconds_promised"] == 9000.0
    assert page["notebookos_cluster_gpu_seconds_bound"] == 660.0
    assert page['notebookos_kernels{phase="Ready"}'] == 2
    m.forget("ns", "a")  # a deleted kernel leaves the live totals
    assert _page(registry)["notebookos_cluster_gpu_seconds_bound"] == 60.0


def test_served_over_http() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    m = serve(port, host="127.0.0.1")
    m.observe("ns", "k", KernelSample(gpus=1, created=datetime.now(UTC), bound_seconds=3.0, phase="Ready"))
    m.reconciles.labels("NotebookKernel").inc()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    page = {
        _sorted_labels(x.rpartition(" ")[0]): float(x.rpartition(" ")[2]) for x in text.splitlines() if x[:1] != "#"
    }
    assert page['notebookos_kernel_gpu_seconds_bound{kernel="k",namespace="ns"}'] == 3.0
    assert page['notebookos_operator_reconciles_total{kind="NotebookKernel"}'] == 1.0

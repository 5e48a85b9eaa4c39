"""The node agent (one per GPU node, a DaemonSet in the kernel image's environment, hence pykube-ng):

* publishes the node's GPU inventory (index, UUID, memory, model, health) to the node annotation
  ``notebookos.io/gpu-inventory``, where the extender and the broker read it;
* audits which processes use which GPU against the broker's grants, and records a Warning event on
  the node for every device used without a grant (once per distinct violation), and counts it in
  its metrics (``AuditMetrics``, served on ``--metrics-port``).

``audit`` is pure; ``NodeAgent`` does the I/O.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pykube
import requests
from prometheus_client import CollectorRegistry, Counter, Gauge

from notebookos.labels import GPU_INVENTORY_ANNOTATION

from .nvml import NvmlBackend, inventory_json

log = logging.getLogger(__name__)

COMPONENT = "notebookos-node-agent"


@dataclass(frozen=True)
class Violation:
    reason: str
    device: str
    pids: tuple[int, ...]
    message: str


def audit(node: str, processes: Mapping[str, Sequence[int]], grants: Sequence[Mapping[str, Any]]) -> list[Violation]:
    """Devices with processes on them that no live grant of this node covers."""
    granted: dict[str, Mapping[str, Any]] = {}
    for g in grants:
        if g.get("node") == node:
            for d in g.get("devices") or []:
                granted[d] = g
    out = []
    for device, pids in sorted(processes.items()):
        if pids and device not in granted:
            out.append(
                Violation(
                    "GPUUsedWithoutGrant",
                    device,
                    tuple(sorted(pids)),
                    f"GPU {device} on {node} is used by process(es) {', '.join(map(str, sorted(pids)))} "
                    "but the broker granted it to no execution",
                )
            )
    return out


class AuditMetrics:
    """What the audit found, for alerting: a counter of violations (each reported once, as its
    Event) and a gauge of the processes using a GPU outside any grant at the last audit."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.violations = Counter(
            "notebookos_gpu_audit_violations",
            "GPU uses outside any broker grant, each counted once (as its Warning event)",
            ["reason", "device"],
            registry=self.registry,
        )
        self.ungranted = Gauge(
            "notebookos_gpu_ungranted_processes",
            "Processes using a GPU that no live grant covers, at the last audit",
            ["device"],
            registry=self.registry,
        )
        self.audits = Counter("notebookos_gpu_audits", "Audits run", registry=self.registry)
        self.failures = Counter(
            "notebookos_gpu_audit_failures",
            "Audits that could not run (NVML, broker or API errors)",
            registry=self.registry,
        )

    def observe(
        self, processes: Mapping[str, Sequence[int]], violations: Sequence[Violation], new: Sequence[Violation]
    ) -> None:
        self.audits.inc()
        for v in new:
            self.violations.labels(v.reason, v.device).inc()
        found = {v.device: len(v.pids) for v in violations}
        for device in processes:
            self.ungranted.labels(device).set(found.get(device, 0))


class NodeAgent:
    def __init__(
        self,
        api: pykube.HTTPClient,
        node: str,
        backend: NvmlBackend,
        *,
        broker_url: str | None = None,
        token_file: str | None = None,
        event_namespace: str = "default",
        metrics: AuditMetrics | None = None,
    ) -> None:
        self.api = api
        self.metrics = metrics or AuditMetrics()
        self.node = node
        self.backend = backend
        self.broker_url = broker_url.rstrip("/") if broker_url else None
        self.token_file = token_file
        self.event_namespace = event_namespace
        self._published: str | None = None
        self._node_uid: str | None = None
        self._reported: set[tuple[str, str, tuple[int, ...]]] = set()

    def publish(self) -> bool:
        """Write the inventory annotation when it changed; True when written."""
        value = inventory_json(self.backend.devices())
        if value == self._published:
            return False
        node = pykube.Node.objects(self.api).get(name=self.node)
        self._node_uid = node.obj["metadata"].get("uid")
        node.patch({"metadata": {"annotations": {GPU_INVENTORY_ANNOTATION: value}}})
        self._published = value
        log.info("published inventory of %s: %s", self.node, value)
        return True

    def fetch_grants(self) -> list[dict[str, Any]]:
        if not self.broker_url:
            return []
        headers = {}
        if self.token_file:
            with open(self.token_file) as f:  # projected tokens rotate: read each time
                headers["Authorization"] = f"Bearer {f.read().strip()}"
        r = requests.get(f"{self.broker_url}/v1/grants", params={"node": self.node}, headers=headers, timeout=10)
        r.raise_for_status()
        grants: list[dict[str, Any]] = r.json()["grants"]
        return grants

    def audit_once(self) -> list[Violation]:
        """Audit and record an event for each new violation; returns the new ones."""
        try:
            processes = self.backend.processes()
            violations = audit(self.node, processes, self.fetch_grants())
        except Exception:
            self.metrics.failures.inc()
            raise
        new = [v for v in violations if (v.reason, v.device, v.pids) not in self._reported]
        self.metrics.observe(processes, violations, new)
        for v in new:
            self._event(v)
            self._reported.add((v.reason, v.device, v.pids))
        self._reported &= {(v.reason, v.device, v.pids) for v in violations}
        return new

    def _uid(self) -> str:
        if self._node_uid is None:
            self._node_uid = pykube.Node.objects(self.api).get(name=self.node).obj["metadata"].get("uid") or ""
        return self._node_uid

    def _event(self, v: Violation) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.node}.gpu-audit-", "namespace": self.event_namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self._uid()},
            "reason": v.reason,
            "message": v.message,
            "type": "Warning",
            "source": {"component": COMPONENT, "host": self.node},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        pykube.Event(self.api, body).create()
        log.warning("%s", v.message)

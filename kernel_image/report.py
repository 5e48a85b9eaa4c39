"""Telling the operator that a kernel is overloaded: a Warning Event on the NotebookKernel and its
``GPUUnavailable`` condition (True while no replica's node can grant GPUs, False again once a cell
gets them). Best effort: a failure is logged, never raised into the cell's path.

The router uses it when it runs in a cluster (``NOTEBOOKOS_NAMESPACE`` set, as the operator's pod
builder does); pykube-ng talks to the API server with the pod's service-account token.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("notebookos.kernel.report")
GROUP_VERSION = "notebookos.io/v1alpha1"
CONDITION = "GPUUnavailable"


class Reporter(Protocol):
    def overloaded(self, message: str) -> None: ...

    def served(self) -> None: ...


class LogReporter:
    """Outside a cluster: the JSON log line is the report."""

    def overloaded(self, message: str) -> None:
        pass

    def served(self) -> None:
        pass


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeReporter:
    def __init__(self, api: Any, namespace: str, kernel: str) -> None:
        self.api = api  # a pykube.HTTPClient
        self.namespace = namespace
        self.kernel = kernel
        self.flagged = False

    @classmethod
    def in_cluster(cls, namespace: str, kernel: str) -> KubeReporter:
        import pykube

        return cls(pykube.HTTPClient(pykube.KubeConfig.from_service_account()), namespace, kernel)

    def overloaded(self, message: str) -> None:
        try:
            self._event("Overloaded", message)
            self._condition("True", "Overloaded", message)
            self.flagged = True
        except Exception as e:
            log.warning("could not report the overload of %s to the API server: %s", self.kernel, e)

    def served(self) -> None:
        if not self.flagged:
            return
        try:
            self._condition("False", "GPUsGranted", "a replica's node granted the GPUs of the last cell")
            self.flagged = False
        except Exception as e:
            log.warning("could not clear %s of %s: %s", CONDITION, self.kernel, e)

    def _event(self, reason: str, message: str) -> None:
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.kernel}-", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": GROUP_VERSION,
                "kind": "NotebookKernel",
                "name": self.kernel,
                "namespace": self.namespace,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": "notebookos-router"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        r = self.api.post(url="events", namespace=self.namespace, json=body)
        r.raise_for_status()

    def _condition(self, status: str, reason: str, message: str) -> None:
        url = f"notebookkernels/{self.kernel}"
        for _ in range(3):  # optimistic concurrency: the operator writes this status too
            r = self.api.get(url=url, version=GROUP_VERSION, namespace=self.namespace)
            r.raise_for_status()
            obj = r.json()
            conds = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") != CONDITION]
            old = next(
                (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION), None
            )
            since = old["lastTransitionTime"] if old and old.get("status") == status else _now()
            conds.append(
                {
                    "type": CONDITION,
                    "status": status,
                    "reason": reason,
                    "message": message[:1024],
                    "lastTransitionTime": since,
                }
            )
            patch = {
                "metadata": {"resourceVersion": obj["metadata"].get("resourceVersion")},
                "status": {"conditions": conds},
            }
            r = self.api.patch(
                url=f"{url}/status",
                version=GROUP_VERSION,
                namespace=self.namespace,
                json=patch,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            if r.status_code != 409:
                r.raise_for_status()
                return
        raise RuntimeError(f"{CONDITION} of {self.kernel}: the status kept changing (409 three times)")

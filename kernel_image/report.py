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

    def activity(self, executor: int, cells: int, when: str) -> None: ...

    def replica(self, replica: int, raft: dict[str, Any]) -> None: ...


class LogReporter:
    """Outside a cluster: the JSON log line is the report."""

    def overloaded(self, message: str) -> None:
        pass

    def served(self) -> None:
        pass

    def activity(self, executor: int, cells: int, when: str) -> None:
        pass

    def replica(self, replica: int, raft: dict[str, Any]) -> None:
        pass


def now_rfc3339() -> str:
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

    def activity(self, executor: int, cells: int, when: str) -> None:
        """NotebookKernel status fields the router owns: who ran the last cell, how many cells,
        when the last one finished (the operator's idle timeout reads it). Scalars only, so a
        merge patch cannot undo anyone else's change."""
        body = {"status": {"executor": f"{self.kernel}-{executor}", "cells": cells, "lastActivity": when}}
        self._merge_status(f"notebookkernels/{self.kernel}", body)

    def replica(self, replica: int, raft: dict[str, Any]) -> None:
        """KernelReplica status fields the replica owns: its Raft view and a heartbeat."""
        body = {"status": {"raft": raft, "lastHeartbeat": now_rfc3339()}}
        self._merge_status(f"kernelreplicas/{self.kernel}-{replica}", body)

    def _merge_status(self, url: str, body: dict[str, Any]) -> None:
        try:
            r = self.api.patch(
                url=f"{url}/status",
                version=GROUP_VERSION,
                namespace=self.namespace,
                json=body,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            r.raise_for_status()
        except Exception as e:
            log.warning("could not update the status of %s: %s", url, e)

    def _event(self, reason: str, message: str) -> None:
        now = now_rfc3339()
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
            since = old["lastTransitionTime"] if old and old.get("status") == status else now_rfc3339()
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


def reporter_from_env(kernel: str) -> Reporter:
    """KubeReporter in a pod (NOTEBOOKOS_NAMESPACE set and a service account), else LogReporter."""
    import os

    namespace = os.environ.get("NOTEBOOKOS_NAMESPACE", "").strip()
    if not namespace:
        return LogReporter()
    try:
        return KubeReporter.in_cluster(namespace, kernel)
    except Exception as e:
        log.warning("no Kubernetes API for status reports (%s); logging only", e)
        return LogReporter()

"""Telling the operator that a kernel is overloaded: a Warning Event on the NotebookKernel and its
``GPUUnavailable`` condition (True while no replica's node can grant GPUs, False again once a cell
gets them). Best effort: a failure is logged, never raised into the cell's path.

The router and the replicas use it when they run in a cluster (``NOTEBOOKOS_NAMESPACE`` set, as the
operator's pod builder does); pykube-ng talks to the API server with the token, CA and address the
pod really has: the service-account folder named by ``NOTEBOOKOS_SERVICE_ACCOUNT_DIR`` (the
kubelet's mount path by default) and ``KUBERNETES_SERVICE_HOST``/``_PORT``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from notebookos.api.models import API_VERSION, ConditionType, KernelReplica, NotebookKernel
from notebookos.kernel.config import service_account_dir
from notebookos.labels import replica_name

log = logging.getLogger("notebookos.kernel.report")
CONDITION = ConditionType.GPU_UNAVAILABLE.value
# What the operator is doing about an overload, shown to a waiting cell (its conditions' messages).
PROGRESS = (ConditionType.MIGRATING.value, ConditionType.CAPACITY_REQUESTED.value)


# A replica's status is written when its Raft view changes, else at most this often: a heartbeat
# every few seconds from every replica of every kernel would be most of an idle cluster's API
# writes (3,000 replicas every 10 s: 300 writes/s, each an event the operator reconciles).
HEARTBEAT_PERIOD = 300.0


class ReplicaReport:
    """When a replica writes its own status fields (`raft`, `lastHeartbeat`)."""

    def __init__(self, period: float = HEARTBEAT_PERIOD) -> None:
        self.period = period
        self.sent: dict[str, Any] | None = None
        self.at = -float("inf")

    def due(self, raft: dict[str, Any], now: float) -> bool:
        return raft != self.sent or now - self.at >= self.period

    def done(self, raft: dict[str, Any], now: float) -> None:
        self.sent, self.at = dict(raft), now


class Reporter(Protocol):
    def overloaded(self, message: str) -> None: ...

    def served(self) -> None: ...

    def activity(self, executor: int, cells: int, when: str) -> None: ...

    def replica(self, replica: int, raft: dict[str, Any]) -> bool: ...

    def progress(self) -> str | None: ...

    def restore_failed(self, replica: int, message: str) -> None: ...

    def wake(self, request: str) -> bool: ...

    def kernel_object(self) -> dict[str, Any] | None: ...


class LogReporter:
    """Outside a cluster: the JSON log line is the report."""

    def overloaded(self, message: str) -> None:
        pass

    def served(self) -> None:
        pass

    def activity(self, executor: int, cells: int, when: str) -> None:
        pass

    def replica(self, replica: int, raft: dict[str, Any]) -> bool:
        return True

    def progress(self) -> str | None:
        return None

    def restore_failed(self, replica: int, message: str) -> None:
        pass

    def wake(self, request: str) -> bool:
        return False  # no operator to wake the kernel

    def kernel_object(self) -> dict[str, Any] | None:
        return None


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_token(sa_dir: Path | None) -> str | None:
    try:
        return (sa_dir / "token").read_text().strip() if sa_dir is not None else None
    except OSError:
        return None


def _client_for(sa_dir: Path) -> Any:
    import pykube

    return pykube.HTTPClient(pykube.KubeConfig.from_service_account(str(sa_dir)))


class KubeReporter:
    def __init__(self, api: Any, namespace: str, kernel: str, sa_dir: Path | None = None) -> None:
        self._client = api  # a pykube.HTTPClient
        self.namespace = namespace
        self.kernel = kernel
        # None: not known. A predecessor (a router made anew) may have left GPUUnavailable=True that
        # nothing else would clear: the first cell served looks (one read) and clears it.
        self.flagged: bool | None = None
        self.sa_dir = sa_dir
        self._token = _read_token(sa_dir)

    @classmethod
    def in_cluster(cls, namespace: str, kernel: str, sa_dir: Path) -> KubeReporter:
        return cls(_client_for(sa_dir), namespace, kernel, sa_dir)

    @property
    def api(self) -> Any:
        # Projected tokens rotate (the kubelet rewrites the file); pykube reads it once, so a new
        # token means a new client.
        if self.sa_dir is not None:
            token = _read_token(self.sa_dir)
            if token and token != self._token:
                self._client, self._token = _client_for(self.sa_dir), token
        return self._client

    def overloaded(self, message: str) -> None:
        try:
            self._event("Overloaded", message)
            self._condition("True", "Overloaded", message)
            self.flagged = True
        except Exception as e:
            log.warning("could not report the overload of %s to the API server: %s", self.kernel, e)

    def served(self) -> None:
        if self.flagged is None:
            self.flagged = self._gpu_unavailable()
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
        self._merge_status(f"{NotebookKernel.crd_plural}/{self.kernel}", body)

    def replica(self, replica: int, raft: dict[str, Any]) -> bool:
        """KernelReplica status fields the replica owns: its Raft view and a heartbeat; whether
        they were written."""
        body = {"status": {"raft": raft, "lastHeartbeat": now_rfc3339()}}
        return self._merge_status(f"{KernelReplica.crd_plural}/{replica_name(self.kernel, replica)}", body)

    def restore_failed(self, replica: int, message: str) -> None:
        """The replica's `restoreError`: the operator ends the wake with it at once."""
        body = {"status": {"restoreError": message[:4096]}}
        self._merge_status(f"{KernelReplica.crd_plural}/{replica_name(self.kernel, replica)}", body)

    def wake(self, request: str) -> bool:
        """The router's `wakeRequest` on its hibernated kernel ("<checkpoint id>/<request>")."""
        return self._merge_status(f"{NotebookKernel.crd_plural}/{self.kernel}", {"status": {"wakeRequest": request}})

    def kernel_object(self) -> dict[str, Any] | None:
        """The kernel object as the API server has it; None if it cannot be read."""
        try:
            url = f"{NotebookKernel.crd_plural}/{self.kernel}"
            r = self.api.get(url=url, version=API_VERSION, namespace=self.namespace)
            r.raise_for_status()
            return dict(r.json())
        except Exception as e:
            log.warning("could not read %s: %s", self.kernel, e)
            return None

    def _conditions(self) -> list[dict[str, Any]] | None:
        """The kernel's conditions as the API server has them; None if they cannot be read."""
        obj = self.kernel_object()
        return None if obj is None else list((obj.get("status") or {}).get("conditions") or [])

    def _gpu_unavailable(self) -> bool:
        conds = self._conditions()
        if conds is None:
            return True  # clear it to be sure
        return any(c.get("type") == CONDITION and c.get("status") == "True" for c in conds)

    def progress(self) -> str | None:
        """What the operator is doing for this kernel's GPUs (a move, a new node), or None."""
        conds = self._conditions() or []
        said = [str(c.get("message") or "") for c in conds if c.get("type") in PROGRESS and c.get("status") == "True"]
        return "; ".join(m for m in said if m) or None

    def _merge_status(self, url: str, body: dict[str, Any]) -> bool:
        try:
            r = self.api.patch(
                url=f"{url}/status",
                version=API_VERSION,
                namespace=self.namespace,
                json=body,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            r.raise_for_status()
            return True
        except Exception as e:
            log.warning("could not update the status of %s: %s", url, e)
            return False

    def _event(self, reason: str, message: str) -> None:
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.kernel}-", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
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
        url = f"{NotebookKernel.crd_plural}/{self.kernel}"
        for _ in range(3):  # optimistic concurrency: the operator writes this status too
            r = self.api.get(url=url, version=API_VERSION, namespace=self.namespace)
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
                version=API_VERSION,
                namespace=self.namespace,
                json=patch,
                headers={"Content-Type": "application/merge-patch+json"},
            )
            if r.status_code != 409:
                r.raise_for_status()
                return
        raise RuntimeError(f"{CONDITION} of {self.kernel}: the status kept changing (409 three times)")


def reporter_from_env(kernel: str, env: Mapping[str, str] | None = None) -> Reporter:
    """KubeReporter in a pod (NOTEBOOKOS_NAMESPACE set and a service account), else LogReporter."""
    env = os.environ if env is None else env
    namespace = env.get("NOTEBOOKOS_NAMESPACE", "").strip()
    if not namespace:
        return LogReporter()
    sa_dir = service_account_dir(env)
    try:
        return KubeReporter.in_cluster(namespace, kernel, sa_dir)
    except Exception as e:
        log.warning("no Kubernetes API for status reports (service account %s: %s); logging only", sa_dir, e)
        return LogReporter()

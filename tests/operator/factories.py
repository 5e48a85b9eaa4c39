"""Objects as the API server returns them, for the operator's pure builders and status code."""

from __future__ import annotations

from typing import Any

import pytest

from notebookos import labels
from notebookos.api import KernelReplica, NotebookKernel
from notebookos.operator import builders
from notebookos.operator.config import OperatorConfig


def kernel_obj(name: str = "k", namespace: str = "ns", spec: dict[str, Any] | None = None, **status: Any) -> dict:
    return {
        "apiVersion": "notebookos.io/v1alpha1",
        "kind": "NotebookKernel",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "generation": 1},
        "spec": spec or {},
        "status": status,
    }


def replica_obj(kernel: str = "k", rid: int = 1, namespace: str = "ns", **status: Any) -> dict:
    return {
        "apiVersion": "notebookos.io/v1alpha1",
        "kind": "KernelReplica",
        "metadata": {
            "name": f"{kernel}-{rid}",
            "namespace": namespace,
            "uid": f"uid-{kernel}-{rid}",
            "generation": 1,
        },
        "spec": {"kernelName": kernel, "replicaId": rid},
        "status": status,
    }


def pod_obj(
    name: str,
    incarnation: int = 1,
    phase: str = "Running",
    node: str | None = "n1",
    ready: bool = True,
    ip: str | None = "10.0.0.1",
    deleting: bool = False,
    scheduled: dict[str, str] | None = None,
) -> dict:
    conds = []
    if scheduled is not None:
        conds.append({"type": "PodScheduled", **scheduled})
    elif node:
        conds.append({"type": "PodScheduled", "status": "True"})
    if phase == "Running":
        conds.append({"type": "Ready", "status": "True" if ready else "False"})
    meta: dict[str, Any] = {"name": name, "labels": {"notebookos.io/incarnation": str(incarnation)}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase, "conditions": conds}
    if ip:
        status["podIP"] = ip
    spec = {"nodeName": node} if node else {}
    return {"metadata": meta, "spec": spec, "status": status}


@pytest.fixture
def cfg() -> OperatorConfig:
    return OperatorConfig(runner=labels.RUNNER_VALUE)


@pytest.fixture
def kernel() -> NotebookKernel:
    return NotebookKernel.model_validate(kernel_obj())


@pytest.fixture
def owner() -> dict:
    return builders.owner_reference(kernel_obj())


def replica_model(**kw: Any) -> KernelReplica:
    return KernelReplica.model_validate(replica_obj(**kw))

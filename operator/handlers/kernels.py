"""NotebookKernel and KernelReplica events. Event handlers (not create/update handlers) because the
reconcile is level-triggered: any change, and the initial listing after a (re)start, leads to the
same reconcile, and kopf needs no finalizer or per-object bookkeeping for them."""

from __future__ import annotations

from typing import Any

import kopf

from notebookos.api import GROUP, VERSION, KernelReplica, NotebookKernel

from ..reconcile import Reconciler


@kopf.on.event(GROUP, VERSION, NotebookKernel.crd_plural)
def kernel_event(type: str, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    if type == "DELETED":
        return
    reconciler: Reconciler = memo["reconciler"]
    reconciler.kernel(namespace or "", name)


@kopf.on.event(GROUP, VERSION, KernelReplica.crd_plural)
def replica_event(type: str, name: str, namespace: str | None, spec: kopf.Spec, memo: Any, **_: Any) -> None:
    reconciler: Reconciler = memo["reconciler"]
    namespace = namespace or ""
    if type != "DELETED":
        reconciler.replica(namespace, name)
    # The kernel's status is made from its replicas' status (and recreates a deleted replica).
    if kernel := spec.get("kernelName"):
        reconciler.kernel(namespace, kernel)

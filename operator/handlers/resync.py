"""Resync timers: every kernel and replica is reconciled again once it has been unchanged for
`resync_seconds`, so a reconcile that failed (a 5xx, a refused write, conflicts that outlasted the
retries) is retried with no other event. kopf resumes a watch from its last resourceVersion and does
not re-list, so nothing else would bring the operator back to an object that stopped changing.

Registered at start-up, not at import, because the interval is operator configuration. kopf keeps a
finalizer on objects with timers (to stop them before the object goes); the operator's RBAC allows it.
"""

from __future__ import annotations

from typing import Any

import kopf

from notebookos.api import GROUP, VERSION, KernelReplica, NotebookKernel

from ..reconcile import Reconciler


def kernel_resync(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    reconciler: Reconciler = memo["reconciler"]
    reconciler.kernel(namespace or "", name, verify=True)  # reads again what events take as made


def replica_resync(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    reconciler: Reconciler = memo["reconciler"]
    reconciler.replica(namespace or "", name, verify=True)  # the API server's view, not the cache's


def register(interval: float, registry: kopf.OperatorRegistry | None = None) -> None:
    # idle=interval: an object that keeps changing is reconciled by its events already.
    # backoff: a resync that raised is retried sooner than the next interval.
    for plural, fn in ((NotebookKernel.crd_plural, kernel_resync), (KernelReplica.crd_plural, replica_resync)):
        kopf.timer(
            GROUP, VERSION, plural, interval=interval, idle=interval, backoff=min(interval, 10.0), registry=registry
        )(fn)

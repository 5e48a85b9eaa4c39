"""The watch-fed cache (operator/cache.py): kopf indexes of kernels, replicas, the operator's pods
and nodes. kopf fills them from the watches it runs anyway and holds every handler until the
initial listing of each is indexed, so no reconcile reads a half-filled cache.

Async on purpose: kopf runs a sync indexing function in its worker threads, where it would wait
behind the reconciles; an async one runs on the event loop as each event arrives. Registered at
start-up (not at import) because the cache can be turned off (NOTEBOOKOS_WATCH_CACHE=off).
"""

from __future__ import annotations

from typing import Any

import kopf

from notebookos import labels
from notebookos.api import GROUP, VERSION, KernelReplica, NotebookKernel

from ..cache import IndexView, index_entries

# kind -> the kopf index's id (the keyword its index arrives under).
IDS = {
    "NotebookKernel": "notebookos_kernels",
    "KernelReplica": "notebookos_replicas",
    "Pod": "notebookos_pods",
    "Node": "notebookos_nodes",
}


async def _entries(body: kopf.Body, **_: Any) -> dict[tuple[str, str, str], Any]:
    return index_entries(dict(body))  # the raw event's values, not kopf's views of them


def register(registry: kopf.OperatorRegistry | None = None) -> None:
    managed = {"app.kubernetes.io/managed-by": labels.MANAGED_BY}
    for kind, args, only in (
        ("NotebookKernel", (GROUP, VERSION, NotebookKernel.crd_plural), None),
        ("KernelReplica", (GROUP, VERSION, KernelReplica.crd_plural), None),
        ("Pod", ("v1", "pods"), managed),
        ("Node", ("v1", "nodes"), None),
    ):
        kopf.index(*args, id=IDS[kind], labels=only, registry=registry)(_entries)


def view(indexes: dict[str, Any]) -> IndexView | None:
    """The cache's view over the indexes kopf hands to a handler (None when they are not there)."""
    if not all(i in indexes for i in IDS.values()):
        return None
    return IndexView({kind: indexes[i] for kind, i in IDS.items()})

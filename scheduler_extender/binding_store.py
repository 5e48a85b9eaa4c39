"""Where the broker's grants live durably: each KernelReplica's ``status.gpuBinding``.

The broker writes a grant there before it answers, and clears it on release, so after a restart it
rebuilds exactly the grants it ever answered (and perhaps one it wrote but could not answer, which
the caller's retry with the same execution id gets back). A memory store with the same contract
serves unit tests; the API server is the store in production.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.rest import ApiException

from notebookos.api.models import GROUP, VERSION, GpuBinding, KernelReplica
from notebookos.policy.ledger import Grant


class StoreError(RuntimeError):
    """The durable record could not be written; the broker answers 503 and changes nothing."""


class WrongNode(Exception):
    """The replica runs on another node than the grant names: refused, nothing written."""


class BindingStore(Protocol):
    async def load(self) -> list[Grant]: ...

    async def write(self, grant: Grant) -> None: ...

    async def clear(self, grant: Grant) -> None:
        """Remove the record of this grant, and only of this one (a newer grant stays)."""
        ...


def check_node(grant: Grant, replica_node: str | None) -> None:
    """A grant is for the node the replica runs on (its status.nodeName), when that is known."""
    if replica_node and replica_node != grant.node:
        raise WrongNode(f"replica {grant.replica} of {grant.kernel} runs on node {replica_node}, not {grant.node}")


def split_kernel(kernel: str) -> tuple[str, str]:
    ns, _, name = kernel.partition("/")
    return ns, name


def grant_to_binding(grant: Grant, since: dt.datetime | None = None) -> dict[str, Any]:
    return GpuBinding(
        node=grant.node,
        devices=list(grant.devices),
        gpus=len(grant.devices),
        execution_id=grant.execution_id,
        since=since or dt.datetime.now(dt.UTC),
        grant_seq=grant.seq,
    ).to_wire()


def bound_seconds(binding: dict[str, Any], now: dt.datetime) -> float:
    """GPU-seconds of a grant record up to `now`: its devices times the time since the grant."""
    b = GpuBinding.model_validate(binding)
    return len(b.devices) * max(0.0, (now - b.since).total_seconds())


def cleared_status(status: dict[str, Any], execution_id: str, now: dt.datetime) -> dict[str, Any] | None:
    """The status merge patch that ends the grant of `execution_id` and adds its GPU-seconds to the
    replica's total; None when the record is absent or another execution's (a newer grant stays)."""
    binding = status.get("gpuBinding")
    if not binding or binding.get("executionId") != execution_id:
        return None
    total = float(status.get("gpuSecondsBound") or 0) + bound_seconds(binding, now)
    return {"gpuBinding": None, "gpuSecondsBound": round(total, 3)}


def grant_from_replica(obj: dict[str, Any]) -> Grant | None:
    raw = (obj.get("status") or {}).get("gpuBinding")
    if not raw:
        return None
    b = GpuBinding.model_validate(raw)
    spec = obj.get("spec") or {}
    ns = (obj.get("metadata") or {}).get("namespace") or "default"
    return Grant(
        kernel=f"{ns}/{spec['kernelName']}",
        replica=int(spec["replicaId"]),
        node=b.node,
        devices=tuple(b.devices),
        execution_id=b.execution_id,
        seq=b.grant_seq,
    )


class MemoryBindingStore:
    """The same contract in memory, keyed by (kernel, replica), with optional latency."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.records: dict[tuple[str, int], Grant] = {}
        self.replica_nodes: dict[tuple[str, int], str] = {}
        """status.nodeName of replicas, where a test sets one."""
        self.delay_s = delay_s
        self.fail_writes = False
        self.status: dict[tuple[str, int], dict[str, Any]] = {}
        """What KubeBindingStore keeps in each replica's status: the record and the GPU-seconds."""

    async def load(self) -> list[Grant]:
        return list(self.records.values())

    async def write(self, grant: Grant) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_writes:
            raise StoreError("store unavailable (test)")
        check_node(grant, self.replica_nodes.get((grant.kernel, grant.replica)))
        self.records[(grant.kernel, grant.replica)] = grant
        self.status.setdefault((grant.kernel, grant.replica), {})["gpuBinding"] = grant_to_binding(grant)

    async def clear(self, grant: Grant) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_writes:
            raise StoreError("store unavailable (test)")
        key = (grant.kernel, grant.replica)
        current = self.records.get(key)
        if current is not None and current.execution_id == grant.execution_id:
            del self.records[key]
            status = self.status.setdefault(key, {})
            patch = cleared_status(status, grant.execution_id, dt.datetime.now(dt.UTC))
            if patch is not None:
                status.update(patch)
                del status["gpuBinding"]


class KubeBindingStore:
    """KernelReplica status.gpuBinding through the status subresource (official kubernetes client,
    run in a worker thread so the event loop keeps serving)."""

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._names: dict[tuple[str, int], str] = {}  # (ns/kernel, replica id) -> KernelReplica name

    def _list(self, namespace: str | None = None, kernel: str | None = None) -> list[dict[str, Any]]:
        kw: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": KernelReplica.crd_plural}
        if namespace is None:
            data: Any = self._custom.list_cluster_custom_object(**kw)
        else:
            data = self._custom.list_namespaced_custom_object(namespace=namespace, **kw)
        items: list[dict[str, Any]] = data.get("items") or []
        if kernel is not None:
            items = [o for o in items if (o.get("spec") or {}).get("kernelName") == kernel]
        return items

    def _name_of(self, kernel: str, replica: int, refresh: bool = False) -> str:
        key = (kernel, replica)
        if refresh or key not in self._names:
            ns, name = split_kernel(kernel)
            for o in self._list(ns, name):
                self._names[(kernel, int(o["spec"]["replicaId"]))] = o["metadata"]["name"]
        if key not in self._names:
            raise StoreError(f"no KernelReplica with kernelName={split_kernel(kernel)[1]} replicaId={replica}")
        return self._names[key]

    async def load(self) -> list[Grant]:
        items = await asyncio.to_thread(self._list)
        grants = []
        for o in items:
            self._names[(f"{o['metadata']['namespace']}/{o['spec']['kernelName']}", int(o["spec"]["replicaId"]))] = o[
                "metadata"
            ]["name"]
            g = grant_from_replica(o)
            if g is not None:
                grants.append(g)
        return grants

    async def write(self, grant: Grant) -> None:
        try:
            await asyncio.to_thread(self._write, grant)
        except ApiException as e:
            raise StoreError(f"writing status.gpuBinding: {e.status} {e.reason}") from None

    def _write(self, grant: Grant) -> None:
        """Read the replica, check its node, write the binding on that very version (the
        resourceVersion precondition makes check and write atomic; retried on a conflict)."""
        ns, _ = split_kernel(grant.kernel)
        kw: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": KernelReplica.crd_plural, "namespace": ns}
        for attempt in range(5):
            name = self._name_of(grant.kernel, grant.replica, refresh=attempt > 0)
            try:
                obj: Any = self._custom.get_namespaced_custom_object(name=name, **kw)
                check_node(grant, (obj.get("status") or {}).get("nodeName"))
                body = {
                    "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                    "status": {"gpuBinding": grant_to_binding(grant)},
                }
                self._custom.patch_namespaced_custom_object_status(
                    name=name, body=body, _content_type="application/merge-patch+json", **kw
                )
                return
            except ApiException as e:
                if e.status in (404, 409) and attempt < 4:
                    continue  # recreated under another name, or changed since we read it
                raise

    async def clear(self, grant: Grant) -> None:
        try:
            await asyncio.to_thread(self._clear, grant)
        except StoreError:
            return  # the replica is gone: nothing to clear
        except ApiException as e:
            raise StoreError(f"clearing status.gpuBinding: {e.status} {e.reason}") from None

    def _clear(self, grant: Grant) -> None:
        """Read the replica; if its record is this grant's, remove it and add the grant's GPU-seconds
        to status.gpuSecondsBound, on that very version (retried on a conflict). A newer grant's
        record is never removed."""
        ns, _ = split_kernel(grant.kernel)
        kw: dict[str, Any] = {"group": GROUP, "version": VERSION, "plural": KernelReplica.crd_plural, "namespace": ns}
        for attempt in range(5):
            name = self._name_of(grant.kernel, grant.replica, refresh=attempt > 0)
            try:
                obj: Any = self._custom.get_namespaced_custom_object(name=name, **kw)
                patch = cleared_status(obj.get("status") or {}, grant.execution_id, dt.datetime.now(dt.UTC))
                if patch is None:
                    return  # no record, or another execution's
                body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}, "status": patch}
                self._custom.patch_namespaced_custom_object_status(
                    name=name, body=body, _content_type="application/merge-patch+json", **kw
                )
                return
            except ApiException as e:
                if e.status == 404 and attempt == 0:
                    continue  # recreated under another name: look it up again
                if e.status == 404:
                    return  # gone: nothing to clear
                if e.status == 409 and attempt < 4:
                    continue  # changed since we read it
                raise

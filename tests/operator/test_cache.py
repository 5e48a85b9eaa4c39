"""The watch-fed cache (operator/cache.py) against the in-memory Kube: reconciles read memory, not
the API server, and a cache that lags the operator's own writes never makes it act twice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from notebookos.operator import cache
from notebookos.operator.cache import CachedKube, Expect, Expectations
from notebookos.operator.config import OperatorConfig
from notebookos.operator.reconcile import Reconciler
from tests.operator.factories import kernel_obj
from tests.operator.fake_kube import FakeKube
from tests.operator.test_reconcile import NS, _run_pods

CACHED_READS = ("NotebookKernel", "KernelReplica", "Pod", "Node", "ConfigMap")


def _cached(kube: FakeKube, cfg: OperatorConfig) -> Reconciler:
    clock = lambda: datetime(2026, 12, 6, 10, 0, tzinfo=UTC)  # noqa: E731
    return Reconciler(CachedKube(kube, kube.watch), cfg, lambda obj, event: None, clock)  # type: ignore[arg-type]


def _reconcile_all(rec: Reconciler, kube: FakeKube) -> None:
    """What the watches bring: every change delivered, then each replica's and the kernel's reconcile."""
    kube.watch.sync()
    for r in kube.of_kind("KernelReplica", NS):
        rec.replica(NS, r["metadata"]["name"])
    kube.watch.sync()
    rec.kernel(NS, "k")


def _bring_up(rec: Reconciler, kube: FakeKube) -> None:
    kube.watch.sync()
    rec.kernel(NS, "k")
    for _ in range(2):
        _reconcile_all(rec, kube)
        _run_pods(kube, ready=True)
    _reconcile_all(rec, kube)
    _reconcile_all(rec, kube)
    assert kube.get_custom("NotebookKernel", NS, "k")["status"]["phase"] == "Ready"  # type: ignore[index]


def _replica_pods(kube: FakeKube, rid: int) -> list[str]:
    return [p["metadata"]["name"] for p in kube.of_kind("Pod", NS) if p["metadata"]["name"].startswith(f"k-{rid}-i")]


@pytest.mark.parametrize("cached", [True, False])
def test_reconciles_read_the_cache_not_the_api_server(cfg: OperatorConfig, cached: bool) -> None:
    kube = FakeKube()
    kube.put(kernel_obj())
    rec = _cached(kube, cfg)
    if not cached:
        rec.kube.view = None  # type: ignore[attr-defined]  # the baseline: no view, every read goes out
    _bring_up(rec, kube)
    kube.reads.clear()
    _reconcile_all(rec, kube)  # an event on each replica and on the kernel
    reads = {k: kube.reads[k] for k in CACHED_READS if kube.reads[k]}
    if cached:
        assert reads == {}, f"reconciles read {reads} from the API server"
    else:
        assert reads["KernelReplica"] >= 4 and reads["Pod"] >= 4 and reads["NotebookKernel"] >= 4, reads


def test_the_resync_reads_the_api_server(cfg: OperatorConfig) -> None:
    kube = FakeKube()
    kube.put(kernel_obj())
    rec = _cached(kube, cfg)
    _bring_up(rec, kube)
    kube.reads.clear()
    rec.kernel(NS, "k", verify=True)
    rec.replica(NS, "k-1", verify=True)
    assert kube.reads["NotebookKernel"] >= 2 and kube.reads["KernelReplica"] >= 2 and kube.reads["Pod"] >= 2
    assert kube.reads["ConfigMap"] >= 1, "the peers ConfigMap is read again"


@pytest.mark.parametrize("expectations", [True, False])
def test_no_second_pod_when_the_pod_cache_lags_the_operators_own_create(
    cfg: OperatorConfig, expectations: bool
) -> None:
    """A replica's pod is lost; the operator makes pod i2 and writes incarnation 2 to the replica.
    The replicas' watch shows that write, the pods' watch has not shown i2 yet: the replica read
    from the cache says incarnation 2 with no pod. Acting on it would make i3, a second pod for one
    replica; the expectation of i2 puts the pod the create returned in the cache's place."""
    kube = FakeKube()
    kube.put(kernel_obj())
    rec = _cached(kube, cfg)
    _bring_up(rec, kube)
    if not expectations:
        rec.kube.expectations.overlay = lambda *a, **k: {}  # type: ignore[attr-defined,method-assign]
    (lost,) = _replica_pods(kube, 2)
    kube.delete_pod(NS, lost)  # the node's kubelet, a user
    kube.watch.sync()
    rec.replica(NS, "k-2")
    assert _replica_pods(kube, 2) == ["k-2-i2"]
    assert kube.get_custom("KernelReplica", NS, "k-2")["status"]["incarnation"] == 2  # type: ignore[index]
    kube.watch.sync("KernelReplica")  # the replicas' watch is ahead of the pods'
    kube.reads.clear()
    rec.replica(NS, "k-2")
    if expectations:
        assert _replica_pods(kube, 2) == ["k-2-i2"], "one pod per replica"
        assert kube.reads["Pod"] == 0, "the operator's own create, read in place of the cache"
    else:
        assert _replica_pods(kube, 2) == ["k-2-i2", "k-2-i3"], "the stale cache would make a second pod"


def _replicas_reported(cfg: OperatorConfig) -> tuple[FakeKube, Any]:
    """A kernel brought up with its pods not yet ready, whose replicas' status the operator has
    just written (the watch has shown none of those writes)."""
    kube = FakeKube()
    kube.put(kernel_obj())
    rec = _cached(kube, cfg)
    _bring_up(rec, kube)
    _run_pods(kube, ready=False)
    kube.watch.sync()
    for r in kube.of_kind("KernelReplica", NS):
        rec.replica(NS, r["metadata"]["name"])
    return kube, rec


def test_the_operator_reads_its_own_writes_while_the_cache_lags(cfg: OperatorConfig) -> None:
    kube, rec = _replicas_reported(cfg)  # the replicas' status written; not synced
    rec.kernel(NS, "k")  # reads them: the writes' own results
    status = kube.get_custom("NotebookKernel", NS, "k")["status"]  # type: ignore[index]
    assert status["phase"] == "Degraded", "the kernel saw its replicas' new status"
    _run_pods(kube, ready=True)
    kube.watch.sync("Pod")
    kube.reads.clear()
    for r in kube.of_kind("KernelReplica", NS):
        rec.replica(NS, r["metadata"]["name"])
    rec.kernel(NS, "k")
    reads = {k: kube.reads[k] for k in CACHED_READS if kube.reads[k]}
    assert kube.get_custom("NotebookKernel", NS, "k")["status"]["phase"] == "Ready"  # type: ignore[index]
    assert reads == {}, f"{reads}: no API reads, no conflicts"


def test_a_stale_kernel_read_after_a_conflict_goes_to_the_api_server(
    cfg: OperatorConfig,
) -> None:
    """The router wrote the kernel after the operator's last status write, and the watch has shown
    neither: the operator's write conflicts, and its retry reads the API server, not the cache
    (which would conflict five times over)."""
    kube, rec = _replicas_reported(cfg)
    kube.watch.sync("KernelReplica", "Pod")
    rec.kernel(NS, "k")  # writes Degraded; the kernels' watch does not show it
    written = kube.status_patches[-1]
    assert written[0] == "NotebookKernel" and written[2]["phase"] == "Degraded"
    kube.merge("NotebookKernel", NS, "k", {"status": {"cells": 3}})  # the router, meanwhile
    kube.reads.clear()
    _run_pods(kube, ready=True)  # something for the kernel's reconcile to write
    kube.watch.sync("Pod")
    for r in kube.of_kind("KernelReplica", NS):
        rec.replica(NS, r["metadata"]["name"])
    rec.kernel(NS, "k")
    assert kube.reads["NotebookKernel"] == 1, "one direct read after the conflict"
    status = kube.get_custom("NotebookKernel", NS, "k")["status"]  # type: ignore[index]
    assert status["phase"] == "Ready" and status["cells"] == 3


def test_expectations_compare_resource_versions_and_expire() -> None:
    now = [0.0]
    exp = Expectations(clock=lambda: now[0])
    exp.expect("Pod", NS, "k", "p", Expect("10"))
    assert not exp.fresh("Pod", NS, "k", lambda _: None)
    assert not exp.fresh("Pod", NS, "k", lambda _: {"metadata": {"resourceVersion": "9"}})
    assert exp.fresh("Pod", NS, "k", lambda _: {"metadata": {"resourceVersion": "12"}}), "a newer write"
    assert exp.pending() == 0, "met: forgotten"
    exp.expect("Pod", NS, "k", "p", Expect(None, gone=True))
    assert not exp.fresh("Pod", NS, "k", lambda _: {"metadata": {"resourceVersion": "12"}})
    assert exp.fresh("Pod", NS, "k", lambda _: {"metadata": {"deletionTimestamp": "x"}})
    exp.expect("Pod", NS, "k", "p", Expect("abc"))
    assert not exp.fresh("Pod", NS, "k", lambda _: {"metadata": {"resourceVersion": "abd"}})
    now[0] = cache.EXPECTATION_SECONDS + 1
    assert exp.fresh("Pod", NS, "k", lambda _: None), "a watch that never shows it: trusted again"


def test_index_entries_drop_managed_fields_and_key_by_kernel() -> None:
    body: dict[str, Any] = {
        "kind": "Pod",
        "metadata": {"name": "k-1-i1", "namespace": NS, "labels": {"notebookos.io/kernel": "k"}, "managedFields": [1]},
        "spec": {"nodeName": "n1", "containers": [{"name": "replica"}]},
    }
    entries = cache.index_entries(body)
    assert set(entries) == {("name", NS, "k-1-i1"), ("kernel", NS, "k")}
    assert "managedFields" not in entries[("name", NS, "k-1-i1")]["metadata"]
    assert entries[("name", NS, "k-1-i1")]["spec"] == {"nodeName": "n1"}, "of a pod's spec, only its node"
    assert "managedFields" in body["metadata"], "the event's own body is left alone"


def test_the_indexes_are_registered_and_viewed_by_kind() -> None:
    import kopf

    from notebookos.operator.handlers import cache as handlers

    registry = kopf.OperatorRegistry()
    handlers.register(registry)
    ids = {h.id for h in registry._indexing.get_all_handlers()}
    assert ids == set(handlers.IDS.values())
    assert handlers.view({"notebookos_kernels": {}}) is None, "not every index: no view"
    index: dict[Any, Any] = {("name", NS, "k"): [{"metadata": {"name": "k"}}]}
    view = handlers.view({i: index for i in handlers.IDS.values()})
    assert view is not None and view.by_name("Pod", NS, "k") == {"metadata": {"name": "k"}}
    assert view.by_kernel("Pod", NS, "k") == []


def test_a_sweep_forgets_what_the_cache_shows_and_what_is_too_old() -> None:
    now = [0.0]
    exp = Expectations(clock=lambda: now[0])
    exp.expect("Pod", NS, "k", "shown", Expect("5", obj={"metadata": {"name": "shown"}}))
    exp.expect("Pod", NS, "k", "lagging", Expect("9", obj={"metadata": {"name": "lagging"}}))
    exp.expect("KernelReplica", NS, "j", "old", Expect("3"))
    seen = {"shown": {"metadata": {"resourceVersion": "5"}}}
    exp.sweep(lambda kind, ns, name: seen.get(name))
    assert exp.pending() == 2 and exp.kernel("Pod", NS, "shown") is None
    now[0] = cache.EXPECTATION_SECONDS + 1
    exp.sweep(lambda kind, ns, name: None)
    assert exp.pending() == 0, "too old: forgotten, objects and all"


def test_what_a_resync_read_is_not_undone_by_a_lagging_cache(cfg: OperatorConfig) -> None:
    """A resync reads the API server and sees the router ready; the pods' watch still shows it
    pending. The next event's reconcile reads the resync's version, not the cache's older one, so
    the kernel's status does not go back."""
    kube = FakeKube()
    kube.put(kernel_obj())
    rec = _cached(kube, cfg)
    _bring_up(rec, kube)
    router = kube.get("Pod", NS, "k-router")
    assert router is not None
    kube.merge("Pod", NS, "k-router", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    kube.watch.sync()  # the watch shows the router not ready
    rec.kernel(NS, "k")
    assert kube.get_custom("NotebookKernel", NS, "k")["status"]["phase"] == "Degraded"  # type: ignore[index]
    kube.merge("Pod", NS, "k-router", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    rec.kernel(NS, "k", verify=True)  # the resync reads the API server: ready again
    assert kube.get_custom("NotebookKernel", NS, "k")["status"]["phase"] == "Ready"  # type: ignore[index]
    rec.kernel(NS, "k")  # an event's reconcile; the pods' watch has not shown the router ready yet
    assert kube.get_custom("NotebookKernel", NS, "k")["status"]["phase"] == "Ready"  # type: ignore[index]

"""Hibernation through the reconciler, against the in-memory Kube: checkpoint (the router's
answer stubbed where the router would be), replicas removed, a wake request, a failed wake rolled
back, and the refusals that keep a kernel running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from notebookos.operator import hibernate, router_control
from notebookos.operator.config import OperatorConfig
from notebookos.operator.reconcile import Reconciler
from tests.operator.factories import kernel_obj
from tests.operator.fake_kube import FakeKube
from tests.operator.test_reconcile import NS, _bring_up, _reconcile_all, _run_pods

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
CHECKPOINT = {"id": "1-ab", "url": "s3://b/k/checkpoints/1-ab", "bytes": 104_857_600, "variables": 3, "cells": 4}
SECRET = {"kind": "Secret", "metadata": {"name": "k-key", "namespace": NS}, "data": {"key": "a2V5"}}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def bed(cfg: OperatorConfig, monkeypatch: pytest.MonkeyPatch) -> tuple[Reconciler, FakeKube, Clock, list[Any], list]:
    kube, clock, posted, asked = FakeKube(), Clock(), [], []
    answers: list[Any] = []

    def checkpoint(host: str, port: int, key: bytes, timeout: float = 0) -> dict[str, Any] | str:
        asked.append((host, port, key))
        return answers.pop(0) if answers else dict(CHECKPOINT)

    monkeypatch.setattr(router_control, "checkpoint", checkpoint)
    monkeypatch.setattr(router_control, "update_peers", lambda *a, **k: True)  # the router takes a re-point
    monkeypatch.setattr(Reconciler, "_wake_up", lambda *a, **k: None)  # no timers in unit tests
    k = kernel_obj(spec={"idleTimeout": "1m", "storage": {"url": "s3://b"}})
    k["metadata"]["creationTimestamp"] = "2026-12-06T09:59:00Z"
    kube.put(k)
    rec = Reconciler(kube, cfg, lambda obj, event: posted.append(event), clock)
    _bring_up(rec, kube)
    kube.put(SECRET)
    return rec, kube, clock, posted, answers


def _status(kube: FakeKube) -> dict[str, Any]:
    return dict(kube.get_custom("NotebookKernel", NS, "k")["status"])  # type: ignore[index]


def _cond(kube: FakeKube) -> dict[str, Any]:
    return next(c for c in _status(kube)["conditions"] if c["type"] == "Hibernated")


def _sleep(rec: Reconciler, kube: FakeKube, clock: Clock) -> None:
    clock.now += timedelta(minutes=2)
    rec.kernel(NS, "k")  # checkpoint, Hibernating, replicas removed
    rec.kernel(NS, "k")  # nothing left: Hibernated


def test_an_idle_kernel_is_checkpointed_and_its_replicas_go(bed: Any) -> None:
    rec, kube, clock, posted, _ = bed
    assert _status(kube)["phase"] == "Ready"
    clock.now += timedelta(seconds=59)
    rec.kernel(NS, "k")
    assert _status(kube)["phase"] == "Ready"  # not idle long enough
    _sleep(rec, kube, clock)
    st = _status(kube)
    assert st["phase"] == "Hibernated" and st["checkpoint"]["id"] == "1-ab" and st["ready"] == "0/3"
    assert kube.of_kind("KernelReplica", NS) == []
    assert [p for p in kube.of_kind("Pod", NS) if "router" not in p["metadata"]["name"]] == []
    assert kube.get("Pod", NS, "k-router") is not None  # it holds the clients' connections
    assert _cond(kube)["reason"] == "Idle" and "104.9 MB" in _cond(kube)["message"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "Hibernated"
    assert [e.reason for e in posted if e.reason.startswith("Hibernat")] == ["Hibernating"]


def test_a_request_wakes_it_from_its_checkpoint_and_a_failed_wake_is_rolled_back(bed: Any, cfg: OperatorConfig) -> None:
    rec, kube, clock, posted, _ = bed
    _sleep(rec, kube, clock)
    kube.merge("NotebookKernel", NS, "k", {"status": {"wakeRequest": "1-ab/r1"}})  # the router's
    rec.kernel(NS, "k")
    assert _status(kube)["phase"] == "Waking" and _status(kube)["wakeHandled"] == "1-ab/r1"
    _reconcile_all(rec, kube)
    _reconcile_all(rec, kube)
    pods = [p for p in kube.of_kind("Pod", NS) if "router" not in p["metadata"]["name"]]
    assert len(pods) == 3
    for p in pods:
        env = {e["name"]: e.get("value") for e in p["spec"]["containers"][0]["env"]}
        assert env["NOTEBOOKOS_RESTORE_URL"] == CHECKPOINT["url"]
    kube.merge("KernelReplica", NS, "k-2", {"status": {"restoreError": "the checkpoint s3://b/... is corrupt"}})
    rec.kernel(NS, "k")
    assert _status(kube)["phase"] == "Hibernating"  # its replicas are being removed
    rec.kernel(NS, "k")
    st = _status(kube)
    assert st["phase"] == "Hibernated" and st["checkpoint"]["id"] == "1-ab"
    assert _cond(kube)["reason"] == "WakeFailed" and "replica 2 could not restore" in _cond(kube)["message"]
    assert kube.of_kind("KernelReplica", NS) == []
    rec.kernel(NS, "k")
    assert _status(kube)["phase"] == "Hibernated"  # the request was used: no wake loop
    assert any(e.reason == "WakeFailed" and e.type == "Warning" for e in posted)


def test_a_wake_completes_once_every_replica_has_restored(bed: Any) -> None:
    rec, kube, clock, posted, _ = bed
    _sleep(rec, kube, clock)
    kube.merge("NotebookKernel", NS, "k", {"status": {"wakeRequest": "1-ab/r2"}})
    rec.kernel(NS, "k")
    for _ in range(3):
        _reconcile_all(rec, kube)
        _run_pods(kube, ready=True)
    _reconcile_all(rec, kube)
    assert _status(kube)["phase"] == "Waking"  # ready pods, but no replica has said it restored
    for rid in (1, 2, 3):
        kube.merge("KernelReplica", NS, f"k-{rid}", {"status": {"lastHeartbeat": "2026-12-06T10:02:05Z"}})
    clock.now += timedelta(seconds=10)
    rec.kernel(NS, "k")
    assert _status(kube)["phase"] == "Ready" and _cond(kube)["reason"] == "Awake"
    assert any(e.reason == "Woken" for e in posted)


def test_no_store_busy_and_a_failing_store_keep_it_running(bed: Any, cfg: OperatorConfig) -> None:
    rec, kube, clock, posted, answers = bed
    answers += [router_control_busy(), "cannot write the checkpoint to s3://b: PermissionError: denied"]
    clock.now += timedelta(minutes=2)
    rec.kernel(NS, "k")
    assert _status(kube)["phase"] == "Ready" and _cond(kube)["reason"] == "Busy"
    assert not [e for e in posted if e.reason == "HibernationFailed"]  # a running cell is no failure
    rec.kernel(NS, "k")
    assert _status(kube)["phase"] == "Ready" and _cond(kube)["reason"] == "CheckpointFailed"
    assert "nothing lost" in _cond(kube)["message"]
    assert [e.type for e in posted if e.reason == "HibernationFailed"] == ["Warning"]
    assert len(kube.of_kind("KernelReplica", NS)) == 3

    kube.merge("NotebookKernel", NS, "k", {"spec": {"storage": None}})
    rec.kernel(NS, "k")
    assert _cond(kube)["reason"] == "NoStore" and "NOTEBOOKOS_CHECKPOINT_STORE" in _cond(kube)["message"]


def router_control_busy() -> str:
    from notebookos.kernel import contract

    return contract.BUSY


def test_the_idle_deadline_is_reported_for_a_timer(cfg: OperatorConfig) -> None:
    k = kernel_obj(spec={"idleTimeout": "90s"}, lastActivity="2026-12-06T10:00:30Z", phase="Ready")
    from notebookos.api import NotebookKernel
    from notebookos.policy import hibernation

    view = hibernate.view(NotebookKernel.model_validate(k), T0)
    assert hibernation.decide(view, T0 + timedelta(seconds=60)).due == T0 + timedelta(seconds=120)

"""The GPU broker over real HTTP on loopback: concurrency, restarts, idempotency, auth, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from notebookos.extender.auth import Identity, StaticAuthenticator
from notebookos.extender.binding_store import MemoryBindingStore
from notebookos.extender.broker import Broker
from notebookos.extender.broker_app import make_broker_app

NODE_DEVICES = [f"GPU-n0-{i}" for i in range(8)]


def tokens(n_kernels: int = 60) -> dict[str, Identity]:
    t = {f"tok-k{i}": Identity(f"system:serviceaccount:ns:k{i}", "ns", f"k{i}") for i in range(n_kernels)}
    t["tok-admin"] = Identity("system:serviceaccount:notebookos-system:agent", admin=True)
    return t


def start_broker(server_thread, store: MemoryBindingStore):
    holder: dict[str, Broker] = {}

    async def factory() -> web.Application:
        broker = Broker(store)
        broker.set_inventory("n0", NODE_DEVICES)
        broker.set_inventory("n1", ["GPU-n1-0"])
        await broker.start()
        holder["broker"] = broker
        return make_broker_app(broker, StaticAuthenticator(tokens()))

    srv = server_thread(factory)
    return holder["broker"], srv


def hdr(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def acquire_body(k: int, eid: str, gpus: int = 1, replica: int = 1, node: str = "n0") -> dict[str, Any]:
    return {"kernel": f"k{k}", "replica": replica, "node": node, "gpus": gpus, "executionId": eid}


async def fire(url: str, n: int, timeout: float = 30) -> list[tuple[int, dict[str, Any] | None]]:
    """n concurrent acquires of 1 GPU on n0, one per kernel; (status, body) or (0, None) when the
    connection died."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:

        async def one(i: int) -> tuple[int, dict[str, Any] | None]:
            try:
                async with s.post(
                    f"{url}/v1/acquire", json=acquire_body(i, f"exec-{i}"), headers=hdr(f"tok-k{i}")
                ) as r:
                    return r.status, await r.json()
            except (TimeoutError, aiohttp.ClientError):
                return 0, None

        return await asyncio.gather(*(one(i) for i in range(n)))


async def test_50_concurrent_acquires_grant_exactly_8(server_thread) -> None:
    store = MemoryBindingStore(delay_s=0.002)
    _, srv = start_broker(server_thread, store)
    results = await fire(srv.url, 50)
    granted = [b for st, b in results if st == 200]
    refused = [b for st, b in results if st == 409]
    assert len(granted) == 8 and len(refused) == 42
    devices = [d for b in granted for d in b["devices"]]  # type: ignore[index]
    assert sorted(devices) == sorted(NODE_DEVICES)
    assert all(b["code"] == "Unavailable" and "idle GPUs" in b["reason"] for b in refused)  # type: ignore[index]
    assert {g.execution_id for g in store.records.values()} == {b["executionId"] for b in granted}  # type: ignore[index]


async def test_restart_in_the_middle_grants_no_device_twice(server_thread) -> None:
    store = MemoryBindingStore(delay_s=0.01)  # each durable write takes a while: the crash lands mid-flight
    _, a = start_broker(server_thread, store)
    first = asyncio.create_task(fire(a.url, 50, timeout=3))
    await asyncio.sleep(0.05)
    await asyncio.to_thread(a.kill)  # crash: in-flight requests die, unanswered
    results = await first
    answered = {i: b for i, (st, b) in enumerate(results) if st == 200}
    lost = [i for i, (st, _) in enumerate(results) if st == 0]
    assert lost, "the crash should have cut some requests"
    broker_b, b = start_broker(server_thread, store)  # rebuilds from the store
    # every grant answered before the crash survived it
    assert {g.execution_id for g in broker_b.grants()} >= {x["executionId"] for x in answered.values()}
    # clients retry what they never got an answer for, and re-ask what they did: idempotent
    retried = {}
    for i in list(answered) + lost:
        r = requests.post(
            f"{b.url}/v1/acquire", json=acquire_body(i, f"exec-{i}"), headers=hdr(f"tok-k{i}"), timeout=10
        )
        assert r.status_code in (200, 409), r.text
        if r.status_code == 200:
            retried[i] = r.json()
    for i, x in answered.items():
        assert retried[i]["devices"] == x["devices"]
    live = broker_b.grants()
    devices = [d for g in live for d in g.devices]
    assert len(devices) == len(set(devices)) <= 8
    assert {(g.kernel, g.replica): g for g in live} == store.records


def test_idempotent_acquire_and_stale_release(server_thread) -> None:
    _, srv = start_broker(server_thread, MemoryBindingStore())
    u = srv.url
    r1 = requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e1", gpus=2), headers=hdr("tok-k1"), timeout=10)
    r1b = requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e1", gpus=2), headers=hdr("tok-k1"), timeout=10)
    assert r1.status_code == r1b.status_code == 200 and r1.json() == r1b.json()
    busy = requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e2"), headers=hdr("tok-k1"), timeout=10)
    assert busy.status_code == 409 and busy.json()["code"] == "Conflict"
    rel = requests.post(f"{u}/v1/release", json={"executionId": "e1"}, headers=hdr("tok-k1"), timeout=10).json()
    assert rel == {"released": True, "devices": r1.json()["devices"]}
    again = requests.post(f"{u}/v1/release", json={"executionId": "e1"}, headers=hdr("tok-k1"), timeout=10).json()
    assert again == {"released": False, "devices": []}
    r2 = requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e2"), headers=hdr("tok-k1"), timeout=10)
    assert r2.status_code == 200
    stale = requests.post(f"{u}/v1/release", json={"executionId": "e1"}, headers=hdr("tok-k1"), timeout=10).json()
    assert stale["released"] is False
    grants = requests.get(f"{u}/v1/grants", params={"node": "n0"}, headers=hdr("tok-admin"), timeout=10).json()
    assert [g["executionId"] for g in grants["grants"]] == ["e2"]


def test_auth_limits_each_pod_to_its_kernel(server_thread) -> None:
    broker, srv = start_broker(server_thread, MemoryBindingStore())
    u = srv.url
    r = requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e1"), timeout=10)
    assert r.status_code == 401 and "Authorization" in r.json()["reason"]
    r = requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e1"), headers=hdr("forged"), timeout=10)
    assert r.status_code == 401
    r = requests.post(f"{u}/v1/acquire", json=acquire_body(2, "e1"), headers=hdr("tok-k1"), timeout=10)
    assert r.status_code == 403 and "ns/k2" in r.json()["reason"]
    assert requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e1"), headers=hdr("tok-k1"), timeout=10).ok
    # execution ids are scoped by kernel: k2 cannot even see k1's, let alone release it
    r = requests.post(f"{u}/v1/release", json={"executionId": "e1"}, headers=hdr("tok-k2"), timeout=10)
    assert r.json() == {"released": False, "devices": []}
    r = requests.post(f"{u}/v1/release", json={"executionId": "e1", "kernel": "k1"}, headers=hdr("tok-k2"), timeout=10)
    assert r.status_code == 403
    assert [g.execution_id for g in broker.grants()] == ["e1"]
    assert requests.get(f"{u}/v1/grants", headers=hdr("tok-k1"), timeout=10).status_code == 403
    admin_body = {**acquire_body(3, "e3"), "namespace": "ns"}
    assert requests.post(f"{u}/v1/acquire", json=admin_body, headers=hdr("tok-admin"), timeout=10).ok


def test_store_failure_grants_nothing(server_thread) -> None:
    store = MemoryBindingStore()
    broker, srv = start_broker(server_thread, store)
    store.fail_writes = True
    r = requests.post(f"{srv.url}/v1/acquire", json=acquire_body(1, "e1", gpus=8), headers=hdr("tok-k1"), timeout=10)
    assert r.status_code == 503 and "nothing granted" in r.json()["reason"]
    assert broker.ledger.grants() == [] and len(broker.ledger.idle_devices("n0")) == 8
    store.fail_writes = False
    r = requests.post(f"{srv.url}/v1/acquire", json=acquire_body(1, "e1", gpus=8), headers=hdr("tok-k1"), timeout=10)
    assert r.status_code == 200 and len(r.json()["devices"]) == 8


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"kernel": "k1", "replica": 1, "node": "nope", "gpus": 1, "executionId": "e"}, 404, "no GPU inventory"),
        ({"kernel": "k1", "replica": 0, "node": "n0", "gpus": 1, "executionId": "e"}, 400, "replica"),
        ({"kernel": "k1", "replica": 1, "node": "n0", "gpus": "1", "executionId": "e"}, 400, "gpus"),
        ({"kernel": "K_1", "replica": 1, "node": "n0", "gpus": 1, "executionId": "e"}, 400, "kernel"),
        ({"kernel": "k1", "replica": 1, "node": "n0", "gpus": 1}, 400, "executionId"),
        ({"kernel": "k1", "replica": 1, "node": "n0", "gpus": 1, "executionId": "e", "x": 1}, 400, "x"),
        (["not", "an", "object"], 400, "JSON object"),
    ],
)
def test_bad_requests_name_the_problem(server_thread, body, status, needle) -> None:
    _, srv = start_broker(server_thread, MemoryBindingStore())
    r = requests.post(f"{srv.url}/v1/acquire", json=body, headers=hdr("tok-k1"), timeout=10)
    assert r.status_code == status and needle in r.json()["reason"], r.text


def test_bare_paths_of_the_kernel_client_and_forget(server_thread) -> None:
    broker, srv = start_broker(server_thread, MemoryBindingStore())
    r = requests.post(f"{srv.url}/acquire", json=acquire_body(1, "e1", gpus=8), headers=hdr("tok-k1"), timeout=10)
    assert r.status_code == 200 and len(r.json()["devices"]) == 8
    # a late deletion event of some other execution frees nothing; the holder's frees its devices
    assert srv.call(broker.forget("ns/k1", "other")) is None
    assert srv.call(broker.forget("ns/k2", "e1")) is None  # same id, another kernel
    assert srv.call(broker.forget("ns/k1", "e1")) is not None
    assert len(broker.ledger.idle_devices("n0")) == 8
    r = requests.post(f"{srv.url}/release", json={"executionId": "e1"}, headers=hdr("tok-k1"), timeout=10)
    assert r.json() == {"released": False, "devices": []}


def test_broker_metrics(server_thread) -> None:
    _, srv = start_broker(server_thread, MemoryBindingStore())
    requests.post(f"{srv.url}/v1/acquire", json=acquire_body(1, "e1", gpus=3), headers=hdr("tok-k1"), timeout=10)
    requests.post(f"{srv.url}/v1/acquire", json=acquire_body(2, "e2", gpus=6), headers=hdr("tok-k2"), timeout=10)
    text = requests.get(f"{srv.url}/metrics", timeout=10).text
    assert "notebookos_gpu_grants_total 1.0" in text
    assert 'notebookos_gpu_refusals_total{code="Unavailable"} 1.0' in text
    assert 'notebookos_node_bound_gpus{node="n0"} 3.0' in text
    assert 'notebookos_node_idle_gpus{node="n0"} 5.0' in text
    assert "notebookos_node_subscribed_gpus" not in text


def test_grants_only_on_the_node_the_replica_runs_on(server_thread) -> None:
    store = MemoryBindingStore()
    store.replica_nodes[("ns/k1", 1)] = "n1"
    broker, srv = start_broker(server_thread, store)
    r = requests.post(f"{srv.url}/v1/acquire", json=acquire_body(1, "e1", gpus=2), headers=hdr("tok-k1"), timeout=10)
    assert r.status_code == 409 and "runs on node n1, not n0" in r.json()["reason"]
    assert broker.ledger.grants() == [] and store.records == {}
    r = requests.post(
        f"{srv.url}/v1/acquire", json=acquire_body(1, "e1", gpus=1, node="n1"), headers=hdr("tok-k1"), timeout=10
    )
    assert r.status_code == 200 and r.json()["devices"] == ["GPU-n1-0"]


def test_execution_ids_are_scoped_by_kernel(server_thread) -> None:
    """Two kernels may use the same execution id (a cell counter, say): separate grants, and no
    refusal names the other kernel's execution."""
    broker, srv = start_broker(server_thread, MemoryBindingStore())
    a = requests.post(f"{srv.url}/v1/acquire", json=acquire_body(1, "cell-1"), headers=hdr("tok-k1"), timeout=10)
    b = requests.post(f"{srv.url}/v1/acquire", json=acquire_body(2, "cell-1"), headers=hdr("tok-k2"), timeout=10)
    assert a.status_code == b.status_code == 200 and a.json()["devices"] != b.json()["devices"]
    assert a.json()["executionId"] == b.json()["executionId"] == "cell-1"
    c = requests.post(
        f"{srv.url}/v1/acquire", json=acquire_body(1, "cell-1", gpus=2), headers=hdr("tok-k1"), timeout=10
    )
    assert (
        c.status_code == 409
        and "execution cell-1 already holds" in c.json()["reason"]
        and "#" not in c.json()["reason"]
    )
    r = requests.post(f"{srv.url}/v1/release", json={"executionId": "cell-1"}, headers=hdr("tok-k2"), timeout=10)
    assert r.json()["devices"] == b.json()["devices"]
    assert [(g.kernel, g.execution_id) for g in broker.grants()] == [("ns/k1", "cell-1")]


def test_each_grant_and_refusal_is_logged_and_gpu_seconds_counted(
    server_thread, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import time

    store = MemoryBindingStore()
    _, srv = start_broker(server_thread, store)
    u = srv.url
    caplog.set_level(logging.INFO, logger="notebookos.extender.broker")
    r = requests.post(f"{u}/v1/acquire", json=acquire_body(1, "e1", gpus=2), headers=hdr("tok-k1"), timeout=10)
    assert r.status_code == 200
    assert store.status[("ns/k1", 1)]["gpuBinding"]["gpus"] == 2  # kubectl's BOUND-GPUS column
    refused = requests.post(
        f"{u}/v1/acquire", json=acquire_body(2, "e9", gpus=2, node="n1"), headers=hdr("tok-k2"), timeout=10
    )
    assert refused.status_code == 409
    held = 0.3
    time.sleep(held)  # not waiting for an event: GPU-seconds accrue only as time passes
    requests.post(f"{u}/v1/release", json={"executionId": "e1"}, headers=hdr("tok-k1"), timeout=10)
    lines = [rec.getMessage() for rec in caplog.records]
    assert any(m.startswith("granted ns/k1 replica 1 on n0: GPU-n0-") and "(e1)" in m for m in lines), lines
    assert any(
        m.startswith("refused ns/k2 replica 1 on n1 for e9: 1 idle GPUs, 2 needed (Unavailable)") for m in lines
    ), lines
    assert any(m.startswith("released ns/k1 replica 1 on n0") and "GPU-seconds (e1)" in m for m in lines), lines
    # The replica's durable total and the broker's metric both count 2 GPUs x the time held.
    status = store.status[("ns/k1", 1)]
    assert "gpuBinding" not in status and status["gpuSecondsBound"] >= 2 * held
    metrics = requests.get(f"{u}/metrics", timeout=10).text
    sample = next(x for x in metrics.splitlines() if x.startswith("notebookos_kernel_gpu_seconds_bound_total{"))
    assert 'kernel="k1"' in sample and 'namespace="ns"' in sample and float(sample.split()[-1]) >= 2 * held


def test_clearing_a_grant_adds_its_seconds_and_never_removes_a_newer_one() -> None:
    import datetime as dt

    from notebookos.extender.binding_store import cleared_status

    since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    binding = {"node": "n0", "devices": ["a", "b"], "gpus": 2, "executionId": "e1", "since": since.isoformat()}
    status = {"gpuBinding": binding, "gpuSecondsBound": 1.5}
    later = since + dt.timedelta(seconds=10)
    assert cleared_status(status, "e1", later) == {"gpuBinding": None, "gpuSecondsBound": 21.5}
    assert cleared_status(status, "e0", later) is None  # a newer grant's record stays
    assert cleared_status({}, "e1", later) is None

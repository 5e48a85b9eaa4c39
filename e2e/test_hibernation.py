"""Hibernation on the real control plane: an idle (or suspended) kernel's state goes to the object
store and its replica pods go; a cell on the same Jupyter connection wakes it with its variables.
Also: the store unreachable, a wake with no room, a corrupt checkpoint, and an operator restarted
mid-hibernation and mid-wake. Real replicas (ipykernel processes over Raft) and router; kwok nodes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient

from e2e.testbed.admission import allow_replicas, refusal, refuse_replicas
from e2e.testbed.cluster import Cluster
from e2e.testbed.notebook import G, V, client_for, condition, kernel_obj, replicas_of
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until
from notebookos import labels

WAKE_TIMEOUT = 45  # the operator's bound on a wake (seconds): short, for the no-room test


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    nodes = cluster.add_gpu_nodes(4, prefix="hib")
    s = Stack(cluster, extra_operator_env={"NOTEBOOKOS_WAKE_TIMEOUT_SECONDS": str(WAKE_TIMEOUT)}).start()
    s.nodes = nodes  # type: ignore[attr-defined]
    yield s
    s.close()
    cluster.delete_nodes(nodes)


@pytest.fixture(scope="module")
def store() -> Iterator[Path]:
    # The replicas are local processes: a local folder is a store all of them share. Not under
    # /tmp: that is the pods' scratch mount, which the process runner gives each pod privately.
    path = Path("/var/tmp") / f"notebookos-e2e-store-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _apply(cluster: Cluster, ns: str, name: str, store: Path, **spec: Any) -> BlockingKernelClient:
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "NotebookKernel",
        "metadata": {"name": name},
        "spec": {"storage": {"url": f"file://{store}"}, **spec},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    until(lambda: _phase(cluster, ns, name) == "Ready", 240, f"{name} Ready")
    return client_for(cluster, ns, name)


def _phase(cluster: Cluster, ns: str, name: str) -> str | None:
    return (kernel_obj(cluster, ns, name).get("status") or {}).get("phase")


def _patch(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    cluster.kubectl("patch", "nbk", name, "-n", ns, "--type=merge", "-p", json.dumps({"spec": spec}))


def _replica_pods(cluster: Cluster, ns: str, name: str) -> list[Any]:
    sel = f"{labels.KERNEL_LABEL}={name},{labels.COMPONENT_LABEL}=replica"
    return list(cluster.core().list_namespaced_pod(ns, label_selector=sel).items)


def _hibernated(cluster: Cluster, ns: str, name: str, timeout: float = 120) -> dict[str, Any]:
    """Wait until the kernel is Hibernated with no replica pods or KernelReplicas left (deleting
    them waits for the operator's finalizer); its status."""
    until(
        lambda: (
            _phase(cluster, ns, name) == "Hibernated"
            and not _replica_pods(cluster, ns, name)
            and not replicas_of(cluster, ns, name)
        ),
        timeout,
        f"{name} Hibernated with no replica pods or KernelReplicas",
    )
    return dict(kernel_obj(cluster, ns, name)["status"])


def _events(cluster: Cluster, ns: str, name: str) -> list[tuple[str, str, str]]:
    items = cluster.core().list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason, e.message or "") for e in items]


def _run(kc: BlockingKernelClient, code: str, timeout: float = 240) -> tuple[dict[str, Any], str]:
    """Run a cell on the same client connection; its reply content and everything it showed."""
    shown: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            shown.append(content["text"])
        elif msg["msg_type"] in ("execute_result", "display_data", "update_display_data"):
            shown.append(content["data"].get("text/plain", "") + "\n")
        elif msg["msg_type"] == "error":
            shown.append(f"{content['ename']}: {content['evalue']}\n")

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"], "".join(shown)


STATE = """
import numpy as np
big = np.arange(100 * 2**20 // 8, dtype=np.float64)   # 100 MiB: a large value, in the store
def double(x):
    return 2 * x
class Box:
    def __init__(self, v):
        self.v = v
box = Box(41)
def make_adder(n):
    def add(x):
        return x + n
    return add
add3 = make_adder(3)
print(big.nbytes)
"""
CHECK = "print(big.sum() == (big.size - 1) * big.size / 2, double(21), box.v, add3(4))"


def test_an_idle_kernel_hibernates_and_a_cell_on_the_same_connection_wakes_it(
    cluster: Cluster, stack: Stack, namespace: str, store: Path
) -> None:
    kc = _apply(cluster, namespace, "sleepy", store, idleTimeout="10s")
    try:
        reply, out = _run(kc, STATE)
        assert reply["status"] == "ok", out
        assert "104857600" in out
        status = _hibernated(cluster, namespace, "sleepy")
        cond = condition(cluster, namespace, "sleepy", "Hibernated", "True")
        assert cond is not None and cond["reason"] == "Idle", cond
        assert "idle for 10s" in cond["message"] and "next request wakes" in cond["message"]
        ck = status["checkpoint"]
        assert ck["bytes"] >= 100 * 2**20 and ck["variables"] >= 5 and ck["cells"] == 1, ck
        assert Path(ck["url"].removeprefix("file://")).is_file()
        assert any(r == "Hibernating" and "104.9 MB of state" in m for _, r, m in _events(cluster, namespace, "sleepy"))

        # The same client, as a notebook left open: the cell wakes the kernel and runs.
        reply, out = _run(kc, CHECK)
        assert reply["status"] == "ok", out
        assert "True 42 41 7" in out
        assert "Waking kernel sleepy from hibernation: restoring 10" in out  # "104.9 MB of state"
        assert "woke in" in out
        assert _phase(cluster, namespace, "sleepy") == "Ready"
        assert len(_replica_pods(cluster, namespace, "sleepy")) == 3
        awake = condition(cluster, namespace, "sleepy", "Hibernated")
        assert awake is not None and awake["status"] == "False" and awake["reason"] == "Awake"
        reasons = [r for _, r, _ in _events(cluster, namespace, "sleepy")]
        assert {"Hibernating", "Waking", "Woken"} <= set(reasons), reasons
        # The execution count goes on from before the hibernation.
        assert reply["execution_count"] == 2
    finally:
        kc.stop_channels()


def test_spec_suspend_hibernates_and_wakes_and_a_request_while_suspended_says_why(
    cluster: Cluster, stack: Stack, namespace: str, store: Path
) -> None:
    kc = _apply(cluster, namespace, "pause", store)
    try:
        assert _run(kc, "x = 7")[0]["status"] == "ok"
        _patch(cluster, namespace, "pause", {"suspend": True})
        _hibernated(cluster, namespace, "pause")
        cond = condition(cluster, namespace, "pause", "Hibernated", "True")
        assert cond is not None and cond["reason"] == "Suspended"

        reply, out = _run(kc, "print(x)")
        assert reply["status"] == "error" and reply["ename"] == "NotebookOSWakeFailed", reply
        assert "spec.suspend" in reply["evalue"] and "NotebookOSWakeFailed" in out
        assert _phase(cluster, namespace, "pause") == "Hibernated"

        _patch(cluster, namespace, "pause", {"suspend": False})  # wakes with no request
        until(lambda: _phase(cluster, namespace, "pause") == "Ready", 120, "pause awake")
        reply, out = _run(kc, "print(x * 6)")
        assert reply["status"] == "ok" and "42" in out, out
    finally:
        kc.stop_channels()


def test_the_store_unreachable_keeps_the_kernel_running(
    cluster: Cluster, stack: Stack, namespace: str, store: Path
) -> None:
    kc = _apply(cluster, namespace, "nostore", store)
    blocker = store / "nostore" / "checkpoints"
    try:
        assert _run(kc, "y = 5")[0]["status"] == "ok"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("a file where the checkpoints' folder belongs: writes there fail")
        _patch(cluster, namespace, "nostore", {"suspend": True})
        until(
            lambda: (c := condition(cluster, namespace, "nostore", "Hibernated")) and c["reason"] == "CheckpointFailed",
            120,
            "the checkpoint to fail",
        )
        cond = condition(cluster, namespace, "nostore", "Hibernated")
        assert cond is not None and cond["status"] == "False"
        assert "cannot write the checkpoint" in cond["message"] and "nothing lost" in cond["message"], cond
        warned = [m for t, r, m in _events(cluster, namespace, "nostore") if r == "HibernationFailed"]
        assert warned and all(
            t == "Warning" for t, r, _ in _events(cluster, namespace, "nostore") if r == "HibernationFailed"
        )
        assert _phase(cluster, namespace, "nostore") == "Ready"
        assert len(_replica_pods(cluster, namespace, "nostore")) == 3
        reply, out = _run(kc, "print(y + 1)")  # the kernel still serves
        assert reply["status"] == "ok" and "6" in out, out

        blocker.unlink()  # the store is back: the operator's retry hibernates it
        _hibernated(cluster, namespace, "nostore")
        _patch(cluster, namespace, "nostore", {"suspend": False})
        until(lambda: _phase(cluster, namespace, "nostore") == "Ready", 120, "nostore awake")
        reply, out = _run(kc, "print(y * 2)")
        assert reply["status"] == "ok" and "10" in out, out
    finally:
        kc.stop_channels()
        if blocker.is_file():
            blocker.unlink()


def test_a_wake_with_no_room_fails_the_cell_and_keeps_the_state(
    cluster: Cluster, stack: Stack, namespace: str, store: Path
) -> None:
    kc = _apply(cluster, namespace, "noroom", store, idleTimeout="10s")
    nodes: list[str] = stack.nodes  # type: ignore[attr-defined]
    core = cluster.core()
    try:
        assert _run(kc, "z = 11")[0]["status"] == "ok"
        _hibernated(cluster, namespace, "noroom")
        for node in nodes:
            core.patch_node(node, {"spec": {"unschedulable": True}})
        reply, out = _run(kc, "print(z)", timeout=WAKE_TIMEOUT + 120)
        assert reply["status"] == "error" and reply["ename"] == "NotebookOSWakeFailed", reply
        assert f"not ready within {WAKE_TIMEOUT} s" in reply["evalue"] and "stays hibernated" in reply["evalue"]
        assert "Waking kernel noroom" in out and "NotebookOSWakeFailed" in out
        status = _hibernated(cluster, namespace, "noroom")
        cond = condition(cluster, namespace, "noroom", "Hibernated", "True")
        assert cond is not None and cond["reason"] == "WakeFailed"
        assert any(t == "Warning" and r == "WakeFailed" for t, r, _ in _events(cluster, namespace, "noroom"))
        assert Path(status["checkpoint"]["url"].removeprefix("file://")).is_file()

        for node in nodes:
            core.patch_node(node, {"spec": {"unschedulable": False}})
        reply, out = _run(kc, "print(z * 2)")  # the next request tries again, and the state is there
        assert reply["status"] == "ok" and "22" in out, out
    finally:
        for node in nodes:
            core.patch_node(node, {"spec": {"unschedulable": False}})
        kc.stop_channels()


def test_a_corrupt_checkpoint_fails_the_wake_naming_it_and_keeps_the_rest(
    cluster: Cluster, stack: Stack, namespace: str, store: Path
) -> None:
    kc = _apply(cluster, namespace, "broken", store, idleTimeout="10s")
    try:
        assert _run(kc, "w = 3")[0]["status"] == "ok"
        url = _hibernated(cluster, namespace, "broken")["checkpoint"]["url"]
        path = Path(url.removeprefix("file://"))
        good = path.read_bytes()
        path.write_bytes(b"not a checkpoint")
        reply, _ = _run(kc, "print(w)")
        assert reply["ename"] == "NotebookOSWakeFailed", reply
        assert f"the checkpoint {url} is corrupt" in reply["evalue"], reply["evalue"]
        _hibernated(cluster, namespace, "broken")
        path.write_bytes(good)  # put back: nothing else was touched
        reply, out = _run(kc, "print(w + 4)")
        assert reply["status"] == "ok" and "7" in out, out
    finally:
        kc.stop_channels()


def _kill_operator(cluster: Cluster) -> None:
    os.killpg(cluster.procs["operator"].proc.pid, signal.SIGKILL)
    cluster.stop("operator")


def test_an_operator_restarted_mid_hibernation_and_mid_wake_finishes(
    cluster: Cluster, stack: Stack, namespace: str, store: Path
) -> None:
    kc = _apply(cluster, namespace, "restart", store)
    try:
        assert _run(kc, "v = 'kept'")[0]["status"] == "ok"
        # Mid-hibernation: checkpointed and Hibernating, its replicas not removable yet.
        policy = refuse_replicas(cluster, namespace, "DELETE", "e2e: DELETE refused for a while")
        try:
            until(lambda: "DELETE refused" in refusal(cluster, namespace, "DELETE"), 30, "the policy in force")
            _patch(cluster, namespace, "restart", {"suspend": True})
            until(lambda: _phase(cluster, namespace, "restart") == "Hibernating", 120, "Hibernating")
            assert len(replicas_of(cluster, namespace, "restart")) == 3
            _kill_operator(cluster)
        finally:
            allow_replicas(cluster, policy)
        checkpoint = kernel_obj(cluster, namespace, "restart")["status"]["checkpoint"]
        stack.start_operator()
        status = _hibernated(cluster, namespace, "restart")
        assert status["checkpoint"] == checkpoint  # the one taken before the restart

        # Mid-wake: Waking, its replicas not creatable yet.
        policy = refuse_replicas(cluster, namespace, "CREATE", "e2e: CREATE refused for a while")
        try:
            until(lambda: "CREATE refused" in refusal(cluster, namespace, "CREATE"), 30, "the policy in force")
            _patch(cluster, namespace, "restart", {"suspend": False})
            until(lambda: _phase(cluster, namespace, "restart") == "Waking", 60, "Waking")
            _kill_operator(cluster)
        finally:
            allow_replicas(cluster, policy)
        stack.start_operator()
        until(lambda: _phase(cluster, namespace, "restart") == "Ready", 180, "awake after the restart")
        assert len(replicas_of(cluster, namespace, "restart")) == 3
        reply, out = _run(kc, "print(v)")
        assert reply["status"] == "ok" and "kept" in out, out
    finally:
        kc.stop_channels()

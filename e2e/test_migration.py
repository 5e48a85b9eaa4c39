"""Overload, then migration, on the real control plane: a kernel whose three nodes have no GPU
free waits (its notebook says why), the operator moves one replica to the node that has them, the
router is re-pointed live and the cell runs there; the same connection goes on serving cells."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.testbed.cluster import Cluster
from e2e.testbed.notebook import apply_kernel, client_for, condition, kernel_obj, replicas_of, set_gpu_health
from e2e.testbed.stack import Stack
from e2e.testbed.wait import first_seen, until
from notebookos import labels
from notebookos.kernel.local import run
from notebookos.operator import naming

KERNEL = "mover"
SLICE = "e2e.notebookos.io/pool"
MINE = {SLICE: "migration"}


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    # This module's own slice of the GPU pool (the operator's node selector): the node a replica
    # moves to is one of these, never a GPU node another module left behind.
    nodes = cluster.add_gpu_nodes(3, prefix="mig", extra_labels=MINE)
    s = Stack(cluster, extra_operator_env={"NOTEBOOKOS_NODE_SELECTOR": f"{SLICE}=migration"}).start()
    yield s
    s.close()
    cluster.delete_nodes(nodes + [n for n in _gpu_nodes(cluster) if n.startswith("mig")])


def _gpu_nodes(cluster: Cluster) -> list[str]:
    return [n.metadata.name for n in cluster.core().list_node(label_selector=f"{SLICE}=migration").items]


def _events(cluster: Cluster, ns: str) -> list[Any]:
    items = cluster.core().list_namespaced_event(ns, field_selector=f"involvedObject.name={KERNEL}").items
    return sorted(items, key=lambda e: e.metadata.creation_timestamp)


def _iopub_until_idle(kc: Any, msg_id: str, timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = kc.get_iopub_msg(timeout=max(0.1, end - time.monotonic()))
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        out.append(m)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return out
    raise TimeoutError(f"no idle for {msg_id} in {timeout:.0f} s: {out}")


def test_a_cell_waits_while_a_replica_moves_to_free_gpus_then_runs_there(
    cluster: Cluster, stack: Stack, namespace: str
) -> None:
    before = apply_kernel(cluster, namespace, KERNEL)
    # Added after placement: the kernel is on the other three.
    [spare] = cluster.add_gpu_nodes(1, prefix="mig", extra_labels=MINE)
    kc = client_for(cluster, namespace, KERNEL)
    try:
        kc.execute_interactive("state = list(range(10))", timeout=60)
        for node in before.values():  # the kernel's three nodes lose their GPUs
            set_gpu_health(cluster, node, False, stack.broker_url)
        t0 = time.monotonic()
        msg_id = kc.execute("import os\nprint(os.environ['NOTEBOOKOS_NODE'], NOTEBOOKOS_GPU_UUIDS)\nstate.append(10)")
        reply = kc.get_shell_msg(timeout=240)
        started = time.monotonic() - t0
        out = _iopub_until_idle(kc, msg_id, 60)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok", reply["content"]
        # What the notebook showed while it waited: a display, updated in place.
        shown = [m for m in out if m["msg_type"] in ("display_data", "update_display_data")]
        assert shown and shown[0]["msg_type"] == "display_data", out
        assert "Waiting for 1 GPU(s)" in shown[0]["content"]["data"]["text/plain"]
        assert "Got 1 GPU(s)" in shown[-1]["content"]["data"]["text/plain"], shown[-1]
        printed = "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream")
        assert printed.startswith(spare + " ['GPU-"), f"the cell ran on {printed!r}, not on {spare}"
        print(f"\noverload to cell start (reply): {started:.1f} s")

        after = {r["spec"]["replicaId"]: r for r in replicas_of(cluster, namespace, KERNEL)}
        moved = [rid for rid, r in after.items() if r["status"]["nodeName"] != before[rid]]
        assert len(moved) == 1 and after[moved[0]]["status"]["nodeName"] == spare, after
        assert after[moved[0]]["status"]["migrations"] == 1
        kernel = until(lambda: _counted(cluster, namespace), 60, "status.migrations == 1")
        assert kernel["status"].get("replacements", 0) == 0, kernel["status"]
        reasons = [e.reason for e in _events(cluster, namespace)]
        assert "MigrationStarted" in reasons and "MigrationCompleted" in reasons, reasons
        started_ev = next(e for e in _events(cluster, namespace) if e.reason == "MigrationStarted")
        assert f"replica {moved[0]} from {before[moved[0]]} to {spare}" in started_ev.message, started_ev.message
        moving = until(lambda: condition(cluster, namespace, KERNEL, "Migrating", "False"), 60, "Migrating=False")
        assert moving is not None
        # The same connection goes on: 50 more cells, the state intact on the moved replica too.
        for i in range(50):
            r = kc.execute_interactive(f"state.append({11 + i})", timeout=60)
            assert r["content"]["status"] == "ok", (i, r["content"])
        r, _ = run(kc, "assert state == list(range(61)), state", metadata={"notebookos_target": moved[0]})
        assert r["content"]["status"] == "ok", r["content"]
        assert r["metadata"]["notebookos"]["replica"] == moved[0]
    finally:
        kc.stop_channels()
        for node in before.values():
            set_gpu_health(cluster, node, True)


def _counted(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    k = kernel_obj(cluster, ns, KERNEL)
    return k if (k.get("status") or {}).get("migrations") == 1 else None


def _nodes_of(cluster: Cluster, ns: str, name: str) -> dict[int, str]:
    return {r["spec"]["replicaId"]: r["status"].get("nodeName") for r in replicas_of(cluster, ns, name)}


def _moved_off(cluster: Cluster, ns: str, name: str, rid: int, node: str) -> dict[str, Any] | None:
    r = next(r for r in replicas_of(cluster, ns, name) if r["spec"]["replicaId"] == rid)
    s = r.get("status") or {}
    return r if s.get("nodeName") not in (None, node) and s.get("phase") == "Ready" else None


def _replica_pods_on(cluster: Cluster, ns: str, node: str) -> list[str]:
    """The kernel's replica pods on `node`. Not its router: the operator moves replicas off a
    draining node before a drain evicts them (they hold GPUs and Raft membership); the router
    stays until the drain itself evicts it, and the operator then makes it again elsewhere."""
    selector = f"{labels.COMPONENT_LABEL}={naming.COMPONENT_REPLICA}"
    pods = cluster.core().list_namespaced_pod(ns, field_selector=f"spec.nodeName={node}", label_selector=selector)
    return [p.metadata.name for p in pods.items if not p.metadata.deletion_timestamp]


def test_a_drained_node_is_emptied_of_replicas_and_an_executing_one_finishes_its_cell_first(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path
) -> None:
    name = "drained"
    apply_kernel(cluster, namespace, name)
    if len(_gpu_nodes(cluster)) < 4:
        cluster.add_gpu_nodes(1, prefix="mig", extra_labels=MINE)
    kc = client_for(cluster, namespace, name)
    cordoned: list[str] = []
    try:
        kc.execute_interactive("total = 0", timeout=60)
        # An idle kernel: cordon the node of replica 2; the replica moves off before anything evicts it.
        node = _nodes_of(cluster, namespace, name)[2]
        cluster.kubectl("cordon", node)
        cordoned.append(node)
        until(lambda: _moved_off(cluster, namespace, name, 2, node), 120, f"replica 2 to leave {node}")
        until(lambda: not _replica_pods_on(cluster, namespace, node), 180, f"no replica pod left on {node}")
        r = kc.execute_interactive("total += 1", timeout=60)
        assert r["content"]["status"] == "ok", r["content"]

        # A cell runs on replica 1 when its node is cordoned: the cell finishes, then the replica moves.
        cluster.kubectl("uncordon", node)
        cordoned.remove(node)
        node1 = _nodes_of(cluster, namespace, name)[1]
        # The cell runs until the test has seen its mark and cordoned the node (a timed sleep would
        # race the operator's reconcile under load).
        release = tmp_path / "release"
        code = f"import os, time\nwhile not os.path.exists({str(release)!r}):\n    time.sleep(0.05)\ntotal += 10"
        content = {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False}  # fmt: skip
        msg = kc.session.msg("execute_request", content, metadata={"notebookos_target": 1})
        kc.shell_channel.send(msg)
        until(lambda: _binding(cluster, namespace, name, 1), 60, "replica 1 to hold its GPUs for the cell")
        pod = until(lambda: _pod_marked(cluster, namespace, node1), 30, "the executing pod's do-not-disrupt mark")
        cluster.kubectl("cordon", node1)
        cordoned.append(node1)
        release.touch()
        reply = kc.get_shell_msg(timeout=120)
        assert reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]
        assert reply["content"]["status"] == "ok", reply["content"]
        assert reply["metadata"]["notebookos"]["replica"] == 1, "the cell finished where it started"
        assert pod in _replica_pods_on(cluster, namespace, node1) or _moved_off(cluster, namespace, name, 1, node1)
        until(lambda: _moved_off(cluster, namespace, name, 1, node1), 120, f"replica 1 to leave {node1} after its cell")
        r, out = run(kc, "print(total)", metadata={"notebookos_target": 1})
        assert r["content"]["status"] == "ok" and "".join(m["content"].get("text", "") for m in out) == "11\n"
        assert kernel_obj(cluster, namespace, name)["status"]["migrations"] == 2
    finally:
        kc.stop_channels()
        for n in cordoned:
            cluster.kubectl("uncordon", n)


def _binding(cluster: Cluster, ns: str, name: str, rid: int) -> bool:
    r = next(r for r in replicas_of(cluster, ns, name) if r["spec"]["replicaId"] == rid)
    return bool((r.get("status") or {}).get("gpuBinding"))


def _pod_marked(cluster: Cluster, ns: str, node: str) -> str | None:
    for p in cluster.core().list_namespaced_pod(ns, field_selector=f"spec.nodeName={node}").items:
        if (p.metadata.annotations or {}).get(labels.KARPENTER_DO_NOT_DISRUPT) == "true":
            return str(p.metadata.name)
    return None


def test_the_operator_killed_mid_move_finishes_it_with_no_duplicate_pod_and_no_lost_cell(
    cluster: Cluster, stack: Stack, namespace: str
) -> None:
    name = "restarted"
    before = apply_kernel(cluster, namespace, name)
    if not set(_gpu_nodes(cluster)) - set(before.values()):
        cluster.add_gpu_nodes(1, prefix="mig", extra_labels=MINE)
    kc = client_for(cluster, namespace, name)
    try:
        kc.execute_interactive("kept = [1, 2, 3]", timeout=60)
        for node in before.values():
            set_gpu_health(cluster, node, False, stack.broker_url)
        msg_id = kc.execute("kept.append(4)")

        def marked(r: dict[str, Any]) -> int | None:
            moving = labels.MIGRATE_TO_ANNOTATION in (r["metadata"].get("annotations") or {})
            return int(r["spec"]["replicaId"]) if moving else None

        replicas = functools.partial(
            client.CustomObjectsApi(cluster.api()).list_namespaced_custom_object,
            "notebookos.io", "v1alpha1", namespace, "kernelreplicas", label_selector=f"{labels.KERNEL_LABEL}={name}",
        )  # fmt: skip
        # Watched, not polled: the whole move can take less than a poll interval.
        rid = first_seen(replicas, marked, 120, "the operator to start a move")
        cluster.stop("operator", grace=0)  # killed mid-move
        stack.start_operator()
        reply = kc.get_shell_msg(timeout=240)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok", reply["content"]
        until(lambda: _moved_off(cluster, namespace, name, rid, before[rid]), 120, "the move to end")
        pods = cluster.core().list_namespaced_pod(namespace, label_selector=f"{labels.REPLICA_ID_LABEL}={rid}").items
        live = [p.metadata.name for p in pods if not p.metadata.deletion_timestamp]
        assert live == [f"{name}-{rid}-i2"], live
        until(lambda: kernel_obj(cluster, namespace, name)["status"].get("migrations") == 1, 60, "one move counted")
        r = kc.execute_interactive("assert kept == [1, 2, 3, 4], kept", timeout=60)
        assert r["content"]["status"] == "ok", r["content"]
    finally:
        kc.stop_channels()
        for node in before.values():
            set_gpu_health(cluster, node, True)

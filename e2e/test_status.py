"""What the kernel knows reaches the user through the API server: after real cells on the whole
stack (operator, NotebookOS scheduler and extender, broker, replica and router processes with their
own pod tokens), every user-visible status field is set by the component that owns it, and
`kubectl get` shows it."""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient

from e2e.testbed.cluster import Cluster
from e2e.testbed.notebook import G, V, client_for, condition, kernel_obj, replicas_of, set_gpu_health
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until

KERNEL = "status"
SLICE = "e2e.notebookos.io/pool"


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    # This module's own slice of the GPU pool (the operator's node selector): GPU nodes other
    # modules leave behind must not take its kernels' replicas (the overload test needs none free).
    nodes = cluster.add_gpu_nodes(3, prefix="st", extra_labels={SLICE: "status"})
    s = Stack(cluster, extra_operator_env={"NOTEBOOKOS_NODE_SELECTOR": f"{SLICE}=status"}).start()
    yield s
    s.close()
    cluster.delete_nodes(nodes)


def _phase(cluster: Cluster, ns: str) -> str | None:
    return (kernel_obj(cluster, ns, KERNEL).get("status") or {}).get("phase")


def _gpu_unavailable(cluster: Cluster, ns: str, status: str) -> dict[str, Any] | None:
    return condition(cluster, ns, KERNEL, "GPUUnavailable", status)


def _no_target(cluster: Cluster, ns: str) -> dict[str, Any] | None:
    cond = condition(cluster, ns, KERNEL, "Migrating", "False")
    return cond if cond and cond["reason"] == "NoTarget" else None


def _sorted_labels(sample: str) -> str:
    """`name{b="2",a="1"}` as `name{a="1",b="2"}`: exposition order is the library's business."""
    name, brace, rest = sample.partition("{")
    return name + brace + ",".join(sorted(rest.rstrip("}").split(","))) + "}" if brace else name


def _samples(url: str) -> dict[str, float]:
    """A Prometheus text page as {'name{labels}': value}."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[_sorted_labels(name)] = float(value)
    return out


def _time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_status_fields_reach_the_api_server_after_real_cells(cluster: Cluster, stack: Stack, namespace: str) -> None:
    started = dt.datetime.now(dt.UTC).replace(microsecond=0)
    manifest = json.dumps(
        {"apiVersion": f"{G}/{V}", "kind": "NotebookKernel", "metadata": {"name": KERNEL}, "spec": {}}
    )  # the defaults: 3 replicas, 1 GPU per cell
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    until(
        lambda: kernel_obj(cluster, namespace, KERNEL).get("status", {}).get("phase") == "Ready",
        240,
        "the kernel to be Ready",
    )

    # Replica-owned fields: each replica reports its Raft view and a heartbeat with its own token.
    def raft_reported() -> list[dict[str, Any]] | None:
        reps = replicas_of(cluster, namespace, KERNEL)
        roles = [((r.get("status") or {}).get("raft") or {}).get("role") for r in reps]
        ok = len(reps) == 3 and roles.count("Leader") == 1 and roles.count("Follower") == 2
        return reps if ok and all((r.get("status") or {}).get("lastHeartbeat") for r in reps) else None

    reps = until(raft_reported, 120, "every replica to report its Raft role and a heartbeat")
    assert all(_time(r["status"]["lastHeartbeat"]) >= started for r in reps)
    assert all(r["status"]["raft"]["term"] >= 1 for r in reps)

    kc = client_for(cluster, namespace, KERNEL)
    try:
        reply = kc.execute_interactive("x = 1", timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        # A cell long enough to see its grant: the binding is on the executor while it runs.
        done = threading.Event()
        result: dict[str, Any] = {}

        def run_cell() -> None:
            result.update(kc.execute_interactive("import time; time.sleep(8); x + 1", timeout=180)["content"])
            done.set()

        cell = threading.Thread(target=run_cell, daemon=True)
        cell.start()

        def bound() -> dict[str, Any] | None:
            held = [r for r in replicas_of(cluster, namespace, KERNEL) if (r.get("status") or {}).get("gpuBinding")]
            return held[0] if len(held) == 1 else None

        holder = until(bound, 60, "a gpuBinding on the executing replica while the cell runs")
        binding = holder["status"]["gpuBinding"]
        assert binding["node"] == holder["status"]["nodeName"] and len(binding["devices"]) == 1
        assert binding["gpus"] == 1 and binding["executionId"]
        # kubectl shows the bound GPUs as a count, not a JSON list of UUIDs.
        wide = cluster.kubectl("get", "nbr", "-n", namespace, "-o", "wide").stdout
        assert "BOUND-GPUS" in wide.splitlines()[0] and "[" not in wide, wide
        assert done.wait(180), "the long cell did not finish"
        assert result["status"] == "ok", result
    finally:
        kc.stop_channels()

    until(
        lambda: not any((r.get("status") or {}).get("gpuBinding") for r in replicas_of(cluster, namespace, KERNEL)),
        60,
        "the gpuBinding to be cleared after the cell",
    )
    executor = f"{KERNEL}-{holder['spec']['replicaId']}"

    # Router-owned fields: who ran the last cell, how many, when.
    def activity() -> dict[str, Any] | None:
        status = kernel_obj(cluster, namespace, KERNEL).get("status") or {}
        return status if status.get("cells") == 2 and status.get("executor") == executor else None

    status = until(activity, 60, f"status.executor={executor} and status.cells=2")
    assert _time(status["lastActivity"]) >= started
    # GPU time: the broker adds each grant's seconds to the replica, the operator sums the kernel's.
    seconds = until(
        lambda: (kernel_obj(cluster, namespace, KERNEL).get("status") or {}).get("gpuSecondsBound", 0) >= 7, 60,
        "status.gpuSecondsBound to count the 8 s cell",
    )  # fmt: skip
    assert seconds
    k = kernel_obj(cluster, namespace, KERNEL)["status"]
    assert k["gpuSecondsBound"] < 120, k  # the grant ended with the cell, not with the kernel
    assert k["ready"] == "3/3"

    # The same figures for a platform team: the operator's and the broker's /metrics.
    key = f'{{kernel="{KERNEL}",namespace="{namespace}"}}'

    def operator_counted() -> dict[str, float] | None:
        page = _samples(stack.operator_metrics)
        return page if page.get(f"notebookos_kernel_gpu_seconds_bound{key}", 0) >= 7 else None

    operator = until(operator_counted, 60, "the operator's metric of the kernel's bound GPU-seconds")
    promised = operator[f"notebookos_kernel_gpu_seconds_promised{key}"]
    assert promised > operator[f"notebookos_kernel_gpu_seconds_bound{key}"], operator  # idle between cells
    assert operator["notebookos_cluster_gpu_seconds_promised"] >= promised
    assert operator["notebookos_cluster_gpu_seconds_bound"] >= 7
    broker = _samples(f"{stack.broker_url}/metrics")
    assert broker[f"notebookos_kernel_gpu_seconds_bound_total{key}"] >= 7, broker
    log = (Path(cluster.logs_dir) / "broker.log").read_text()
    assert f"granted {namespace}/{KERNEL} replica {holder['spec']['replicaId']}" in log
    assert f"released {namespace}/{KERNEL} replica {holder['spec']['replicaId']}" in log

    table = cluster.kubectl("get", "nbk", KERNEL, "-n", namespace).stdout.splitlines()
    header, row = table[0].split(), table[1].split()
    assert header[:5] == ["NAME", "PHASE", "READY", "EXECUTOR", "GPUS/CELL"], table
    assert row[:5] == [KERNEL, "Ready", "3/3", executor, "1"], table
    roles = cluster.kubectl("get", "nbr", "-n", namespace, "-o", "custom-columns=ROLE:.status.raft.role").stdout
    assert sorted(roles.split()[1:]) == ["Follower", "Follower", "Leader"], roles


def test_no_status_report_falls_back_to_logging(cluster: Cluster, stack: Stack) -> None:
    # The failure the issue saw: pods log that they have no API for status reports. With the pod's
    # real token path that line must not appear in any kernel pod's log.
    logs = sorted(Path(cluster.logs_dir).glob("pod-*.log"))
    assert logs, "no kernel pod ran"
    offending = [p.name for p in logs if "no Kubernetes API for status reports" in p.read_text(errors="replace")]
    assert not offending, offending


def _cli(cluster: Cluster, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "notebookos.cli", *args, "--kubeconfig", str(cluster.kubeconfig)],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in last, (w, proc.stderr)
    return last


def test_connect_and_interrupt_as_a_kubectl_user_does(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path
) -> None:
    # An unknown kernel: one line, not a 404 traceback.
    _one_line_error(_cli(cluster, "connect", "nope", "-n", namespace), f"NotebookKernel {namespace}/nope not found")
    _one_line_error(_cli(cluster, "interrupt", "nope", "-n", namespace), "not found")
    # A kernel that cannot be placed: connect waits, then says why, and writes nothing.
    big = {"apiVersion": f"{G}/{V}", "kind": "NotebookKernel", "metadata": {"name": "big"}}
    big["spec"] = {"resources": {"gpus": 1, "gpuMemory": "200Gi"}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(big))
    runtime = tmp_path / "runtime"
    env = {"JUPYTER_RUNTIME_DIR": str(runtime)}
    proc = _cli(cluster, "connect", "big", "-n", namespace, "--timeout", "45", env=env)
    _one_line_error(proc, f"NotebookKernel {namespace}/big is Pending after 45s", "79.6 GiB of memory each")
    assert not runtime.exists() or not list(runtime.iterdir())

    # A Ready kernel: the connection file goes to Jupyter's runtime directory, readable by its owner only.
    manifest = {"apiVersion": f"{G}/{V}", "kind": "NotebookKernel", "metadata": {"name": KERNEL}, "spec": {}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    proc = _cli(cluster, "connect", KERNEL, "-n", namespace, "--via", "pod", env=env)  # waits for Ready
    assert proc.returncode == 0, proc.stderr
    conn = runtime / f"kernel-notebookos-{namespace}-{KERNEL}.json"
    assert f"wrote {conn}" in proc.stdout and f"jupyter console --existing {conn}" in proc.stdout
    assert stat.S_IMODE(conn.stat().st_mode) == 0o600 and stat.S_IMODE(runtime.stat().st_mode) & 0o077 == 0
    assert f"notebookos interrupt {KERNEL} -n {namespace} --via pod" in proc.stdout

    # Interrupt a running cell from another terminal, as the printed command does.
    kc = BlockingKernelClient(connection_file=str(conn))
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute("import time\nfor _ in range(600):\n    time.sleep(0.5)")
        until(lambda: _busy(kc, msg_id), 60, "the long cell to start")
        out = _cli(cluster, "interrupt", KERNEL, "-n", namespace, "--via", "pod")
        assert out.returncode == 0 and f"interrupted NotebookKernel {namespace}/{KERNEL}" in out.stdout, out.stderr
        reply = kc.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        after = kc.execute_interactive("print('still here')", timeout=120)
        assert after["content"]["status"] == "ok"  # the kernel lives on
    finally:
        kc.stop_channels()


def _busy(kc: BlockingKernelClient, msg_id: str) -> bool:
    """True once IOPub says the cell `msg_id` is running (its execute_input is out)."""
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            return False
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            return True


def test_an_overloaded_kernel_says_so_on_its_status_and_events(cluster: Cluster, stack: Stack, namespace: str) -> None:
    # No other node can take a replica here, so a cell waits its bound (5 s), then fails.
    spec = {"gpuWaitSeconds": 5}
    manifest = {"apiVersion": f"{G}/{V}", "kind": "NotebookKernel", "metadata": {"name": KERNEL}, "spec": spec}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    until(
        lambda: kernel_obj(cluster, namespace, KERNEL).get("status", {}).get("phase") == "Ready",
        240,
        "the kernel to be Ready",
    )
    nodes = [r["status"]["nodeName"] for r in replicas_of(cluster, namespace, KERNEL)]
    kc = client_for(cluster, namespace, KERNEL)
    try:
        for node in nodes:  # every node of the kernel loses its GPUs
            set_gpu_health(cluster, node, False)
        try:

            def refused() -> dict[str, Any] | None:
                reply = kc.execute_interactive("1 + 1", timeout=120)["content"]
                return reply if reply["status"] == "error" else None  # until the broker has seen all three

            reply = until(refused, 90, "a cell refused for want of GPUs", interval=1.0)
            assert reply["ename"] == "NotebookOSOverloaded", reply
            # The router's reports reach the API server with its pod's token.
            cond = until(
                lambda: condition(cluster, namespace, KERNEL, "GPUUnavailable", "True"), 60, "GPUUnavailable=True"
            )
            assert cond["reason"] == "Overloaded" and "0 idle GPUs, 1 needed" in cond["message"], cond
            # Every full node of the kernel is named, each once (the replicas' reasons come from the log).
            assert all(cond["message"].count(f"node {n}:") == 1 for n in nodes), cond
            # No node could take a replica: the operator says why, for each node, and moves nothing.
            stuck = until(lambda: _no_target(cluster, namespace), 60, "Migrating=False with reason NoTarget")
            assert all(f"{n}: " in stuck["message"] for n in nodes), stuck
            events = cluster.core().list_namespaced_event(namespace, field_selector=f"involvedObject.name={KERNEL}")
            overloads = [e for e in events.items if e.reason == "Overloaded" and e.type == "Warning"]
            assert overloads and overloads[0].source.component == "notebookos-router", events.items
        finally:
            for node in nodes:
                set_gpu_health(cluster, node, True)

        def served() -> bool:
            return kc.execute_interactive("2 + 2", timeout=120)["content"]["status"] == "ok"

        until(served, 90, "a cell served again once the GPUs are back", interval=1.0)
        cond = until(
            lambda: condition(cluster, namespace, KERNEL, "GPUUnavailable", "False"), 60, "GPUUnavailable=False"
        )
        assert cond["reason"] == "GPUsGranted", cond
    finally:
        kc.stop_channels()

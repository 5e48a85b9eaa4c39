"""The whole stack, from kubectl and from Jupyter to a cell: the operator makes the replicas and the
router, the NotebookOS scheduler and its extender place them, the process runner runs them, they
form their Raft group, and Jupyter clients run cells through the router."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient
from kubernetes import client

from e2e.testbed.cluster import REPO, Cluster, free_port
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until

GROUP, VERSION, PLURAL = "notebookos.io", "v1alpha1", "notebookkernels"


@pytest.fixture(scope="module")
def stack(cluster: Cluster) -> Iterator[Stack]:
    nodes = cluster.add_gpu_nodes(4, prefix="jup")
    s = Stack(cluster).start()
    yield s
    s.close()
    cluster.delete_nodes(nodes)


def _kernel(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    api = client.CustomObjectsApi(cluster.api())
    try:
        return dict(api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _ready(cluster: Cluster, ns: str, name: str) -> bool:
    k = _kernel(cluster, ns, name)
    return bool(k and k.get("status", {}).get("phase") == "Ready")


def _execute(kc: BlockingKernelClient, code: str, timeout: float = 120) -> tuple[str, dict[str, Any]]:
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] in ("execute_result", "display_data"):
            out.append(msg["content"]["data"].get("text/plain", ""))

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    return "".join(out), reply["content"]


def _connect(cluster: Cluster, ns: str, name: str, tmp: Path) -> BlockingKernelClient:
    conn = tmp / f"kernel-{name}.json"
    subprocess.run(
        [sys.executable, "-m", "notebookos.cli", "connect", name, "-n", ns, "--via", "pod", "-o", str(conn),
         "--kubeconfig", str(cluster.kubeconfig)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    kc = BlockingKernelClient(connection_file=str(conn))
    kc.load_connection_file()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def test_kubectl_apply_then_cells_survive_a_replica_loss(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path
) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "minimal.yaml"))
    until(lambda: _ready(cluster, namespace, "minimal"), 240, "NotebookKernel minimal to be Ready")
    core = client.CoreV1Api(cluster.api())
    pods = core.list_namespaced_pod(namespace, label_selector="notebookos.io/kernel=minimal").items
    replica_pods = [p for p in pods if p.metadata.labels.get("notebookos.io/component") == "replica"]
    assert len({p.spec.node_name for p in replica_pods}) == 3, "replicas must be on three distinct nodes"
    assert all(p.spec.scheduler_name == "notebookos-scheduler" for p in replica_pods)

    kc = _connect(cluster, namespace, "minimal", tmp_path)
    try:
        out, reply = _execute(kc, "x = 41\ndef bump(v):\n    return v + 1\nprint('ready')")
        assert reply["status"] == "ok" and out.strip() == "ready", (reply, out)
        out, reply = _execute(kc, "x = bump(x)\nprint(x)")
        assert reply["status"] == "ok" and out.strip() == "42"

        victim = replica_pods[0]
        core.delete_namespaced_pod(victim.metadata.name, namespace)
        out, reply = _execute(kc, "print(bump(x))", timeout=180)
        if reply["status"] == "error" and reply["ename"] == "NotebookOSExecutorLost":
            # The cell reached the replica being deleted, which died running it: the documented
            # answer, and the cell left no trace. Run it again, as the error says.
            assert "Run the cell again" in reply["evalue"], reply
            out, reply = _execute(kc, "print(bump(x))", timeout=180)
        assert reply["status"] == "ok", reply
        assert out.strip() == "43", "x is 42: the lost cell left no trace"
    finally:
        kc.stop_channels()

    def replaced() -> bool:
        live = core.list_namespaced_pod(namespace, label_selector="notebookos.io/kernel=minimal").items
        return any(
            p.metadata.labels.get("notebookos.io/replica-id") == victim.metadata.labels["notebookos.io/replica-id"]
            and p.metadata.uid != victim.metadata.uid
            for p in live
        )

    until(replaced, 120, "a replacement pod for the deleted replica")


def _kernelspec(tmp: Path, name: str, extra: list[str]) -> Path:
    root = tmp / "jupyter"
    subprocess.run(
        [sys.executable, "-m", "notebookos.cli", "kernelspec", "install", "--name", name, "--gpus", "1",
         "--connect-via", "pod", "--dir", str(root / "kernels"), *extra],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return root


def _use_kernelspec(tmp: Path, name: str, namespace: str, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install a kernelspec for `namespace` and point this process's Jupyter and kubeconfig at it."""
    root = _kernelspec(tmp, name, ["--namespace", namespace])
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    return root


def test_provisioner_launches_runs_and_deletes(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_kernelspec(tmp_path, "nbos", namespace, cluster, monkeypatch)

    async def flow() -> None:
        from jupyter_client import AsyncKernelManager

        km = AsyncKernelManager(kernel_name="nbos")
        await km.start_kernel()
        name = km.provisioner.kernel_resource  # type: ignore[union-attr]
        assert name and _kernel(cluster, namespace, name) is not None
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            reply = await kc.execute_interactive("import math\nprint(math.factorial(10))", timeout=120)
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
        await km.shutdown_kernel()
        until(lambda: _kernel(cluster, namespace, name) is None, 60, f"NotebookKernel {name} to be deleted")

    asyncio.run(flow())


def test_provisioner_restart_starts_a_fresh_kernel_of_the_same_name(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jupyter's restart keeps the kernel id, so the NotebookKernel's name: the launch after
    `kill(restart=True)` must wait out the old one's deletion instead of failing with 409."""
    _use_kernelspec(tmp_path, "nbos-restart", namespace, cluster, monkeypatch)

    async def flow() -> None:
        from jupyter_client import AsyncKernelManager

        km = AsyncKernelManager(kernel_name="nbos-restart")
        await km.start_kernel()
        name = km.provisioner.kernel_resource  # type: ignore[union-attr]
        first = _kernel(cluster, namespace, name)
        assert first is not None
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            assert (await kc.execute_interactive("x = 41", timeout=120))["content"]["status"] == "ok"
        finally:
            kc.stop_channels()

        await km.restart_kernel()
        assert km.provisioner.kernel_resource == name  # type: ignore[union-attr]
        second = _kernel(cluster, namespace, name)
        assert second is not None and second["metadata"]["uid"] != first["metadata"]["uid"]
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            # A restart is a new kernel, as with ipykernel: the old variables are gone, cells run.
            out: list[str] = []

            def hook(msg: dict[str, Any]) -> None:
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])

            reply = await kc.execute_interactive("print('x' in globals(), 6 * 7)", timeout=120, output_hook=hook)
            assert reply["content"]["status"] == "ok"
            assert "".join(out).strip() == "False 42"
        finally:
            kc.stop_channels()
        await km.shutdown_kernel()
        until(lambda: _kernel(cluster, namespace, name) is None, 60, f"NotebookKernel {name} to be deleted")

    asyncio.run(flow())


def test_unschedulable_kernel_fails_the_launch_with_the_condition(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jupyter_client import AsyncKernelManager

    root = _use_kernelspec(tmp_path, "nbos-huge", namespace, cluster, monkeypatch)
    spec = root / "kernels" / "nbos-huge" / "kernel.json"
    data = json.loads(spec.read_text())
    # No GPU node has 200 GiB per GPU (the fake nodes' GPUs have 80 GiB), so the extender refuses every node.
    data["metadata"]["kernel_provisioner"]["config"].update({"gpuMemory": "200Gi", "unschedulable_timeout": 10})
    spec.write_text(json.dumps(data))

    async def launch() -> None:
        km = AsyncKernelManager(kernel_name="nbos-huge")
        await km.start_kernel()

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="cannot be scheduled") as err:
        asyncio.run(launch())
    assert time.monotonic() - t0 < 120
    assert "Scheduled=False" in str(err.value)
    assert "memory" in str(err.value), err.value  # the extender's reason reaches the user
    # The failed launch leaves nothing behind.
    api = client.CustomObjectsApi(cluster.api())
    until(
        lambda: not api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"],
        60,
        "the failed launch's NotebookKernel to be deleted",
    )


def test_deleted_kernel_is_seen_dead(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _use_kernelspec(tmp_path, "nbos-del", namespace, cluster, monkeypatch)

    async def flow() -> None:
        from jupyter_client import AsyncKernelManager

        km = AsyncKernelManager(kernel_name="nbos-del")
        await km.start_kernel()
        assert await km.is_alive()
        name = km.provisioner.kernel_resource  # type: ignore[union-attr]
        cluster.kubectl("delete", "nbk", name, "-n", namespace, "--wait=false")
        deadline = time.monotonic() + 60
        while await km.is_alive():
            assert time.monotonic() < deadline, "the kernel manager still thinks the deleted kernel is alive"
            await asyncio.sleep(0.5)
        await km.cleanup_resources()

    asyncio.run(flow())


def test_jupyter_server_session_over_rest_and_websocket(
    cluster: Cluster, stack: Stack, namespace: str, tmp_path: Path
) -> None:
    import websocket  # websocket-client, a jupyter_server test dependency

    root = _kernelspec(tmp_path, "nbos-srv", ["--namespace", namespace])
    port, token = free_port(), uuid.uuid4().hex
    cluster.spawn(
        "jupyter-server",
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"],
        env={"JUPYTER_PATH": str(root), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
             "KUBECONFIG": str(cluster.kubeconfig)},
        ready_url=f"http://127.0.0.1:{port}/api/status?token={token}",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}", "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            base + path, method=method, headers=headers, data=json.dumps(body).encode() if body else None
        )
        with urllib.request.urlopen(req, timeout=300) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    try:
        session = call("POST", "/api/sessions", {"path": "t.ipynb", "type": "notebook", "kernel": {"name": "nbos-srv"}})
        kernel_id = session["kernel"]["id"]
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/api/kernels/{kernel_id}/channels", header=[f"Authorization: token {token}"]
        )
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "t", "session": "s",
                               "version": "5.3", "date": ""},
                    "parent_header": {}, "metadata": {}, "channel": "shell",
                    "content": {"code": "print(sum(range(10)))", "silent": False, "store_history": True,
                                "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
                }
            )
        )  # fmt: skip
        ws.settimeout(120)
        stream, status = "", None
        while status is None:
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "stream":
                stream += m["content"]["text"]
            elif m["msg_type"] == "execute_reply":
                status = m["content"]["status"]
        ws.close()
        assert status == "ok" and stream.strip() == "45"
        name = f"jupyter-{kernel_id}"
        assert _kernel(cluster, namespace, name) is not None
        call("DELETE", f"/api/sessions/{session['id']}")
        until(lambda: _kernel(cluster, namespace, name) is None, 60, f"NotebookKernel {name} to be deleted")
    finally:
        cluster.stop("jupyter-server")

"""JupyterHub with KubeSpawner on the test bed: a real hub (configured from the Zero-to-JupyterHub
values in docs/jupyterhub/), configurable-http-proxy and jupyterhub-singleuser servers, which
KubeSpawner creates as pods and the process runner runs; their notebooks run on NotebookOS.

One hub for the module (a JupyterLab server start is slow on 2 shared cores). The tests run in order:
alice's server and kernel, bob refused alice's objects, alice in a real browser (e2e/testbed/
browser.py), a hub restart, and stopping the servers deleting their kernels."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from e2e.testbed.cluster import REPO, Cluster, toolchain_dir
from e2e.testbed.hub import HUB_NODE_TAINT, NOTEBOOKOS_VALUES, Hub, install_kernelspec, overlay_for_testbed
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until

G, V = "notebookos.io", "v1alpha1"
# JupyterHub's namespace, where the chart puts the servers' service accounts.
HUB_NS = yaml.safe_load(NOTEBOOKOS_VALUES.read_text())["jupyterhub"]["serviceAccount"]["namespace"]
KERNELSPEC = "notebookos-gpu1"
# Screenshots of the browser test (a passing run, or the page when it failed) for CI to keep; build/
# is ignored by git.
ARTEFACTS = Path(os.environ.get("NOTEBOOKOS_E2E_ARTEFACTS") or REPO / "build" / "e2e-artefacts")


@dataclass
class Bed:
    cluster: Cluster
    stack: Stack
    hub: Hub
    artefacts: Path

    def kernels(self, user: str) -> list[dict[str, Any]]:
        api = client.CustomObjectsApi(self.cluster.api())
        return list(api.list_namespaced_custom_object(G, V, f"notebookos-kernels-{user}", "notebookkernels")["items"])

    def server_pod(self, user: str) -> Any:
        pods = self.cluster.core().list_namespaced_pod(HUB_NS, label_selector=f"hub.jupyter.org/username={user}")
        return pods.items[0] if pods.items else None


def _hub_toolchain() -> Path:
    """configurable-http-proxy and Chromium (e2e/toolchain/hub.sh); fails loudly, never skips."""
    proc = subprocess.run(["bash", str(REPO / "e2e" / "toolchain" / "hub.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, f"e2e/toolchain/hub.sh failed:\n{proc.stderr[-3000:]}"
    return Path(proc.stdout.strip().splitlines()[-1])


def _user_node(cluster: Cluster) -> str:
    """A kwok node for user servers, tainted so that no other test's pod lands on it."""
    name = f"hub-users-{uuid.uuid4().hex[:4]}"
    cluster.core().create_node(
        {"metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                      "labels": {"kubernetes.io/hostname": name, "type": "kwok"}},
         "spec": {"taints": [{"key": HUB_NODE_TAINT, "value": "true", "effect": "NoSchedule"}]},
         "status": {"capacity": {"cpu": "32", "memory": "128Gi", "pods": "110"},
                    "allocatable": {"cpu": "32", "memory": "128Gi", "pods": "110"}}}
    )  # fmt: skip

    def ready() -> bool:
        return any(
            c.type == "Ready" and c.status == "True" for c in cluster.core().read_node(name).status.conditions or []
        )

    until(ready, 60, f"kwok to mark {name} Ready")
    return name


def chart_jupyterhub_objects() -> list[dict[str, Any]]:
    """The chart's JupyterHub objects, rendered by helm from the docs' values file."""
    proc = subprocess.run(
        [str(toolchain_dir() / "bin" / "helm"), "template", "notebookos", str(REPO / "charts" / "notebookos"),
         "-n", "notebookos-system", "-f", str(NOTEBOOKOS_VALUES), "--show-only", "templates/jupyterhub.yaml"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def bed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    chp = _hub_toolchain()
    gpu_nodes = cluster.add_gpu_nodes(4, prefix="hubgpu")
    node = _user_node(cluster)
    stack = Stack(cluster).start()
    work = tmp_path_factory.mktemp("hub")
    objects = chart_jupyterhub_objects()
    cluster.kubectl("create", "namespace", HUB_NS)
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in objects))
    hub = Hub(cluster, work / "hub", HUB_NS, overlay_for_testbed(node, install_kernelspec(work / "jupyter"), HUB_NS))
    try:
        hub.start(chp)
        yield Bed(cluster, stack, hub, ARTEFACTS)
    finally:
        for user in ("alice", "bob"):
            try:
                hub.api("DELETE", f"/hub/api/users/{user}/server")
            except Exception:  # the hub may be what failed; the namespaces go below anyway
                pass
        hub.close()
        stack.close()
        for d in objects:
            if d["kind"] == "Namespace":
                cluster.kubectl("delete", "namespace", d["metadata"]["name"], "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", HUB_NS, "--wait=false", check=False)
        cluster.delete_nodes([*gpu_nodes, node])


def spawn(bed: Bed, user: str) -> None:
    def ready() -> bool:
        return bool(bed.hub.api("GET", f"/hub/api/users/{user}")["servers"].get("", {}).get("ready"))

    if not ready():  # a rerun (E2E_RERUN) finds it running
        bed.hub.api("POST", f"/hub/api/users/{user}/server")
    until(ready, 240, f"{user}'s server to be ready", interval=1.0)


def run_cell(bed: Bed, user: str, kernel_id: str, code: str, timeout: float = 180) -> tuple[str, dict[str, Any]]:
    """Run `code` over the kernel's websocket, through the proxy and the user's server."""
    import websocket  # websocket-client

    ws = websocket.create_connection(
        f"ws://127.0.0.1:{bed.hub.proxy_port}/user/{user}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {bed.hub.service_token}"],
        timeout=timeout,
    )
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": "execute_request",
        "username": user,
        "session": uuid.uuid4().hex,
        "version": "5.3",
        "date": "",
    }
    content = {
        "code": code,
        "silent": False,
        "store_history": True,
        "user_expressions": {},
        "allow_stdin": False,
        "stop_on_error": True,
    }
    ws.send(json.dumps({"header": header, "parent_header": {}, "metadata": {}, "channel": "shell", "content": content}))
    out = ""
    try:
        while True:
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if m["msg_type"] == "stream":
                out += m["content"]["text"]
            elif m["msg_type"] == "execute_result":
                out += m["content"]["data"].get("text/plain", "")
            elif m["msg_type"] == "execute_reply":
                return out, m["content"]
    finally:
        ws.close()


# ------------------------------------------------------------------------------------------------


def test_hub_spawns_a_server_whose_session_runs_on_notebookos(bed: Bed) -> None:
    spawn(bed, "alice")
    pod = bed.server_pod("alice")
    assert pod.spec.service_account_name == "notebookos-user-alice"
    assert pod.metadata.labels["component"] == "singleuser-server"
    session = bed.hub.api(
        "POST", "/user/alice/api/sessions",
        {"path": "api.ipynb", "type": "notebook", "kernel": {"name": KERNELSPEC}},
    )  # fmt: skip
    kernel_id = session["kernel"]["id"]
    (kernel,) = [k for k in bed.kernels("alice") if k["metadata"]["name"] == f"jupyter-{kernel_id}"]
    assert kernel["spec"]["user"] == "alice"
    assert kernel["metadata"]["labels"]["notebookos.io/user"] == "alice"
    out, reply = run_cell(bed, "alice", kernel_id, "x = 41\nx += 1\nprint('alice', x)")
    assert reply["status"] == "ok", reply
    assert out.strip() == "alice 42"


def _client_of_server(bed: Bed, user: str) -> Any:
    """A Kubernetes client with the credentials the runner gave `user`'s server process."""
    assert bed.stack.runner is not None
    pod = bed.server_pod(user)
    run = bed.stack.runner.running[pod.metadata.uid]
    return config.new_client_from_config(
        config_file=str(bed.stack.runner.service_account_dir(run.workdir) / "kubeconfig")
    )


def _refused(call: Any) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def test_a_second_user_cannot_reach_the_first_users_kernels(bed: Bed) -> None:
    spawn(bed, "bob")
    kernel = bed.kernels("alice")[0]
    name, ns = kernel["metadata"]["name"], kernel["metadata"]["namespace"]
    conn = kernel["status"]["connection"]
    bob = _client_of_server(bed, "bob")
    custom, core = client.CustomObjectsApi(bob), client.CoreV1Api(bob)
    # bob's server account works in bob's own namespace...
    assert custom.list_namespaced_custom_object(G, V, "notebookos-kernels-bob", "notebookkernels")["items"] == []
    # ...and the API server refuses it everything of alice's.
    refusals = {
        "list kernels": lambda: custom.list_namespaced_custom_object(G, V, ns, "notebookkernels"),
        "get kernel": lambda: custom.get_namespaced_custom_object(G, V, ns, "notebookkernels", name),
        "delete kernel": lambda: custom.delete_namespaced_custom_object(G, V, ns, "notebookkernels", name),
        "create kernel": lambda: custom.create_namespaced_custom_object(
            G, V, ns, "notebookkernels", {"apiVersion": f"{G}/{V}", "kind": "NotebookKernel",
                                          "metadata": {"name": "bob-in-alice"}, "spec": {}}),
        "read connection secret": lambda: core.read_namespaced_secret(conn["secretName"], ns),
        "get router service": lambda: core.read_namespaced_service(conn["serviceName"], ns),
        "list router pods": lambda: core.list_namespaced_pod(ns),
    }  # fmt: skip
    codes = {what: _refused(call) for what, call in refusals.items()}
    assert codes == dict.fromkeys(refusals, 403), codes
    assert kernel["metadata"]["uid"] in [k["metadata"]["uid"] for k in bed.kernels("alice")]
    # The hub refuses bob's own API token on alice's server.
    token = bed.hub.api("POST", "/hub/api/users/bob/tokens", {"note": "e2e"})["token"]
    assert bed.hub.status("GET", "/user/bob/api/kernels", token) == 200
    assert bed.hub.status("GET", "/user/alice/api/kernels", token) == 403


def _executing_replica_pod(bed: Bed, ns: str, kernel: str) -> str | None:
    """The pod of the replica running the cell: the one holding a GPU binding."""
    api = client.CustomObjectsApi(bed.cluster.api())
    reps = api.list_namespaced_custom_object(
        G, V, ns, "kernelreplicas", label_selector=f"notebookos.io/kernel={kernel}"
    )
    held = [r for r in reps["items"] if (r.get("status") or {}).get("gpuBinding")]
    if len(held) != 1:
        return None
    rid = held[0]["spec"]["replicaId"]
    pods = bed.cluster.core().list_namespaced_pod(
        ns, label_selector=f"notebookos.io/kernel={kernel},notebookos.io/replica-id={rid}"
    )
    live = [p for p in pods.items if p.metadata.deletion_timestamp is None]
    return live[0].metadata.name if len(live) == 1 else None


def test_jupyterlab_in_chromium_runs_cells_and_shows_a_notebookos_error(bed: Bed) -> None:
    from e2e.testbed.browser import Lab, chromium, wait_for

    driver = chromium()
    lab = Lab(driver, bed.hub.url)
    shot = bed.artefacts / "jupyterlab.png"
    try:
        lab.login("alice", bed.hub.password)
        before = {k["metadata"]["name"] for k in bed.kernels("alice")}
        display = "Python 3 (NotebookOS, 1 GPU)"  # the kernelspec's, docs/helm.md
        lab.new_notebook("alice", display)
        wait_for(lambda: lab.kernel_idle(display), 240, "the NotebookOS kernel to be idle in the status bar")
        (name,) = {k["metadata"]["name"] for k in bed.kernels("alice")} - before
        first = lab.run("x = 6 * 7; print('hello from NotebookOS', x)")
        wait_for(lambda: "hello from NotebookOS 42" in lab.output(first), 120, "the first cell's output")
        second = lab.run("x + 1")
        wait_for(lambda: "43" in lab.output(second), 120, "the second cell's result")
        # A cell whose executing replica dies: the kernel reports NotebookOSExecutorLost.
        third = lab.run("import time; time.sleep(120)")
        ns = "notebookos-kernels-alice"
        victim = until(lambda: _executing_replica_pod(bed, ns, name), 120, "the executing replica's pod", interval=0.5)
        runner = bed.stack.runner
        assert runner is not None and victim is not None
        pid = until(lambda: runner.pid_of(ns, victim), 10, f"{victim}'s process")
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: "NotebookOSExecutorLost" in lab.output(third), 180, "NotebookOSExecutorLost in the third cell")
        error = lab.output(third)
        assert "Run the cell again" in error, error
        # The kernel lives on: the state is that of the last completed cell.
        fourth = lab.run("print('still', x)")
        wait_for(lambda: "still 42" in lab.output(fourth), 180, "the cell after the lost one")
        lab.screenshot(shot)  # docs/img/jupyterlab-notebookos.png is one of these
    except BaseException:
        lab.screenshot(bed.artefacts / "jupyterlab-failure.png")
        raise
    finally:
        driver.quit()


def test_a_hub_restart_loses_nothing(bed: Bed) -> None:
    pod = bed.server_pod("alice")
    kernels = bed.hub.api("GET", "/user/alice/api/kernels")
    bed.hub.stop_hub()
    bed.hub.start_hub()
    assert bed.hub.api("GET", "/hub/api/users/alice")["servers"][""]["ready"]
    assert bed.server_pod("alice").metadata.uid == pod.metadata.uid
    after = bed.hub.api("GET", "/user/alice/api/kernels")
    assert {k["id"] for k in after} == {k["id"] for k in kernels}
    api_kernel = next(
        k["id"] for k in kernels if f"jupyter-{k['id']}" in {n["metadata"]["name"] for n in bed.kernels("alice")}
    )
    out, reply = run_cell(bed, "alice", api_kernel, "print('alice', x)")
    assert reply["status"] == "ok" and out.strip() == "alice 42", (reply, out)


def test_stopping_a_server_deletes_its_kernels(bed: Bed) -> None:
    assert bed.kernels("alice")
    bed.hub.api("DELETE", "/hub/api/users/alice/server")
    until(lambda: bed.server_pod("alice") is None, 120, "alice's server pod to be gone")
    until(lambda: not bed.kernels("alice"), 120, "alice's NotebookKernels to be deleted")
    # bob's server and namespace are untouched.
    assert bed.hub.api("GET", "/hub/api/users/bob")["servers"][""]["ready"]

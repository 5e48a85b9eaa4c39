"""The test bed itself: CRDs and examples against the real API server, pods on kwok GPU nodes run
as processes on their pod IPs, and garbage collection by the real controller-manager."""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from e2e.testbed.cluster import Cluster
from e2e.testbed.runner import ProcessRunner
from e2e.testbed.wait import until
from notebookos import labels
from notebookos.api.validate import validate

ROOT = Path(__file__).resolve().parents[1]


def test_versions(cluster: Cluster) -> None:
    out = subprocess.run([str(cluster.bin_dir / "bin" / "kube-apiserver"), "--version"], capture_output=True, text=True)
    major, minor = map(int, re.search(r"v(\d+)\.(\d+)\.\d+", out.stdout).groups())  # type: ignore[union-attr]
    assert (major, minor) >= (1, 35), out.stdout
    version = client.VersionApi(cluster.api()).get_code()
    assert version.git_version == out.stdout.split()[-1]
    etcd = subprocess.run([str(cluster.bin_dir / "bin" / "etcd"), "--version"], capture_output=True, text=True)
    emajor, eminor, epatch = map(int, re.search(r"etcd Version: (\d+)\.(\d+)\.(\d+)", etcd.stdout).groups())  # type: ignore[union-attr]
    assert (emajor, eminor, epatch) >= (3, 5, 13), "kube-apiserver needs RequestWatchProgress (etcd >= 3.5.13)"


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))


def _expect(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect: ")


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_valid_examples_accepted(cluster: Cluster, crds: None, namespace: str, path: Path) -> None:
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(path))
    assert "created" in out.stdout
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    got = cluster.kubectl("get", "notebookkernel", name, "-n", namespace, "-o", "yaml").stdout
    obj = yaml.safe_load(got)
    # The API server applied the schema's defaults.
    assert obj["spec"]["replicas"] == 3
    assert obj["spec"]["resources"]["gpus"] >= 1


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "invalid").glob("*.yaml")), ids=lambda p: p.name)
def test_invalid_examples_refused_with_documented_message(
    cluster: Cluster, crds: None, namespace: str, path: Path
) -> None:
    out = cluster.kubectl("apply", "-n", namespace, "-f", str(path), check=False)
    assert out.returncode != 0, f"{path.name} was accepted:\n{out.stdout}"
    assert _expect(path) in out.stderr, f"{path.name}: wanted {_expect(path)!r} in:\n{out.stderr}"
    # `notebookos validate` gives the same verdict: every error the server reports, in its words.
    offline = validate(yaml.safe_load(path.read_text()))
    missing = [e for e in offline if e not in out.stderr]
    assert not missing, f"{path.name}: offline errors the server did not print: {missing}\n{out.stderr}"
    # kubectl prints one error inline, several as "* ..." lines (strict field validation apart).
    server = [line for line in out.stderr.splitlines() if line.startswith("* ")] or [out.stderr]
    assert len(offline) == len(server), f"{path.name}: offline {offline}, server:\n{out.stderr}"


def test_immutable_fields_refused(cluster: Cluster, crds: None, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples" / "minimal.yaml"))
    out = cluster.kubectl(
        "patch", "nbk", "minimal", "-n", namespace, "--type=merge", "-p", '{"spec":{"replicas":5}}', check=False
    )
    assert out.returncode != 0 and "replicas is immutable" in out.stderr, out.stderr


def test_kubectl_explain_teaches(cluster: Cluster, crds: None) -> None:
    out = cluster.kubectl("explain", "notebookkernel.spec.replicas").stdout
    assert "Raft replicas of the kernel" in out
    assert "Default: 3." in out, out  # defaults are visible where users look for them
    out = cluster.kubectl("explain", "notebookkernel.spec.resources").stdout
    assert "Default: 4Gi." in " ".join(out.split()), out
    out = cluster.kubectl("get", "notebookos", "-A").stdout + cluster.kubectl("get", "nbk", "-A").stdout
    assert "error" not in out.lower()


def _server_pod(name: str, extra_env: list[dict[str, object]] | None = None) -> dict[str, object]:
    code = (
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        e = os.environ\n"
        "        body = (e['GREETING'] + ' from ' + e['MY_NAME'] + ' on ' + e['MY_NODE']).encode()\n"
        "        self.send_response(200); self.end_headers(); self.wfile.write(body)\n"
        "http.server.HTTPServer((os.environ['POD_IP'], 8080), H).serve_forever()\n"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {labels.RUNNER_LABEL: labels.RUNNER_VALUE}},
        "spec": {
            "nodeSelector": {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE},
            "tolerations": [{"key": labels.GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [
                {
                    "name": "main",
                    "image": "notebookos/kernel:dev",
                    "command": ["python", "-c", code],
                    "env": [
                        {"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "greeting", "key": "word"}}},
                        {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        *(extra_env or []),
                    ],
                }
            ],
        },
    }


def test_runner_pod_answers_on_its_pod_ip(cluster: Cluster, namespace: str, process_runner: ProcessRunner) -> None:
    nodes = cluster.add_gpu_nodes(1, prefix="runner")
    core = client.CoreV1Api(cluster.api())
    core.create_namespaced_secret(namespace, {"metadata": {"name": "greeting"}, "stringData": {"word": "hello"}})
    core.create_namespaced_pod(namespace, _server_pod("web"))
    try:
        pod = until(
            lambda: (p := core.read_namespaced_pod("web", namespace)).status.pod_ip and p,
            60,
            "the pod to be scheduled and get an IP",
        )
        node = core.read_node(pod.spec.node_name)
        assert node.metadata.labels[labels.GPU_POOL_LABEL] == labels.GPU_POOL_VALUE
        assert pod.status.pod_ip.startswith("127."), pod.status.pod_ip

        def answer() -> str:
            with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8080/", timeout=2) as resp:
                return str(resp.read().decode())

        body = until(answer, 60, f"the process to answer on {pod.status.pod_ip}:8080")
        assert body == f"hello from web on {pod.spec.node_name}"
        pid = process_runner.pid_of(namespace, "web")
        assert pid is not None
        core.delete_namespaced_pod("web", namespace)
        until(lambda: process_runner.pid_of(namespace, "web") is None, 30, "the runner to stop the process")
        until(lambda: not _alive(pid), 30, f"process {pid} to exit")
    finally:
        cluster.delete_nodes(nodes)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_exited_process_marks_pod_failed(cluster: Cluster, namespace: str, process_runner: ProcessRunner) -> None:
    nodes = cluster.add_gpu_nodes(1, prefix="exit")
    core = client.CoreV1Api(cluster.api())
    pod = _server_pod("crasher")
    pod["spec"]["containers"][0]["command"] = ["python", "-c", "import sys; sys.exit(3)"]  # type: ignore[index]
    pod["spec"]["containers"][0]["env"] = []  # type: ignore[index]
    core.create_namespaced_pod(namespace, pod)
    try:
        until(
            lambda: core.read_namespaced_pod("crasher", namespace).status.phase == "Failed",
            60,
            "the pod to be reported Failed",
        )
        assert "exited with code 3" in core.read_namespaced_pod("crasher", namespace).status.message
    finally:
        cluster.delete_nodes(nodes)


def test_garbage_collection_deletes_dependents(cluster: Cluster, crds: None, namespace: str) -> None:
    api = client.CustomObjectsApi(cluster.api())
    core = client.CoreV1Api(cluster.api())
    owner = api.create_namespaced_custom_object(
        "notebookos.io",
        "v1alpha1",
        namespace,
        "notebookkernels",
        {"apiVersion": "notebookos.io/v1alpha1", "kind": "NotebookKernel", "metadata": {"name": "owner"}, "spec": {}},
    )
    ref = {
        "apiVersion": "notebookos.io/v1alpha1",
        "kind": "NotebookKernel",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "dependent", "ownerReferences": [ref]}})
    api.delete_namespaced_custom_object("notebookos.io", "v1alpha1", namespace, "notebookkernels", "owner")

    def gone() -> bool:
        names = [c.metadata.name for c in core.list_namespaced_config_map(namespace).items]
        return "dependent" not in names

    until(gone, 60, "the controller-manager's garbage collector to delete the dependent")


def test_runner_waits_for_a_missing_config_map_key(
    cluster: Cluster, namespace: str, process_runner: ProcessRunner
) -> None:
    """As the kubelet holds a container whose non-optional configMapKeyRef is missing, so does the runner."""
    nodes = cluster.add_gpu_nodes(1, prefix="wait")
    core = client.CoreV1Api(cluster.api())
    core.create_namespaced_secret(namespace, {"metadata": {"name": "greeting"}, "stringData": {"word": "hi"}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "peers"}, "data": {}})
    extra = [{"name": "PEERS", "valueFrom": {"configMapKeyRef": {"name": "peers", "key": "peers"}}}]
    core.create_namespaced_pod(namespace, _server_pod("waiter", extra))
    try:
        until(lambda: any("has no key peers" in w for w in process_runner.waiting.values()), 60, "the runner to wait")
        assert process_runner.pid_of(namespace, "waiter") is None
        assert core.read_namespaced_pod("waiter", namespace).status.phase == "Running"
        core.patch_namespaced_config_map("peers", namespace, {"data": {"peers": "1=127.0.0.1:7000"}})
        until(lambda: process_runner.pid_of(namespace, "waiter"), 60, "the runner to start the process")
    finally:
        cluster.delete_nodes(nodes)

"""The whole Helm chart against the real control plane: `helm template` accepted by the API server
(server-side dry run), then really applied in a fresh namespace, and each component run as a local
process with the token of the service account the chart gives it: the extender and kube-scheduler
(the chart's own KubeSchedulerConfiguration) place a replica pod, the broker rebuilds and serves,
the node agent publishes its Node's inventory and is refused any other Node.

e2e/test_operator.py does the same for the operator's RBAC; this module covers the rest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.testbed.cluster import Cluster, free_port
from e2e.testbed.wait import until
from notebookos import labels

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "notebookos"


@dataclass
class Release:
    cluster: Cluster
    namespace: str
    kernel_namespace: str
    extender_port: int
    manifest: str
    docs: list[dict[str, Any]]
    workdir: Path
    nodes: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def token_kubeconfig(self, service_account: str, pod: str | None = None) -> Path:
        """A kubeconfig whose only credential is a token of the chart's service account (bound to
        `pod` when given, as a projected token in that pod would be)."""
        bound = ["--bound-object-kind=Pod", f"--bound-object-name={pod}"] if pod else []
        token = self.kubectl("create", "token", service_account, "-n", self.namespace, "--duration=1h", *bound)
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": "sa", "user": {"token": token.stdout.strip()}}],
            "contexts": [{"name": "sa", "context": {"cluster": admin["clusters"][0]["name"], "user": "sa"}}],
            "current-context": "sa",
        }
        path = self.workdir / f"{service_account}-{pod or 'sa'}.kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def can_i(self, service_account: str, *args: str) -> bool:
        user = f"--as=system:serviceaccount:{self.namespace}:{service_account}"
        proc = self.kubectl("auth", "can-i", user, *args, check=False)
        return proc.stdout.strip() == "yes"


def helm_template(cluster: Cluster, namespace: str, *values: str) -> str:
    helm = str(cluster.bin_dir / "bin" / "helm")
    proc = subprocess.run(
        [helm, "template", "notebookos", str(CHART), "-n", namespace, *values],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def release(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    ns = f"nbos-{uuid.uuid4().hex[:6]}"
    kernels = f"{ns}-kernels"
    port = free_port()
    manifest = helm_template(
        cluster,
        ns,
        *("--set", f"scheduler.extender.port={port}"),
        *("--set", "jupyterhub.enabled=true", "--set", f"jupyterhub.serviceAccount.namespace={ns}"),
        *("--set", f"jupyterhub.kernelNamespace={kernels}"),
    )
    docs = [d for d in yaml.safe_load_all(manifest) if d]
    rel = Release(cluster, ns, kernels, port, manifest, docs, tmp_path_factory.mktemp("chart"))
    # What `helm install` does before the templates: the chart's crds/ (Helm never dry-runs them).
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CHART / "crds"))
    # The NVIDIA GPU Operator's RuntimeClass, which the node agent names (gpuRuntimeClassName).
    cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(
            {
                "apiVersion": "node.k8s.io/v1",
                "kind": "RuntimeClass",
                "metadata": {"name": "nvidia"},
                "handler": "nvidia",
            }
        ),
    )
    cluster.kubectl("create", "namespace", ns)  # helm install --create-namespace
    try:
        yield rel
    finally:
        for name in list(cluster.procs):
            if name.startswith("chart-"):
                cluster.stop(name)
        cluster.delete_nodes(rel.nodes)
        # Everything but the shared kopf peering object (the operator's tests use it too).
        rest = "---\n".join(yaml.safe_dump(d) for d in docs if d["kind"] != "ClusterKopfPeering")
        cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=rest, check=False)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_the_whole_chart_is_accepted_by_the_api_server(release: Release) -> None:
    kinds = {d["kind"] for d in release.docs}
    assert {"Deployment", "DaemonSet", "ConfigMap", "Service", "ValidatingAdmissionPolicy", "Role"} <= kinds
    # The server-side dry run validates every object (schemas, RBAC references, CEL) without
    # creating it; the kernel namespace is one of the objects, so it must exist for the dry run.
    release.kubectl("create", "namespace", release.kernel_namespace)
    dry = release.kubectl("apply", "--dry-run=server", "-f", "-", input=release.manifest, check=False)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("(server dry run)") == len(release.docs)
    applied = release.kubectl("apply", "-f", "-", input=release.manifest, check=False)
    assert applied.returncode == 0, applied.stderr
    for kind, name in [
        ("deployment", "notebookos-operator"),
        ("deployment", "notebookos-scheduler"),
        ("deployment", "notebookos-broker"),
        ("daemonset", "notebookos-node-agent"),
        ("service", "notebookos-broker"),
        ("configmap", "notebookos-scheduler"),
    ]:
        release.kubectl("get", "-n", release.namespace, kind, name)
    release.kubectl("get", "-n", release.kernel_namespace, "role", "notebookos-jupyter-kernels")


def test_rbac_grants_each_component_what_it_needs_and_no_more(release: Release) -> None:
    ns, kernels = release.namespace, release.kernel_namespace
    yes = [
        ("notebookos-scheduler", ["create", "pods", "--subresource=binding", "-n", "default"]),
        ("notebookos-scheduler", ["update", "leases/notebookos-scheduler", "-n", ns]),
        ("notebookos-scheduler", ["watch", "kernelreplicas.notebookos.io", "-A"]),
        ("notebookos-broker", ["create", "tokenreviews.authentication.k8s.io"]),
        ("notebookos-broker", ["patch", "kernelreplicas.notebookos.io", "--subresource=status", "-A"]),
        ("notebookos-node-agent", ["patch", "nodes"]),
        ("notebookos-node-agent", ["create", "events", "-n", ns]),
        ("notebookos-user", ["create", "notebookkernels.notebookos.io", "-n", kernels]),
        ("notebookos-user", ["get", "secrets", "-n", kernels]),
    ]
    no = [
        ("notebookos-scheduler", ["update", "leases/someone-else", "-n", ns]),
        ("notebookos-scheduler", ["delete", "nodes"]),
        ("notebookos-broker", ["patch", "kernelreplicas.notebookos.io", "-A"]),
        ("notebookos-broker", ["get", "secrets", "-A"]),
        ("notebookos-node-agent", ["delete", "nodes"]),
        ("notebookos-node-agent", ["create", "events", "-n", "default"]),
        ("notebookos-user", ["get", "secrets", "-n", ns]),
        ("notebookos-user", ["create", "kernelreplicas.notebookos.io", "-n", kernels]),
        ("notebookos-user", ["update", "notebookkernels.notebookos.io", "-n", kernels]),
    ]
    wrong = [f"{sa} {' '.join(a)}: expected yes" for sa, a in yes if not release.can_i(sa, *a)]
    wrong += [f"{sa} {' '.join(a)}: expected no" for sa, a in no if release.can_i(sa, *a)]
    assert not wrong, wrong


def test_scheduler_and_extender_place_a_replica_with_their_own_tokens(release: Release) -> None:
    c, ns = release.cluster, release.namespace
    release.nodes += c.add_gpu_nodes(2, prefix=f"{ns}-gpu")
    sa_config = release.token_kubeconfig("notebookos-scheduler")
    c.spawn(
        "chart-extender",
        [
            sys.executable,
            "-m",
            "notebookos.extender.extender_main",
            f"--port={release.extender_port}",
            f"--kubeconfig={sa_config}",
        ],
        ready_url=f"http://127.0.0.1:{release.extender_port}/readyz",
    )
    # kube-scheduler with the chart's ConfigMap as is, only the credentials and port set locally.
    cm = release.kubectl("get", "configmap", "notebookos-scheduler", "-n", ns, "-o", "json")
    config = yaml.safe_load(json.loads(cm.stdout)["data"]["config.yaml"])
    config["clientConnection"] = {"kubeconfig": str(sa_config)}
    path = release.workdir / "scheduler-config.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    c.spawn(
        "chart-scheduler",
        [
            str(c.bin_dir / "bin" / "kube-scheduler"),
            f"--config={path}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--authentication-kubeconfig={sa_config}",
            f"--authorization-kubeconfig={sa_config}",
        ],
        ready_url=f"https://127.0.0.1:{port}/healthz",
    )
    coordination = client.CoordinationV1Api(c.api())
    lease = until(
        lambda: coordination.read_namespaced_lease("notebookos-scheduler", ns).spec.holder_identity,
        60,
        "the chart's scheduler to hold its Lease",
    )
    assert lease
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "replica",
            "labels": {labels.KERNEL_LABEL: "k"},
            "annotations": {labels.REPLICA_GPUS_ANNOTATION: "1"},
        },
        "spec": {
            "schedulerName": labels.SCHEDULER_NAME,
            "nodeSelector": {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE, "kubernetes.io/hostname": release.nodes[0]},
            "tolerations": [{"key": labels.GPU_TAINT_KEY, "operator": "Exists"}],
            "containers": [{"name": "c", "image": "kernel"}],
        },
    }
    c.core().create_namespaced_pod(ns, pod)
    node = until(lambda: c.core().read_namespaced_pod("replica", ns).spec.node_name, 60, "the replica pod to be bound")
    assert node == release.nodes[0]
    # It went through the extender (the scheduler's extender is not ignorable, but say so plainly).
    with urllib.request.urlopen(f"http://127.0.0.1:{release.extender_port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    filters = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("notebookos_extender_requests_total{") and 'verb="filter"' in line
    ]
    assert sum(filters) >= 1, metrics


def test_broker_and_node_agent_run_with_their_own_tokens(release: Release) -> None:
    c, ns = release.cluster, release.namespace
    if not release.nodes:
        release.nodes += c.add_gpu_nodes(2, prefix=f"{ns}-gpu")
    port = free_port()
    broker_url = f"http://127.0.0.1:{port}"
    c.spawn(
        "chart-broker",
        [
            sys.executable,
            "-m",
            "notebookos.extender.broker_main",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--kubeconfig={release.token_kubeconfig('notebookos-broker')}",
            f"--admin=system:serviceaccount:{ns}:notebookos-node-agent",
        ],
        ready_url=f"{broker_url}/readyz",
    )
    # The DaemonSet put an agent pod on each GPU-pool node (kwok runs none of them).
    own, other = release.nodes[0], release.nodes[1]

    def agent_pod() -> str | None:
        pods = c.core().list_namespaced_pod(ns, label_selector="app.kubernetes.io/name=notebookos-node-agent")
        return next((p.metadata.name for p in pods.items if p.spec.node_name == own), None)

    pod = until(agent_pod, 60, f"the node agent DaemonSet to place a pod on {own}")
    agent_config = release.token_kubeconfig("notebookos-node-agent", pod=str(pod))
    token_file = release.workdir / "agent.token"
    token_file.write_text(yaml.safe_load(agent_config.read_text())["users"][0]["user"]["token"])
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "notebookos.extender.node_agent_main",
            "--once",
            "--nvml=fake:2",
            f"--node={own}",
            f"--kubeconfig={agent_config}",
            f"--broker-url={broker_url}",
            f"--token-file={token_file}",
            f"--event-namespace={ns}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    inventory = json.loads(c.core().read_node(own).metadata.annotations[labels.GPU_INVENTORY_ANNOTATION])
    assert len(inventory) == 2  # the fake NVML's, replacing the 8 the test bed wrote

    # RBAC lets it patch nodes; the chart's admission policy keeps it to its own Node's annotations.
    def patch(node: str, body: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        kc = f"--kubeconfig={agent_config}"
        bin_ = str(c.bin_dir / "bin" / "kubectl")
        return subprocess.run(
            [bin_, kc, "patch", "node", node, "--type=merge", "-p", json.dumps(body)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    other_node = patch(other, {"metadata": {"annotations": {"x": "y"}}})
    assert other_node.returncode != 0
    assert "may change only the Node its own pod runs on" in other_node.stderr
    label = patch(own, {"metadata": {"labels": {labels.GPU_POOL_LABEL: "false"}}})
    assert label.returncode != 0
    assert "may change only a Node's annotations" in label.stderr
    assert patch(own, {"metadata": {"annotations": {"x": "y"}}}).returncode == 0

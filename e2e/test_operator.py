"""The operator against the real control plane: a NotebookKernel becomes replicas on distinct kwok
GPU nodes, waits (and says why) when there are too few, replaces lost replicas, goes away with its
kernel, and survives its own restarts.

The operator runs as a local process with the token of the service account that the chart's RBAC
manifest binds, so these tests also show that RBAC is enough. Replica pods use the default
kube-scheduler here (the extender has its own tests); kwok marks them Running and Ready.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from e2e.testbed.admission import allow_replicas, refusal, refuse_replicas
from e2e.testbed.cluster import Cluster, free_port
from e2e.testbed.wait import until
from notebookos import labels
from notebookos.extender.scheduler_config import extender_entry

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "notebookos"
SYSTEM_NS = "notebookos-system"
G, V = "notebookos.io", "v1alpha1"
POOL_LABEL = "e2e.notebookos.io/pool"


RESYNC_SECONDS = 5


@dataclass
class Bed:
    cluster: Cluster
    kubeconfig: Path
    pool_value: str
    pool: list[str] = field(default_factory=list)
    starts: int = 0

    # ------------------------------------------------------------------ the operator process

    def start_operator(
        self, name: str = "operator", priority: int | None = None, scheduler_name: str = "default-scheduler"
    ) -> None:
        self.starts += 1
        port = free_port()
        self.cluster.spawn(
            name,
            [
                sys.executable,
                "-m",
                "notebookos.operator",
                "--liveness",
                f"http://127.0.0.1:{port}/healthz",
                "--metrics-port=0",  # several operators share this host
                "--peering",
                "notebookos",
                # A restarted operator outranks any stale peering record of its predecessor.
                "--priority",
                str(priority if priority is not None else 100 + self.starts),
                "--scheduler-name",
                scheduler_name,
                "--node-selector",
                f"{POOL_LABEL}={self.pool_value}",
                f"--runner={labels.RUNNER_VALUE}",  # the test bed's label; production sets none
                "--verbose",
            ],
            # A short resync, so the tests see a failed reconcile retried with no other event.
            env={"KUBECONFIG": str(self.kubeconfig), "NOTEBOOKOS_RESYNC_SECONDS": str(RESYNC_SECONDS)},
            ready_url=f"http://127.0.0.1:{port}/healthz",
            timeout=90,
        )

    def stop_operator(self) -> None:
        self.cluster.stop("operator")

    # ------------------------------------------------------------------ the GPU pool of these tests

    def resize_pool(self, size: int) -> list[str]:
        """Exactly `size` kwok GPU nodes carry this module's pool label."""
        core = self.cluster.core()
        while len(self.pool) > size:
            node = self.pool.pop()
            core.patch_node(node, {"metadata": {"labels": {POOL_LABEL: None}}})
        if len(self.pool) < size:
            for node in self.cluster.add_gpu_nodes(size - len(self.pool), prefix="op"):
                core.patch_node(node, {"metadata": {"labels": {POOL_LABEL: self.pool_value}}})
                self.pool.append(node)
        return list(self.pool)

    # ------------------------------------------------------------------ reads

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.cluster.api())

    @property
    def core(self) -> Any:
        return self.cluster.core()

    def kernel(self, ns: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(G, V, ns, "notebookkernels", name))

    def replicas(self, ns: str, kernel: str) -> list[dict[str, Any]]:
        items = self.custom.list_namespaced_custom_object(
            G, V, ns, "kernelreplicas", label_selector=f"{labels.KERNEL_LABEL}={kernel}"
        )["items"]
        return sorted(items, key=lambda r: r["spec"]["replicaId"])

    def replica_pods(self, ns: str, kernel: str) -> list[Any]:
        sel = f"{labels.KERNEL_LABEL}={kernel},{labels.COMPONENT_LABEL}=replica"
        return [p for p in self.core.list_namespaced_pod(ns, label_selector=sel).items]

    def events(self, ns: str, name: str) -> list[Any]:
        return list(self.core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items)

    def apply_minimal(self, ns: str, name: str = "minimal") -> None:
        doc = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
        doc["metadata"]["name"] = name
        self.cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))

    def wait_phase(self, ns: str, name: str, phase: str, timeout: float = 60) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            k = self.kernel(ns, name)
            return k if k.get("status", {}).get("phase") == phase else None

        try:
            return until(reached, timeout, f"kernel {ns}/{name} to be {phase}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; status: {self.kernel(ns, name).get('status')}") from exc


def _live(pods: list[Any]) -> list[Any]:
    return [p for p in pods if p.metadata.deletion_timestamp is None and p.status.phase not in ("Failed", "Succeeded")]


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def _token_kubeconfig(cluster: Cluster, path: Path) -> Path:
    token = cluster.kubectl("create", "token", "notebookos-operator", "-n", SYSTEM_NS, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": admin["clusters"][0]["name"], "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def bed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"), "-f", str(CHART / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"), "-f", str(CHART / "crds")
    )
    cluster.kubectl("apply", "-f", str(CHART / "templates" / "kopf-peering.yaml"))
    cluster.kubectl("create", "namespace", SYSTEM_NS, check=False)
    rbac = (CHART / "templates" / "rbac-operator.yaml").read_text().replace("{{ .Release.Namespace }}", SYSTEM_NS)
    cluster.kubectl("apply", "-f", "-", input=rbac)
    kubeconfig = _token_kubeconfig(cluster, tmp_path_factory.mktemp("operator") / "operator.kubeconfig")
    b = Bed(cluster, kubeconfig, pool_value=f"op-{uuid.uuid4().hex[:6]}")
    b.resize_pool(3)
    b.start_operator()
    try:
        yield b
    finally:
        b.stop_operator()
        cluster.delete_nodes(b.pool)


# ------------------------------------------------------------------------------------------------


def test_minimal_kernel_becomes_three_replicas_on_three_nodes(bed: Bed, namespace: str) -> None:
    nodes = bed.resize_pool(3)
    bed.apply_minimal(namespace)
    kernel = bed.wait_phase(namespace, "minimal", "Ready")
    status = kernel["status"]

    replicas = bed.replicas(namespace, "minimal")
    assert [r["spec"]["replicaId"] for r in replicas] == [1, 2, 3]
    assert all(r["metadata"]["ownerReferences"][0]["uid"] == kernel["metadata"]["uid"] for r in replicas)
    pods = _live(bed.replica_pods(namespace, "minimal"))
    assert len(pods) == 3
    assert len({p.spec.node_name for p in pods}) == 3, [p.spec.node_name for p in pods]
    assert {p.spec.node_name for p in pods} <= set(nodes)

    # Status: phase, ready count, conditions, connection info (the key stays in the Secret).
    assert status["readyReplicas"] == 3 and status["replicas"] == 3
    assert status["observedGeneration"] == kernel["metadata"]["generation"]
    assert _condition(kernel, "Scheduled")["status"] == "True"
    assert _condition(kernel, "Ready")["status"] == "True"
    assert _condition(kernel, "Degraded")["status"] == "False"
    conn = status["connection"]
    svc = bed.core.read_namespaced_service("minimal", namespace)
    assert conn["serviceName"] == "minimal" and conn["host"] == svc.spec.cluster_ip
    assert sorted(conn["ports"]) == ["control", "hb", "iopub", "shell", "stdin"]
    assert sorted(p.name for p in svc.spec.ports) == sorted(conn["ports"])
    secret = bed.core.read_namespaced_secret(conn["secretName"], namespace)
    key = base64.b64decode(secret.data["key"]).decode()
    assert len(key) == 64 and key not in yaml.safe_dump(kernel)

    # Replica status comes from the pods.
    by_pod = {p.metadata.name: p for p in pods}
    for r in replicas:
        pod = by_pod[r["status"]["podName"]]
        assert r["status"]["phase"] == "Ready"
        assert r["status"]["nodeName"] == pod.spec.node_name
        assert r["status"]["podIP"] == pod.status.pod_ip
        assert r["status"]["incarnation"] == 1

    # The replica pod as specified: own scheduler, no GPU request, anti-affinity, hardened.
    pod = pods[0]
    assert pod.spec.scheduler_name == "default-scheduler"
    container = pod.spec.containers[0]
    assert labels.GPU_RESOURCE not in (container.resources.requests or {})
    assert labels.GPU_RESOURCE not in (container.resources.limits or {})
    assert pod.metadata.annotations[labels.REPLICA_GPUS_ANNOTATION] == "1"
    assert pod.metadata.labels[labels.RUNNER_LABEL] == labels.RUNNER_VALUE
    assert pod.spec.node_selector[labels.GPU_POOL_LABEL] == labels.GPU_POOL_VALUE
    term = pod.spec.affinity.pod_anti_affinity.required_during_scheduling_ignored_during_execution[0]
    assert term.label_selector.match_labels[labels.KERNEL_LABEL] == "minimal"
    assert pod.spec.security_context.run_as_non_root is True
    assert container.security_context.read_only_root_filesystem is True
    env = {e.name: e for e in container.env}
    assert env["NOTEBOOKOS_KEY"].value_from.secret_key_ref.name == conn["secretName"]

    # The kernel's pods run as the kernel's own service account, which reaches only its objects.
    assert pod.spec.service_account_name == "minimal-kernel"
    kernel_sa = f"--as=system:serviceaccount:{namespace}:minimal-kernel"
    ns_args = ("-n", namespace, kernel_sa)
    assert bed.cluster.kubectl("auth", "can-i", "get", "configmap/minimal-peers", *ns_args).stdout.strip() == "yes"
    for denied in (("get", "configmap/other-peers"), ("list", "configmaps"), ("get", "secret/minimal-key")):
        out = bed.cluster.kubectl("auth", "can-i", *denied, *ns_args, check=False)
        assert out.stdout.strip() == "no", denied
    out = bed.cluster.kubectl(
        "auth", "can-i", "patch", "kernelreplicas.notebookos.io/minimal-2", "--subresource=status", *ns_args
    )
    assert out.stdout.strip() == "yes"

    # Peers from the replicas' pod IPs (no cluster DNS), and a PDB keeping a majority.
    peers = bed.core.read_namespaced_config_map("minimal-peers", namespace).data["peers"]
    assert peers == ",".join(f"{r['spec']['replicaId']}={r['status']['podIP']}:7000" for r in replicas), peers
    pdb = client.PolicyV1Api(bed.cluster.api()).read_namespaced_pod_disruption_budget("minimal", namespace)
    assert pdb.spec.min_available == 2
    router = bed.core.read_namespaced_pod("minimal-router", namespace)
    assert router.status.phase == "Running"
    router_env = {e.name: e.value for e in router.spec.containers[0].env}
    assert router_env["NOTEBOOKOS_REPLICAS"] == peers.replace(":7000", ":9000")

    reasons = {e.reason for e in bed.events(namespace, "minimal")}
    assert {"Scheduled", "Ready"} <= reasons, reasons


def test_too_few_gpu_nodes_keeps_kernel_pending_and_says_why(bed: Bed, namespace: str) -> None:
    bed.resize_pool(2)
    bed.apply_minimal(namespace, "short")

    def refused() -> dict[str, Any] | None:
        k = bed.kernel(namespace, "short")
        conds = {c["type"]: c for c in k.get("status", {}).get("conditions", [])}
        return k if conds.get("Scheduled", {}).get("status") == "False" else None

    kernel = until(refused, 60, "the kernel's Scheduled condition to turn False")
    assert kernel["status"]["phase"] == "Pending"
    cond = _condition(kernel, "Scheduled")
    assert cond["reason"] == "Unschedulable"
    assert "anti-affinity" in cond["message"] and "replica" in cond["message"], cond["message"]
    assert kernel["status"]["readyReplicas"] <= 2

    def warned() -> list[Any]:
        return [e for e in bed.events(namespace, "short") if e.type == "Warning" and e.reason == "Unschedulable"]

    event = until(warned, 30, "a Warning event saying why the kernel is not scheduled")[0]
    assert "anti-affinity" in event.message

    # The membership is incomplete, so replica containers may not start yet; nor is there a router.
    def two_known() -> dict[str, str] | None:
        data = bed.core.read_namespaced_config_map("short-peers", namespace).data
        return data if len(data["known"].split(",")) == 2 else None

    data = until(two_known, 30, "the two placed replicas' addresses in the peers ConfigMap")
    assert "peers" not in data, data
    assert not bed.core.list_namespaced_pod(namespace, label_selector=f"{labels.COMPONENT_LABEL}=router").items

    # Stays pending (no retry storm of new pods) ...
    time.sleep(3)
    assert bed.kernel(namespace, "short")["status"]["phase"] == "Pending"
    assert len(bed.replica_pods(namespace, "short")) == 3
    # ... until a third GPU node joins the pool.
    bed.resize_pool(3)
    bed.wait_phase(namespace, "short", "Ready", timeout=90)


def test_deleted_replica_pod_is_replaced_on_a_node_without_a_sibling(bed: Bed, namespace: str) -> None:
    bed.resize_pool(4)
    bed.apply_minimal(namespace, "heal")
    bed.wait_phase(namespace, "heal", "Ready")
    victim = next(p for p in bed.replica_pods(namespace, "heal") if p.metadata.labels[labels.REPLICA_ID_LABEL] == "2")
    bed.core.delete_namespaced_pod(victim.metadata.name, namespace)

    def replaced() -> Any:
        for p in _live(bed.replica_pods(namespace, "heal")):
            if p.metadata.labels[labels.REPLICA_ID_LABEL] == "2" and p.metadata.name != victim.metadata.name:
                return p if p.spec.node_name else None
        return None

    new = until(replaced, 60, "a replacement pod for replica 2")
    assert new.metadata.labels["notebookos.io/incarnation"] == "2"
    siblings = [p for p in _live(bed.replica_pods(namespace, "heal")) if p.metadata.uid != new.metadata.uid]
    assert new.spec.node_name not in {p.spec.node_name for p in siblings}
    assert len(_live(bed.replica_pods(namespace, "heal"))) == 3

    def healed() -> dict[str, Any] | None:
        k = bed.kernel(namespace, "heal")
        return k if k["status"]["phase"] == "Ready" and k["status"].get("replacements") == 1 else None

    until(healed, 60, "the kernel to be Ready again with one replacement counted")
    replica = next(r for r in bed.replicas(namespace, "heal") if r["spec"]["replicaId"] == 2)
    assert replica["status"]["incarnation"] == 2 and replica["status"]["podName"] == new.metadata.name
    assert any(e.reason == "ReplicaReplaced" for e in bed.events(namespace, "heal-2"))
    # `kubectl describe nbk heal` says which replica was replaced, why, and by what.
    on_kernel = [e.message for e in bed.events(namespace, "heal") if e.reason == "ReplicaReplaced"]
    assert len(on_kernel) == 1 and on_kernel[0].startswith("replica heal-2: "), on_kernel
    assert "deleted" in on_kernel[0] and f"replaced by pod {new.metadata.name}" in on_kernel[0], on_kernel
    peers = bed.core.read_namespaced_config_map("heal-peers", namespace).data["peers"]
    assert f"2={new.status.pod_ip}:7000" in peers
    # The router was made again with the replica's new address.
    router = bed.core.read_namespaced_pod("heal-router", namespace)
    assert (
        f"2={new.status.pod_ip}:9000" in {e.name: e.value for e in router.spec.containers[0].env}["NOTEBOOKOS_REPLICAS"]
    )


def test_a_pod_that_fails_at_once_is_replaced_after_a_backoff(bed: Bed, namespace: str) -> None:
    bed.resize_pool(4)
    bed.apply_minimal(namespace, "crash")
    bed.wait_phase(namespace, "crash", "Ready")
    # What the kubelet (or the process runner) reports when the replica process exits.
    bed.core.patch_namespaced_pod_status(
        "crash-3-i1", namespace, {"status": {"phase": "Failed", "reason": "Error", "message": "exit code 1"}}
    )
    failed_at = time.monotonic()

    def backing_off() -> dict[str, Any] | None:
        r = next(r for r in bed.replicas(namespace, "crash") if r["spec"]["replicaId"] == 3)
        return r if r["status"]["phase"] == "Failed" and _condition(r, "Ready")["reason"] == "BackOff" else None

    replica = until(backing_off, 30, "replica 3 to report its failed pod and the backoff")
    assert "pod crash-3-i1 failed (Error)" in _condition(replica, "Ready")["message"]
    degraded = bed.wait_phase(namespace, "crash", "Degraded", timeout=30)
    assert "replica 3 is Failed" in _condition(degraded, "Degraded")["message"]

    def replaced() -> Any:
        return {p.metadata.name: p for p in _live(bed.replica_pods(namespace, "crash"))}.get("crash-3-i2")

    new = until(replaced, 60, "the replacement of the failed pod")
    # Not at once: the first backoff is 5 s from the pod's last change (it became ready ~1 s in).
    assert time.monotonic() - failed_at > 2.0
    assert new.spec.node_name
    until(
        lambda: "crash-3-i1" not in [p.metadata.name for p in bed.replica_pods(namespace, "crash")],
        30,
        "the failed pod to be deleted",
    )
    bed.wait_phase(namespace, "crash", "Ready", timeout=60)
    # Events are posted asynchronously.
    until(
        lambda: {"ReplicaFailed", "ReplicaReplaced"} <= {e.reason for e in bed.events(namespace, "crash-3")},
        20,
        "Warning events on the replica",
    )


def test_replica_on_a_vanished_node_moves_to_another(bed: Bed, namespace: str) -> None:
    bed.resize_pool(4)
    bed.apply_minimal(namespace, "nodeloss")
    bed.wait_phase(namespace, "nodeloss", "Ready")
    old = next(p for p in bed.replica_pods(namespace, "nodeloss") if p.metadata.labels[labels.REPLICA_ID_LABEL] == "1")
    gone = old.spec.node_name
    bed.pool.remove(gone)
    bed.cluster.delete_nodes([gone])

    def moved() -> Any:
        for p in _live(bed.replica_pods(namespace, "nodeloss")):
            if p.metadata.labels[labels.REPLICA_ID_LABEL] == "1" and p.spec.node_name not in (None, gone):
                return p
        return None

    new = until(moved, 60, f"replica 1 to leave the deleted node {gone}")
    assert new.metadata.labels["notebookos.io/incarnation"] == "2"
    bed.wait_phase(namespace, "nodeloss", "Ready", timeout=60)


def test_deleting_the_kernel_removes_everything_it_owned(bed: Bed, namespace: str) -> None:
    bed.resize_pool(3)
    bed.apply_minimal(namespace, "gone")
    bed.wait_phase(namespace, "gone", "Ready")
    # kopf's one finalizer (it stops the resync timers before the object goes), and nothing else.
    until(
        lambda: bed.kernel(namespace, "gone")["metadata"].get("finalizers") == [f"{labels.DOMAIN}/operator"],
        30,
        "kopf's finalizer, the only one, on the kernel",
    )
    bed.cluster.kubectl("delete", "notebookkernel", "gone", "-n", namespace, "--wait=true", "--timeout=60s")

    def everything_gone() -> bool:
        core = bed.core
        sel = f"{labels.KERNEL_LABEL}=gone"
        left = (
            bed.replicas(namespace, "gone")
            + core.list_namespaced_pod(namespace, label_selector=sel).items
            + core.list_namespaced_service(namespace, label_selector=sel).items
            + core.list_namespaced_secret(namespace, label_selector=sel).items
            + core.list_namespaced_config_map(namespace, label_selector=sel).items
            + client.PolicyV1Api(bed.cluster.api())
            .list_namespaced_pod_disruption_budget(namespace, label_selector=sel)
            .items
        )
        return not left

    until(everything_gone, 90, "the garbage collector to remove all the kernel owned")


def test_a_refused_reconcile_is_retried_with_no_other_event(bed: Bed, namespace: str) -> None:
    """The operator's writes fail for a while (an admission policy refuses its KernelReplicas); once
    the policy is gone, the kernel becomes Ready although nothing about it changed: the resync timer
    brings the operator back. kopf resumes watches without listing again, so without the timer the
    kernel would stay Pending until some unrelated event."""
    bed.resize_pool(3)
    policy = refuse_replicas(bed.cluster, namespace, "CREATE", "e2e: replicas refused for a while")
    try:
        until(
            lambda: "replicas refused" in refusal(bed.cluster, namespace, "CREATE"),
            30,
            "the admission policy to refuse KernelReplicas",
        )
        bed.apply_minimal(namespace, "refused")
        log = bed.cluster.logs_dir / "operator.log"
        until(lambda: "replicas refused" in log.read_text(), 60, "the operator to be refused")
        assert bed.replicas(namespace, "refused") == []
        assert bed.kernel(namespace, "refused").get("status", {}).get("phase") != "Ready"
    finally:
        allow_replicas(bed.cluster, policy)
    generation = bed.kernel(namespace, "refused")["metadata"]["generation"]
    bed.wait_phase(namespace, "refused", "Ready", timeout=90 + 4 * RESYNC_SECONDS)
    assert bed.kernel(namespace, "refused")["metadata"]["generation"] == generation  # nobody touched it
    assert len(bed.replicas(namespace, "refused")) == 3


def test_operator_restart_mid_reconcile_makes_no_duplicates_and_keeps_status(bed: Bed, namespace: str) -> None:
    bed.resize_pool(3)
    bed.apply_minimal(namespace, "restart")
    # Kill the operator (no graceful stop) as soon as it has begun making the kernel's parts.
    until(lambda: bed.replicas(namespace, "restart"), 30, "the operator to start making replicas")
    os.killpg(bed.cluster.procs["operator"].proc.pid, signal.SIGKILL)
    bed.stop_operator()
    midway = bed.kernel(namespace, "restart").get("status", {})
    print(f"killed with {len(bed.replicas(namespace, 'restart'))} replicas made, status {midway}")
    bed.start_operator()
    kernel = bed.wait_phase(namespace, "restart", "Ready")

    def counts() -> tuple[int, int, int]:
        pods = bed.replica_pods(namespace, "restart")
        return (len(bed.replicas(namespace, "restart")), len(pods), len({p.metadata.name for p in pods}))

    assert counts() == (3, 3, 3)
    assert kernel["status"].get("replacements", 0) == 0
    assert all(r["status"]["incarnation"] == 1 for r in bed.replicas(namespace, "restart"))
    secret_uid = bed.core.read_namespaced_secret("restart-key", namespace).metadata.uid

    # Restart again once Ready: same status (transition times included), same objects.
    before = kernel["status"]
    ready_events = sum(e.count or 1 for e in bed.events(namespace, "restart") if e.reason == "Ready")
    bed.stop_operator()
    bed.start_operator()
    time.sleep(5)  # the new operator has listed and reconciled everything by now
    after = bed.kernel(namespace, "restart")["status"]
    assert after == before
    assert counts() == (3, 3, 3)
    assert bed.core.read_namespaced_secret("restart-key", namespace).metadata.uid == secret_uid
    assert sum(e.count or 1 for e in bed.events(namespace, "restart") if e.reason == "Ready") == ready_events


def test_a_kernel_name_too_long_for_its_services_is_refused_at_admission(bed: Bed, namespace: str) -> None:
    # The CRD's rule refuses it before the operator sees it (the operator's own check, for kernels
    # admitted before that rule, is in tests/operator).
    doc = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    doc["metadata"]["name"] = "k" * 60
    out = bed.cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert out.returncode != 0 and "metadata.name" in out.stderr and "at most 54 characters" in out.stderr, out.stderr
    assert bed.replicas(namespace, "k" * 60) == []


def test_operator_rbac_is_least_privilege(bed: Bed) -> None:
    def can(verb: str, resource: str, ns: str = "default", sub: str = "") -> bool:
        out = bed.cluster.kubectl(
            "auth",
            "can-i",
            verb,
            resource,
            *([f"--subresource={sub}"] if sub else []),
            "-n",
            ns,
            f"--as=system:serviceaccount:{SYSTEM_NS}:notebookos-operator",
            check=False,
        )
        return out.stdout.strip() == "yes"

    assert can("create", "pods") and can("watch", "kernelreplicas.notebookos.io")
    assert can("update", "notebookkernels.notebookos.io", sub="status")
    assert not can("update", "notebookkernels.notebookos.io")
    assert not can("delete", "notebookkernels.notebookos.io")
    assert not can("list", "secrets") and not can("update", "secrets")
    assert not can("create", "deployments.apps") and not can("delete", "nodes")


def test_a_second_operator_waits_while_the_first_acts_then_takes_over(bed: Bed, namespace: str) -> None:
    bed.resize_pool(3)
    bed.start_operator("operator-standby", priority=1)
    try:

        def standby_says(text: str) -> bool:
            return text in (bed.cluster.logs_dir / "operator-standby.log").read_text(errors="replace")

        # Mandatory peering: it starts paused and stays so while a higher priority peer is alive.
        until(lambda: standby_says("Keep-alive in 'notebookos' cluster-wide: ok"), 60, "the standby to join peering")
        assert standby_says("Pausing the watch-stream for notebookkernels")
        bed.apply_minimal(namespace, "peered")
        bed.wait_phase(namespace, "peered", "Ready")
        # Only the active operator handled the kernel (kopf prefixes object logs with ns/name).
        assert not standby_says(f"[{namespace}/peered")
        assert not standby_says("Resuming the watch-stream for notebookkernels")

        bed.stop_operator()
        until(
            lambda: standby_says("Resuming the watch-stream for notebookkernels"), 90, "the standby operator to resume"
        )
        victim = next(p for p in _live(bed.replica_pods(namespace, "peered")) if p.metadata.name.startswith("peered-1"))
        bed.core.delete_namespaced_pod(victim.metadata.name, namespace)

        def replaced() -> bool:
            names = [p.metadata.name for p in _live(bed.replica_pods(namespace, "peered")) if p.spec.node_name]
            return "peered-1-i2" in names and len(names) == 3

        until(replaced, 60, "the standby operator, now active, to replace replica 1's pod")
        assert standby_says(f"[{namespace}/peered-1")
    finally:
        bed.cluster.stop("operator-standby")
        if "operator" not in bed.cluster.procs:
            bed.start_operator()


def test_the_chart_renders_and_the_api_server_accepts_it(bed: Bed) -> None:
    helm = bed.cluster.bin_dir / "bin" / "helm"
    rendered = subprocess.run(
        # The operator's part; e2e/test_chart.py applies the whole chart.
        [
            *(str(helm), "template", "notebookos", str(CHART), "-n", SYSTEM_NS, "--set", "operator.replicas=2"),
            *("--set", "scheduler.enabled=false", "--set", "broker.enabled=false", "--set", "nodeAgent.enabled=false"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "PriorityClass",
        "Service",
        "ServiceAccount",
    ]  # the Service is the operator's /metrics; the PriorityClass is the capacity requests'
    out = bed.cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered)
    assert "priorityclass.scheduling.k8s.io/notebookos-capacity-request" in out.stdout
    assert "deployment.apps/notebookos-operator created (server dry run)" in out.stdout
    assert "service/notebookos-operator-metrics created (server dry run)" in out.stdout
    assert "networkpolicy.networking.k8s.io/notebookos-operator created (server dry run)" in out.stdout
    # The RBAC the chart installs is the file these tests run the operator with.
    rbac = (CHART / "templates" / "rbac-operator.yaml").read_text().replace("{{ .Release.Namespace }}", SYSTEM_NS)
    assert [d for d in docs if d["kind"].startswith("Cluster") and d["kind"] != "ClusterKopfPeering"] == [
        d for d in yaml.safe_load_all(rbac) if d and d["kind"].startswith("Cluster")
    ]


def test_replicas_placed_by_the_notebookos_scheduler_and_extender(bed: Bed, namespace: str) -> None:
    tag = uuid.uuid4().hex[:6]
    port = free_port()
    extender, scheduler = f"extender-op-{tag}", f"{labels.SCHEDULER_NAME}-op{tag}"
    bed.cluster.spawn(
        extender,
        [sys.executable, "-m", "notebookos.extender.extender_main", f"--port={port}", "--ratio-interval=1"],
        ready_url=f"http://127.0.0.1:{port}/readyz",
    )
    bed.cluster.start_scheduler(scheduler, [extender_entry(f"http://127.0.0.1:{port}/")], proc_name=f"sched-op-{tag}")
    # One operator at a time: this one gives replica pods the extender's scheduler.
    bed.stop_operator()
    bed.start_operator("operator-extender", scheduler_name=scheduler)
    try:
        bed.resize_pool(3)
        bed.apply_minimal(namespace, "placed")
        bed.wait_phase(namespace, "placed", "Ready", timeout=90)
        pods = _live(bed.replica_pods(namespace, "placed"))
        assert {p.spec.scheduler_name for p in pods} == {scheduler}
        assert len({p.spec.node_name for p in pods}) == 3 and {p.spec.node_name for p in pods} <= set(bed.pool)
        # The extender (used by nothing else) was asked to filter each of the three pods.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        filters = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("notebookos_extender_requests_total{") and 'verb="filter"' in line
        )
        assert filters >= 3, metrics
    finally:
        bed.cluster.stop("operator-extender")
        bed.cluster.stop(f"sched-op-{tag}")
        bed.cluster.stop(extender)
        bed.start_operator()

"""The real-node tier: three kubelets (containerd, runc, a CNI bridge each) joined to the test bed's
control plane; the chart (helm install: operator, scheduler and extender, broker, node agents) and
a NotebookKernel's router and three replicas run on them as real containers from the images
`make images` built, with the chart's security context; a jupyter_client on the host runs cells
through the router's Service (kube-proxy).
images/realcluster.py sets it up; docs/testbed.md ("Images") says what is real and what is not."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from jupyter_client import BlockingKernelClient
from kubernetes import client

from images.realcluster import RealCluster
from images.realnode import wait_until
from notebookos import labels
from notebookos.api import NotebookKernel
from notebookos.kernel.local import run, text_of
from notebookos.kube import kernel_connection

GROUP, VERSION, PLURAL = "notebookos.io", "v1alpha1", "notebookkernels"
# Start and stop count too (about 1 min 30 s idle, 2 min 40 s with other test beds on the 2 cores).
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    kubelet = Path(os.environ.get("NOTEBOOKOS_KUBELET_BIN", ""))
    assert (kubelet / "bin" / "kube-proxy").is_file(), f"{kubelet}: `make images` builds it (e2e/toolchain/kubelet.sh)"
    rc = RealCluster(tmp_path_factory.mktemp("real"), kubelet)
    try:
        yield rc.start()
    finally:
        rc.stop()


def _kernel(real: RealCluster, name: str) -> dict[str, Any]:
    assert real.cluster is not None
    api = client.CustomObjectsApi(real.cluster.api())
    return cast(dict[str, Any], api.get_namespaced_custom_object(GROUP, VERSION, real.namespace, PLURAL, name))


def test_a_kernel_on_three_real_nodes_runs_cells_through_its_router(real: RealCluster) -> None:
    c, ns = real.cluster, real.namespace
    assert c is not None
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NotebookKernel",
        "metadata": {"name": "real", "namespace": ns},
        "spec": {"resources": {"gpus": 1, "cpu": "100m", "memory": "1Gi"}},
    }
    client.CustomObjectsApi(c.api()).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    try:
        wait_until(lambda: _kernel(real, "real").get("status", {}).get("phase") == "Ready", 240, "the kernel Ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_kernel(real, 'real').get('status')}\n{real.logs()}") from exc
    pods = c.core().list_namespaced_pod(ns, label_selector=f"{labels.KERNEL_LABEL}=real").items
    replicas = [p for p in pods if p.metadata.labels.get(labels.COMPONENT_LABEL) == "replica"]
    assert len({p.spec.node_name for p in replicas}) == 3, [(p.metadata.name, p.spec.node_name) for p in pods]
    assert {p.spec.node_name for p in pods} <= {n.name for n in real.nodes}
    subnets = {n.name: ipaddress.ip_network(n.join.subnet) for n in real.nodes}
    for p in pods:
        assert p.status.phase == "Running", (p.metadata.name, p.status.phase)
        assert p.spec.containers[0].security_context.read_only_root_filesystem
        # An address from its node's own bridge: replicas reach each other across nodes (Raft).
        assert ipaddress.ip_address(p.status.pod_ip) in subnets[p.spec.node_name], (p.metadata.name, p.status.pod_ip)
    # The chart's own pods: one operator, scheduler (kube-scheduler and extender) and broker, a node
    # agent on each node.
    chart = c.core().list_namespaced_pod(ns, label_selector="app.kubernetes.io/instance=notebookos").items
    running = sorted(p.metadata.labels["app.kubernetes.io/name"] for p in chart if p.status.phase == "Running")
    assert running == [
        "notebookos-broker",
        *["notebookos-node-agent"] * 3,
        "notebookos-operator",
        "notebookos-scheduler",
    ]

    # The router's ClusterIP Service, through kube-proxy's rules on this machine.
    kernel = NotebookKernel.model_validate(_kernel(real, "real"))
    info = kernel_connection(c.api(), kernel, via="pod")
    assert kernel.status.connection is not None
    service = c.core().read_namespaced_service(kernel.status.connection.service_name, ns)
    info["ip"] = service.spec.cluster_ip
    kc = BlockingKernelClient()
    kc.load_connection_info(cast(Any, info))
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        child = (
            "print(subprocess.run(['python', '-c', 'import os; print(os.environ[\"CUDA_VISIBLE_DEVICES\"])'],"
            " capture_output=True, text=True).stdout, end='')"
        )
        code = f"import os, subprocess\nx = 1 + 1\nprint(os.getuid(), x)\n{child}"
        reply, out = run(kc, code, timeout=120)
        assert reply["content"]["status"] == "ok", reply["content"]
        lines = text_of(out).splitlines()
        assert lines[0] == "1000 2"
        # The broker (a pod, reached at its ClusterIP) granted the cell one GPU of the executing
        # replica's node, from the inventory that node's agent (a pod, fake NVML) published.
        meta = reply["metadata"]["notebookos"]
        annotations = c.core().read_node(meta["node"]).metadata.annotations
        inventory = {d["uuid"] for d in json.loads(annotations[labels.GPU_INVENTORY_ANNOTATION])}
        assert len(meta["devices"]) == 1 and set(meta["devices"]) <= inventory, (meta, inventory)
        # A process the cell started saw only that device (kernel.md, "Which GPU a cell uses").
        assert lines[1:] == meta["devices"], lines
        reply, out = run(kc, "print(x * 10)\nopen('/opt/notebookos/x', 'w')", timeout=120)
        # State carried from the first cell; the root filesystem refused the write.
        assert text_of(out).splitlines()[0] == "20"
        assert reply["content"]["ename"] == "OSError" and "Read-only file system" in reply["content"]["evalue"]
        reply, out = run(kc, "print(get_ipython().history_manager.hist_file)", timeout=60)
        assert text_of(out).strip() == "/tmp/ipython/profile_default/history.sqlite"
    finally:
        kc.stop_channels()

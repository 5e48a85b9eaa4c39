"""Every manifest builder: what the operator asks the API server to create."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from notebookos import labels
from notebookos.api import NotebookKernel
from notebookos.operator import builders, naming
from notebookos.operator.config import OperatorConfig
from tests.operator.factories import kernel_obj, replica_model, replica_obj


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_owner_reference_makes_the_kernel_the_controller() -> None:
    ref = builders.owner_reference(kernel_obj("a"))
    assert ref == {
        "apiVersion": "notebookos.io/v1alpha1",
        "kind": "NotebookKernel",
        "name": "a",
        "uid": "uid-a",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def test_hmac_key_is_256_random_bits_in_hex() -> None:
    keys = {builders.new_hmac_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(k) == 64 and int(k, 16) >= 0 for k in keys)


def test_secret_holds_the_key_under_key(kernel: NotebookKernel, owner: dict) -> None:
    s = builders.hmac_secret(kernel, owner, "abc")
    assert s["kind"] == "Secret" and s["metadata"]["name"] == "k-key" and s["metadata"]["namespace"] == "ns"
    assert s["stringData"] == {"key": "abc"}
    assert s["metadata"]["ownerReferences"] == [owner]
    assert s["metadata"]["labels"][labels.KERNEL_LABEL] == "k"


def test_router_service_exposes_the_five_channels(kernel: NotebookKernel, owner: dict, cfg: OperatorConfig) -> None:
    svc = builders.router_service(kernel, owner, cfg)
    assert svc["metadata"]["name"] == "k"
    assert svc["spec"]["selector"] == {labels.KERNEL_LABEL: "k", labels.COMPONENT_LABEL: "router"}
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == cfg.router_ports.to_wire()
    assert len(set(ports.values())) == 5


def test_headless_service_selects_replicas_ready_or_not(
    kernel: NotebookKernel, owner: dict, cfg: OperatorConfig
) -> None:
    svc = builders.headless_service(kernel, owner, cfg)
    assert svc["metadata"]["name"] == "k-replicas"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {labels.KERNEL_LABEL: "k", labels.COMPONENT_LABEL: "replica"}
    assert svc["spec"]["ports"][0]["port"] == cfg.raft_port


@pytest.mark.parametrize(("replicas", "min_available"), [(1, 1), (3, 2), (5, 3), (7, 4), (9, 5)])
def test_pdb_keeps_a_raft_majority(replicas: int, min_available: int, owner: dict) -> None:
    k = NotebookKernel.model_validate(kernel_obj(spec={"replicas": replicas}))
    pdb = builders.disruption_budget(k, owner)
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == min_available
    assert pdb["spec"]["selector"]["matchLabels"] == naming.replica_selector("k")


def test_peers_format_skips_replicas_without_an_address() -> None:
    assert builders.format_peers({3: "10.0.0.3", 1: "10.0.0.1", 2: ""}, 7000) == "1=10.0.0.1:7000,3=10.0.0.3:7000"
    assert builders.format_peers({}, 7000) == ""


@given(hs.dictionaries(hs.integers(1, 9), hs.ip_addresses(v=4).map(str), max_size=9), hs.integers(1, 65535))
def test_peers_round_trip(addresses: dict[int, str], port: int) -> None:
    parsed = builders.parse_peers(builders.format_peers(addresses, port))
    assert parsed == {rid: f"{ip}:{port}" for rid, ip in addresses.items()}


@pytest.mark.parametrize("bad", ["1", "x=1.2.3.4:5", "1=1.2.3.4", "=1.2.3.4:5"])
def test_bad_peer_entries_are_named(bad: str) -> None:
    with pytest.raises(ValueError, match="is not id=host:port"):
        builders.parse_peers(bad)


def test_peer_addresses_come_from_replica_status() -> None:
    replicas = [
        replica_model(rid=1, podIP="10.0.0.1"),
        replica_model(rid=2),
        replica_model(rid=3, podIP="10.0.0.3"),
    ]
    assert builders.peer_addresses(replicas) == {1: "10.0.0.1", 3: "10.0.0.3"}


def test_peers_configmap_lists_peers_only_when_complete(
    kernel: NotebookKernel, owner: dict, cfg: OperatorConfig
) -> None:
    partial = builders.peers_configmap(kernel, owner, {1: "10.0.0.1", 3: "10.0.0.3"}, cfg)
    assert partial["metadata"]["name"] == "k-peers"
    assert partial["data"] == {"known": "1=10.0.0.1:7000,3=10.0.0.3:7000", "replicas": "3", "raftPort": "7000"}
    full = builders.peers_configmap(kernel, owner, {1: "10.0.0.1", 2: "10.0.0.2", 3: "10.0.0.3"}, cfg)
    assert full["data"]["peers"] == full["data"]["known"] == "1=10.0.0.1:7000,2=10.0.0.2:7000,3=10.0.0.3:7000"


def test_kernel_replica_copies_resources_and_defaults_the_image(owner: dict, cfg: OperatorConfig) -> None:
    k = NotebookKernel.model_validate(kernel_obj(spec={"resources": {"gpus": 2, "cpu": 4, "memory": "8Gi"}}))
    r = builders.kernel_replica(k, owner, 2, cfg)
    assert r["kind"] == "KernelReplica" and r["metadata"]["name"] == "k-2"
    assert r["metadata"]["labels"][labels.REPLICA_ID_LABEL] == "2"
    assert r["spec"] == {
        "kernelName": "k",
        "replicaId": 2,
        "resources": {"gpus": 2, "cpu": "4", "memory": "8Gi"},
        "image": cfg.image,
    }
    k2 = NotebookKernel.model_validate(kernel_obj(spec={"image": "mine:1"}))
    assert builders.kernel_replica(k2, owner, 1, cfg)["spec"]["image"] == "mine:1"


def test_replica_env_contract(cfg: OperatorConfig) -> None:
    k = NotebookKernel.model_validate(
        kernel_obj(
            spec={
                "env": [{"name": "A", "value": "1"}, {"name": "NOTEBOOKOS_REPLICA_ID", "value": "spoof"}],
                "storage": {"url": "s3://b/p", "thresholdBytes": 10},
                "resources": {"gpus": 2},
            }
        )
    )
    env = builders.replica_env(k, 2, cfg)
    last = {e["name"]: e for e in env}  # the kubelet keeps the last of duplicate names
    assert last["NOTEBOOKOS_REPLICA_ID"]["value"] == "2"
    assert last["A"]["value"] == "1"
    assert last["NOTEBOOKOS_KERNEL"]["value"] == "k"
    assert last["NOTEBOOKOS_GPUS"]["value"] == "2"
    assert last["NOTEBOOKOS_RAFT_PORT"]["value"] == "7000"
    assert last["NOTEBOOKOS_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert last["NOTEBOOKOS_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert last["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert last["NOTEBOOKOS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "k-key", "key": "key"}
    # Not optional: the kubelet holds the container until the membership is complete.
    assert last["NOTEBOOKOS_PEERS"]["valueFrom"]["configMapKeyRef"] == {"name": "k-peers", "key": "peers"}
    # The replica binds its pod IP: $(POD_IP) is expanded by the kubelet, so POD_IP comes first.
    names = [e["name"] for e in env]
    assert last["NOTEBOOKOS_RAFT_BIND"]["value"] == "$(POD_IP):7000"
    assert last["NOTEBOOKOS_JUPYTER_IP"]["value"] == "$(POD_IP)"
    assert names.index("POD_IP") < names.index("NOTEBOOKOS_RAFT_BIND")
    assert last["NOTEBOOKOS_JUPYTER_PORT"]["value"] == str(cfg.jupyter_port)
    assert last["NOTEBOOKOS_DATA_DIR"]["value"].startswith(builders.SCRATCH_DIR + "/")
    assert last["NOTEBOOKOS_STORE_URL"]["value"] == "s3://b/p"
    assert last["NOTEBOOKOS_STORE_THRESHOLD"]["value"] == "10"
    assert "NOTEBOOKOS_BROKER_URL" not in last  # none configured: the kernel image then runs CPU-only
    with_broker = builders.replica_env(k, 2, OperatorConfig(broker_url="http://b:1"))
    broker_env = {e["name"]: e for e in with_broker}
    assert broker_env["NOTEBOOKOS_BROKER_URL"]["value"] == "http://b:1"
    # The token's folder is named once; the broker token and the status reports both come from it.
    assert broker_env["NOTEBOOKOS_SERVICE_ACCOUNT_DIR"]["value"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    # The key itself is never in a manifest.
    assert all("value" not in e or len(e["value"]) < 64 for e in env)


def test_replica_env_is_what_the_kernel_image_reads(cfg: OperatorConfig) -> None:
    # Resolve the pod's env as the kubelet would and hand it to the kernel image's own parser.
    from notebookos.kernel.config import ReplicaConfig, RouterConfig

    k = NotebookKernel.model_validate(kernel_obj(spec={"resources": {"gpus": 0}}))
    values = {"POD_IP": "10.1.0.2", "NOTEBOOKOS_NODE": "n2", "NOTEBOOKOS_NAMESPACE": "ns", "POD_NAME": "k-2-i1"}
    values |= {"NOTEBOOKOS_KEY": "s3cret", "NOTEBOOKOS_PEERS": "1=10.1.0.1:7000,2=10.1.0.2:7000,3=10.1.0.3:7000"}
    for e in builders.replica_env(k, 2, cfg):
        if "value" in e:
            values[e["name"]] = e["value"].replace("$(POD_IP)", values["POD_IP"])
    rc = ReplicaConfig.from_env(values)
    assert (rc.kernel, rc.replica_id, str(rc.raft_bind), rc.jupyter_ip) == ("k", 2, "10.1.0.2:7000", "10.1.0.2")
    assert rc.jupyter_port == cfg.jupyter_port and rc.node == "n2" and rc.key == b"s3cret"
    members = builders.router_members({1: "10.1.0.1", 2: "10.1.0.2", 3: "10.1.0.3"}, cfg)
    rvalues = {"POD_IP": "10.1.0.9", "NOTEBOOKOS_KEY": "s3cret"}
    for e in builders.router_env(k, members, cfg):
        if "value" in e:
            rvalues[e["name"]] = e["value"].replace("$(POD_IP)", rvalues["POD_IP"])
    router = RouterConfig.from_env(rvalues)
    assert router.ip == "10.1.0.9" and router.port == cfg.router_port
    assert {rid: str(a) for rid, a in router.replicas.items()} == {
        rid: f"10.1.0.{rid}:{cfg.jupyter_port}" for rid in (1, 2, 3)
    }


def test_replica_pod(cfg: OperatorConfig) -> None:
    k = NotebookKernel.model_validate(kernel_obj(spec={"resources": {"gpus": 4, "cpu": "2", "memory": "16Gi"}}))
    replica = replica_obj(rid=3)
    replica["spec"]["resources"] = {"gpus": 4, "cpu": "2", "memory": "16Gi"}
    pod = builders.replica_pod(k, replica, 2, cfg)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "k-3-i2"
    assert meta["labels"][labels.KERNEL_LABEL] == "k"
    assert meta["labels"][labels.COMPONENT_LABEL] == "replica"
    assert meta["labels"][labels.REPLICA_ID_LABEL] == "3"
    assert meta["labels"][naming.INCARNATION_LABEL] == "2"
    assert meta["labels"][labels.RUNNER_LABEL] == labels.RUNNER_VALUE
    # Idle, a standby is safe to evict (it moves); the operator marks it while it executes.
    assert meta["annotations"] == {labels.REPLICA_GPUS_ANNOTATION: "4", labels.CA_SAFE_TO_EVICT: "true"}
    assert meta["ownerReferences"][0]["kind"] == "KernelReplica" and meta["ownerReferences"][0]["uid"] == "uid-k-3"
    assert spec["schedulerName"] == labels.SCHEDULER_NAME
    assert spec["restartPolicy"] == "Never"
    assert spec["nodeSelector"] == {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE}
    assert {
        "key": labels.GPU_TAINT_KEY,
        "operator": "Equal",
        "value": labels.GPU_TAINT_VALUE,
        "effect": labels.GPU_TAINT_EFFECT,
    } in spec["tolerations"]
    term = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {labels.KERNEL_LABEL: "k", labels.COMPONENT_LABEL: "replica"}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["serviceAccountName"] == "k-kernel" and spec["automountServiceAccountToken"] is True
    (c,) = spec["containers"]
    assert c["image"] == cfg.image
    assert c["command"] == ["python", "-m", "notebookos.kernel.replica"]
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "16Gi"}, "limits": {"memory": "16Gi"}}
    assert labels.GPU_RESOURCE not in str(c["resources"])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["volumeMounts"] == [{"name": "scratch", "mountPath": "/tmp"}]
    assert spec["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert _env(c)["NOTEBOOKOS_REPLICA_ID"]["value"] == "3"
    assert "envFrom" not in c and "runtimeClassName" not in spec
    assert _env(c)["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"raft": 7000, "shell": 9000, "iopub": 9001, "stdin": 9002, "control": 9003, "hb": 9004}


def test_replica_pod_settings_follow_the_config() -> None:
    cfg = OperatorConfig(
        scheduler_name="default-scheduler",
        runner="",
        kernel_service_account="kernels",
        node_selector={labels.GPU_POOL_LABEL: "true", "pool": "a"},
        extra_tolerations=({"key": "x", "operator": "Exists"},),
        runtime_class="nvidia",
    )
    k = NotebookKernel.model_validate(kernel_obj(spec={"storage": {"url": "s3://b/p", "secretName": "creds"}}))
    pod = builders.replica_pod(k, replica_obj(), 1, cfg)
    assert pod["spec"]["schedulerName"] == "default-scheduler"
    assert labels.RUNNER_LABEL not in pod["metadata"]["labels"]
    assert pod["spec"]["serviceAccountName"] == "kernels" and pod["spec"]["automountServiceAccountToken"] is True
    assert pod["spec"]["nodeSelector"] == {labels.GPU_POOL_LABEL: "true", "pool": "a"}
    assert {"key": "x", "operator": "Exists"} in pod["spec"]["tolerations"]
    assert pod["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "creds"}}]
    assert pod["spec"]["runtimeClassName"] == "nvidia"


def test_router_pod(kernel: NotebookKernel, owner: dict, cfg: OperatorConfig) -> None:
    pod = builders.router_pod(kernel, owner, "1=a:9000,2=b:9000,3=c:9000", cfg)
    assert pod["metadata"]["name"] == "k-router"
    assert pod["metadata"]["labels"][labels.COMPONENT_LABEL] == "router"
    assert pod["metadata"]["annotations"] == {naming.ROUTER_MEMBERS_ANNOTATION: "1=a:9000,2=b:9000,3=c:9000"}
    assert pod["metadata"]["ownerReferences"] == [owner]
    spec = pod["spec"]
    assert "schedulerName" not in spec and "nodeSelector" not in spec and "affinity" not in spec
    assert spec["tolerations"][0]["key"] == labels.GPU_TAINT_KEY
    assert spec["serviceAccountName"] == "k-kernel"
    (c,) = spec["containers"]
    assert c["command"] == ["python", "-m", "notebookos.kernel.router"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == cfg.router_ports.to_wire()
    env = _env(c)
    assert env["NOTEBOOKOS_REPLICAS"]["value"] == "1=a:9000,2=b:9000,3=c:9000"
    assert env["NOTEBOOKOS_ROUTER_PORT"]["value"] == str(cfg.router_port)
    assert env["NOTEBOOKOS_ROUTER_IP"]["value"] == "$(POD_IP)"
    assert env["NOTEBOOKOS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "k-key"
    assert "NOTEBOOKOS_REPLICA_ID" not in env
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert labels.GPU_RESOURCE not in str(c["resources"])


def test_router_ports_are_consecutive_from_the_base() -> None:
    assert OperatorConfig(router_port=6000).router_ports.to_wire() == {
        "shell": 6000,
        "iopub": 6001,
        "stdin": 6002,
        "control": 6003,
        "hb": 6004,
    }


def test_kernel_identity_is_limited_to_its_own_objects(kernel: NotebookKernel, owner: dict) -> None:
    sa = builders.kernel_service_account(kernel, owner)
    role = builders.kernel_role(kernel, owner)
    binding = builders.kernel_role_binding(kernel, owner)
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "k-kernel"
    assert all(m["metadata"]["ownerReferences"] == [owner] for m in (sa, role, binding))
    rules = {(r["apiGroups"][0], r["resources"][0]): r for r in role["rules"]}
    assert rules[("", "configmaps")]["resourceNames"] == ["k-peers"] and rules[("", "configmaps")]["verbs"] == ["get"]
    assert rules[("notebookos.io", "kernelreplicas/status")]["resourceNames"] == ["k-1", "k-2", "k-3"]
    assert rules[("notebookos.io", "notebookkernels/status")]["resourceNames"] == ["k"]
    # Nothing namespace-wide but creating Events (the router's Overloaded Event).
    assert rules[("", "events")] == {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}
    named = [r for r in role["rules"] if r["resources"] != ["events"]]
    assert all(r.get("resourceNames") for r in named)
    assert not any({"create", "delete", "list", "update"} & set(r["verbs"]) for r in named)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "k-kernel"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "k-kernel", "namespace": "ns"}]


def test_builders_refuse_a_kernel_without_a_name(owner: dict, cfg: OperatorConfig) -> None:
    k = NotebookKernel.model_validate({"spec": {}})
    with pytest.raises(ValueError, match=r"no metadata\.name"):
        builders.router_service(k, owner, cfg)
    with pytest.raises(ValueError, match=r"no metadata\.name"):
        builders.router_pod(k, owner, "", cfg)


def test_replica_annotations_carry_gpu_memory_in_bytes() -> None:
    from notebookos.api import KernelResources
    from notebookos.operator.builders import replica_annotations

    assert replica_annotations(KernelResources(gpus=2)) == {"notebookos.io/gpus": "2"}
    assert replica_annotations(KernelResources(gpus=1, gpu_memory="40Gi")) == {
        "notebookos.io/gpus": "1",
        "notebookos.io/gpu-memory": str(40 * 2**30),
    }


def test_kernel_pods_use_the_token_their_environment_names(
    cfg: OperatorConfig, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pod's env names the service-account folder once; a runtime that mounts it elsewhere (the
    # test bed's runner) rewrites that value, and both the broker token and the status reports follow.
    from notebookos.kernel.config import BrokerConfig
    from notebookos.kernel.report import KubeReporter, LogReporter, reporter_from_env

    sa = tmp_path / "sa"
    sa.mkdir()
    for name, text in {"token": "t1", "namespace": "ns", "ca.crt": ""}.items():
        (sa / name).write_text(text)
    k = NotebookKernel.model_validate(kernel_obj(spec={"resources": {"gpus": 1}}))
    env = {e["name"]: e["value"] for e in builders.replica_env(k, 1, OperatorConfig(broker_url="http://b:1"))
           if "value" in e}  # fmt: skip
    env = {n: v.replace(builders.SERVICE_ACCOUNT_DIR, str(sa)) for n, v in env.items()} | {"NOTEBOOKOS_NAMESPACE": "ns"}
    assert BrokerConfig.from_env(env).token_file == str(sa / "token")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    rep = reporter_from_env("k", env)
    assert isinstance(rep, KubeReporter)
    first = rep.api
    assert first.config.user["token"] == "t1" and first.url == "https://10.0.0.1:6443"
    assert rep.api is first  # same token, same client
    (sa / "token").write_text("t2")  # the kubelet rotated it
    assert rep.api.config.user["token"] == "t2"
    # Without the folder the reporter says why and logs only; it never fails the pod.
    assert isinstance(
        reporter_from_env("k", env | {"NOTEBOOKOS_SERVICE_ACCOUNT_DIR": str(tmp_path / "none")}), LogReporter
    )


def test_an_executing_replica_is_not_disrupted_an_idle_one_may_be() -> None:
    assert builders.disruption_annotations(True) == {
        labels.KARPENTER_DO_NOT_DISRUPT: "true",
        labels.CA_SAFE_TO_EVICT: "false",
    }
    idle = builders.disruption_annotations(False)
    assert idle == {labels.KARPENTER_DO_NOT_DISRUPT: None, labels.CA_SAFE_TO_EVICT: "true"}, "None removes the key"

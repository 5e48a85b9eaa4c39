"""Pure manifest builders: a NotebookKernel (and its replicas) in, plain Kubernetes manifests out.

No I/O here. The handlers create what these return; the unit tests read what these return.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes.utils import parse_quantity

from notebookos import labels
from notebookos.api import API_VERSION, GROUP, KernelReplica, KernelReplicaSpec, KernelResources, NotebookKernel

from . import naming
from .config import OperatorConfig

Manifest = dict[str, Any]

REPLICA_MODULE = "notebookos.kernel.replica"
ROUTER_MODULE = "notebookos.kernel.router"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SCRATCH_DIR = "/tmp"  # the only writable path: the root filesystem is read-only
RUN_AS = 1000


def new_hmac_key() -> str:
    """A fresh Jupyter message-signing key (256 bits, hex), made once per kernel."""
    return secrets.token_hex(32)


def owner_reference(owner: Mapping[str, Any]) -> Manifest:
    """ownerReference to a notebookos.io object, so the garbage collector removes the child with it."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(
    name: str, kernel: NotebookKernel, owner: Manifest, extra_labels: Mapping[str, str] | None = None
) -> Manifest:
    kname = _kname(kernel)
    return {
        "name": name,
        "namespace": kernel.metadata.namespace,
        "labels": {**naming.kernel_labels(kname), **(extra_labels or {})},
        "ownerReferences": [owner],
    }


def _kname(kernel: NotebookKernel) -> str:
    if not kernel.metadata.name:
        raise ValueError("the NotebookKernel has no metadata.name")
    return kernel.metadata.name


# ------------------------------------------------------------------------------------------------
# Kernel-level objects
# ------------------------------------------------------------------------------------------------


def hmac_secret(kernel: NotebookKernel, owner: Manifest, key: str) -> Manifest:
    """The Secret holding the kernel's Jupyter HMAC key (named in status, never copied there)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(naming.secret_name(_kname(kernel)), kernel, owner),
        "type": "Opaque",
        "stringData": {naming.HMAC_SECRET_KEY: key},
    }


def router_service(kernel: NotebookKernel, owner: Manifest, cfg: OperatorConfig) -> Manifest:
    """The client-facing Service: the router's five Jupyter channels."""
    kname = _kname(kernel)
    ports = cfg.router_ports.to_wire()
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(naming.service_name(kname), kernel, owner),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.router_selector(kname),
            "ports": [
                {"name": channel, "port": port, "targetPort": port, "protocol": "TCP"}
                for channel, port in ports.items()
            ],
        },
    }


def headless_service(kernel: NotebookKernel, owner: Manifest, cfg: OperatorConfig) -> Manifest:
    """Stable addressing of the replicas where cluster DNS exists (Raft port; not-ready too, since a
    replica must reach its peers before it is ready)."""
    kname = _kname(kernel)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(naming.headless_service_name(kname), kernel, owner),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": naming.replica_selector(kname),
            "ports": [{"name": "raft", "port": cfg.raft_port, "targetPort": cfg.raft_port, "protocol": "TCP"}],
        },
    }


def majority(replicas: int) -> int:
    return replicas // 2 + 1


def disruption_budget(kernel: NotebookKernel, owner: Manifest) -> Manifest:
    """Voluntary evictions (drains, scale-in) never take the kernel below a Raft majority."""
    kname = _kname(kernel)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(naming.pdb_name(kname), kernel, owner),
        "spec": {
            "minAvailable": majority(kernel.spec.replicas),
            "selector": {"matchLabels": naming.replica_selector(kname)},
        },
    }


def format_peers(addresses: Mapping[int, str], port: int) -> str:
    """ "1=10.0.0.4:7000,2=10.0.0.9:7000": Raft peers by replica id, only those with an address."""
    return ",".join(f"{rid}={addresses[rid]}:{port}" for rid in sorted(addresses) if addresses[rid])


def parse_peers(text: str) -> dict[int, str]:
    """Inverse of format_peers: {replica id: "host:port"}."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        rid, sep, addr = part.partition("=")
        if not sep or not rid.isdigit() or ":" not in addr:
            raise ValueError(f"peer entry {part!r} is not id=host:port")
        out[int(rid)] = addr
    return out


def peer_addresses(replicas: Iterable[KernelReplica]) -> dict[int, str]:
    """Replica id -> pod IP, from what the replicas' status says (no cluster DNS needed)."""
    return {r.spec.replica_id: r.status.pod_ip for r in replicas if r.status.pod_ip}


def peers_configmap(
    kernel: NotebookKernel, owner: Manifest, addresses: Mapping[int, str], cfg: OperatorConfig
) -> Manifest:
    """The kernel's Raft membership, rewritten when a replica's pod moves.

    `peers` is there only while every replica's current pod has an address: a replica container
    refers to it without `optional`, so the kubelet starts the container only once the membership
    is complete (and, after a replacement, once the new pod's address is in it). `known` always
    lists the addresses known so far.
    """
    known = format_peers(addresses, cfg.raft_port)
    complete = set(addresses) >= set(range(1, kernel.spec.replicas + 1))
    data = {"known": known, "replicas": str(kernel.spec.replicas), "raftPort": str(cfg.raft_port)}
    if complete:
        data[naming.PEERS_KEY] = known
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(naming.peers_configmap_name(_kname(kernel)), kernel, owner),
        "data": data,
    }


def kernel_replica(kernel: NotebookKernel, owner: Manifest, replica_id: int, cfg: OperatorConfig) -> Manifest:
    """One KernelReplica resource (a Raft member), owned by the kernel."""
    kname = _kname(kernel)
    spec = KernelReplicaSpec(
        kernel_name=kname,
        replica_id=replica_id,
        resources=kernel.spec.resources,
        image=kernel.spec.image or cfg.image,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "KernelReplica",
        "metadata": _meta(
            naming.replica_name(kname, replica_id),
            kernel,
            owner,
            {labels.REPLICA_ID_LABEL: str(replica_id)},
        ),
        "spec": spec.to_wire(),
    }


# ------------------------------------------------------------------------------------------------
# Pods
# ------------------------------------------------------------------------------------------------


def _pod_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> Manifest:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _gpu_pool_tolerations(cfg: OperatorConfig) -> list[Manifest]:
    return [
        {
            "key": labels.GPU_TAINT_KEY,
            "operator": "Equal",
            "value": labels.GPU_TAINT_VALUE,
            "effect": labels.GPU_TAINT_EFFECT,
        },
        *(dict(t) for t in cfg.extra_tolerations),
    ]


def _pod_labels(kname: str, component: str, cfg: OperatorConfig) -> dict[str, str]:
    out = {**naming.kernel_labels(kname), labels.COMPONENT_LABEL: component}
    if cfg.runner:
        out[labels.RUNNER_LABEL] = cfg.runner
    return out


def _service_account(kernel: NotebookKernel, cfg: OperatorConfig) -> Manifest:
    # Kernel pods need a token: the broker authenticates them by it, and they read their peers
    # ConfigMap and report into their KernelReplica's status. The account is the kernel's own
    # (rights on its own objects only) unless the chart names a shared one.
    name = cfg.kernel_service_account or naming.kernel_service_account_name(_kname(kernel))
    return {"serviceAccountName": name, "automountServiceAccountToken": True}


def _env_value(name: str, value: str) -> Manifest:
    return {"name": name, "value": value}


def _env_field(name: str, path: str) -> Manifest:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _common_env(kernel: NotebookKernel, cfg: OperatorConfig) -> list[Manifest]:
    kname = _kname(kernel)
    env = [
        _env_value("NOTEBOOKOS_KERNEL", kname),
        _env_field("NOTEBOOKOS_NAMESPACE", "metadata.namespace"),
        _env_field("POD_NAME", "metadata.name"),
        # POD_IP comes before the entries that expand $(POD_IP).
        _env_field("POD_IP", "status.podIP"),
        _env_field("NOTEBOOKOS_NODE", "spec.nodeName"),
        {
            "name": "NOTEBOOKOS_KEY",
            "valueFrom": {"secretKeyRef": {"name": naming.secret_name(kname), "key": naming.HMAC_SECRET_KEY}},
        },
        _env_value("NOTEBOOKOS_GPUS", str(kernel.spec.resources.gpus)),
        _env_value("HOME", SCRATCH_DIR),
        # Where the pod's token is; status reports and the broker use it. The kubelet mounts it here;
        # a runtime that puts it elsewhere (the test bed's process runner) rewrites this one value.
        _env_value("NOTEBOOKOS_SERVICE_ACCOUNT_DIR", SERVICE_ACCOUNT_DIR),
    ]
    if cfg.broker_url:
        env.append(_env_value("NOTEBOOKOS_BROKER_URL", cfg.broker_url))
    return env


def replica_env(kernel: NotebookKernel, replica_id: int, cfg: OperatorConfig) -> list[Manifest]:
    """The replica's environment: the single place of the env contract with notebookos.kernel
    (kernel_image/config.py, ReplicaConfig).

    The user's variables come first, so that ours (later entries win) cannot be overridden.
    NOTEBOOKOS_PEERS is the complete membership when the container starts (every member's pod IP,
    this one's included). Later moves reach running replicas through Raft (set_peer), not the env.
    """
    kname = _kname(kernel)
    env: list[Manifest] = [_env_value(e.name, e.value) for e in kernel.spec.env]
    env += _common_env(kernel, cfg)
    env += [
        _env_value("NOTEBOOKOS_REPLICA_ID", str(replica_id)),
        # Not optional: the container starts once the membership is complete (see peers_configmap).
        {
            "name": "NOTEBOOKOS_PEERS",
            "valueFrom": {"configMapKeyRef": {"name": naming.peers_configmap_name(kname), "key": naming.PEERS_KEY}},
        },
        _env_value("NOTEBOOKOS_RAFT_PORT", str(cfg.raft_port)),
        _env_value("NOTEBOOKOS_RAFT_BIND", f"$(POD_IP):{cfg.raft_port}"),
        _env_value("NOTEBOOKOS_JUPYTER_IP", "$(POD_IP)"),
        _env_value("NOTEBOOKOS_JUPYTER_PORT", str(cfg.jupyter_port)),
        _env_value("NOTEBOOKOS_DATA_DIR", f"{SCRATCH_DIR}/notebookos"),
        # Every device of the node is visible; the broker's grant says which one a cell uses.
        _env_value("NVIDIA_VISIBLE_DEVICES", "all"),
        _env_value("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"),
    ]
    storage = kernel.spec.storage
    if storage is not None:
        env += [
            _env_value("NOTEBOOKOS_STORE_URL", storage.url),
            _env_value("NOTEBOOKOS_STORE_THRESHOLD", str(storage.threshold_bytes)),
        ]
    elif cfg.checkpoint_store:
        env.append(_env_value("NOTEBOOKOS_STORE_URL", cfg.checkpoint_store))
    if kernel.status.checkpoint is not None:
        # A new replica starts from the last hibernation's state; committed entries since the
        # wake reach it from its peers, applied on top (raftlog.KernelState.restore).
        env.append(_env_value("NOTEBOOKOS_RESTORE_URL", kernel.status.checkpoint.url))
    return env


def shared_store(kernel: NotebookKernel, cfg: OperatorConfig) -> str | None:
    """The store all of a kernel's replicas share (its large values and checkpoints), if any."""
    return kernel.spec.storage.url if kernel.spec.storage is not None else cfg.checkpoint_store or None


def moved_members(made_for: str | None, members: str, raft_port: int) -> dict[int, tuple[str, str | None]] | None:
    """What a live router must be told to serve `members` instead of those it was made or last
    re-pointed for ({replica: (Jupyter address, Raft address or None)}); None if it cannot be
    re-pointed (no record, or other members: it is made again). An empty record: the kernel
    hibernated (hibernate.py cleared it) and every replica is new; they started with the complete
    membership, so no old member needs their Raft addresses."""
    if made_for is None:
        return None
    old, new = parse_peers(made_for), parse_peers(members)
    fresh = made_for == ""
    if set(old) != set(new) and not fresh:
        return None
    changed = {rid for rid, addr in new.items() if fresh or old.get(rid) != addr}
    return {rid: (new[rid], None if fresh else f"{new[rid].rsplit(':', 1)[0]}:{raft_port}") for rid in changed}


def router_members(addresses: Mapping[int, str], cfg: OperatorConfig) -> str:
    """NOTEBOOKOS_REPLICAS of the router: each replica's Jupyter base address, by replica id."""
    return format_peers(addresses, cfg.jupyter_port)


def router_env(kernel: NotebookKernel, members: str, cfg: OperatorConfig) -> list[Manifest]:
    """The router's environment (kernel_image/config.py, RouterConfig)."""
    return [
        *_common_env(kernel, cfg),
        _env_value("NOTEBOOKOS_REPLICAS", members),
        _env_value("NOTEBOOKOS_ROUTER_IP", "$(POD_IP)"),
        _env_value("NOTEBOOKOS_ROUTER_PORT", str(cfg.router_port)),
        _env_value(
            "NOTEBOOKOS_GPU_WAIT_SECONDS",
            str(kernel.spec.gpu_wait_seconds if kernel.spec.gpu_wait_seconds is not None else cfg.gpu_wait_seconds),
        ),
        _env_value("NOTEBOOKOS_WAKE_TIMEOUT_SECONDS", str(cfg.wake_timeout_seconds)),
    ]


def _scratch_volume() -> tuple[list[Manifest], list[Manifest]]:
    return [{"name": "scratch", "emptyDir": {}}], [{"name": "scratch", "mountPath": SCRATCH_DIR}]


def replica_annotations(res: KernelResources) -> dict[str, str]:
    """What the extender reads to place a replica: GPUs per cell and, if set, GPU memory in bytes."""
    out = {labels.REPLICA_GPUS_ANNOTATION: str(res.gpus)}
    if res.gpu_memory is not None:
        out[labels.REPLICA_GPU_MEMORY_ANNOTATION] = str(int(parse_quantity(res.gpu_memory)))
    return out


def disruption_annotations(executing: bool) -> dict[str, str | None]:
    """A replica pod's word to cluster-autoscaler and Karpenter: an executing replica must not be
    disrupted until its cell ends; an idle standby is safe to evict (it moves, see migration.py).
    None removes a key (a merge patch)."""
    if executing:
        return {labels.KARPENTER_DO_NOT_DISRUPT: "true", labels.CA_SAFE_TO_EVICT: "false"}
    return {labels.KARPENTER_DO_NOT_DISRUPT: None, labels.CA_SAFE_TO_EVICT: "true"}


def replica_pod(
    kernel: NotebookKernel, replica: Mapping[str, Any], incarnation: int, cfg: OperatorConfig, node: str | None = None
) -> Manifest:
    """The pod of one replica incarnation, owned by its KernelReplica.

    No nvidia.com/gpu request: GPUs are bound per cell by the broker, and the extender reads the
    per-cell need from the annotation. Required anti-affinity keeps one replica per node. `node`:
    the pod of a migration, held to the node the operator chose (through the scheduler, so the
    extender still checks and counts it).
    """
    kname = _kname(kernel)
    model = KernelReplica.model_validate(replica)
    rid = model.spec.replica_id
    res = model.spec.resources
    volumes, mounts = _scratch_volume()
    pod_labels = {
        **_pod_labels(kname, naming.COMPONENT_REPLICA, cfg),
        labels.REPLICA_ID_LABEL: str(rid),
        naming.INCARNATION_LABEL: str(incarnation),
    }
    container: Manifest = {
        "name": "replica",
        "image": model.spec.image or kernel.spec.image or cfg.image,
        "command": [cfg.python, "-m", REPLICA_MODULE],
        "env": replica_env(kernel, rid, cfg),
        "ports": [
            {"name": "raft", "containerPort": cfg.raft_port, "protocol": "TCP"},
            *(
                {"name": ch, "containerPort": p, "protocol": "TCP"}
                for ch, p in labels.channel_ports(cfg.jupyter_port).items()
            ),
        ],
        "resources": {
            "requests": {"cpu": res.cpu, "memory": res.memory},
            "limits": {"memory": res.memory},
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    if kernel.spec.storage is not None and kernel.spec.storage.secret_name:
        container["envFrom"] = [{"secretRef": {"name": kernel.spec.storage.secret_name}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": naming.replica_pod_name(kname, rid, incarnation),
            "namespace": kernel.metadata.namespace,
            "labels": pod_labels,
            "annotations": {
                **replica_annotations(res),
                labels.CA_SAFE_TO_EVICT: "true",
                **({labels.MIGRATE_TO_ANNOTATION: node} if node else {}),
            },
            "ownerReferences": [owner_reference(replica)],
        },
        "spec": {
            "schedulerName": cfg.scheduler_name,
            "restartPolicy": "Never",  # a failed replica is replaced by the operator, maybe elsewhere
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 30,
            "nodeSelector": dict(cfg.node_selector),
            "tolerations": _gpu_pool_tolerations(cfg),
            "affinity": {
                **({"nodeAffinity": _on_node(node)} if node else {}),
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "labelSelector": {"matchLabels": naming.replica_selector(kname)},
                            "topologyKey": "kubernetes.io/hostname",
                        }
                    ]
                },
            },
            "securityContext": _pod_security(),
            **_service_account(kernel, cfg),
            **({"runtimeClassName": cfg.runtime_class} if cfg.runtime_class else {}),
            "containers": [container],
            "volumes": volumes,
        },
    }


def _on_node(node: str) -> Manifest:
    # By name (as the DaemonSet controller pins its pods), not by a hostname label a node may lack.
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}


def router_pod(kernel: NotebookKernel, owner: Manifest, members: str, cfg: OperatorConfig) -> Manifest:
    """The kernel's router: speaks the Jupyter wire protocol to clients and fans out to replicas.

    It needs no GPU; it tolerates the GPU pool's taint so that a GPU-only cluster can run it.
    `members` (every replica's Jupyter address) is fixed in its environment; the annotation lets
    the operator see when the replicas have moved and the router must be made again.
    """
    kname = _kname(kernel)
    volumes, mounts = _scratch_volume()
    meta = _meta(naming.router_pod_name(kname), kernel, owner)
    meta["labels"] = _pod_labels(kname, naming.COMPONENT_ROUTER, cfg)
    meta["annotations"] = {naming.ROUTER_MEMBERS_ANNOTATION: members}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "restartPolicy": "Always",
            "enableServiceLinks": False,
            "tolerations": _gpu_pool_tolerations(cfg),
            "securityContext": _pod_security(),
            **_service_account(kernel, cfg),
            "containers": [
                {
                    "name": "router",
                    "image": kernel.spec.image or cfg.image,
                    "command": [cfg.python, "-m", ROUTER_MODULE],
                    "env": router_env(kernel, members, cfg),
                    "ports": [
                        {"name": ch, "containerPort": p, "protocol": "TCP"}
                        for ch, p in labels.channel_ports(cfg.router_port).items()
                    ],
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
                    "securityContext": _container_security(),
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


# ------------------------------------------------------------------------------------------------
# The kernel's own identity: its pods may read and report on this kernel's objects, nothing else
# ------------------------------------------------------------------------------------------------


def kernel_service_account(kernel: NotebookKernel, owner: Manifest) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(naming.kernel_service_account_name(_kname(kernel)), kernel, owner),
    }


def kernel_role(kernel: NotebookKernel, owner: Manifest) -> Manifest:
    """Rights of the kernel's pods, each rule limited to this kernel's objects by name."""
    kname = _kname(kernel)
    replicas = [naming.replica_name(kname, rid) for rid in range(1, kernel.spec.replicas + 1)]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(naming.kernel_service_account_name(kname), kernel, owner),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [naming.peers_configmap_name(kname)],
                "verbs": ["get"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [KernelReplica.crd_plural],
                "resourceNames": replicas,
                "verbs": ["get"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [f"{KernelReplica.crd_plural}/status"],
                "resourceNames": replicas,
                "verbs": ["get", "patch"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [NotebookKernel.crd_plural],
                "resourceNames": [kname],
                "verbs": ["get"],
            },
            {
                "apiGroups": [GROUP],
                "resources": [f"{NotebookKernel.crd_plural}/status"],
                "resourceNames": [kname],
                "verbs": ["get", "patch"],
            },
            # The router's Overloaded Event on its kernel. A create cannot be limited by name; an
            # Event says something, it changes nothing.
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        ],
    }


def kernel_role_binding(kernel: NotebookKernel, owner: Manifest) -> Manifest:
    name = naming.kernel_service_account_name(_kname(kernel))
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(name, kernel, owner),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": kernel.metadata.namespace}],
    }

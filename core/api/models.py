"""Typed models of the notebookos.io/v1alpha1 API: the single source of truth.

The CRD YAML in crds/ is generated from these classes (``notebookos crds``), and a test fails when
the committed YAML drifts from them. Everything that reads or writes these resources goes through
these models, so a field exists in exactly one place.

Kubernetes-only schema facts (CEL rules, int-or-string, list semantics) ride along in
``json_schema_extra`` under keys that start with ``x-kubernetes-``; the CRD generator copies them.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

GROUP = "notebookos.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "notebookos"

# The quantity grammar of k8s.io/apimachinery/pkg/api/resource, as used by core/v1 schemas.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MIN_IDLE_TIMEOUT, MAX_IDLE_TIMEOUT = "10s", "720h"
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """A Go duration (DURATION_PATTERN, e.g. 1h30m) in seconds."""
    return sum(float(n) * _DURATION_UNITS[u] for n, _, u in re.findall(r"([0-9]+(\.[0-9]+)?)(ns|us|ms|s|m|h)", text))


ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
ODD_REPLICAS = "replicas must be odd so that a Raft majority exists"
# The longest suffix added to a kernel name is "-replicas" (its headless Service, a DNS-1035 label of
# at most 63 characters); kernel names are also label values (at most 63).
MAX_KERNEL_NAME = 63 - len("-replicas")
DNS1035_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes' CEL quantity library (isQuantity, quantity, isGreaterThan); `notebookos validate` implements
# the same functions (core/api/validate.py).
_QUANTITY = "string(self)"


_SUFFIX = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


def parse_quantity(text: str) -> Decimal | None:
    """A Kubernetes quantity's value (k8s.io/apimachinery resource.Quantity), or None if malformed."""
    if not _QUANTITY_RE.match(text):
        return None
    number = re.match(r"^[+-]?(\d+(\.\d*)?|\.\d+)", text)
    assert number is not None
    mantissa, suffix = Decimal(number.group(0)), text[number.end() :]
    if suffix in _BINARY:
        return mantissa * (2 ** _BINARY[suffix])
    if suffix[:1] in ("e", "E"):
        return mantissa * Decimal(10) ** Decimal(suffix[1:])
    return mantissa * Decimal(10) ** _SUFFIX[suffix]


def _positive(value: Any, info: ValidationInfo) -> Any:
    # The CRD's CEL rule says the same to the API server; this says it to Python callers first.
    if value is not None:
        q = parse_quantity(str(value))
        if q is not None and q <= 0:
            raise ValueError(f"{to_camel(info.field_name or '')} must be greater than 0")
    return value


def positive_quantity(what: str, example: str) -> dict[str, Any]:
    """A CEL rule refusing zero and negative quantities, with a message naming the field."""
    rule = f"!isQuantity({_QUANTITY}) || quantity({_QUANTITY}).isGreaterThan(quantity('0'))"
    return {"x-kubernetes-validations": [{"rule": rule, "message": f"{what} must be greater than 0, e.g. {example}"}]}


def immutable(message: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": message}]}


def _quantity_to_str(value: Any) -> Any:
    # Users write `cpu: 2` as often as `cpu: "2"`; both are the same quantity.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    Field(pattern=QUANTITY_PATTERN, json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class ApiModel(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    # Status is written by controllers of different versions: tolerate fields we do not know.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", use_enum_values=True)


# --------------------------------------------------------------------------------------------------
# Shared parts
# --------------------------------------------------------------------------------------------------


class KernelResources(ApiModel):
    """What one execution of a cell needs. GPUs are bound to the executing replica only while a
    cell runs; cpu and memory are requested by every replica pod for its whole life."""

    gpus: int = Field(
        1,
        ge=0,
        le=8,
        description="GPUs bound to the executing replica while a cell runs (0 for a CPU-only kernel).",
    )
    cpu: Quantity = Field(
        "1",
        description="CPU requested by each replica pod, as a Kubernetes quantity.",
        json_schema_extra=positive_quantity("cpu", "500m or 2"),
    )
    memory: Quantity = Field(
        "4Gi",
        description="Memory requested by each replica pod, as a Kubernetes quantity.",
        json_schema_extra=positive_quantity("memory", "4Gi"),
    )
    gpu_memory: Quantity | None = Field(
        None,
        description="Optional GPU memory per GPU the kernel needs; nodes whose GPUs have less are not used.",
        json_schema_extra=positive_quantity("gpuMemory", "40Gi"),
    )

    _positive_quantities = field_validator("cpu", "memory", "gpu_memory")(_positive)


class EnvVar(ApiModel):
    """An environment variable set in every replica of the kernel."""

    name: str = Field(..., min_length=1, max_length=253, pattern=ENV_NAME_PATTERN, description="Variable name.")
    value: str = Field("", max_length=32768, description="Variable value.")


class Storage(ApiModel):
    """Where large values of the kernel's state go (tensors, arrays, models): an fsspec URL."""

    url: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        pattern=r"^[a-z][a-z0-9+.-]*://.+$",
        description="fsspec URL of the object store prefix, e.g. s3://bucket/notebookos or file:///mnt/shared.",
    )
    secret_name: str | None = Field(
        None,
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
        description="Secret whose keys are passed to the replicas as environment (object-store credentials).",
    )
    threshold_bytes: int = Field(
        1 << 20,
        ge=0,
        description="Values whose pickled size exceeds this go to the object store; smaller ones ride in the Raft log.",
    )


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """A metav1.Condition: one aspect of the resource's state with the reason for it."""

    type: str = Field(..., max_length=316, description="Condition type, e.g. Ready or Scheduled.")
    status: ConditionStatus = Field(..., description="True, False or Unknown.")
    reason: str = Field("", max_length=1024, description="One CamelCase word naming why.")
    message: str = Field("", max_length=32768, description="A sentence for humans.")
    last_transition_time: datetime | None = Field(None, description="When the status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation the condition was computed from."
    )

    k8s_list_map_keys: ClassVar[list[str]] = ["type"]


class ConditionType(StrEnum):
    SCHEDULED = "Scheduled"
    READY = "Ready"
    DEGRADED = "Degraded"
    GPU_UNAVAILABLE = "GPUUnavailable"
    MIGRATING = "Migrating"  # a replica is moving to a node with GPUs free (the operator's)
    CAPACITY_REQUESTED = "CapacityRequested"  # no node can take the move: a GPU node was asked for
    NODE_DRAINING = "NodeDraining"  # a replica's: its node is cordoned or tainted for removal
    HIBERNATED = "Hibernated"  # the state is checkpointed and the replica pods are gone (hibernation.py)


# --------------------------------------------------------------------------------------------------
# NotebookKernel
# --------------------------------------------------------------------------------------------------


class KernelPhase(StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"
    TERMINATING = "Terminating"
    HIBERNATING = "Hibernating"  # checkpointed; the replicas are being removed
    HIBERNATED = "Hibernated"  # no replica pods; the router holds the connection and wakes it
    WAKING = "Waking"  # replicas are being made again from the checkpoint


class NotebookKernelSpec(ApiModel):
    """The desired kernel: how many replicas, what each cell needs, which image runs it."""

    replicas: int = Field(
        3,
        ge=1,
        le=9,
        description="Raft replicas of the kernel, each on a different GPU node. Odd, so a majority exists.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self % 2 == 1", "message": ODD_REPLICAS},
                {"rule": "self == oldSelf", "message": "replicas is immutable"},
            ]
        },
    )
    resources: KernelResources = Field(
        default_factory=KernelResources,
        description="GPUs per cell and the cpu and memory of each replica pod.",
        json_schema_extra=immutable("resources is immutable; create a new kernel to change them"),
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Kernel image; the operator's default image when unset.",
    )
    idle_timeout: str | None = Field(
        None,
        pattern=DURATION_PATTERN,
        description=(
            f"Hibernate the kernel after this long without a cell (a Go duration from {MIN_IDLE_TIMEOUT} to "
            f"{MAX_IDLE_TIMEOUT}, e.g. 1h30m): its state is checkpointed to the object store and its replica pods "
            "are removed; the next request wakes it. Never when unset."
        ),
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # [.]: a backslash would need escaping again inside the CEL string
                    "rule": f"!self.matches('{DURATION_PATTERN.replace(chr(92) + '.', '[.]')}') || "
                    f"(duration(self) >= duration('{MIN_IDLE_TIMEOUT}')"
                    f" && duration(self) <= duration('{MAX_IDLE_TIMEOUT}'))",
                    "message": f"idleTimeout must be from {MIN_IDLE_TIMEOUT} to {MAX_IDLE_TIMEOUT}",
                }
            ]
        },
    )
    suspend: bool = Field(
        False,
        description="true hibernates the kernel now (its state is kept in the object store), false wakes it.",
    )
    gpu_wait_seconds: int | None = Field(
        None,
        ge=0,
        le=86400,
        description=(
            "How long a cell waits for GPUs when no replica's node has them free (while a replica moves or "
            "a GPU node is added) before it fails with NotebookOSOverloaded. The operator's default (300) when unset."
        ),
    )
    storage: Storage | None = Field(None, description="Object store for large state values.")
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=128,
        description="Environment variables set in every replica.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    user: str | None = Field(
        None,
        max_length=253,
        description="The identity the kernel runs for (e.g. the JupyterHub user); used in labels and events.",
        json_schema_extra=immutable("user is immutable"),
    )

    @field_validator("idle_timeout")
    @classmethod
    def _idle_range(cls, value: str | None) -> str | None:
        # The CRD's CEL rule says the same to the API server.
        if value is not None and re.match(DURATION_PATTERN, value):
            seconds = duration_seconds(value)
            if not duration_seconds(MIN_IDLE_TIMEOUT) <= seconds <= duration_seconds(MAX_IDLE_TIMEOUT):
                raise ValueError(f"idleTimeout must be from {MIN_IDLE_TIMEOUT} to {MAX_IDLE_TIMEOUT}")
        return value

    @field_validator("replicas")
    @classmethod
    def _odd(cls, value: int) -> int:
        # The CRD's CEL rule says the same to the API server; this says it to Python callers first.
        if value % 2 != 1:
            raise ValueError(ODD_REPLICAS)
        return value


class ConnectionPorts(StatusModel):
    """The router's Jupyter ports on the kernel's Service."""

    shell: int = Field(..., ge=1, le=65535, description="Shell channel port.")
    iopub: int = Field(..., ge=1, le=65535, description="IOPub channel port.")
    stdin: int = Field(..., ge=1, le=65535, description="Stdin channel port.")
    control: int = Field(..., ge=1, le=65535, description="Control channel port.")
    hb: int = Field(..., ge=1, le=65535, description="Heartbeat channel port.")


class ConnectionInfo(StatusModel):
    """How a Jupyter client reaches the kernel. The HMAC key is in the named Secret, never here."""

    service_name: str = Field(..., description="Service in front of the kernel's router.")
    host: str | None = Field(None, description="Address of the Service (its cluster IP or DNS name).")
    transport: Literal["tcp"] = Field("tcp", description="ZeroMQ transport.")
    signature_scheme: Literal["hmac-sha256"] = Field("hmac-sha256", description="Message signing scheme.")
    secret_name: str = Field(..., description="Secret holding the HMAC key under the key `key`.")
    ports: ConnectionPorts = Field(..., description="The five channel ports.")


class Checkpoint(StatusModel):
    """The kernel's state as saved when it hibernated: its replicated log's state (variables,
    cells, history) in one object, and large values already in the object store."""

    id: str = Field(..., min_length=1, description="Names this checkpoint (a wake request names the one it wakes).")
    url: str = Field(..., min_length=1, description="Where the checkpoint object is.")
    bytes: int = Field(0, ge=0, description="State restored on wake: the checkpoint and the large values it names.")
    variables: int = Field(0, ge=0, description="User variables saved.")
    cells: int = Field(0, ge=0, description="Cells executed before hibernation.")
    taken_at: datetime | None = Field(None, description="When it was taken.")


class NotebookKernelStatus(StatusModel):
    """What the cluster says about the kernel, kept by the operator."""

    phase: KernelPhase = Field(
        KernelPhase.PENDING,
        description="Pending, Starting, Ready, Degraded, Failed, Terminating, Hibernating, Hibernated or Waking.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Scheduled, Ready, Degraded and GPUUnavailable, each with a reason and message.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int = Field(0, ge=0, description="Replicas that exist.")
    ready_replicas: int = Field(0, ge=0, description="Replicas whose pods are ready.")
    ready: str | None = Field(None, description="Ready replicas out of those wanted, as kubectl shows it: 3/3.")
    executor: str | None = Field(None, description="Replica that ran the last cell.")
    connection: ConnectionInfo | None = Field(None, description="How clients connect; set once the router exists.")
    cells: int = Field(0, ge=0, description="Cells executed.")
    migrations: int = Field(0, ge=0, description="Replicas moved to another node because theirs had no GPU.")
    replacements: int = Field(0, ge=0, description="Replicas recreated after their pod or node was lost.")
    last_activity: datetime | None = Field(None, description="When the last cell finished.")
    checkpoint: Checkpoint | None = Field(None, description="The state saved when the kernel last hibernated.")
    wake_request: str | None = Field(
        None, description="Set by the router when a request arrives for the hibernated kernel: CHECKPOINT-ID/REQUEST."
    )
    wake_handled: str | None = Field(None, description="The last wakeRequest the operator acted on.")
    gpu_seconds_bound: float = Field(
        0,
        ge=0,
        description="GPU-seconds bound to the kernel's replicas while they ran cells (GPUs x seconds, summed "
        "over its replicas). Reservation would hold resources.gpus for the kernel's whole life instead.",
    )
    observed_generation: int | None = Field(None, ge=0, description="The generation this status describes.")


class ObjectMeta(ApiModel):
    """The part of metav1.ObjectMeta this project reads and writes."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class _Resource(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    api_version: Literal["notebookos.io/v1alpha1"] = "notebookos.io/v1alpha1"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)


class NotebookKernel(_Resource):
    """A Jupyter kernel that runs as Raft-synchronised replicas on different GPU nodes, binding GPUs
    only while a cell executes."""

    kind: Literal["NotebookKernel"] = "NotebookKernel"
    spec: NotebookKernelSpec = Field(default_factory=NotebookKernelSpec)
    status: NotebookKernelStatus = Field(default_factory=NotebookKernelStatus)

    crd_plural: ClassVar[str] = "notebookkernels"
    crd_short_names: ClassVar[list[str]] = ["nbk"]
    crd_printer_columns: ClassVar[list[dict[str, Any]]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready", "description": "ready/wanted replicas"},
        {"name": "Executor", "type": "string", "jsonPath": ".status.executor", "description": "ran the last cell"},
        {
            "name": "GPUs/Cell",
            "type": "integer",
            "jsonPath": ".spec.resources.gpus",
            "description": "GPUs bound while a cell runs (none between cells)",
        },
        {"name": "Cells", "type": "integer", "jsonPath": ".status.cells", "priority": 1},
        {"name": "GPU-Seconds", "type": "number", "jsonPath": ".status.gpuSecondsBound", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    # metadata.name may carry rules in a CRD (only name and generateName): checked at admission.
    crd_metadata_name: ClassVar[dict[str, Any]] = {
        "type": "string",
        "x-kubernetes-validations": [
            {
                "rule": f"self.size() <= {MAX_KERNEL_NAME}",
                "message": f"at most {MAX_KERNEL_NAME} characters, so that the kernel's Services (NAME-replicas) "
                "fit in 63",
            },
            {
                "rule": f"self.matches('{DNS1035_PATTERN}')",
                "message": "must start with a letter and hold only a-z, 0-9 and '-' (it names Services)",
            },
        ],
    }


# --------------------------------------------------------------------------------------------------
# KernelReplica
# --------------------------------------------------------------------------------------------------


class ReplicaPhase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    READY = "Ready"
    FAILED = "Failed"
    MIGRATING = "Migrating"


class RaftRole(StrEnum):
    LEADER = "Leader"
    FOLLOWER = "Follower"
    CANDIDATE = "Candidate"
    UNKNOWN = "Unknown"


class KernelReplicaSpec(ApiModel):
    """One Raft member of a NotebookKernel. Created by the operator, owned by its kernel."""

    kernel_name: str = Field(
        ...,
        min_length=1,
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
        description="The NotebookKernel this replica belongs to (same namespace).",
        json_schema_extra=immutable("kernelName is immutable"),
    )
    replica_id: int = Field(
        ...,
        ge=1,
        le=9,
        description="Raft member id, stable for the replica's life, also across pod replacements.",
        json_schema_extra=immutable("replicaId is immutable"),
    )
    resources: KernelResources = Field(
        default_factory=KernelResources, description="Copied from the kernel when the replica is made."
    )
    image: str | None = Field(None, max_length=1024, description="Kernel image of the replica's pod.")


class RaftStatus(StatusModel):
    """Raft state as the replica last reported it."""

    role: RaftRole = Field(RaftRole.UNKNOWN, description="Leader, Follower, Candidate or Unknown.")
    term: int = Field(0, ge=0, description="Current Raft term.")
    commit_index: int = Field(0, ge=0, description="Highest log index known committed.")


class GpuBinding(StatusModel):
    """GPUs the broker granted to this replica for one execution. Durable record of the grant:
    the broker rebuilds its ledger from these after a restart."""

    node: str = Field(..., description="Node whose devices are granted.")
    devices: list[str] = Field(..., description="Device UUIDs granted.")
    gpus: int | None = Field(None, ge=0, description="How many devices are granted (kubectl's BOUND-GPUS column).")
    execution_id: str = Field(..., min_length=1, description="The execution (cell) the grant is for.")
    since: datetime = Field(..., description="When the grant was made.")
    grant_seq: int = Field(0, ge=0, description="Broker sequence number; a later grant has a larger one.")


class KernelReplicaStatus(StatusModel):
    """What the cluster and the replica itself say about this replica."""

    phase: ReplicaPhase = Field(
        ReplicaPhase.PENDING, description="Pending, Scheduled, Running, Ready, Failed or Migrating."
    )
    pod_name: str | None = Field(None, description="The replica's current pod.")
    node_name: str | None = Field(None, description="The node the pod runs on.")
    # Kubernetes spells it podIP (as in PodStatus), not the camel-case generator's podIp.
    pod_ip: str | None = Field(None, alias="podIP", description="The pod's IP, where peers reach its Raft port.")
    raft: RaftStatus | None = Field(None, description="Raft state reported by the replica.")
    gpu_binding: GpuBinding | None = Field(None, description="Current GPU grant, absent when the replica holds none.")
    last_heartbeat: datetime | None = Field(None, description="When the replica last reported.")
    gpu_seconds_bound: float = Field(
        0, ge=0, description="GPU-seconds of the grants this replica has had and released (GPUs x seconds)."
    )
    incarnation: int = Field(0, ge=0, description="How many pods this replica has had (replacements and migrations).")
    migrations: int = Field(0, ge=0, description="How many times this replica was moved to another node.")
    last_migration: datetime | None = Field(
        None, description="When the replica's last completed move began (each move is counted once)."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Conditions of the replica.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, ge=0, description="The generation this status describes.")
    restore_error: str | None = Field(
        None, description="Why the replica could not restore the kernel's checkpoint when it woke (the replica's)."
    )


class KernelReplica(_Resource):
    """One Raft member of a NotebookKernel, placed on its own GPU node."""

    kind: Literal["KernelReplica"] = "KernelReplica"
    spec: KernelReplicaSpec
    status: KernelReplicaStatus = Field(default_factory=KernelReplicaStatus)

    crd_plural: ClassVar[str] = "kernelreplicas"
    crd_short_names: ClassVar[list[str]] = ["nbr"]
    crd_printer_columns: ClassVar[list[dict[str, Any]]] = [
        {"name": "Kernel", "type": "string", "jsonPath": ".spec.kernelName"},
        {"name": "ID", "type": "integer", "jsonPath": ".spec.replicaId"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Node", "type": "string", "jsonPath": ".status.nodeName"},
        {"name": "Role", "type": "string", "jsonPath": ".status.raft.role", "description": "Raft role"},
        {
            "name": "Bound-GPUs",
            "type": "integer",
            "jsonPath": ".status.gpuBinding.gpus",
            "description": "GPUs bound now, for the cell it runs (empty between cells)",
        },
        {"name": "Cell", "type": "string", "jsonPath": ".status.gpuBinding.executionId", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


RESOURCES: tuple[type[NotebookKernel] | type[KernelReplica], ...] = (NotebookKernel, KernelReplica)

"""The kube-scheduler extender wire format (k8s.io/kube-scheduler/extender/v1, types.go).

Go structs without json tags, so the keys are the Go field names: ``ExtenderArgs{Pod, Nodes,
NodeNames}``, ``ExtenderFilterResult{Nodes, NodeNames, FailedNodes, FailedAndUnresolvableNodes,
Error}``, ``HostPriorityList [{Host, Score}]``. Go decodes keys case-insensitively, so we accept any
case on input and always answer with the exact Go names. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from notebookos.labels import KERNEL_LABEL, REPLICA_GPU_MEMORY_ANNOTATION, REPLICA_GPUS_ANNOTATION
from notebookos.policy.placement import DEFAULT_REPLICAS, ReplicaRequest


class WireError(ValueError):
    """The payload is not a valid ExtenderArgs; the message names what is wrong (answered with 400)."""


@dataclass(frozen=True)
class ExtenderArgs:
    pod: dict[str, Any]
    nodes: list[dict[str, Any]] | None
    """Node objects, when the scheduler's extender entry has nodeCacheCapable: false."""
    node_names: list[str] | None
    """Node names, when nodeCacheCapable: true."""

    @property
    def candidate_names(self) -> list[str]:
        if self.node_names is not None:
            return self.node_names
        return [node_name(n, i) for i, n in enumerate(self.nodes or [])]


def _get_ci(obj: dict[str, Any], key: str) -> Any:
    """Go's encoding/json matches keys case-insensitively; prefer the exact name."""
    if key in obj:
        return obj[key]
    low = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


def node_name(node: Any, index: int) -> str:
    if not isinstance(node, dict):
        raise WireError(f"Nodes.items[{index}] must be an object, got {type(node).__name__}")
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise WireError(f"Nodes.items[{index}].metadata.name must be a non-empty string")
    return name


def parse_extender_args(body: Any) -> ExtenderArgs:
    if not isinstance(body, dict):
        raise WireError(f"ExtenderArgs must be a JSON object, got {type(body).__name__}")
    pod = _get_ci(body, "Pod")
    if not isinstance(pod, dict):
        raise WireError("ExtenderArgs.Pod must be a v1.Pod object")
    meta = pod.get("metadata")
    if not isinstance(meta, dict):
        raise WireError("ExtenderArgs.Pod.metadata must be an object")
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise WireError(f"ExtenderArgs.Pod.metadata.{field} must map strings to strings")
    for field in ("name", "namespace"):
        value = meta.get(field)
        if value is not None and not isinstance(value, str):
            raise WireError(f"ExtenderArgs.Pod.metadata.{field} must be a string")

    raw_nodes = _get_ci(body, "Nodes")
    raw_names = _get_ci(body, "NodeNames")
    nodes: list[dict[str, Any]] | None = None
    names: list[str] | None = None
    if raw_nodes is not None:
        if not isinstance(raw_nodes, dict):
            raise WireError("ExtenderArgs.Nodes must be a v1.NodeList object")
        items = raw_nodes.get("items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise WireError("ExtenderArgs.Nodes.items must be a list")
        for i, n in enumerate(items):
            node_name(n, i)  # validates
        nodes = items
    if raw_names is not None:
        if not isinstance(raw_names, list) or not all(isinstance(n, str) and n for n in raw_names):
            raise WireError("ExtenderArgs.NodeNames must be a list of non-empty strings")
        names = raw_names
    if nodes is None and names is None:
        raise WireError("ExtenderArgs needs Nodes (nodeCacheCapable: false) or NodeNames (nodeCacheCapable: true)")
    if nodes is not None and names is not None:
        names = None  # both sent: the full objects carry more, use them
    return ExtenderArgs(pod=pod, nodes=nodes, node_names=names)


def pod_key(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def parse_gpus(value: str | None) -> int:
    """The per-cell GPUs in a replica pod's notebookos.io/gpus annotation."""
    if value is None:
        raise ValueError(f"annotation {REPLICA_GPUS_ANNOTATION} is missing")
    try:
        gpus = int(value.strip())
    except ValueError:
        raise ValueError(f"annotation {REPLICA_GPUS_ANNOTATION}={value!r} is not an integer") from None
    if gpus < 0:
        raise ValueError(f"annotation {REPLICA_GPUS_ANNOTATION}={value!r} must be >= 0")
    return gpus


def replica_request(pod: dict[str, Any], replicas: int = DEFAULT_REPLICAS) -> ReplicaRequest | None:
    """The placement request a pod stands for, None when it is not a kernel replica (no kernel
    label, or no GPU annotation: the kernel's router, say).

    Raises ValueError (with the reason, shown in the pod's events) for a replica pod whose GPU
    annotation is malformed.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    kernel = labels.get(KERNEL_LABEL)
    annotations = meta.get("annotations") or {}
    if not kernel or REPLICA_GPUS_ANNOTATION not in annotations:
        return None
    gpus = parse_gpus(annotations[REPLICA_GPUS_ANNOTATION])
    memory = annotations.get(REPLICA_GPU_MEMORY_ANNOTATION)
    gpu_memory: int | None = None
    if memory is not None:
        try:
            gpu_memory = int(memory.strip())
        except ValueError:
            raise ValueError(
                f"annotation {REPLICA_GPU_MEMORY_ANNOTATION}={memory!r} is not a number of bytes"
            ) from None
        if gpu_memory < 0:
            raise ValueError(f"annotation {REPLICA_GPU_MEMORY_ANNOTATION}={memory!r} must be >= 0")
    return ReplicaRequest(
        kernel=f"{meta.get('namespace') or 'default'}/{kernel}",
        gpus=gpus,
        replicas=replicas,
        gpu_memory_bytes=gpu_memory,
    )


def filter_result(
    args: ExtenderArgs,
    passed: list[str],
    failed: dict[str, str],
    unresolvable: dict[str, str] | None = None,
    error: str = "",
) -> dict[str, Any]:
    """ExtenderFilterResult, answering in the form the request came in (objects or names)."""
    result: dict[str, Any] = {
        "Nodes": None,
        "NodeNames": None,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable or {},
        "Error": error,
    }
    if args.nodes is not None:
        keep = set(passed)
        result["Nodes"] = {
            "apiVersion": "v1",
            "kind": "NodeList",
            "metadata": {},
            "items": [n for n in args.nodes if n["metadata"]["name"] in keep],
        }
    else:
        result["NodeNames"] = passed
    return result


def host_priority_list(scores: dict[str, int], order: list[str]) -> list[dict[str, Any]]:
    return [{"Host": name, "Score": int(scores.get(name, 0))} for name in order]

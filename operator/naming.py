"""Names and labels of everything the operator makes for a kernel.

Names are deterministic (kernel name, replica id, incarnation), so a create that is repeated after
an operator restart finds the object instead of making a second one.
"""

from __future__ import annotations

import re

from notebookos import labels
from notebookos.api.models import DNS1035_PATTERN, MAX_KERNEL_NAME

COMPONENT_REPLICA = "replica"
COMPONENT_ROUTER = "router"
INCARNATION_LABEL = f"{labels.DOMAIN}/incarnation"
HMAC_SECRET_KEY = "key"
PEERS_KEY = "peers"
ROUTER_MEMBERS_ANNOTATION = f"{labels.DOMAIN}/replicas"  # the router's NOTEBOOKOS_REPLICAS

# The API server refuses longer or malformed names (CEL rules of the CRD); checked here too for
# kernels admitted before those rules existed.
_DNS1035 = re.compile(DNS1035_PATTERN)


def kernel_name_problem(name: str) -> str | None:
    """Why this NotebookKernel name cannot be used for its Services and labels, or None."""
    if len(name) > MAX_KERNEL_NAME:
        return f"name {name!r} is {len(name)} characters; at most {MAX_KERNEL_NAME} fit the kernel's Service names"
    if not _DNS1035.match(name):
        return f"name {name!r} must start with a letter and contain only a-z, 0-9 and '-' (it names Services)"
    return None


def secret_name(kernel: str) -> str:
    return f"{kernel}-key"


def service_name(kernel: str) -> str:
    return kernel


def headless_service_name(kernel: str) -> str:
    return f"{kernel}-replicas"


def peers_configmap_name(kernel: str) -> str:
    return f"{kernel}-peers"


def pdb_name(kernel: str) -> str:
    return kernel


def kernel_service_account_name(kernel: str) -> str:
    return f"{kernel}-kernel"


def router_pod_name(kernel: str) -> str:
    return f"{kernel}-router"


replica_name = labels.replica_name


def replica_pod_name(kernel: str, replica_id: int, incarnation: int) -> str:
    return f"{kernel}-{replica_id}-i{incarnation}"


def kernel_labels(kernel: str) -> dict[str, str]:
    return {labels.KERNEL_LABEL: kernel, "app.kubernetes.io/managed-by": labels.MANAGED_BY}


def replica_selector(kernel: str) -> dict[str, str]:
    """Labels that select all replica pods of a kernel (anti-affinity, PDB, headless Service)."""
    return {labels.KERNEL_LABEL: kernel, labels.COMPONENT_LABEL: COMPONENT_REPLICA}


def router_selector(kernel: str) -> dict[str, str]:
    return {labels.KERNEL_LABEL: kernel, labels.COMPONENT_LABEL: COMPONENT_ROUTER}


def label_selector(match: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match.items()))

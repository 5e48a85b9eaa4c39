"""Jupyter connection info for a NotebookKernel: from its status (the router's Service and ports)
and its Secret (the HMAC key). Pure; the provisioner and `notebookos connect` do the I/O."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from .api import NotebookKernel

HMAC_KEY_FIELD = "key"  # the key of the HMAC key in the kernel's Secret


class NotReady(RuntimeError):
    """The kernel has no connection info yet."""


def service_host(kernel: NotebookKernel) -> str:
    """The router Service's in-cluster DNS name."""
    conn = kernel.status.connection
    if conn is None:
        raise NotReady(f"NotebookKernel {kernel.metadata.name} has no status.connection yet")
    return conn.host or f"{conn.service_name}.{kernel.metadata.namespace}.svc"


def hmac_key(secret_data: Mapping[str, str | bytes]) -> str:
    """The HMAC key from a Secret's (base64) data."""
    if HMAC_KEY_FIELD not in secret_data:
        raise KeyError(f"the kernel's Secret has no '{HMAC_KEY_FIELD}' entry")
    return base64.b64decode(secret_data[HMAC_KEY_FIELD]).decode()


def connection_info(kernel: NotebookKernel, key: str, host: str) -> dict[str, Any]:
    """A Jupyter connection dict (the content of a connection file) for `kernel` reached at `host`."""
    conn = kernel.status.connection
    if conn is None:
        raise NotReady(f"NotebookKernel {kernel.metadata.name} has no status.connection yet")
    return {
        "ip": host,
        "transport": conn.transport,
        "signature_scheme": conn.signature_scheme,
        "key": key,
        "shell_port": conn.ports.shell,
        "iopub_port": conn.ports.iopub,
        "stdin_port": conn.ports.stdin,
        "control_port": conn.ports.control,
        "hb_port": conn.ports.hb,
        "kernel_name": f"notebookos-{kernel.metadata.name}",
    }

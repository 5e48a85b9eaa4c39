"""Kubernetes access for the user-side tools (provisioner, CLI), with the official client.

Kept apart from the pure modules: importing this loads `kubernetes`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .api import GROUP, VERSION, NotebookKernel
from .cli_errors import CliError
from .connection import connection_info, hmac_key, service_host
from .kubeclient import api_client

__all__ = ["api_client", "default_namespace", "kernel_connection", "read_kernel"]

PLURAL = NotebookKernel.crd_plural
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def default_namespace(kubeconfig: str | None = None) -> str:
    """The namespace to use when none is given: the pod's own (in-cluster), the kubeconfig context's,
    else `default`."""
    if SA_NAMESPACE_FILE.exists():
        return SA_NAMESPACE_FILE.read_text().strip()
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=kubeconfig or os.environ.get("KUBECONFIG") or None)
        return str(active["context"].get("namespace") or "default")
    except Exception:
        return "default"


def read_kernel(api: Any, namespace: str, name: str) -> NotebookKernel:
    from kubernetes import client

    body = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return NotebookKernel.model_validate(body)


def router_pod_ip(api: Any, namespace: str, service: str) -> str | None:
    """The IP of a ready pod behind `service`, found by the Service's selector (for flat networks
    without cluster DNS or kube-proxy, such as the e2e test bed, whose loopback pod IPs
    EndpointSlices may not carry)."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    spec = core.read_namespaced_service(service, namespace).spec
    selector = (spec.selector if spec else None) or {}
    if not selector:
        return None
    pods = core.list_namespaced_pod(namespace, label_selector=",".join(f"{k}={v}" for k, v in selector.items()))
    for pod in pods.items:
        status, meta = pod.status, pod.metadata
        if status is None or meta is None or meta.deletion_timestamp is not None or not status.pod_ip:
            continue
        if any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
            return str(status.pod_ip)
    return None


def kernel_connection(api: Any, kernel: NotebookKernel, via: str = "service") -> dict[str, Any]:
    """Connection info for a kernel that has status.connection; `via` picks the address: the
    Service's DNS name (`service`), the router pod's IP (`pod`), or 127.0.0.1 for use with
    `kubectl port-forward` (`local`)."""
    from kubernetes import client

    conn = kernel.status.connection
    assert conn is not None, "caller checks status.connection"
    ns = kernel.metadata.namespace or "default"
    secret = client.CoreV1Api(api).read_namespaced_secret(conn.secret_name, ns)
    key = hmac_key(secret.data or {})
    if via == "service":
        host = service_host(kernel)
    elif via == "pod":
        found = router_pod_ip(api, ns, conn.service_name)
        if found is None:
            raise CliError(f"service {ns}/{conn.service_name} has no ready router pod")
        host = found
    elif via == "local":
        host = "127.0.0.1"
    else:
        raise ValueError(f"via must be service, pod or local, not {via!r}")
    return connection_info(kernel, key, host)

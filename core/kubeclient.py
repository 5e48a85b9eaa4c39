"""The one way the control-plane code (operator, extender, broker, provisioner, CLI) loads Kubernetes
credentials for the official client, in one order everywhere: an explicit kubeconfig (a flag or a
provisioner setting), else $KUBECONFIG, else the pod's service account when running in a pod, else
~/.kube/config. Explicit beats implicit, so a kubeconfig given to a process in a pod is honoured.

The kernel image reports status with its own small client (kernel_image/report.py, pykube-ng's
environment) from the same service-account files.
"""

from __future__ import annotations

import os

from kubernetes import client, config


def api_client(kubeconfig: str | None = None, *, pool_maxsize: int = 16) -> client.ApiClient:
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    cfg = client.Configuration()
    if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        # Read now, not when the kubernetes package was imported (its default path is fixed then).
        config.load_kube_config(config_file=path, client_configuration=cfg)
    # Handlers and request handlers run in a few threads; urllib3's default pool of 4 would queue them.
    cfg.connection_pool_maxsize = pool_maxsize
    return client.ApiClient(cfg)

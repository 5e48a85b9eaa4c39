"""Loading credentials for the official kubernetes client: a kubeconfig when given (flag or
KUBECONFIG), else the pod's in-cluster service account."""

from __future__ import annotations

import os

from kubernetes import client, config


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        cfg = client.Configuration()
        config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = 16
    return client.ApiClient(cfg)

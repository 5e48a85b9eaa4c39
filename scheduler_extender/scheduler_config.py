"""The KubeSchedulerConfiguration of ``notebookos-scheduler``, from scheduler-config.yaml."""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import yaml

from notebookos.labels import SCHEDULER_NAME

CONFIG_FILE = "scheduler-config.yaml"


def base_config() -> dict[str, Any]:
    text = resources.files("notebookos.extender").joinpath(CONFIG_FILE).read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def extender_entry(
    url_prefix: str, *, weight: int = 5, node_cache_capable: bool = True, ignorable: bool = False
) -> dict[str, Any]:
    """One top-level `extenders` entry (KubeSchedulerConfiguration v1 Extender) for the extender
    listening at url_prefix, e.g. http://127.0.0.1:8888/."""
    entry = copy.deepcopy(base_config()["extenders"][0])
    entry.update(
        urlPrefix=url_prefix if url_prefix.endswith("/") else url_prefix + "/",
        weight=weight,
        nodeCacheCapable=node_cache_capable,
        ignorable=ignorable,
        enableHTTPS=url_prefix.startswith("https://"),
    )
    return entry


def render(
    url_prefix: str = "http://127.0.0.1:8888/",
    *,
    namespace: str = "notebookos-system",
    leader_elect: bool = True,
    kubeconfig: str | None = None,
    **entry_kwargs: Any,
) -> dict[str, Any]:
    cfg = base_config()
    cfg["leaderElection"].update(leaderElect=leader_elect, resourceNamespace=namespace)
    cfg["profiles"][0]["schedulerName"] = SCHEDULER_NAME
    cfg["extenders"] = [extender_entry(url_prefix, **entry_kwargs)]
    if kubeconfig:
        cfg["clientConnection"] = {"kubeconfig": kubeconfig}
    return cfg


def render_yaml(*args: Any, **kwargs: Any) -> str:
    return yaml.safe_dump(render(*args, **kwargs), sort_keys=False)

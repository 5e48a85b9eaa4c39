"""The operator's settings: where replicas run and what they are told. Read once at start-up from
the environment (the chart sets it) or the command line; never changed while running."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from notebookos import labels
from notebookos.api import ConnectionPorts

DEFAULT_IMAGE = "ghcr.io/notebookos/kernel:0.1.0"


class ConfigError(ValueError):
    """A setting has a value the operator cannot use; the message names the setting."""


def _parse_selector(name: str, text: str) -> dict[str, str]:
    # "k=v,k2=v2", the kubectl --selector spelling; equality only.
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError(f"{name}: {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def _parse_json_list(name: str, text: str) -> list[dict[str, Any]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not JSON ({exc})") from exc
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{name}: expected a JSON list of objects")
    return value


def _parse_int(name: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: {text!r} is not an integer") from exc
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value} is outside {lo}..{hi}")
    return value


@dataclass(frozen=True)
class OperatorConfig:
    """Everything the builders need besides the resources themselves."""

    image: str = DEFAULT_IMAGE
    # Replica pods go through the NotebookOS scheduler (the extender); the router uses the default.
    scheduler_name: str = labels.SCHEDULER_NAME
    broker_url: str = ""
    raft_port: int = 7000
    # Base ports of the router's (client-facing) and each replica's Jupyter channels.
    router_port: int = 5555
    jupyter_port: int = 9000
    # Pool selection: the GPU pool label, plus extra equality terms (e.g. a test's own node set).
    node_selector: Mapping[str, str] = field(default_factory=lambda: {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE})
    extra_tolerations: tuple[Mapping[str, Any], ...] = ()
    # notebookos.io/runner label on kernel pods: only the e2e test bed's process runner wants it.
    runner: str = ""
    # Service account for kernel pods; empty: none mounted (they need no API access by default).
    kernel_service_account: str = ""
    python: str = "python"
    # GPU visibility without a device request (GPUs are bound per cell): the NVIDIA container
    # runtime shows the node's devices to containers of this RuntimeClass with
    # NVIDIA_VISIBLE_DEVICES=all, and the broker decides which one a cell may use.
    runtime_class: str = ""
    # Seconds between resyncs of an unchanged kernel or replica (kopf timers): the level-triggered
    # backstop that retries a reconcile that failed, with no other event needed.
    resync_seconds: int = 60
    # Reconciles read kernels, replicas, pods and nodes from watch-fed caches (cache.py); off: from
    # the API server, as before (the scale benchmark's baseline).
    watch_cache: bool = True
    # How long a cell waits for GPUs (a migration, a new node) before it fails; spec.gpuWaitSeconds overrides.
    gpu_wait_seconds: int = 300
    # A migration whose new pod is not placed on its target by then is rolled back.
    migration_timeout_seconds: int = 120
    # Where kernels without spec.storage keep large values and their hibernation checkpoint (an
    # fsspec URL every kernel pod can reach). Empty: such kernels cannot hibernate.
    checkpoint_store: str = ""
    # A wake whose replicas are not all ready by then is rolled back: the kernel stays hibernated.
    wake_timeout_seconds: int = 300

    @property
    def router_ports(self) -> ConnectionPorts:
        return ConnectionPorts.model_validate({name: self.router_port + i for i, name in enumerate(labels.CHANNELS)})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        if v := env.get("NOTEBOOKOS_KERNEL_IMAGE"):
            kw["image"] = v
        if v := env.get("NOTEBOOKOS_SCHEDULER_NAME"):
            kw["scheduler_name"] = v
        if v := env.get("NOTEBOOKOS_BROKER_URL"):
            kw["broker_url"] = v
        if v := env.get("NOTEBOOKOS_RAFT_PORT"):
            kw["raft_port"] = _parse_int("NOTEBOOKOS_RAFT_PORT", v, 1, 65535)
        if v := env.get("NOTEBOOKOS_ROUTER_PORT"):
            kw["router_port"] = _parse_int("NOTEBOOKOS_ROUTER_PORT", v, 1, 65535 - len(labels.CHANNELS))
        if v := env.get("NOTEBOOKOS_JUPYTER_PORT"):
            kw["jupyter_port"] = _parse_int("NOTEBOOKOS_JUPYTER_PORT", v, 1, 65535 - len(labels.CHANNELS))
        if v := env.get("NOTEBOOKOS_NODE_SELECTOR"):
            kw["node_selector"] = {
                labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE,
                **_parse_selector("NOTEBOOKOS_NODE_SELECTOR", v),
            }
        if v := env.get("NOTEBOOKOS_EXTRA_TOLERATIONS"):
            kw["extra_tolerations"] = tuple(_parse_json_list("NOTEBOOKOS_EXTRA_TOLERATIONS", v))
        if "NOTEBOOKOS_RUNNER" in env:
            kw["runner"] = env["NOTEBOOKOS_RUNNER"]
        if v := env.get("NOTEBOOKOS_KERNEL_SERVICE_ACCOUNT"):
            kw["kernel_service_account"] = v
        if v := env.get("NOTEBOOKOS_RUNTIME_CLASS"):
            kw["runtime_class"] = v
        if v := env.get("NOTEBOOKOS_GPU_WAIT_SECONDS"):
            kw["gpu_wait_seconds"] = _parse_int("NOTEBOOKOS_GPU_WAIT_SECONDS", v, 0, 86400)
        if v := env.get("NOTEBOOKOS_MIGRATION_TIMEOUT_SECONDS"):
            kw["migration_timeout_seconds"] = _parse_int("NOTEBOOKOS_MIGRATION_TIMEOUT_SECONDS", v, 10, 3600)
        if v := env.get("NOTEBOOKOS_CHECKPOINT_STORE"):
            if "://" not in v:
                raise ConfigError(f"NOTEBOOKOS_CHECKPOINT_STORE: {v!r} is not an fsspec URL (s3://..., file:///...)")
            kw["checkpoint_store"] = v
        if v := env.get("NOTEBOOKOS_WAKE_TIMEOUT_SECONDS"):
            kw["wake_timeout_seconds"] = _parse_int("NOTEBOOKOS_WAKE_TIMEOUT_SECONDS", v, 10, 86400)
        if v := env.get("NOTEBOOKOS_RESYNC_SECONDS"):
            kw["resync_seconds"] = _parse_int("NOTEBOOKOS_RESYNC_SECONDS", v, 1, 3600)
        if v := env.get("NOTEBOOKOS_WATCH_CACHE"):
            if v not in ("on", "off"):
                raise ConfigError(f"NOTEBOOKOS_WATCH_CACHE must be on or off, not {v!r}")
            kw["watch_cache"] = v == "on"
        if v := env.get("NOTEBOOKOS_KERNEL_PYTHON"):
            kw["python"] = v
        return cls(**kw)

"""The environment contract of the replica and router processes (see docs/kernel.md).

The operator's pod builder sets these variables; anything missing or malformed fails at start with
a message naming the variable, so a bad pod never half-starts.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Where the kubelet mounts the pod's service-account token, CA and namespace; a pod says otherwise
# with NOTEBOOKOS_SERVICE_ACCOUNT_DIR (the test bed's process runner does: its pods have no mounts).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ConfigError(ValueError):
    """A variable of the environment contract is missing or malformed."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_address(text: str, what: str) -> Address:
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what}: expected host:port, got {text!r}")
    return Address(host, int(port))


def parse_members(text: str, var: str) -> dict[int, Address]:
    """Parse ``1=host:port,2=host:port`` into {id: address}."""
    out: dict[int, Address] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        rid, sep, addr = item.partition("=")
        if not sep or not rid.strip().isdigit():
            raise ConfigError(f"{var}: expected id=host:port items separated by commas, got {item!r}")
        if int(rid) in out:
            raise ConfigError(f"{var}: replica {rid} is listed twice")
        out[int(rid)] = parse_address(addr, f"{var} item {item!r}")
    if not out:
        raise ConfigError(f"{var} is empty; expected id=host:port items separated by commas")
    return out


def _req(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} must be set (see docs/kernel.md)")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def service_account_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder holding the pod's service-account ``token``, ``ca.crt`` and ``namespace``."""
    env = os.environ if env is None else env
    return Path(env.get("NOTEBOOKOS_SERVICE_ACCOUNT_DIR", "").strip() or SERVICE_ACCOUNT_DIR)


def read_key(env: Mapping[str, str]) -> bytes:
    """The kernel's HMAC key: NOTEBOOKOS_KEY, or the file NOTEBOOKOS_KEY_FILE (a mounted Secret)."""
    if env.get("NOTEBOOKOS_KEY_FILE"):
        path = Path(env["NOTEBOOKOS_KEY_FILE"])
        try:
            key = path.read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"NOTEBOOKOS_KEY_FILE {path}: {e.strerror}") from None
    else:
        key = env.get("NOTEBOOKOS_KEY", "").strip().encode()
    if not key:
        raise ConfigError("NOTEBOOKOS_KEY or NOTEBOOKOS_KEY_FILE must give a non-empty HMAC key")
    return key


@dataclass(frozen=True)
class BrokerConfig:
    url: str | None  # None: no broker, only CPU kernels (gpus must be 0)
    token_file: str
    timeout: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BrokerConfig:
        url = env.get("NOTEBOOKOS_BROKER_URL", "").strip() or None
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"NOTEBOOKOS_BROKER_URL must be an http(s) URL, got {url!r}")
        return cls(
            url=url,
            token_file=env.get("NOTEBOOKOS_BROKER_TOKEN_FILE", "").strip() or str(service_account_dir(env) / "token"),
            timeout=_float(env, "NOTEBOOKOS_BROKER_TIMEOUT", 5.0),
        )


@dataclass(frozen=True)
class ReplicaConfig:
    kernel: str
    replica_id: int
    peers: dict[int, Address]  # Raft address of every member, this one included
    raft_bind: Address
    jupyter_ip: str
    jupyter_port: int  # base port: shell, iopub, stdin, control, hb
    key: bytes
    data_dir: Path
    store_url: str
    threshold: int
    node: str
    gpus: int
    broker: BrokerConfig
    election_timeout: float
    executor_lost_timeout: float
    extra: dict[str, str] = field(default_factory=dict)
    restore_url: str | None = None  # the checkpoint a woken kernel's replicas start from

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ReplicaConfig:
        env = os.environ if env is None else env
        kernel = _req(env, "NOTEBOOKOS_KERNEL")
        rid = _int(env, "NOTEBOOKOS_REPLICA_ID", 0)
        if rid < 1:
            raise ConfigError("NOTEBOOKOS_REPLICA_ID must be set to the replica's Raft id (1..9)")
        peers = parse_members(_req(env, "NOTEBOOKOS_PEERS"), "NOTEBOOKOS_PEERS")
        if rid not in peers:
            raise ConfigError(f"NOTEBOOKOS_PEERS must list this replica ({rid}); it lists {sorted(peers)}")
        own = peers[rid]
        bind = env.get("NOTEBOOKOS_RAFT_BIND", "").strip()
        data_dir = Path(env.get("NOTEBOOKOS_DATA_DIR", "/var/lib/notebookos"))
        gpus = _int(env, "NOTEBOOKOS_GPUS", 0)
        broker = BrokerConfig.from_env(env)
        if gpus < 0:
            raise ConfigError(f"NOTEBOOKOS_GPUS must be >= 0, got {gpus}")
        if gpus > 0 and broker.url is None:
            raise ConfigError("NOTEBOOKOS_GPUS > 0 needs NOTEBOOKOS_BROKER_URL (the GPU broker)")
        return cls(
            kernel=kernel,
            replica_id=rid,
            peers=peers,
            raft_bind=parse_address(bind, "NOTEBOOKOS_RAFT_BIND") if bind else Address("0.0.0.0", own.port),
            jupyter_ip=env.get("NOTEBOOKOS_JUPYTER_IP", "0.0.0.0"),
            jupyter_port=_int(env, "NOTEBOOKOS_JUPYTER_PORT", 9000),
            key=read_key(env),
            data_dir=data_dir,
            store_url=env.get("NOTEBOOKOS_STORE_URL", "").strip() or f"file://{data_dir / 'store'}",
            threshold=_int(env, "NOTEBOOKOS_STORE_THRESHOLD", 1 << 20),
            node=env.get("NOTEBOOKOS_NODE", "").strip() or socket.gethostname(),
            gpus=gpus,
            broker=broker,
            election_timeout=_float(env, "NOTEBOOKOS_ELECTION_TIMEOUT", 3.0),
            executor_lost_timeout=_float(env, "NOTEBOOKOS_EXECUTOR_LOST_TIMEOUT", 3.0),
            restore_url=env.get("NOTEBOOKOS_RESTORE_URL", "").strip() or None,
        )


@dataclass(frozen=True)
class RouterConfig:
    kernel: str
    replicas: dict[int, Address]  # Jupyter base port of each replica
    ip: str
    port: int  # base port of the router's five channels
    key: bytes
    gpus: int
    broker: BrokerConfig
    target_policy: str  # affinity | rotate
    connection_file: Path | None
    gpu_wait: float = 300.0  # how long a cell waits for GPUs (a migration, a new node) before it fails

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RouterConfig:
        env = os.environ if env is None else env
        policy = env.get("NOTEBOOKOS_TARGET_POLICY", "affinity").strip()
        if policy not in ("affinity", "rotate"):
            raise ConfigError(f"NOTEBOOKOS_TARGET_POLICY must be affinity or rotate, got {policy!r}")
        gpus = _int(env, "NOTEBOOKOS_GPUS", 0)
        broker = BrokerConfig.from_env(env)
        if gpus > 0 and broker.url is None:
            raise ConfigError("NOTEBOOKOS_GPUS > 0 needs NOTEBOOKOS_BROKER_URL (the GPU broker)")
        cf = env.get("NOTEBOOKOS_CONNECTION_FILE", "").strip()
        return cls(
            kernel=_req(env, "NOTEBOOKOS_KERNEL"),
            replicas=parse_members(_req(env, "NOTEBOOKOS_REPLICAS"), "NOTEBOOKOS_REPLICAS"),
            ip=env.get("NOTEBOOKOS_ROUTER_IP", "0.0.0.0"),
            port=_int(env, "NOTEBOOKOS_ROUTER_PORT", 9000),
            key=read_key(env),
            gpus=gpus,
            broker=broker,
            target_policy=policy,
            connection_file=Path(cf) if cf else None,
            gpu_wait=_float(env, "NOTEBOOKOS_GPU_WAIT_SECONDS", 300.0),
        )

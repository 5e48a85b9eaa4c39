"""Run one replicated kernel as local processes on loopback: three replicas and a router.

Used by the tests and benchmarks, and handy for trying the kernel without a cluster:
``python -m notebookos.kernel.local`` prints a connection file's path and runs until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from notebookos.labels import CHANNELS


def free_port_block(n: int = 5, host: str = "127.0.0.1", avoid: set[int] | None = None) -> int:
    """A base port with n consecutive free ports after it, below Linux's ephemeral range (32768+),
    so outgoing connections cannot take a port between choosing it and a process binding it.
    Ports in ``avoid`` (chosen before, maybe not bound yet) are never part of the block."""
    rng = random.SystemRandom()
    for _ in range(500):
        base = rng.randrange(20000, 32000 - n)
        if avoid and avoid & set(range(base, base + n)):
            continue
        socks = []
        try:
            for i in range(n):
                t = socket.socket()
                t.bind((host, base + i))
                socks.append(t)
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no block of free ports found")


class LocalKernel:
    def __init__(
        self,
        workdir: Path | None = None,
        replicas: int = 3,
        *,
        kernel: str = "local",
        target_policy: str = "affinity",
        gpus: int = 0,
        broker_url: str | None = None,
        token_file: str | None = None,
        threshold: int = 1 << 20,
        extra_env: dict[str, str] | None = None,
        replica_env: dict[int, dict[str, str]] | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="nbos-"))
        self.n = replicas
        self.kernel = kernel
        self.key = secrets.token_hex(16)
        # One block for the whole kernel, so no two of its processes are given the same port.
        nch = len(CHANNELS)
        base = free_port_block(nch * (replicas + 1) + replicas)
        self.router_port = base
        self.jupyter_ports = {i: base + nch * i for i in range(1, replicas + 1)}
        self.raft_ports = {i: base + nch * (replicas + 1) + i - 1 for i in range(1, replicas + 1)}
        self.store = self.workdir / "store"
        self.store.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.base_env = {
            "NOTEBOOKOS_KERNEL": kernel,
            "NOTEBOOKOS_KEY": self.key,
            "NOTEBOOKOS_GPUS": str(gpus),
            "NOTEBOOKOS_STORE_URL": f"file://{self.store}",
            "NOTEBOOKOS_STORE_THRESHOLD": str(threshold),
            "NOTEBOOKOS_TARGET_POLICY": target_policy,
            "NOTEBOOKOS_EXECUTOR_LOST_TIMEOUT": "1.5",
            "NOTEBOOKOS_ELECTION_TIMEOUT": "2",
            "NOTEBOOKOS_LOG_LEVEL": os.environ.get("NOTEBOOKOS_LOG_LEVEL", "INFO"),
            "PYTHONUNBUFFERED": "1",
            **({"NOTEBOOKOS_BROKER_URL": broker_url} if broker_url else {}),
            **({"NOTEBOOKOS_BROKER_TOKEN_FILE": token_file} if token_file else {}),
            **(extra_env or {}),
        }
        self.replica_env = replica_env or {}

    # --- processes -----------------------------------------------------------------------------------

    def _spawn(self, name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        full = {**os.environ, **self.base_env, **env}
        p = subprocess.Popen(
            [sys.executable, "-m", module], env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs[name] = p
        return p

    def ports(self) -> set[int]:
        """Every port this kernel's processes are given."""
        nch = len(CHANNELS)
        out = set(self.raft_ports.values())
        for b in (self.router_port, *self.jupyter_ports.values()):
            out |= set(range(b, b + nch))
        return out

    def peers(self) -> str:
        return ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.raft_ports.items())

    def start_replica(self, rid: int) -> subprocess.Popen[bytes]:
        env = {
            "NOTEBOOKOS_REPLICA_ID": str(rid),
            "NOTEBOOKOS_PEERS": self.peers(),
            "NOTEBOOKOS_RAFT_BIND": f"127.0.0.1:{self.raft_ports[rid]}",
            "NOTEBOOKOS_JUPYTER_IP": "127.0.0.1",
            "NOTEBOOKOS_JUPYTER_PORT": str(self.jupyter_ports[rid]),
            "NOTEBOOKOS_DATA_DIR": str(self.workdir / f"replica-{rid}"),
            "NOTEBOOKOS_NODE": f"node-{rid}",
            **self.replica_env.get(rid, {}),
        }
        return self._spawn(f"replica-{rid}", "notebookos.kernel.replica", env)

    def move_replica(self, rid: int, jupyter: bool = False) -> subprocess.Popen[bytes]:
        """Kill replica rid and start it again at a new Raft address (and, with jupyter, new
        Jupyter ports), as a pod replaced on another node would be: only the new process knows
        its new address; the others learn it through the router."""
        self.kill(f"replica-{rid}")
        self.raft_ports[rid] = free_port_block(1, avoid=self.ports())
        if jupyter:
            self.jupyter_ports[rid] = free_port_block(len(CHANNELS), avoid=self.ports())
        return self.start_replica(rid)

    def start_router(self) -> subprocess.Popen[bytes]:
        env = {
            "NOTEBOOKOS_REPLICAS": ",".join(f"{i}=127.0.0.1:{p}" for i, p in self.jupyter_ports.items()),
            "NOTEBOOKOS_ROUTER_IP": "127.0.0.1",
            "NOTEBOOKOS_ROUTER_PORT": str(self.router_port),
            "NOTEBOOKOS_CONNECTION_FILE": str(self.workdir / "router-connection.json"),
        }
        return self._spawn("router", "notebookos.kernel.router", env)

    def start(self) -> LocalKernel:
        for rid in range(1, self.n + 1):
            self.start_replica(rid)
        self.start_router()
        return self

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGKILL)

    def __enter__(self) -> LocalKernel:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # --- clients ----------------------------------------------------------------------------------------

    def connection_info(self) -> dict[str, Any]:
        return {
            "ip": "127.0.0.1",
            "transport": "tcp",
            "signature_scheme": "hmac-sha256",
            "key": self.key,
            **{f"{c}_port": self.router_port + i for i, c in enumerate(CHANNELS)},
        }

    def write_connection_file(self) -> Path:
        path = self.workdir / "client-connection.json"
        path.write_text(json.dumps(self.connection_info()))
        return path

    def client(self, timeout: float = 60.0) -> Any:
        from jupyter_client import BlockingKernelClient

        wait_for(self._router_listening, timeout, "the router to listen")
        kc = BlockingKernelClient()
        kc.load_connection_file(str(self.write_connection_file()))
        kc.start_channels()
        kc.wait_for_ready(timeout=timeout)
        return kc

    def _router_listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.router_port + CHANNELS.index("hb")), timeout=0.5):
                return True
        except OSError:
            return False

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def run(
    kc: Any, code: str, timeout: float = 60, metadata: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Execute code; return the reply and the IOPub messages other than status and execute_input.
    ``metadata`` goes into the request (e.g. ``{"notebookos_target": 2}`` to pick the executor)."""
    out: list[dict[str, Any]] = []

    def hook(m: dict[str, Any]) -> None:
        if m["header"]["msg_type"] not in ("status", "execute_input"):
            out.append(m)

    if metadata is None:
        reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook, **kwargs)
        return reply, out
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
    msg = kc.session.msg("execute_request", content, metadata=metadata)
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    end = time.monotonic() + timeout
    idle = False
    while not idle:
        m = kc.get_iopub_msg(timeout=max(0.1, end - time.monotonic()))
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["header"]["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            idle = True
        else:
            hook(m)
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, end - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply, out


def wait_serving(kc: Any, rid: int, timeout: float = 60) -> None:
    """Wait until replica rid is up and runs a cell targeted at it."""
    end = time.monotonic() + timeout
    while True:
        reply, _ = run(kc, "None", timeout=timeout, metadata={"notebookos_target": rid})
        if (reply["metadata"].get("notebookos") or {}).get("replica") == rid:
            return
        if time.monotonic() > end:
            raise AssertionError(f"replica {rid} did not come up in {timeout}s")
        time.sleep(0.3)


def text_of(out: list[dict[str, Any]]) -> str:
    """What a notebook would show for these IOPub messages, as text."""
    parts = []
    for m in out:
        t, c = m["header"]["msg_type"], m["content"]
        if t == "stream":
            parts.append(c["text"])
        elif t in ("execute_result", "display_data"):
            parts.append(c["data"].get("text/plain", "") + "\n")
        elif t == "error":
            parts.append(f"{c['ename']}: {c['evalue']}\n")
    return "".join(parts)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def main() -> int:
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # SIGTERM too: leave through the with block, which stops the processes

    signal.signal(signal.SIGTERM, stop)
    with LocalKernel() as k:
        print(k.write_connection_file(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())

"""One replica of a NotebookOS kernel: an IPython kernel whose cells are agreed through Raft.

Per execute_request (every replica gets every one, from the router):

1. the router's target is the executor (with no target, the LEAD/YIELD election decides; if every
   replica yields, reply "overloaded"). The executor proposes ``started`` without waiting for it,
   waits until its log has applied the outcome of the execution before this one (``after``), so
   it runs the cell on the committed state, and loads that state;
2. the executor acquires its GPUs, runs the cell, moves CUDA state to host, releases the GPUs and
   commits the cell's state change (the one commit on the cell's path), and only then replies: an
   ``ok`` is durable. If the others aborted the cell first, it undoes the cell and replies an error;
3. standbys wait for the outcome in the log (or declare the executor lost: disconnected for a
   while, or replaced by a new process) and load the state before they take the next message.

Run as ``python -m notebookos.kernel.replica``; configured from the environment (docs/kernel.md).
"""

from __future__ import annotations

import asyncio
import faulthandler
import inspect
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections import deque
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from tornado.ioloop import PeriodicCallback

from notebookos.kernel import checkpoint
from notebookos.kernel import contract as c
from notebookos.kernel.checkpoint import CheckpointError
from notebookos.kernel.config import ConfigError, ReplicaConfig
from notebookos.kernel.coordinator import RESTART_GRACE, STATUS_PERIOD, Coordinator, Execution, Runtime
from notebookos.kernel.raftlog import RaftError
from notebookos.labels import channel_ports

__all__ = ["RESTART_GRACE", "STATUS_PERIOD", "Execution", "ReplicaKernel", "Runtime", "kernel_class", "main"]

log = logging.getLogger("notebookos.kernel.replica")

RECENT_REPLIES = 16  # kept for a router that restarted while they were sent


class ReplicaKernel(IPythonKernel):
    """The ipykernel hooks of a replica; the cell protocol itself is the Coordinator's
    (notebookos.kernel.coordinator), which decides and returns contents this class sends."""

    implementation = "notebookos"
    implementation_version = "0.1.0"
    runtime: Runtime | None = None  # set on the class made by kernel_class(); ipykernel makes the instance

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.runtime is None:
            raise RuntimeError("ReplicaKernel needs a Runtime: use kernel_class(runtime) (main() does)")
        self.nb = self.runtime
        self.coord = Coordinator(self.runtime, self._sh)
        self._nb_exec: Execution | None = None
        self._nb_inflight: dict[str, dict[str, Any]] = {}  # exec id -> request header, while handled
        self._nb_recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REPLIES)
        self.control_handlers[c.UPDATE_PEER_REQUEST] = self.nb_update_peer_request
        self.control_handlers[c.STATUS_REQUEST] = self.nb_status_request
        self.control_handlers[c.CHECKPOINT_REQUEST] = self.nb_checkpoint_request

    @property
    def _sh(self) -> Any:
        return self.shell

    @property
    def _sess(self) -> Any:
        return self.session

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        self.nb.loop = asyncio.get_event_loop()
        self.nb.changed = asyncio.Event()
        # Keep an idle replica's namespace current (also a restarted one catching up).
        self._nb_pc = PeriodicCallback(self._nb_background_apply, 100)
        self._nb_pc.start()
        self._nb_hello_task = asyncio.ensure_future(self.coord.hello())

    async def _nb_background_apply(self) -> None:
        if self._nb_exec is None and not self.coord.busy:
            await self.nb_materialize()

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        try:
            self.nb.raft.destroy()
        except Exception:
            log.exception("destroying Raft")
        result = super().do_shutdown(restart)
        if inspect.isawaitable(result):
            result = await result
        return dict(result)

    async def nb_materialize(self) -> list[str]:
        return await self.coord.materialize()

    # --- execute -------------------------------------------------------------------------------------

    async def execute_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        meta = parent.get("metadata")
        nb = meta.get(c.META) if isinstance(meta, dict) else None
        nb = nb if isinstance(nb, dict) else {}
        exec_id = str(nb.get("execution_id") or parent["header"]["msg_id"])
        target, after = nb.get("target"), nb.get("after")
        ex = Execution(exec_id, target if isinstance(target, int) else None, after if isinstance(after, str) else None)
        waited = nb.get("waited")
        ex.waited = float(waited) if isinstance(waited, int | float) and not isinstance(waited, bool) else 0.0
        self._nb_inflight[exec_id] = parent["header"]
        try:
            await self._nb_handle(stream, ident, parent, ex)
        finally:
            self._nb_inflight.pop(exec_id, None)

    async def _nb_handle(self, stream: Any, ident: Any, parent: dict[str, Any], ex: Execution) -> None:
        content = await self.coord.decide(ex)
        if content is not None:
            self._nb_reply(stream, ident, parent, ex, content)
        elif ex.role == c.EXECUTOR:
            await self._nb_execute(stream, ident, parent, ex)
        else:
            self._nb_reply(stream, ident, parent, ex, await self.coord.standby(ex))

    async def _nb_execute(self, stream: Any, ident: Any, parent: dict[str, Any], ex: Execution) -> None:
        cfg = self.nb.cfg
        self._sess.send(
            self.iopub_socket,
            c.LEAD,
            {"replica": cfg.replica_id, "execution_id": ex.exec_id, "node": cfg.node},
            parent=parent,
            ident=self._topic(c.LEAD),
        )
        started, content = await self.coord.prepare(ex)
        if content is not None:
            self._nb_reply(stream, ident, parent, ex, content)
            return
        self._nb_exec = ex
        try:
            await super().execute_request(stream, ident, parent)  # runs do_execute, which commits, then replies
        finally:
            self._nb_exec = None
            self.coord.after_reply(ex)
            if not started.done():
                started.cancel()

    def _abort_queues(self, subshell_id: str | None = None) -> None:
        """Never: the router holds the queue and aborts it after an error; what reached a replica
        was sent to every replica, and each must answer it with its role, or the others wait."""

    async def do_execute(self, code: str, silent: bool, *args: Any, **kwargs: Any) -> dict[str, Any]:
        ex = self._nb_exec
        if ex is None:
            return await super().do_execute(code, silent, *args, **kwargs)

        async def run() -> dict[str, Any]:
            return await super(ReplicaKernel, self).do_execute(code, silent, *args, **kwargs)

        return await self.coord.execute(ex, code, run)

    def _nb_reply(
        self, stream: Any, ident: Any, parent: dict[str, Any], ex: Execution, content: dict[str, Any]
    ) -> None:
        content.setdefault("execution_count", self._sh.execution_count - 1)
        md = {"status": content["status"], c.META: self.coord.meta(ex)}
        self._nb_remember(parent, content, md)
        self._sess.send(stream, "execute_reply", content, parent, metadata=md, ident=ident)

    def _nb_remember(self, parent: dict[str, Any], content: dict[str, Any], md: dict[str, Any]) -> None:
        """Keep the reply for a router that restarts before it arrives (see nb_info)."""
        self._nb_recent.append({"parent": parent["header"], "content": content, "metadata": md, "at": time.time()})

    def finish_metadata(self, parent: Any, metadata: dict[str, Any], reply_content: dict[str, Any]) -> dict[str, Any]:
        md: dict[str, Any] = super().finish_metadata(parent, metadata, reply_content)
        if self._nb_exec is not None:
            md[c.META] = self.coord.meta(self._nb_exec)
            self._nb_remember(parent, reply_content, md)
        return md

    # --- info and control ------------------------------------------------------------------------------

    def nb_info(self, recovery: bool = False) -> dict[str, Any]:
        """The replica's view; with recovery, also the requests it is handling and its last
        replies (what a restarted router needs, see router.recover)."""
        return {
            **self.coord.view(),
            **({"inflight": list(self._nb_inflight.values()), "recent": list(self._nb_recent)} if recovery else {}),
        }

    @property
    def kernel_info(self) -> dict[str, Any]:
        info: dict[str, Any] = dict(super().kernel_info)
        try:
            info["notebookos"] = self.nb_info()
        except Exception:
            pass
        return info

    async def nb_status_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        self._sess.send(
            stream,
            c.STATUS_REPLY,
            {"status": "ok", **self.nb_info(recovery=(parent.get("content") or {}).get("recovery") is True)},
            parent,
            ident=ident,
        )

    async def nb_update_peer_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        """Commit a moved replica's new Raft address (from the router or the operator)."""
        req = parent.get("content") or {}
        try:
            rid, host, port = int(req["replica"]), str(req["host"]), int(req["port"])
            await self.coord.set_peer(rid, host, port)
            content: dict[str, Any] = {"status": "ok", "replica": rid, "address": f"{host}:{port}"}
        except Exception as e:
            content = {"status": "error", "ename": type(e).__name__, "evalue": str(e), "traceback": []}
        self._sess.send(stream, c.UPDATE_PEER_REPLY, content, parent, ident=ident)

    async def nb_checkpoint_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        """Save the kernel's state for hibernation (checkpoint.py). The router sends it only while
        no cell runs; it is refused if one does."""
        try:
            if self._nb_exec is not None or self.coord.busy:
                raise RuntimeError(c.BUSY)
            await self.coord.commit("barrier", deadline=30.0)  # everything committed is applied here
            content: dict[str, Any] = {"status": "ok", **(await asyncio.to_thread(self._nb_checkpoint))}
        except Exception as e:
            log.warning("checkpoint failed: %s", e)
            content = {"status": "error", "ename": type(e).__name__, "evalue": str(e), "traceback": []}
        self._sess.send(stream, c.CHECKPOINT_REPLY, content, parent, ident=ident)

    def _nb_checkpoint(self) -> dict[str, Any]:
        self.nb.tracker.flush()  # this replica's large values of its last cell are written
        return checkpoint.write(self.nb.store, self.nb.cfg.kernel, self.nb.raft.state.export())


def kernel_class(runtime: Runtime) -> type[ReplicaKernel]:
    """The kernel class IPKernelApp instantiates, bound to this process's runtime (no global)."""
    return type("ReplicaKernel", (ReplicaKernel,), {"runtime": runtime})


def write_connection_file(cfg: ReplicaConfig) -> str:
    ports = channel_ports(cfg.jupyter_port)
    path = cfg.data_dir / "connection.json"
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "ip": cfg.jupyter_ip,
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "key": cfg.key.decode(),
        "kernel_name": "notebookos",
        **{f"{k}_port": v for k, v in ports.items()},
    }
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    # ipykernel captures fd 2 and sends it to the client as cell output: log to a copy of it.
    logstream = os.fdopen(os.dup(2), "w", buffering=1)
    logging.basicConfig(
        level=os.environ.get("NOTEBOOKOS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(message)s",
        stream=logstream,
    )
    faulthandler.register(signal.SIGUSR1, file=logstream, all_threads=True)  # stack dumps on demand
    try:
        cfg = ReplicaConfig.from_env()
    except ConfigError as e:
        print(f"notebookos replica: {e}", file=sys.stderr)
        return 2
    try:
        runtime = Runtime(cfg)
    except CheckpointError as e:
        print(f"notebookos replica: cannot wake the kernel: {e}", file=sys.stderr)
        return 3
    except RaftError as e:
        print(f"notebookos replica: {e}", file=sys.stderr)
        return 1
    cf = write_connection_file(cfg)
    app = IPKernelApp.instance(kernel_class=kernel_class(runtime), connection_file=cf, parent_handle=0)
    code = 0
    try:
        app.initialize(["--IPKernelApp.connection_file=" + cf, "--HistoryManager.enabled=False"])
        app.start()
    except SystemExit as e:
        code = int(e.code or 0)
    except Exception:
        traceback.print_exc()
        code = 1
    try:
        runtime.raft.destroy()  # flush the journal (idempotent after do_shutdown)
    except Exception:
        pass
    return code


if __name__ == "__main__":
    rc = main()
    logging.shutdown()
    # ipykernel and PySyncObj leave non-daemon threads behind; the kernel is done, so leave now.
    os._exit(rc)

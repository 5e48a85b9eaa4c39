"""One replica of a NotebookOS kernel: an IPython kernel whose cells are agreed through Raft.

Per execute_request (every replica gets every one, from the router):

1. bring the namespace up to the committed state;
2. agree on the executor: the router's target confirmed by one Raft commit (``decide``), or the
   LEAD/YIELD election when there is no target; if every replica yields, reply "overloaded";
3. the executor acquires its GPUs, runs the cell, moves CUDA state to host, releases the GPUs,
   replies, and commits the cell's state change; standbys wait for that commit (or declare the
   executor lost) and load the state before they take the next message.

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
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from ipykernel.kernelapp import IPKernelApp
from tornado.ioloop import PeriodicCallback

from notebookos.kernel import gpu
from notebookos.kernel.broker import BrokerClient, Granted, Refused, broker_from_config
from notebookos.kernel.config import ConfigError, ReplicaConfig, channel_ports
from notebookos.kernel.raftlog import FAILED, BlobRef, KernelRaft, RaftError
from notebookos.kernel.report import LogReporter, reporter_from_env
from notebookos.kernel.statesync import StateTracker
from notebookos.kernel.store import ObjectStore

log = logging.getLogger("notebookos.kernel.replica")

OVERLOADED = "NotebookOSOverloaded"
STATUS_PERIOD = 10.0
EXECUTOR_LOST = "NotebookOSExecutorLost"


@dataclass
class Execution:
    exec_id: str
    target: int | None
    role: str = "pending"  # executor | standby | overloaded | aborted | duplicate
    executor: int | None = None
    grant: Granted | None = None
    devices: tuple[str, ...] = ()  # what the grant gave, kept after its release for the reply
    refusal: str | None = None
    before: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Runtime:
    """What the kernel adds to ipykernel: config, Raft, state tracker, broker."""

    def __init__(self, cfg: ReplicaConfig, broker: BrokerClient | None = None) -> None:
        self.cfg = cfg
        self.broker = broker if broker is not None else broker_from_config(cfg.broker)
        self.store = ObjectStore(cfg.store_url)
        self.tracker = StateTracker(self.store, cfg.threshold, cfg.kernel)
        self.changed: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.raft = KernelRaft(cfg.replica_id, cfg.peers, cfg.raft_bind, cfg.data_dir / "raft", self._on_change)
        self.boot_id = uuid.uuid4().hex
        self.reporter = reporter_from_env(cfg.kernel)
        if not isinstance(self.reporter, LogReporter):
            threading.Thread(target=self._report_loop, name="notebookos-status", daemon=True).start()

    def _report_loop(self) -> None:
        """The replica's own status fields (Raft view, heartbeat), every STATUS_PERIOD seconds."""
        while True:
            try:
                st = self.raft.obj.getStatus()
                leader = self.raft.leader()
                role = "Leader" if leader == self.cfg.replica_id else "Follower" if leader else "Candidate"
                raft = {"role": role, "term": int(st.get("raft_term", 0)), "commitIndex": int(st.get("commit_idx", 0))}
                self.reporter.replica(self.cfg.replica_id, raft)
            except Exception:
                log.exception("reporting the replica's status")
            time.sleep(STATUS_PERIOD)

    def _on_change(self) -> None:
        loop, ev = self.loop, self.changed
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)


RUNTIME: Runtime | None = None


class ReplicaKernel(IPythonKernel):
    implementation = "notebookos"
    implementation_version = "0.1.0"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if RUNTIME is None:
            raise RuntimeError("ReplicaKernel needs notebookos.kernel.replica.RUNTIME (start it with main())")
        self.nb = RUNTIME
        self._nb_exec: Execution | None = None
        self._nb_lock = asyncio.Lock()
        self.control_handlers["notebookos_update_peer_request"] = self.nb_update_peer_request
        self.control_handlers["notebookos_status_request"] = self.nb_status_request

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
        self._nb_hello_done = asyncio.Event()
        self._nb_hello_task = asyncio.ensure_future(self._nb_hello())

    async def _nb_hello(self) -> None:
        """Tell the group this process is the replica now (see KernelState.hello). Cells wait for it,
        so the others never mistake this process's first cell for a cell of its predecessor."""
        try:
            await self._nb_commit("hello", self.nb.cfg.replica_id, self.nb.boot_id, deadline=3600.0)
        except Exception:
            log.exception("could not announce replica %s to the group", self.nb.cfg.replica_id)
        finally:
            self._nb_hello_done.set()

    async def _nb_background_apply(self) -> None:
        if self._nb_exec is None and not self._nb_lock.locked():
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

    # --- state -------------------------------------------------------------------------------------

    async def nb_materialize(self) -> list[str]:
        async with self._nb_lock:
            st = self.nb.raft.state
            for _ in range(5):
                try:
                    snap = st.snapshot()
                    break
                except RuntimeError:  # mutated by the Raft thread while copying
                    await asyncio.sleep(0.001)
            else:
                return []
            if snap.version == self.nb.tracker.applied_version:
                return []
            try:
                names = self.nb.tracker.apply(snap, self._sh.user_ns)
            except Exception:
                log.exception("applying replicated state failed")
                return []
            if snap.exec_count + 1 > self._sh.execution_count:
                self._sh.execution_count = snap.exec_count + 1
            return names

    # --- executor choice ---------------------------------------------------------------------------

    async def _nb_acquire(self, ex: Execution) -> bool:
        cfg = self.nb.cfg
        if cfg.gpus == 0:
            return True
        if ex.grant is not None:
            return True
        if self.nb.broker is None:
            ex.refusal = "no GPU broker configured"
            return False
        try:
            r = await asyncio.to_thread(
                self.nb.broker.acquire, cfg.kernel, cfg.replica_id, cfg.node, cfg.gpus, ex.exec_id
            )
        except Exception as e:
            ex.refusal = f"broker error: {e}"
            return False
        if isinstance(r, Refused):
            ex.refusal = f"node {cfg.node}: {r.reason}"
            return False
        ex.grant = r
        ex.devices = r.devices
        return True

    async def _nb_release(self, ex: Execution) -> None:
        if ex.grant is None or self.nb.broker is None:
            return
        try:
            await asyncio.to_thread(self.nb.broker.release, ex.exec_id)
        except Exception:
            log.exception("releasing GPUs of %s", ex.exec_id)
        ex.grant = None

    async def _nb_commit(self, method: str, *args: Any, deadline: float = 60.0) -> Any:
        """Propose until committed: a Raft leader change must not lose a cell's decision."""
        end = time.monotonic() + deadline
        while True:
            try:
                return await asyncio.wait_for(self.nb.raft.call(method, *args), timeout=5.0)
            except (RaftError, TimeoutError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.05)

    async def _nb_choose(self, ex: Execution) -> int:
        st = self.nb.raft.state
        rid = self.nb.cfg.replica_id
        if ex.exec_id in st.decisions:
            return st.decisions[ex.exec_id]
        if ex.target is not None:
            return int(await self._nb_commit("decide", ex.exec_id, ex.target))
        # Fallback: the paper's LEAD/YIELD election.
        lead = await self._nb_acquire(ex)
        t0 = time.monotonic()
        result = await self._nb_commit("propose", ex.exec_id, rid, lead)
        while result is None:
            result = st.decisions.get(ex.exec_id)
            if result is not None:
                break
            if time.monotonic() - t0 > self.nb.cfg.election_timeout:
                result = await self._nb_commit("close", ex.exec_id)
                break
            await self._nb_wait_change(0.05)
        if result != rid:
            await self._nb_release(ex)
        return int(result)

    async def _nb_wait_change(self, timeout: float) -> None:
        ev = self.nb.changed
        if ev is None:
            await asyncio.sleep(timeout)
            return
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        ev.clear()

    # --- execute -------------------------------------------------------------------------------------

    async def execute_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        meta = parent.get("metadata") or {}
        nb = meta.get("notebookos") or {}
        exec_id = str(nb.get("execution_id") or parent["header"]["msg_id"])
        target = nb.get("target")
        ex = Execution(exec_id, int(target) if isinstance(target, int) else None)
        t0 = time.monotonic()
        await self.nb_materialize()
        st = self.nb.raft.state
        if exec_id in st.done:
            ex.role = "duplicate"
            self._nb_reply(stream, ident, parent, ex, {"status": "ok", "execution_count": st.exec_count})
            return
        try:
            # This process's hello precedes, in the log, any decision it takes part in.
            await asyncio.wait_for(self._nb_hello_done.wait(), timeout=60.0)
            winner = await self._nb_choose(ex)
        except Exception as e:
            ex.role = "aborted"
            self._nb_reply(
                stream, ident, parent, ex, _error(EXECUTOR_LOST, f"the replicas could not agree on an executor: {e}")
            )
            return
        ex.executor = winner
        ex.timings["choose"] = time.monotonic() - t0
        if winner == FAILED:
            ex.role = "overloaded"
            gpus = self.nb.cfg.gpus
            self._nb_reply(
                stream,
                ident,
                parent,
                ex,
                _error(
                    OVERLOADED,
                    f"kernel {self.nb.cfg.kernel} is overloaded: no replica could get {gpus} GPU(s) for this cell"
                    f"{' (' + ex.refusal + ')' if ex.refusal else ''}. NotebookOS is moving a replica to a node with "
                    "free GPUs; run the cell again in a moment.",
                ),
            )
            return
        if winner == self.nb.cfg.replica_id:
            await self._nb_execute(stream, ident, parent, ex)
        else:
            await self._nb_standby(stream, ident, parent, ex)

    async def _nb_execute(self, stream: Any, ident: Any, parent: dict[str, Any], ex: Execution) -> None:
        ex.role = "executor"
        self._sess.send(
            self.iopub_socket,
            "notebookos_lead",
            {"replica": self.nb.cfg.replica_id, "execution_id": ex.exec_id, "node": self.nb.cfg.node},
            parent=parent,
            ident=self._topic("notebookos_lead"),
        )
        self._nb_exec = ex
        code = parent["content"].get("code", "")
        try:
            await super().execute_request(stream, ident, parent)  # runs do_execute, sends the reply
        finally:
            self._nb_exec = None
        # All output is flushed and the reply sent: the router may tell the client the kernel is
        # idle now, while this replica commits the cell's state (the next request waits for it).
        self._sess.send(
            self.iopub_socket,
            "notebookos_done",
            {"replica": self.nb.cfg.replica_id, "execution_id": ex.exec_id},
            parent=parent,
            ident=self._topic("notebookos_done"),
        )
        await self._nb_sync(ex, code)

    async def _nb_sync(self, ex: Execution, code: str) -> None:
        t0 = time.monotonic()
        async with self._nb_lock:
            shell = self._sh
            st = self.nb.raft.state
            try:
                transformed = shell.transform_cell(code)
            except Exception:
                transformed = code
            cell = shell.execution_count - 1
            try:
                cs = self.nb.tracker.capture(
                    code=transformed,
                    before=ex.before,
                    ns=shell.user_ns,
                    hidden=shell.user_ns_hidden,
                    seq=st.blob_seq + 1,
                    exec_id=ex.exec_id,
                    cell=cell,
                    replica=self.nb.cfg.replica_id,
                )
                blob: BlobRef | None = cs.blob
                changed, deleted = cs.changed, cs.deleted
            except Exception:
                log.exception("capturing the state of %s", ex.exec_id)
                blob, changed, deleted = None, [], []
            try:
                result = await self._nb_commit(
                    "commit", ex.exec_id, self.nb.cfg.replica_id, cell, code, blob, changed, deleted
                )
            except Exception:
                log.exception("committing the state of %s failed; standbys will declare this replica lost", ex.exec_id)
                return
            if result == "aborted":
                log.error(
                    "execution %s was aborted by the other replicas; reverting to the committed state", ex.exec_id
                )
            self.nb.tracker.applied_version = -1
        await self.nb_materialize()
        log.info(
            "cell %s: choose %.1f ms, sync %.1f ms, %d changed",
            ex.exec_id,
            ex.timings.get("choose", 0) * 1e3,
            (time.monotonic() - t0) * 1e3,
            len(changed),
        )

    async def do_execute(self, code: str, silent: bool, *args: Any, **kwargs: Any) -> dict[str, Any]:
        ex = self._nb_exec
        if ex is None:
            return await super().do_execute(code, silent, *args, **kwargs)
        ns = self._sh.user_ns
        if not await self._nb_acquire(ex):
            return _error(OVERLOADED, f"the GPUs for this cell could not be acquired ({ex.refusal}); run it again")
        devices = gpu.expose(ns, ex.grant.devices if ex.grant else ())
        ex.before = self.nb.tracker.before_cell(ns, self._sh.user_ns_hidden)
        try:
            return await super().do_execute(code, silent, *args, **kwargs)
        finally:
            if devices or "torch" in sys.modules:
                gpu.offload(ns, list(ns))
            await self._nb_release(ex)

    async def _nb_standby(self, stream: Any, ident: Any, parent: dict[str, Any], ex: Execution) -> None:
        ex.role = "standby"
        st = self.nb.raft.state
        lost_since: float | None = None
        executor = ex.executor or 0
        boot = st.boots.get(executor)
        while ex.exec_id not in st.done:
            now_boot = st.boots.get(executor)
            if boot is None:
                boot = now_boot  # the executor had not announced itself yet: this is its baseline
            elif now_boot != boot:
                # The executor's process was replaced (same id, maybe same address): its cell is lost.
                try:
                    await self._nb_commit("abort", ex.exec_id, deadline=10.0)
                except Exception:
                    log.exception("could not commit the abort of %s", ex.exec_id)
                continue
            if not self.nb.raft.connected(executor):
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > self.nb.cfg.executor_lost_timeout:
                    try:
                        await self._nb_commit("abort", ex.exec_id, deadline=10.0)
                    except Exception:
                        log.exception("could not commit the abort of %s", ex.exec_id)
                    continue
            else:
                lost_since = None
            await self._nb_wait_change(0.05)
        await self.nb_materialize()
        if st.done.get(ex.exec_id) == "aborted":
            ex.role = "aborted"
            content = _error(
                EXECUTOR_LOST,
                f"replica {ex.executor}, which was running this cell, was lost; the kernel's state is that of the "
                "last completed cell. Run the cell again.",
            )
        else:
            content = {"status": "ok", "execution_count": st.exec_count, "user_expressions": {}, "payload": []}
        self._nb_reply(stream, ident, parent, ex, content)

    def _nb_reply(
        self, stream: Any, ident: Any, parent: dict[str, Any], ex: Execution, content: dict[str, Any]
    ) -> None:
        content.setdefault("execution_count", self._sh.execution_count - 1)
        md = {"status": content["status"], "notebookos": self._nb_meta(ex)}
        self._sess.send(stream, "execute_reply", content, parent, metadata=md, ident=ident)

    def _nb_meta(self, ex: Execution) -> dict[str, Any]:
        return {
            "replica": self.nb.cfg.replica_id,
            "role": ex.role,
            "executor": ex.executor,
            "execution_id": ex.exec_id,
            "node": self.nb.cfg.node,
            "devices": list(ex.devices),
        }

    def finish_metadata(self, parent: Any, metadata: dict[str, Any], reply_content: dict[str, Any]) -> dict[str, Any]:
        md: dict[str, Any] = super().finish_metadata(parent, metadata, reply_content)
        if self._nb_exec is not None:
            md["notebookos"] = self._nb_meta(self._nb_exec)
        return md

    # --- info and control ------------------------------------------------------------------------------

    def nb_info(self) -> dict[str, Any]:
        from notebookos.kernel.raftlog import addresses

        st = self.nb.raft.state
        return {
            "replica": self.nb.cfg.replica_id,
            "kernel": self.nb.cfg.kernel,
            "node": self.nb.cfg.node,
            "raft": self.nb.raft.status(),
            "peers": {rid: str(a) for rid, a in addresses().items()},
            "exec_count": st.exec_count,
            "last_executor": st.last_executor,
            "state_version": st.version,
            "applied_version": self.nb.tracker.applied_version,
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
        self._sess.send(stream, "notebookos_status_reply", {"status": "ok", **self.nb_info()}, parent, ident=ident)

    async def nb_update_peer_request(self, stream: Any, ident: Any, parent: dict[str, Any]) -> None:
        """Commit a moved replica's new Raft address (from the router or the operator)."""
        c = parent.get("content") or {}
        try:
            rid, host, port = int(c["replica"]), str(c["host"]), int(c["port"])
            if rid not in self.nb.raft.nodes or not host or not 0 < port < 65536:
                raise ValueError(f"unknown replica {rid} or bad address {host}:{port}")
            await asyncio.wait_for(self.nb.raft.call("set_peer", rid, host, port), timeout=10)
            content: dict[str, Any] = {"status": "ok", "replica": rid, "address": f"{host}:{port}"}
        except Exception as e:
            content = {"status": "error", "ename": type(e).__name__, "evalue": str(e), "traceback": []}
        self._sess.send(stream, "notebookos_update_peer_reply", content, parent, ident=ident)


def _error(ename: str, evalue: str) -> dict[str, Any]:
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


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
    global RUNTIME
    try:
        RUNTIME = Runtime(cfg)
    except RaftError as e:
        print(f"notebookos replica: {e}", file=sys.stderr)
        return 1
    cf = write_connection_file(cfg)
    app = IPKernelApp.instance(kernel_class=ReplicaKernel, connection_file=cf, parent_handle=0)
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
        RUNTIME.raft.destroy()  # flush the journal (idempotent after do_shutdown)
    except Exception:
        pass
    return code


if __name__ == "__main__":
    rc = main()
    logging.shutdown()
    # ipykernel and PySyncObj leave non-daemon threads behind; the kernel is done, so leave now.
    os._exit(rc)

"""A replica's side of the cell protocol, against the Raft log, the GPU broker and the state tracker.

The ``Coordinator`` decides and the kernel (``notebookos.kernel.replica``, an ipykernel subclass)
speaks Jupyter: every method here returns a decision or a reply's content, and none sends a
message. What only the kernel has, the IPython shell (namespace, execution count), comes in as a
small protocol, and the cell itself as a callable, so this module does not import ipykernel.

Per execute_request (see replica.py's docstring for the whole protocol):

* ``decide``: a duplicate, the router's target, or the LEAD/YIELD election (``choose``);
* the executor: ``prepare`` (``started``, then the previous execution's outcome), then ``execute``
  (GPUs acquired, the cell run, CUDA state to host, GPUs released, the state committed by ``sync``,
  undone by ``revert`` if the others aborted it first);
* a standby: ``standby`` waits for the outcome or declares the executor lost.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from notebookos.kernel import checkpoint, gpu
from notebookos.kernel import contract as c
from notebookos.kernel.broker import BrokerClient, Granted, Refused, broker_from_config
from notebookos.kernel.config import ReplicaConfig
from notebookos.kernel.contract import EXECUTOR_LOST, OVERLOADED
from notebookos.kernel.contract import error as _error
from notebookos.kernel.raftlog import FAILED, BlobRef, KernelRaft, RaftError
from notebookos.kernel.report import LogReporter, ReplicaReport, reporter_from_env
from notebookos.kernel.statesync import CellState, StateTracker
from notebookos.kernel.store import ObjectStore
from notebookos.policy.failover import StandbyView, executor_lost, replaced_since

# The replica's log: its lines read as they did before the protocol left the kernel class.
log = logging.getLogger("notebookos.kernel.replica")

STATUS_PERIOD = 10.0
RESTART_GRACE = 3.0  # a replaced executor's new process proposes `started` within this, or it lacks the cell


@dataclass
class Execution:
    exec_id: str
    target: int | None
    after: str | None = None  # the execution before this one, whose outcome the executor awaits
    role: str = "pending"  # one of contract.ROLES
    outcome: str | None = None  # contract.OK / ABORTED once the log has it
    executor: int | None = None
    grant: Granted | None = None
    devices: tuple[str, ...] = ()  # what the grant gave, kept after its release for the reply
    refusal: str | None = None
    before: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    waited: float = 0.0  # seconds the router held the cell waiting for GPUs before it came here
    to_save: CellState | None = None  # committed; its large values are written once the reply is out


class Runtime:
    """What the kernel adds to ipykernel: config, Raft, state tracker, broker."""

    def __init__(self, cfg: ReplicaConfig, broker: BrokerClient | None = None) -> None:
        self.cfg = cfg
        self.broker = broker if broker is not None else broker_from_config(cfg.broker)
        self.store = ObjectStore(cfg.store_url)
        self.tracker = StateTracker(self.store, cfg.threshold, cfg.kernel)
        self.tracker.give_up = self._writer_gone
        self._unreachable_since: dict[int, float] = {}
        self.changed: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reporter = reporter_from_env(cfg.kernel)
        saved = None
        if cfg.restore_url:
            try:
                saved = checkpoint.read(cfg.restore_url, cfg.kernel)
            except checkpoint.CheckpointError as e:
                self.reporter.restore_failed(cfg.replica_id, str(e))
                raise
            log.info("restoring checkpoint %s: %d variables, %d cells", cfg.restore_url, len(saved["vars"]),
                     saved["exec_count"])  # fmt: skip
        self.raft = KernelRaft(
            cfg.replica_id, cfg.peers, cfg.raft_bind, cfg.data_dir / "raft", self._on_change, restore=saved
        )
        self.boot_id = uuid.uuid4().hex
        if not isinstance(self.reporter, LogReporter):
            threading.Thread(target=self._report_loop, name="notebookos-status", daemon=True).start()

    def _writer_gone(self, replica: int) -> str | None:
        """Why an object replica ``replica`` has not written yet never will be (None: wait on).
        Called from the loading thread while it waits for the object."""
        if replica == self.cfg.replica_id:
            return None if self.tracker.uploading() else f"replica {replica} restarted before saving it"
        if self.raft.connected(replica):
            self._unreachable_since.pop(replica, None)
            return None
        since = self._unreachable_since.setdefault(replica, time.monotonic())
        if time.monotonic() - since > self.cfg.executor_lost_timeout:
            return f"replica {replica} has been unreachable for {time.monotonic() - since:.0f} s"
        return None

    def _report_loop(self) -> None:
        """The replica's own status fields (Raft view, heartbeat): looked at every STATUS_PERIOD
        seconds, written when the view changed or HEARTBEAT_PERIOD has passed (report.py)."""
        report = ReplicaReport()
        while True:
            try:
                st = self.raft.obj.getStatus()
                leader = self.raft.leader()
                role = "Leader" if leader == self.cfg.replica_id else "Follower" if leader else "Candidate"
                raft = {"role": role, "term": int(st.get("raft_term", 0)), "commitIndex": int(st.get("commit_idx", 0))}
                if report.due(raft, time.monotonic()) and self.reporter.replica(self.cfg.replica_id, raft):
                    report.done(raft, time.monotonic())
            except Exception:
                log.exception("reporting the replica's status")
            time.sleep(STATUS_PERIOD)

    def _on_change(self) -> None:
        loop, ev = self.loop, self.changed
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)


class Shell(Protocol):
    """What the coordinator uses of the IPython shell (ipykernel's ZMQInteractiveShell has it)."""

    user_ns: dict[str, Any]
    user_ns_hidden: dict[str, Any]
    execution_count: int

    def transform_cell(self, raw_cell: str) -> str: ...


class Coordinator:
    """The cell protocol of one replica process. ``start`` once the event loop runs."""

    def __init__(self, runtime: Runtime, shell: Shell) -> None:
        self.nb = runtime
        self.shell = shell
        self.lock = asyncio.Lock()  # held while the namespace is loaded from or committed to the log
        self.ready = asyncio.Event()  # set once this process's hello is in the log (or failed)

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    # --- lifecycle and state ---------------------------------------------------------------------

    async def hello(self) -> None:
        """Tell the group this process is the replica now (see KernelState.hello). Cells wait for it,
        so the others never mistake this process's first cell for a cell of its predecessor."""
        try:
            await self.commit("hello", self.nb.cfg.replica_id, self.nb.boot_id, deadline=3600.0)
        except Exception:
            log.exception("could not announce replica %s to the group", self.nb.cfg.replica_id)
        finally:
            self.ready.set()

    async def materialize(self) -> list[str]:
        async with self.lock:
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
                # In a thread: loading may wait for large values still being saved, and the
                # replica must keep answering meanwhile.
                if self.nb.tracker.needs_load(snap):
                    names = await asyncio.to_thread(self.nb.tracker.apply, snap, self.shell.user_ns)
                else:
                    names = self.nb.tracker.apply(snap, self.shell.user_ns)
            except Exception:
                log.exception("applying replicated state failed")
                return []
            if snap.exec_count + 1 > self.shell.execution_count:
                self.shell.execution_count = snap.exec_count + 1
            return names

    async def commit(self, method: str, *args: Any, deadline: float = 60.0) -> Any:
        """Propose until committed: a Raft leader change must not lose a cell's decision."""
        end = time.monotonic() + deadline
        while True:
            try:
                return await asyncio.wait_for(self.nb.raft.call(method, *args), timeout=5.0)
            except (RaftError, TimeoutError):
                if time.monotonic() > end:
                    raise
                await asyncio.sleep(0.05)

    async def wait_change(self, timeout: float) -> None:
        ev = self.nb.changed
        if ev is None:
            await asyncio.sleep(timeout)
            return
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            pass
        ev.clear()

    # --- GPUs --------------------------------------------------------------------------------------

    async def acquire(self, ex: Execution) -> bool:
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

    async def release(self, ex: Execution) -> None:
        if ex.grant is None or self.nb.broker is None:
            return
        try:
            await asyncio.to_thread(self.nb.broker.release, ex.exec_id)
        except Exception:
            log.exception("releasing GPUs of %s", ex.exec_id)
        ex.grant = None

    # --- executor choice -----------------------------------------------------------------------------

    async def decide(self, ex: Execution) -> dict[str, Any] | None:
        """Who runs ``ex``: sets its executor and role. Returns the reply's content when the cell ends
        here (a duplicate, no agreement, every replica overloaded), None to execute or stand by."""
        t0 = time.monotonic()
        st = self.nb.raft.state
        if ex.exec_id in st.done:
            ex.role, ex.outcome = c.DUPLICATE, st.done[ex.exec_id]
            return self.outcome_content(ex)
        rid = self.nb.cfg.replica_id
        try:
            if ex.target is None or ex.target == rid:
                # This process's hello precedes, in the log, anything it proposes for a cell.
                await asyncio.wait_for(self.ready.wait(), timeout=60.0)
            winner = ex.target if ex.target is not None else await self.choose(ex)
        except Exception as e:
            ex.role = c.ABORTED_ROLE
            return _error(EXECUTOR_LOST, f"the replicas could not agree on an executor: {e}")
        ex.executor = winner
        ex.timings["choose"] = time.monotonic() - t0
        if winner == FAILED:
            ex.role = c.OVERLOADED_ROLE
            return _error(OVERLOADED, self.overload_message(ex))
        ex.role = c.EXECUTOR if winner == rid else c.STANDBY
        return None

    async def choose(self, ex: Execution) -> int:
        """The paper's LEAD/YIELD election, when the router names no target."""
        st = self.nb.raft.state
        rid = self.nb.cfg.replica_id
        if ex.exec_id in st.decisions:
            return st.decisions[ex.exec_id]
        lead = await self.acquire(ex)
        t0 = time.monotonic()
        reason = "" if lead else ex.refusal or "no GPUs granted"
        result = await self.commit("propose", ex.exec_id, rid, lead, reason)
        while result is None:
            result = st.decisions.get(ex.exec_id)
            if result is not None:
                break
            if time.monotonic() - t0 > self.nb.cfg.election_timeout:
                result = await self.commit("close", ex.exec_id)
                break
            await self.wait_change(0.05)
        if result != rid:
            await self.release(ex)
        return int(result)

    # --- the executor ----------------------------------------------------------------------------------

    async def prepare(self, ex: Execution) -> tuple[asyncio.Future[Any], dict[str, Any] | None]:
        """Before the executor runs ``ex``: proposes ``started`` (returned, still running perhaps) and
        waits for the committed state. Also returns the reply's content if the cell ends here."""
        cfg, st = self.nb.cfg, self.nb.raft.state
        # Off the critical path: lets the others tell this process's cell from a predecessor's.
        started = asyncio.ensure_future(self.commit("started", ex.exec_id, cfg.replica_id, self.nb.boot_id))
        # Run on the committed state: wait until the log here has the previous execution's outcome
        # (or this cell's own entry, which follows everything before it).
        while not started.done() and (ex.after is None or ex.after not in st.done):
            await self.wait_change(0.05)
        if started.done() and started.exception() is not None and (ex.after is None or ex.after not in st.done):
            # No majority to catch up with: the cell must not run on what may be stale state.
            log.error("execution %s: cannot reach the other replicas; aborting it", ex.exec_id)
            await self.commit("abort", ex.exec_id, deadline=24 * 3600.0)
        if st.done.get(ex.exec_id) == c.ABORTED:  # this process was superseded before it began
            ex.role, ex.outcome = c.ABORTED_ROLE, c.ABORTED
            return started, self.outcome_content(ex)
        await self.materialize()
        return started, None

    async def execute(self, ex: Execution, code: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """Run the cell (``run``, the shell's do_execute) holding its GPUs, then commit it; returns
        the reply's content (the cell's own, or an error if its GPUs or its commit failed)."""
        ns = self.shell.user_ns
        if self.nb.tracker.uploading():  # the last cell's values may still be being saved
            await asyncio.to_thread(self.nb.tracker.flush)
        self.nb.tracker.flush()
        ex.before = self.nb.tracker.before_cell(ns, self.shell.user_ns_hidden)
        ran = await self.acquire(ex)
        if not ran:
            content = _error(OVERLOADED, f"the GPUs for this cell could not be acquired ({ex.refusal}); run it again")
        else:
            devices = gpu.expose(ns, ex.grant.devices if ex.grant else ())
            try:
                content = await run()
            finally:
                if devices or "torch" in sys.modules:
                    gpu.offload(ns, list(ns))
                gpu.withdraw()
                await self.release(ex)
        ex.outcome = await self.sync(ex, code, ran)
        if ex.outcome != c.OK:
            ex.role = c.ABORTED_ROLE
            lost = _error(
                EXECUTOR_LOST,
                f"the other replicas lost contact with replica {self.nb.cfg.replica_id} while it ran this cell; "
                "the cell's effects are undone and the kernel's state is that of the last completed cell. "
                "Run the cell again.",
            )
            return lost | {"execution_count": self.nb.raft.state.exec_count}
        return content

    async def sync(self, ex: Execution, code: str, ran: bool) -> str:
        """Commit the cell's state change; returns its outcome in the log (OK or ABORTED)."""
        t0 = time.monotonic()
        cfg = self.nb.cfg
        async with self.lock:
            shell = self.shell
            st = self.nb.raft.state
            try:
                transformed = shell.transform_cell(code)
            except Exception:
                transformed = code
            cell = shell.execution_count - 1
            blob: BlobRef | None
            blob, changed, deleted = None, [], []
            cs: CellState | None = None
            if ran:
                try:
                    cs = self.nb.tracker.capture(
                        code=transformed,
                        before=ex.before,
                        ns=shell.user_ns,
                        hidden=shell.user_ns_hidden,
                        seq=st.blob_seq + 1,
                        exec_id=ex.exec_id,
                        cell=cell,
                        replica=cfg.replica_id,
                    )
                    blob, changed, deleted = cs.blob, cs.changed, cs.deleted
                except Exception:
                    log.exception("capturing the state of %s", ex.exec_id)
            args = (ex.exec_id, cfg.replica_id, self.nb.boot_id, cell, code, blob, changed, deleted)
            try:
                outcome = str(await self.commit("commit", *args, deadline=120.0))
            except Exception:
                # The commit may still land: an abort settles which came first, and is the truth.
                log.exception("committing the state of %s failed; aborting it", ex.exec_id)
                outcome = str(await self.commit("abort", ex.exec_id, deadline=24 * 3600.0))
            if outcome == c.OK:
                ex.to_save = cs
            else:
                log.error("execution %s was aborted by the other replicas; undoing it", ex.exec_id)
                self.revert()
            self.nb.tracker.applied_version = -1
        await self.materialize()
        log.info(
            "cell %s: choose %.1f ms, sync %.1f ms, %d changed, %s",
            ex.exec_id,
            ex.timings.get("choose", 0) * 1e3,
            (time.monotonic() - t0) * 1e3,
            len(changed),
            outcome,
        )
        return outcome

    def after_reply(self, ex: Execution) -> None:
        """The executor's reply is out: write the cell's large values now, in the background.
        Started earlier, writing 1 GB competes with the reply it follows on a small node."""
        if ex.to_save is not None:
            self.nb.tracker.committed(ex.to_save)
            ex.to_save = None

    def revert(self) -> None:
        """Back to the committed state: every value reloaded from the log, so objects the aborted
        cell changed in place are replaced too."""
        snap = self.nb.raft.state.snapshot_retrying()
        try:
            self.nb.tracker.revert(snap, self.shell.user_ns, self.shell.user_ns_hidden)
        except Exception:
            log.exception("reverting to the committed state failed")

    # --- a standby -----------------------------------------------------------------------------------

    async def standby(self, ex: Execution) -> dict[str, Any]:
        """Wait for the outcome of ``ex`` in the log, aborting it if its executor is lost, and load
        the state; returns the standby's reply content."""
        ex.role = c.STANDBY
        st = self.nb.raft.state
        executor = ex.executor or 0
        baseline = st.boots.get(executor)
        replaced_at: float | None = None
        lost_since: float | None = None
        seen = False  # connected to the executor at some point while waiting
        t0 = time.monotonic()
        lost_after = self.nb.cfg.executor_lost_timeout
        while ex.exec_id not in st.done:
            now = time.monotonic()
            # A new process of the executor that has not said it runs this cell: the request may
            # have gone to its predecessor.
            replaced_at = replaced_since(replaced_at, now, st.boots.get(executor) != baseline, ex.exec_id in st.running)
            if self.nb.raft.connected(executor):
                seen, lost_since = True, None
            else:
                lost_since = lost_since or now
            view = StandbyView(now, t0, replaced_at, lost_since, seen)
            reason = executor_lost(view, lost_after, RESTART_GRACE)
            if reason:
                log.warning("execution %s: executor %d %s; aborting it", ex.exec_id, executor, reason)
                try:
                    await self.commit("abort", ex.exec_id, deadline=10.0)
                except Exception:
                    log.exception("could not commit the abort of %s", ex.exec_id)
                continue
            await self.wait_change(0.05)
        await self.materialize()
        ex.outcome = st.done.get(ex.exec_id)
        if ex.outcome == c.ABORTED:
            ex.role = c.ABORTED_ROLE
        return self.outcome_content(ex)

    # --- reply contents ----------------------------------------------------------------------------

    def overload_message(self, ex: Execution) -> str:
        """Every replica's reason, from the log, so the user sees each full node once."""
        why = dict(self.nb.raft.state.refusals.get(ex.exec_id) or {})
        if ex.refusal:
            why.setdefault(self.nb.cfg.replica_id, ex.refusal)
        reasons = "; ".join(f"replica {r}: {why[r]}" for r in sorted(why))
        silent = sorted(set(self.nb.raft.nodes) - set(why))
        if silent:
            reasons += f"{'; ' if reasons else ''}no answer from replica {', '.join(map(str, silent))}"
        tried = (
            f" It waited {ex.waited:.0f} s for a replica to move to a node with free GPUs or for a new GPU node."
            if ex.waited
            else ""
        )
        return (
            f"kernel {self.nb.cfg.kernel} is overloaded: no replica could get {self.nb.cfg.gpus} GPU(s) for this "
            f"cell ({reasons}).{tried} Run the cell again once GPUs are free on one of these nodes."
        )

    def outcome_content(self, ex: Execution) -> dict[str, Any]:
        st = self.nb.raft.state
        if ex.outcome == c.ABORTED:
            return _error(
                EXECUTOR_LOST,
                f"replica {ex.executor}, which was running this cell, was lost; the cell's effects are undone "
                "and the kernel's state is that of the last completed cell. Run the cell again.",
            ) | {"execution_count": st.exec_count}
        return {"status": "ok", "execution_count": st.exec_count, "user_expressions": {}, "payload": []}

    def meta(self, ex: Execution) -> dict[str, Any]:
        """The replica's fields of an execute_reply's metadata (contract.META)."""
        return {
            "replica": self.nb.cfg.replica_id,
            "role": ex.role,
            "executor": ex.executor,
            "execution_id": ex.exec_id,
            "node": self.nb.cfg.node,
            "devices": list(ex.devices),
            "boot": self.nb.boot_id,
            "outcome": ex.outcome,
        }

    # --- info and control ------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """The replica's view of its group and state (the kernel adds what it is handling)."""
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
            "boot": self.nb.boot_id,
            "ready": self.ready.is_set(),
        }

    async def set_peer(self, rid: int, host: str, port: int) -> None:
        """Commit a moved replica's new Raft address; ValueError for an unknown one or a bad address."""
        if rid not in self.nb.raft.nodes or not host or not 0 < port < 65536:
            raise ValueError(f"unknown replica {rid} or bad address {host}:{port}")
        await self.commit("set_peer", rid, host, port, deadline=10.0)  # retried over a leader change

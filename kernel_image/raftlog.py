"""The kernel's Raft group: one PySyncObj group per kernel, the replicated state machine of
executor choice and state sync, and peer addresses that survive a replica moving.

The state machine is tiny and applied on PySyncObj's thread: it only records decisions and
references to pickled state (inline bytes or object-store URLs). The replica's main thread loads
the referenced state into the namespace, so a large load never stalls Raft heartbeats.
"""

from __future__ import annotations

import asyncio
import copy
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pysyncobj.dns_resolver
import pysyncobj.syncobj
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.node import TCPNode

from notebookos.kernel.config import Address
from notebookos.kernel.contract import ABORTED, OK

# PySyncObj draws its election timeouts (at every heartbeat) from the module-global generator,
# which is the user's: `random.seed(1234)` in a cell would not give what ipykernel gives. Give it
# private generators (a Random instance has the same random() and choice()).
pysyncobj.syncobj.random = random.Random()
pysyncobj.dns_resolver.random = random.Random()

FAILED = 0  # decision value when no replica can execute (all yielded / election closed)
KEEP_DECISIONS = 512  # bounded history of per-execution records


# --- peers ------------------------------------------------------------------------------------------

_ADDRESSES: dict[int, Address] = {}
_ADDR_LOCK = threading.Lock()


class PeerNode(TCPNode):
    """A Raft member named by its replica id, not its address.

    PySyncObj identifies members by their address string. The id stays "replica-N:0" for the
    replica's life while the host and port it is reached at come from an address table that a
    committed ``set_peer`` entry (or the environment at start) updates, so a moved replica keeps
    its Raft identity and its log.
    """

    def __init__(self, replica_id: int) -> None:
        super().__init__(f"replica-{replica_id}:0")
        self.replica_id = replica_id

    @property
    def ip(self) -> str | None:
        with _ADDR_LOCK:
            addr = _ADDRESSES.get(self.replica_id)
        if addr is None:
            return None
        from pysyncobj.dns_resolver import globalDnsResolver

        return globalDnsResolver().resolve(addr.host)

    @property
    def port(self) -> int:
        with _ADDR_LOCK:
            addr = _ADDRESSES.get(self.replica_id)
        return addr.port if addr else 0


def set_addresses(addresses: dict[int, Address]) -> None:
    with _ADDR_LOCK:
        _ADDRESSES.update(addresses)


def addresses() -> dict[int, Address]:
    with _ADDR_LOCK:
        return dict(_ADDRESSES)


# --- replicated state ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlobRef:
    """One cell's pickled state: inline bytes, or the URL of an object holding them."""

    seq: int
    exec_id: str
    cell: int  # execution count of the cell that made it
    replica: int  # executor
    data: bytes | None
    url: str | None
    deps: tuple[int, ...] = ()  # blobs whose objects this one references (shared references)
    names: tuple[str, ...] = ()


@dataclass
class Snapshot:
    """What the main thread needs to bring its namespace up to date."""

    version: int
    vars: dict[str, int]  # variable -> blob seq holding its current value
    blobs: dict[int, BlobRef]
    exec_count: int
    last_executor: int
    history: list[str] = field(default_factory=list)


class KernelState(SyncObjConsumer):
    def __init__(self, members: int, on_change: Callable[[], None]) -> None:
        # Set before SyncObjConsumer.__init__, which records them as local (not replicated).
        self._on_change = on_change
        self._members = members
        super().__init__()
        # replicated state (everything set below is serialized into snapshots)
        self.decisions: OrderedDict[str, int] = OrderedDict()
        self.proposals: dict[str, dict[int, bool]] = {}
        # exec id -> replica -> why it yielded (its broker's refusal), kept for failed elections so
        # every replica's error names every node that was full, not just its own
        self.refusals: OrderedDict[str, dict[int, str]] = OrderedDict()
        self.done: OrderedDict[str, str] = OrderedDict()  # exec id -> OK | ABORTED
        # exec id -> (replica, boot) of the process that started running it, until it is done
        self.running: OrderedDict[str, tuple[int, str]] = OrderedDict()
        self.vars: dict[str, int] = {}
        self.blobs: dict[int, BlobRef] = {}
        self.blob_seq = 0
        self.exec_count = 0
        self.last_executor = 0
        self.history: list[str] = []
        self.peers: dict[int, tuple[str, int]] = {}
        self.boots: dict[int, str] = {}  # replica -> id of its current process (set by hello)
        self.version = 0

    def _deserialize(self, data: dict[str, Any]) -> None:
        super()._deserialize(data)
        set_addresses({rid: Address(*hp) for rid, hp in self.peers.items()})
        self._bump()

    def _bump(self) -> None:
        self.version += 1
        cb = getattr(self, "_on_change", None)
        if cb is not None:
            cb()

    @staticmethod
    def _trim(d: OrderedDict[str, Any]) -> None:
        while len(d) > KEEP_DECISIONS:
            d.popitem(last=False)

    # --- executor choice -----------------------------------------------------------------------------

    @replicated
    def propose(self, exec_id: str, replica: int, lead: bool, reason: str = "") -> int | None:
        """Fallback election: LEAD or YIELD (with the reason). The first committed LEAD wins (the
        log orders proposals identically everywhere); if every member yields, the execution fails."""
        props = self.proposals.setdefault(exec_id, {})
        props[replica] = lead
        if not lead and reason and exec_id not in self.decisions:
            self.refusals.setdefault(exec_id, {})[replica] = reason
            self._trim(self.refusals)
        if exec_id not in self.decisions:
            if lead:
                self.decisions[exec_id] = replica
            elif len(props) >= self._members and not any(props.values()):
                self.decisions[exec_id] = FAILED
                self.exec_count += 1  # a failed cell takes a number, as an error does in ipykernel
            if exec_id in self.decisions:
                self._trim(self.decisions)
                self.proposals.pop(exec_id, None)
                if self.decisions[exec_id] != FAILED:
                    self.refusals.pop(exec_id, None)
            self._bump()
        return self.decisions.get(exec_id)

    @replicated
    def close(self, exec_id: str) -> int:
        """The election window ended (a member is down): no LEAD so far means failure."""
        if exec_id not in self.decisions:
            self.decisions[exec_id] = FAILED
            self.exec_count += 1
            self.proposals.pop(exec_id, None)
            self._trim(self.decisions)
            self._bump()
        return self.decisions[exec_id]

    # --- state sync ------------------------------------------------------------------------------------

    @replicated
    def started(self, exec_id: str, replica: int, boot: str) -> str | None:
        """The executor's process (boot) has the request and runs it. Proposed without waiting, so
        it is off the cell's critical path; it lets a later hello of the same replica abort the
        cell (its process is gone). A started entry of a superseded process aborts at once."""
        if exec_id in self.done:
            return self.done[exec_id]
        if self.boots.get(replica) != boot:
            return self._abort(exec_id)
        self.running[exec_id] = (replica, boot)
        self._trim(self.running)
        self._bump()
        return None

    @replicated
    def commit(
        self,
        exec_id: str,
        replica: int,
        boot: str,
        exec_count: int,
        code: str,
        blob: BlobRef | None,
        changed: list[str],
        deleted: list[str],
    ) -> str:
        """The executor's state change, the cell's one commit on its critical path. Ignored if the
        execution was aborted first (its executor declared lost) or comes from a process that is
        no longer the replica, so the state stays that of the last committed cell."""
        if exec_id in self.done:
            return self.done[exec_id]
        if self.boots.get(replica) != boot:
            return self._abort(exec_id)
        self.running.pop(exec_id, None)
        self.done[exec_id] = OK
        self._trim(self.done)
        if blob is not None:
            self.blob_seq = max(self.blob_seq, blob.seq)
            self.blobs[blob.seq] = blob
            for name in changed:
                self.vars[name] = blob.seq
        for name in deleted:
            self.vars.pop(name, None)
        self.exec_count = max(self.exec_count, exec_count)
        self.last_executor = replica
        self.history.append(code)
        del self.history[:-200]
        self._gc()
        self._bump()
        return OK

    def _gc(self) -> None:
        live: set[int] = set()
        stack = list(set(self.vars.values()))
        while stack:
            seq = stack.pop()
            if seq in live or seq not in self.blobs:
                continue
            live.add(seq)
            stack.extend(self.blobs[seq].deps)
        for seq in [s for s in self.blobs if s not in live]:
            del self.blobs[seq]

    def _abort(self, exec_id: str) -> str:
        if exec_id not in self.done:
            self.done[exec_id] = ABORTED
            self._trim(self.done)
            self.running.pop(exec_id, None)
            self.exec_count += 1  # the lost cell keeps its number, as an error does in ipykernel
            self._bump()
        return self.done[exec_id]

    @replicated
    def abort(self, exec_id: str) -> str:
        return self._abort(exec_id)

    @replicated
    def hello(self, replica: int, boot: str) -> None:
        """A replica process announces itself: a new boot id for an id means its previous process,
        and any cell it was running, is gone (even if it came back at the same address in time)."""
        self.boots[replica] = boot
        for exec_id, (rid, b) in list(self.running.items()):
            if rid == replica and b != boot:
                self._abort(exec_id)
        self._bump()

    @replicated
    def barrier(self) -> int:
        """A no-op entry: once it is applied here, so is everything committed before it."""
        return self.exec_count

    @replicated
    def set_peer(self, replica: int, host: str, port: int) -> None:
        self.peers[replica] = (host, port)
        set_addresses({replica: Address(host, port)})
        self._bump()

    def snapshot(self) -> Snapshot:
        return Snapshot(
            version=self.version,
            vars=dict(self.vars),
            blobs=dict(self.blobs),
            exec_count=self.exec_count,
            last_executor=self.last_executor,
            history=list(self.history),
        )

    def snapshot_retrying(self) -> Snapshot:
        for _ in range(100):
            try:
                return self.snapshot()
            except RuntimeError:  # mutated by the Raft thread while copying
                time.sleep(0.001)
        return self.snapshot()

    # What a checkpoint keeps: the state a new group of replicas starts from when the kernel wakes.
    # Not the members' processes, addresses or elections in flight: those belong to the old pods.
    CHECKPOINTED = ("vars", "blobs", "blob_seq", "exec_count", "last_executor", "history", "done", "decisions")

    def export(self) -> dict[str, Any]:
        for _ in range(100):
            try:
                return {k: copy.copy(getattr(self, k)) for k in self.CHECKPOINTED}
            except RuntimeError:  # mutated by the Raft thread while copying
                time.sleep(0.001)
        return {k: copy.copy(getattr(self, k)) for k in self.CHECKPOINTED}

    def restore(self, saved: dict[str, Any]) -> None:
        """Start from a checkpoint, before the group starts. Every new member restores the same
        one, so they agree; entries committed after the wake apply on top of it."""
        missing = [k for k in self.CHECKPOINTED if k not in saved]
        if missing:
            raise ValueError(f"the checkpoint lacks {', '.join(missing)}")
        for k in self.CHECKPOINTED:
            setattr(self, k, saved[k])
        self._bump()

    def outcome(self, exec_id: str | None) -> str | None:
        return self.done.get(exec_id) if exec_id else None


# --- the group ---------------------------------------------------------------------------------------


class RaftError(RuntimeError):
    pass


class KernelRaft:
    """PySyncObj wiring: tuned for low commit latency, journal and snapshots in the data dir."""

    def __init__(
        self,
        replica_id: int,
        peers: dict[int, Address],
        bind: Address,
        data_dir: Path,
        on_change: Callable[[], None],
        restore: dict[str, Any] | None = None,
    ) -> None:
        set_addresses(peers)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.replica_id = replica_id
        self.state = KernelState(len(peers), on_change)
        if restore is not None:
            self.state.restore(restore)
        self.nodes = {rid: PeerNode(rid) for rid in peers}
        conf = SyncObjConf(
            bindAddress=str(bind),
            autoTick=True,
            autoTickPeriod=0.01,  # poll wake-ups; network events wake the poller sooner
            appendEntriesPeriod=0.05,  # heartbeat
            appendEntriesUseBatch=False,  # send each entry at once: commit latency over throughput
            raftMinTimeout=0.3,
            raftMaxTimeout=0.7,
            connectionTimeout=5.0,  # silent peers; a killed one is seen at once (connection reset)
            connectionRetryTime=0.3,
            commandsWaitLeader=True,
            journalFile=str(data_dir / "raft.journal"),
            fullDumpFile=str(data_dir / "raft.snapshot"),
            logCompactionMinEntries=500,
            logCompactionMinTime=30,
            useFork=False,  # never fork a process that holds ZMQ sockets and threads
            dynamicMembershipChange=False,
            bindRetryTime=0.5,
            maxBindRetries=20,
        )
        others = [n for rid, n in self.nodes.items() if rid != replica_id]
        self.obj = SyncObj(self.nodes[replica_id], others, conf=conf, consumers=[self.state])
        try:
            self.obj.waitBinded()
        except Exception as e:
            self.obj.destroy()
            raise RaftError(f"cannot listen for Raft peers on {bind}: {e or 'address in use?'}") from e

    def call(self, method: str, *args: Any, timeout: float = 10.0) -> asyncio.Future[Any]:
        """Propose a replicated call; the future resolves with its result once committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(result: Any, err: int) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if err == FAIL_REASON.SUCCESS:
                    fut.set_result(result)
                else:
                    fut.set_exception(RaftError(f"Raft {method} failed: reason {err}"))

            loop.call_soon_threadsafe(settle)

        getattr(self.state, method)(*args, callback=done)
        return fut

    def connected(self, replica: int) -> bool:
        if replica == self.replica_id:
            return True
        return bool(self.obj.isNodeConnected(self.nodes[replica]))

    def leader(self) -> int | None:
        node = self.obj._getLeader()
        return node.replica_id if isinstance(node, PeerNode) else None

    def status(self) -> dict[str, Any]:
        st = self.obj.getStatus()
        return {
            "leader": self.leader(),
            "term": st.get("raft_term"),
            "commit_index": st.get("commit_idx"),
            "connected": {rid: self.connected(rid) for rid in self.nodes},
        }

    def destroy(self) -> None:
        self.obj.destroy()

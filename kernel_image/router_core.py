"""The router's sockets and heartbeats: what every part of the router stands on.

The router is split along its seams: this module (sockets to clients and replicas, parsing and
signing, heartbeats, one-off control requests), ``router_exec`` (executions), ``router_members``
(replica addresses and views) and ``router`` (the client channels and the process).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from notebookos.kernel import contract as c
from notebookos.kernel.broker import BrokerClient, broker_from_config
from notebookos.kernel.config import Address, RouterConfig
from notebookos.kernel.report import LogReporter, Reporter
from notebookos.labels import channel_ports

log = logging.getLogger("notebookos.kernel.router")
DELIM = b"<IDS|MSG>"
HB_PERIOD = 0.3
HB_DEAD_AFTER = 3.0  # generous: a replica busy loading state may answer pings late


@dataclass
class Replica:
    rid: int
    address: Address
    sockets: dict[str, zmq.asyncio.Socket] = field(default_factory=dict)
    last_pong: float = 0.0
    node: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_pong < HB_DEAD_AFTER


@dataclass
class Execution:
    msg_id: str
    idents: list[bytes]
    header: dict[str, Any]
    sent_to: set[int]
    target: int | None
    executor: int | None = None
    replies: dict[int, tuple[dict[str, Any], list[bytes]]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    executor_idle: asyncio.Event = field(default_factory=asyncio.Event)
    errors_shown: set[str] = field(default_factory=set)  # enames of the IOPub errors forwarded
    waiting: bool = False  # for GPUs, before any replica has the request (see router_exec.py)
    waited: float = 0.0  # seconds it waited for GPUs
    full: set[int] = field(default_factory=set)  # replicas whose node's broker refused the GPUs
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)


class RouterCore:
    def __init__(self, cfg: RouterConfig, broker: BrokerClient | None = None, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.reporter: Reporter = reporter or LogReporter()
        self.session = Session(key=cfg.key, signature_scheme="hmac-sha256", username="notebookos-router")
        self.broker = broker if broker is not None else broker_from_config(cfg.broker)
        self.ctx = zmq.asyncio.Context()
        self.replicas = {rid: Replica(rid, addr) for rid, addr in sorted(cfg.replicas.items())}
        # Stable across router restarts: replies the replicas send after a restart reach the new
        # router (a replica's ROUTER socket routes by this identity).
        self.ident = f"nbos-router-{cfg.kernel}".encode()
        self.front: dict[str, zmq.asyncio.Socket] = {}
        self.queue: deque[tuple[list[bytes], dict[str, Any]]] = deque()
        self.queue_event = asyncio.Event()
        self.current: Execution | None = None
        # msg_id -> (channel, idents, replica) of requests sent to one replica; dropped once both the
        # reply and the idle status came back (they travel on different sockets, in either order).
        self.requests: dict[str, tuple[str, list[bytes], int]] = {}
        self.half_done: set[str] = set()
        self.shutdown_acks: set[int] = set()
        self.activity: tuple[int, int, str] | None = None  # executor, cells, when: for the status
        self.last_executor: int | None = None
        self.stopping = asyncio.Event()
        self.dropped = 0
        self.started = time.monotonic()
        self.majority_seen = False
        self._tasks: set[asyncio.Future[Any]] = set()
        self.overloads = 0
        self.after: str | None = None  # the last execution settled in the log (contract.py)
        self.settled: OrderedDict[str, None] = OrderedDict()  # executions answered to the client
        self.exec_count = 0  # the highest execution count seen, for the router's own errors

    def bind(self) -> dict[str, int]:
        ports = channel_ports(self.cfg.port)
        kinds = {"shell": zmq.ROUTER, "control": zmq.ROUTER, "stdin": zmq.ROUTER, "iopub": zmq.PUB, "hb": zmq.ROUTER}
        for name, kind in kinds.items():
            s = self.ctx.socket(kind)
            s.linger = 0
            s.setsockopt(zmq.SNDTIMEO, 0)  # replies to a vanished client are dropped, never block
            if kind == zmq.ROUTER:
                s.setsockopt(zmq.ROUTER_HANDOVER, 1)
            s.bind(f"tcp://{self.cfg.ip}:{ports[name]}")
            self.front[name] = s
        for r in self.replicas.values():
            self._connect(r)
        if self.cfg.connection_file:
            info = {
                "ip": self.cfg.ip,
                "transport": "tcp",
                "signature_scheme": "hmac-sha256",
                "key": self.cfg.key.decode(),
                "kernel_name": "notebookos",
                **{f"{k}_port": v for k, v in ports.items()},
            }
            self.cfg.connection_file.write_text(json.dumps(info))
        return ports

    def _connect(self, r: Replica) -> None:
        for s in r.sockets.values():
            s.close(linger=0)
        r.sockets = {}
        ports = channel_ports(r.address.port)
        host = r.address.host
        for name, kind in (
            ("shell", zmq.DEALER),
            ("control", zmq.DEALER),
            ("stdin", zmq.DEALER),
            ("iopub", zmq.SUB),
            ("hb", zmq.DEALER),
            ("probe", zmq.DEALER),
        ):
            s = self.ctx.socket(kind)
            s.linger = 0
            s.setsockopt(zmq.RECONNECT_IVL, 100)
            s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
            if kind == zmq.DEALER:
                s.setsockopt(zmq.IMMEDIATE, 1)  # never queue requests for a replica that is down
                s.setsockopt(zmq.SNDHWM, 1000)
                # A send to a replica that just died must fail at once, never block the router.
                s.setsockopt(zmq.SNDTIMEO, 0)
            if name in ("shell", "stdin"):
                s.setsockopt(zmq.ROUTING_ID, self.ident + b"-" + str(r.rid).encode())
            if kind == zmq.SUB:
                s.setsockopt(zmq.SUBSCRIBE, b"")
            port = ports["control" if name == "probe" else name]
            s.connect(f"tcp://{host}:{port}")
            r.sockets[name] = s

    def _repoint(self, r: Replica, address: Address) -> None:
        """Point a moved replica's sockets at its new address, in place. They are never replaced:
        closing a socket that a channel loop is awaiting ends that loop silently (the heartbeats
        of the replica stopped, and it was never seen alive again)."""
        old, new = channel_ports(r.address.port), channel_ports(address.port)
        for name, s in r.sockets.items():
            ch = "control" if name == "probe" else name
            try:
                s.disconnect(f"tcp://{r.address.host}:{old[ch]}")
            except zmq.ZMQError:
                pass  # never connected there
            s.connect(f"tcp://{address.host}:{new[ch]}")
        log.info("replica %d moved from %s to %s: re-pointed", r.rid, r.address, address)
        r.address = address
        r.last_pong = 0.0
        r.info = {}
        r.node = None  # learnt again from its probe: the broker grants GPUs on the node it is on

    def _parse(self, frames: list[bytes], what: str) -> tuple[list[bytes], dict[str, Any], list[bytes]] | None:
        """Split identities, verify the signature, parse. None (logged) for anything bad."""
        try:
            idents, rest = self.session.feed_identities(frames, copy=True)
            msg = self.session.deserialize(rest, content=True, copy=True)
        except Exception as e:
            self.dropped += 1
            log.warning("dropped a malformed or badly signed message on %s: %s", what, e)
            return None
        return cast(list[bytes], idents), msg, cast(list[bytes], rest)

    @staticmethod
    def _send_raw(sock: zmq.asyncio.Socket, idents: list[bytes], rest: list[bytes]) -> bool:
        """Send now or report failure (a DEALER with IMMEDIATE refuses when its peer is down).
        Through the asyncio socket itself: a second (shadow) handle on it would swallow the
        edge-triggered wake-ups its receiving task relies on."""
        fut = cast(asyncio.Future[Any], sock.send_multipart([*idents, DELIM, *rest], flags=zmq.NOBLOCK))
        return not (fut.done() and fut.exception() is not None)

    def _alive(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.alive]

    def _primary(self) -> Replica | None:
        alive = self._alive()
        if not alive:
            return None
        if self.last_executor is not None and self.replicas[self.last_executor].alive:
            return self.replicas[self.last_executor]
        return alive[0]

    def publish_status(self, state: str, parent: dict[str, Any]) -> None:
        self.session.send(
            self.front["iopub"], "status", {"execution_state": state}, parent=parent, ident=b"kernel.router.status"
        )

    def _display(self, parent: dict[str, Any], display_id: str, text: str, update: bool) -> None:
        """Output a front end renders in the cell, updated in place (one display id)."""
        content = {"data": {"text/plain": text}, "metadata": {}, "transient": {"display_id": display_id}}
        mtype = "update_display_data" if update else "display_data"
        self.session.send(self.front["iopub"], mtype, content, parent=parent, ident=b"kernel.router.display")

    def publish_error(self, parent: dict[str, Any], content: dict[str, Any]) -> None:
        """NotebookOS errors as IOPub `error` messages too: front ends render IOPub, not replies."""
        err = {k: content.get(k) for k in ("ename", "evalue", "traceback")}
        self.session.send(self.front["iopub"], "error", err, parent=parent, ident=b"kernel.router.error")

    def _reply_error(self, channel: str, idents: list[bytes], msg: dict[str, Any], ename: str, evalue: str) -> None:
        """An error reply of the router's own, framed by busy and idle like any request's."""
        mtype = str(msg["header"].get("msg_type") or "unknown_request")
        mtype = mtype[: -len("_request")] + "_reply" if mtype.endswith("_request") else mtype + "_reply"
        content = c.error(ename, evalue)
        if mtype == "execute_reply":
            content["execution_count"] = self.exec_count
            self.publish_error(msg["header"], content)
        self.publish_status("busy", msg["header"])
        self.session.send(self.front[channel], mtype, content, parent=msg["header"], ident=idents)
        self.publish_status("idle", msg["header"])

    def _background(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def heartbeats(self, r: Replica) -> None:
        n = 0
        while True:
            n += 1
            fut = cast(asyncio.Future[Any], r.sockets["hb"].send(str(n).encode(), flags=zmq.NOBLOCK))
            if fut.done():
                fut.exception()  # a replica that is down refuses the ping: retrieve, ignore
            deadline = time.monotonic() + HB_PERIOD
            while (left := deadline - time.monotonic()) > 0:
                try:
                    if await r.sockets["hb"].poll(int(left * 1000)):
                        await r.sockets["hb"].recv()
                        was = r.alive
                        r.last_pong = time.monotonic()
                        if not was:
                            log.info("replica %d is alive", r.rid)
                except zmq.ZMQError:
                    await asyncio.sleep(0.05)
                    break

    async def _ask(self, r: Replica, msg_type: str, content: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        """One control request to one replica on its own socket (the channel tasks own the others)."""
        sock = self.ctx.socket(zmq.DEALER)
        sock.linger = 0
        try:
            sock.setsockopt(zmq.SNDTIMEO, 0)
            sock.connect(f"tcp://{r.address.host}:{channel_ports(r.address.port)['control']}")
            self._send_raw(sock, [], self.session.serialize(self.session.msg(msg_type, content))[1:])
            if not await sock.poll(int(timeout * 1000)):
                return None
            parsed = self._parse(await sock.recv_multipart(), f"replica {r.rid} {msg_type}")
            return parsed[1] if parsed else None
        finally:
            sock.close(linger=0)

    async def _supervise(self, name: str, factory: Any) -> None:
        """Run a channel loop; log and restart it if it fails, so one bad message cannot silence
        a channel."""
        while not self.stopping.is_set():
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting it", name)
                await asyncio.sleep(0.1)

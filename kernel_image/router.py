"""The kernel's router: one Jupyter kernel to clients, three replicas behind it.

Clients connect to the router's five channels exactly as to any kernel (same HMAC key). The
router checks every message's signature (bad or malformed ones are dropped and logged), sends
each execute_request to all live replicas with the proposed executor and execution id in the
metadata, forwards only the executor's reply and output, merges busy/idle into one status, sends
every other request to one live replica, and answers heartbeats only while a majority of the
replicas is alive.

Run as ``python -m notebookos.kernel.router``; configured from the environment (docs/kernel.md).
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from notebookos.kernel.broker import BrokerClient, Granted, broker_from_config
from notebookos.kernel.config import Address, ConfigError, RouterConfig, channel_ports, parse_address
from notebookos.kernel.report import LogReporter, Reporter, now_rfc3339, reporter_from_env

log = logging.getLogger("notebookos.kernel.router")
DELIM = b"<IDS|MSG>"
HB_PERIOD = 0.3
HB_DEAD_AFTER = 3.0  # generous: a replica busy loading state may answer pings late
STARTUP_GRACE = 60.0
ACTIVITY_PERIOD = 5.0
OVERLOADED = "NotebookOSOverloaded"
EXECUTOR_LOST = "NotebookOSExecutorLost"


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
    executor_dead_since: float | None = None


class Router:
    def __init__(self, cfg: RouterConfig, broker: BrokerClient | None = None, reporter: Reporter | None = None) -> None:
        self.cfg = cfg
        self.reporter: Reporter = reporter or LogReporter()
        self.session = Session(key=cfg.key, signature_scheme="hmac-sha256", username="notebookos-router")
        self.broker = broker if broker is not None else broker_from_config(cfg.broker)
        self.ctx = zmq.asyncio.Context()
        self.replicas = {rid: Replica(rid, addr) for rid, addr in sorted(cfg.replicas.items())}
        self.ident = f"nbos-router-{os.getpid()}-{uuid.uuid4().hex[:6]}".encode()
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

    # --- sockets -----------------------------------------------------------------------------------

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

    # --- helpers ---------------------------------------------------------------------------------------

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

    # --- client side -------------------------------------------------------------------------------------

    async def client_shell(self) -> None:
        sock = self.front["shell"]
        while True:
            frames = await sock.recv_multipart()
            parsed = self._parse(frames, "shell")
            if parsed is None:
                continue
            idents, msg, rest = parsed
            if msg["header"].get("msg_type") == "execute_request":
                self.queue.append((idents, msg))
                self.queue_event.set()
                continue
            self._forward_one("shell", idents, msg, rest)

    def _forward_one(
        self, channel: str, idents: list[bytes], msg: dict[str, Any], rest: list[bytes], to: Replica | None = None
    ) -> None:
        task = asyncio.ensure_future(self._forward_one_async(channel, idents, msg, rest, to))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward_one_async(
        self, channel: str, idents: list[bytes], msg: dict[str, Any], rest: list[bytes], to: Replica | None
    ) -> None:
        msg_id = msg["header"]["msg_id"]
        # Replicas may still be starting, or one restarting (its heartbeat can answer before its
        # other channels are connected): keep trying the preferred replica, then the others.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            primary = to or self._primary()
            order = [primary] if primary else []
            if to is None:
                order += [r for r in self._alive() if r is not primary]
            for r in order:
                if self._send_raw(r.sockets[channel], [], rest):
                    self.requests[msg_id] = (channel, idents, r.rid)
                    log.debug("forwarded %s %s to replica %d", channel, msg["header"]["msg_type"], r.rid)
                    self._trim_requests()
                    return
            await asyncio.sleep(0.1)
        self._reply_error(channel, idents, msg, EXECUTOR_LOST, "no replica of this kernel is reachable right now")

    def _background(self, aw: Any) -> None:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _trim_requests(self) -> None:
        while len(self.requests) > 2048:
            oldest = next(iter(self.requests))
            self.requests.pop(oldest)
            self.half_done.discard(oldest)

    def _request_part_done(self, msg_id: str) -> None:
        if msg_id in self.half_done:
            self.half_done.discard(msg_id)
            self.requests.pop(msg_id, None)
        else:
            self.half_done.add(msg_id)

    def _reply_error(self, channel: str, idents: list[bytes], msg: dict[str, Any], ename: str, evalue: str) -> None:
        mtype = msg["header"]["msg_type"].replace("_request", "_reply")
        content = {"status": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self.publish_status("busy", msg["header"])
        self.session.send(self.front[channel], mtype, content, parent=msg["header"], ident=idents)
        self.publish_status("idle", msg["header"])

    async def client_control(self) -> None:
        sock = self.front["control"]
        while True:
            frames = await sock.recv_multipart()
            parsed = self._parse(frames, "control")
            if parsed is None:
                continue
            idents, msg, rest = parsed
            mtype = msg["header"].get("msg_type")
            if mtype == "shutdown_request":
                await self._shutdown(idents, msg, rest)
            elif mtype == "interrupt_request":
                cur = self.current
                to = self.replicas.get(cur.executor) if cur and cur.executor else None
                self._forward_one("control", idents, msg, rest, to if to and to.alive else None)
            elif mtype == "notebookos_update_peer_request":
                await self._update_peer(idents, msg)
            else:
                self._forward_one("control", idents, msg, rest)

    async def client_stdin(self) -> None:
        sock = self.front["stdin"]
        while True:
            frames = await sock.recv_multipart()
            parsed = self._parse(frames, "stdin")
            if parsed is None:
                continue
            _, _, rest = parsed
            cur = self.current
            if cur and cur.executor and cur.executor in self.replicas:
                self._send_raw(self.replicas[cur.executor].sockets["stdin"], [], rest)

    async def client_hb(self) -> None:
        sock = self.front["hb"]
        while True:
            frames = await sock.recv_multipart()
            # Answer only while a majority of the replicas lives (then the kernel can still commit),
            # and while the replicas first start, so a client does not take a starting kernel for dead.
            if 2 * len(self._alive()) > len(self.replicas):
                self.majority_seen = True
                await sock.send_multipart(frames)
            elif not self.majority_seen and time.monotonic() - self.started < STARTUP_GRACE:
                await sock.send_multipart(frames)

    # --- executions ----------------------------------------------------------------------------------------

    def _candidates(self, msg: dict[str, Any]) -> list[int] | None:
        """Replicas to propose as executor, best first; None asks for the replicas' election."""
        forced = (msg.get("metadata") or {}).get("notebookos_target")
        if forced == "election":
            return None
        alive = [r.rid for r in self._alive()]
        if isinstance(forced, int) and forced in alive:
            return [forced]
        if self.cfg.target_policy == "rotate" and self.last_executor is not None:
            ids = sorted(self.replicas)
            start = ids.index(self.last_executor) + 1
            order = [ids[(start + i) % len(ids)] for i in range(len(ids))]
            return [i for i in order if i in alive]
        # Affinity: the previous executor (its node may still have the model's data cached), then
        # the others (the broker's answer decides whose node has GPUs free).
        return sorted(alive, key=lambda i: (i != self.last_executor, i))

    async def _grant(self, rid: int, exec_id: str) -> bool:
        if self.cfg.gpus == 0:
            return True
        node = self.replicas[rid].node
        if self.broker is None or not node:
            return False
        try:
            g = await asyncio.to_thread(self.broker.acquire, self.cfg.kernel, rid, node, self.cfg.gpus, exec_id)
        except Exception as e:
            log.warning("GPU broker: %s", e)
            return False
        return isinstance(g, Granted)

    def _frames(self, msg: dict[str, Any], exec_id: str, target: int | None) -> list[bytes]:
        md = dict(msg.get("metadata") or {})
        md["notebookos"] = {"execution_id": exec_id, "target": target}
        out = dict(msg)
        out["metadata"] = md
        return cast(list[bytes], self.session.serialize(out)[1:])  # re-signed: the metadata changed

    async def executions(self) -> None:
        while True:
            while not self.queue:
                self.queue_event.clear()
                await self.queue_event.wait()
            idents, msg = self.queue.popleft()
            try:
                await self._execute(idents, msg)
            except Exception:
                log.exception("execution %s failed in the router", msg["header"].get("msg_id"))

    async def _execute(self, idents: list[bytes], msg: dict[str, Any]) -> None:
        header = msg["header"]
        exec_id = header["msg_id"]
        self.publish_status("busy", header)
        ex = Execution(exec_id, idents, header, set(), None)
        self.current = ex
        # The target must really receive the request (a replica that just died or restarted may
        # not): otherwise the others would wait for an executor that never runs the cell.
        target: int | None = None
        frames = self._frames(msg, exec_id, None)
        for rid in self._candidates(msg) or []:
            if not await self._grant(rid, exec_id):
                continue
            attempt = self._frames(msg, exec_id, rid)
            if self._send_raw(self.replicas[rid].sockets["shell"], [], attempt):
                target, frames = rid, attempt
                ex.sent_to.add(rid)
                break
            if self.cfg.gpus and self.broker is not None:
                await asyncio.to_thread(self.broker.release, exec_id)
        ex.target = target
        for r in self._alive():
            if r.rid != target and self._send_raw(r.sockets["shell"], [], frames):
                ex.sent_to.add(r.rid)
        log.debug("execute %s: target %s, sent to %s", exec_id, target, sorted(ex.sent_to))
        t0 = time.monotonic()
        reply: tuple[dict[str, Any], list[bytes]] | None = None
        while reply is None:
            reply = self._settled(ex)
            if reply is not None:
                break
            if not ex.sent_to or (time.monotonic() - t0 > 5 and not any(self.replicas[i].alive for i in ex.sent_to)):
                break
            ex.changed.clear()
            try:
                await asyncio.wait_for(ex.changed.wait(), 0.2)
            except TimeoutError:
                pass
        log.debug("execute %s: settled with %s", exec_id, reply and reply[0]["metadata"].get("notebookos"))
        if reply is None:
            content = {
                "status": "error",
                "ename": EXECUTOR_LOST,
                "evalue": "no replica of this kernel is reachable; the cell did not run",
                "traceback": [],
            }
            self.session.send(self.front["shell"], "execute_reply", content, parent=header, ident=idents)
        else:
            rmsg, rest = reply
            self._send_raw(self.front["shell"], idents, rest)
            # Like ipykernel: an error aborts the requests already queued, not later ones.
            stop = (msg.get("content") or {}).get("stop_on_error", True)
            if rmsg["content"].get("status") == "error" and stop:
                self._abort_queued()
            nb = (rmsg.get("metadata") or {}).get("notebookos") or {}
            if nb.get("role") == "executor":
                self.last_executor = nb.get("replica")
                self._background(asyncio.to_thread(self.reporter.served))
                count = rmsg["content"].get("execution_count")
                self.activity = (int(nb["replica"]), int(count) if isinstance(count, int) else 0, now_rfc3339())
                try:
                    await asyncio.wait_for(ex.executor_idle.wait(), 2.0)
                except TimeoutError:
                    pass
            elif nb.get("role") == "overloaded":
                self.overloads += 1
                evalue = str(rmsg["content"].get("evalue", ""))
                self._background(asyncio.to_thread(self.reporter.overloaded, evalue))
                log.warning(
                    json.dumps(
                        {
                            "event": "Overloaded",
                            "kernel": self.cfg.kernel,
                            "execution": exec_id,
                            "message": rmsg["content"].get("evalue"),
                        }
                    )
                )
        if self.cfg.gpus and self.broker is not None:
            try:
                await asyncio.to_thread(self.broker.release, exec_id)  # idempotent safety net
            except Exception as e:
                log.warning("GPU broker release: %s", e)
        self.current = None
        self.publish_status("idle", header)
        log.debug("execute %s: idle", exec_id)

    def _settled(self, ex: Execution) -> tuple[dict[str, Any], list[bytes]] | None:
        roles = {
            rid: ((m.get("metadata") or {}).get("notebookos") or {}).get("role") for rid, (m, _) in ex.replies.items()
        }
        for rid, role in roles.items():
            if role == "executor":
                return ex.replies[rid]
        for rid, role in roles.items():
            if role == "aborted":
                return ex.replies[rid]
        live = {i for i in ex.sent_to if self.replicas[i].alive}
        if roles and all(role == "overloaded" for role in roles.values()) and live <= set(roles):
            return ex.replies[next(iter(roles))]
        if roles and all(role == "duplicate" for role in roles.values()) and live <= set(roles):
            return ex.replies[next(iter(roles))]
        return None

    def _abort_queued(self) -> None:
        while self.queue:
            idents, msg = self.queue.popleft()
            self.publish_status("busy", msg["header"])
            self.session.send(
                self.front["shell"], "execute_reply", {"status": "aborted"}, parent=msg["header"], ident=idents
            )
            self.publish_status("idle", msg["header"])

    # --- replica side -----------------------------------------------------------------------------------------

    async def replica_channel(self, r: Replica, channel: str) -> None:
        while True:
            sock = r.sockets[channel]
            try:
                frames = await sock.recv_multipart()
            except zmq.ZMQError:
                await asyncio.sleep(0.1)  # the socket was replaced (peer moved)
                continue
            parsed = self._parse(frames, f"replica {r.rid} {channel}")
            if parsed is None:
                continue
            _, msg, rest = parsed
            parent_id = (msg.get("parent_header") or {}).get("msg_id")
            cur = self.current
            if channel == "shell" and cur is not None and parent_id == cur.msg_id:
                cur.replies[r.rid] = (msg, rest)
                cur.changed.set()
                continue
            if channel == "control" and msg["header"]["msg_type"] == "shutdown_reply":
                self.shutdown_acks.add(r.rid)
                continue
            if channel == "stdin":
                if cur is not None and cur.executor == r.rid:
                    self._send_raw(self.front["stdin"], cur.idents, rest)
                continue
            req = self.requests.get(parent_id or "")
            log.debug("replica %d %s: %s for %s (%s)", r.rid, channel, msg["header"]["msg_type"], parent_id, req)
            if req is not None and req[2] == r.rid:
                self._send_raw(self.front[req[0]], req[1], rest)
                self._request_part_done(parent_id or "")

    async def replica_iopub(self, r: Replica) -> None:
        while True:
            try:
                frames = await r.sockets["iopub"].recv_multipart()
            except zmq.ZMQError:
                await asyncio.sleep(0.1)
                continue
            parsed = self._parse(frames, f"replica {r.rid} iopub")
            if parsed is None:
                continue
            idents, msg, rest = parsed
            mtype = msg["header"].get("msg_type")
            parent_id = (msg.get("parent_header") or {}).get("msg_id")
            cur = self.current
            if cur is not None and parent_id == cur.msg_id:
                if mtype == "notebookos_lead":
                    cur.executor = r.rid
                    continue
                if mtype == "notebookos_done":  # all its output is out; its state commit follows
                    if cur.executor == r.rid:
                        cur.executor_idle.set()
                    continue
                if cur.executor != r.rid:
                    continue
                if mtype == "status":
                    if msg["content"].get("execution_state") == "idle":
                        cur.executor_idle.set()
                    continue
                self.front["iopub"].send_multipart([*idents, DELIM, *rest])
                continue
            req = self.requests.get(parent_id or "")
            if req is not None and req[2] == r.rid:
                self.front["iopub"].send_multipart([*idents, DELIM, *rest])
                if mtype == "status" and msg["content"].get("execution_state") == "idle":
                    self._request_part_done(parent_id or "")

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

    async def probes(self) -> None:
        """Learn each replica's node and Raft view; heal a moved replica's address in the others."""
        while True:
            for r in self.replicas.values():
                if not r.alive:
                    continue
                sock = r.sockets["probe"]
                if not self._send_raw(
                    sock, [], self.session.serialize(self.session.msg("kernel_info_request", {}))[1:]
                ):
                    continue
                try:
                    if await sock.poll(1000):
                        parsed = self._parse(await sock.recv_multipart(), f"replica {r.rid} probe")
                        if parsed is not None and parsed[1]["header"]["msg_type"] == "kernel_info_reply":
                            info = parsed[1]["content"].get("notebookos") or {}
                            r.info = info
                            r.node = info.get("node") or r.node
                except zmq.ZMQError:
                    pass
            await self._heal_peers()
            await asyncio.sleep(1.0)

    async def _heal_peers(self) -> None:
        own = {r.rid: (r.info.get("peers") or {}).get(str(r.rid)) for r in self._alive() if r.info}
        for r in self._alive():
            peers = r.info.get("peers") or {}
            for rid, addr in own.items():
                if addr and rid != r.rid and peers.get(str(rid)) not in (None, addr):
                    a = parse_address(addr, "replica address")
                    log.info(
                        "replica %d sees replica %d at %s, which is now at %s: updating",
                        r.rid,
                        rid,
                        peers.get(str(rid)),
                        addr,
                    )
                    await self._ask(
                        r, "notebookos_update_peer_request", {"replica": rid, "host": a.host, "port": a.port}, 10
                    )
                    return  # one committed update reaches every replica

    async def _update_peer(self, idents: list[bytes], msg: dict[str, Any]) -> None:
        """``{replica, jupyter: "host:port"?, raft: "host:port"?}``: a replica moved."""
        c = msg.get("content") or {}
        content: dict[str, Any] = {"status": "ok"}
        try:
            rid = int(c["replica"])
            if rid not in self.replicas:
                raise ValueError(f"unknown replica {rid}; this kernel has {sorted(self.replicas)}")
            if c.get("jupyter"):
                self.replicas[rid].address = parse_address(str(c["jupyter"]), "jupyter")
                self._connect(self.replicas[rid])
                self.replicas[rid].last_pong = 0.0
            if c.get("raft"):
                a = parse_address(str(c["raft"]), "raft")
                others = [r for r in self._alive() if r.rid != rid]
                if not others:
                    raise RuntimeError("no other live replica can commit the new address")
                reply = await self._ask(
                    others[0], "notebookos_update_peer_request", {"replica": rid, "host": a.host, "port": a.port}, 10
                )
                if reply is None:
                    raise TimeoutError("the replicas did not confirm the new address")
                content = reply["content"]
        except (KeyError, ValueError, RuntimeError, TimeoutError, ConfigError) as e:
            content = {"status": "error", "ename": type(e).__name__, "evalue": str(e), "traceback": []}
        self.session.send(
            self.front["control"], "notebookos_update_peer_reply", content, parent=msg["header"], ident=idents
        )

    async def _shutdown(self, idents: list[bytes], msg: dict[str, Any], rest: list[bytes]) -> None:
        log.info("shutdown requested: stopping the replicas and the router")
        frames = self.session.serialize(msg)
        # Every replica, also one still starting: retry until each confirmed, for a few seconds.
        end = time.monotonic() + 5
        sent: set[int] = set()
        while set(self.replicas) - self.shutdown_acks and time.monotonic() < end:
            for r in self.replicas.values():
                if r.rid not in sent and self._send_raw(r.sockets["control"], [], frames[1:]):
                    sent.add(r.rid)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)  # let the replicas flush their journals
        content = {"status": "ok", "restart": bool((msg.get("content") or {}).get("restart"))}
        self.session.send(self.front["control"], "shutdown_reply", content, parent=msg["header"], ident=idents)
        self.session.send(self.front["iopub"], "shutdown_reply", content, parent=msg["header"])
        log.info("shutdown replied to %s", idents)
        await asyncio.sleep(0.2)
        self.stopping.set()

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

    async def report_activity(self) -> None:
        """Write the last cell's executor, count and time to the kernel's status, at most every
        few seconds (a busy notebook must not flood the API server)."""
        sent = None
        while True:
            await asyncio.sleep(ACTIVITY_PERIOD)
            if self.activity is not None and self.activity != sent:
                sent = self.activity
                await asyncio.to_thread(self.reporter.activity, *sent)

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

    async def run(self) -> None:
        ports = self.bind()
        log.info("router of kernel %s on %s ports %s", self.cfg.kernel, self.cfg.ip, ports)
        loops: list[tuple[str, Any]] = [
            ("client shell", self.client_shell),
            ("client control", self.client_control),
            ("client stdin", self.client_stdin),
            ("client heartbeat", self.client_hb),
            ("executions", self.executions),
            ("probes", self.probes),
            ("activity report", self.report_activity),
        ]
        for r in self.replicas.values():
            loops += [
                (f"replica {r.rid} shell", partial(self.replica_channel, r, "shell")),
                (f"replica {r.rid} control", partial(self.replica_channel, r, "control")),
                (f"replica {r.rid} stdin", partial(self.replica_channel, r, "stdin")),
                (f"replica {r.rid} iopub", partial(self.replica_iopub, r)),
                (f"replica {r.rid} heartbeat", partial(self.heartbeats, r)),
            ]
        tasks = [asyncio.ensure_future(self._supervise(name, f)) for name, f in loops]
        await self.stopping.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.ctx.destroy(linger=1000)  # flush the last replies (shutdown_reply) to clients


def main() -> int:
    logging.basicConfig(level=os.environ.get("NOTEBOOKOS_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # stack dumps on demand
    try:
        cfg = RouterConfig.from_env()
    except ConfigError as e:
        print(f"notebookos router: {e}", file=sys.stderr)
        return 2
    reporter = reporter_from_env(cfg.kernel)
    router = Router(cfg, reporter=reporter)

    async def go() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, router.stopping.set)
        await router.run()

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())

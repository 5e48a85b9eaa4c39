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
import logging
import os
import signal
import sys
import time
from functools import partial
from typing import Any

import zmq

from notebookos.kernel import contract as c
from notebookos.kernel.config import ConfigError, RouterConfig
from notebookos.kernel.contract import EXECUTOR_LOST
from notebookos.kernel.report import reporter_from_env
from notebookos.kernel.router_core import DELIM, Replica, log
from notebookos.kernel.router_exec import Executions
from notebookos.kernel.router_members import Membership

STARTUP_GRACE = 60.0


class Router(Executions, Membership):
    """The client channels and the replicas' replies, over the executions and membership parts."""

    async def client_shell(self) -> None:
        sock = self.front["shell"]
        while True:
            frames = await sock.recv_multipart()
            parsed = self._parse(frames, "shell")
            if parsed is None:
                continue
            idents, msg, rest = parsed
            why = c.bad_request(msg)
            if why is not None:
                log.warning("bad %s from a client: %s", msg["header"].get("msg_type"), why)
                self._reply_error("shell", idents, msg, c.BAD_REQUEST, why)
                continue
            if msg["header"].get("msg_type") == "execute_request":
                self.queue.append((idents, msg))
                self.queue_event.set()
                continue
            if self.asleep is not None or self.checkpointing is not None:
                if msg["header"].get("msg_type") == "kernel_info_request" and self.kernel_info_cache is not None:
                    # Front ends ask on every (re)connect: that alone does not wake the kernel.
                    self.publish_status("busy", msg["header"])
                    self.session.send(
                        sock, "kernel_info_reply", self.kernel_info_cache, parent=msg["header"], ident=idents
                    )
                    self.publish_status("idle", msg["header"])
                    continue
                self._background(self._forward_awake(idents, msg, rest))
                continue
            self._forward_one("shell", idents, msg, rest)

    async def _forward_awake(self, idents: list[bytes], msg: dict[str, Any], rest: list[bytes]) -> None:
        """A shell request to a hibernated kernel: wake it, then forward."""
        why = await self.awake(None)
        if why is None:
            self._forward_one("shell", idents, msg, rest)
        else:
            self._reply_error("shell", idents, msg, c.WAKE_FAILED, f"the kernel could not be woken: {why}")

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

    async def client_control(self) -> None:
        sock = self.front["control"]
        while True:
            frames = await sock.recv_multipart()
            parsed = self._parse(frames, "control")
            if parsed is None:
                continue
            idents, msg, rest = parsed
            mtype = msg["header"].get("msg_type")
            why = c.bad_request(msg)
            if why is not None:
                log.warning("bad %s from a client: %s", mtype, why)
                self._reply_error("control", idents, msg, c.BAD_REQUEST, why)
            elif mtype == c.CHECKPOINT_REQUEST:
                self._background(self.take_checkpoint(idents, msg))
            elif mtype == "interrupt_request" and self.asleep is not None:
                self.session.send(sock, "interrupt_reply", {"status": "ok"}, parent=msg["header"], ident=idents)
            elif mtype == "shutdown_request":
                await self._shutdown(idents, msg, rest)
            elif mtype == "interrupt_request" and self.current is not None and self.current.waiting:
                # No replica has the cell yet: interrupting ends its wait for GPUs.
                self.current.interrupted.set()
                self.session.send(sock, "interrupt_reply", {"status": "ok"}, parent=msg["header"], ident=idents)
            elif mtype == "interrupt_request":
                cur = self.current
                to = self.replicas.get(cur.executor) if cur and cur.executor else None
                self._forward_one("control", idents, msg, rest, to if to and to.alive else None)
            elif mtype == c.UPDATE_PEER_REQUEST:
                await self._update_peer(idents, msg)
            else:
                self._forward_one("control", idents, msg, rest)

    async def _shutdown(self, idents: list[bytes], msg: dict[str, Any], rest: list[bytes]) -> None:
        log.info("shutdown requested: stopping the replicas and the router")
        frames = self.session.serialize(msg)
        # Every replica, also one still starting: retry until each confirmed, for a few seconds
        # (none while hibernated: there are none).
        end = time.monotonic() + (0 if self.asleep is not None else 5)
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
            if self.asleep is not None or 2 * len(self._alive()) > len(self.replicas):
                # A hibernated kernel is alive: it wakes on the next request.
                self.majority_seen = True
                await sock.send_multipart(frames)
            elif not self.majority_seen and time.monotonic() - self.started < STARTUP_GRACE:
                await sock.send_multipart(frames)

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
            if msg["header"]["msg_type"] == "kernel_info_reply" and msg["content"].get("status") == "ok":
                self.kernel_info_cache = msg["content"]
            req = self.requests.get(parent_id or "")
            log.debug("replica %d %s: %s for %s (%s)", r.rid, channel, msg["header"]["msg_type"], parent_id, req)
            if req is not None and req[2] == r.rid:
                self._send_raw(self.front[req[0]], req[1], rest)
                self._request_part_done(parent_id or "")
            elif req is None and channel == "shell":
                self._orphan_reply(msg)

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
                log.debug("iopub %s of %s from replica %d (executor %s)", mtype, parent_id, r.rid, cur.executor)
                if mtype == c.LEAD:
                    cur.executor = r.rid
                    continue
                if cur.executor != r.rid:
                    continue
                if mtype == "status":
                    if msg["content"].get("execution_state") == "idle":
                        cur.executor_idle.set()
                    continue
                if mtype == "error":
                    cur.errors_shown.add(str(msg["content"].get("ename")))
                self.front["iopub"].send_multipart([*idents, DELIM, *rest])
                continue
            req = self.requests.get(parent_id or "")
            if req is not None and req[2] == r.rid:
                self.front["iopub"].send_multipart([*idents, DELIM, *rest])
                if mtype == "status" and msg["content"].get("execution_state") == "idle":
                    self._request_part_done(parent_id or "")

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
            ("recovery", self.recover),
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

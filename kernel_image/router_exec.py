"""The router's executions: one cell at a time, sent to every live replica with a target; the
reply given to the client is the one the replicas' log settled (see replica.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

from notebookos.kernel import contract as c
from notebookos.kernel.broker import Granted
from notebookos.kernel.contract import EXECUTOR_LOST, reply_meta
from notebookos.kernel.report import now_rfc3339
from notebookos.kernel.router_core import Execution, log
from notebookos.kernel.router_sleep import Hibernation
from notebookos.policy.migration import executor_order

ACTIVITY_PERIOD = 5.0
RECOVER_AT = (1.5, 5.0)  # seconds after start: ask the replicas for replies a predecessor missed
RECOVER_WINDOW = 120.0  # a predecessor's last reply younger than this is delivered again
ORPHAN_RESEND = (0.0, 1.0, 2.0, 4.0)  # seconds between the sends of a recovered reply
KEEP_SETTLED = 1024
MAJORITY_WAIT = 10.0  # how long a cell waits for a majority of live replicas before it is sent
GPU_WAIT_POLL = 1.0  # how often a cell waiting for GPUs asks the broker again
GPU_WAIT_PROGRESS_PERIOD = 3.0  # how often it reads what the operator is doing about it


def wait_message(
    gpus: int, refusals: dict[int, str], progress: str | None, waited: float, bound: float, reported: bool = True
) -> str:
    """The waiting cell's output: what it waits for, why, and what is being done (`reported`: the
    operator has been told; until then the router is still learning where the replicas run)."""
    why = "; ".join(f"replica {r}: {reason}" for r, reason in sorted(refusals.items()))
    doing = progress or (
        "NotebookOS has asked the operator to move a replica to a node with free GPUs"
        if reported
        else "NotebookOS is asking the replicas' nodes again"
    )
    # In steps of 10 s, so the display is updated now and then, not on every poll.
    return (
        f"Waiting for {gpus} GPU(s): no replica's node has them free ({why}).\n"
        f"{doing}.\nWaited {int(waited // 10 * 10)} s of at most {bound:.0f} s; interrupt the kernel to stop waiting."
    )


class Executions(Hibernation):
    def _candidates(self, msg: dict[str, Any]) -> list[int] | None:
        """Replicas to propose as executor, best first; None asks for the replicas' election."""
        forced = (msg.get("metadata") or {}).get(c.TARGET_OVERRIDE)
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
        # The broker's answer, in this order, decides whose node has the GPUs free.
        return executor_order(alive, self.last_executor)

    async def _grant(self, rid: int, exec_id: str) -> tuple[str, bool] | None:
        """None if replica rid's node granted the cell's GPUs, else why not, and whether it was
        the broker's refusal (a full node) rather than something not known yet."""
        if self.cfg.gpus == 0:
            return None
        node = self.replicas[rid].node
        if self.broker is None or not node:
            return ("its node is not known yet" if self.broker is not None else "no GPU broker"), False
        try:
            g = await asyncio.to_thread(self.broker.acquire, self.cfg.kernel, rid, node, self.cfg.gpus, exec_id)
        except Exception as e:
            log.warning("GPU broker: %s", e)
            return f"the GPU broker did not answer ({e})", False
        return None if isinstance(g, Granted) else (f"node {node}: {g.reason}", True)

    async def _pick_target(
        self, ex: Execution, msg: dict[str, Any], exec_id: str
    ) -> tuple[int | None, list[bytes], dict[int, str]]:
        """The first candidate whose node grants the GPUs and that really receives the request
        (a replica that just died or restarted may not), with its frames; else each one's refusal."""
        refusals: dict[int, str] = {}
        ex.full = set()
        for rid in self._candidates(msg) or []:
            refused = await self._grant(rid, exec_id)
            if refused is not None:
                refusals[rid] = refused[0]
                if refused[1]:
                    ex.full.add(rid)
                continue
            attempt = self._frames(msg, exec_id, rid, ex.waited)
            if self._send_raw(self.replicas[rid].sockets["shell"], [], attempt):
                ex.sent_to.add(rid)
                return rid, attempt, {}
            if self.cfg.gpus and self.broker is not None:
                await asyncio.to_thread(self.broker.release, exec_id)
        return None, self._frames(msg, exec_id, None, ex.waited), refusals

    async def _wait_for_gpus(
        self, ex: Execution, msg: dict[str, Any], exec_id: str, refusals: dict[int, str]
    ) -> tuple[int | None, list[bytes]]:
        """No replica's node has the GPUs: hold the cell (no replica has it yet) while the operator
        moves a replica or adds a node, up to cfg.gpu_wait, showing why in the cell's output."""
        t0 = time.monotonic()
        ex.waiting = True
        display = f"notebookos-gpu-wait-{exec_id}"
        reported = False
        shown: str | None = None
        progress: str | None = None
        asked = -GPU_WAIT_PROGRESS_PERIOD
        target: int | None = None
        frames: list[bytes] = []
        try:
            while True:
                ex.waited = time.monotonic() - t0
                if ex.waited >= self.cfg.gpu_wait or ex.interrupted.is_set():
                    break
                if not reported and refusals and set(refusals) == ex.full:
                    # Every replica's node refused (a router that just started does not know their
                    # nodes yet: that is no overload): tell the operator, which moves a replica.
                    reported = True
                    why = "; ".join(f"replica {r}: {reason}" for r, reason in sorted(refusals.items()))
                    report = f"a cell waits for {self.cfg.gpus} GPU(s): {why}"
                    self._background(asyncio.to_thread(self.reporter.overloaded, report))
                if ex.waited - asked >= GPU_WAIT_PROGRESS_PERIOD:
                    asked = ex.waited
                    progress = await asyncio.to_thread(self.reporter.progress)
                text = wait_message(self.cfg.gpus, refusals, progress, ex.waited, self.cfg.gpu_wait, reported)
                if text != shown:
                    self._display(ex.header, display, text, update=shown is not None)
                    shown = text
                try:
                    await asyncio.wait_for(ex.interrupted.wait(), GPU_WAIT_POLL)
                except TimeoutError:
                    pass
                target, frames, refusals = await self._pick_target(ex, msg, exec_id)
                if target is not None:
                    done = f"Got {self.cfg.gpus} GPU(s) on replica {target}'s node after waiting {ex.waited:.0f} s."
                    self._display(ex.header, display, done, update=True)
                    return target, frames
        finally:
            ex.waiting = False
        return None, self._frames(msg, exec_id, None, ex.waited)

    def _frames(self, msg: dict[str, Any], exec_id: str, target: int | None, waited: float = 0.0) -> list[bytes]:
        md = dict(msg.get("metadata") or {})
        md[c.META] = {"execution_id": exec_id, "target": target, "after": self.after}
        if waited:
            md[c.META]["waited"] = round(waited, 1)  # for the overload error: how long it waited
        out = dict(msg)
        out["metadata"] = md
        return cast(list[bytes], self.session.serialize(out)[1:])  # re-signed: the metadata changed

    async def executions(self) -> None:
        while True:
            while not self.queue:
                self.queue_event.clear()
                await self.queue_event.wait()
            why = await self.awake(self.queue[0][1]["header"])  # a hibernated kernel wakes first
            if why is not None:
                self.fail_held(why)
                continue
            if not self.queue:
                continue
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
        # A router that just (re)started has not heard the replicas' heartbeats yet.
        end = time.monotonic() + MAJORITY_WAIT
        while 2 * len(self._alive()) <= len(self.replicas) and time.monotonic() < end:
            await asyncio.sleep(0.05)
        # The target must really receive the request: otherwise the others would wait for an
        # executor that never runs the cell.
        target, frames, refusals = await self._pick_target(ex, msg, exec_id)
        if target is None and refusals and self.broker is not None and self.cfg.gpu_wait > 0:
            target, frames = await self._wait_for_gpus(ex, msg, exec_id, refusals)
        if ex.interrupted.is_set() and target is None:
            self._answer_interrupted(ex)
            return
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
        self._mark_settled(exec_id)
        if reply is None:
            content = c.error(EXECUTOR_LOST, "no replica of this kernel is reachable; the cell did not run")
            content["execution_count"] = self.exec_count
            self.publish_error(header, content)
            self.session.send(self.front["shell"], "execute_reply", content, parent=header, ident=idents)
        else:
            rmsg, rest = reply
            rc = rmsg["content"]
            if isinstance(rc.get("execution_count"), int):
                self.exec_count = max(self.exec_count, rc["execution_count"])
            if reply_meta(rmsg).get("outcome"):
                self.after = exec_id  # its outcome is in the log: the next cell's executor waits for it
            if rc.get("status") == "error" and rc.get("ename") in c.ERRORS and rc["ename"] not in ex.errors_shown:
                self.publish_error(header, rc)
            self._send_raw(self.front["shell"], idents, rest)
            # Like ipykernel: an error aborts the requests already queued, not later ones.
            stop = (msg.get("content") or {}).get("stop_on_error", True)
            if rmsg["content"].get("status") == "error" and stop:
                self._abort_queued()
            nb = reply_meta(rmsg)
            if nb.get("role") == c.EXECUTOR:
                self.last_executor = nb.get("replica")
                self._background(asyncio.to_thread(self.reporter.served))
                count = rmsg["content"].get("execution_count")
                self.activity = (int(nb["replica"]), int(count) if isinstance(count, int) else 0, now_rfc3339())
                try:
                    await asyncio.wait_for(ex.executor_idle.wait(), 2.0)
                except TimeoutError:
                    pass
            elif nb.get("role") == c.OVERLOADED_ROLE:
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

    def _answer_interrupted(self, ex: Execution) -> None:
        """Interrupted while it waited for GPUs: no replica had the cell, so nothing ran."""
        content = c.error(
            "KeyboardInterrupt",
            f"interrupted while waiting {ex.waited:.0f} s for {self.cfg.gpus} GPU(s); the cell did not run",
        )
        content["execution_count"] = self.exec_count
        self._mark_settled(ex.msg_id)
        self.publish_error(ex.header, content)
        self.session.send(self.front["shell"], "execute_reply", content, parent=ex.header, ident=ex.idents)
        self.current = None
        self.publish_status("idle", ex.header)

    def _settled(self, ex: Execution) -> tuple[dict[str, Any], list[bytes]] | None:
        """The reply to give the client: the executor's (sent once its outcome is in the log), or
        any replica's abort (both come from the log, so they agree), or everyone's overload."""
        roles = {rid: reply_meta(m).get("role") for rid, (m, _) in ex.replies.items()}
        for rid, role in roles.items():
            if role == c.EXECUTOR:
                return ex.replies[rid]
        for rid, role in roles.items():
            if role == c.ABORTED_ROLE:
                return ex.replies[rid]
        live = {i for i in ex.sent_to if self.replicas[i].alive}
        if roles and all(role == c.OVERLOADED_ROLE for role in roles.values()) and live <= set(roles):
            return ex.replies[next(iter(roles))]
        if roles and all(role == c.DUPLICATE for role in roles.values()) and live <= set(roles):
            return ex.replies[next(iter(roles))]
        return None

    def _mark_settled(self, exec_id: str) -> bool:
        """Record that the client got (or is getting) its reply; False if it already had one."""
        if exec_id in self.settled:
            return False
        self.settled[exec_id] = None
        while len(self.settled) > KEEP_SETTLED:
            self.settled.popitem(last=False)
        return True

    def _orphan_reply(self, msg: dict[str, Any]) -> None:
        """A reply to an execution this router did not send (its predecessor did, then died): give
        it to the client, found by its session (jupyter_client's routing identity)."""
        parent = msg.get("parent_header") or {}
        msg_id, session = parent.get("msg_id"), parent.get("session")
        if msg["header"].get("msg_type") != "execute_reply" or not msg_id or not session:
            return
        if reply_meta(msg).get("role") not in (c.EXECUTOR, c.ABORTED_ROLE) or not self._mark_settled(msg_id):
            return
        log.info("delivering the reply to %s, sent by this router's predecessor", msg_id)
        self._background(self._deliver([str(session).encode()], msg))

    async def _deliver(self, ident: list[bytes], msg: dict[str, Any]) -> None:
        """Send a recovered reply (and its idle) a few times: the client may not have redialled
        this router yet, and a ROUTER socket drops what it cannot route. Each copy is a new
        message (clients refuse a signature twice) and they ignore replies they no longer wait for."""
        parent, md = msg["parent_header"], msg.get("metadata") or {}
        for delay in ORPHAN_RESEND:
            await asyncio.sleep(delay)
            self.session.send(
                self.front["shell"], "execute_reply", msg["content"], parent=parent, metadata=md, ident=ident
            )
            self.publish_status("idle", parent)

    async def recover(self) -> None:
        """After a restart: replies the replicas sent while no router was there. Replies sent later
        reach this router itself (the same identity) and go through _orphan_reply."""
        t0 = time.monotonic()
        for at in RECOVER_AT:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            for r in self._alive():
                info = await self._ask(r, c.STATUS_REQUEST, {"recovery": True}, 5)
                # The router runs one execution at a time: only a replica's last reply can be missed.
                for rec in (((info or {}).get("content") or {}).get("recent") or [])[-1:]:
                    if time.time() - float(rec.get("at", 0)) < RECOVER_WINDOW:
                        msg = {
                            "header": {"msg_type": "execute_reply"},
                            "parent_header": rec["parent"],
                            "content": rec["content"],
                            "metadata": rec["metadata"],
                        }
                        self._orphan_reply(msg)

    def _abort_queued(self) -> None:
        while self.queue:
            idents, msg = self.queue.popleft()
            self.publish_status("busy", msg["header"])
            self.session.send(
                self.front["shell"], "execute_reply", {"status": "aborted"}, parent=msg["header"], ident=idents
            )
            self.publish_status("idle", msg["header"])

    async def report_activity(self) -> None:
        """Write the last cell's executor, count and time to the kernel's status, at most every
        few seconds (a busy notebook must not flood the API server)."""
        sent = None
        while True:
            await asyncio.sleep(ACTIVITY_PERIOD)
            if self.activity is not None and self.activity != sent:
                sent = self.activity
                await asyncio.to_thread(self.reporter.activity, *sent)

"""The router's part in hibernation: it takes the checkpoint (asked by the operator, done by a
replica), then holds the client connection while the kernel sleeps, and wakes it on the next
request. The request waits; the cell shows the wake's progress; a wake that fails fails the
requests held with a NotebookOSWakeFailed error and the kernel stays hibernated, state intact.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

from notebookos.kernel import contract as c
from notebookos.kernel.router_core import RouterCore, log
from notebookos.policy.hibernation import size_text

CHECKPOINT_TIMEOUT = 600.0  # the replica waits for the last cell's large values to be written
WAKE_POLL = 0.5
# The operator gives up a wake after its own bound and says so in the status; the router's bound
# only covers an operator that never answers.
WAKE_BOUND = float(os.environ.get("NOTEBOOKOS_WAKE_TIMEOUT_SECONDS", "300")) + 60.0


class Hibernation(RouterCore):
    asleep: dict[str, Any] | None = None  # the checkpoint, while the kernel is hibernated
    checkpointing: asyncio.Event | None = None  # set while a checkpoint is being taken
    waking: asyncio.Task[str | None] | None = None
    kernel_info_cache: dict[str, Any] | None = None  # answers kernel_info while asleep

    async def take_checkpoint(self, idents: list[bytes], msg: dict[str, Any]) -> None:
        """The operator's checkpoint request: refused while a cell runs or waits; once taken, the
        router holds every later request until the kernel is awake again."""
        waking = self.waking is not None and not self.waking.done()
        if self.current is not None or self.queue or self.checkpointing is not None or waking:
            content: dict[str, Any] = c.error("Busy", c.BUSY)  # a request is held or runs
        elif self.asleep is not None:
            content = {"status": "ok", **self.asleep}  # asked again (an operator restart)
        else:
            done = self.checkpointing = asyncio.Event()
            try:
                content = await self._checkpoint_from_replica()
                if content.get("status") == "ok":
                    self.asleep = {k: v for k, v in content.items() if k != "status"}
                    log.info("hibernating: checkpoint %s (%s)", self.asleep.get("id"), self.asleep.get("url"))
            finally:
                self.checkpointing = None
                done.set()
        self.session.send(self.front["control"], c.CHECKPOINT_REPLY, content, parent=msg["header"], ident=idents)

    async def _checkpoint_from_replica(self) -> dict[str, Any]:
        alive = self._alive()
        if 2 * len(alive) <= len(self.replicas):
            return c.error("NoMajority", "no majority of the replicas is reachable")
        # The last executor has the newest state loaded and wrote the last large values itself.
        last = self.replicas.get(self.last_executor) if self.last_executor is not None else None
        r = last if last is not None and last.alive else alive[0]
        reply = await self._ask(r, c.CHECKPOINT_REQUEST, {}, CHECKPOINT_TIMEOUT)
        if reply is None:
            return c.error("Timeout", f"replica {r.rid} did not answer the checkpoint request")
        return dict(reply["content"])

    async def awake(self, header: dict[str, Any] | None) -> str | None:
        """Wake the kernel if it sleeps (one wake for all the requests held); None once it is
        awake, else why it could not be woken. `header`: the cell that shows the progress."""
        if self.checkpointing is not None:
            await self.checkpointing.wait()
        if self.asleep is None:
            return None
        if self.waking is None or self.waking.done():
            self.waking = asyncio.ensure_future(self._wake(header))
        return await asyncio.shield(self.waking)

    async def _wake(self, header: dict[str, Any] | None) -> str | None:
        ck = self.asleep or {}
        request = f"{ck.get('id')}/{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        display = f"notebookos-wake-{request}"
        what = (
            f"restoring {size_text(int(ck.get('bytes') or 0))} of state "
            f"({ck.get('variables', 0)} variables, {ck.get('cells', 0)} cells)"
        )
        shown: str | None = None

        def show(text: str) -> None:
            nonlocal shown
            if header is not None and text != shown:
                self._display(header, display, text, update=shown is not None)
                shown = text

        log.info("waking: request %s", request)
        if not await asyncio.to_thread(self.reporter.wake, request):
            return "the router could not ask the operator to wake the kernel (the API server refused the request)"
        while time.monotonic() - t0 < WAKE_BOUND:
            obj = await asyncio.to_thread(self.reporter.kernel_object) or {}
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            if spec.get("suspend"):
                return "the kernel is suspended (spec.suspend: true); set spec.suspend to false to wake it"
            phase = status.get("phase")
            # Until the operator has recorded this checkpoint, the status is from before it.
            ours = (status.get("checkpoint") or {}).get("id") == ck.get("id")
            if ours and status.get("wakeHandled") == request and phase == "Hibernated":
                cond: dict[str, Any] = next(
                    (x for x in status.get("conditions") or [] if x.get("type") == "Hibernated"), {}
                )
                return str(cond.get("message") or "the operator could not wake the kernel")
            alive = len([r for r in self._alive() if r.node])  # up, and its node known (GPU grants)
            # Awake whatever woke it: this request, another one, or spec.suspend set to false.
            if ours and phase in ("Ready", "Degraded") and 2 * alive > len(self.replicas):
                self.asleep = None
                took = time.monotonic() - t0
                if shown is not None:  # else it was awake already (woken by spec.suspend: false)
                    show(f"Kernel {self.cfg.kernel} woke in {took:.1f} s: {what.replace('restoring', 'restored')}.")
                log.info("woke in %.1f s", took)
                return None
            doing = f"{alive} of {len(self.replicas)} replicas up" if phase == "Waking" else "asking the operator"
            show(
                f"Waking kernel {self.cfg.kernel} from hibernation: {what}.\n"
                f"{doing}; waited {int((time.monotonic() - t0) // 5 * 5)} s."
            )
            await asyncio.sleep(WAKE_POLL)
        return f"the kernel did not wake within {WAKE_BOUND:.0f} s"

    def fail_held(self, why: str) -> None:
        """Answer every queued execution: the wake failed, nothing ran, the state is kept."""
        while self.queue:
            idents, msg = self.queue.popleft()
            self._reply_error("shell", idents, msg, c.WAKE_FAILED, f"the kernel could not be woken: {why}")

"""When a kernel hibernates and when it wakes.

A pure decision from the kernel's spec and status (the operator calls it on every reconcile):
an idle kernel already holds no GPU and its state is already replicated, so after
``spec.idleTimeout`` without a cell (or at once on ``spec.suspend: true``) its state is
checkpointed and its replica pods go; a request on its connection (the router's wake request) or
``spec.suspend: false`` brings them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

HIBERNATE, WAKE, NONE = "hibernate", "wake", "none"
IDLE, SUSPENDED = "Idle", "Suspended"  # why it hibernates (the Hibernated condition's reason)
SERVING = ("Ready", "Degraded")  # phases with a router and a Raft majority: a checkpoint can be taken
ASLEEP = ("Hibernating", "Hibernated")


@dataclass(frozen=True)
class Kernel:
    """What the decision reads of a kernel."""

    phase: str
    suspend: bool
    idle_timeout: float | None  # seconds; None: never by idleness
    last_activity: datetime | None  # when the last cell finished
    awake_since: datetime  # when it was made or last woke, whichever is later
    asleep_because: str | None = None  # IDLE or SUSPENDED while asleep
    checkpoint: str | None = None  # id of the checkpoint taken when it last hibernated
    wake_request: str | None = None  # the router's: "<checkpoint id>/<request>"
    wake_handled: str | None = None  # the last wake request acted on


@dataclass(frozen=True)
class Decision:
    action: str  # HIBERNATE, WAKE or NONE
    reason: str = ""  # IDLE or SUSPENDED for HIBERNATE; what woke it for WAKE
    due: datetime | None = None  # when to decide again if nothing else happens (the idle deadline)


def pending_wake(k: Kernel) -> bool:
    """A request arrived for the checkpoint the kernel sleeps on, and was not acted on yet (a wake
    that failed consumed its request; the router asks again with the next one)."""
    return bool(
        k.wake_request
        and k.checkpoint
        and k.wake_request != k.wake_handled
        and k.wake_request.startswith(f"{k.checkpoint}/")
    )


def decide(k: Kernel, now: datetime) -> Decision:
    if k.phase in ASLEEP:
        if k.suspend:
            return Decision(NONE, SUSPENDED)
        if k.asleep_because == SUSPENDED:
            return Decision(WAKE, "spec.suspend is false")
        if pending_wake(k):
            return Decision(WAKE, "a request arrived on its connection")
        return Decision(NONE)
    if k.phase not in SERVING:
        return Decision(NONE)  # starting, waking, failed: nothing to checkpoint yet
    if k.suspend:
        return Decision(HIBERNATE, SUSPENDED)
    if k.idle_timeout is None:
        return Decision(NONE)
    since = max(k.awake_since, k.last_activity) if k.last_activity else k.awake_since
    deadline = since + timedelta(seconds=k.idle_timeout)
    if now >= deadline:
        return Decision(HIBERNATE, IDLE)
    return Decision(NONE, due=deadline)


def size_text(n: int) -> str:
    """Bytes as a person reads them in a notebook: 1.2 GB, 100 MB, 12 kB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"

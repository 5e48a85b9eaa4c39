"""When a standby replica declares the executor of a cell lost: a pure decision, so the rule is
stated (and tested) once, apart from the kernel that applies it (kernel_image/replica.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StandbyView:
    """What one standby knows, at `now`, about the executor of the cell it waits for."""

    now: float
    waiting_since: float  # when this standby began waiting for the cell's outcome
    replaced_since: float | None  # first seen: a new process of the executor that has not started the cell
    disconnected_since: float | None  # the executor unreachable from here since then (None: reachable)
    ever_connected: bool  # reachable at some point while this standby waited


def replaced_since(prev: float | None, now: float, boot_changed: bool, started: bool) -> float | None:
    """Since when the executor counts as replaced: its boot differs from the one this standby saw
    when it began waiting and no process of it has said it runs the cell. Cleared once one has:
    an executor whose hello lands after the request reached this standby (it was still starting)
    is not a replacement, and a started cell of a process that is later replaced is aborted by
    the new process's hello, in the log."""
    if started or not boot_changed:
        return None
    return now if prev is None else prev


def executor_lost(v: StandbyView, lost_after: float, restart_grace: float) -> str | None:
    """Why the executor is lost ("replaced", "disconnected"), or None while it may still run the
    cell. A new process gets `restart_grace` to say it runs the cell (the request may have reached
    it); a standby that never reached the executor (it is itself starting, or still dialling)
    waits longer before it trusts an unreachable executor to be gone."""
    if v.replaced_since is not None and v.now - v.replaced_since > restart_grace:
        return "replaced"
    if v.disconnected_since is not None:
        limit = lost_after if v.ever_connected else 3 * lost_after + restart_grace
        if v.now - v.disconnected_since > limit and v.now - v.waiting_since > limit:
            return "disconnected"
    return None

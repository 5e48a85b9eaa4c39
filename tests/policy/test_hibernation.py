"""When a kernel hibernates and wakes (notebookos.policy.hibernation): the rules, and properties
over any kernel state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as s

from notebookos.policy import hibernation as h

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def kernel(**kw: object) -> h.Kernel:
    base: dict[str, object] = {"phase": "Ready", "suspend": False, "idle_timeout": 60.0, "last_activity": None,
                               "awake_since": T0}  # fmt: skip
    return h.Kernel(**{**base, **kw})  # type: ignore[arg-type]


def test_a_serving_kernel_hibernates_once_idle_for_its_timeout_from_its_last_cell() -> None:
    k = kernel(last_activity=T0 + timedelta(seconds=30))
    early = h.decide(k, T0 + timedelta(seconds=60))
    assert early.action == h.NONE and early.due == T0 + timedelta(seconds=90)
    assert h.decide(k, T0 + timedelta(seconds=90)) == h.Decision(h.HIBERNATE, h.IDLE)


def test_idleness_counts_from_when_it_woke_not_from_its_last_cell_before_it_slept() -> None:
    k = kernel(last_activity=T0 - timedelta(hours=5), awake_since=T0)
    assert h.decide(k, T0 + timedelta(seconds=59)).action == h.NONE
    assert h.decide(k, T0 + timedelta(seconds=60)).action == h.HIBERNATE


def test_no_idle_timeout_never_hibernates_by_itself_but_suspend_does() -> None:
    k = kernel(idle_timeout=None)
    assert h.decide(k, T0 + timedelta(days=30)) == h.Decision(h.NONE)
    assert h.decide(kernel(idle_timeout=None, suspend=True), T0) == h.Decision(h.HIBERNATE, h.SUSPENDED)


def test_only_a_serving_kernel_is_checkpointed() -> None:
    for phase in ("Pending", "Starting", "Failed", "Waking", "Terminating"):
        assert h.decide(kernel(phase=phase, suspend=True), T0 + timedelta(days=1)).action == h.NONE


def test_a_request_for_the_checkpoint_it_sleeps_on_wakes_it_once() -> None:
    asleep = kernel(phase="Hibernated", asleep_because=h.IDLE, checkpoint="3-ab", wake_request="3-ab/r1")
    assert h.decide(asleep, T0).action == h.WAKE
    handled = kernel(phase="Hibernated", asleep_because="WakeFailed", checkpoint="3-ab", wake_request="3-ab/r1",
                     wake_handled="3-ab/r1")  # fmt: skip
    assert h.decide(handled, T0).action == h.NONE  # a failed wake consumed it: no wake loop
    stale = kernel(phase="Hibernated", asleep_because=h.IDLE, checkpoint="4-cd", wake_request="3-ab/r1")
    assert h.decide(stale, T0).action == h.NONE  # a request from before the last hibernation


def test_suspend_keeps_it_asleep_and_false_wakes_what_suspend_put_to_sleep() -> None:
    req = {"checkpoint": "3-ab", "wake_request": "3-ab/r1"}
    assert h.decide(kernel(phase="Hibernated", suspend=True, asleep_because=h.IDLE, **req), T0).action == h.NONE
    assert h.decide(kernel(phase="Hibernated", asleep_because=h.SUSPENDED), T0).action == h.WAKE
    assert h.decide(kernel(phase="Hibernating", asleep_because=h.IDLE), T0).action == h.NONE


PHASES = s.sampled_from(["Pending", "Starting", "Ready", "Degraded", "Failed", "Hibernating", "Hibernated", "Waking"])


@given(
    phase=PHASES,
    suspend=s.booleans(),
    timeout=s.none() | s.floats(10, 1e6),
    idle=s.floats(0, 1e7),
    because=s.sampled_from([None, h.IDLE, h.SUSPENDED, "WakeFailed"]),
    request=s.sampled_from([None, "1-a/x", "2-b/y"]),
    handled=s.sampled_from([None, "1-a/x"]),
)
def test_properties(
    phase: str, suspend: bool, timeout: float | None, idle: float, because: str | None, request: str | None,
    handled: str | None,
) -> None:  # fmt: skip
    k = kernel(phase=phase, suspend=suspend, idle_timeout=timeout, asleep_because=because, checkpoint="1-a",
               wake_request=request, wake_handled=handled)  # fmt: skip
    d = h.decide(k, T0 + timedelta(seconds=idle))
    if d.action == h.HIBERNATE:
        assert phase in h.SERVING and (suspend or (timeout is not None and idle >= timeout))
    if d.action == h.WAKE:
        assert phase in h.ASLEEP and not suspend
    if suspend:
        assert d.action != h.WAKE
    if d.due is not None:
        assert d.action == h.NONE and d.due > T0 + timedelta(seconds=idle)


def test_sizes_read_as_people_write_them() -> None:
    assert [h.size_text(n) for n in (0, 999, 12_345, 104_857_600, 1_073_741_824)] == [
        "0 bytes", "999 bytes", "12.3 kB", "104.9 MB", "1.1 GB"
    ]  # fmt: skip

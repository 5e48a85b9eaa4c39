"""Polling with a deadline and a message that says what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def until(predicate: Callable[[], T], timeout: float = 30.0, message: str = "condition", interval: float = 0.2) -> T:
    """Call `predicate` until it returns something truthy; return that, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the API may be briefly unavailable; keep the last error for the report
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {message}{detail}")
        time.sleep(interval)


def first_seen(
    list_fn: Callable[..., Any], predicate: Callable[[dict[str, Any]], T], timeout: float, message: str
) -> T:
    """The first object of a LIST that satisfies `predicate` (returns its truthy value), seen by
    a WATCH from the list's resourceVersion: a state that lasts less than a poll interval (a
    replica move on an idle test bed takes well under a second) is still seen."""
    from kubernetes import watch

    listed = list_fn()
    for obj in listed["items"]:
        if value := predicate(obj):
            return value
    deadline = time.monotonic() + timeout
    rv = listed["metadata"]["resourceVersion"]
    while (left := deadline - time.monotonic()) > 0:
        w = watch.Watch()
        for ev in w.stream(list_fn, resource_version=rv, timeout_seconds=max(1, int(left))):
            obj = ev["object"]
            rv = obj["metadata"]["resourceVersion"]
            if ev["type"] in ("ADDED", "MODIFIED") and (value := predicate(obj)):
                w.stop()
                return value
    raise TimeoutError(f"timed out after {timeout:.0f}s watching for {message}")

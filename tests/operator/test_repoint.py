"""Router re-points run off the reconcile's thread (operator/repoint.py)."""

from __future__ import annotations

import threading

from notebookos.operator.repoint import Repoints


def test_a_repoint_runs_once_in_the_background_and_its_result_is_taken_once() -> None:
    repoints, release, ended = Repoints(), threading.Event(), threading.Event()
    runs: list[str] = []

    def run() -> bool:
        runs.append("run")
        return release.wait(10)

    assert repoints.outcome("k", "1=a", run, ended.set) is None, "started: the caller does not wait"
    assert repoints.outcome("k", "1=a", run, ended.set) is None, "still running"
    assert runs == ["run"], "one re-point at a time for the same members"
    release.set()
    assert ended.wait(10), "the caller is called back when it ends"
    assert repoints.outcome("k", "1=a", run, ended.set) is True
    ended.clear()
    assert repoints.outcome("k", "1=a", run, ended.set) is None, "taken once: asked again, it runs again"
    assert ended.wait(10) and runs == ["run", "run"]


def test_a_repoint_that_raises_is_a_failure() -> None:
    repoints, ended = Repoints(), threading.Event()

    def run() -> bool:
        raise OSError("unreachable")

    assert repoints.outcome("k", "1=a", run, ended.set) is None
    assert ended.wait(10)
    assert repoints.outcome("k", "1=a", run, ended.set) is False

"""The kernel behaves like ipykernel where a client can tell: requests ipykernel could not handle
get an error and never block the next cell, the user's random state is the user's, and NotebookOS
errors show on IOPub like any error, with the execution count moving on."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient

from notebookos.kernel.local import LocalKernel, run, text_of, wait_for, wait_serving


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    k = LocalKernel(tmp_path_factory.mktemp("protocol")).start()
    try:
        yield k
    finally:
        k.stop()


def reply_to(get: Any, msg_id: str, timeout: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        m: dict[str, Any] = get(timeout=max(0.1, end - time.monotonic()))
        if m["parent_header"].get("msg_id") == msg_id:
            return m


def statuses(kc: Any, msg_id: str, timeout: float = 30) -> list[str]:
    """The IOPub status sequence of a request, up to its idle."""
    seen: list[str] = []
    end = time.monotonic() + timeout
    while "idle" not in seen:
        m = kc.get_iopub_msg(timeout=max(0.1, end - time.monotonic()))
        if m["parent_header"].get("msg_id") == msg_id and m["header"]["msg_type"] == "status":
            seen.append(m["content"]["execution_state"])
    return seen


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ({"silent": False}, "needs 'code'"),
        ([1, 2], "content must be a JSON object"),
        ({"code": 5}, "needs 'code'"),
        ({"code": "1", "user_expressions": [1]}, "'user_expressions' must be a JSON object"),
    ],
)
def test_bad_execute_request_gets_an_error_and_blocks_nothing(kc: Any, content: Any, why: str) -> None:
    msg = kc.session.msg("execute_request", json.dumps(content).encode())  # bytes: sent as they are
    kc.shell_channel.send(msg)
    reply = reply_to(kc.get_shell_msg, msg["header"]["msg_id"])
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "NotebookOSBadRequest"
    assert why in reply["content"]["evalue"]
    assert statuses(kc, msg["header"]["msg_id"]) == ["busy", "idle"]
    reply, out = run(kc, "40 + 2", timeout=30)
    assert reply["content"]["status"] == "ok" and text_of(out) == "42\n"


def test_bad_control_request_gets_an_error_and_blocks_nothing(kc: Any) -> None:
    msg = kc.session.msg("shutdown_request", json.dumps(["not", "an", "object"]).encode())
    kc.control_channel.send(msg)
    reply = reply_to(kc.get_control_msg, msg["header"]["msg_id"])
    assert reply["header"]["msg_type"] == "shutdown_reply"
    assert reply["content"]["status"] == "error" and "content must be a JSON object" in reply["content"]["evalue"]
    ok = kc.session.msg("interrupt_request", {})
    kc.control_channel.send(ok)
    assert reply_to(kc.get_control_msg, ok["header"]["msg_id"])["content"]["status"] == "ok"
    reply, out = run(kc, "'still here'", timeout=30)
    assert text_of(out) == "'still here'\n", "the kernel must not have shut down"


@pytest.mark.parametrize("target", [1, 2, 3])
def test_the_users_random_state_is_the_users(kc: Any, target: int) -> None:
    """PySyncObj drew its election timeouts from the global generator, at every heartbeat."""
    wait_serving(kc, target)
    code = (
        "import random, time\nimport numpy as np\nrandom.seed(1234)\nnp.random.seed(1234)\n"
        "time.sleep(1.0)  # heartbeats arrive meanwhile\n(random.random(), float(np.random.random()))"
    )
    reply, out = run(kc, code, metadata={"notebookos_target": target})
    assert reply["metadata"]["notebookos"]["replica"] == target
    import numpy as np

    want = (random.Random(1234).random(), float(np.random.RandomState(1234).random_sample()))
    assert text_of(out) == f"{want!r}\n"


def test_notebookos_errors_are_iopub_errors_and_the_count_moves_on(kernel: LocalKernel, tmp_path: Path) -> None:
    """What a front end that renders IOPub (JupyterLab, jupyter console) sees of a lost executor."""
    kc = kernel.client()
    listener = BlockingKernelClient()
    listener.load_connection_file(str(kernel.write_connection_file()))
    listener.start_channels(shell=False, stdin=False, hb=False, control=False)
    try:
        wait_serving(kc, 2)
        reply, _ = run(kc, "before = 1", metadata={"notebookos_target": 2})
        count = reply["content"]["execution_count"]
        # The listener is subscribed once it sees this cell's output.
        msg_id = kc.execute("'ping'")
        reply_to(kc.get_shell_msg, msg_id)
        wait_for(lambda: _drain(listener, msg_id), 30, "the listener to see the kernel's IOPub")
        count += 1
        mark = tmp_path / "running"
        result: dict[str, Any] = {}

        def cell() -> None:
            result["reply"], _ = run(
                kc,
                f"open({str(mark)!r}, 'w').close()\nimport time\ntime.sleep(60)",
                timeout=90,
                metadata={"notebookos_target": 2},
            )

        t = threading.Thread(target=cell)
        t.start()
        wait_for(mark.exists, 60, "the cell to run on replica 2")
        kernel.kill("replica-2")
        t.join(timeout=90)
        lost = result["reply"]
        assert lost["content"]["ename"] == "NotebookOSExecutorLost"
        assert lost["content"]["execution_count"] == count + 1, "the lost cell takes the next number"
        errors = []
        end = time.monotonic() + 30
        while not errors and time.monotonic() < end:
            m = listener.get_iopub_msg(timeout=max(0.1, end - time.monotonic()))
            if (
                m["parent_header"].get("msg_id") == lost["parent_header"]["msg_id"]
                and m["header"]["msg_type"] == "error"
            ):
                errors.append(m["content"])
        assert errors, "no IOPub error for the lost executor"
        (err,) = errors
        assert err["ename"] == "NotebookOSExecutorLost" and "was lost" in err["evalue"]
        assert err["traceback"] and "NotebookOSExecutorLost" in err["traceback"][0]
        reply, _ = run(kc, "before")
        assert reply["content"]["execution_count"] == count + 2
        kernel.start_replica(2)
        wait_serving(kc, 2)
    finally:
        listener.stop_channels()
        kc.stop_channels()


def _drain(listener: Any, msg_id: str) -> bool:
    try:
        while True:
            m = listener.get_iopub_msg(timeout=0.2)
            if m["parent_header"].get("msg_id") == msg_id:
                return True
    except Exception:
        return False

"""A jupyter_client BlockingKernelClient talks to the router as to any kernel."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from notebookos.kernel.local import LocalKernel, run, text_of, wait_for


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKernel]:
    k = LocalKernel(tmp_path_factory.mktemp("client")).start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="module")
def kc(kernel: LocalKernel) -> Iterator[Any]:
    c = kernel.client()
    yield c
    c.stop_channels()


def test_execute_outputs_and_result(kc: Any) -> None:
    reply, out = run(kc, "x = 6 * 7\nprint('x is', x)\nx")
    assert reply["content"]["status"] == "ok"
    assert text_of(out) == "x is 42\n42\n"
    nb = reply["metadata"]["notebookos"]
    assert nb["role"] == "executor" and nb["replica"] in (1, 2, 3)


def test_error_reply_and_traceback(kc: Any) -> None:
    reply, out = run(kc, "undefined_name + 1")
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "NameError"
    errors = [m for m in out if m["header"]["msg_type"] == "error"]
    assert len(errors) == 1, "only the executor's error output reaches the client"


def reply_to(get: Any, msg_id: str, timeout: float = 30) -> dict[str, Any]:
    """The reply to msg_id (wait_for_ready leaves replies to its extra kernel_info requests queued)."""
    end = time.monotonic() + timeout
    while True:
        reply: dict[str, Any] = get(timeout=max(0.1, end - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


def test_kernel_info(kc: Any) -> None:
    reply = reply_to(kc.get_shell_msg, kc.kernel_info())
    c = reply["content"]
    assert c["status"] == "ok" and c["language_info"]["name"] == "python"
    assert c["implementation"] == "notebookos"
    assert c["notebookos"]["kernel"] == "local"


def test_completion(kc: Any) -> None:
    run(kc, "import os\nsome_long_variable_name = 1")
    reply = reply_to(kc.get_shell_msg, kc.complete("some_long_var"))
    assert reply["content"]["status"] == "ok"
    assert "some_long_variable_name" in reply["content"]["matches"]


def test_heartbeat_answered(kc: Any) -> None:
    assert kc.is_alive()
    wait_for(lambda: kc.hb_channel.is_beating(), 10, "heartbeat")


def test_badly_signed_message_is_dropped(kernel: LocalKernel, kc: Any) -> None:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 2000  # deliver before close
    s.connect(f"tcp://127.0.0.1:{kernel.router_port}")
    header = json.dumps(
        {"msg_id": "evil", "msg_type": "execute_request", "session": "x", "username": "x", "version": "5.3"}
    )
    s.send_multipart(
        [b"<IDS|MSG>", b"0" * 64, header.encode(), b"{}", b"{}", json.dumps({"code": "evil = 1"}).encode()]
    )
    s.send_multipart([b"<IDS|MSG>", b"garbage"])
    s.close()
    wait_for(lambda: "dropped a malformed or badly signed message" in kernel.log("router"), 10, "the drop to be logged")
    _, out = run(kc, "'evil' in globals()")
    assert text_of(out) == "False\n"


def test_stdin_input(kc: Any) -> None:
    reply, out = run(
        kc, "name = input('who? ')\nprint('hello', name)", allow_stdin=True, stdin_hook=lambda m: kc.input("ada")
    )
    assert reply["content"]["status"] == "ok"
    assert "hello ada" in text_of(out)


def test_interrupt(kc: Any) -> None:
    msg_id = kc.execute("import time\nfor _ in range(600): time.sleep(0.1)")
    time.sleep(1.5)
    _send_interrupt(kc)
    t0 = time.monotonic()
    reply = reply_to(kc.get_shell_msg, msg_id)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert time.monotonic() - t0 < 20
    _, out = run(kc, "1 + 1")
    assert text_of(out) == "2\n"


def _send_interrupt(kc: Any) -> None:
    msg = kc.session.msg("interrupt_request", {})
    kc.control_channel.send(msg)
    reply = reply_to(kc.get_control_msg, msg["header"]["msg_id"])
    assert reply["header"]["msg_type"] == "interrupt_reply"
    assert reply["content"]["status"] == "ok"


def test_shutdown_last(tmp_path: Path) -> None:
    k = LocalKernel(tmp_path).start()
    try:
        c = k.client()
        run(c, "a = 1")
        reply = reply_to(c.get_control_msg, c.shutdown())
        assert reply["header"]["msg_type"] == "shutdown_reply"
        assert reply["content"]["status"] == "ok"
        c.stop_channels()
        wait_for(lambda: all(p.poll() is not None for p in k.procs.values()), 30, "router and replicas to exit")
    finally:
        k.stop()

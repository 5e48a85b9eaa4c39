"""What the client is told is what the replicas keep: an `ok` is never lost, a cell reported lost
leaves no trace, a restarted replica is never mistaken for a lost one, and a router restarted
mid-cell still answers the cell."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from notebookos.kernel.local import LocalKernel, run, text_of, wait_for, wait_serving
from tests.kernel.cells import value


def reply_to(kc: Any, msg_id: str, timeout: float) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while True:
        m: dict[str, Any] = kc.get_shell_msg(timeout=max(0.1, end - time.monotonic()))
        if m["parent_header"].get("msg_id") == msg_id:
            return m


def test_an_ok_reply_survives_its_executor_dying_right_after(kernel: LocalKernel, kc: Any) -> None:
    """The executor used to reply before committing: killed on the reply, the cell was lost."""
    run(kc, "n = 0")
    for trial in range(1, 3):
        wait_serving(kc, 2)
        reply, _ = run(kc, "n += 1\nbig = list(range(2_000_000))", metadata={"notebookos_target": 2})
        assert reply["content"]["status"] == "ok" and reply["metadata"]["notebookos"]["replica"] == 2
        kernel.kill("replica-2")  # at once, on the reply
        assert value(kc, "n", target=1) == str(trial)
        assert value(kc, "(n, len(big))", target=3) == f"({trial}, 2000000)"
        kernel.start_replica(2)
    wait_serving(kc, 2)
    assert value(kc, "n", target=2) == "2"


def test_a_cell_reported_lost_leaves_no_trace(kernel: LocalKernel, kc: Any, tmp_path: Path) -> None:
    """The executor is frozen mid-cell (as if cut off) until the others abort the cell, then goes
    on: it undoes the cell, in-place changes included, and nothing of it reaches any replica."""
    run(kc, "import numpy as np\nclass Box:\n    pass\nbox = Box()\nbox.v = 1\nlog = [0]\nd = {}\narr = np.zeros(3)")
    wait_serving(kc, 2)
    mark = tmp_path / "running"
    result: dict[str, Any] = {}
    code = (
        f"log.append(1)\nd['x'] = 1\narr[0] = 5\nbox.v = 2\nnew = 1\nopen({str(mark)!r}, 'w').close()\n"
        "import time\ntime.sleep(3)"
    )

    def cell() -> None:
        result["reply"], _ = run(kc, code, timeout=120, metadata={"notebookos_target": 2})

    t = threading.Thread(target=cell)
    t.start()
    wait_for(mark.exists, 60, "the cell to run on replica 2")
    pid = kernel.procs["replica-2"].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t.join(timeout=90)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not t.is_alive(), "no reply while the executor was cut off"
    content = result["reply"]["content"]
    assert content["status"] == "error" and content["ename"] == "NotebookOSExecutorLost", content
    state = "(log, d, arr.tolist(), box.v, 'new' in globals())"
    want = "([0], {}, [0.0, 0.0, 0.0], 1, False)"
    assert value(kc, state, target=1) == want
    wait_serving(kc, 2, timeout=90)  # it goes on, finds its cell aborted, undoes it
    assert value(kc, state, target=2) == want, "the executor kept changes of the aborted cell"
    assert value(kc, "log.append(2)\nd['y'] = 2\nlog", target=2) == "[0, 2]"
    assert value(kc, "(log, d)", target=3) == "([0, 2], {'y': 2})"


def test_a_restarted_replica_first_cells_are_never_declared_lost(kernel: LocalKernel, kc: Any) -> None:
    """Each cell here is the first a freshly restarted replica 3 is asked to run: every reply is
    ok, and every cell is applied exactly once."""
    run(kc, "log = []")
    wait_serving(kc, 3)
    appended = []
    for j in range(4):
        kernel.kill("replica-3")
        kernel.start_replica(3)
        # The router may still see the old process or none: a cell runs elsewhere meanwhile.
        end = time.monotonic() + 90
        while True:
            reply, _ = run(kc, f"log.append({j})", timeout=90, metadata={"notebookos_target": 3})
            assert reply["content"]["status"] == "ok", (j, reply["content"])
            appended.append(j)
            if reply["metadata"]["notebookos"]["replica"] == 3 or time.monotonic() > end:
                break
            time.sleep(0.2)
        assert reply["metadata"]["notebookos"]["replica"] == 3, "the restarted replica never ran a cell"
    for target in (1, 2, 3):
        assert value(kc, "print(log)", target=target) == str(appended)


def test_router_killed_mid_cell_the_client_still_gets_the_reply(kernel: LocalKernel, tmp_path: Path) -> None:
    kc = kernel.client()
    try:
        mark = tmp_path / "running"
        msg_id = kc.execute(f"open({str(mark)!r}, 'w').close()\nimport time\ntime.sleep(4)\nr = 1")
        wait_for(mark.exists, 60, "the cell to run")
        kernel.kill("router")
        kernel.start_router()
        reply = reply_to(kc, msg_id, timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        seen: list[dict[str, Any]] = []  # every IOPub message of the cell, for the report if it fails
        after = kc.execute_interactive("r", timeout=60, output_hook=seen.append)
        assert after["content"]["status"] == "ok", after["content"]
        shown = [m for m in seen if m["header"]["msg_type"] not in ("status", "execute_input")]
        assert text_of(shown).strip() == "1", [(m["header"]["msg_type"], m["content"]) for m in seen]
    finally:
        kc.stop_channels()


def test_router_down_while_the_cell_ended_the_new_one_delivers_the_reply(kernel: LocalKernel, tmp_path: Path) -> None:
    kc = kernel.client()
    try:
        start, end = tmp_path / "start", tmp_path / "end"
        code = f"open({str(start)!r}, 'w').close()\nimport time\ntime.sleep(1)\nr = 2\nopen({str(end)!r}, 'w').close()"
        msg_id = kc.execute(code)
        wait_for(start.exists, 60, "the cell to run")
        kernel.kill("router")
        # The executor logs the commit, then replies (to no router).
        wait_for(lambda: any(f"cell {msg_id}:" in kernel.log(f"replica-{i}") for i in (1, 2, 3)), 60, "the commit")
        kernel.start_router()
        reply = reply_to(kc, msg_id, timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert value(kc, "r") == "2"
    finally:
        kc.stop_channels()

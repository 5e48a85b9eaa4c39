"""Faults: a replica killed between cells or during a cell, a replica restarted, the router killed.
The kernel keeps serving with the state of the last committed cell."""

from __future__ import annotations

import threading
import time
from typing import Any

from notebookos.kernel.local import LocalKernel, run, text_of, wait_serving
from tests.kernel.cells import value


def test_kill_a_replica_between_cells_then_restart_it(kernel: LocalKernel) -> None:
    kc = kernel.client()
    try:
        reply, _ = run(kc, "x = 41\nitems = ['a']")
        executor = reply["metadata"]["notebookos"]["replica"]
        victim = next(r for r in (1, 2, 3) if r != executor)
        kernel.kill(f"replica-{victim}")
        assert value(kc, "x += 1\nitems.append('b')\nx") == "42"
        assert value(kc, "items") == "['a', 'b']"
        # The restarted replica catches up from its journal and the others, then serves a cell.
        kernel.start_replica(victim)
        wait_serving(kc, victim)
        assert value(kc, "(x, items)", target=victim) == "(42, ['a', 'b'])"
    finally:
        kc.stop_channels()


def _lose_executor_mid_cell(kernel: LocalKernel, kc: Any, restart: bool, cell_s: int, timeout: float) -> Any:
    """Run `state['n'] = 99` then a long sleep on replica 2, kill replica 2 while it runs (and
    restart it at once if asked), and return the reply's content."""
    run(kc, "state = {'n': 1}")
    target = 2
    wait_serving(kc, target)
    result: dict[str, Any] = {}

    def long_cell() -> None:
        result["reply"], result["out"] = run(
            kc,
            f"import time\nstate['n'] = 99\ntime.sleep({cell_s})",
            timeout=timeout,
            metadata={"notebookos_target": target},
        )

    t = threading.Thread(target=long_cell)
    t.start()
    time.sleep(2.0)  # the cell is running on replica 2
    kernel.kill(f"replica-{target}")
    if restart:
        kernel.start_replica(target)
    t.join(timeout=timeout)
    assert not t.is_alive(), "the client got no reply after its executor was lost"
    return result["reply"]["content"]


def test_kill_the_executor_during_a_cell(kernel: LocalKernel) -> None:
    kc = kernel.client()
    try:
        content = _lose_executor_mid_cell(kernel, kc, restart=False, cell_s=30, timeout=90)
        assert content["status"] == "error", content
        assert content["ename"] == "NotebookOSExecutorLost"
        assert "last completed cell" in content["evalue"]
        # The kernel keeps serving, with the state of the last committed cell.
        assert value(kc, "state") == "{'n': 1}"
        assert value(kc, "state['n'] += 1\nstate['n']") == "2"
    finally:
        kc.stop_channels()


def test_executor_replaced_at_once_during_a_cell(kernel: LocalKernel) -> None:
    """The executor dies mid-cell and its replacement (same id, same address) is back before the
    others could notice a disconnection: the new process announces itself, so the lost cell is
    aborted instead of being waited for forever."""
    kc = kernel.client()
    try:
        content = _lose_executor_mid_cell(kernel, kc, restart=True, cell_s=60, timeout=120)
        assert content["status"] == "error" and content["ename"] == "NotebookOSExecutorLost", content
        assert value(kc, "state") == "{'n': 1}"
        wait_serving(kc, 2)
        assert value(kc, "state['n'] += 1\nstate['n']", target=2) == "2"
    finally:
        kc.stop_channels()


def test_kill_the_router_and_reconnect(kernel: LocalKernel) -> None:
    kc = kernel.client()
    try:
        run(kc, "kept = [1, 2, 3]")
        kernel.kill("router")
        kernel.start_router()
        # The same client reconnects (ZeroMQ redials the same ports) and finds the state. Output
        # published before its IOPub socket has redialled is lost, so it may have to ask again.
        end = time.monotonic() + 90
        while True:
            try:
                assert value(kc, "sum(kept)", timeout=8) == "6"
                break
            except (TimeoutError, AssertionError):
                if time.monotonic() > end:
                    raise
                time.sleep(0.5)
    finally:
        kc.stop_channels()


def test_replica_moved_to_a_new_address_rejoins(kernel: LocalKernel) -> None:
    kc = kernel.client()
    try:
        run(kc, "moved = 'state before the move'")
        # Replica 1 has the smallest Raft id: the others dial it, so they must learn its new address.
        kernel.move_replica(1)
        wait_serving(kc, 1, timeout=90)
        assert value(kc, "moved", target=1) == "'state before the move'"
        assert "updating" in kernel.log("router")
    finally:
        kc.stop_channels()


def test_kill_a_standby_during_a_cell(kernel: LocalKernel) -> None:
    kc = kernel.client()
    try:
        wait_serving(kc, 1)
        result: dict[str, Any] = {}

        def long_cell() -> None:
            result["reply"], result["out"] = run(
                kc,
                "import time\ntime.sleep(3)\ntotal = 5\nprint('done')",
                timeout=90,
                metadata={"notebookos_target": 1},
            )

        t = threading.Thread(target=long_cell)
        t.start()
        time.sleep(1.0)
        kernel.kill("replica-3")
        t.join(timeout=90)
        assert result["reply"]["content"]["status"] == "ok"
        assert text_of(result["out"]) == "done\n"
        assert value(kc, "total + 1", target=2) == "6", "the surviving standby has the cell's state"
    finally:
        kc.stop_channels()


def test_router_repointed_live_when_a_replica_moves_its_jupyter_ports(kernel: LocalKernel) -> None:
    """Router continuity: a replica comes back at new Jupyter and Raft ports; told so on its
    control channel, the router re-points its sockets in place and the same client connection
    keeps running cells there (the re-pointing used to close sockets its loops were awaiting,
    which stopped that replica's heartbeats for good)."""
    kc = kernel.client()
    try:
        run(kc, "moved = 'state before the move'")
        wait_serving(kc, 3)
        kernel.move_replica(3, jupyter=True)
        content = {
            "replica": 3,
            "jupyter": f"127.0.0.1:{kernel.jupyter_ports[3]}",
            "raft": f"127.0.0.1:{kernel.raft_ports[3]}",
        }
        msg = kc.session.msg("notebookos_update_peer_request", content)
        kc.control_channel.send(msg)
        end = time.monotonic() + 60
        while True:
            reply = kc.get_control_msg(timeout=max(0.1, end - time.monotonic()))
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                break
        assert reply["content"]["status"] == "ok", reply["content"]
        wait_serving(kc, 3, timeout=90)
        assert value(kc, "moved", target=3) == "'state before the move'"
        assert value(kc, "moved = 'after'\nmoved", target=3) == "'after'"
        assert value(kc, "moved", target=1) == "'after'"
        assert "re-pointed" in kernel.log("router")
        # Still one healthy kernel: the router answers heartbeats, every replica serves.
        assert kc.is_alive()
        for rid in (1, 2, 3):
            wait_serving(kc, rid)
    finally:
        kc.stop_channels()

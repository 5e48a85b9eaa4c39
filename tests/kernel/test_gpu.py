"""GPU grants through the broker (HTTP, over the in-process GpuLedger): the executor holds devices
only while its cell runs; the router prefers a replica whose node can grant them; when none can,
the replicas' election fails and the client is told the kernel is overloaded, without a hang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notebookos.kernel.local import LocalKernel, run, text_of, wait_for, wait_serving
from tests.kernel.broker_server import TOKEN, BrokerServer

GPU_WAIT = 4  # seconds a cell waits for GPUs in these tests (300 by default)


@pytest.fixture
def gpu_wait() -> float:
    return GPU_WAIT


@pytest.fixture
def gpu_kernel(
    tmp_path: Path, broker_server: BrokerServer, gpu_wait: float
) -> Iterator[tuple[LocalKernel, BrokerServer, Any]]:
    for i in (1, 2, 3):
        broker_server.broker.ledger.set_node(f"node-{i}", [f"GPU-{i}-0"])
    token = tmp_path / "token"
    token.write_text(TOKEN)
    env = {"NOTEBOOKOS_GPU_WAIT_SECONDS": str(gpu_wait)}
    k = LocalKernel(tmp_path, gpus=1, broker_url=broker_server.url, token_file=str(token), extra_env=env).start()
    try:
        kc = k.client()
        try:
            # The router learns each replica's node from its probes; wait until all three serve cells.
            for rid in (1, 2, 3):
                wait_serving(kc, rid)
            yield k, broker_server, kc
        finally:
            kc.stop_channels()
    finally:
        k.stop()


def test_executor_holds_its_devices_only_while_the_cell_runs(gpu_kernel: Any) -> None:
    _, broker, kc = gpu_kernel
    child = (
        "import subprocess, sys\n"
        "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"CUDA_VISIBLE_DEVICES\"])'],"
        " capture_output=True, text=True).stdout, end='')"
    )
    reply, out = run(kc, f"print(NOTEBOOKOS_GPU_UUIDS)\nweights = [0.5] * 3\n{child}")
    nb = reply["metadata"]["notebookos"]
    assert reply["content"]["status"] == "ok"
    # The grant reaches the processes the cell starts (CUDA_VISIBLE_DEVICES), not only the namespace.
    assert text_of(out) == f"['GPU-{nb['replica']}-0']\nGPU-{nb['replica']}-0\n"
    assert nb["devices"] == [f"GPU-{nb['replica']}-0"]
    assert broker.broker.ledger.grants() == [], "the grant must be released when the cell ends"
    ids = [body["executionId"] for path, body in broker.calls if path == "/release"]
    assert nb["execution_id"] in ids


def test_router_prefers_a_replica_whose_node_has_a_free_gpu(gpu_kernel: Any) -> None:
    _, broker, kc = gpu_kernel
    reply, _ = run(kc, "a = 1")
    first = reply["metadata"]["notebookos"]["replica"]
    broker.broker.acquire("someone-else", 1, f"node-{first}", 1, "other-exec")  # that node is now busy
    try:
        reply, out = run(kc, "a + 1")
        assert text_of(out) == "2\n"
        assert reply["metadata"]["notebookos"]["replica"] != first
    finally:
        broker.broker.release("other-exec")


def test_no_gpu_anywhere_reports_overload_without_hanging(gpu_kernel: Any) -> None:
    k, broker, kc = gpu_kernel
    run(kc, "kept = 'state'")
    for i in (1, 2, 3):
        broker.broker.acquire("someone-else", i, f"node-{i}", 1, f"busy-{i}")
    try:
        reply, out = run(kc, "print('must not run')", timeout=60)
        c = reply["content"]
        assert c["status"] == "error" and c["ename"] == "NotebookOSOverloaded"
        assert "no replica could get 1 GPU(s)" in c["evalue"] and "Run the cell again" in c["evalue"]
        assert f"It waited {GPU_WAIT} s for a replica to move" in c["evalue"], c["evalue"]
        waits = [m for m in out if m["header"]["msg_type"] == "display_data"]
        assert len(waits) == 1 and "Waiting for 1 GPU(s)" in waits[0]["content"]["data"]["text/plain"], out
        # Every full node is named, each once: the reasons of all replicas come from the log.
        assert all(c["evalue"].count(f"node node-{i}:") == 1 for i in (1, 2, 3)), c["evalue"]
        assert "must not run" not in text_of(out)
        shown = [m["content"] for m in out if m["header"]["msg_type"] == "error"]
        assert [e["ename"] for e in shown] == ["NotebookOSOverloaded"], "a front end renders IOPub errors"
        assert shown[0]["traceback"] and shown[0]["evalue"] == c["evalue"]
        wait_for(lambda: '"event": "Overloaded"' in k.log("router"), 10, "the overload to be reported")
    finally:
        for i in (1, 2, 3):
            broker.broker.release(f"busy-{i}")
    _, out = run(kc, "kept")
    assert text_of(out) == "'state'\n"


@pytest.mark.parametrize("gpu_wait", [90])
def test_a_cell_waits_for_gpus_and_runs_when_a_node_frees_them(gpu_kernel: Any) -> None:
    """What a notebook shows: a display, updated in place, saying what the cell waits for; then
    the cell's own output, from the replica whose node freed its GPU."""
    _, broker, kc = gpu_kernel
    run(kc, "x = 41")
    for i in (1, 2, 3):
        broker.broker.acquire("someone-else", i, f"node-{i}", 1, f"busy-{i}")
    seen: list[dict[str, Any]] = []
    msg_id = kc.execute("x += 1\nprint(x, NOTEBOOKOS_GPU_UUIDS)")
    try:

        def waiting() -> bool:
            while True:
                try:
                    m = kc.get_iopub_msg(timeout=0.2)
                except Exception:
                    return False
                if m["parent_header"].get("msg_id") == msg_id:
                    seen.append(m)
                    if m["header"]["msg_type"] == "display_data":
                        return True

        wait_for(waiting, 60, "the cell to show that it waits")
        text = seen[-1]["content"]["data"]["text/plain"]
        assert "Waiting for 1 GPU(s)" in text and all(f"replica {i}: node node-{i}:" in text for i in (1, 2, 3)), text
        display_id = seen[-1]["content"]["transient"]["display_id"]
    finally:
        broker.broker.release("busy-2")
    reply = kc.get_shell_msg(timeout=60)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "ok", reply["content"]
    assert reply["metadata"]["notebookos"]["replica"] == 2, "the replica whose node freed a GPU"
    while not (
        seen and seen[-1]["header"]["msg_type"] == "status" and seen[-1]["content"]["execution_state"] == "idle"
    ):
        m = kc.get_iopub_msg(timeout=30)
        if m["parent_header"].get("msg_id") == msg_id:
            seen.append(m)
    updates = [m["content"] for m in seen if m["header"]["msg_type"] == "update_display_data"]
    assert updates and updates[-1]["transient"]["display_id"] == display_id
    assert "Got 1 GPU(s) on replica 2's node" in updates[-1]["data"]["text/plain"]
    streams = [m for m in seen if m["header"]["msg_type"] == "stream"]
    assert text_of(streams) == "42 ['GPU-2-0']\n", seen
    for i in (1, 3):
        broker.broker.release(f"busy-{i}")


@pytest.mark.parametrize("gpu_wait", [90])
def test_interrupting_a_cell_that_waits_for_gpus_ends_the_wait(gpu_kernel: Any) -> None:
    _, broker, kc = gpu_kernel
    run(kc, "y = 1")
    for i in (1, 2, 3):
        broker.broker.acquire("someone-else", i, f"node-{i}", 1, f"busy-{i}")
    try:
        msg_id = kc.execute("y = 2")
        wait_for(lambda: _displayed(kc, msg_id), 60, "the cell to show that it waits")
        kc.control_channel.send(kc.session.msg("interrupt_request", {}))
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        assert "the cell did not run" in reply["content"]["evalue"]
    finally:
        for i in (1, 2, 3):
            broker.broker.release(f"busy-{i}")
    _, out = run(kc, "y")
    assert text_of(out) == "1\n", "the interrupted cell left no trace"


def _displayed(kc: Any, msg_id: str) -> bool:
    while True:
        try:
            m = kc.get_iopub_msg(timeout=0.2)
        except Exception:
            return False
        if m["parent_header"].get("msg_id") == msg_id and m["header"]["msg_type"] == "display_data":
            return True


def test_election_fallback_without_a_target(gpu_kernel: Any) -> None:
    _, broker, kc = gpu_kernel
    run(kc, "counter = 10")
    reply, out = run(kc, "counter += 1\ncounter", metadata={"notebookos_target": "election"})
    assert reply["content"]["status"] == "ok"
    assert text_of(out) == "11\n"
    assert reply["metadata"]["notebookos"]["role"] == "executor"
    assert broker.broker.ledger.grants() == []

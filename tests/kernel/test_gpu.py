"""GPU grants through the broker (HTTP, over the in-process GpuLedger): the executor holds devices
only while its cell runs; the router prefers a replica whose node can grant them; when none can,
the replicas' election fails and the client is told the kernel is overloaded, without a hang."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notebookos.kernel.local import TOKEN, BrokerServer, LocalKernel, run, text_of, wait_for, wait_serving


@pytest.fixture
def gpu_kernel(tmp_path: Path, broker_server: BrokerServer) -> Iterator[tuple[LocalKernel, BrokerServer, Any]]:
    for i in (1, 2, 3):
        broker_server.broker.ledger.set_node(f"node-{i}", [f"GPU-{i}-0"])
    token = tmp_path / "token"
    token.write_text(TOKEN)
    k = LocalKernel(tmp_path, gpus=1, broker_url=broker_server.url, token_file=str(token)).start()
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
    reply, out = run(kc, "print(NOTEBOOKOS_GPU_UUIDS)\nweights = [0.5] * 3")
    nb = reply["metadata"]["notebookos"]
    assert reply["content"]["status"] == "ok"
    assert text_of(out) == f"['GPU-{nb['replica']}-0']\n"
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
        assert "no replica could get 1 GPU(s)" in c["evalue"] and "run the cell again" in c["evalue"]
        assert "must not run" not in text_of(out)
        wait_for(lambda: '"event": "Overloaded"' in k.log("router"), 10, "the overload to be reported")
    finally:
        for i in (1, 2, 3):
            broker.broker.release(f"busy-{i}")
    _, out = run(kc, "kept")
    assert text_of(out) == "'state'\n"


def test_election_fallback_without_a_target(gpu_kernel: Any) -> None:
    _, broker, kc = gpu_kernel
    run(kc, "counter = 10")
    reply, out = run(kc, "counter += 1\ncounter", metadata={"notebookos_target": "election"})
    assert reply["content"]["status"] == "ok"
    assert text_of(out) == "11\n"
    assert reply["metadata"]["notebookos"]["role"] == "executor"
    assert broker.broker.ledger.grants() == []

"""Replicated kernel: `python -m benchmarks.kernel [--quick] [--no-1g]`.

1. Execute round trip of a trivial cell through a jupyter_client BlockingKernelClient: plain
   ipykernel vs the replicated kernel (router + three replicas on loopback), p50 and p99, ratio.
   The replicated figure includes the cell's one Raft commit (its state change, committed before
   the reply, so an `ok` is durable) and the router hop.
2. State hand-off for 1 MB, 100 MB and 1 GB of numpy array state: a cell makes the array on
   replica 1, the next cell reads every page of it on replica 2, which first loads the committed
   state (object store on a local file:// directory). Hand-off = second cell's round trip minus a
   trivial cell's. Beside it, measured in the same run: this machine's memcpy and loopback TCP
   for the same size, and the store alone (write, then read and touch every page).
3. The cell that makes 1 GB of state: its round trip on plain ipykernel and on the replicated
   kernel (whose reply waits for the commit of the small state only), and the ratio. Both kernels
   run side by side and take turns; before each timed cell, the kernel allocates and frees 1 GB,
   so that its pages are not the first touch of memory the VM has handed back to its host (that
   alone took 0.1 to 2.8 s for the same cell here, whichever kernel ran it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from jupyter_client.manager import KernelManager

from notebookos.kernel.local import LocalKernel, run
from notebookos.kernel.store import ObjectStore


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def round_trips(kc: Any, n: int, metadata: dict[str, Any] | None = None) -> list[float]:
    for _ in range(5):  # warm up
        run(kc, "1", metadata=metadata)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        reply, _ = run(kc, "1", metadata=metadata)
        out.append(time.perf_counter() - t)
        assert reply["content"]["status"] == "ok"
    return out


MAKE = "state = np.ones({n}, dtype=np.uint8)"
READ = "int(state[::4096].sum())"  # touches every page


@contextlib.contextmanager
def plain_kernel() -> Iterator[Any]:
    """A plain ipykernel and a client of it."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        run(kc, "import numpy as np")
        yield kc
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)


def make_cell(kc: Any, metadata: dict[str, Any] | None) -> float:
    """Seconds of the cell that makes 1 GB, right after the kernel freed 1 GB (see the top)."""
    run(kc, "w = np.ones(1 << 30, dtype=np.uint8); del w", timeout=600, metadata=metadata)
    t = time.perf_counter()
    reply, _ = run(kc, MAKE.format(n=1 << 30), timeout=600, metadata=metadata)
    took = time.perf_counter() - t
    assert reply["content"]["status"] == "ok", reply["content"]
    run(kc, "del state", metadata=metadata)
    run(kc, "1", metadata=metadata)  # the replicated kernel's next cell waits for the last write
    os.sync()
    return took


def memcpy_seconds(nbytes: int) -> float:
    """Copy into a buffer whose pages already exist (the best case for any copy)."""
    src, dst = np.ones(nbytes, dtype=np.uint8), np.zeros(nbytes, dtype=np.uint8)
    dst[:] = 1
    t = time.perf_counter()
    np.copyto(dst, src)
    return time.perf_counter() - t


def tcp_seconds(nbytes: int) -> float:
    """Send nbytes over loopback TCP into a receiver's preallocated buffer."""
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    dst[:] = 1  # its pages exist, as memcpy's destination's do
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def recv() -> None:
        conn, _ = srv.accept()
        view, got = dst.data.cast("B"), 0
        while got < nbytes:
            got += conn.recv_into(view[got:], min(nbytes - got, 1 << 24))
        conn.close()

    t_recv = threading.Thread(target=recv)
    t_recv.start()
    with socket.create_connection(("127.0.0.1", port)) as c:
        t = time.perf_counter()
        c.sendall(src.data)
        t_recv.join()
        took = time.perf_counter() - t
    srv.close()
    return took


def handoff(kc: Any, nbytes: int, reps: int) -> tuple[float, float]:
    """Median seconds of a cell on replica 2 that reads state of nbytes just made on replica 1,
    and of a trivial cell on replica 2 (what the hand-off adds is the difference)."""
    base = statistics.median(round_trips(kc, 10, {"notebookos_target": 2}))
    took = []
    for _ in range(reps):
        reply, _ = run(kc, MAKE.format(n=nbytes), timeout=600, metadata={"notebookos_target": 1})
        assert reply["content"]["status"] == "ok", reply["content"]
        t = time.perf_counter()
        reply, _ = run(kc, READ, timeout=600, metadata={"notebookos_target": 2})
        took.append(time.perf_counter() - t)
        assert reply["metadata"]["notebookos"]["replica"] == 2, reply["metadata"]
        run(kc, "del state", metadata={"notebookos_target": 1})
    return statistics.median(took), base


def store_seconds(nbytes: int, root: Path) -> tuple[float, float]:
    """The store alone, in-process: write; then read and touch every page."""
    store = ObjectStore(f"file://{root}")
    arr = np.ones(nbytes, dtype=np.uint8)
    t = time.perf_counter()
    url, _ = store.put(f"floor/x{nbytes}", arr)
    t1 = time.perf_counter()
    back = ObjectStore.get(url)
    assert int(back[::4096].sum()) == len(range(0, nbytes, 4096))
    return t1 - t, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer samples, no 1 GB case")
    ap.add_argument("--no-1g", action="store_true", help="skip the 1 GB case")
    args = ap.parse_args(argv)
    n = 50 if args.quick else 300
    sizes = [1 << 20, 100 << 20] + ([] if args.quick or args.no_1g else [1 << 30])

    one_g = 1 << 30 in sizes
    with (
        plain_kernel() as pk,
        tempfile.TemporaryDirectory(prefix="nbos-bench-") as tmp,
        LocalKernel(Path(tmp), extra_env={"NOTEBOOKOS_LOG_LEVEL": "WARNING"}) as k,
    ):
        kc = k.client()
        run(kc, "import numpy as np")
        plain, repl = round_trips(pk, n), round_trips(kc, n)
        print("execute round trip of a trivial cell (ms)")
        print(f"  {'':24}{'p50':>9}{'p99':>9}")
        p50p, p99p = pct(plain, 50) * 1e3, pct(plain, 99) * 1e3
        p50r, p99r = pct(repl, 50) * 1e3, pct(repl, 99) * 1e3
        print(f"  {'plain ipykernel':24}{p50p:9.2f}{p99p:9.2f}")
        print(f"  {'replicated (3 + router)':24}{p50r:9.2f}{p99r:9.2f}")
        print(f"  {'ratio':24}{p50r / p50p:9.2f}{p99r / p99p:9.2f}   (n={n}; goal p50 ratio <= 3)")
        print()
        print("state hand-off replica 1 -> 2 (array made by one cell, every page read by the next elsewhere)")
        print("  hand-off = read cell on replica 2 minus a trivial cell there; memcpy, loopback TCP and the")
        print("  store (write | read + touch) measured now on this machine for the same size")
        print(
            f"  {'size':>8}{'hand-off s':>12}{'goal s':>8}{'memcpy s':>10}{'TCP s':>8}{'store w s':>11}"
            f"{'store r s':>11}{'x memcpy':>10}{'x TCP':>8}"
        )
        goals = {1 << 20: 0.005, 100 << 20: 0.2, 1 << 30: 2.0}
        for size in sizes:
            reps = 5 if size <= 1 << 20 else 3
            took, base = handoff(kc, size, reps)
            extra = max(took - base, 1e-4)
            w, r = store_seconds(size, Path(tmp) / "floor")
            mc, tcp = memcpy_seconds(size), tcp_seconds(size)
            label = f"{size >> 20} MB" if size < 1 << 30 else "1 GB"
            print(
                f"  {label:>8}{extra:12.3f}{goals[size]:8.3f}{mc:10.3f}{tcp:8.3f}{w:11.3f}{r:11.3f}"
                f"{extra / mc:10.1f}{extra / tcp:8.1f}",
                flush=True,
            )
        if one_g:
            plain_make, made = [], []
            for _ in range(5):  # taking turns
                plain_make.append(make_cell(pk, None))
                made.append(make_cell(kc, {"notebookos_target": 1}))
            mp, mr = statistics.median(plain_make), statistics.median(made)
            print()
            print("the cell that makes 1 GB of state (s, median of 5, the kernels taking turns)")
            print(f"  plain ipykernel {mp:.3f}   replicated {mr:.3f}   ratio {mr / mp:.2f}   (goal <= 1.2)")
        kc.stop_channels()


if __name__ == "__main__":
    main()

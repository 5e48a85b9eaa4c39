"""Replicated kernel: `python -m benchmarks.kernel [--quick] [--no-1g]`.

1. Execute round trip of a trivial cell through a jupyter_client BlockingKernelClient: plain
   ipykernel vs the replicated kernel (router + three replicas on loopback), p50 and p99, ratio.
   The replicated figure includes the cell's one Raft commit (its state change, committed before
   the reply, so an `ok` is durable) and the router hop.
2. State hand-off for 1 MB, 100 MB and 1 GB of numpy array state: a cell makes the array on
   replica 1, the next cell reads it on replica 2, which first loads the committed state (object
   store on a local file:// directory). Hand-off = second cell's round trip minus a trivial cell's;
   beside it the floor: the same array written to and read back from the store in-process.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
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


def plain_round_trips(n: int) -> list[float]:
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        r = round_trips(kc, n)
        kc.stop_channels()
        return r
    finally:
        km.shutdown_kernel(now=True)


def handoff(kc: Any, nbytes: int, reps: int) -> tuple[float, float]:
    """Median seconds of a cell on replica 2 that reads state of nbytes just made on replica 1,
    and of a trivial cell on replica 2 (what the hand-off adds is the difference)."""
    base = statistics.median(round_trips(kc, 10, {"notebookos_target": 2}))
    took = []
    for _ in range(reps):
        reply, _ = run(kc, f"state = np.ones({nbytes}, dtype=np.uint8)", timeout=600, metadata={"notebookos_target": 1})
        assert reply["content"]["status"] == "ok", reply["content"]
        t = time.perf_counter()
        reply, _ = run(kc, "state.nbytes", timeout=600, metadata={"notebookos_target": 2})
        took.append(time.perf_counter() - t)
        assert reply["metadata"]["notebookos"]["replica"] == 2, reply["metadata"]
        run(kc, "del state", metadata={"notebookos_target": 1})
    return statistics.median(took), base


def store_floor(nbytes: int, root: Path) -> float:
    store = ObjectStore(f"file://{root}")
    arr = np.ones(nbytes, dtype=np.uint8)
    t = time.perf_counter()
    url, _ = store.put("floor/x", arr)
    back = ObjectStore.get(url)
    took = time.perf_counter() - t
    assert back.nbytes == nbytes
    return took


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer samples, no 1 GB case")
    ap.add_argument("--no-1g", action="store_true", help="skip the 1 GB case")
    args = ap.parse_args(argv)
    n = 50 if args.quick else 300
    sizes = [1 << 20, 100 << 20] + ([] if args.quick or args.no_1g else [1 << 30])

    plain = plain_round_trips(n)
    with (
        tempfile.TemporaryDirectory(prefix="nbos-bench-") as tmp,
        LocalKernel(Path(tmp), extra_env={"NOTEBOOKOS_LOG_LEVEL": "WARNING"}) as k,
    ):
        kc = k.client()
        run(kc, "import numpy as np")
        repl = round_trips(kc, n)
        print("execute round trip of a trivial cell (ms)")
        print(f"  {'':24}{'p50':>9}{'p99':>9}")
        p50p, p99p = pct(plain, 50) * 1e3, pct(plain, 99) * 1e3
        p50r, p99r = pct(repl, 50) * 1e3, pct(repl, 99) * 1e3
        print(f"  {'plain ipykernel':24}{p50p:9.2f}{p99p:9.2f}")
        print(f"  {'replicated (3 + router)':24}{p50r:9.2f}{p99r:9.2f}")
        print(f"  {'ratio':24}{p50r / p50p:9.2f}{p99r / p99p:9.2f}   (n={n})")
        print()
        print("state hand-off replica 1 -> 2 (array made by one cell, read by the next elsewhere)")
        print("  read cell = round trip of the cell on replica 2 (it loads the state first); trivial = the")
        print("  same without state; hand-off = the difference; floor = store write + read in-process")
        print(
            f"  {'size':>8}{'read cell s':>13}{'trivial s':>11}{'hand-off s':>12}{'MB/s':>8}"
            f"{'floor s':>10}{'MB/s':>8}{'ratio':>8}"
        )
        for size in sizes:
            reps = 5 if size <= 1 << 20 else 3 if size <= 100 << 20 else 1
            took, base = handoff(kc, size, reps)
            floor = store_floor(size, Path(tmp) / "floor")
            extra = max(took - base, 1e-4)
            mb = size / 1e6
            label = f"{size >> 20} MB" if size < 1 << 30 else "1 GB"
            print(
                f"  {label:>8}{took:13.3f}{base:11.3f}{extra:12.3f}{mb / extra:8.0f}{floor:10.3f}{mb / floor:8.0f}"
                f"{extra / floor:8.2f}",
                flush=True,
            )
        kc.stop_channels()


if __name__ == "__main__":
    main()

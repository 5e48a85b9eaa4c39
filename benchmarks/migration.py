"""Overload to cell start: `python -m benchmarks.migration [--quick] [--moves N]`.

On the e2e test bed (real kube-apiserver, scheduler with the NotebookOS extender, broker,
operator, kwok GPU nodes, replica and router processes): a kernel on three nodes, a fourth node
free. Each round, the kernel's three nodes lose their GPUs (what the node agent publishes when
they fail), a cell is submitted, waits, a replica moves to the free node, the cell runs there; the
nodes recover. The figure is the time from submission to the cell's first line running (read from
the cell itself, same clock), p50 and p99 over the moves, beside a trivial cell's round trip on the
same connection. Needs the toolchain (e2e/toolchain/build.sh; built on first use).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.kernel import pct
from e2e.testbed.cluster import start_cluster
from e2e.testbed.notebook import apply_kernel, client_for, kernel_obj, replicas_of, set_gpu_health
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until
from notebookos.kernel.local import run, text_of
from notebookos.operator.migration import COOLDOWN_SECONDS

KERNEL = "bench"


def _nodes(cluster: Any, ns: str) -> dict[int, str]:
    return {r["spec"]["replicaId"]: r["status"].get("nodeName") for r in replicas_of(cluster, ns, KERNEL)}


def _settled(cluster: Any, ns: str, moves: int) -> bool:
    """The last move is counted and every replica is Ready again."""
    k = kernel_obj(cluster, ns, KERNEL).get("status") or {}
    reps = replicas_of(cluster, ns, KERNEL)
    return k.get("migrations") == moves and all((r.get("status") or {}).get("phase") == "Ready" for r in reps)


def _explain(cluster: Any, ns: str) -> None:
    k = kernel_obj(cluster, ns, KERNEL).get("status") or {}
    print("kernel:", {x: k.get(x) for x in ("phase", "migrations", "replacements")})
    for c in k.get("conditions") or []:
        print("  ", c["type"], c["status"], c.get("reason"), (c.get("message") or "")[:200])
    for r in replicas_of(cluster, ns, KERNEL):
        st = r.get("status") or {}
        print(
            "replica",
            r["spec"]["replicaId"],
            st.get("phase"),
            st.get("nodeName"),
            st.get("migrations"),
            r["metadata"].get("annotations"),
        )
    for e in cluster.core().list_namespaced_event(ns).items:
        if e.involved_object.kind == "NotebookKernel":
            print("event", e.reason, (e.message or "")[:200])


def measure(moves: int, trivial: int) -> tuple[list[float], list[float]]:
    tmp = tempfile.mkdtemp(prefix="nbos-bench-")
    ok = False
    try:
        cluster = start_cluster(Path(tmp) / "cluster")
        try:
            cluster.add_gpu_nodes(4, prefix="bench")
            stack = Stack(cluster).start()
            try:
                ns = "bench"
                cluster.kubectl("create", "namespace", ns)
                apply_kernel(cluster, ns, KERNEL)
                kc = client_for(cluster, ns, KERNEL)
                try:
                    for _ in range(5):
                        run(kc, "1")
                    rtt = []
                    for _ in range(trivial):
                        t = time.perf_counter()
                        run(kc, "1")
                        rtt.append(time.perf_counter() - t)
                    waits = []
                    for i in range(moves):
                        mine = list(_nodes(cluster, ns).values())
                        for n in mine:
                            set_gpu_health(cluster, n, False)
                        t0 = time.time()
                        reply, out = run(kc, "import time\nprint(time.time())", timeout=300)
                        assert reply["content"]["status"] == "ok", reply["content"]
                        waits.append(float(text_of([m for m in out if m["header"]["msg_type"] == "stream"])) - t0)
                        for n in mine:
                            set_gpu_health(cluster, n, True)
                        try:
                            until(lambda i=i: _settled(cluster, ns, i + 1), 120, f"move {i + 1} to settle")
                        except TimeoutError:
                            _explain(cluster, ns)
                            raise
                        time.sleep(COOLDOWN_SECONDS)  # the operator's rule: one overload move per kernel per 10 s
                    ok = True
                    return waits, rtt
                finally:
                    kc.stop_channels()
            finally:
                stack.close()
        finally:
            cluster.close()
    finally:
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}/cluster/logs")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 moves, 20 trivial cells")
    ap.add_argument("--moves", type=int, default=8)
    args = ap.parse_args(argv)
    moves, trivial = (3, 20) if args.quick else (args.moves, 50)
    waits, rtt = measure(moves, trivial)
    base = pct(rtt, 50)
    print(f"overload to cell start over {moves} moves (replica moved to a free node, router re-pointed live):")
    for q in (50, 99):
        w = pct(waits, q)
        print(f"  p{q}: {w * 1e3:8.0f} ms   trivial cell round trip p50 {base * 1e3:6.1f} ms   ratio {w / base:7.0f}x")


if __name__ == "__main__":
    main()

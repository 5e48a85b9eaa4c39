"""Wake from hibernation beside a cold start: `python -m benchmarks.hibernation [--quick]`.

On the e2e test bed (real kube-apiserver, scheduler with the NotebookOS extender, broker,
operator, kwok GPU nodes, replica and router processes; the object store a local folder): for
0, 100 MB and 1 GB of state, a kernel hibernates after its idle timeout, then a cell on the same
connection wakes it. The figure is the time from the request to the cell's own first output (the
cell prints a clock reading taken after it touched every byte of the state, so the restore is in
it), beside the cold start of a new kernel: `kubectl apply` to its first cell's output. Needs the
toolchain (e2e/toolchain/build.sh; built on first use).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from e2e.testbed.cluster import Cluster, start_cluster
from e2e.testbed.notebook import client_for, kernel_obj
from e2e.testbed.stack import Stack
from e2e.testbed.wait import until
from notebookos.kernel.local import run, text_of

SIZES = {"0": 0, "100 MB": 100 * 2**20, "1 GB": 2**30}
CHECK = "import time\n{touch}print(time.time())"


def _apply(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> float:
    body = {"apiVersion": "notebookos.io/v1alpha1", "kind": "NotebookKernel", "metadata": {"name": name}, "spec": spec}
    t0 = time.time()
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    return t0


def _phase(cluster: Cluster, ns: str, name: str) -> str | None:
    return (kernel_obj(cluster, ns, name).get("status") or {}).get("phase")


def _first_output(kc: Any, code: str, t0: float) -> float:
    reply, out = run(kc, code, timeout=600)
    assert reply["content"]["status"] == "ok", reply["content"]
    printed = text_of([m for m in out if m["header"]["msg_type"] == "stream"]).split()
    return float(printed[-1]) - t0


def cold_start(cluster: Cluster, ns: str, store: Path, n: int) -> list[float]:
    times = []
    for i in range(n):
        name = f"cold-{i}"
        t0 = _apply(cluster, ns, name, {"storage": {"url": f"file://{store}"}})
        until(lambda name=name: _phase(cluster, ns, name) == "Ready", 240, f"{name} Ready")
        kc = client_for(cluster, ns, name)
        try:
            times.append(_first_output(kc, CHECK.format(touch=""), t0))
        finally:
            kc.stop_channels()
        cluster.kubectl("delete", "nbk", name, "-n", ns, "--wait=false")
    return times


def wakes(cluster: Cluster, ns: str, store: Path, label: str, size: int, rounds: int) -> list[float]:
    name = f"wake-{label.replace(' ', '').lower()}"
    _apply(cluster, ns, name, {"idleTimeout": "10s", "storage": {"url": f"file://{store}"}})
    until(lambda: _phase(cluster, ns, name) == "Ready", 240, f"{name} Ready")
    kc = client_for(cluster, ns, name)
    try:
        make = f"import numpy as np\nstate = np.ones({size // 8}, dtype=np.float64)" if size else "state = 1"
        reply, _ = run(kc, make, timeout=600)
        assert reply["content"]["status"] == "ok", reply["content"]
        touch = "assert float(np.sum(state)) == state.size\n" if size else "assert state == 1\n"
        times = []
        for _ in range(rounds):
            until(lambda: _phase(cluster, ns, name) == "Hibernated", 300, f"{name} Hibernated")
            times.append(_first_output(kc, CHECK.format(touch=touch), time.time()))
        return times
    finally:
        kc.stop_channels()
        cluster.kubectl("delete", "nbk", name, "-n", ns, "--wait=false")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one round each, no 1 GB")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    sizes = {k: v for k, v in SIZES.items() if not (args.quick and v >= 2**30)}
    tmp = Path(tempfile.mkdtemp(prefix="nbos-bench-"))
    store = Path("/var/tmp") / f"notebookos-bench-store-{uuid.uuid4().hex[:8]}"  # not the pods' /tmp
    store.mkdir(parents=True)
    ok = False
    try:
        cluster = start_cluster(tmp / "cluster")
        try:
            cluster.add_gpu_nodes(4, prefix="bench")
            stack = Stack(cluster).start()
            try:
                ns = "bench"
                cluster.kubectl("create", "namespace", ns)
                cold = cold_start(cluster, ns, store, rounds)
                results = {label: wakes(cluster, ns, store, label, size, rounds) for label, size in sizes.items()}
                ok = True
            finally:
                stack.close()
        finally:
            cluster.close()
    finally:
        shutil.rmtree(store, ignore_errors=True)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"logs kept in {tmp}/cluster/logs")
    base = statistics.median(cold)
    print(f"wake from hibernation, request to the cell's first output (median of {rounds}; test bed, kwok nodes):")
    print(f"  cold start (kubectl apply to first output): {base:6.2f} s")
    for label, times in results.items():
        w = statistics.median(times)
        each = ", ".join(f"{t:.2f}" for t in times)
        print(f"  wake with {label:>6} of state: {w:6.2f} s   ratio to cold start {w / base:5.2f}x   each {each} s")


if __name__ == "__main__":
    main()

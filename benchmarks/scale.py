"""The operator at scale: `python -m benchmarks.scale [--quick] [--nodes N] [--kernels K]`.

On the e2e test bed (real kube-apiserver, etcd, kube-scheduler with the NotebookOS extender,
controller-manager, the operator; kwok nodes): N GPU nodes, then K NotebookKernels created at once.
Replica and router pods are kwok's (Running and Ready, no process behind them). A stand-in writes
what replicas write to their status (their Raft view when it changes, then a heartbeat every
HEARTBEAT_PERIOD), so the API load of an idle cluster is the real one; say so beside any figure.

Prints: time from creation to Ready per kernel (p50, p99, all); API requests per kernel during
creation and writes per idle kernel per minute afterwards (the API server's own
apiserver_request_total); the operator's CPU seconds and peak RSS; the extender's filter p99
during the burst (its histogram). Then churn (cells reported, replica pods deleted, nodes removed):
the lag from each disruption to the kernel Ready again, p50 and p99. Goals on a 2-core machine: all
Ready within 120 s, at most one API write per idle kernel per minute, operator RSS under 500 MB.
Needs the toolchain (e2e/toolchain/build.sh; built on first use).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.kernel import pct
from benchmarks.takeover import Takeover, duplicates, start_peers
from e2e.testbed.cluster import Cluster, start_cluster
from e2e.testbed.stack import Stack
from notebookos.api import GROUP, VERSION, KernelReplica, NotebookKernel
from notebookos.kernel.report import HEARTBEAT_PERIOD, now_rfc3339

NS = "scale"
BASELINE_NS = "scale-baseline"
OLD_HEARTBEAT_PERIOD = 10.0  # what replicas wrote before report.ReplicaReport: the baseline
WRITES = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}
OURS = {NotebookKernel.crd_plural, KernelReplica.crd_plural, "pods", "services", "secrets", "configmaps",
        "poddisruptionbudgets", "serviceaccounts", "roles", "rolebindings", "events"}  # fmt: skip


def api_requests(cluster: Cluster) -> Counter[tuple[str, str]]:
    """apiserver_request_total by (verb, resource), from the API server's /metrics."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    out: Counter[tuple[str, str]] = Counter()
    for fam in text_string_to_metric_families(text):
        if fam.name == "apiserver_request":
            for s in fam.samples:
                if s.name == "apiserver_request_total":
                    out[(s.labels.get("verb", ""), s.labels.get("resource", ""))] += int(s.value)
    return out


def top(delta: Counter[tuple[str, str]], n: int = 6) -> str:
    """Where the requests went: the largest (verb, resource) counts."""
    return ", ".join(f"{v} {r or '-'} {c}" for (v, r), c in delta.most_common(n))


def totals(delta: Counter[tuple[str, str]]) -> tuple[int, int, int]:
    """All requests, writes, and writes to what kernels are made of (not leases or nodes)."""
    writes = sum(n for (v, _), n in delta.items() if v in WRITES)
    ours = sum(n for (v, r), n in delta.items() if v in WRITES and r in OURS)
    return sum(delta.values()), writes, ours


def proc_usage(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and peak RSS in MB of a process."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def filter_p99(url: str) -> float | None:
    """The extender's filter p99 in seconds, from its latency histogram's buckets."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    buckets = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "notebookos_extender_seconds_bucket" and s.labels.get("verb") == "filter":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= 0.99 * total)


class Watcher:
    """When each kernel was first (and last) seen Ready, from a watch."""

    def __init__(self, cluster: Cluster, ns: str = NS) -> None:
        self.custom = client.CustomObjectsApi(cluster.api())
        self.ns = ns
        self.ready_at: dict[str, float] = {}
        self.phase: dict[str, str] = {}
        self.history: dict[str, list[tuple[float, str]]] = {}
        self.changed = threading.Condition()
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            try:
                self._watch()
            except Exception:  # a dropped watch (the API server under load): watch again
                time.sleep(0.5)

    def _watch(self) -> None:
        w = watch.Watch()
        listing = self.custom.list_namespaced_custom_object
        for ev in w.stream(listing, GROUP, VERSION, self.ns, NotebookKernel.crd_plural, timeout_seconds=60):
            obj = ev["object"]
            name, phase = obj["metadata"]["name"], (obj.get("status") or {}).get("phase", "")
            with self.changed:
                if self.phase.get(name) != phase:
                    self.history.setdefault(name, []).append((time.monotonic(), phase))
                self.phase[name] = phase
                if phase == "Ready":
                    self.ready_at.setdefault(name, time.monotonic())
                self.changed.notify_all()

    def wait(self, pred: Any, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(pred, timeout)

    def recovered(self, name: str, since: float) -> float | None:
        """Seconds from `since` until the kernel was Ready again after leaving Ready; None if not yet."""
        with self.changed:
            left = False
            for t, phase in self.history.get(name, []):
                if t < since:
                    continue
                if phase != "Ready":
                    left = True
                elif left:
                    return t - since
        return None

    def stop(self) -> None:
        self._stop = True


class StandIn:
    """What the replicas write to their status: the Raft view once Ready, then a heartbeat every
    HEARTBEAT_PERIOD (kernel_image/report.py), and a new commitIndex with every cell."""

    def __init__(self, cluster: Cluster, ns: str = NS) -> None:
        self.custom = client.CustomObjectsApi(cluster.api())
        self.ns = ns
        self.period = HEARTBEAT_PERIOD
        self.rng = random.Random(11)
        self.last: dict[str, float] = {}
        self.commit: Counter[str] = Counter()
        self.pool = ThreadPoolExecutor(4)

    def report(self, replica: str, leader: bool, first: bool = False) -> None:
        raft = {"role": "Leader" if leader else "Follower", "term": 1, "commitIndex": self.commit[replica]}
        body = {"status": {"raft": raft, "lastHeartbeat": now_rfc3339()}}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.ns, KernelReplica.crd_plural, replica, body
            )
            # Replicas start at different times: their heartbeats are spread over the period, so
            # an idle window shorter than the period still sees its share of them.
            self.last[replica] = time.monotonic() - (self.rng.uniform(0, self.period) if first else 0.0)
        except client.exceptions.ApiException:
            pass

    def tick(self) -> None:
        listed: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.ns, KernelReplica.crd_plural)
        items = listed["items"]
        now = time.monotonic()
        due = [
            r["metadata"]["name"]
            for r in items
            if (r.get("status") or {}).get("phase") == "Ready"
            and now - self.last.get(r["metadata"]["name"], -1e9) >= self.period
        ]
        list(self.pool.map(lambda n: self.report(n, n.endswith("-1"), n not in self.last), due))


def quiesce(pid: int, limit: float = 600.0) -> float:
    """Seconds until the operator uses under a tenth of a core over 5 s (its queue is worked off)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        cpu = proc_usage(pid)[0]
        time.sleep(5)
        if proc_usage(pid)[0] - cpu < 0.5:
            break
    return time.monotonic() - t0


def idle_phase(cluster: Cluster, standin: StandIn, op_pid: int, seconds: float, kernels: int) -> tuple[float, ...]:
    """Per kernel per minute: requests, writes, writes to kernel objects; operator CPU s per minute."""
    before, cpu0, t1 = api_requests(cluster), proc_usage(op_pid)[0], time.monotonic()
    while time.monotonic() - t1 < seconds:
        standin.tick()
        time.sleep(2)
    minutes = (time.monotonic() - t1) / 60
    delta = api_requests(cluster) - before
    n_all, n_w, n_ours = totals(delta)
    print(f"  most requests: {top(delta)}")
    cpu = proc_usage(op_pid)[0] - cpu0
    per = kernels * minutes
    return n_all / per, n_w / per, n_ours / per, cpu / minutes


def kernel_manifest(i: int) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "NotebookKernel", "metadata": {"name": f"k{i:04d}"}, "spec": {}}


@dataclass
class Creation:
    """One creation burst's figures (see `creation`)."""

    ready: int
    p50: float
    p99: float
    all_ready: float
    requests: float  # per kernel, all clients (the API server's count)
    reads: float
    writes: float
    ours: float  # writes to kernel objects, pods and Events
    cpu_ms: float  # the operator's, per kernel
    rss: float  # the operator's peak, MB


def creation(cluster: Cluster, ns: str, kernels: int) -> tuple[Creation, Watcher, StandIn]:
    """K NotebookKernels created at once in `ns`, until all are Ready: the figures, per kernel."""
    op_pid = cluster.procs["operator"].proc.pid
    ensure_namespace(cluster, ns)
    custom = client.CustomObjectsApi(cluster.api())
    watcher, standin = Watcher(cluster, ns), StandIn(cluster, ns)
    before, cpu0 = api_requests(cluster), proc_usage(op_pid)[0]
    t0 = time.monotonic()
    created: dict[str, float] = {}

    def create(i: int) -> None:
        m = kernel_manifest(i)
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, NotebookKernel.crd_plural, m)
        created[m["metadata"]["name"]] = time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(kernels)))
    print(f"{kernels} NotebookKernels created in {ns} in {time.monotonic() - t0:.1f} s", flush=True)
    deadline = time.monotonic() + 1800
    while not watcher.wait(lambda: len(watcher.ready_at) >= kernels, 10) and time.monotonic() < deadline:
        standin.tick()
        print(f"  {len(watcher.ready_at)} Ready after {time.monotonic() - t0:.0f} s", flush=True)
    standin.tick()
    all_ready = time.monotonic() - t0
    lat = [watcher.ready_at[n] - created[n] for n in created if n in watcher.ready_at]
    after, (cpu1, rss) = api_requests(cluster), proc_usage(op_pid)
    n_all, n_w, n_ours = totals(after - before)
    print(f"  most requests: {top(after - before)}")
    k = kernels
    fig = Creation(len(lat), pct(lat, 50), pct(lat, 99), all_ready, n_all / k, (n_all - n_w) / k, n_w / k,
                   n_ours / k, (cpu1 - cpu0) / k * 1e3, rss)  # fmt: skip
    return fig, watcher, standin


def ensure_namespace(cluster: Cluster, ns: str) -> None:
    try:
        cluster.core().create_namespace({"metadata": {"name": ns}})
    except client.exceptions.ApiException as exc:
        if exc.status != 409:
            raise


ROWS = (
    ("created -> Ready p50 (s)", "p50"),
    ("created -> Ready p99 (s)", "p99"),
    ("all Ready (s; goal 120)", "all_ready"),
    ("API requests per kernel", "requests"),
    ("  reads (GET, LIST, WATCH)", "reads"),
    ("  writes", "writes"),
    ("  of them to kernel objects, pods, Events", "ours"),
    ("operator CPU per kernel (ms)", "cpu_ms"),
    ("operator peak RSS (MB; goal < 500)", "rss"),
)


def print_creation(kernels: int, nodes: int, now: Creation, base: Creation | None) -> None:
    print()
    print(f"creation of {kernels} kernels on {nodes} nodes ({now.ready} Ready):")
    if base is None:
        for label, attr in ROWS:
            print(f"  {label:<44} {getattr(now, attr):>10.1f}")
        return
    print("  baseline: the same burst earlier in this run, the operator's watch-fed caches off")
    print(f"  {'':<44} {'cache':>10} {'baseline':>10} {'ratio':>7}")
    for label, attr in ROWS:
        a, b = getattr(now, attr), getattr(base, attr)
        print(f"  {label:<44} {a:>10.1f} {b:>10.1f} {a / b if b else float('nan'):>7.2f}")


def run(nodes: int, kernels: int, idle: float, churn: float, baseline: bool, takeover: bool) -> None:
    tmp = tempfile.mkdtemp(prefix="nbos-scale-")
    cluster = start_cluster(Path(tmp) / "cluster")
    try:
        t = time.monotonic()
        for start in range(0, nodes, 50):
            cluster.add_gpu_nodes(min(50, nodes - start), prefix="gpu")
        print(f"{nodes} kwok GPU nodes in {time.monotonic() - t:.0f} s", flush=True)
        stack = Stack(cluster, process_pods=False).start()
        base = None
        watchers: list[Watcher] = []
        try:
            if baseline:
                # The same burst first with the caches off, in a namespace of its own and an
                # operator that watches only that one; then that operator stops.
                cluster.stop("operator")
                # Made first: an operator started before its namespace existed sometimes never
                # started its watches there (kopf 1.45, seen twice in these runs).
                ensure_namespace(cluster, BASELINE_NS)
                stack.start_operator(args=["-n", BASELINE_NS], env={"NOTEBOOKOS_WATCH_CACHE": "off"})
                base, w, _ = creation(cluster, BASELINE_NS, kernels)
                w.stop()
                print_creation(kernels, nodes, base, None)
            cluster.stop("operator")
            ensure_namespace(cluster, NS)
            if takeover:
                start_peers(stack, NS, {"NOTEBOOKOS_WATCH_CACHE": "on"})
            else:
                stack.start_operator(args=["-n", NS], env={"NOTEBOOKOS_WATCH_CACHE": "on"})
            op_pid = cluster.procs["operator"].proc.pid
            now, watcher, standin = creation(cluster, NS, kernels)
            watchers.append(watcher)
            print_creation(kernels, nodes, now, base)
            p99 = filter_p99(stack.extender_url)
            print(f"  extender filter p99 during the bursts: <= {p99 * 1e3:.1f} ms" if p99 else "  no filter calls")

            figures = {}
            for label, period in (("now", HEARTBEAT_PERIOD), ("baseline", OLD_HEARTBEAT_PERIOD)):
                if idle <= 0:
                    break
                print(f"operator busy {quiesce(op_pid):.0f} s more, working off the events queued so far", flush=True)
                standin.period = period
                figures[label] = idle_phase(cluster, standin, op_pid, idle, kernels)
                f = figures[label]
                print(f"idle {idle / 60:.1f} min, replica heartbeat every {period:.0f} s ({label}), a kernel a "
                      f"minute: {f[2]:.2f} writes to kernel objects, pods and Events (goal <= 1); all writes, node "
                      f"leases included, {f[1]:.2f}; requests {f[0]:.1f}. Operator {f[3]:.1f} CPU s/min")  # fmt: skip
            standin.period = HEARTBEAT_PERIOD
            if figures:
                now_, old = figures["now"], figures["baseline"]
                print(f"  ratio now / baseline: writes {now_[2] / max(old[2], 1e-9):.2f}, "
                      f"operator CPU {now_[3] / max(old[3], 1e-9):.2f}")  # fmt: skip

            if churn > 0:
                custom = client.CustomObjectsApi(cluster.api())
                taking = Takeover(cluster) if takeover else None
                churn_phase(cluster, custom, watcher, standin, churn, kernels, taking)
                if taking is not None:
                    took = f"{taking.resumed_after:.1f} s" if taking.resumed_after is not None else "not seen"
                    made_twice = duplicates(cluster, NS)
                    print(f"takeover: the active operator killed (SIGKILL) halfway through the churn; the standby "
                          f"resumed after {took}; objects made twice: {sum(made_twice.values())} "
                          f"({', '.join(f'{k} {v}' for k, v in made_twice.items())})")  # fmt: skip
        finally:
            for w in watchers:
                w.stop()
            stack.close()
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


def churn_phase(
    cluster: Cluster,
    custom: Any,
    watcher: Watcher,
    standin: StandIn,
    seconds: float,
    kernels: int,
    takeover: Takeover | None = None,
) -> None:
    """Cells reported (router and replica status), replica pods deleted, nodes removed; the lag
    from each disruption to its kernel Ready again. `takeover`: the active operator is killed
    halfway through."""
    core = cluster.core()
    rng = random.Random(7)
    lags: list[float] = []
    pending: dict[str, float] = {}
    cells = deleted = removed = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        k = f"k{rng.randrange(kernels):04d}"
        roll = rng.random()
        if roll < 0.7:  # a cell: the router's activity and the executor's commit
            cells += 1
            body = {"status": {"executor": f"{k}-1", "cells": cells, "lastActivity": now_rfc3339()}}
            custom.patch_namespaced_custom_object_status(GROUP, VERSION, NS, NotebookKernel.crd_plural, k, body)
            standin.commit[f"{k}-1"] += 1
            standin.report(f"{k}-1", True)
        elif roll < 0.95 and k not in pending:
            pods = core.list_namespaced_pod(NS, label_selector=f"notebookos.io/kernel={k},notebookos.io/replica-id=2")
            for p in pods.items:
                core.delete_namespaced_pod(p.metadata.name, NS, grace_period_seconds=0)
                deleted += 1
                pending[k] = time.monotonic()
        elif k not in pending:
            pod = core.list_namespaced_pod(NS, label_selector=f"notebookos.io/kernel={k},notebookos.io/replica-id=3")
            node = next((p.spec.node_name for p in pod.items if p.spec.node_name), None)
            if node:
                hit = {p.metadata.labels.get("notebookos.io/kernel") for p in core.list_namespaced_pod(
                    NS, field_selector=f"spec.nodeName={node}").items}  # fmt: skip
                core.delete_node(node)
                removed += 1
                for kk in hit - {None}:
                    pending.setdefault(str(kk), time.monotonic())
        if takeover is not None:
            if takeover.killed_at is None and time.monotonic() - t0 >= seconds / 2:
                takeover.kill_active()
            takeover.poll()
        time.sleep(0.2)
        settle(watcher, pending, lags)
    end = time.monotonic() + 300
    while (pending or (takeover and takeover.resumed_after is None)) and time.monotonic() < end:
        time.sleep(1)
        settle(watcher, pending, lags)
        if takeover is not None:
            takeover.poll()
    print(f"churn, {seconds:.0f} s: {cells} cells reported, {deleted} replica pods deleted, {removed} nodes removed")
    if lags:
        print(f"  disruption -> kernel Ready again: p50 {pct(lags, 50):.1f} s  p99 {pct(lags, 99):.1f} s "
              f"over {len(lags)} kernels; {len(pending)} not seen to leave Ready and come back")  # fmt: skip


def settle(watcher: Watcher, pending: dict[str, float], lags: list[float]) -> None:
    for k, since in list(pending.items()):
        if (lag := watcher.recovered(k, since)) is not None:
            lags.append(lag)
            del pending[k]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="50 nodes, 100 kernels, 60 s idle, 60 s churn")
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--kernels", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=120.0, help="seconds of each idle phase")
    ap.add_argument("--churn", type=float, default=120.0, help="seconds of the churn phase")
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="first the same burst with the operator's watch-fed caches off, printed beside it as the baseline",
    )
    ap.add_argument(
        "--takeover",
        action="store_true",
        help="two operators with kopf peering; the active one is killed halfway through the churn",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.kernels, args.idle, args.churn = 50, 100, 60.0, 60.0
    # Stopped, it still stops what it started (the cluster's processes are in their own sessions).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(args.nodes, args.kernels, args.idle, args.churn, args.baseline, args.takeover)


if __name__ == "__main__":
    main()

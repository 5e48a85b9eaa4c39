"""Extender and broker latency: `python -m benchmarks.extender [--quick]`.

Filter and prioritize at 50, 500 and 5,000 GPU nodes through the real aiohttp handler over
loopback HTTP (client and server in this process), with the scheduler's two payload forms:
node names (nodeCacheCapable: true, the shipped configuration) and full Node objects. Beside each:
the pure policy call on prebuilt NodeViews (no HTTP, no JSON, no cache lookup) and a no-op
handler receiving the same payload (the HTTP + JSON floor). Acquire+release through the broker
(memory store, static auth) beside the pure ledger calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from notebookos.extender.auth import Identity, StaticAuthenticator
from notebookos.extender.binding_store import MemoryBindingStore
from notebookos.extender.broker import Broker
from notebookos.extender.broker_app import make_broker_app
from notebookos.extender.cluster_state import ClusterState, PodEntry, node_info_from_object
from notebookos.extender.extender_app import Extender, make_app
from notebookos.labels import GPU_INVENTORY_ANNOTATION, GPU_POOL_LABEL, KERNEL_LABEL, REPLICA_GPUS_ANNOTATION
from notebookos.policy.ledger import GpuLedger, Grant
from notebookos.policy.placement import ReplicaRequest, SubscriptionRatio, filter_nodes, rank_scores


def node_obj(name: str, gpus: int = 8) -> dict[str, Any]:
    """A Node roughly the size of a real one (labels, taints, conditions, images trimmed)."""
    inv = [
        {
            "index": i,
            "uuid": f"GPU-{name}-{i:02d}-0000-0000-000000000000",
            "memoryMiB": 81559,
            "model": "NVIDIA H100 80GB HBM3",
            "healthy": True,
        }
        for i in range(gpus)
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "resourceVersion": "12345",
            "labels": {
                GPU_POOL_LABEL: "true",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "p5.48xlarge",
                "topology.kubernetes.io/zone": "us-east-1a",
            },
            "annotations": {GPU_INVENTORY_ANNOTATION: json.dumps(inv)},
        },
        "spec": {"taints": [{"key": "notebookos.io/gpu", "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "capacity": {"cpu": "192", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": str(gpus)},
            "allocatable": {"cpu": "191", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": str(gpus)},
            "conditions": [
                {"type": t, "status": "False", "reason": f"Kubelet{t}", "message": "ok"}
                for t in ("MemoryPressure", "DiskPressure", "PIDPressure")
            ]
            + [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
        },
    }


def pod(kernel: str, gpus: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{kernel}-1",
            "namespace": "bench",
            "labels": {KERNEL_LABEL: kernel},
            "annotations": {REPLICA_GPUS_ANNOTATION: str(gpus)},
        },
        "spec": {"schedulerName": "notebookos-scheduler", "containers": [{"name": "replica", "image": "kernel"}]},
    }


def populated_state(n: int, rng: random.Random) -> tuple[ClusterState, list[dict[str, Any]]]:
    """n 8-GPU nodes holding 1.5 x n kernels of 3 replicas, a quarter of them executing."""
    objs = [node_obj(f"gpu-{i:05d}") for i in range(n)]
    state = ClusterState()
    state.replace_nodes({o["metadata"]["name"]: node_info_from_object(o) for o in objs})
    names = [o["metadata"]["name"] for o in objs]
    for k in range(n * 3 // 2):
        gpus = rng.choice([1, 1, 2, 4])
        hosts = rng.sample(names, 3)
        for r, h in enumerate(hosts, start=1):
            state.set_pod(f"bench/k{k}-{r}", PodEntry(f"bench/k{k}", gpus, h))
        if k % 4 == 0:
            state.set_binding(f"bench/k{k}-1", (hosts[0], gpus))
    return state, objs


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def summary(samples: list[float]) -> tuple[float, float]:
    return statistics.median(samples) * 1e3, pct(samples, 99) * 1e3


async def timed(fn: Callable[[], Awaitable[Any]], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


def timed_sync(fn: Callable[[], Any], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def row(label: str, fig: tuple[float, float], base: tuple[float, float], base_label: str) -> None:
    print(
        f"  {label:<34} p50 {fig[0]:8.3f} ms  p99 {fig[1]:8.3f} ms   |  {base_label:<22} p50 {base[0]:8.3f} ms"
        f"  p99 {base[1]:8.3f} ms   ratio p50 {fig[0] / base[0]:7.1f}x"
    )


async def bench_size(s: aiohttp.ClientSession, n: int, m: int, rng: random.Random, noop_url: str) -> None:
    state, objs = populated_state(n, rng)
    ext = Extender(state, SubscriptionRatio())
    ext.update_ratio()
    runner, url = await serve(make_app(ext))
    names = [o["metadata"]["name"] for o in objs]
    p = pod("new-kernel", 2)
    by_names = json.dumps({"Pod": p, "NodeNames": names}).encode()
    by_objs = json.dumps({"Pod": p, "Nodes": {"items": objs}}).encode()
    hdr = {"Content-Type": "application/json"}
    views = [v for v in state.views(names).values() if v is not None]
    req = ReplicaRequest("bench/new-kernel", 2)
    ratio = ext.ratio.value
    pure_filter = summary(timed_sync(lambda: filter_nodes(views, req, ratio), m))
    pure_score = summary(timed_sync(lambda: rank_scores(views), m))

    async def post(path: str, body: bytes, base: str = url) -> None:
        async with s.post(f"{base}{path}", data=body, headers=hdr) as r:
            assert r.status == 200, await r.text()
            await r.read()

    m_objs = max(m // 4, 10)
    print(f"{n} nodes (payload: names {len(by_names) / 1024:.0f} KiB, objects {len(by_objs) / 1024:.0f} KiB)")
    f_names = summary(await timed(lambda: post("/filter", by_names), m))
    row("filter, NodeNames (HTTP)", f_names, pure_filter, "pure filter_nodes")
    noop_names = summary(await timed(lambda: post("/noop", by_names, noop_url), m))
    row("filter, NodeNames (HTTP)", f_names, noop_names, "no-op handler")
    p_names = summary(await timed(lambda: post("/prioritize", by_names), m))
    row("prioritize, NodeNames (HTTP)", p_names, pure_score, "pure rank_scores")
    row("prioritize, NodeNames (HTTP)", p_names, noop_names, "no-op handler")
    f_objs = summary(await timed(lambda: post("/filter", by_objs), m_objs))
    noop_objs = summary(await timed(lambda: post("/noop", by_objs, noop_url), m_objs))
    row("filter, Nodes objects (HTTP)", f_objs, noop_objs, "no-op handler")
    await runner.cleanup()


async def bench_extender(sizes: list[int], samples: dict[int, int]) -> None:
    rng = random.Random(7)
    noop = web.Application(client_max_size=256 * 2**20)

    async def noop_handler(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.json_response({})

    noop.router.add_post("/noop", noop_handler)
    noop_runner, noop_url = await serve(noop)
    async with aiohttp.ClientSession() as s:
        for n in sizes:
            await bench_size(s, n, samples[n], rng, noop_url)
    await noop_runner.cleanup()


async def bench_broker(n: int) -> None:
    broker = Broker(MemoryBindingStore())
    devices = [f"GPU-{i}" for i in range(8)]
    broker.set_inventory("n0", devices)
    await broker.start()
    auth = StaticAuthenticator({"t": Identity("sa", "ns", "k")})
    runner, url = await serve(make_broker_app(broker, auth))
    hdr = {"Authorization": "Bearer t"}
    seq = iter(range(10**9))
    async with aiohttp.ClientSession() as s:

        async def cycle() -> tuple[float, float]:
            eid = f"e{next(seq)}"
            t0 = time.perf_counter()
            body = {"kernel": "k", "replica": 1, "node": "n0", "gpus": 2, "executionId": eid}
            async with s.post(f"{url}/v1/acquire", json=body, headers=hdr) as r:
                assert r.status == 200, await r.text()
                await r.read()
            t1 = time.perf_counter()
            async with s.post(f"{url}/v1/release", json={"executionId": eid}, headers=hdr) as r:
                assert r.status == 200
                await r.read()
            return t1 - t0, time.perf_counter() - t1

        for _ in range(20):
            await cycle()
        acq, rel = [], []
        for _ in range(n):
            a, r = await cycle()
            acq.append(a)
            rel.append(r)
    await runner.cleanup()

    ledger = GpuLedger()
    ledger.set_node("n0", devices)
    pure_acq: list[float] = []
    pure_rel: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        g = ledger.acquire("ns/k", 1, "n0", 2, f"e{i}")
        t1 = time.perf_counter()
        assert isinstance(g, Grant)
        ledger.release(f"e{i}")
        pure_acq.append(t1 - t0)
        pure_rel.append(time.perf_counter() - t1)
    print(f"broker, one 8-GPU node, 2 GPUs per acquire ({n} samples; memory store, static auth)")
    row("acquire (HTTP)", summary(acq), summary(pure_acq), "pure GpuLedger.acquire")
    row("release (HTTP)", summary(rel), summary(pure_rel), "pure GpuLedger.release")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.extender", description=__doc__)
    p.add_argument("--quick", action="store_true", help="fewer samples")
    args = p.parse_args(argv)
    sizes = [50, 500, 5000]
    samples = {50: 300, 500: 200, 5000: 60} if not args.quick else {50: 50, 500: 30, 5000: 12}
    print("extender latency (client and aiohttp server in one process, loopback)")
    asyncio.run(bench_extender(sizes, samples))
    asyncio.run(bench_broker(500 if not args.quick else 100))


if __name__ == "__main__":
    main()

"""The extender's HTTP service: POST /filter and /prioritize in kube-scheduler's wire format,
GET /healthz, /readyz and /metrics. Policy comes from notebookos.policy.placement; this module
only translates between the wire, the cached cluster state and that policy.

Bad payloads get 400 with a message naming what is wrong; a handler never crashes the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from notebookos.labels import KERNEL_LABEL, REPLICA_GPUS_ANNOTATION
from notebookos.policy.placement import (
    DEFAULT_REPLICAS,
    NodeView,
    SubscriptionRatio,
    filter_nodes,
    rank_scores,
)

from .cluster_state import ClusterState, NodeInfo, node_info_from_object
from .metrics import ExtenderMetrics, NodeGpuCollector
from .wire import (
    ExtenderArgs,
    WireError,
    filter_result,
    host_priority_list,
    parse_extender_args,
    pod_key,
    replica_request,
)

log = logging.getLogger(__name__)

UNKNOWN_NODE = "node not yet known to the notebookos extender (no inventory seen); retrying"
MAX_BODY = 256 * 2**20  # a NodeList of 5,000 nodes is tens of MiB


class Extender:
    """Filter and prioritize over ClusterState with the pure placement policy."""

    def __init__(
        self,
        state: ClusterState,
        ratio: SubscriptionRatio | None = None,
        *,
        replicas: int = DEFAULT_REPLICAS,
        registry: CollectorRegistry | None = None,
        required_syncs: frozenset[str] = frozenset(),
        settle_timeout_s: float = 1.0,
    ) -> None:
        self.state = state
        self.ratio = ratio or SubscriptionRatio()
        self.replicas = replicas
        self.registry = registry or CollectorRegistry()
        self.metrics = ExtenderMetrics(self.registry)
        self.registry.register(NodeGpuCollector(state.per_node, lambda: self.ratio.value))
        self.required_syncs = required_syncs
        self.settle_timeout_s = settle_timeout_s
        # Replica pods that passed our filter and whose binding the pod watch has not shown yet,
        # with the time after which we stop waiting for them.
        self._in_flight: dict[str, float] = {}

    def update_ratio(self) -> float:
        """One sample of SR = demand / busy (the paper samples it every scaling interval)."""
        return self.ratio.update(self.state.demand(), self.state.busy())

    def ready(self) -> bool:
        return self.required_syncs <= self.state.synced

    def _views(self, args: ExtenderArgs) -> tuple[list[NodeView], dict[str, str]]:
        names = args.candidate_names
        infos: dict[str, NodeInfo] | None = None
        if args.nodes is not None:
            # The scheduler sent the objects: their inventory is at least as fresh as our cache.
            infos = {n["metadata"]["name"]: node_info_from_object(n) for n in args.nodes}
        views = self.state.views(names, infos)
        known = [v for v in views.values() if v is not None]
        unknown = {n: UNKNOWN_NODE for n, v in views.items() if v is None}
        return known, unknown

    async def settle(self, pod: str) -> None:
        """Wait until the replica pods this extender recently passed are seen bound (or their wait
        runs out). kube-scheduler keeps a pod it has just placed as "assumed" in a cache extenders
        never see; without this, a burst of pods could all be admitted against the same stale
        count and pass a node's cap. Bindings usually show within milliseconds."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for key, deadline in list(self._in_flight.items()):
                if key == pod or deadline <= now or self.state.pod_node(key) is not None:
                    del self._in_flight[key]
            if not self._in_flight:
                return
            await asyncio.sleep(0.002)

    def note_passed(self, pod: str) -> None:
        if self.settle_timeout_s > 0:
            self._in_flight[pod] = asyncio.get_running_loop().time() + self.settle_timeout_s

    async def filter_settled(self, args: ExtenderArgs) -> dict[str, Any]:
        """filter, after the placements of earlier replica pods have settled (see settle)."""
        meta = args.pod.get("metadata") or {}
        if KERNEL_LABEL not in (meta.get("labels") or {}) or REPLICA_GPUS_ANNOTATION not in (
            meta.get("annotations") or {}
        ):
            return self.filter(args)  # not a replica: nothing the pod watch would show us
        key = pod_key(args.pod)
        await self.settle(key)
        result = self.filter(args)
        passed = result["NodeNames"] or (result["Nodes"] or {}).get("items")
        if passed and not result["FailedAndUnresolvableNodes"]:
            self.note_passed(key)
        return result

    def filter(self, args: ExtenderArgs) -> dict[str, Any]:
        try:
            request = replica_request(args.pod, self.replicas)
        except ValueError as e:
            # The pod itself is wrong; no node and no preemption can help.
            reason = f"notebookos: {e}"
            return filter_result(args, [], {}, dict.fromkeys(args.candidate_names, reason))
        if request is None:  # not a kernel replica: nothing to account for
            return filter_result(args, args.candidate_names, {})
        views, failed = self._views(args)
        feasible, rejected = filter_nodes(views, request, self.ratio.value)
        failed.update(rejected)
        self.metrics.rejections.inc(len(failed))
        return filter_result(args, [v.name for v in feasible], failed)

    def prioritize(self, args: ExtenderArgs) -> list[dict[str, Any]]:
        names = args.candidate_names
        try:
            request = replica_request(args.pod, self.replicas)
        except ValueError:
            request = None
        if request is None:
            return host_priority_list({}, names)
        views, _ = self._views(args)
        return host_priority_list(rank_scores(views, request.replicas), names)


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _read_args(request: web.Request) -> ExtenderArgs:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WireError(f"body is not JSON: {e}") from None
    return parse_extender_args(body)


def make_app(extender: Extender) -> web.Application:
    m = extender.metrics

    def verb(name: str, fn: Callable[[ExtenderArgs], Any]) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            started = time.perf_counter()
            try:
                args = await _read_args(request)
                result = fn(args)
                if asyncio.iscoroutine(result):
                    result = await result
            except WireError as e:
                m.requests.labels(name, "bad_request").inc()
                return _json_error(400, f"{name}: {e}")
            except web.HTTPException:
                raise
            except Exception as e:  # a bug must not take the scheduler's extender down
                log.exception("%s failed", name)
                m.requests.labels(name, "error").inc()
                return _json_error(500, f"{name}: internal error: {e}")
            m.requests.labels(name, "ok").inc()
            m.latency.labels(name).observe(time.perf_counter() - started)
            return web.json_response(result)

        return handler

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if extender.ready():
            return web.Response(text="ok")
        missing = sorted(extender.required_syncs - extender.state.synced)
        return web.Response(status=503, text=f"waiting for the first LIST of: {', '.join(missing)}")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(extender.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/filter", verb("filter", extender.filter_settled))
    app.router.add_post("/prioritize", verb("prioritize", extender.prioritize))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


@contextlib.asynccontextmanager
async def ratio_sampler(extender: Extender, interval_s: float) -> AsyncIterator[asyncio.Task[None]]:
    """Samples the subscription ratio every interval while the service runs."""

    async def loop() -> None:
        while True:
            extender.update_ratio()
            await asyncio.sleep(interval_s)

    task = asyncio.create_task(loop())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

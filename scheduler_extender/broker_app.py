"""The GPU broker's HTTP API.

POST /v1/acquire  {"kernel", "replica", "node", "gpus", "executionId", "namespace"?}
    200 {"devices": [...], "node", "executionId", "grantSeq"}  or a refusal:
    409 {"reason", "code": "Unavailable"|"Conflict"}, 404 code UnknownNode, 400 code Invalid
POST /v1/release  {"executionId", "kernel"?, "namespace"?} -> 200 {"released": bool, "devices": [...]}
GET  /v1/grants?node=N -> 200 {"grants": [...]} (admins only: the node agent's audit)
(the same three without the /v1 prefix too, as notebookos.kernel.broker calls them)
GET  /healthz, /readyz, /metrics

Every /v1 call carries ``Authorization: Bearer <service-account token>``. ``kernel`` is the
kernel's name; its namespace is the caller's (admins may name another with ``namespace``).
Execution ids are scoped by kernel: a release names the caller's own kernel unless it says otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from notebookos.api.models import DNS_LABEL_PATTERN
from notebookos.policy.ledger import Grant, Refusal

from .auth import Authenticator, AuthError, Identity, bearer_token
from .binding_store import StoreError
from .broker import Broker
from .metrics import BrokerMetrics, NodeGpuCollector

log = logging.getLogger(__name__)

UNGUARDED = frozenset({"/healthz", "/readyz", "/metrics"})
REFUSAL_STATUS = {"Invalid": 400, "UnknownNode": 404, "Conflict": 409, "Unavailable": 409}

Name = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_LABEL_PATTERN)]
ExecutionId = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9._:-]+$")]


class AcquireBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    kernel: Name
    replica: Annotated[StrictInt, Field(ge=1, le=9)]
    node: Name
    gpus: Annotated[StrictInt, Field(ge=0, le=8)]
    execution_id: ExecutionId = Field(alias="executionId")
    namespace: Name | None = None


class ReleaseBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    execution_id: ExecutionId = Field(alias="executionId")
    kernel: Name | None = None
    namespace: Name | None = None


def grant_json(g: Grant) -> dict[str, Any]:
    return {
        "kernel": g.kernel,
        "replica": g.replica,
        "node": g.node,
        "devices": list(g.devices),
        "executionId": g.execution_id,
        "grantSeq": g.seq,
    }


def _error(status: int, reason: str, code: str) -> web.Response:
    return web.json_response({"reason": reason, "code": code}, status=status)


class _Reply(Exception):
    """Ends a handler early with this error answer (caught by the middleware)."""

    def __init__(self, status: int, reason: str, code: str) -> None:
        super().__init__(reason)
        self.response = _error(status, reason, code)


def _validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await request.read()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _Reply(400, f"body is not JSON: {e}", "Invalid") from None
    if not isinstance(data, dict):
        raise _Reply(400, "body must be a JSON object", "Invalid")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _Reply(400, _validation_message(e), "Invalid") from None


def make_broker_app(
    broker: Broker, authenticator: Authenticator, registry: CollectorRegistry | None = None
) -> web.Application:
    registry = registry or CollectorRegistry()
    metrics = broker.metrics or BrokerMetrics(registry)
    broker.metrics = metrics
    registry.register(NodeGpuCollector(broker.per_node))

    async def identity(request: web.Request) -> Identity:
        try:
            return await authenticator.authenticate(bearer_token(request.headers.get("Authorization")))
        except AuthError as e:
            code = {401: "Unauthorized", 403: "Forbidden"}.get(e.status, "AuthUnavailable")
            raise _Reply(e.status, e.message, code) from None

    def kernel_of(who: Identity, kernel: str | None, namespace: str | None) -> str:
        """namespace/name of the kernel a call is for: the caller's own unless it names one."""
        kernel = kernel or who.kernel
        namespace = namespace or who.namespace
        if kernel is None or namespace is None:
            raise _Reply(400, "kernel and namespace: required for callers that are not a kernel's pod", "Invalid")
        return f"{namespace}/{kernel}"

    def forbid(who: Identity, kernel: str) -> web.Response:
        return _error(403, f"{who.subject} may not act for kernel {kernel}", "Forbidden")

    async def acquire(request: web.Request) -> web.Response:
        started = time.perf_counter()
        who = await identity(request)
        body: AcquireBody = await _body(request, AcquireBody)
        kernel = kernel_of(who, body.kernel, body.namespace)
        if not who.may_act_for(kernel):
            return forbid(who, kernel)
        try:
            result = await broker.acquire(kernel, body.replica, body.node, body.gpus, body.execution_id)
        except StoreError as e:
            return _error(503, f"grant not recorded, nothing granted: {e}", "StoreUnavailable")
        metrics.latency.labels("acquire").observe(time.perf_counter() - started)
        if isinstance(result, Refusal):
            return _error(REFUSAL_STATUS.get(result.code, 409), result.reason, result.code)
        return web.json_response(grant_json(result))

    async def release(request: web.Request) -> web.Response:
        started = time.perf_counter()
        who = await identity(request)
        body: ReleaseBody = await _body(request, ReleaseBody)
        kernel = kernel_of(who, body.kernel, body.namespace)
        if not who.may_act_for(kernel):
            return forbid(who, kernel)
        try:
            grant = await broker.release(kernel, body.execution_id)
        except StoreError as e:
            return _error(503, f"release not recorded, grant kept; retry: {e}", "StoreUnavailable")
        metrics.latency.labels("release").observe(time.perf_counter() - started)
        return web.json_response({"released": grant is not None, "devices": list(grant.devices) if grant else []})

    async def grants(request: web.Request) -> web.Response:
        who = await identity(request)
        if not who.admin:
            return _error(403, f"{who.subject} may not list grants", "Forbidden")
        node = request.query.get("node")
        return web.json_response({"grants": [grant_json(g) for g in broker.grants(node)]})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok") if broker.ready else web.Response(status=503, text="rebuilding the ledger")

    async def metrics_view(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in UNGUARDED and not broker.ready:
            return _error(503, "the broker is rebuilding its ledger; retry", "NotReady")
        try:
            return await handler(request)
        except _Reply as r:
            return r.response
        except web.HTTPException:
            raise
        except Exception as e:  # a bug answers 500 and the service keeps serving
            log.exception("%s failed", request.path)
            return _error(500, f"internal error: {e}", "Internal")

    app = web.Application(middlewares=[guard], client_max_size=1 << 20)
    for prefix in ("/v1", ""):  # the kernel's client (notebookos.kernel.broker) uses the bare paths
        app.router.add_post(f"{prefix}/acquire", acquire)
        app.router.add_post(f"{prefix}/release", release)
        app.router.add_get(f"{prefix}/grants", grants)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app

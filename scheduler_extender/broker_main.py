"""Entry point of the GPU broker: ``python -m notebookos.extender.broker_main``.

Rebuilds its ledger from KernelReplica status.gpuBinding records, watches the GPU pool's nodes for
their inventory (the node agent's annotation), and serves the acquire/release API. Flags fall back
to NOTEBOOKOS_BROKER_* environment variables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from aiohttp import web
from kubernetes import client

from notebookos.api.models import GROUP, VERSION, KernelReplica
from notebookos.kubeclient import api_client
from notebookos.labels import GPU_INVENTORY_ANNOTATION, GPU_POOL_LABEL, GPU_POOL_VALUE

from .auth import TokenReviewAuthenticator
from .binding_store import KubeBindingStore, grant_from_replica
from .broker import Broker
from .broker_app import make_broker_app
from .cluster_state import parse_inventory
from .informer import Informer
from .service import run_service

log = logging.getLogger(__name__)


def _env(name: str, default: str) -> str:
    return os.environ.get(f"NOTEBOOKOS_BROKER_{name}", default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="notebookos-broker", description=__doc__)
    p.add_argument("--host", default=_env("HOST", "0.0.0.0"), help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=int(_env("PORT", "8889")), help="listen port (default 8889)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="kubeconfig; in-cluster when unset")
    p.add_argument(
        "--admin",
        action="append",
        default=[a for a in _env("ADMINS", "").split(",") if a],
        help="user allowed to act for every kernel and list grants (repeatable), "
        "e.g. system:serviceaccount:notebookos-system:notebookos-node-agent",
    )
    p.add_argument(
        "--audience",
        action="append",
        default=[a for a in _env("AUDIENCES", "").split(",") if a],
        help="token audience the broker requires (repeatable); the API server's default when unset",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def inventory_of(node: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    raw = ((node.get("metadata") or {}).get("annotations") or {}).get(GPU_INVENTORY_ANNOTATION)
    if raw is None:
        return None
    try:
        inv = parse_inventory(raw)
    except ValueError as e:
        log.warning("node %s: %s", node["metadata"]["name"], e)
        return None
    devices = [d["uuid"] for d in sorted(inv, key=lambda d: d.get("index", 0))]
    return devices, [d["uuid"] for d in inv if d.get("healthy", True)]


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
    loop.call_soon_threadsafe(fn)


def watch_inventory(
    api: client.ApiClient, broker: Broker, loop: asyncio.AbstractEventLoop, synced: asyncio.Event
) -> Informer:
    """Node inventory into the ledger; ledger calls are made on the event loop's thread."""

    def apply(node: dict[str, Any], deleted: bool = False) -> None:
        name = node["metadata"]["name"]
        inv = None if deleted else inventory_of(node)
        if inv is None:
            loop.call_soon_threadsafe(broker.remove_node, name)
        else:
            loop.call_soon_threadsafe(broker.set_inventory, name, inv[0], inv[1])

    def replace(items: list[dict[str, Any]]) -> None:
        for n in items:
            apply(n)

    informer = Informer(
        "nodes",
        client.CoreV1Api(api).list_node,
        replace,
        lambda kind, o: apply(o, kind == "DELETED"),
        on_synced=lambda: _call_soon(loop, synced.set),
        label_selector=f"{GPU_POOL_LABEL}={GPU_POOL_VALUE}",
    )
    return informer.start()


def watch_replica_deletions(api: client.ApiClient, broker: Broker, loop: asyncio.AbstractEventLoop) -> Informer:
    """A deleted KernelReplica takes its gpuBinding record with it: free those devices too."""

    def on_event(kind: str, obj: dict[str, Any]) -> None:
        if kind != "DELETED":
            return
        try:
            grant = grant_from_replica(obj)
        except Exception:
            return
        if grant is not None:
            asyncio.run_coroutine_threadsafe(broker.forget(grant.kernel, grant.execution_id), loop)

    informer = Informer(
        "replicas",
        client.CustomObjectsApi(api).list_cluster_custom_object,
        lambda items: None,  # start-up state comes from Broker.start()
        on_event,
        group=GROUP,
        version=VERSION,
        plural=KernelReplica.crd_plural,
    )
    return informer.start()


async def serve(args: argparse.Namespace) -> None:
    api = api_client(args.kubeconfig)
    broker = Broker(KubeBindingStore(api))
    loop = asyncio.get_running_loop()
    inventory_synced = asyncio.Event()
    informers = [watch_inventory(api, broker, loop, inventory_synced), watch_replica_deletions(api, broker, loop)]
    auth = TokenReviewAuthenticator(api, admins=frozenset(args.admin), audiences=args.audience or None)
    runner = web.AppRunner(make_broker_app(broker, auth), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    await inventory_synced.wait()  # ready only once the nodes' inventory is known
    while True:  # the CRD may not be installed yet: keep trying, stay not-ready meanwhile
        try:
            dropped = await broker.start()
            break
        except Exception as e:
            log.warning("rebuilding the ledger: %s; retrying", e)
            await asyncio.sleep(2)
    log.info(
        "broker ready on %s:%d: %d grants rebuilt, %d stale dropped",
        args.host,
        args.port,
        len(broker.ledger.grants()),
        len(dropped),
    )
    try:
        await asyncio.Event().wait()
    finally:
        for i in informers:
            i.stop()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    return run_service(serve, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

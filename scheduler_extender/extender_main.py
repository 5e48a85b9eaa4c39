"""Entry point of the extender: ``python -m notebookos.extender.extender_main``.

Runs beside the second kube-scheduler (``notebookos-scheduler``), which calls it on localhost.
Flags fall back to NOTEBOOKOS_EXTENDER_* environment variables.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aiohttp import web

from notebookos.kubeclient import api_client
from notebookos.policy.placement import DEFAULT_MAX_SUBSCRIPTION_RATIO, DEFAULT_REPLICAS, SubscriptionRatio

from .cluster_state import ClusterState
from .extender_app import Extender, make_app, ratio_sampler
from .service import run_service
from .watches import SYNC_NAMES, start_watches


def _env(name: str, default: str) -> str:
    return os.environ.get(f"NOTEBOOKOS_EXTENDER_{name}", default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="notebookos-extender", description=__doc__)
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(_env("PORT", "8888")), help="listen port (default 8888)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="kubeconfig; in-cluster when unset")
    p.add_argument(
        "--max-subscription-ratio",
        type=float,
        default=float(_env("MAX_SUBSCRIPTION_RATIO", str(DEFAULT_MAX_SUBSCRIPTION_RATIO))),
        help="cap of the cluster subscription ratio SR (paper default 7.0)",
    )
    p.add_argument("--ratio-window", type=int, default=int(_env("RATIO_WINDOW", "5")), help="SR moving average")
    p.add_argument(
        "--ratio-interval", type=float, default=float(_env("RATIO_INTERVAL", "5")), help="seconds between SR samples"
    )
    p.add_argument(
        "--replicas", type=int, default=int(_env("REPLICAS", str(DEFAULT_REPLICAS))), help="replicas per kernel"
    )
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=float(_env("SETTLE_TIMEOUT", "1.0")),
        help="seconds a filter waits at most for replica pods it recently passed to show bound (0: never)",
    )
    p.add_argument("--all-nodes", action="store_true", help="watch every node, not only the GPU pool")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    state = ClusterState()
    api = api_client(args.kubeconfig)
    informers = start_watches(api, state, all_nodes=args.all_nodes)
    extender = Extender(
        state,
        SubscriptionRatio(args.max_subscription_ratio, args.ratio_window),
        replicas=args.replicas,
        required_syncs=SYNC_NAMES - {"replicas"},  # the CRD may come later; bindings then count 0
        settle_timeout_s=args.settle_timeout,
    )
    runner = web.AppRunner(make_app(extender), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    logging.info("extender listening on %s:%d (max SR %.2f)", args.host, args.port, args.max_subscription_ratio)
    try:
        async with ratio_sampler(extender, args.ratio_interval):
            await asyncio.Event().wait()
    finally:
        for i in informers:
            i.stop()
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    return run_service(serve, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

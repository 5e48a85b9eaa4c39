"""`python -m notebookos.operator`: run the operator against the current kubeconfig (or in-cluster).

Settings come from the environment (NOTEBOOKOS_*, see config.py and docs/operator.md); the flags
below override them.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
from collections.abc import Sequence
from typing import cast

import kopf

from notebookos.kubeclient import api_client

from .cache import CachedKube
from .config import ConfigError, OperatorConfig
from .kube import Kube, Obj
from .reconcile import Reconciler
from .status import Event

# Flag -> environment variable it overrides.
_ENV_FLAGS = {
    "image": "NOTEBOOKOS_KERNEL_IMAGE",
    "scheduler_name": "NOTEBOOKOS_SCHEDULER_NAME",
    "broker_url": "NOTEBOOKOS_BROKER_URL",
    "node_selector": "NOTEBOOKOS_NODE_SELECTOR",
    "runner": "NOTEBOOKOS_RUNNER",
    "kernel_service_account": "NOTEBOOKOS_KERNEL_SERVICE_ACCOUNT",
    "runtime_class": "NOTEBOOKOS_RUNTIME_CLASS",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m notebookos.operator", description=__doc__)
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The operator's flags (also `notebookos operator`)."""
    p.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    p.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL ('' for none)")
    p.add_argument(
        "--metrics-port", type=int, default=8081, help="port of the Prometheus /metrics endpoint (0 for none)"
    )
    p.add_argument("--peering", default="notebookos", help="ClusterKopfPeering (or KopfPeering) object name")
    p.add_argument("--standalone", action="store_true", help="no peering: for a single local operator")
    p.add_argument("--priority", type=int, default=None, help="peering priority; the highest acts (default: random)")
    p.add_argument("--image", help="default kernel image [NOTEBOOKOS_KERNEL_IMAGE]")
    p.add_argument("--scheduler-name", help="schedulerName of replica pods [NOTEBOOKOS_SCHEDULER_NAME]")
    p.add_argument("--broker-url", help="GPU broker URL given to kernels [NOTEBOOKOS_BROKER_URL]")
    p.add_argument("--node-selector", help="extra node selector k=v,... [NOTEBOOKOS_NODE_SELECTOR]")
    p.add_argument("--runner", help="notebookos.io/runner label of kernel pods, '' for none [NOTEBOOKOS_RUNNER]")
    p.add_argument("--kernel-service-account", help="service account of kernel pods")
    p.add_argument("--runtime-class", help="RuntimeClass of replica pods, e.g. nvidia [NOTEBOOKOS_RUNTIME_CLASS]")
    p.add_argument("-v", "--verbose", action="store_true")


def config_from(args: argparse.Namespace) -> OperatorConfig:
    env = dict(os.environ)
    for attr, var in _ENV_FLAGS.items():
        value = getattr(args, attr)
        if value is not None:
            env[var] = value
    return OperatorConfig.from_env(env)


def post_event(obj: Obj, event: Event) -> None:
    try:
        kopf.event(cast(kopf.Body, obj), type=event.type, reason=event.reason, message=event.message)
    except LookupError:  # outside kopf's context (no poster): the event still reaches the log
        logging.getLogger(__name__).warning("event %s %s: %s", event.type, event.reason, event.message)


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run the operator until it is stopped (SIGTERM, SIGINT)."""
    try:
        cfg = config_from(args)
    except ConfigError as exc:
        print(f"notebookos operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose, log_prefix=True)  # "[namespace/name]" on object logs
    logging.getLogger("notebookos").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.INFO)  # one line per request drowns the rest
    if not args.verbose:
        # kopf logs each handler's and indexer's success, lines per event at scale; failures stay.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from . import handlers  # registers the handlers
    from .handlers import cache, resync

    resync.register(cfg.resync_seconds)
    if cfg.watch_cache:
        cache.register()
    del handlers
    metrics = None
    if args.metrics_port:
        from .metrics import serve

        try:
            metrics = serve(args.metrics_port)
            logging.getLogger(__name__).info("metrics on :%d/metrics", args.metrics_port)
        except OSError as exc:  # reconciling matters more than being scraped: run on, say why
            logging.getLogger(__name__).error("no /metrics: port %d: %s", args.metrics_port, exc.strerror)
    kube = Kube(api_client())
    try:
        # CachedKube stands in for Kube: the same calls, its reads of cached kinds from memory.
        reconciler = Reconciler(
            cast(Kube, CachedKube(kube)) if cfg.watch_cache else kube, cfg, post_event, metrics=metrics
        )
    except ConfigError as exc:  # the capacity-request and scale-in settings
        print(f"notebookos operator: {exc}", file=sys.stderr)
        return 2
    # Distinct priorities let one of several operator pods act while the others wait (kopf pauses
    # all peers when priorities are equal).
    priority = args.priority if args.priority is not None else random.randint(1, 1_000_000)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
        standalone=args.standalone or None,
        peering_name=None if args.standalone else args.peering,
        priority=priority,
        memo=kopf.Memo(reconciler=reconciler),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

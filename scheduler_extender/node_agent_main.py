"""Entry point of the node agent: ``python -m notebookos.extender.node_agent_main``.

Flags fall back to environment variables: NODE_NAME (downward API), NOTEBOOKOS_NVML (``real`` or
``fake[:SPEC]``), NOTEBOOKOS_BROKER_URL, NOTEBOOKOS_TOKEN_FILE, NOTEBOOKOS_METRICS_PORT, KUBECONFIG
(in-cluster when unset).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

import pykube
from prometheus_client import start_http_server

from .node_agent import AuditMetrics, NodeAgent
from .nvml import backend_from_env
from .service import setup_logging

DEFAULT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="notebookos-node-agent", description=__doc__)
    p.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node's name (env NODE_NAME)")
    p.add_argument("--nvml", default=os.environ.get("NOTEBOOKOS_NVML", "real"), help="real | fake[:COUNT|JSON]")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--broker-url", default=os.environ.get("NOTEBOOKOS_BROKER_URL"), help="audit against this broker")
    p.add_argument("--token-file", default=os.environ.get("NOTEBOOKOS_TOKEN_FILE", DEFAULT_TOKEN))
    p.add_argument("--interval", type=float, default=float(os.environ.get("NOTEBOOKOS_AGENT_INTERVAL", "10")))
    p.add_argument("--event-namespace", default=os.environ.get("NOTEBOOKOS_EVENT_NAMESPACE", "default"))
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("NOTEBOOKOS_METRICS_PORT", "0")),
        help="serve the audit's Prometheus /metrics on this port; 0: none",
    )
    p.add_argument("--once", action="store_true", help="publish and audit once, print the inventory, exit")
    p.add_argument("--log-level", default=os.environ.get("NOTEBOOKOS_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    if not args.node:
        print("error: --node (or NODE_NAME) is required", file=sys.stderr)
        return 2
    try:
        backend = backend_from_env(args.nvml, args.node)
    except Exception as e:
        print(f"error: NVML backend {args.nvml!r}: {e}", file=sys.stderr)
        return 2
    config = pykube.KubeConfig.from_file(args.kubeconfig) if args.kubeconfig else pykube.KubeConfig.from_env()
    token_file = args.token_file if args.token_file and os.path.exists(args.token_file) else None
    metrics = AuditMetrics()
    if args.metrics_port and not args.once:
        start_http_server(args.metrics_port, registry=metrics.registry)
    agent = NodeAgent(
        pykube.HTTPClient(config),
        args.node,
        backend,
        broker_url=args.broker_url,
        token_file=token_file,
        event_namespace=args.event_namespace,
        metrics=metrics,
    )
    stop = threading.Event()
    while True:
        try:
            agent.publish()
            agent.audit_once()
        except Exception as e:  # API or broker unreachable: report and keep going
            logging.warning("node agent cycle failed: %s", e)
            if args.once:
                return 1
        if args.once:
            print(agent._published)
            return 0
        if stop.wait(args.interval):
            return 0


if __name__ == "__main__":
    sys.exit(main())

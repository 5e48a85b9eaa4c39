"""`notebookos connect NAME`: a connection file for a NotebookKernel applied with kubectl, for
`jupyter console --existing FILE` (and the port-forward command when connecting from outside)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="NotebookKernel name")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: kubeconfig's)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig path (default: $KUBECONFIG)")
    parser.add_argument(
        "--via",
        choices=["service", "pod", "local"],
        default="local",
        help="address in the file: 127.0.0.1 with kubectl port-forward (default), the Service's DNS name, "
        "or the router pod's IP",
    )
    parser.add_argument("-o", "--output", type=Path, default=None, help="file to write (default: kernel-NAME.json)")


def run(args: argparse.Namespace) -> int:
    from .kube import api_client, default_namespace, kernel_connection, read_kernel

    api = api_client(args.kubeconfig)
    ns = args.namespace or default_namespace(args.kubeconfig)
    kernel = read_kernel(api, ns, args.name)
    if kernel.status.connection is None:
        print(
            f"NotebookKernel {ns}/{args.name} is {kernel.status.phase} and has no connection yet; "
            f"`kubectl describe nbk {args.name} -n {ns}` says why",
            file=sys.stderr,
        )
        return 1
    info = kernel_connection(api, kernel, args.via)
    out = args.output or Path(f"kernel-{args.name}.json")
    out.write_text(json.dumps(info, indent=2) + "\n")
    out.chmod(0o600)  # it holds the HMAC key
    print(f"wrote {out}")
    if args.via == "local":
        ports = kernel.status.connection.ports
        pairs = " ".join(str(p) for p in (ports.shell, ports.iopub, ports.stdin, ports.control, ports.hb))
        print(f"kubectl port-forward -n {ns} svc/{kernel.status.connection.service_name} {pairs} &")
    print(f"jupyter console --existing {out.resolve()}")
    return 0

"""`notebookos connect NAME`: a connection file for a NotebookKernel applied with kubectl, for
`jupyter console --existing` and any other Jupyter client (and the port-forward command when
connecting from outside the cluster).

The file holds the kernel's HMAC key, so it goes where Jupyter keeps its own connection files (the
per-user runtime directory, `jupyter --runtime-dir`), written mode 0600. The command waits for the
kernel to be Ready, and says why when it is not."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .cli_errors import CliError

POLL_SECONDS = 1.0


def add_kernel_arguments(parser: argparse.ArgumentParser) -> None:
    """NAME, namespace, kubeconfig and --via: shared with `notebookos interrupt`."""
    parser.add_argument("name", help="NotebookKernel name")
    parser.add_argument("-n", "--namespace", default=None, help="namespace (default: kubeconfig's)")
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig path (default: $KUBECONFIG)")
    parser.add_argument(
        "--via",
        choices=["service", "pod", "local"],
        default="local",
        help="address used: 127.0.0.1 with kubectl port-forward (default), the Service's DNS name, "
        "or the router pod's IP",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_kernel_arguments(parser)
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="file to write (default: Jupyter's runtime directory)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the kernel to be Ready (0: do not wait)"
    )


def default_path(namespace: str, name: str) -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / f"kernel-notebookos-{namespace}-{name}.json"


def get_kernel(api: Any, namespace: str, name: str) -> Any:
    """The NotebookKernel, or a one-line error when it does not exist."""
    from kubernetes.client.exceptions import ApiException

    from .kube import read_kernel

    try:
        return read_kernel(api, namespace, name)
    except ApiException as exc:
        if exc.status == 404:
            raise CliError(
                f"NotebookKernel {namespace}/{name} not found (`kubectl get nbk -n {namespace}` lists them)"
            ) from None
        raise


def why_not_ready(kernel: Any) -> str:
    """The condition that explains a kernel that is not serving: unscheduled first, then not ready."""
    conds = {c.type: c for c in kernel.status.conditions}
    for ctype in ("Scheduled", "Ready"):
        c = conds.get(ctype)
        if c is not None and c.status != "True" and c.message:
            return str(c.message)
    return "no reason reported yet"


def wait_serving(api: Any, namespace: str, name: str, timeout: float) -> Any:
    """The kernel once it serves (Ready, or Degraded with a majority) and has connection info."""
    deadline = time.monotonic() + timeout
    said = None
    while True:
        kernel = get_kernel(api, namespace, name)
        phase = kernel.status.phase
        if phase in ("Ready", "Degraded") and kernel.status.connection is not None:
            if phase == "Degraded":
                print(f"NotebookKernel {namespace}/{name} is Degraded: {why_not_ready(kernel)}", file=sys.stderr)
            return kernel
        why = why_not_ready(kernel)
        if phase == "Failed":
            raise CliError(f"NotebookKernel {namespace}/{name} failed: {why}")
        if time.monotonic() >= deadline:
            waited = f" after {timeout:.0f}s" if timeout else ""
            raise CliError(
                f"NotebookKernel {namespace}/{name} is {phase}{waited}: {why} "
                f"(`kubectl describe nbk {name} -n {namespace}` shows its events)"
            )
        if (phase, why) != said:
            print(f"waiting for NotebookKernel {namespace}/{name}: {phase}: {why}", file=sys.stderr)
            said = (phase, why)
        time.sleep(POLL_SECONDS)


def write_connection_file(path: Path, info: dict[str, Any]) -> None:
    """Mode 0600 from the start (it holds the key), in a folder only the user can read."""
    from jupyter_core.paths import secure_write

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with secure_write(str(path)) as f:
        f.write(json.dumps(info, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    from .kube import api_client, default_namespace, kernel_connection

    api = api_client(args.kubeconfig)
    ns = args.namespace or default_namespace(args.kubeconfig)
    kernel = wait_serving(api, ns, args.name, max(0.0, args.timeout))
    info = kernel_connection(api, kernel, args.via)
    out = args.output or default_path(ns, args.name)
    write_connection_file(out, info)
    print(f"wrote {out}")
    conn = kernel.status.connection
    if args.via == "local":
        ports = conn.ports
        pairs = " ".join(str(p) for p in (ports.shell, ports.iopub, ports.stdin, ports.control, ports.hb))
        print(f"kubectl port-forward -n {ns} svc/{conn.service_name} {pairs} &")
    print(f"jupyter console --existing {out.resolve()}")
    via = f" --via {args.via}" if args.via != "local" else ""
    print(f"to interrupt a running cell: notebookos interrupt {args.name} -n {ns}{via}")
    return 0

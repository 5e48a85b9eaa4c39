"""`notebookos interrupt NAME`: interrupt the cell a NotebookKernel is running, as Ctrl-C in a
notebook does. The kernel's interrupt mode is `message`: an `interrupt_request` on its control
channel, which the router passes to the executing replica. (`jupyter console --existing` cannot
interrupt a kernel it did not start; this command can, from any terminal.)"""

from __future__ import annotations

import argparse
import queue

from .cli_errors import CliError
from .cmd_connect import add_kernel_arguments, get_kernel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_kernel_arguments(parser)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the kernel's answer")


def run(args: argparse.Namespace) -> int:
    from jupyter_client import BlockingKernelClient

    from .kube import api_client, default_namespace, kernel_connection

    api = api_client(args.kubeconfig)
    ns = args.namespace or default_namespace(args.kubeconfig)
    kernel = get_kernel(api, ns, args.name)
    if kernel.status.connection is None:
        raise CliError(f"NotebookKernel {ns}/{args.name} is {kernel.status.phase} and runs no cell")
    info = kernel_connection(api, kernel, args.via)
    kc = BlockingKernelClient()
    kc.load_connection_info(info)  # type: ignore[arg-type]  # a connection dict, as in the file
    kc.start_channels(shell=False, iopub=False, stdin=False, hb=False, control=True)
    try:
        request = kc.session.msg("interrupt_request", {})
        kc.control_channel.send(request)
        reply = None
        try:
            while reply is None:  # skip answers to anything else
                msg = kc.control_channel.get_msg(timeout=args.timeout)
                if msg.get("parent_header", {}).get("msg_id") == request["header"]["msg_id"]:
                    reply = msg
        except queue.Empty:
            where = f"{info['ip']}:{info['control_port']}"
            hint = " (is `kubectl port-forward` running? see `notebookos connect`)" if args.via == "local" else ""
            waited = f"{args.timeout:.0f}s"
            raise CliError(f"no answer from the kernel's control channel at {where} in {waited}{hint}") from None
    finally:
        kc.stop_channels()
    status = reply["content"].get("status", "ok")
    if status != "ok":
        raise CliError(f"the kernel refused the interrupt: {reply['content']}")
    print(f"interrupted NotebookKernel {ns}/{args.name}")
    return 0

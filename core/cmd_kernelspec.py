"""`notebookos kernelspec install`: a Jupyter kernelspec whose kernels run on NotebookOS."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .api import NotebookKernelSpec
from .api.errors import describe_validation_error
from .cli_errors import CliError

# Field of the API -> the flag that sets it, so an error names what the user typed.
FLAGS = {
    "resources.gpus": "--gpus",
    "resources.cpu": "--cpu",
    "resources.memory": "--memory",
    "resources.gpuMemory": "--gpu-memory",
    "replicas": "--replicas",
    "image": "--image",
    "storage.url": "--storage",
    "idleTimeout": "--idle-timeout",
}


def kernelspec(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {"gpus": args.gpus, "cpu": args.cpu, "memory": args.memory}
    if args.gpu_memory:
        config["gpuMemory"] = args.gpu_memory
    if args.image:
        config["image"] = args.image
    if args.replicas is not None:
        config["replicas"] = args.replicas
    if args.namespace:
        config["namespace"] = args.namespace
    if args.storage:
        config["storage"] = {"url": args.storage}
    if args.idle_timeout:
        config["idleTimeout"] = args.idle_timeout
    if args.connect_via != "service":
        config["connect_via"] = args.connect_via
    # Refuse what the API server would refuse, now rather than at the first launch.
    try:
        resources = {k: config[k] for k in ("gpus", "cpu", "memory", "gpuMemory") if k in config}
        rest = {k: config[k] for k in ("replicas", "image", "storage", "idleTimeout") if k in config}
        NotebookKernelSpec.model_validate({"resources": resources, **rest})  # every error at once
    except ValidationError as exc:
        raise CliError(f"invalid kernelspec: {describe_validation_error(exc, FLAGS)}") from None
    gpus = f"{args.gpus} GPU" + ("s" if args.gpus != 1 else "")
    return {
        # argv is never run locally: the provisioner creates a NotebookKernel instead.
        "argv": ["python", "-m", "notebookos.kernel.replica", "-f", "{connection_file}"],
        "display_name": args.display_name or f"Python 3 (NotebookOS, {gpus})",
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": "notebookos-provisioner", "config": config},
            "debugger": False,
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("install", help="install a kernelspec that runs kernels as NotebookKernels")
    p.add_argument("--name", required=True, help="kernelspec name, e.g. notebookos-gpu1")
    p.add_argument("--display-name", default=None, help="name shown in Jupyter's launcher")
    p.add_argument("--gpus", type=int, default=1, help="GPUs bound while a cell runs (default 1)")
    p.add_argument("--cpu", default="1", help="CPU per replica pod (default 1)")
    p.add_argument("--memory", default="4Gi", help="memory per replica pod (default 4Gi)")
    p.add_argument("--gpu-memory", default=None, help="GPU memory each GPU must have, e.g. 40Gi (default: any)")
    p.add_argument("--image", default=None, help="kernel image (default: the operator's)")
    p.add_argument("--replicas", type=int, default=None, help="Raft replicas, odd (default 3)")
    p.add_argument("--namespace", default=None, help="namespace (default: the server pod's own, or kubeconfig's)")
    p.add_argument("--storage", default=None, help="fsspec URL for large state values, e.g. s3://bucket/prefix")
    p.add_argument(
        "--idle-timeout",
        default=None,
        help="hibernate kernels idle this long (a Go duration, 10s to 720h, e.g. 1h); the next cell wakes them",
    )
    p.add_argument(
        "--connect-via",
        choices=["service", "pod", "local"],
        default="service",
        help="how Jupyter reaches the router: cluster DNS (default), the router pod's IP, or 127.0.0.1",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--prefix", default=None, help="install under this prefix (e.g. sys.prefix)")
    where.add_argument("--dir", type=Path, default=None, help="write the kernelspec folder here instead")


def run(args: argparse.Namespace) -> int:
    spec = kernelspec(args)
    if args.dir is not None:
        target = args.dir / args.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        print(f"wrote {target / 'kernel.json'}")
        return 0
    from jupyter_client.kernelspec import KernelSpecManager

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / args.name
        src.mkdir()
        (src / "kernel.json").write_text(json.dumps(spec, indent=2) + "\n")
        dest = KernelSpecManager().install_kernel_spec(str(src), args.name, user=args.user, prefix=args.prefix)
    print(f"installed kernelspec {args.name} in {dest}")
    return 0

"""The `notebookos` command. Each subcommand lives in the module that does the work; this file only
names them, so a subcommand's imports (kubernetes, matplotlib, ...) load only when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .cli_errors import EXIT_USAGE, describe

# subcommand -> (module, one-line help). The module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "crds": ("notebookos.api.cmd_crds", "write (or --check) the CRD YAML generated from the API models"),
    "validate": ("notebookos.api.cmd_validate", "check manifests against the CRD schemas, offline"),
    "simulate": ("notebookos.sim.cli", "replay notebook GPU traces under each policy and compare GPU-hours and delays"),
    "kernelspec": ("notebookos.cmd_kernelspec", "install Jupyter kernelspecs whose kernels run on NotebookOS"),
    "connect": ("notebookos.cmd_connect", "write a connection file for a NotebookKernel applied with kubectl"),
    "interrupt": ("notebookos.cmd_interrupt", "interrupt the cell a NotebookKernel is running (as Ctrl-C would)"),
    "operator": ("notebookos.operator.__main__", "run the kopf operator against the current kubeconfig"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="notebookos", description="NotebookOS for Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        message = describe(exc)
        if message is None or os.environ.get("NOTEBOOKOS_DEBUG"):
            raise  # a bug: its traceback is what a report needs
        print(f"notebookos {args.command}: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

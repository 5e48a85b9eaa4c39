"""`notebookos validate FILE...`: the API server's verdict on manifests, without a cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from notebookos.cli_errors import EXIT_USAGE, CliError, yaml_problem

from .validate import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="YAML manifests (several documents per file allowed)")


def _documents(path: Path) -> list[Any]:
    """The file's YAML documents; a file that cannot be read or parsed is one line on stderr."""
    try:
        return list(yaml.safe_load_all(path.read_text()))
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror.lower() if exc.strerror else exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None


def run(args: argparse.Namespace) -> int:
    """Exit 0 when every manifest is valid, 1 when one is not, 2 when a file cannot be read; every
    file is checked either way."""
    failed = unreadable = 0
    for path in args.files:
        try:
            docs = _documents(path)
        except CliError as exc:
            print(f"notebookos validate: {exc}", file=sys.stderr)
            unreadable += 1
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            name = f"{path}" + (f"#{i}" if i else "")
            if not isinstance(doc, dict):
                print(f"{name}: not a Kubernetes manifest (a YAML mapping with apiVersion and kind)")
                failed += 1
                continue
            errors = validate(doc)
            if errors:
                failed += 1
                for e in errors:
                    print(f"{name}: {e}")
            else:
                print(f"{name}: valid {doc.get('kind')} {(doc.get('metadata') or {}).get('name', '')}")
    return EXIT_USAGE if unreadable else 1 if failed else 0

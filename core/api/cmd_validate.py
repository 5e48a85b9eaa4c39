"""`notebookos validate FILE...`: the API server's verdict on manifests, without a cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from .validate import validate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help="YAML manifests (several documents per file allowed)")


def run(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is None:
                continue
            name = f"{path}" + (f"#{i}" if i else "")
            errors = validate(doc)
            if errors:
                failed += 1
                for e in errors:
                    print(f"{name}: {e}")
            else:
                print(f"{name}: valid {doc.get('kind')} {doc.get('metadata', {}).get('name', '')}")
    return 1 if failed else 0

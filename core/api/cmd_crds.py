"""`notebookos crds`: write the generated CRDs into a folder, or check that it is up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .crd import all_crds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Repeatable: the repository's crds/ and the Helm chart's copy are checked and written together.
    parser.add_argument("--out", action="append", default=None, help="folder to write into, repeatable (default: crds)")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the folder differs from the models, write nothing"
    )


def run(args: argparse.Namespace) -> int:
    stale = []
    for out in map(Path, args.out or ["crds"]):
        for name, text in all_crds().items():
            path = out / name
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
            else:
                out.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path}")
    if stale:
        print(f"out of date with core/api/models.py: {', '.join(stale)}; run `make crds`", file=sys.stderr)
        return 1
    return 0

"""Run every benchmark module in this package (each defines main())."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def main() -> int:
    for mod in sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_")):
        print(f"== benchmarks.{mod}", flush=True)
        importlib.import_module(f"benchmarks.{mod}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the extender's, broker's and node agent's entry points share: logging and the asyncio run."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)


def run_service(serve: Callable[[argparse.Namespace], Coroutine[Any, Any, None]], args: argparse.Namespace) -> int:
    """Run an async service until interrupted (SIGINT ends it quietly)."""
    setup_logging(args.log_level)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0

"""Start-up and liveness."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from ..settings import configure


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)


@kopf.on.probe(id="now")
def now(**_: Any) -> str:
    # The liveness endpoint answers only while the operator's event loop is responsive.
    return datetime.datetime.now(datetime.UTC).isoformat()

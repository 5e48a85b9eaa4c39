"""Start-up and liveness."""

from __future__ import annotations

import datetime
from typing import Any

import kopf

from ..cache import CachedKube
from ..settings import configure
from . import cache


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, **kwargs: Any) -> None:
    configure(settings)
    # kopf hands its indexes (still empty: they fill before any other handler runs) to every
    # handler by id; the reconciler's cached Kube reads them from now on.
    view = cache.view(kwargs)
    kube = memo["reconciler"].kube if "reconciler" in memo else None
    if view is not None and isinstance(kube, CachedKube):
        kube.attach(view)


@kopf.on.probe(id="now")
def now(**_: Any) -> str:
    # The liveness endpoint answers only while the operator's event loop is responsive.
    return datetime.datetime.now(datetime.UTC).isoformat()

"""kopf settings: watch timeouts, where kopf keeps its own bookkeeping, how events are posted."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import kopf

from notebookos import labels


@dataclass(frozen=True)
class WatchTimeouts:
    # A watch that the server or a proxy silently drops stops delivering events without an error
    # (kopf issues #204, #698, #1120). Bounded timeouts make kopf reconnect. A reconnect resumes
    # from the last resourceVersion and lists nothing again: the resync is handlers/resync.py's.
    server: int = 120  # seconds; the API server wants an integer
    client: float = 150.0
    connect: float = 5.0
    request: float = 30.0


def configure(settings: kopf.OperatorSettings, timeouts: WatchTimeouts = WatchTimeouts()) -> None:
    settings.watching.server_timeout = timeouts.server
    settings.watching.client_timeout = timeouts.client
    settings.watching.connect_timeout = timeouts.connect
    settings.networking.request_timeout = timeouts.request
    # Custom-resource status is a structural schema: unknown fields (kopf's status.kopf) are pruned,
    # so kopf's progress and diff base live in annotations, under the project's own prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=labels.DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=labels.DOMAIN, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{labels.DOMAIN}/operator"
    settings.posting.reporting_component = labels.MANAGED_BY
    settings.posting.level = logging.INFO
    # Handlers are synchronous (the kubernetes client); a few threads keep kernels independent.
    settings.execution.max_workers = 8

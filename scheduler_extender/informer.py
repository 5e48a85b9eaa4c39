"""A small informer: LIST once, then WATCH from that resourceVersion, re-LIST only when the watch
expires (410 Gone). Raw JSON throughout (no model deserialisation: 5,000 nodes must stay cheap).

Uses the official `kubernetes` client's generated list functions with ``_preload_content=False``.
The kubernetes client's own ``Watch`` does not track resourceVersion when not deserialising, hence
this loop. Runs in a daemon thread; callbacks must be thread-safe (ClusterState is).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ListFn = Callable[..., Any]


class Informer:
    def __init__(
        self,
        name: str,
        list_fn: ListFn,
        on_replace: Callable[[list[dict[str, Any]]], None],
        on_event: Callable[[str, dict[str, Any]], None],
        *,
        on_synced: Callable[[], None] | None = None,
        watch_timeout_s: int = 300,
        retry_s: float = 2.0,
        **list_kwargs: Any,
    ) -> None:
        self.name = name
        self._list_fn = list_fn
        self._on_replace = on_replace
        self._on_event = on_event
        self._on_synced = on_synced
        self._watch_timeout_s = watch_timeout_s
        self._retry_s = retry_s
        self._kwargs = list_kwargs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{name}", daemon=True)
        self._resp: Any = None

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.close()
            except Exception:
                pass

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rv: str | None = self._list()
                while not self._stop.is_set() and rv is not None:
                    rv = self._watch(rv)
            except Exception as e:  # network, API errors, missing CRD: retry, never die
                if self._stop.is_set():
                    return
                log.warning("informer %s: %s; retrying in %.0fs", self.name, e, self._retry_s)
                self._stop.wait(self._retry_s)

    def _list(self) -> str:
        resp = self._list_fn(_preload_content=False, **self._kwargs)
        data = json.loads(resp.data)
        self._on_replace(data.get("items") or [])
        if self._on_synced:
            self._on_synced()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, rv: str) -> str | None:
        """Watch from rv; returns the last resourceVersion seen, None to re-LIST (410 Gone)."""
        resp = self._list_fn(
            _preload_content=False,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            **self._kwargs,
        )
        self._resp = resp
        started = time.monotonic()
        try:
            buf = b""
            for chunk in resp.stream(amt=None, decode_content=False):
                if self._stop.is_set():
                    return rv
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return None
                        raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = new_rv
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._on_event(kind, obj)
        finally:
            self._resp = None
            resp.release_conn()
        if time.monotonic() - started < 1.0:
            self._stop.wait(self._retry_s)  # a watch that ends at once: do not spin
        return rv

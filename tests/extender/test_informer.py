"""The informer's LIST/WATCH loop: events applied in order, resourceVersion carried, re-LIST on
410 Gone, retry after errors. The list function is a stand-in for the kubernetes client's
generated ones (same keyword arguments, `_preload_content=False` responses)."""

from __future__ import annotations

import json
import threading
from typing import Any

from notebookos.extender.informer import Informer
from tests.extender.helpers import replica_pod


class Resp:
    def __init__(self, data: bytes = b"", lines: list[dict[str, Any]] | None = None) -> None:
        self.data = data
        self._lines = lines or []

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        blob = b"".join(json.dumps(x).encode() + b"\n" for x in self._lines)
        yield blob[:7]  # events split across chunks
        yield blob[7:]

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


def obj(name: str, rv: str) -> dict[str, Any]:
    o = replica_pod(name)
    o["metadata"]["resourceVersion"] = rv
    return o


def test_list_watch_relist_on_410_and_retry() -> None:
    calls: list[dict[str, Any]] = []
    script = [
        Resp(json.dumps({"metadata": {"resourceVersion": "10"}, "items": [obj("a", "9")]}).encode()),
        Resp(
            lines=[
                {"type": "ADDED", "object": obj("b", "11")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}},
            ]
        ),
        Resp(
            lines=[
                {"type": "DELETED", "object": obj("a", "13")},
                {"type": "ERROR", "object": {"code": 410, "message": "too old"}},
            ]
        ),
        RuntimeError("connection reset"),
        Resp(json.dumps({"metadata": {"resourceVersion": "20"}, "items": [obj("b", "19")]}).encode()),
    ]
    replaced: list[list[str]] = []
    events: list[tuple[str, str]] = []
    done = threading.Event()

    def list_fn(**kw: Any) -> Any:
        calls.append(kw)
        if not script:
            done.set()
            raise RuntimeError("script over")
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    inf = Informer(
        "pods",
        list_fn,
        lambda items: replaced.append([i["metadata"]["name"] for i in items]),
        lambda kind, o: events.append((kind, o["metadata"]["name"])),
        retry_s=0.01,
        label_selector="x",
    ).start()
    assert done.wait(10)
    inf.stop()
    assert replaced == [["a-1"], ["b-1"]]
    assert events == [("ADDED", "b-1"), ("DELETED", "a-1")]
    assert [c.get("watch", False) for c in calls[:5]] == [False, True, True, False, False]
    assert calls[1]["resource_version"] == "10"
    assert calls[2]["resource_version"] == "12"  # bookmarks move the resourceVersion on
    assert all(c["label_selector"] == "x" and c["_preload_content"] is False for c in calls)

"""The overload report against a fake Kubernetes API server (HTTP on loopback): a Warning Event on
the NotebookKernel, and its GPUUnavailable condition set and cleared without losing the others."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pykube
import pytest

from notebookos.kernel.report import KubeReporter

BASE = "/apis/notebookos.io/v1alpha1/namespaces/ns/notebookkernels/nb1"
REPLICA = "/apis/notebookos.io/v1alpha1/namespaces/ns/kernelreplicas/nb1-2"


class FakeApi:
    def __init__(self) -> None:
        self.kernel: dict[str, Any] = {
            "metadata": {"name": "nb1", "resourceVersion": "1"},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Running"}]},
        }
        self.events: list[dict[str, Any]] = []
        self.replica_status: dict[str, Any] = {}
        self.conflicts = 1  # the first status patch meets a concurrent writer
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> dict[str, Any]:
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == BASE:
                    return self._send(200, outer.kernel)
                return self._send(404, {})

            def do_POST(self) -> None:
                if self.path == "/api/v1/namespaces/ns/events":
                    outer.events.append(self._body())
                    return self._send(201, {})
                return self._send(404, {})

            def do_PATCH(self) -> None:
                body = self._body()
                if self.path == REPLICA + "/status":
                    outer.replica_status.update(body["status"])
                    return self._send(200, {})
                if self.path != BASE + "/status":
                    return self._send(404, {})
                if "metadata" not in body:  # a merge patch of scalar fields, no compare-and-swap
                    outer.kernel["status"].update(body["status"])
                    return self._send(200, outer.kernel)
                if (
                    outer.conflicts
                    or body["metadata"]["resourceVersion"] != outer.kernel["metadata"]["resourceVersion"]
                ):
                    outer.conflicts = max(0, outer.conflicts - 1)
                    outer.kernel["metadata"]["resourceVersion"] = str(
                        int(outer.kernel["metadata"]["resourceVersion"]) + 1
                    )
                    return self._send(409, {"reason": "Conflict"})
                outer.kernel["status"]["conditions"] = body["status"]["conditions"]
                outer.kernel["metadata"]["resourceVersion"] = str(int(outer.kernel["metadata"]["resourceVersion"]) + 1)
                return self._send(200, outer.kernel)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def condition(self, type_: str) -> dict[str, Any]:
        return next(c for c in self.kernel["status"]["conditions"] if c["type"] == type_)


@pytest.fixture
def api() -> Iterator[FakeApi]:
    a = FakeApi()
    yield a
    a.server.shutdown()
    a.server.server_close()


def test_overload_sets_event_and_condition_then_clears_it(api: FakeApi) -> None:
    rep = KubeReporter(pykube.HTTPClient(pykube.KubeConfig.from_url(api.url)), "ns", "nb1")
    rep.served()
    assert api.events == [] and len(api.kernel["status"]["conditions"]) == 1, "nothing to clear yet"
    rep.overloaded("kernel nb1 is overloaded: no replica could get 1 GPU(s) for this cell")
    (event,) = api.events
    assert event["reason"] == "Overloaded" and event["type"] == "Warning"
    assert event["involvedObject"] == {
        "apiVersion": "notebookos.io/v1alpha1",
        "kind": "NotebookKernel",
        "name": "nb1",
        "namespace": "ns",
    }
    cond = api.condition("GPUUnavailable")
    assert (cond["status"], cond["reason"]) == ("True", "Overloaded")
    assert api.condition("Ready")["status"] == "True", "other conditions are kept"
    rep.served()
    assert (api.condition("GPUUnavailable")["status"], api.condition("GPUUnavailable")["reason"]) == (
        "False",
        "GPUsGranted",
    )


def test_a_new_router_clears_what_its_predecessor_left(api: FakeApi) -> None:
    """A router made anew while a cell waited: nobody else would set GPUUnavailable back."""
    KubeReporter(pykube.HTTPClient(pykube.KubeConfig.from_url(api.url)), "ns", "nb1").overloaded("full")
    assert api.condition("GPUUnavailable")["status"] == "True"
    KubeReporter(pykube.HTTPClient(pykube.KubeConfig.from_url(api.url)), "ns", "nb1").served()
    assert api.condition("GPUUnavailable")["status"] == "False"


def test_unreachable_api_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    rep = KubeReporter(pykube.HTTPClient(pykube.KubeConfig.from_url("http://127.0.0.1:9"), timeout=1), "ns", "nb1")
    rep.overloaded("overloaded")
    assert "could not report the overload of nb1" in caplog.text


def test_activity_and_replica_status(api: FakeApi) -> None:
    rep = KubeReporter(pykube.HTTPClient(pykube.KubeConfig.from_url(api.url)), "ns", "nb1")
    rep.activity(2, 7, "2026-01-01T00:00:00Z")
    st = api.kernel["status"]
    assert (st["executor"], st["cells"], st["lastActivity"]) == ("nb1-2", 7, "2026-01-01T00:00:00Z")
    assert st["conditions"][0]["type"] == "Ready", "the rest of the status is untouched"
    rep.replica(2, {"role": "Leader", "term": 3, "commitIndex": 40})
    assert api.replica_status["raft"] == {"role": "Leader", "term": 3, "commitIndex": 40}
    assert api.replica_status["lastHeartbeat"].endswith("Z")


def test_a_replica_writes_its_status_on_a_change_or_rarely() -> None:
    """An idle replica must not write every few seconds: at 3,000 replicas that is most of the
    API server's writes, and each one is an event the operator reconciles."""
    from notebookos.kernel.report import HEARTBEAT_PERIOD, ReplicaReport

    report = ReplicaReport()
    view = {"role": "Leader", "term": 3, "commitIndex": 40}
    assert report.due(view, 0.0), "the first view is written"
    report.done(view, 0.0)
    assert not report.due(dict(view), 10.0) and not report.due(dict(view), HEARTBEAT_PERIOD - 1)
    assert report.due({**view, "commitIndex": 41}, 20.0), "a cell committed"
    assert report.due({**view, "role": "Follower"}, 20.0), "a new leader"
    assert report.due(view, HEARTBEAT_PERIOD), "still a heartbeat, now and then"
    assert HEARTBEAT_PERIOD / 3 >= 60, "3 replicas: at most one write per idle kernel per minute"

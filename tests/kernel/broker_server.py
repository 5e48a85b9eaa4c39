"""The GPU broker's HTTP contract over the in-process LedgerBroker: GPUs without a cluster, for
the kernel tests (the real broker is in scheduler_extender/). Test code: not in the package."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from notebookos.kernel.broker import Granted, LedgerBroker

TOKEN = "local-broker-token"  # what BrokerServer expects as bearer token


class BrokerServer:
    """The GPU broker's HTTP contract over the in-process LedgerBroker: GPUs without a cluster,
    for tests and local runs (the real broker is in scheduler_extender/)."""

    def __init__(self) -> None:
        self.broker = LedgerBroker()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"reason": "bad token"})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.calls.append((self.path, body))
                if self.path == "/acquire":
                    r = outer.broker.acquire(
                        body["kernel"], body["replica"], body["node"], body["gpus"], body["executionId"]
                    )
                    if isinstance(r, Granted):
                        return self._send(200, {"devices": list(r.devices), "node": r.node})
                    return self._send(409 if r.code == "Conflict" else 503, {"reason": r.reason, "code": r.code})
                if self.path == "/release":
                    outer.broker.release(body["executionId"])
                    return self._send(200, {})
                return self._send(404, {"reason": "no such path"})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

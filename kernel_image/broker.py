"""The GPU broker as the kernel sees it: acquire devices for one execution, release them after.

Two implementations of one small protocol: ``LedgerBroker`` over the pure ``GpuLedger`` (tests and
the simulator, no cluster) and ``HttpBroker``, the client of the broker service in
scheduler_extender/ (JSON over HTTP, the pod's service-account token as bearer token).
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from notebookos.kernel.config import BrokerConfig
from notebookos.policy.ledger import GpuLedger, Refusal


@dataclass(frozen=True)
class Granted:
    devices: tuple[str, ...]
    node: str
    execution_id: str


@dataclass(frozen=True)
class Refused:
    reason: str
    code: str = "Unavailable"


class BrokerError(RuntimeError):
    """The broker could not be reached or answered something unexpected."""


class BrokerClient(Protocol):
    def acquire(self, kernel: str, replica: int, node: str, gpus: int, execution_id: str) -> Granted | Refused: ...

    def release(self, execution_id: str) -> None: ...


class LedgerBroker:
    """In-process broker over the shared ledger (thread-safe)."""

    def __init__(self, ledger: GpuLedger | None = None) -> None:
        self.ledger = ledger or GpuLedger()
        self._lock = threading.Lock()

    def acquire(self, kernel: str, replica: int, node: str, gpus: int, execution_id: str) -> Granted | Refused:
        with self._lock:
            r = self.ledger.acquire(kernel, replica, node, gpus, execution_id)
        if isinstance(r, Refusal):
            return Refused(r.reason, r.code)
        return Granted(r.devices, r.node, r.execution_id)

    def release(self, execution_id: str) -> None:
        with self._lock:
            self.ledger.release(execution_id)


class HttpBroker:
    """POST <url>/acquire {kernel, replica, node, gpus, executionId} -> {devices: [...]} (200) or
    a refusal (409/503 with {reason, code}); POST <url>/release {executionId}."""

    def __init__(self, url: str, token_file: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.token_file = Path(token_file)
        self.timeout = timeout

    def _token(self) -> str | None:
        # Re-read every call: projected service-account tokens rotate.
        try:
            return self.token_file.read_text().strip() or None
        except OSError:
            return None

    def _post(self, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        token = self._token()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            raise BrokerError(f"GPU broker at {self.url} unreachable: {e}") from e
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise BrokerError(f"GPU broker {path} answered {status} with non-JSON body {raw[:200]!r}") from None
        return status, data if isinstance(data, dict) else {}

    def acquire(self, kernel: str, replica: int, node: str, gpus: int, execution_id: str) -> Granted | Refused:
        status, data = self._post(
            "/acquire", {"kernel": kernel, "replica": replica, "node": node, "gpus": gpus, "executionId": execution_id}
        )
        if status == 200:
            devices = data.get("devices", [])
            if not isinstance(devices, list):
                raise BrokerError(f"GPU broker acquire answered devices={devices!r}, expected a list")
            return Granted(tuple(str(d) for d in devices), str(data.get("node", node)), execution_id)
        if status in (401, 403):
            raise BrokerError(f"GPU broker refused our credentials ({status}): {data.get('reason', data)}")
        return Refused(str(data.get("reason", f"HTTP {status}")), str(data.get("code", "Unavailable")))

    def release(self, execution_id: str) -> None:
        status, data = self._post("/release", {"executionId": execution_id})
        if status not in (200, 204, 404):
            raise BrokerError(f"GPU broker release of {execution_id} answered {status}: {data}")


def broker_from_config(cfg: BrokerConfig) -> BrokerClient | None:
    return HttpBroker(cfg.url, cfg.token_file, cfg.timeout) if cfg.url else None

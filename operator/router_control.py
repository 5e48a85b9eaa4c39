"""Re-pointing a kernel's live router at a moved replica, over the router's control channel
(`notebookos_update_peer_request`, kernel_image/contract.py), signed with the kernel's HMAC key
like any Jupyter message: the router refuses unsigned ones. A connected client keeps its
connection, which replacing the router pod would cut."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import zmq
from jupyter_client.session import Session

from notebookos.kernel import contract as c

log = logging.getLogger(__name__)


def _request(
    host: str, control_port: int, key: bytes, requests: list[tuple[str, dict[str, Any]]], timeout: float
) -> list[dict[str, Any]] | str:
    """Send each control request in turn; their replies' contents, or why not (the first error)."""
    session = Session(key=key, signature_scheme="hmac-sha256", username="notebookos-operator")
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    out: list[dict[str, Any]] = []
    try:
        sock.connect(f"tcp://{host}:{control_port}")
        for mtype, content in requests:
            msg = session.msg(mtype, content)
            session.send(sock, msg)
            while True:
                if not sock.poll(int(timeout * 1000)):
                    return f"the router at {host}:{control_port} did not answer {mtype} in {timeout:.0f} s"
                _, parts = session.feed_identities(sock.recv_multipart())
                reply = session.deserialize(parts)
                if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                    break
            if reply["content"].get("status") != "ok":
                return str(reply["content"].get("evalue") or reply["content"])
            out.append(dict(reply["content"]))
        return out
    except (zmq.ZMQError, ValueError) as e:
        return f"the router at {host}:{control_port}: {e}"
    finally:
        sock.close(linger=0)


def update_peers(
    host: str, control_port: int, key: bytes, moved: Mapping[int, tuple[str, str | None]], timeout: float = 10.0
) -> bool:
    """Tell the router at host:control_port each moved replica's new Jupyter and Raft address
    ({replica: ("ip:jupyter_port", "ip:raft_port" or None: the replicas know it)}); True once it
    confirmed every one."""
    reqs = [
        (c.UPDATE_PEER_REQUEST, {"replica": rid, "jupyter": jupyter, "raft": raft})
        for rid, (jupyter, raft) in sorted(moved.items())
    ]
    got = _request(host, control_port, key, reqs, timeout)
    if isinstance(got, str):
        log.warning("re-pointing the router: %s", got)
        return False
    return True


def checkpoint(host: str, control_port: int, key: bytes, timeout: float = 660.0) -> dict[str, Any] | str:
    """Ask the router for a hibernation checkpoint: its description (id, url, bytes, variables,
    cells), or why none was taken ("a cell is running or waiting" is one answer)."""
    got = _request(host, control_port, key, [(c.CHECKPOINT_REQUEST, {})], timeout)
    return got if isinstance(got, str) else {k: v for k, v in got[0].items() if k != "status"}

"""Re-pointing a kernel's live router at a moved replica, over the router's control channel
(`notebookos_update_peer_request`, kernel_image/contract.py), signed with the kernel's HMAC key
like any Jupyter message: the router refuses unsigned ones. A connected client keeps its
connection, which replacing the router pod would cut."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import zmq
from jupyter_client.session import Session

from notebookos.kernel import contract as c

log = logging.getLogger(__name__)


def update_peers(
    host: str, control_port: int, key: bytes, moved: Mapping[int, tuple[str, str]], timeout: float = 10.0
) -> bool:
    """Tell the router at host:control_port each moved replica's new Jupyter and Raft address
    ({replica: ("ip:jupyter_port", "ip:raft_port")}); True once it confirmed every one."""
    session = Session(key=key, signature_scheme="hmac-sha256", username="notebookos-operator")
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(f"tcp://{host}:{control_port}")
        for rid, (jupyter, raft) in sorted(moved.items()):
            msg = session.msg(c.UPDATE_PEER_REQUEST, {"replica": rid, "jupyter": jupyter, "raft": raft})
            session.send(sock, msg)
            while True:
                if not sock.poll(int(timeout * 1000)):
                    log.warning("router %s:%d did not answer the move of replica %d", host, control_port, rid)
                    return False
                _, parts = session.feed_identities(sock.recv_multipart())
                reply = session.deserialize(parts)
                if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                    break
            if reply["content"].get("status") != "ok":
                log.warning(
                    "router %s:%d refused the move of replica %d: %s", host, control_port, rid, reply["content"]
                )
                return False
        return True
    except (zmq.ZMQError, ValueError) as e:
        log.warning("router %s:%d: %s", host, control_port, e)
        return False
    finally:
        sock.close(linger=0)

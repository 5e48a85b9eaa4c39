"""The router-replica contract: every name the router and the replicas exchange, defined once.

A client's execute_request reaches every replica with ``metadata[META]`` set by the router:

* ``execution_id``: the id the replicas agree on (the client's msg_id);
* ``target``: the replica the router proposes as executor (None asks for the replicas' election);
* ``target_boot``: not used for decisions (the log decides), kept for logs;
* ``after``: the last execution the router saw settled in the log. The executor waits until its
  own log has applied that execution's outcome, so it never runs a cell on stale state, and no
  Raft commit is needed before the cell runs.

Each replica's execute_reply carries ``metadata[META]`` with ``replica``, ``role`` (one of ROLES),
``executor``, ``execution_id``, ``node``, ``devices``, ``boot`` and ``outcome`` (the execution's
outcome in the log: OK, ABORTED, or None when the log holds none, e.g. an overload).
"""

from __future__ import annotations

from typing import Any

META = "notebookos"  # metadata key of the router's fields (requests) and the replica's (replies)
TARGET_OVERRIDE = "notebookos_target"  # client metadata: a replica id, or "election"

# roles a replica reports for an execution
EXECUTOR = "executor"
STANDBY = "standby"
OVERLOADED_ROLE = "overloaded"
ABORTED_ROLE = "aborted"
DUPLICATE = "duplicate"
ROLES = (EXECUTOR, STANDBY, OVERLOADED_ROLE, ABORTED_ROLE, DUPLICATE)

# outcomes of an execution in the replicated log
OK = "ok"
ABORTED = "aborted"

# IOPub messages of the replicas to the router (never forwarded to clients)
LEAD = "notebookos_lead"  # the executor starts running the cell

# control messages
UPDATE_PEER_REQUEST = "notebookos_update_peer_request"
UPDATE_PEER_REPLY = "notebookos_update_peer_reply"
STATUS_REQUEST = "notebookos_status_request"
STATUS_REPLY = "notebookos_status_reply"
# hibernation (the operator asks the router, the router asks a replica): save the kernel's state
# to {"store": <fsspec URL>}; the reply names the checkpoint: id, url, bytes, variables, cells
CHECKPOINT_REQUEST = "notebookos_checkpoint_request"
CHECKPOINT_REPLY = "notebookos_checkpoint_reply"
BUSY = "a cell is running or waiting"  # why a checkpoint is refused now (the operator tries later)

# error names a client sees
OVERLOADED = "NotebookOSOverloaded"
EXECUTOR_LOST = "NotebookOSExecutorLost"
BAD_REQUEST = "NotebookOSBadRequest"
WAKE_FAILED = "NotebookOSWakeFailed"  # a hibernated kernel could not be brought back for the request
ERRORS = (OVERLOADED, EXECUTOR_LOST, BAD_REQUEST, WAKE_FAILED)


def error(ename: str, evalue: str) -> dict[str, Any]:
    """An error reply's content, with a traceback a front end renders."""
    return {"status": "error", "ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}


def reply_meta(msg: dict[str, Any]) -> dict[str, Any]:
    """The replica's fields of a reply (empty for anything else)."""
    md = msg.get("metadata")
    nb = md.get(META) if isinstance(md, dict) else None
    return nb if isinstance(nb, dict) else {}


def bad_request(msg: dict[str, Any]) -> str | None:
    """Why a request ipykernel could not handle is bad (None if it is fine). ipykernel drops such
    a message, or dies on it; the router answers it with an error instead."""
    content, metadata = msg.get("content"), msg.get("metadata")
    if not isinstance(content, dict):
        return f"content must be a JSON object, got {type(content).__name__}"
    if not isinstance(metadata, dict):
        return f"metadata must be a JSON object, got {type(metadata).__name__}"
    if msg["header"].get("msg_type") == "execute_request":
        if not isinstance(content.get("code"), str):
            return "execute_request content needs 'code', a string"
        for key in ("silent", "store_history", "allow_stdin", "stop_on_error"):
            if key in content and not isinstance(content[key], bool):
                return f"execute_request content '{key}' must be true or false"
        if "user_expressions" in content and not isinstance(content["user_expressions"], dict):
            return "execute_request content 'user_expressions' must be a JSON object"
    return None

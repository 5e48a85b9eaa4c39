"""A hibernating kernel's checkpoint: the replicated state (variables -> blobs, cells, history)
in one object in the kernel's object store, beside the large values already written there.

The large values are not copied: each committed cell's objects are under ``<kernel>/<exec id>/``
in the store the replicas share, so a checkpoint is small and quick even for gigabytes of state.
Replicas made when the kernel wakes restore the checkpoint before their Raft group starts, then
load the values from the store as a standby catching up would.
"""

from __future__ import annotations

import io
import pickle
import time
import uuid
from typing import Any

import fsspec

from notebookos.kernel.raftlog import BlobRef
from notebookos.kernel.store import ObjectStore

FORMAT = "notebookos-checkpoint/1"
WAIT_FOR_OBJECTS = 60.0  # a blob the last executor is still writing


class CheckpointError(RuntimeError):
    """The checkpoint cannot be written or read; the message names what and where."""


def _du(store: ObjectStore, key: str) -> int:
    try:
        return int(store.fs.du(f"{store.root}/{key}", total=True))
    except FileNotFoundError:
        return 0


def write(store: ObjectStore, kernel: str, state: dict[str, Any]) -> dict[str, Any]:
    """Save `state` (KernelState.export) to the store; returns the checkpoint's description (what
    the operator puts in the kernel's status). Raises CheckpointError naming what failed."""
    blobs: dict[int, BlobRef] = state["blobs"]
    live = {seq: blobs[seq] for seq in set(state["vars"].values()) if seq in blobs}
    size = 0
    for _, blob in sorted(live.items()):
        if blob.url is not None:
            fs, path = fsspec.core.url_to_fs(blob.url)
            end = time.monotonic() + WAIT_FOR_OBJECTS
            while not fs.exists(path):
                if time.monotonic() > end:
                    raise CheckpointError(f"the state of cell {blob.cell} ({blob.url}) is not in the store")
                time.sleep(0.05)
        size += len(blob.data or b"") + _du(store, f"{kernel}/{blob.exec_id}")
    cid = f"{int(state['exec_count'])}-{uuid.uuid4().hex[:8]}"
    body = pickle.dumps({"format": FORMAT, "kernel": kernel, "id": cid, "state": state}, protocol=5)
    try:
        url = store.put_bytes(f"{kernel}/checkpoints/{cid}", body)
    except Exception as e:
        raise CheckpointError(f"cannot write the checkpoint to {store.url}: {type(e).__name__}: {e}") from e
    return {
        "id": cid,
        "url": url,
        "bytes": size + len(body),
        "variables": len(state["vars"]),
        "cells": int(state["exec_count"]),
    }


def read(url: str, kernel: str) -> dict[str, Any]:
    """The saved state (for KernelState.restore), or CheckpointError naming what is wrong."""
    try:
        data = ObjectStore.get_bytes(url)
    except FileNotFoundError as e:
        raise CheckpointError(f"the checkpoint {url} is missing") from e
    except Exception as e:
        raise CheckpointError(f"cannot read the checkpoint {url}: {type(e).__name__}: {e}") from e
    try:
        saved = pickle.load(io.BytesIO(data))
    except Exception as e:
        raise CheckpointError(f"the checkpoint {url} is corrupt ({type(e).__name__}: {e})") from e
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise CheckpointError(f"{url} is not a NotebookOS checkpoint ({FORMAT})")
    if saved.get("kernel") != kernel:
        raise CheckpointError(f"the checkpoint {url} is of kernel {saved.get('kernel')!r}, not {kernel!r}")
    return dict(saved["state"])

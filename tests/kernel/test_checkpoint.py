"""The hibernation checkpoint (kernel_image/checkpoint.py): what it saves, how a new Raft state
starts from it, and the errors that name what is wrong."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from notebookos.kernel import checkpoint
from notebookos.kernel.raftlog import BlobRef, KernelState
from notebookos.kernel.store import ObjectStore


def _state(store: ObjectStore) -> KernelState:
    st = KernelState(3, lambda: None)
    url, _ = store.put("k/e2/big", list(range(1000)))
    st.blobs = {
        1: BlobRef(1, "e1", 1, 1, b"small", None, (), ("x",)),
        2: BlobRef(2, "e2", 2, 2, None, url, (1,), ("big",)),
        3: BlobRef(3, "e3", 3, 1, b"gone", None, (), ("old",)),  # no variable left: not live
    }
    st.vars = {"x": 1, "big": 2}
    st.blob_seq, st.exec_count, st.last_executor = 3, 3, 2
    st.history = ["x = 1", "big = list(range(1000))"]
    st.done["e2"] = "ok"
    st.peers = {1: ("10.0.0.1", 7000)}  # the old pods' addresses: not carried over
    return st


def test_a_checkpoint_restores_the_replicated_state_into_a_new_group(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    old = _state(store)
    desc = checkpoint.write(store, "k", old.export())
    assert desc["id"].startswith("3-") and desc["url"].startswith(f"file://{tmp_path}/k/checkpoints/")
    assert desc["variables"] == 2 and desc["cells"] == 3
    assert desc["bytes"] > len(pickle.dumps(list(range(1000))))  # the large value is counted, not copied

    new = KernelState(3, lambda: None)
    new.restore(checkpoint.read(desc["url"], "k"))
    snap = new.snapshot()
    assert snap.vars == {"x": 1, "big": 2} and snap.exec_count == 3 and snap.last_executor == 2
    assert snap.blobs[2].url == old.blobs[2].url and new.blob_seq == 3
    assert new.outcome("e2") == "ok"  # the router's `after` is found after the wake
    assert new.peers == {} and new.boots == {}


def test_read_names_what_is_wrong(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    desc = checkpoint.write(store, "k", _state(store).export())
    with pytest.raises(checkpoint.CheckpointError, match="of kernel 'k', not 'other'"):
        checkpoint.read(desc["url"], "other")
    path = Path(desc["url"].removeprefix("file://"))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match=f"the checkpoint {desc['url']} is corrupt"):
        checkpoint.read(desc["url"], "k")
    path.write_bytes(pickle.dumps({"format": "something else"}))
    with pytest.raises(checkpoint.CheckpointError, match="is not a NotebookOS checkpoint"):
        checkpoint.read(desc["url"], "k")
    path.unlink()
    with pytest.raises(checkpoint.CheckpointError, match=f"the checkpoint {desc['url']} is missing"):
        checkpoint.read(desc["url"], "k")


def test_a_checkpoint_waits_for_the_state_it_names_and_fails_if_it_never_comes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    st = _state(store)
    st.blobs[2] = BlobRef(2, "e2", 2, 2, None, f"file://{tmp_path}/k/e2/blob", (1,), ("big",))
    monkeypatch.setattr(checkpoint, "WAIT_FOR_OBJECTS", 0.2)
    with pytest.raises(checkpoint.CheckpointError, match=r"the state of cell 2 .* is not in the store"):
        checkpoint.write(store, "k", st.export())
    assert not (tmp_path / "k" / "checkpoints").exists()  # nothing half-written


def test_an_unwritable_store_is_an_error_naming_it(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "checkpoints").write_text("a file where a folder belongs")
    with pytest.raises(checkpoint.CheckpointError, match=f"cannot write the checkpoint to file://{tmp_path}"):
        checkpoint.write(store, "k", _state(store).export())

"""Large state values: saved after the cell's commit, waited for by the standbys that load them,
mapped (not read) from a local store, and checked for change at memory speed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from notebookos.kernel.raftlog import KernelState
from notebookos.kernel.statesync import StateNotReplicatedError, StateTracker, Unreplicated, _fingerprint
from notebookos.kernel.store import ObjectMissing, ObjectStore
from tests.kernel.test_units import Shell, cell, snap


def _pair(url: str) -> tuple[StateTracker, StateTracker, KernelState, Shell, Shell]:
    store = ObjectStore(url)
    a, b = StateTracker(store, 1024, "k"), StateTracker(store, 1024, "k")
    return a, b, KernelState(3, lambda: None), Shell(), Shell()


def _apply_in_thread(tr: StateTracker, st: KernelState, sh: Shell) -> threading.Thread:
    t = threading.Thread(target=tr.apply, args=(snap(st), sh.ns))
    t.start()
    return t


def test_a_large_value_is_saved_after_the_commit_and_a_standby_waits_for_it(tmp_path: Path) -> None:
    a, b, st, sh_a, sh_b = _pair(f"file://{tmp_path}")
    cs = cell(a, sh_a, st, "import numpy as np\nbig = np.arange(200_000)\nsmall = 3", save=False)
    [pending] = cs.pending
    assert not Path(b.store.path(pending.url)).exists(), "nothing is written before the upload starts"
    waiting = threading.Event()
    b.give_up = lambda replica: waiting.set()  # type: ignore[func-returns-value]
    loader = _apply_in_thread(b, st, sh_b)
    assert waiting.wait(30), "the standby waits for the object"
    a.committed(cs)
    a.flush()
    loader.join(30)
    assert not loader.is_alive()
    assert int(sh_b.ns["big"].sum()) == int(np.arange(200_000).sum()) and sh_b.ns["small"] == 3
    assert not list(tmp_path.rglob("*.part-*")), "no temporary file is left"


def test_a_value_lost_with_its_executor_before_it_was_saved_names_itself_and_nothing_blocks(tmp_path: Path) -> None:
    a, b, st, sh_a, sh_b = _pair(f"file://{tmp_path}")
    cell(a, sh_a, st, "import numpy as np\nbig = np.ones(100_000)", save=False)  # never saved
    b.give_up = lambda replica: f"replica {replica} has been unreachable for 4 s"
    b.apply(snap(st), sh_b.ns)
    assert type(sh_b.ns["big"]) is Unreplicated
    with pytest.raises(StateNotReplicatedError, match=r"'big' .* cell \[1\] on replica 1 .* lost with replica 1"):
        sh_b.ns["big"].sum()
    # The next cells, here on the survivor, run and replicate as usual.
    cell(b, sh_b, st, "big = np.zeros(10)\nok = 1", replica=2)
    c, sh_c = StateTracker(b.store, 1024, "k"), Shell()
    c.apply(snap(st), sh_c.ns)
    assert sh_c.ns["ok"] == 1 and float(sh_c.ns["big"].sum()) == 0.0


def test_a_failed_save_stops_the_standbys_waiting_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, st, sh_a, sh_b = _pair(f"file://{tmp_path}")
    cs = cell(a, sh_a, st, "import numpy as np\nbig = np.ones(100_000)", save=False)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(a.store.fs, "mv", full)
    a.committed(cs)
    a.flush()  # the failure is logged and left for the readers, not raised into the next cell
    b.apply(snap(st), sh_b.ns)
    with pytest.raises(StateNotReplicatedError, match=r"saving it failed: OSError: .*No space left on device"):
        len(sh_b.ns["big"])


def test_a_local_object_is_mapped_copy_on_write_and_page_aligned(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    arr = np.arange(1 << 16, dtype=np.int64)
    frame = pd.DataFrame({"x": np.arange(1000), "y": np.linspace(0, 1, 1000)})
    url, _ = store.put("k/x", {"a": arr, "f": frame})
    back = ObjectStore.get(url)
    assert np.array_equal(back["a"], arr) and back["a"].ctypes.data % 4096 == 0
    pd.testing.assert_frame_equal(back["f"], frame)
    back["a"][0] = -1  # the user's write lands in a private copy of the page
    assert ObjectStore.get(url)["a"][0] == 0


def test_a_remote_store_reads_each_buffer_into_its_own(tmp_path: Path) -> None:
    store = ObjectStore(f"memory://nbos-test-{tmp_path.name}")
    arr = np.random.default_rng(2).normal(size=(128, 64))
    url, _ = store.put("k/x", {"a": arr, "s": "meta"})
    back = ObjectStore.get(url)
    assert back["s"] == "meta" and np.array_equal(back["a"], arr) and back["a"].flags.writeable
    with pytest.raises(ObjectMissing, match="not saved within 0 s"):
        ObjectStore.get(f"{store.url}/k/never", timeout=0.0)


@pytest.mark.parametrize(
    ("make", "change"),
    [
        (lambda: np.arange(10_000, dtype=np.float64), lambda v: v.__setitem__(5000, -1.0)),
        (lambda: bytearray(b"x" * 10_000), lambda v: v.__setitem__(9999, 0)),
        (
            lambda: pd.DataFrame({"x": np.arange(5000), "y": np.ones(5000)}),
            lambda v: v.iloc.__setitem__((4999, 1), 7.0),
        ),
        (lambda: pd.Series(np.arange(5000.0), index=np.arange(5000) * 2), lambda v: v.iloc.__setitem__(0, 9.0)),
    ],
    ids=["numpy", "bytearray", "frame", "series"],
)
def test_a_fingerprint_changes_with_any_byte_and_only_then(make: Any, change: Any) -> None:
    v = make()
    before = _fingerprint(v)
    assert before is not None and _fingerprint(make()) == before
    change(v)
    assert _fingerprint(v) != before


def test_frames_of_python_objects_count_as_changed() -> None:
    assert _fingerprint(pd.DataFrame({"s": ["a", "b"]})) is None
    assert _fingerprint(np.array(["a", None], dtype=object)) is None


def test_a_cell_that_only_reads_a_big_frame_does_not_send_it_again(tmp_path: Path) -> None:
    a, _, st, sh, _ = _pair(f"file://{tmp_path}")
    cell(a, sh, st, "import numpy as np, pandas as pd\ndf = pd.DataFrame({'x': np.arange(50_000)})")
    cs = cell(a, sh, st, "total = int(df['x'].sum())")
    assert cs.changed == ["total"] and not cs.pending
    cs = cell(a, sh, st, "df.iloc[0, 0] = 5")
    assert "df" in cs.changed and cs.pending

"""In-process checks of the pure parts: the environment contract, the replicated state machine,
state capture and load, the object store, the broker client."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from notebookos.kernel.broker import BrokerError, Granted, HttpBroker, Refused
from notebookos.kernel.config import ConfigError, ReplicaConfig, RouterConfig
from notebookos.kernel.local import TOKEN, BrokerServer
from notebookos.kernel.raftlog import FAILED, KernelState, Snapshot
from notebookos.kernel.statesync import StateNotReplicatedError, StateTracker, Unreplicated
from notebookos.kernel.store import ObjectStore

BASE = {
    "NOTEBOOKOS_KERNEL": "k",
    "NOTEBOOKOS_REPLICA_ID": "2",
    "NOTEBOOKOS_PEERS": "1=10.0.0.1:7000,2=10.0.0.2:7000,3=10.0.0.3:7000",
    "NOTEBOOKOS_KEY": "secret",
}


def test_replica_config_from_env() -> None:
    cfg = ReplicaConfig.from_env(BASE)
    assert cfg.replica_id == 2 and cfg.peers[3].host == "10.0.0.3"
    assert str(cfg.raft_bind) == "0.0.0.0:7000" and cfg.jupyter_port == 9000 and cfg.gpus == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"NOTEBOOKOS_PEERS": "1=a:1,x"}, "NOTEBOOKOS_PEERS: expected id=host:port"),
        ({"NOTEBOOKOS_PEERS": "1=a:1,3=b:2"}, "must list this replica (2)"),
        ({"NOTEBOOKOS_PEERS": "1=a:99999,2=b:1"}, "expected host:port"),
        ({"NOTEBOOKOS_KEY": ""}, "NOTEBOOKOS_KEY or NOTEBOOKOS_KEY_FILE"),
        ({"NOTEBOOKOS_GPUS": "1"}, "needs NOTEBOOKOS_BROKER_URL"),
        ({"NOTEBOOKOS_GPUS": "two"}, "NOTEBOOKOS_GPUS must be an integer"),
        ({"NOTEBOOKOS_REPLICA_ID": ""}, "NOTEBOOKOS_REPLICA_ID must be set"),
    ],
)
def test_replica_config_errors_name_the_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReplicaConfig.from_env({**BASE, **change})


def test_router_config_errors() -> None:
    env = {"NOTEBOOKOS_KERNEL": "k", "NOTEBOOKOS_KEY": "s", "NOTEBOOKOS_REPLICAS": "1=h:9000"}
    assert RouterConfig.from_env(env).replicas[1].port == 9000
    with pytest.raises(ConfigError, match="NOTEBOOKOS_TARGET_POLICY must be affinity or rotate"):
        RouterConfig.from_env({**env, "NOTEBOOKOS_TARGET_POLICY": "random"})


def apply(state: KernelState, method: str, *args: Any) -> Any:
    # Call a replicated method's body directly, as PySyncObj does when it applies a log entry.
    return getattr(state, method)(*args, _doApply=True)


def test_state_machine_first_decision_wins_and_all_yield_fails() -> None:
    st = KernelState(3, lambda: None)
    assert apply(st, "decide", "e1", 2) == 2
    assert apply(st, "decide", "e1", 3) == 2, "a later proposal cannot change a decision"
    assert apply(st, "propose", "e2", 1, False) is None
    assert apply(st, "propose", "e2", 3, True) == 3
    assert apply(st, "propose", "e2", 2, True) == 3, "the first committed LEAD wins"
    for rid in (1, 2, 3):
        result = apply(st, "propose", "e3", rid, False)
    assert result == FAILED
    assert apply(st, "close", "e4") == FAILED


def test_state_machine_abort_beats_a_late_commit() -> None:
    st = KernelState(3, lambda: None)
    assert apply(st, "abort", "e1") == "aborted"
    assert apply(st, "commit", "e1", 2, 5, "x = 1", None, ["x"], []) == "aborted"
    assert st.exec_count == 0 and "x" not in st.vars


class Shell:
    """Enough of IPython's namespace for the tracker."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__builtins__": __builtins__}
        self.hidden: dict[str, Any] = {}


def cell(tracker: StateTracker, sh: Shell, st: KernelState, code: str, replica: int = 1) -> None:
    before = tracker.before_cell(sh.ns, sh.hidden)
    exec(code, sh.ns)
    n = st.exec_count + 1
    cs = tracker.capture(
        code=code,
        before=before,
        ns=sh.ns,
        hidden=sh.hidden,
        seq=st.blob_seq + 1,
        exec_id=f"e{n}",
        cell=n,
        replica=replica,
    )
    apply(st, "commit", f"e{n}", replica, n, code, cs.blob, cs.changed, cs.deleted)


def snap(st: KernelState) -> Snapshot:
    return st.snapshot()


def test_capture_and_apply_keep_sharing_and_offload_big_values(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    a, b, st = StateTracker(store, 1024, "k"), StateTracker(store, 1024, "k"), KernelState(3, lambda: None)
    sh_a, sh_b = Shell(), Shell()
    cell(a, sh_a, st, "import numpy as np\nbig = np.arange(10_000)\nnums = [1]\nalias = nums\nd = {'l': nums}")
    b.apply(snap(st), sh_b.ns)
    assert sh_b.ns["alias"] is sh_b.ns["nums"] is sh_b.ns["d"]["l"]
    assert int(sh_b.ns["big"].sum()) == 49995000
    assert list(tmp_path.rglob("v0")), "the big array went to the object store"
    # A later cell on the other replica mutates through one name only.
    cell(b, sh_b, st, "nums.append(2)\nview = big", replica=2)
    a.apply(snap(st), sh_a.ns)
    assert sh_a.ns["alias"] == [1, 2] and sh_a.ns["alias"] is sh_a.ns["nums"] is sh_a.ns["d"]["l"]
    assert sh_a.ns["view"] is sh_a.ns["big"]
    # A function defined in a cell reads the live namespace wherever it runs.
    cell(a, sh_a, st, "lr = 0.1\ndef scaled(v):\n    return v * lr")
    cell(a, sh_a, st, "lr = 0.5")
    b.apply(snap(st), sh_b.ns)
    assert sh_b.ns["scaled"](2) == 1.0


def test_unpicklable_value_becomes_a_placeholder(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    a, b, st = StateTracker(store, 1024, "k"), StateTracker(store, 1024, "k"), KernelState(3, lambda: None)
    sh_a, sh_b = Shell(), Shell()
    cell(a, sh_a, st, "g = (i for i in range(3))\nfine = 1", replica=3)
    b.apply(snap(st), sh_b.ns)
    assert sh_b.ns["fine"] == 1
    g = sh_b.ns["g"]
    assert type(g) is Unreplicated
    with pytest.raises(StateNotReplicatedError, match=r"variable 'g' .* made by cell \[1\] on replica 3"):
        next(g)
    with pytest.raises(StateNotReplicatedError):
        repr(g)
    assert type(pickle.loads(pickle.dumps(g))) is Unreplicated


def test_store_round_trip_keeps_array_bytes(tmp_path: Path) -> None:
    store = ObjectStore(f"file://{tmp_path}")
    arr = np.random.default_rng(1).normal(size=(300, 200))
    url, size = store.put("k/x", {"a": arr, "s": "meta"})
    assert size >= arr.nbytes
    back = ObjectStore.get(url)
    assert back["s"] == "meta" and np.array_equal(back["a"], arr) and back["a"].flags.writeable


def test_http_broker_client(tmp_path: Path) -> None:
    server = BrokerServer()
    try:
        server.broker.ledger.set_node("n1", ["GPU-a"])
        token = tmp_path / "token"
        token.write_text(TOKEN)
        client = HttpBroker(server.url, str(token))
        assert client.acquire("k", 1, "n1", 1, "e1") == Granted(("GPU-a",), "n1", "e1")
        refused = client.acquire("k", 2, "n1", 1, "e2")
        assert isinstance(refused, Refused) and "0 idle GPUs" in refused.reason
        client.release("e1")
        assert server.broker.ledger.grants() == []
        token.write_text("wrong")
        with pytest.raises(BrokerError, match="refused our credentials"):
            client.acquire("k", 1, "n1", 1, "e3")
    finally:
        server.close()
    with pytest.raises(BrokerError, match="unreachable"):
        HttpBroker(server.url, str(tmp_path / "token"), timeout=1).release("e1")

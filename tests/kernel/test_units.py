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
from notebookos.kernel.raftlog import FAILED, KernelState, Snapshot
from notebookos.kernel.statesync import StateNotReplicatedError, StateTracker, Unreplicated
from notebookos.kernel.store import ObjectStore
from tests.kernel.broker_server import TOKEN, BrokerServer

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
    assert apply(st, "propose", "e2", 1, False) is None
    assert apply(st, "propose", "e2", 3, True) == 3
    assert apply(st, "propose", "e2", 2, True) == 3, "the first committed LEAD wins"
    for rid in (1, 2, 3):
        result = apply(st, "propose", "e3", rid, False)
    assert result == FAILED
    assert apply(st, "close", "e4") == FAILED


def test_a_failed_election_keeps_every_replicas_reason_and_a_won_one_none() -> None:
    st = KernelState(3, lambda: None)
    for rid in (1, 2, 3):
        apply(st, "propose", "full", rid, False, f"node n{rid}: 0 idle GPUs, 1 needed")
    assert st.refusals["full"] == {r: f"node n{r}: 0 idle GPUs, 1 needed" for r in (1, 2, 3)}
    apply(st, "propose", "won", 1, False, "node n1: 0 idle GPUs, 1 needed")
    apply(st, "propose", "won", 2, True)
    assert "won" not in st.refusals, "a cell that ran keeps no refusals"


def test_state_machine_abort_beats_a_late_commit() -> None:
    st = KernelState(3, lambda: None)
    apply(st, "hello", 2, "boot-a")
    assert apply(st, "abort", "e1") == "aborted"
    assert apply(st, "commit", "e1", 2, "boot-a", 5, "x = 1", None, ["x"], []) == "aborted"
    assert "x" not in st.vars
    assert st.exec_count == 1, "the lost cell keeps its number, as an error does in ipykernel"


def test_state_machine_a_new_process_aborts_the_cells_of_its_predecessor() -> None:
    st = KernelState(3, lambda: None)
    apply(st, "hello", 1, "old")
    assert apply(st, "started", "e1", 1, "old") is None
    apply(st, "hello", 1, "new")
    assert st.done["e1"] == "aborted", "the process running e1 is gone"
    assert apply(st, "commit", "e1", 1, "old", 1, "x = 1", None, ["x"], []) == "aborted"
    # The new process's own cell is not affected; a late entry of the old one aborts its cell.
    assert apply(st, "started", "e2", 1, "new") is None
    assert apply(st, "started", "e3", 1, "old") == "aborted"
    assert apply(st, "commit", "e2", 1, "new", 2, "y = 1", None, [], []) == "ok"
    assert st.done["e2"] == "ok" and not st.running


class Shell:
    """Enough of IPython's namespace for the tracker."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {"__builtins__": __builtins__}
        self.hidden: dict[str, Any] = {}


def cell(tracker: StateTracker, sh: Shell, st: KernelState, code: str, replica: int = 1, save: bool = True) -> Any:
    """Run `code` as the executor does and commit it; its large values are saved (in the
    background, as after a real commit) and, unless `save` is False, waited for."""
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
    apply(st, "hello", replica, f"boot-{replica}")
    apply(st, "commit", f"e{n}", replica, f"boot-{replica}", n, code, cs.blob, cs.changed, cs.deleted)
    if save:
        tracker.committed(cs)
        tracker.flush()
    return cs


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


def test_an_aborted_cell_is_undone_in_place_changes_included(tmp_path: Path) -> None:
    """The executor ran a cell whose commit the others aborted: every trace of it goes, objects
    changed in place (list, dict, numpy array, an instance's attribute) included."""
    store = ObjectStore(f"file://{tmp_path}")
    tr, st, sh = StateTracker(store, 1024, "k"), KernelState(3, lambda: None), Shell()
    setup = (
        "import numpy as np\nclass C:\n    pass\nobj = C()\nobj.v = 1\nlog = [1]\nd = {'a': 1}\n"
        "arr = np.zeros(3)\nbig = np.zeros(1000)\nn = 1"
    )
    cell(tr, sh, st, setup)
    before = tr.before_cell(sh.ns, sh.hidden)
    code = "log.append(2)\nd['b'] = 2\narr[0] = 5\nbig[1] = 7\nobj.v = 2\nn += 1\nnew = 'x'"
    exec(code, sh.ns)
    cs = tr.capture(
        code=code, before=before, ns=sh.ns, hidden=sh.hidden, seq=st.blob_seq + 1, exec_id="e2", cell=2, replica=1
    )
    assert apply(st, "abort", "e2") == "aborted"
    assert apply(st, "commit", "e2", 1, "boot-1", 2, code, cs.blob, cs.changed, cs.deleted) == "aborted"
    tr.revert(st.snapshot(), sh.ns, sh.hidden)
    ns = sh.ns
    assert ns["log"] == [1] and ns["d"] == {"a": 1} and ns["n"] == 1 and ns["obj"].v == 1
    assert ns["arr"].tolist() == [0, 0, 0] and float(ns["big"].sum()) == 0.0
    assert "new" not in ns
    # The next cell commits from the committed state, not the aborted one.
    cell(tr, sh, st, "log.append(3)")
    other, sh2 = StateTracker(store, 1024, "k"), Shell()
    other.apply(st.snapshot(), sh2.ns)
    assert sh2.ns["log"] == [1, 3] and sh2.ns["d"] == {"a": 1}


def test_local_kernel_port_blocks_never_overlap(tmp_path: Path) -> None:
    """Each process of a LocalKernel gets its own ports (they used to be drawn separately)."""
    from notebookos.kernel.local import LocalKernel

    for i in range(400):
        k = LocalKernel(tmp_path / str(i))
        ports = [k.router_port + j for j in range(5)]
        for b in k.jupyter_ports.values():
            ports += [b + j for j in range(5)]
        ports += list(k.raft_ports.values())
        assert len(ports) == len(set(ports)) == 23, f"kernel {i} reuses a port: {sorted(ports)}"


def test_executor_lost_rule() -> None:
    from notebookos.policy.failover import StandbyView, executor_lost

    def lost(**kw: Any) -> str | None:
        base: dict[str, Any] = {
            "now": 100.0,
            "waiting_since": 90.0,
            "replaced_since": None,
            "disconnected_since": None,
            "ever_connected": True,
        }
        return executor_lost(StandbyView(**{**base, **kw}), lost_after=1.5, restart_grace=3.0)

    assert lost() is None, "reachable and not replaced: it runs the cell"
    assert lost(disconnected_since=99.0) is None, "unreachable for a moment only"
    assert lost(disconnected_since=98.0) == "disconnected"
    # A standby that never reached the executor (it is itself starting) gives it longer.
    assert lost(disconnected_since=98.0, ever_connected=False) is None
    assert lost(disconnected_since=92.0, ever_connected=False) == "disconnected"
    assert lost(disconnected_since=99.9, waiting_since=99.9, ever_connected=False) is None
    # A new process of the executor gets a grace to say it runs the cell.
    assert lost(replaced_since=98.0) is None
    assert lost(replaced_since=96.0) == "replaced"


def test_an_executor_that_says_hello_then_starts_the_cell_is_not_replaced() -> None:
    """The first cell of a kernel can reach a standby before the executor's hello is in its log:
    the hello then changes the executor's boot, and `started` follows. That is no replacement
    (it once aborted a running cell 3 s later, with every replica alive)."""
    from notebookos.policy.failover import replaced_since

    t = replaced_since(None, 10.0, boot_changed=True, started=False)
    assert t == 10.0, "a new boot that has not started the cell"
    assert replaced_since(t, 11.0, boot_changed=True, started=False) == 10.0, "keeps its first sighting"
    assert replaced_since(t, 11.1, boot_changed=True, started=True) is None, "started: not replaced"
    assert replaced_since(None, 12.0, boot_changed=False, started=False) is None

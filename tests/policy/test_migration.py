"""Property tests (hypothesis) of the executor order, the migration victim and the migration target."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from notebookos.policy.migration import Member, executor_order, movable, target, victim, why_no_target
from notebookos.policy.placement import NodeView, ReplicaRequest, check_node, pack_key, rank_key

KERNELS = ("a", "b", "c", "d")
ratio_st = st.floats(min_value=1.0, max_value=7.0, allow_nan=False)


@st.composite
def node_st(draw: st.DrawFn, name: str) -> NodeView:
    gpus = draw(st.integers(1, 8))
    return NodeView(
        name,
        gpus,
        subscribed=draw(st.integers(0, 40)),
        bound=draw(st.integers(0, gpus)),
        kernels=frozenset(draw(st.sets(st.sampled_from(KERNELS), max_size=3))),
        schedulable=draw(st.booleans()),
    )


@st.composite
def nodes_st(draw: st.DrawFn, min_size: int = 0, max_size: int = 6) -> list[NodeView]:
    n = draw(st.integers(min_size, max_size))
    return [draw(node_st(f"n{i}")) for i in range(n)]


request_st = st.builds(ReplicaRequest, st.sampled_from((*KERNELS, "e")), st.integers(1, 8))


@st.composite
def members_st(draw: st.DrawFn) -> tuple[list[Member], dict[str, NodeView]]:
    nodes = draw(nodes_st(min_size=1))
    members = [
        Member(
            i,
            draw(st.one_of(st.none(), st.sampled_from([n.name for n in nodes]))),
            live=draw(st.booleans()),
            executing=draw(st.booleans()),
        )
        for i in range(draw(st.integers(0, 4)))
    ]
    return members, {n.name: n for n in nodes}


# --- executor_order -----------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 6), unique=True), st.one_of(st.none(), st.integers(0, 6)), st.booleans())
def test_executor_order_is_a_permutation_with_the_last_executor_first(candidates, last, as_iterator) -> None:
    key = lambda i: (i * 7) % 5  # noqa: E731 - any order the caller ranks by
    got = executor_order(iter(candidates) if as_iterator else candidates, last, key=key)
    assert sorted(got) == sorted(candidates)
    rest = got
    if last in candidates:
        assert got[0] == last
        rest = got[1:]
    assert [key(i) for i in rest] == sorted(key(i) for i in rest)


def test_executor_order_defaults_to_replica_ids() -> None:
    assert executor_order([2, 0, 1], None) == [0, 1, 2]
    assert executor_order([2, 0, 1], 1) == [1, 0, 2]
    assert executor_order([2, 0], 1) == [0, 2]  # the last executor is not a candidate (its node is full)


# --- victim -------------------------------------------------------------------------------------------


@given(members_st())
def test_victim_is_a_movable_member_on_the_most_loaded_node(case) -> None:
    members, nodes = case
    v = victim(members, nodes)
    if not members or any(not m.live or m.node is None for m in members):
        assert v is None and movable(members) == []
        return
    allowed = [m for m in members if not m.executing]
    assert movable(members) == allowed
    if not allowed:
        assert v is None
        return
    chosen = next(m for m in members if m.replica == v)
    assert not chosen.executing

    def load(m: Member) -> tuple[int, int, int]:
        n = nodes[m.node or ""]
        return (n.bound, n.subscribed, -m.replica)

    assert all(load(m) <= load(chosen) for m in allowed)


def test_victim_prefers_the_busiest_node_and_never_the_executor() -> None:
    nodes = {"x": NodeView("x", 8, 10, 6), "y": NodeView("y", 8, 20, 2), "z": NodeView("z", 8, 4, 6)}
    members = [Member(0, "x"), Member(1, "y"), Member(2, "z")]
    assert victim(members, nodes) == 0  # x and z bind 6, x has more promised
    assert victim([Member(0, "x", executing=True), *members[1:]], nodes) == 2
    assert victim([Member(0, "x", live=False), *members[1:]], nodes) is None  # one member in motion at a time


# --- target -------------------------------------------------------------------------------------------


@given(nodes_st(), request_st, ratio_st, st.booleans(), st.one_of(st.none(), st.integers(1, 8)))
def test_target_is_the_best_ranked_node_that_fits(nodes, req, ratio, pack, idle) -> None:
    rank = (lambda n: pack_key(n)) if pack else (lambda n: rank_key(n))
    t = target(nodes, req, ratio, rank, idle=idle)
    need = req.gpus if idle is None else idle
    fits = [n for n in nodes if n.idle >= need and check_node(n, req, ratio) is None]
    if not fits:
        assert t is None
        if idle is None:  # why_no_target explains the request's own need: every node gives its reason
            reason = why_no_target(nodes, req, ratio)
            assert all(f"{n.name}: " in reason for n in nodes) if nodes else reason == "there are no GPU nodes"
        return
    assert t is not None and t in nodes
    assert req.kernel not in t.kernels  # never beside a sibling
    assert t.idle >= need  # the cell's GPUs are free there now
    assert t.schedulable
    assert rank(t) == min(rank(n) for n in fits)


def test_target_needs_the_cells_gpus_idle_and_no_sibling() -> None:
    nodes = [NodeView("full", 8, 0, 7), NodeView("sib", 8, 0, 0, frozenset({"a"})), NodeView("ok", 4, 0, 2)]
    assert target(nodes, ReplicaRequest("a", 2), 7.0) == nodes[2]
    assert target(nodes, ReplicaRequest("a", 3), 7.0) is None
    assert target(nodes, ReplicaRequest("a", 3), 7.0, idle=1) == nodes[2]
    assert "full: 1 of 8 GPUs idle" in why_no_target(nodes, ReplicaRequest("a", 3), 7.0)

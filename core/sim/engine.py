"""The discrete-event simulator: GPU hosts, kernels and cells, driven by a heap of timed events.

Placement goes through `notebookos.policy.placement` (filter_nodes, rank_key/pack_key,
SubscriptionRatio), device binding through `notebookos.policy.ledger.GpuLedger`, the executor, the
migration victim and target through `notebookos.policy.migration`, drain plans and scale-in
candidates through `notebookos.policy.drain`, and host counts through `notebookos.policy.autoscale`:
the code the extender, broker, router and operator run.

Mechanisms (config.Policy.kind):

* reservation: one container per session holding its peak GPUs from session start to end;
* batch: a fresh container per cell; container start and state restore precede the cell, the state
  save follows it, GPUs bound throughout;
* replicated (notebookos, ours): ``replicas`` containers per session, GPUs bound to one replica only
  while a cell runs; when no replica's host has the GPUs free, a replica migrates, and when no host
  can take it the cluster grows.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable

from notebookos.policy import autoscale, drain, migration
from notebookos.policy.ledger import GpuLedger, Grant
from notebookos.policy.placement import NodeView, ReplicaRequest, SubscriptionRatio, filter_nodes, pack_key, rank_key
from notebookos.sim.config import Costs, Policy
from notebookos.sim.metrics import Result, summarise
from notebookos.sim.state import Host, Kernel
from notebookos.sim.workload import Cell, Workload

# event kinds, in the order they apply when simultaneous: ends free GPUs before new work asks, a
# session starts before its cells and ends after them (a zero-length session still opens first)
HOST_READY, HOST_GONE, CELL_END, KERNEL_FREE, SESSION_START, CELL_SUBMIT, SESSION_END, RETRY, TICK = range(9)
REBALANCE_BACKOFF_S = 120.0
REBALANCE_BACKOFF_MAX_S = 1800.0
"""A kernel that no host could take is tried again after 120 s, then 240 s, ... up to 30 min."""


class Simulator:
    def __init__(
        self,
        workload: Workload,
        policy: Policy,
        costs: Costs | None = None,
        *,
        seed: int = 0,
        price_per_gpu_hour: float = 2.5,
        progress: bool = False,
    ) -> None:
        self.w = workload
        self.p = policy
        self.c = costs or Costs(download_bps=workload.download_bps, upload_bps=workload.upload_bps)
        self.G = policy.scaling.gpus_per_host
        for s in workload.sessions:
            if s.gpus > self.G:
                raise ValueError(f"session {s.name} needs {s.gpus} GPUs per cell, hosts have {self.G}")
        bound = policy.scaling.max_hosts
        if bound is not None and bound < max(1, policy.replicas):
            raise ValueError(f"a cluster of {bound} hosts cannot hold {policy.name}'s {policy.replicas} replicas")
        self.rng = random.Random(seed)
        self.price = price_per_gpu_hour
        self.progress = progress
        self.ledger = GpuLedger()
        self.sr = SubscriptionRatio(policy.max_ratio, policy.smoothing)
        self.hosts: dict[str, Host] = {}
        self.kernels: dict[int, Kernel] = {}
        self.waiting: dict[int, tuple[Cell, float, bool]] = {}  # session -> (cell, ready, needs a host)
        self.pending_sessions: dict[int, None] = {}  # reservation sessions waiting for a host
        self.sessions_queued = 0
        self._events: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._host_seq = 0
        self.now = 0.0
        # accounting
        self._last = 0.0
        self.gpu_s_provisioned = 0.0
        self.gpu_s_bound = 0.0
        self.gpu_s_used = 0.0
        self.billed_hosts = 0
        self.bound_total = 0
        self.demand = 0
        self.delays: list[float] = []
        self.ran: set[tuple[int, int]] = set()
        self.migrations = 0
        self.drain_migrations = 0
        self.rebalance_migrations = 0
        self._unroomy: set[int] = set()  # sessions to look at in the next rebalance
        self.hosts_added = 0
        self.hosts_released = 0
        self.max_host_bound = 0
        self.series: list[tuple[float, int, int]] = []
        self._loads: deque[tuple[float, int]] = deque()
        self._live = 0

    # --- events --------------------------------------------------------------------------------------

    def _push(self, t: float, kind: int, a: int = 0, b: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, a, b))

    def _advance(self, t: float) -> None:
        dt = t - self._last
        if dt > 0:
            self.gpu_s_provisioned += dt * self.billed_hosts * self.G
            self.gpu_s_bound += dt * self.bound_total
            self._last = t
        self.now = t

    def _record(self) -> None:
        point = (self.now, self.billed_hosts, self.bound_total)
        if self.series and self.series[-1][0] == self.now:
            self.series[-1] = point
        else:
            self.series.append(point)

    def run(self) -> Result:
        wall = time.perf_counter()
        sessions = self.w.sessions
        t0 = min((s.start for s in sessions), default=0.0)
        self._last = self.now = t0
        for s in sessions:
            self._push(s.start, SESSION_START, s.index)
            self._push(s.stop, SESSION_END, s.index)
            for c in s.cells:
                self._push(c.submit, CELL_SUBMIT, s.index, c.index)
        self._live = len(sessions)
        for _ in range(self._target(0)):
            self._add_host(t0, ready=True)
        self._push(t0, TICK)
        handlers: dict[int, Callable[[int, int], None]] = {
            HOST_READY: self._on_host_ready,
            HOST_GONE: self._on_host_gone,
            CELL_END: self._on_cell_end,
            KERNEL_FREE: self._on_kernel_free,
            SESSION_END: self._on_session_end,
            SESSION_START: self._on_session_start,
            CELL_SUBMIT: self._on_cell_submit,
            RETRY: lambda a, b: self._retry(),
            TICK: lambda a, b: self._on_tick(),
        }
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=math.ceil((self.w.end - t0) / 3600), unit="h", desc=self.p.name, leave=False)
        shown = 0
        n = 0
        while self._events:
            t, kind, _, a, b = heapq.heappop(self._events)
            self._advance(t)
            handlers[kind](a, b)
            n += 1
            if bar is not None and n % 2000 == 0:
                hours = int((t - t0) // 3600)
                bar.update(hours - shown)
                shown = hours
        if bar is not None:
            bar.close()
        self._check_done()
        return summarise(self, time.perf_counter() - wall, t0)

    # --- hosts ---------------------------------------------------------------------------------------

    def _add_host(self, t: float, ready: bool = False) -> Host:
        self._host_seq += 1
        name = f"h{self._host_seq:04d}"
        ready_at = t if ready else t + self.c.host_provision_s
        h = Host(name, t, ready_at, idle_since=ready_at)
        self.hosts[name] = h
        self.billed_hosts += 1
        self.hosts_added += 0 if ready else 1
        if ready:
            self._make_ready(h)
        else:
            self._push(ready_at, HOST_READY, self._host_seq)
        self._record()
        return h

    def _make_ready(self, h: Host) -> None:
        h.state = "ready"
        self.ledger.set_node(h.name, [f"{h.name}/gpu{i}" for i in range(self.G)])

    def _on_host_ready(self, seq: int, _: int) -> None:
        self._make_ready(self.hosts[f"h{seq:04d}"])
        self._retry()

    def _release_host(self, h: Host) -> None:
        h.state = "releasing"
        self.ledger.remove_node(h.name)
        self.hosts_released += 1
        self._push(self.now + self.c.host_release_s, HOST_GONE, int(h.name[1:]))

    def _on_host_gone(self, seq: int, _: int) -> None:
        del self.hosts[f"h{seq:04d}"]
        self.billed_hosts -= 1
        self._record()

    def _size(self) -> int:
        return sum(1 for h in self.hosts.values() if h.state != "releasing")

    def _room(self) -> bool:
        """Whether the cluster may grow by a host (always, unless it is bounded: a fixed cluster)."""
        return self.p.scaling.max_hosts is None or self._size() < self.p.scaling.max_hosts

    # --- GPUs ----------------------------------------------------------------------------------------

    def _bind(self, session: int, replica: int, host: Host, gpus: int, execution: str) -> None:
        got = self.ledger.acquire(f"k{session}", replica, host.name, gpus, execution)
        if not isinstance(got, Grant):
            raise AssertionError(f"ledger refused {execution} on {host.name}: {got.reason}")
        host.bound += gpus
        self.bound_total += gpus
        if self.p.rebalance:  # kernels sharing this host may have lost the room for their next cell
            self._unroomy.update(s for s, _ in host.replicas if s != session)
        self.max_host_bound = max(self.max_host_bound, host.bound)
        self._record()

    def _unbind(self, execution: str) -> None:
        g = self.ledger.release(execution)
        if g is None:
            raise AssertionError(f"release of {execution}, which holds nothing")
        h = self.hosts[g.node]
        h.bound -= len(g.devices)
        self.bound_total -= len(g.devices)
        if h.bound == 0:
            h.idle_since = self.now
        self._record()

    def _rank(self, how: str) -> Callable[[NodeView], tuple[int, float, str]]:
        key = pack_key if how == "pack" else rank_key
        return lambda n: key(n, self.p.replicas)

    def _choose(self, hosts: Iterable[Host], request: ReplicaRequest, ratio: float, how: str) -> Host | None:
        feasible, _ = filter_nodes((h.view(self.G) for h in hosts), request, ratio)
        best = min(feasible, key=self._rank(how), default=None)
        return None if best is None else self.hosts[best.name]

    # --- sessions ------------------------------------------------------------------------------------

    def _on_session_start(self, s: int, _: int) -> None:
        sess = self.w.sessions[s]
        r = self.p.replicas
        k = Kernel(s, sess.gpus, [None] * r, [math.inf] * r)
        k.last_end = self.now  # a new kernel counts as active: its first cell is coming
        self.kernels[s] = k
        self.demand += sess.gpus
        if self.p.kind == "reservation":
            self._place_reservation(k)
        elif self.p.kind == "replicated":
            self._place_replicas(k)

    def _place_reservation(self, k: Kernel) -> bool:
        ready = [h for h in self.hosts.values() if h.state == "ready"]
        h = self._choose(ready, ReplicaRequest(f"k{k.session}", k.gpus, 1), 1.0, self.p.placement)
        if h is None:
            if k.session not in self.pending_sessions and not self._room():
                self.sessions_queued += 1  # the cluster is at its bound: the session queues
            self.pending_sessions[k.session] = None
            self._reactive_scale_out()
            return False
        self.pending_sessions.pop(k.session, None)
        h.add(k.session, 0, k.gpus)
        k.hosts[0] = h.name
        k.up[0] = self.now + self.c.container_start_s
        k.grant = f"k{k.session}/life"
        self._bind(k.session, 0, h, k.gpus, k.grant)
        if k.session in self.waiting:
            self._retry_at(k, k.up[0])
        return True

    def _place_replicas(self, k: Kernel) -> None:
        req = ReplicaRequest(f"k{k.session}", k.gpus, self.p.replicas)
        ratio = self.sr.value
        for i in range(self.p.replicas):
            ready = [h for h in self.hosts.values() if h.state == "ready"]
            h = self._choose(ready, req, ratio, self.p.placement)
            if h is None:  # a host on its way, else a new one (reactive scale-out)
                coming = [h for h in self.hosts.values() if h.state == "provisioning"]
                h = self._choose(coming, req, ratio, self.p.placement)
            if h is None and self._room():
                h = self._add_host(self.now)
            if h is None:  # a fixed cluster at its bound: oversubscribe past the ratio's cap
                live = [h for h in self.hosts.values() if h.state != "releasing"]
                h = self._choose(live, req, math.inf, self.p.placement)
            if h is None:
                raise AssertionError(f"no host for replica {i} of kernel {k.session} in {self._size()} hosts")
            h.add(k.session, i, k.gpus)
            k.hosts[i] = h.name
            k.up[i] = max(self.now, h.ready_at) + self.c.container_start_s

    def _on_session_end(self, s: int, _: int) -> None:
        k = self.kernels[s]
        k.ended = True
        self._maybe_teardown(k)

    def _maybe_teardown(self, k: Kernel) -> None:
        if not k.ended or k.busy or k.queue:
            return
        self.pending_sessions.pop(k.session, None)
        if k.grant is not None:
            self._unbind(k.grant)
            k.grant = None
        for i, name in enumerate(k.hosts):
            if name is not None:
                h = self.hosts[name]
                h.remove(k.session, i, k.gpus)
                if h.bound == 0 and not h.replicas:
                    h.idle_since = self.now
        del self.kernels[k.session]
        self.demand -= k.gpus
        self._live -= 1
        if self.pending_sessions or self.waiting:
            self._retry()

    # --- cells ---------------------------------------------------------------------------------------

    def _on_cell_submit(self, s: int, c: int) -> None:
        k = self.kernels[s]
        k.queue.append(self.w.sessions[s].cells[c])
        if not k.busy:
            self._next_cell(k)

    def _next_cell(self, k: Kernel) -> None:
        cell = k.queue.popleft()
        k.busy = True
        if not self._try_run(k, cell, self.now):
            self.waiting.setdefault(k.session, (cell, self.now, False))

    def _start(self, k: Kernel, cell: Cell, ready: float, start: float, end: float) -> None:
        key = (cell.session, cell.index)
        if key in self.ran:
            raise AssertionError(f"cell {key} ran twice")
        self.ran.add(key)
        self.delays.append(start - ready)
        self.gpu_s_used += cell.gpus * cell.duration
        self.waiting.pop(k.session, None)
        self._push(end, CELL_END, k.session, cell.index)

    def _try_run(self, k: Kernel, cell: Cell, ready: float) -> bool:
        if self.p.kind == "reservation":
            if k.grant is None or k.up[0] > self.now:
                if k.grant is not None:
                    self._retry_at(k, k.up[0])
                return False
            self._start(k, cell, ready, self.now, self.now + cell.duration)
            return True
        if self.p.kind == "batch":
            return self._try_batch(k, cell, ready)
        return self._try_replicated(k, cell, ready)

    def _try_batch(self, k: Kernel, cell: Cell, ready: float) -> bool:
        hosts = [h for h in self.hosts.values() if h.state == "ready"]
        h = self._choose(hosts, ReplicaRequest(f"k{k.session}", cell.gpus, 1), 1.0, self.p.placement)
        if h is None:
            self.waiting[k.session] = (cell, ready, True)
            self._reactive_scale_out()
            return False
        k.hosts[0] = h.name
        h.subscribed += cell.gpus  # batch subscribes exactly what it binds
        k.grant = f"k{k.session}/c{cell.index}"
        self._bind(k.session, 0, h, cell.gpus, k.grant)
        start = self.now + self.c.container_start_s + self.c.restore_s
        self._start(k, cell, ready, start, start + cell.duration + self.c.save_s)
        return True

    def _try_replicated(self, k: Kernel, cell: Cell, ready: float) -> bool:
        now = self.now
        up = [i for i in range(self.p.replicas) if k.up[i] <= now]
        fits = [i for i in up if self.hosts[k.hosts[i]].bound + cell.gpus <= self.G]  # type: ignore[index]
        execution = f"k{k.session}/c{cell.index}"
        rank = self._rank("pack" if self.p.executor == "packed" else "spread")
        if fits:
            i = migration.executor_order(fits, k.last_exec, key=lambda j: rank(self.hosts[k.hosts[j]].view(self.G)))[0]  # type: ignore[index]
            self._bind(k.session, i, self.hosts[k.hosts[i]], cell.gpus, execution)  # type: ignore[index]
            k.last_exec = i
            k.grant = execution
            k.running = True
            start = now + self.c.election_s
            self._start(k, cell, ready, start, start + cell.duration)
            return True
        later = [k.up[i] for i in range(self.p.replicas) if k.up[i] > now]
        if later:  # a replica is starting (new kernel, or migrating): it will have the GPUs
            self.waiting[k.session] = (cell, ready, False)
            self._retry_at(k, min(later))
            return False
        # migration: move one replica to a host with the GPUs free now
        victim = self._victim(k)
        ready_views = (h.view(self.G) for h in self.hosts.values() if h.state == "ready")
        req = ReplicaRequest(f"k{k.session}", k.gpus, self.p.replicas)
        t = migration.target(ready_views, req, self.sr.value, rank, idle=cell.gpus)
        if t is None:
            self.waiting[k.session] = (cell, ready, True)
            self._reactive_scale_out()
            return False
        to = self.hosts[t.name]
        self._move(k, victim, to)
        self.migrations += 1
        self._bind(k.session, victim, to, cell.gpus, execution)
        k.last_exec = victim
        k.grant = execution
        k.running = True
        start = now + self.c.migration_s + self.c.election_s
        self._start(k, cell, ready, start, start + cell.duration)
        return True

    def _retry_at(self, k: Kernel, t: float) -> None:
        if k.retry_at != t:  # one wake-up per kernel and time, however often it is retried before
            k.retry_at = t
            self._push(t, RETRY)

    def _victim(self, k: Kernel) -> int:
        """The replica to move; asked only once every replica is up and none runs a cell."""
        members = k.members(self.now)
        if self.p.victim == "random":  # experiment knob (the prototype's rule), among those the live rule allows
            allowed = migration.movable(members)
            v = self.rng.choice(allowed).replica if allowed else None
        else:  # loaded: migration.victim, what the operator runs
            v = migration.victim(members, {n: self.hosts[n].view(self.G) for n in k.hosts if n is not None})
        if v is None:
            raise AssertionError(f"no replica of kernel {k.session} may move: {members}")
        return v

    def _move(self, k: Kernel, i: int, to: Host) -> None:
        old = self.hosts[k.hosts[i]]  # type: ignore[index]
        old.remove(k.session, i, k.gpus)
        to.add(k.session, i, k.gpus)
        k.hosts[i] = to.name
        k.up[i] = self.now + self.c.migration_s

    def _on_cell_end(self, s: int, c: int) -> None:
        k = self.kernels[s]
        if self.p.kind == "reservation":
            self._on_kernel_free(s, 0)
            return
        if k.grant is not None:
            self._unbind(k.grant)
            k.grant = None
        if self.p.kind == "batch":
            h = self.hosts[k.hosts[0]]  # type: ignore[index]
            h.subscribed -= self.w.sessions[s].cells[c].gpus
            k.hosts[0] = None
            self._on_kernel_free(s, 0)
        else:
            self._push(self.now + self.c.state_sync_s, KERNEL_FREE, s)
        self._retry()

    def _on_kernel_free(self, s: int, _: int) -> None:
        k = self.kernels[s]
        k.busy = k.running = False
        k.last_end = self.now
        if self.p.rebalance:
            k.rebalance_backoff, k.rebalance_after = 0.0, -math.inf  # it just ran: worth trying at once
            self._unroomy.add(s)
        if k.queue:
            self._next_cell(k)
        else:
            self._maybe_teardown(k)

    def _most_free(self) -> int:
        """The most GPUs any ready host could still give one request: no waiting work that needs
        more can start now (reservation and batch subscribe what they bind; replicas do not)."""
        used = (lambda h: h.bound) if self.p.kind == "replicated" else (lambda h: max(h.bound, h.subscribed))
        return max((self.G - used(h) for h in self.hosts.values() if h.state == "ready"), default=0)

    def _retry(self) -> None:
        # Work that cannot fit anywhere is skipped (one scale-out request covers it), which keeps a
        # full fixed cluster with hundreds of queued sessions linear instead of quadratic.
        free = self._most_free()
        skipped = False
        for s in list(self.pending_sessions):
            if s in self.kernels:
                if self.kernels[s].gpus > free:
                    skipped = True
                elif self._place_reservation(self.kernels[s]):
                    free = self._most_free()
        for s, (cell, ready, _) in list(self.waiting.items()):
            if s not in self.waiting:
                continue
            if cell.gpus > free and self.p.kind != "reservation":  # reservation's cells use its own GPUs
                skipped = True
            elif self._try_run(self.kernels[s], cell, ready):
                self.waiting.pop(s, None)
                free = self._most_free()
        if skipped:
            self._reactive_scale_out()

    # --- autoscaling -----------------------------------------------------------------------------------

    def _reactive_scale_out(self) -> None:
        """Request the hosts that waiting work needs beyond those already on their way."""
        need = [ReplicaRequest(f"k{s}", cell.gpus) for s, (cell, _, host) in self.waiting.items() if host]
        need += [ReplicaRequest(f"k{s}", self.kernels[s].gpus) for s in self.pending_sessions]
        hosts = autoscale.scale_out_demand(need, self.G).nodes
        coming = sum(1 for h in self.hosts.values() if h.state == "provisioning")
        room = None if self.p.scaling.max_hosts is None else self.p.scaling.max_hosts - self._size()
        add = hosts - coming if room is None else min(hosts - coming, room)
        for _ in range(max(0, add)):
            self._add_host(self.now)

    def _target(self, load: float) -> int:
        if self.p.headroom_gpus is not None:
            peak = max((v for _, v in self._loads), default=load)
            return autoscale.headroom_target(max(peak, load), self.p.headroom_gpus, self.p.scaling)
        return autoscale.scale_out_target(load, self.p.scaling)

    def _on_tick(self) -> None:
        load = self.bound_total
        if self.p.kind == "replicated":
            self.sr.update(self.demand, load)
        self._loads.append((self.now, load))
        while self._loads and self._loads[0][0] < self.now - self.p.peak_window_s:
            self._loads.popleft()
        size = self._size()
        if self.p.predictive:
            for _ in range(max(0, self._target(load) - size)):
                self._add_host(self.now)
                size += 1
        if self.p.kind != "replicated" or self.sr.window_full:
            if self.p.headroom_gpus is not None:
                n = max(0, min(size - self._target(load), self.p.scaling.max_release))
            else:
                n = autoscale.hosts_to_release(size, load, self.p.scaling)
            if n:
                self._scale_in(n)
        if self.p.rebalance:
            self._rebalance()
        if self._live > 0:
            self._push(self.now + self.p.interval_s, TICK)

    def _rebalance(self) -> None:
        """Anticipatory migration: an idle kernel whose replicas all sit on hosts without its GPUs
        free moves one replica (the victim rule's) to a host that has them, while nobody waits."""
        if not self._unroomy:
            return
        free = [h for h in self.hosts.values() if h.state == "ready" and h.bound < self.G]
        room = max((self.G - h.bound for h in free), default=0)
        todo, self._unroomy = sorted(self._unroomy), set()
        rank = self._rank("pack" if self.p.executor == "packed" else "spread")
        for s in todo:
            found = self.kernels.get(s)
            if found is None:
                continue
            k = found
            if k.busy or k.ended:
                continue
            if any(u > self.now for u in k.up):
                self._unroomy.add(s)  # look again once its replicas are up
                continue
            if self._roomy(k):
                continue
            if self.now < k.rebalance_after:  # backing off after a failed attempt
                self._unroomy.add(s)
                continue
            t = None
            if k.gpus <= room:  # else no host can have its GPUs idle: skip the search
                req = ReplicaRequest(f"k{k.session}", k.gpus, self.p.replicas)
                t = migration.target((h.view(self.G) for h in free), req, self.sr.value, rank)
            if t is None:  # no host with room, or the subscription cap refuses them: back off, doubling
                k.rebalance_backoff = min(max(2 * k.rebalance_backoff, REBALANCE_BACKOFF_S), REBALANCE_BACKOFF_MAX_S)
                k.rebalance_after = self.now + k.rebalance_backoff
                self._unroomy.add(s)
                continue
            k.rebalance_backoff = 0.0
            self._move(k, self._victim(k), self.hosts[t.name])
            self.rebalance_migrations += 1

    def _scale_in(self, n: int) -> None:
        cap = self.p.scale_in_max_containers
        grace = self.p.idle_release_s
        if grace is None:
            grace = self.c.host_provision_s + self.c.host_release_s
        # a host with GPUs bound is never a candidate: leaving it out spares a view per host and tick
        ready = [h for h in self.hosts.values() if h.state == "ready" and h.bound == 0]
        idle_s = {h.name: self.now - h.idle_since for h in ready}
        for name in drain.scale_in_candidates((h.view(self.G) for h in ready), idle_s, grace, cap):
            if n == 0:
                break
            h = self.hosts[name]
            if h.replicas and (self.p.kind != "replicated" or not self._drain(h)):
                continue
            self._release_host(h)
            n -= 1

    def _active(self, k: Kernel) -> bool:
        return self.now - k.last_end <= self.p.active_window_s

    def _roomy(self, k: Kernel, without: Host | None = None) -> bool:
        """Whether one of the kernel's replicas sits on a host (other than ``without``) with its
        GPUs free, so that its next cell can start at once."""
        return any(
            self.hosts[n].bound + k.gpus <= self.G and self.hosts[n] is not without for n in k.hosts if n is not None
        )

    def _drain(self, h: Host) -> bool:
        """Move every replica off ``h`` to the hosts there are (drain.drain_plan), or none of them."""
        if self.p.rebalance and any(
            self._active(self.kernels[s]) and not self._roomy(self.kernels[s], h) for s, _ in h.replicas
        ):
            return False  # ours: the host is a kernel's only room; draining it would undo a rebalance
        sessions = {f"k{s}": s for s, _ in h.replicas}
        residents = [
            drain.Resident(
                ReplicaRequest(name, self.kernels[s].gpus, self.p.replicas), tuple(self.kernels[s].members(self.now))
            )
            for name, s in sorted(sessions.items(), key=lambda kv: kv[1])
        ]
        # a generator: drain_plan reads the other hosts only when it plans (most calls are "not now")
        others = (o.view(self.G) for o in self.hosts.values() if o.state == "ready" and o is not h)
        plan = drain.drain_plan(h.view(self.G), residents, others, self.sr.value, self._rank(self.p.placement))
        if plan is None:
            return False
        for name, i, target in plan:
            s = sessions[name]
            self._move(self.kernels[s], i, self.hosts[target])
            self.drain_migrations += 1
            if self.p.rebalance:
                self._unroomy.add(s)
        return True

    def _check_done(self) -> None:
        if self.kernels or self.waiting:
            raise AssertionError(
                f"simulation ended with {len(self.kernels)} kernels, {len(self.waiting)} waiting cells"
            )

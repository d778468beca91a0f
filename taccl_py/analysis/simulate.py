"""α-β timing simulator: how long a plan takes on a topology, step by step as MSCCL runs it.

Model (store-and-forward at step granularity):

* Every thread block runs its steps in order; a step starts once the previous step of its
  tb and its dependency (``depid``/``deps``, same gpu) have completed.
* A send-type step moves ``cnt × size / nchunksperloop`` bytes to the tb's send peer over
  ``topology.connection(gpu, peer)``. The transfer occupies every resource of the
  connection (link, switch ports or NICs) for ``bytes / bandwidth`` seconds, bandwidth
  being the slowest resource's, and starts when it is ready and all of them are free.
  **α is pure latency**: it delays arrival (``start + bytes / bandwidth + α``) but does not
  occupy the resources, so back-to-back transfers on one link each pay α yet use the
  bandwidth without gaps.
* Transfers claim resources in order of ready time, ties broken by (gpu, tb, step).
* Connections (sender, receiver, channel) are FIFO: the n-th send matches the n-th
  receive-type step on them. A receive completes at max(its start, the arrival). For
  ``rcs``/``rrs``/``rrcs`` the outgoing send becomes ready when the receive completes and
  the step completes when that send has arrived; a plain ``s`` also completes on arrival
  (the sender writes into the receiver's buffer).
* Local steps (``cpy``, ``re``, ``nop``) take no time, and nor does the reduction of a
  receive-reduce step.

Protocols (the plan's ``proto``; constants and their NCCL source in :mod:`.protocols`), one
rule for every plan, NCCL's baselines and synthesized ones alike:

* **bandwidth**: a transfer occupies its resources for ``bytes / (bandwidth × e)``, ``e``
  the data fraction of the protocol's line: Simple 1, LL 4/8 (8-byte lines, 4 bytes of
  flag), LL128 120/128 (128-byte lines, 8 bytes of flag);
* **per-hop latency**: the topology's α is a Simple hop's; under LL or LL128 it is scaled
  by tuning.cc's ring ``hwLatencies`` ratio for the connection's link class (NVLink for
  NVLink/xGMI links and switches, PCI for other links, NET for NICs), e.g. LL on NVLink
  0.6 / 3.4 µs, so α × 0.18; charged once per transfer, as α is;
* **per-call latency**: tuning.cc's ring ``baseLatencies`` of the protocol (LL 6.6, LL128
  14, Simple 8.4 µs) is :attr:`SimResult.base_latency`, paid once per call and included
  in :attr:`SimResult.call_time` but not in :attr:`SimResult.time`.

Bandwidths follow nccl-tests: ``algbw = size / time`` with its sizes (AllGather and
Gather: the output, the root's for Gather; ReduceScatter and Scatter: the input, the
root's for Scatter; the others: the per-rank buffer), ``busbw = algbw ×``
:func:`bus_factor`. A rooted plan's ranks without output (a Gather's non-roots) finish
when their last step does, and the call when its last rank does.

So a Simple plan's ``time`` is exactly the α-β makespan the synthesizers schedule; compare
plans of different protocols by ``call_time``. Not modelled: LL's per-GPU bandwidth caps
(``llMaxBws``), which tuning.cc applies to whole algorithms (see :mod:`.nccl_model`).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import NamedTuple

from ..collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    SCATTER,
    canonical_kind,
)
from ..errors import TacclError
from ..plan.model import RECV_TYPES, SEND_TYPES, Plan
from ..topology.model import Topology
from ..util.nogc import gc_paused
from .protocols import LINE_EFFICIENCY, base_latency, connection_hw, hop_latency

_START, _SEND = 0, 1

#: nccl-tests' bus bandwidth factor of each collective, as a function of the rank count
_BUS_FACTORS = {
    ALLREDUCE: lambda n: 2 * (n - 1) / n,
    ALLGATHER: lambda n: (n - 1) / n,
    REDUCESCATTER: lambda n: (n - 1) / n,
    ALLTOALL: lambda n: (n - 1) / n,
    GATHER: lambda n: (n - 1) / n,
    SCATTER: lambda n: (n - 1) / n,
    BROADCAST: lambda n: 1.0,
    REDUCE: lambda n: 1.0,
}


def bus_factor(kind: str, num_ranks: int) -> float:
    """nccl-tests' ``busbw / algbw`` of ``kind`` on ``num_ranks`` ranks (``*GetBw``):
    2(N−1)/N for AllReduce, 1 for Broadcast and Reduce, (N−1)/N for the others.

    >>> bus_factor("allreduce", 8), bus_factor("broadcast", 8), bus_factor("gather", 8)
    (1.75, 1.0, 0.875)
    """
    return float(_BUS_FACTORS[canonical_kind(kind)](max(1, num_ranks)))


class TraceEvent(NamedTuple):
    """One executed step; ``resources`` are those of its outgoing transfer (if any)."""

    rank: int
    tb: int
    step: int
    type: str
    peer: int  # send peer for send-type steps, recv peer for receives, -1 for local steps
    bytes: float
    start: float
    end: float
    resources: tuple[str, ...] = ()


@dataclass
class SimResult:
    """Outcome of :func:`simulate`; times in seconds.

    ``time`` is the last rank's finish; ``base_latency`` the protocol's per-call latency
    (``proto``'s, from tuning.cc), which ``call_time`` adds; ``bus_factor`` the plan's
    collective's (:func:`bus_factor`).
    """

    size: int
    time: float
    rank_finish: list[float]
    resource_busy: dict[str, float]
    intervals: dict[str, list[tuple[float, float]]]
    trace: list[TraceEvent] = field(default_factory=list)
    proto: str = "Simple"
    base_latency: float = 0.0
    bus_factor: float = 1.0

    @property
    def call_time(self) -> float:
        """Time of the whole call: ``time`` plus the protocol's base latency."""
        return self.time + self.base_latency

    @property
    def algbw(self) -> float:
        """nccl-tests algorithm bandwidth, bytes/s."""
        return self.size / self.time if self.time > 0 else float("inf")

    @property
    def busbw(self) -> float:
        """nccl-tests bus bandwidth, bytes/s: ``algbw`` times the collective's factor."""
        return self.algbw * self.bus_factor


@dataclass
class _Tb:
    gpu: int
    id: int
    steps: list
    send_key: tuple | None = None  # (sender, receiver, chan)
    recv_key: tuple | None = None
    resources: tuple[str, ...] = ()
    rids: tuple[int, ...] = ()  # resource ids, indices into the simulator's arrays
    bandwidth: float = 0.0
    alpha: float = 0.0


def _prepare(
    plan: Plan, topology: Topology
) -> tuple[list[_Tb], dict[tuple[int, int], int], list[str]]:
    if plan.ngpus != topology.num_ranks:
        raise TacclError(
            f"plan is for {plan.ngpus} ranks but {topology.label} has {topology.num_ranks}"
        )
    if plan.nchunksperloop < 1:
        raise TacclError(f"plan has nchunksperloop={plan.nchunksperloop}, needs >= 1")
    efficiency = LINE_EFFICIENCY.get(plan.proto)
    if efficiency is None:
        raise TacclError(f"plan has proto {plan.proto!r}, not one of {', '.join(LINE_EFFICIENCY)}")
    link_kinds = {(link.src, link.dst): link.kind for link in topology.links}
    bad = sorted(g.id for g in plan.gpus if not 0 <= g.id < plan.ngpus)
    if bad:
        raise TacclError(f"plan has gpu ids {bad} outside 0..{plan.ngpus - 1}")
    tbs: list[_Tb] = []
    index: dict[tuple[int, int], int] = {}
    rid: dict[str, int] = {}
    for gpu in sorted(plan.gpus, key=lambda g: g.id):
        for tb in sorted(gpu.tbs, key=lambda t: t.id):
            t = _Tb(gpu.id, tb.id, sorted(tb.steps, key=lambda s: s.s))
            types = {s.type for s in t.steps}
            if types & SEND_TYPES:
                if tb.send < 0:
                    raise TacclError(f"rank {gpu.id} tb {tb.id} has send steps but no send peer")
                conn = topology.connections.get((gpu.id, tb.send))
                if conn is None:
                    raise TacclError(
                        f"plan sends {gpu.id} -> {tb.send} but {topology.label} "
                        f"has no direct connection"
                    )
                t.send_key = (gpu.id, tb.send, tb.chan)
                t.resources = conn.resources
                t.rids = tuple(rid.setdefault(r, len(rid)) for r in conn.resources)
                t.bandwidth = topology.bandwidth(conn) * efficiency
                t.alpha = hop_latency(
                    conn.alpha, connection_hw(conn, link_kinds.get((gpu.id, tb.send))), plan.proto
                )
            if types & RECV_TYPES:
                if tb.recv < 0:
                    raise TacclError(f"rank {gpu.id} tb {tb.id} has receive steps but no recv peer")
                t.recv_key = (tb.recv, gpu.id, tb.chan)
            index[(gpu.id, tb.id)] = len(tbs)
            tbs.append(t)
    for t in tbs:
        for i, st in enumerate(t.steps):
            if st.depid >= 0:
                d = index.get((t.gpu, st.depid))
                if d is None or not 0 <= st.deps < len(tbs[d].steps):
                    raise TacclError(
                        f"rank {t.gpu} tb {t.id} step {i} depends on tb "
                        f"{st.depid} step {st.deps}, which does not exist"
                    )
    return tbs, index, list(rid)


@gc_paused()
def simulate(plan: Plan, topology: Topology, size: int, *, trace: bool = False) -> SimResult:
    """Simulate ``plan`` on ``topology`` for an nccl-tests ``size`` in bytes, under the
    plan's protocol (see module doc).

    >>> from taccl_py.build.pipeline import build_plan
    >>> from taccl_py.collectives import Collective
    >>> from taccl_py.topology.loader import load_topology
    >>> from taccl_py.lowering.lower import LowerOptions
    >>> topo = load_topology("dgx1")
    >>> ll = LowerOptions(proto="LL")
    >>> plan = build_plan(topo, Collective("allgather", 8), "ring", lower=ll).plan
    >>> res = simulate(plan, topo, 1 << 10)
    >>> res.call_time > res.time
    True
    """
    tbs, index, names = _prepare(plan, topology)
    chunk = size / plan.nchunksperloop
    done: list[list[float | None]] = [[None] * len(t.steps) for t in tbs]
    started: list[list[float]] = [[0.0] * len(t.steps) for t in tbs]
    pos = [0] * len(tbs)  # index of each tb's current (not yet completed) step
    prev_end = [0.0] * len(tbs)
    dep_waiters: dict[tuple[int, int], list[int]] = {}
    arrivals: dict[tuple, list[float]] = {}
    recv_count: dict[tuple, int] = {}
    recv_waiters: dict[tuple[tuple, int], tuple[int, int]] = {}  # (conn, n) -> (tb, step)
    recv_wait_of: dict[int, tuple[tuple, int]] = {}
    free = [0.0] * len(names)
    busy = [0.0] * len(names)
    intervals: list[list[tuple[float, float]]] = [[] for _ in names]
    events: list[TraceEvent] = []
    heap: list[tuple] = []

    def try_start(k: int) -> None:
        t, i = tbs[k], pos[k]
        if i == len(t.steps):
            return
        st = t.steps[i]
        ready = prev_end[k]
        if st.depid >= 0:
            d = index[(t.gpu, st.depid)]
            dep_done = done[d][st.deps]
            if dep_done is None:
                dep_waiters.setdefault((d, st.deps), []).append(k)
                return
            ready = max(ready, dep_done)
        heapq.heappush(heap, (ready, t.gpu, t.id, i, _START, k))

    def complete(k: int, i: int, end: float) -> None:
        done[k][i] = end
        pos[k] = i + 1
        prev_end[k] = end
        if trace:
            t, st = tbs[k], tbs[k].steps[i]
            sends = st.type in SEND_TYPES
            key = t.send_key if sends else t.recv_key if st.type in RECV_TYPES else None
            peer = -1 if key is None else key[1] if sends else key[0]
            events.append(
                TraceEvent(
                    t.gpu,
                    t.id,
                    i,
                    st.type,
                    peer,
                    0.0 if st.type == "nop" else st.cnt * chunk,
                    started[k][i],
                    end,
                    t.resources if sends else (),
                )
            )
        try_start(k)
        for w in dep_waiters.pop((k, i), ()):
            try_start(w)

    def received(k: int, i: int, at: float) -> None:
        t = tbs[k]
        if t.steps[i].type in SEND_TYPES:
            heapq.heappush(heap, (at, t.gpu, t.id, i, _SEND, k))
        else:
            complete(k, i, at)

    def transfer(k: int, i: int, ready: float) -> None:
        t = tbs[k]
        dur = t.steps[i].cnt * chunk / t.bandwidth
        start = ready
        for r in t.rids:
            if free[r] > start:
                start = free[r]
        end = start + dur
        for r in t.rids:
            free[r] = end
            busy[r] += dur
            intervals[r].append((start, end))
        arrival = end + t.alpha
        key = t.send_key
        assert key is not None, "a send step's threadblock has its connection (_prepare)"
        queue = arrivals.setdefault(key, [])
        queue.append(arrival)
        waiting = recv_waiters.pop((key, len(queue) - 1), None)
        if waiting is not None:
            wk, wi = waiting
            del recv_wait_of[wk]
            received(wk, wi, max(started[wk][wi], arrival))
        complete(k, i, arrival)

    for k in range(len(tbs)):
        try_start(k)
    while heap:
        now, _, _, i, kind, k = heapq.heappop(heap)
        if kind == _SEND:
            transfer(k, i, now)
            continue
        started[k][i] = now
        t = tbs[k]
        typ = t.steps[i].type
        if typ in RECV_TYPES:
            key = t.recv_key
            n = recv_count.get(key, 0)
            recv_count[key] = n + 1
            queue = arrivals.get(key, ())
            if n < len(queue):
                received(k, i, max(now, queue[n]))
            else:
                recv_waiters[(key, n)] = (k, i)
                recv_wait_of[k] = (key, n)
        elif typ in SEND_TYPES:
            transfer(k, i, now)
        else:
            complete(k, i, now)

    stuck = [k for k, t in enumerate(tbs) if pos[k] < len(t.steps)]
    if stuck:
        raise TacclError(_deadlock(tbs, stuck, pos, recv_wait_of))
    finish = [0.0] * plan.ngpus
    for k, t in enumerate(tbs):
        if t.steps:
            finish[t.gpu] = max(finish[t.gpu], prev_end[k])
    if trace:
        events.sort(key=lambda e: (e.start, e.rank, e.tb, e.step))
    return SimResult(
        size,
        max(finish, default=0.0),
        finish,
        dict(zip(names, busy)),
        dict(zip(names, intervals)),
        events,
        plan.proto,
        base_latency(plan.proto),
        bus_factor(plan.coll, plan.ngpus),
    )


def _deadlock(
    tbs: list[_Tb], stuck: list[int], pos: list[int], recv_wait_of: dict[int, tuple[tuple, int]]
) -> str:
    k = stuck[0]
    t = tbs[k]
    st = t.steps[pos[k]]
    if k in recv_wait_of:
        (src, _, chan), n = recv_wait_of[k]
        why = f"receive #{n} from rank {src} on channel {chan}, which is never sent"
    else:
        why = f"its dependency tb {st.depid} step {st.deps}, which never completes"
    left = sum(len(tbs[j].steps) - pos[j] for j in stuck)
    return (
        f"deadlock: rank {t.gpu} tb {t.id} step {pos[k]} ({st.type}) waits for {why} "
        f"({left} steps never complete)"
    )

"""Combining collectives from a synthesized AllGather (TACCL's reversal and concatenation).

* ReduceScatter = the AllGather reversed: every send u->v of chunk c at [start, end]
  becomes a reducing send v->u at [T - end, T - start] (T the AllGather's makespan). A
  rank forwards its partial sum of c to its parent only after every child's partial sum
  of c has arrived and been reduced into it.
* AllReduce = that ReduceScatter, then the AllGather on the same trees. The seam is per
  chunk: the AllGather sends of chunk c from its root wait only for the last reduction of
  c arriving at the root, not for the whole ReduceScatter.

Times are then made exact by a longest-path pass over the precedence graph: data
(a send of a partial sum waits for *all* the sends into it; an AllGather send waits for
the send that brought the chunk) and, on every resource (the topology's, plus one per
connection, as in :mod:`.ordering`), the order of the reversed schedule. On a topology
whose connections are symmetric (a->b costs what b->a does and shares resources alike)
the mirrored times are already feasible, so the pass keeps the AllGather's makespan; on
others it re-times the reversed order. For AllReduce three resource orders are tried
(all ReduceScatter sends before the AllGather sends on each resource; the two
interleaved by the time each send could start; a greedy list schedule that shares
resources as the runtime does) and the fastest kept. Steps follow the times, so a
transfer's step exceeds those of the transfers it waits for.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import defaultdict, deque
from dataclasses import replace

from ...collectives import (
    ALLGATHER,
    ALLREDUCE,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    SCATTER,
    Collective,
)
from ...errors import TacclError
from ...ir.algorithm import Algorithm, Transfer
from ...topology.model import Link, Topology
from ...util.nogc import gc_paused

_EPS = 1e-12


class _Ops:
    """Sends (each possibly merged: ``chunks`` from ``src`` to ``dst``), as parallel lists.

    ``dur`` is how long the topology's resources are held (s), ``alpha`` the latency,
    ``arrive`` their sum; ``res[i]`` are resource ids, ascending (the topology's, plus
    one per connection, as in :mod:`.ordering`; ids in order of first use), ``hold[i]`` how
    long op i holds each (the connection's own resource also for its α). ``key`` is the
    order on every resource (the schedule the ops come from). Phase 0 ops (ReduceScatter)
    come before phase 1 ops (AllGather).
    """

    __slots__ = (
        "src",
        "dst",
        "chunks",
        "reduce",
        "phase",
        "dur",
        "alpha",
        "arrive",
        "res",
        "hold",
        "key",
        "channel",
        "rid",
        "_conn",
    )

    def __init__(self) -> None:
        self.src: list[int] = []
        self.dst: list[int] = []
        self.chunks: list[tuple[int, ...]] = []
        self.reduce: list[bool] = []
        self.phase: list[int] = []
        self.dur: list[float] = []
        self.alpha: list[float] = []
        self.arrive: list[float] = []
        self.res: list[tuple[int, ...]] = []
        self.hold: list[tuple[float, ...]] = []
        self.key: list[float] = []
        self.channel: list[int] = []
        self.rid: dict[str, int] = {}
        self._conn: dict[tuple[int, int], tuple] = {}

    def __len__(self) -> int:
        return len(self.src)

    def add(
        self,
        topology: Topology,
        src: int,
        dst: int,
        chunks,
        reduce: bool,
        phase: int,
        key: float,
        b: float,
        channel: int,
    ) -> None:
        info = self._conn.get((src, dst))
        if info is None:
            conn = topology.connections.get((src, dst))
            if conn is None:
                raise TacclError(
                    f"cannot reverse the send {dst}->{src}: {topology.label} has "
                    f"no connection {src}->{dst}"
                )
            cname = f"conn:{src}->{dst}"
            names = (*conn.resources, cname)
            ids = sorted((self.rid.setdefault(r, len(self.rid)), r == cname) for r in names)
            info = self._conn[(src, dst)] = (
                conn.alpha,
                topology.bandwidth(conn),
                tuple(r for r, _ in ids),
                tuple(c for _, c in ids),
            )
        alpha, bw, rids, is_conn = info
        dur = len(chunks) * b / bw
        arrive = dur + alpha
        self.src.append(src)
        self.dst.append(dst)
        self.chunks.append(tuple(sorted(chunks)))
        self.reduce.append(reduce)
        self.phase.append(phase)
        self.dur.append(dur)
        self.alpha.append(alpha)
        self.arrive.append(arrive)
        self.res.append(rids)
        self.hold.append(tuple(arrive if c else dur for c in is_conn))
        self.key.append(key)
        self.channel.append(channel)


def _groups(ag: Algorithm) -> list[list[Transfer]]:
    """The AllGather's transfers grouped as scheduled (a merged group shares step,
    start, end, ranks and channel)."""
    groups: dict[tuple, list[Transfer]] = defaultdict(list)
    for t in ag.transfers:
        groups[(t.step, t.start, t.end, t.src, t.dst, t.channel)].append(t)
    return list(groups.values())


def _size(ag: Algorithm) -> int:
    size = ag.size or ag.meta.get("size", 0)
    if size <= 0:
        raise TacclError(f"{ag.name}: combining needs the AllGather's target size, got {size}")
    return size


def _check_allgather(ag: Algorithm, topology: Topology) -> None:
    if ag.collective.kind != ALLGATHER:
        raise TacclError(f"combining starts from an allgather, not {ag.collective.kind}")
    if ag.num_ranks != topology.num_ranks:
        raise TacclError(
            f"{ag.name} has {ag.num_ranks} ranks but {topology.label} has {topology.num_ranks}"
        )
    ag.check()


def _data_preds(
    ops: _Ops, root, lo: int = 0, into: dict | None = None
) -> tuple[list[list[int]], dict]:
    """For ops ``lo`` onwards, the ops whose arrival each waits for (distinct, in no
    particular order), and the index (phase, rank, chunk) -> ops into it.

    A reducing send of chunk c from v waits for every reducing send of c into v; a plain
    send of c from v waits for the plain send that brought c to v, or, from c's root, for
    every reducing send of c into the root. ``into`` (returned by a call for ops ``:lo``)
    saves indexing those again.
    """
    if into is None:
        into = defaultdict(list)
    n = len(ops)
    phase, dst, src, chunks = ops.phase, ops.dst, ops.src, ops.chunks
    for i in range(lo, n):
        p, d = phase[i], dst[i]
        for c in chunks[i]:
            into[(p, d, c)].append(i)
    empty: list[int] = []
    get = into.get
    preds: list[list[int]] = []
    for i in range(lo, n):
        s, cs, later = src[i], chunks[i], phase[i] == 1
        if len(cs) == 1:
            c = cs[0]
            preds.append(get((1, s, c), empty) if later and s != root(c) else get((0, s, c), empty))
            continue
        ps: set[int] = set()
        for c in cs:
            ps.update(get((1, s, c), empty) if later and s != root(c) else get((0, s, c), empty))
        preds.append(list(ps))
    return preds, into


def _data_succ(preds: list[list[int]]) -> list[list[int]]:
    """The inverse of ``preds``: for every op, the ops waiting for it, ascending."""
    succ: list[list[int]] = [[] for _ in preds]
    for i, p in enumerate(preds):
        for j in p:
            succ[j].append(i)
    return succ


class _Slots:
    """Every (op, resource) pair of ops ``:n`` as a slot: op i's slots are
    ``off[i]:off[i + 1]``, one per resource in order of resource id. ``on`` lists, for
    every resource used (in order of first use), its slots ascending (= by op)."""

    __slots__ = ("n", "off", "op", "hold", "on")

    def __init__(self, ops: _Ops, n: int) -> None:
        self.n = n
        self.off = off = [0] * (n + 1)
        slot_op: list[int] = []
        hold: list[float] = []
        self.op, self.hold = slot_op, hold
        on: list[list[int]] = [[] for _ in ops.rid]
        res = ops.res
        k = 0
        for i in range(n):
            off[i] = k
            rids = res[i]
            for r in rids:
                on[r].append(k)
                k += 1
            slot_op += [i] * len(rids)
            hold += ops.hold[i]
        off[n] = k
        self.on = [seq for seq in on if seq]


def _next_on(slots: _Slots, key: list[float], rs_first: bool = False, n_rs: int = 0) -> list[int]:
    """For every slot, the op after it on its resource (-1: none), ops ordered by
    (key, phase), or by (phase, key) with ``rs_first``, ties by index."""
    slot_op = slots.op
    kslot = [key[i] for i in slot_op]
    kget = kslot.__getitem__
    nxt = [-1] * len(slot_op)
    cut_slot = slots.off[n_rs] if rs_first else 0
    # phase 0 ops precede phase 1 ops by index, so (key, phase, index) is a stable sort
    # by key of the ascending sequence, and (phase, key, index) sorts each phase apart
    for seq in slots.on:
        if rs_first and seq[0] < cut_slot <= seq[-1]:
            cut = bisect_left(seq, cut_slot)
            seq = sorted(seq[:cut], key=kget) + sorted(seq[cut:], key=kget)
        else:
            seq = sorted(seq, key=kget)
        for a, b in zip(seq, seq[1:]):
            nxt[a] = slot_op[b]
    return nxt


def _asap(
    ops: _Ops, preds: list[list[int]], dsucc: list[list[int]], slots: _Slots, nxt: list[int]
) -> tuple[list[float], list[int], float] | None:
    """Earliest starts under data precedence (``dsucc``: a's arrival) and the order on
    every resource (``nxt``: a's hold of it); also a topological order and the makespan.
    None if the orders make a cycle.

    The topological order is that of Kahn's algorithm over each op's distinct successors,
    data ones first, then by resource in order of first use: edges are counted with
    their multiplicity, and an op is queued where it first appears among the successors
    of the last op it waits for.
    """
    n = len(preds)
    indeg = [len(p) for p in preds]
    for b in nxt:
        if b >= 0:
            indeg[b] += 1
    start = [0.0] * n
    todo = deque(i for i in range(n) if indeg[i] == 0)
    topo: list[int] = []
    pop, push, visit = todo.popleft, todo.append, topo.append
    off, hold, arrive = slots.off, slots.hold, ops.arrive
    while todo:
        a = pop()
        visit(a)
        sa = start[a]
        ds = dsucc[a]
        v = sa + arrive[a]
        for b in ds:
            if v > start[b]:
                start[b] = v
            indeg[b] -= 1
        lo, hi = off[a], off[a + 1]
        for k in range(lo, hi):
            b = nxt[k]
            if b >= 0:
                v = sa + hold[k]
                if v > start[b]:
                    start[b] = v
                indeg[b] -= 1
        for b in ds:
            if indeg[b] == 0:
                indeg[b] = -1
                push(b)
        for k in range(lo, hi):
            b = nxt[k]
            if b >= 0 and indeg[b] == 0:
                indeg[b] = -1
                push(b)
    if len(topo) < n:
        return None
    dur, alpha = ops.dur, ops.alpha
    makespan = max((start[i] + dur[i] + alpha[i] for i in range(n)), default=0.0)
    return start, topo, makespan


def _list_schedule(
    ops: _Ops, preds: list[list[int]], dsucc: list[list[int]], key: list[float]
) -> list[float]:
    """Greedy list schedule the way the runtime shares resources: sends claim their
    resources in order of the time their data is ready (ties: lower sender rank, then
    ``key``), each starting once its resources are free. Returns each op's start; used
    as a resource order for :func:`_asap`."""
    n = len(preds)
    left = [len(p) for p in preds]
    ready = [0.0] * n
    free = [0.0] * len(ops.rid)
    start = [0.0] * n
    src, res, hold, dur, alpha = ops.src, ops.res, ops.hold, ops.dur, ops.alpha
    heap = [(0.0, src[i], key[i], i) for i in range(n) if not left[i]]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        t, _, _, i = pop(heap)
        rids = res[i]
        now = start[i] = max(t, *(free[r] for r in rids))
        for r, h in zip(rids, hold[i]):
            free[r] = now + h
        arrival = now + dur[i] + alpha[i]
        for j in dsucc[i]:
            if arrival > ready[j]:
                ready[j] = arrival
            left[j] -= 1
            if not left[j]:
                push(heap, (ready[j], src[j], key[j], j))
    return start


def _transfers(ops: _Ops, start: list[float], topo: list[int]) -> list[Transfer]:
    """IR transfers with steps in order of start time, ties in precedence order."""
    pos = [0] * len(topo)
    for k, i in enumerate(topo):
        pos[i] = k
    src, dst, chunks, reduce = ops.src, ops.dst, ops.chunks, ops.reduce
    dur, alpha, channel = ops.dur, ops.alpha, ops.channel
    out = []
    for step, i in enumerate(sorted(range(len(topo)), key=lambda i: (start[i], pos[i]))):
        s = start[i]
        end = s + dur[i] + alpha[i]
        out += [Transfer(step, s, src[i], dst[i], c, reduce[i], end, channel[i]) for c in chunks[i]]
    return out


def _reversed_ops(
    groups: list[list[Transfer]], topology: Topology, b: float, T: float, reduce: bool = True
) -> _Ops:
    """The ReduceScatter sends (plain sends with ``reduce`` False), keyed by their
    mirrored start times."""
    ops = _Ops()
    for g in groups:
        ops.add(
            topology,
            g[0].dst,
            g[0].src,
            [t.chunk for t in g],
            reduce,
            0,
            T - g[0].end,
            b,
            g[0].channel,
        )
    return ops


def _mirror_feasible(
    ops: _Ops, dsucc: list[list[int]], slots: _Slots, nxt: list[int], groups, T: float
) -> bool:
    """Whether the mirrored times (T - end .. T - start of each AllGather send) obey every
    constraint of the reversed sends as they are."""
    tol = 1e-9 * max(T, 1e-30)
    if any(abs((g[0].end - g[0].start) - arrive) > tol for g, arrive in zip(groups, ops.arrive)):
        return False
    key, arrive = ops.key, ops.arrive
    if not all(key[b] >= key[a] + arrive[a] - tol for a, ds in enumerate(dsucc) for b in ds):
        return False
    slot_op, hold = slots.op, slots.hold
    return all(key[b] >= key[slot_op[k]] + hold[k] - tol for k, b in enumerate(nxt) if b >= 0)


def _reduce_scatter_part(allgather: Algorithm, topology: Topology):
    """The reversed ops timed on their own: (groups, T, b, ops, preds, into, dsucc,
    slots, nxt, (start, topo, makespan))."""
    coll = allgather.collective
    b = coll.chunk_bytes(_size(allgather))
    T = max((t.end for t in allgather.transfers), default=0.0)
    groups = _groups(allgather)
    ops = _reversed_ops(groups, topology, b, T)
    preds, into = _data_preds(ops, lambda c: c // coll.chunkup)
    dsucc = _data_succ(preds)
    slots = _Slots(ops, len(ops))
    nxt = _next_on(slots, ops.key)
    res = _asap(ops, preds, dsucc, slots, nxt)
    if res is None:
        raise TacclError(f"{allgather.name}: the reversed schedule has a cycle")
    return groups, T, b, ops, preds, into, dsucc, slots, nxt, res


def _meta(ag: Algorithm, kind: str, makespan: float, **extra) -> dict:
    meta = dict(ag.meta)
    meta.pop("tried", None)
    meta.update(makespan=makespan, chunkup=ag.collective.chunkup, **extra)
    meta["reversed_from"] = {
        "kind": ag.collective.kind,
        "name": ag.name,
        "makespan": ag.meta.get("makespan"),
        "variant": ag.meta.get("variant"),
        "rule": ag.meta.get("rule"),
    }
    meta["combined"] = kind
    return meta


@gc_paused()
def reduce_scatter_from(
    allgather: Algorithm, topology: Topology, *, inplace: bool | None = None
) -> Algorithm:
    """The ReduceScatter that is ``allgather`` (a timed AllGather) reversed.

    ``inplace`` (default: the AllGather's flag) sets the result's in-place flag.
    ``meta["makespan"]`` is the re-timed makespan (s), ``meta["reversed_from"]`` names the
    AllGather and its makespan, ``meta["mirror_feasible"]`` says whether the mirrored
    times were feasible as they were (a symmetric topology).
    """
    _check_allgather(allgather, topology)
    coll = allgather.collective
    groups, T, _, ops, _, _, dsucc, slots, nxt, res = _reduce_scatter_part(allgather, topology)
    # (the reversed schedule cannot have a cycle: mirrored keys follow data precedence)
    mirror = _mirror_feasible(ops, dsucc, slots, nxt, groups, T)
    del dsucc, slots, nxt
    start, topo, makespan = res
    rs = Collective(
        REDUCESCATTER, coll.num_ranks, coll.chunkup, coll.inplace if inplace is None else inplace
    )
    alg = Algorithm(
        allgather.name,
        rs,
        _transfers(ops, start, topo),
        allgather.topology,
        allgather.size,
        _meta(allgather, REDUCESCATTER, makespan, allgather_makespan=T, mirror_feasible=mirror),
    )
    alg.check()
    return alg


@gc_paused()
def allreduce_from(
    allgather: Algorithm, topology: Topology, *, inplace: bool | None = None
) -> Algorithm:
    """The AllReduce: ``allgather`` reversed (a ReduceScatter), then ``allgather``.

    The AllGather sends of chunk c from its root wait only for the reductions of c into
    the root. Three resource orders are timed: every ReduceScatter send before every
    AllGather send ("rs first"), both interleaved by the time each send could start
    ("interleaved"), and a greedy list schedule ("list"); the fastest is kept
    (``meta["seam"]``).
    """
    _check_allgather(allgather, topology)
    coll = allgather.collective
    groups, T, b, ops, rs_preds, into, _, _, _, rs_res = _reduce_scatter_part(allgather, topology)
    rs_start, _, rs_makespan = rs_res
    root = lambda c: c // coll.chunkup  # noqa: E731
    n_rs = len(ops)
    for g in groups:
        ops.add(
            topology,
            g[0].src,
            g[0].dst,
            [t.chunk for t in g],
            False,
            1,
            g[0].start,
            b,
            g[0].channel,
        )
    ag_start = ops.key[n_rs:]
    # chunk c is reduced at its root once the last reducing send into the root arrives
    ready: dict[int, float] = defaultdict(float)
    for i, s in enumerate(rs_start):
        d = ops.dst[i]
        for c in ops.chunks[i]:
            if d == root(c):
                ready[c] = max(ready[c], s + ops.dur[i] + ops.alpha[i])
    preds = rs_preds + _data_preds(ops, root, n_rs, into)[0]
    del into
    dsucc = _data_succ(preds)
    slots = _Slots(ops, len(ops))
    interleaved = rs_start + [
        k + max(ready[c] for c in cs) for k, cs in zip(ag_start, ops.chunks[n_rs:])
    ]
    best: tuple[str, tuple[list[float], list[int], float]] | None = None
    for seam in ("rs first", "interleaved", "list"):
        if seam == "rs first":  # phase first on every resource
            key = rs_start + ag_start
        elif seam == "interleaved":  # by the time each send could start, seam per chunk
            key = interleaved
        else:  # greedy, keyed by the interleaved times
            key = _list_schedule(ops, preds, dsucc, interleaved)
        nxt = _next_on(slots, key, seam == "rs first", n_rs)
        res = _asap(ops, preds, dsucc, slots, nxt)
        del nxt
        if res is not None and (best is None or res[2] < best[1][2] * (1 - 1e-12)):
            best = (seam, res)
    assert best is not None  # the list schedule's order (its start times) has no cycle
    seam, (start, topo, makespan) = best
    ar = Collective(
        ALLREDUCE, coll.num_ranks, coll.chunkup, coll.inplace if inplace is None else inplace
    )
    alg = Algorithm(
        allgather.name,
        ar,
        _transfers(ops, start, topo),
        allgather.topology,
        allgather.size,
        _meta(
            allgather,
            ALLREDUCE,
            makespan,
            allgather_makespan=T,
            reducescatter_makespan=rs_makespan,
            seam=seam,
        ),
    )
    alg.check()
    return alg


def reversed_topology(topology: Topology) -> Topology:
    """``topology`` with every link turned around (switch ports and NICs are alike both
    ways), so that a schedule on it reversed runs on ``topology``; the same label.

    >>> from taccl_py.topology.loader import load_topology
    >>> t = load_topology("dgx1")
    >>> sorted(reversed_topology(t).connections) == sorted(t.connections)
    True
    """
    return replace(
        topology,
        links=tuple(
            Link(k.dst, k.src, k.bandwidth, k.alpha, k.count, k.kind) for k in topology.links
        ),
    )


#: the rooted collective each rooted collective is the reverse of
REVERSED = {REDUCE: BROADCAST, SCATTER: GATHER}


@gc_paused()
def reverse_rooted(
    base: Algorithm, topology: Topology, kind: str, *, inplace: bool | None = None
) -> Algorithm:
    """Reduce from a timed Broadcast, Scatter from a timed Gather (``kind`` names the
    result), ``base`` made on :func:`reversed_topology` of ``topology``.

    Every send u->v of ``base`` at [start, end] becomes v->u at [T - end, T - start] on
    ``topology`` (reducing for Reduce: a rank sends its partial sum to its parent once
    all its children's have arrived), then re-timed as a ReduceScatter
    (:func:`reduce_scatter_from`).
    """
    if kind not in REVERSED:
        raise TacclError(f"reversing makes reduce or scatter, not {kind}")
    coll = base.collective
    if coll.kind != REVERSED[kind]:
        raise TacclError(f"{kind} is made from a {REVERSED[kind]}, not a {coll.kind}")
    if base.num_ranks != topology.num_ranks:
        raise TacclError(
            f"{base.name} has {base.num_ranks} ranks but {topology.label} has {topology.num_ranks}"
        )
    base.check()
    b = coll.chunk_bytes(_size(base))
    T = max((t.end for t in base.transfers), default=0.0)
    ops = _reversed_ops(_groups(base), topology, b, T, kind == REDUCE)
    preds, _ = _data_preds(ops, lambda c: coll.root)
    dsucc = _data_succ(preds)
    slots = _Slots(ops, len(ops))
    res = _asap(ops, preds, dsucc, slots, _next_on(slots, ops.key))
    if res is None:
        raise TacclError(f"{base.name}: the reversed schedule has a cycle")
    start, topo, makespan = res
    out = Collective(
        kind,
        coll.num_ranks,
        coll.chunkup,
        coll.inplace if inplace is None else inplace,
        coll.root,
    )
    alg = Algorithm(
        base.name,
        out,
        _transfers(ops, start, topo),
        base.topology,
        base.size,
        _meta(base, kind, makespan, base_makespan=T),
    )
    alg.check()
    return alg


def combine(
    allgather: Algorithm, topology: Topology, kind: str, *, inplace: bool | None = None
) -> Algorithm:
    """``reduce_scatter_from`` or ``allreduce_from`` by collective kind."""
    if kind == REDUCESCATTER:
        return reduce_scatter_from(allgather, topology, inplace=inplace)
    if kind == ALLREDUCE:
        return allreduce_from(allgather, topology, inplace=inplace)
    raise TacclError(f"combining makes reducescatter or allreduce, not {kind}")

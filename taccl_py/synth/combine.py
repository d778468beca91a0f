"""Combining collectives from a synthesized AllGather (``specs/method.md``).

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
from collections import defaultdict, deque
from dataclasses import dataclass

from ..collectives import ALLGATHER, ALLREDUCE, REDUCESCATTER, Collective
from ..errors import TacclError
from ..topology.model import Topology
from .ir import Algorithm, Transfer

_EPS = 1e-12


@dataclass
class _Op:
    """One (possibly merged) send of ``chunks`` from ``src`` to ``dst``."""

    src: int
    dst: int
    chunks: tuple[int, ...]
    reduce: bool
    phase: int  # 0: ReduceScatter, 1: AllGather
    dur: float  # seconds the topology's resources are held
    alpha: float
    resources: tuple[str, ...]
    key: float  # order on every resource (the schedule the ops come from)
    channel: int = 0

    @property
    def conn(self) -> str:
        return f"conn:{self.src}->{self.dst}"

    def hold(self, resource: str) -> float:
        return self.dur + self.alpha if resource == self.conn else self.dur


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
        raise TacclError(f"{ag.name}: combining needs the AllGather's target size, got "
                         f"{size}")
    return size


def _check_allgather(ag: Algorithm, topology: Topology) -> None:
    if ag.collective.kind != ALLGATHER:
        raise TacclError(f"combining starts from an allgather, not {ag.collective.kind}")
    if ag.num_ranks != topology.num_ranks:
        raise TacclError(f"{ag.name} has {ag.num_ranks} ranks but {topology.label} has "
                         f"{topology.num_ranks}")
    ag.check()


def _make_op(topology: Topology, src: int, dst: int, chunks, reduce: bool, phase: int,
             key: float, b: float, channel: int) -> _Op:
    conn = topology.connections.get((src, dst))
    if conn is None:
        raise TacclError(f"cannot reverse the send {dst}->{src}: {topology.label} has no "
                         f"connection {src}->{dst}")
    return _Op(src, dst, tuple(sorted(chunks)), reduce, phase,
               len(chunks) * b / topology.bandwidth(conn), conn.alpha,
               (*conn.resources, f"conn:{src}->{dst}"), key, channel)


def _data_preds(ops: list[_Op], allgather_root) -> list[set[int]]:
    """For every op, the ops whose arrival it waits for.

    A reducing send of chunk c from v waits for every reducing send of c into v; a plain
    send of c from v waits for the plain send that brought c to v, or, from c's root, for
    every reducing send of c into the root.
    """
    into: dict[tuple[int, int, int], list[int]] = defaultdict(list)  # (phase, rank, chunk)
    for i, op in enumerate(ops):
        for c in op.chunks:
            into[(op.phase, op.dst, c)].append(i)
    preds = []
    for op in ops:
        p: set[int] = set()
        for c in op.chunks:
            if op.phase == 1 and op.src != allgather_root(c):
                p.update(into[(1, op.src, c)])
            else:
                p.update(into[(0, op.src, c)])
        preds.append(p)
    return preds


def _edges(ops: list[_Op], preds: list[set[int]], order) -> dict[int, dict[int, float]]:
    """Precedence edges a -> b with the least delay of b's start after a's: data
    (a's arrival) and, on every resource, consecutive ops by ``order(op)``."""
    succ: dict[int, dict[int, float]] = defaultdict(dict)

    def edge(a: int, b: int, w: float) -> None:
        if succ[a].get(b, -1.0) < w:
            succ[a][b] = w

    for i, p in enumerate(preds):
        for j in p:
            edge(j, i, ops[j].dur + ops[j].alpha)
    on: dict[str, list[int]] = defaultdict(list)
    for i, op in enumerate(ops):
        for r in op.resources:
            on[r].append(i)
    for r, seq in on.items():
        seq.sort(key=lambda i: (order(ops[i]), i))
        for a, b in zip(seq, seq[1:]):
            edge(a, b, ops[a].hold(r))
    return succ


def _asap(ops: list[_Op], preds: list[set[int]], order=lambda op: (op.key, op.phase)
          ) -> tuple[list[float], list[int], float] | None:
    """Earliest starts under data precedence and each resource's ``order``; also a
    topological order and the makespan. None if the orders make a cycle."""
    succ = _edges(ops, preds, order)
    indeg = [0] * len(ops)
    for a in succ:
        for b in succ[a]:
            indeg[b] += 1
    start = [0.0] * len(ops)
    todo = deque(i for i in range(len(ops)) if indeg[i] == 0)
    topo: list[int] = []
    while todo:
        a = todo.popleft()
        topo.append(a)
        for b, w in succ[a].items():
            start[b] = max(start[b], start[a] + w)
            indeg[b] -= 1
            if indeg[b] == 0:
                todo.append(b)
    if len(topo) < len(ops):
        return None
    makespan = max((start[i] + op.dur + op.alpha for i, op in enumerate(ops)), default=0.0)
    return start, topo, makespan


def _list_schedule(ops: list[_Op], preds: list[set[int]]) -> list[float]:
    """Greedy list schedule the way the runtime shares resources: sends claim their
    resources in order of the time their data is ready (ties: lower sender rank, then
    key), each starting once its resources are free. Returns each op's start; used as a
    resource order for :func:`_asap`."""
    succ: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(preds):
        for j in p:
            succ[j].append(i)
    left = [len(p) for p in preds]
    ready = [0.0] * len(ops)
    free: dict[str, float] = defaultdict(float)
    start = [0.0] * len(ops)
    heap = [(0.0, ops[i].src, ops[i].key, i) for i in range(len(ops)) if not left[i]]
    heapq.heapify(heap)
    while heap:
        t, _, _, i = heapq.heappop(heap)
        op = ops[i]
        now = start[i] = max(t, *(free[r] for r in op.resources))
        for r in op.resources:
            free[r] = now + op.hold(r)
        for j in succ[i]:
            ready[j] = max(ready[j], now + op.dur + op.alpha)
            left[j] -= 1
            if not left[j]:
                heapq.heappush(heap, (ready[j], ops[j].src, ops[j].key, j))
    return start


def _transfers(ops: list[_Op], start: list[float], topo: list[int]) -> list[Transfer]:
    """IR transfers with steps in order of start time, ties in precedence order."""
    pos = {i: k for k, i in enumerate(topo)}
    out = []
    for step, i in enumerate(sorted(range(len(ops)), key=lambda i: (start[i], pos[i]))):
        op = ops[i]
        end = start[i] + op.dur + op.alpha
        out += [Transfer(step, start[i], op.src, op.dst, c, op.reduce, end, op.channel)
                for c in op.chunks]
    return out


def _reversed_ops(groups: list[list[Transfer]], topology: Topology, b: float,
                  T: float) -> list[_Op]:
    """The ReduceScatter sends, keyed by their mirrored start times."""
    return [_make_op(topology, g[0].dst, g[0].src, [t.chunk for t in g], True, 0,
                     T - g[0].end, b, g[0].channel) for g in groups]


def _mirror_feasible(ops: list[_Op], preds: list[set[int]], groups, T: float) -> bool:
    """Whether the mirrored times (T - end .. T - start of each AllGather send) obey every
    constraint of the reversed sends as they are."""
    tol = 1e-9 * max(T, 1e-30)
    if any(abs((g[0].end - g[0].start) - (op.dur + op.alpha)) > tol
           for g, op in zip(groups, ops)):
        return False
    succ = _edges(ops, preds, lambda op: (op.key, op.phase))
    return all(ops[b].key >= ops[a].key + w - tol for a in succ for b, w in succ[a].items())


def _meta(ag: Algorithm, kind: str, makespan: float, **extra) -> dict:
    meta = dict(ag.meta)
    meta.pop("tried", None)
    meta.update(makespan=makespan, chunkup=ag.collective.chunkup, **extra)
    meta["reversed_from"] = {"kind": ALLGATHER, "name": ag.name,
                             "makespan": ag.meta.get("makespan"),
                             "variant": ag.meta.get("variant"), "rule": ag.meta.get("rule")}
    meta["combined"] = kind
    return meta


def reduce_scatter_from(allgather: Algorithm, topology: Topology, *,
                        inplace: bool | None = None) -> Algorithm:
    """The ReduceScatter that is ``allgather`` (a timed AllGather) reversed.

    ``inplace`` (default: the AllGather's flag) sets the result's in-place flag.
    ``meta["makespan"]`` is the re-timed makespan (s), ``meta["reversed_from"]`` names the
    AllGather and its makespan, ``meta["mirror_feasible"]`` says whether the mirrored
    times were feasible as they were (a symmetric topology).
    """
    _check_allgather(allgather, topology)
    coll = allgather.collective
    b = coll.chunk_bytes(_size(allgather))
    T = max((t.end for t in allgather.transfers), default=0.0)
    groups = _groups(allgather)
    ops = _reversed_ops(groups, topology, b, T)
    preds = _data_preds(ops, lambda c: c // coll.chunkup)
    mirror = _mirror_feasible(ops, preds, groups, T)
    res = _asap(ops, preds)
    if res is None:  # cannot happen: mirrored keys follow data precedence
        raise TacclError(f"{allgather.name}: the reversed schedule has a cycle")
    start, topo, makespan = res
    rs = Collective(REDUCESCATTER, coll.num_ranks, coll.chunkup,
                    coll.inplace if inplace is None else inplace)
    alg = Algorithm(allgather.name, rs, _transfers(ops, start, topo), allgather.topology,
                    allgather.size, _meta(allgather, REDUCESCATTER, makespan,
                                          allgather_makespan=T, mirror_feasible=mirror))
    alg.check()
    return alg


def allreduce_from(allgather: Algorithm, topology: Topology, *,
                   inplace: bool | None = None) -> Algorithm:
    """The AllReduce: ``allgather`` reversed (a ReduceScatter), then ``allgather``.

    The AllGather sends of chunk c from its root wait only for the reductions of c into
    the root. Three resource orders are timed: every ReduceScatter send before every
    AllGather send ("rs first"), both interleaved by the time each send could start
    ("interleaved"), and a greedy list schedule ("list"); the fastest is kept
    (``meta["seam"]``).
    """
    _check_allgather(allgather, topology)
    coll = allgather.collective
    b = coll.chunk_bytes(_size(allgather))
    T = max((t.end for t in allgather.transfers), default=0.0)
    groups = _groups(allgather)
    rs_ops = _reversed_ops(groups, topology, b, T)
    root = lambda c: c // coll.chunkup  # noqa: E731
    rs_res = _asap(rs_ops, _data_preds(rs_ops, root))
    if rs_res is None:
        raise TacclError(f"{allgather.name}: the reversed schedule has a cycle")
    rs_start, _, rs_makespan = rs_res
    ag_ops = [_make_op(topology, g[0].src, g[0].dst, [t.chunk for t in g], False, 1,
                       g[0].start, b, g[0].channel) for g in groups]
    # chunk c is reduced at its root once the last reducing send into the root arrives
    ready: dict[int, float] = defaultdict(float)
    for s, op in zip(rs_start, rs_ops):
        for c in op.chunks:
            if op.dst == root(c):
                ready[c] = max(ready[c], s + op.dur + op.alpha)
    best = None
    for seam in ("rs first", "interleaved", "list"):
        ops = [_Op(**{**op.__dict__, "key": s}) for s, op in zip(rs_start, rs_ops)]
        if seam == "rs first":  # phase first on every resource
            ops += ag_ops
            order = lambda op: (op.phase, op.key)  # noqa: E731
        else:  # by the time each send could start with the seam per chunk
            ops += [_Op(**{**op.__dict__, "key": op.key + max(ready[c] for c in op.chunks)})
                    for op in ag_ops]
            order = lambda op: (op.key, op.phase)  # noqa: E731
        preds = _data_preds(ops, root)
        if seam == "list":  # greedy, keyed by the interleaved times
            for op, t in zip(ops, _list_schedule(ops, preds)):
                op.key = t
        res = _asap(ops, preds, order)
        if res is not None and (best is None or res[2] < best[2][2] * (1 - 1e-12)):
            best = (seam, ops, res)
    seam, ops, (start, topo, makespan) = best
    ar = Collective(ALLREDUCE, coll.num_ranks, coll.chunkup,
                    coll.inplace if inplace is None else inplace)
    alg = Algorithm(allgather.name, ar, _transfers(ops, start, topo), allgather.topology,
                    allgather.size, _meta(allgather, ALLREDUCE, makespan,
                                          allgather_makespan=T,
                                          reducescatter_makespan=rs_makespan, seam=seam))
    alg.check()
    return alg


def combine(allgather: Algorithm, topology: Topology, kind: str, *,
            inplace: bool | None = None) -> Algorithm:
    """``reduce_scatter_from`` or ``allreduce_from`` by collective kind."""
    if kind == REDUCESCATTER:
        return reduce_scatter_from(allgather, topology, inplace=inplace)
    if kind == ALLREDUCE:
        return allreduce_from(allgather, topology, inplace=inplace)
    raise TacclError(f"combining makes reducescatter or allreduce, not {kind}")

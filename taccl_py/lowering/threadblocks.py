"""Threadblocks for lowering: peers per threadblock, step order inside one, and fusion.

Per rank and channel, a receive peer ``a`` shares a threadblock with a send peer ``c`` when
data received from ``a`` is forwarded to ``c`` (a maximum-weight matching on the number of
such forwardings), so that receive and send can fuse into one step. Each connection
(sender, receiver, channel) then has exactly one threadblock at either end.

Operations carry an execution *key* ``(k, hoisted, n)``: ``(k, 0, 0)`` for transfer ``k``
(its IR index). Inside a threadblock a send is hoisted as early as its data allows, past
receives but never past another send (so both ends of every connection keep the same
order): right after the receive that produced its data, or after the producer's key when
another threadblock produced it; it is then keyed ``(a, 1, n)``, the ``n``-th send hoisted
to just after integer key ``a``. Every step then only waits for steps with smaller keys,
and a receive for a send with a smaller or equal key, so the plan cannot deadlock.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field

import networkx as nx

from ..ir.algorithm import Algorithm
from ..plan.runtimes import RESIDENT_TBS
from .buffers import Flow, Loc

Key = tuple[int, int, int]


@dataclass(eq=False, slots=True)
class Op:
    """A send ``s`` or receive ``r`` side of a transfer, or a local copy ``c``, on one rank."""

    kind: str
    rank: int
    key: Key
    transfer: int = -1
    reads: tuple[Loc, ...] = ()
    writes: tuple[Loc, ...] = ()
    deps: list[Op] = field(default_factory=list)  # ops of other threadblocks to wait for
    tb: TB = field(kw_only=True)
    step: TbStep = field(init=False, repr=False)  # the lowered step holding it, once made

    @property
    def order(self) -> Key:
        """Position in the IR's sequential execution (where its accesses happen)."""
        return (self.transfer, 0, 0) if self.transfer >= 0 else self.key


@dataclass(eq=False, slots=True)
class TB:
    """A threadblock; ``units`` are its ops grouped into steps ([op] or fused [recv, send])."""

    rank: int
    send: int
    recv: int
    chan: int
    id: int = -1
    units: list[list[Op]] = field(default_factory=list)
    steps: list[TbStep] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class TbStep:
    """A plan step before numbering: a copy, or a receive and/or send of one or more ops."""

    type: str
    ops: list[Op]
    src: Loc | None
    dst: Loc | None
    tb: TB
    cnt: int = 1
    pos: int = 0  # among the threadblock's steps, nops not counted
    index: int = 0  # the step's ``s`` in the plan
    wait: list[TbStep] = field(default_factory=list)  # dependencies kept
    hasdep: bool = False

    @property
    def key(self) -> Key:
        return self.ops[0].key


TbKey = tuple[int, int, int, int]  # (rank, channel, recv peer, send peer); -1: none


class Threadblocks:
    """Threadblocks for successive sets of ``apart`` pairs, built incrementally.

    Per rank and channel, receive peers are matched to send peers (maximum weight on the
    forwardings, without the ``apart`` pairs); over ``max_tbs`` threadblocks per rank,
    unrelated peers share threadblocks too. Every threadblock is kept by its (rank,
    channel, recv peer, send peer): its ops, their order and fusion depend only on those
    (and on the fixed value flow), so only threadblocks whose pairing changed are built
    again. Received values' ``stored`` and ``sink`` are set by :meth:`finish`, once, for
    the threadblocks finally chosen.
    """

    def __init__(self, alg: Algorithm, flow: Flow, max_tbs: int = RESIDENT_TBS) -> None:
        self.alg, self.flow, self.max_tbs = alg, flow, max_tbs
        n = alg.num_ranks
        chans: list[set[int]] = [set() for _ in range(n)]
        ends: dict[tuple[int, int, str, int], list[int]] = {}
        forwards: Counter[TbKey] = Counter()
        ts = alg.transfers
        for j, t in enumerate(ts):
            chans[t.src].add(t.channel)
            chans[t.dst].add(t.channel)
            ends.setdefault((t.src, t.channel, "s", t.dst), []).append(j)
            ends.setdefault((t.dst, t.channel, "r", t.src), []).append(j)
            k = flow.sent[j].producer
            if k is not None and ts[k].channel == t.channel:
                forwards[(t.src, t.channel, ts[k].src, t.dst)] += 1
        self.chans = [sorted(c) for c in chans]
        self.ends = ends
        recvs: dict[tuple[int, int], list[int]] = {}
        sends: dict[tuple[int, int], list[int]] = {}
        for r, ch, kind, p in ends:
            (recvs if kind == "r" else sends).setdefault((r, ch), []).append(p)
        for d in (recvs, sends):
            for v in d.values():
                v.sort()
        self.recvs, self.sends = recvs, sends
        self.edges: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for (r, ch, a, b), w in sorted(forwards.items()):
            self.edges.setdefault((r, ch), []).append((a, b, w))
        self.matchings: dict[tuple[int, int, frozenset], dict[int, int]] = {}
        self.cache: dict[TbKey, TB] = {}
        self.late_cache: dict[TbKey, bool] = {}
        self.slack = 1e-9 * max((t.end for t in ts), default=0.0)

    def _matching(self, r: int, ch: int, apart: frozenset) -> dict[int, int]:
        key = (r, ch, apart)
        pair = self.matchings.get(key)
        if pair is None:
            edges = [
                (a, b) for a, b, _ in self.edges.get((r, ch), ()) if (r, ch, a, b) not in apart
            ]
            recv_peers = {a for a, _ in edges}
            send_peers = {b for _, b in edges}
            if len(recv_peers) == len(send_peers) == len(edges):
                # disjoint edges of positive weight: the maximum matching takes them all
                pair = self.matchings[key] = dict(edges)
                return pair
            if len(recv_peers) == 1 or len(send_peers) == 1:
                pair = self.matchings[key] = _star_matching(
                    [e for e in self.edges[(r, ch)] if (r, ch, e[0], e[1]) not in apart],
                    len(recv_peers) == 1,
                )
                return pair
            n = self.alg.num_ranks
            graph = nx.Graph()
            graph.add_nodes_from(self.recvs.get((r, ch), ()))
            graph.add_nodes_from(n + b for b in self.sends.get((r, ch), ()))
            graph.add_weighted_edges_from(
                (a, n + b, w)
                for a, b, w in self.edges.get((r, ch), ())
                if (r, ch, a, b) not in apart
            )
            pair = {}
            for u, v in nx.max_weight_matching(graph):
                a, b = min(u, v), max(u, v) - n
                pair[a] = b
            self.matchings[key] = pair
        return pair

    def _channel_keys(self, r: int, ch: int, apart: frozenset, compact: bool) -> list[TbKey]:
        recvs = self.recvs.get((r, ch), [])
        sends = self.sends.get((r, ch), [])
        pair = dict(self._matching(r, ch, apart))
        if compact:  # over the runtime's threadblock limit: also share unrelated peers
            free_r = [a for a in recvs if a not in pair]
            free_s = [b for b in sends if b not in pair.values()]
            pair.update((a, a) for a in free_r if a in free_s)
            free_r = [a for a in free_r if a not in pair]
            free_s = [b for b in free_s if b not in pair.values()]
            pair.update(zip(free_r, free_s))
        paired = set(pair.values())
        return (
            [(r, ch, a, b) for a, b in pair.items()]
            + [(r, ch, a, -1) for a in recvs if a not in pair]
            + [(r, ch, -1, b) for b in sends if b not in paired]
        )

    def assign(self, apart: frozenset[TbKey] = frozenset()) -> list[list[TB]]:
        """Threadblocks of every rank, sorted and numbered, with their units."""
        n = self.alg.num_ranks
        by_chan: dict[tuple[int, int], set[TbKey]] = {}
        for pair in apart:
            by_chan.setdefault(pair[:2], set()).add(pair)
        result = []
        for r in range(n):
            chans = self.chans[r]
            for compact in (False, True):
                keys = [
                    key
                    for ch in chans
                    for key in self._channel_keys(
                        r, ch, frozenset(by_chan.get((r, ch), ())), compact
                    )
                ]
                if len(keys) <= self.max_tbs:
                    break
            keys.sort(key=lambda q: (q[1], q[3] if q[3] >= 0 else n, q[2] if q[2] >= 0 else n))
            tbs = [self._tb(key) for key in keys]
            for i, tb in enumerate(tbs):
                tb.id = i
            result.append(tbs)
        return result

    def _tb(self, key: TbKey) -> TB:
        tb = self.cache.get(key)
        if tb is None:
            r, ch, a, b = key
            tb = TB(r, b, a, ch)
            recv = self.ends.get((r, ch, "r", a), ()) if a >= 0 else ()
            send = self.ends.get((r, ch, "s", b), ()) if b >= 0 else ()
            ops = [Op("s", r, (k, 0, 0), k, tb=tb) for k in send] + [
                Op("r", r, (k, 0, 0), k, tb=tb) for k in recv
            ]
            ops.sort(key=lambda op: op.transfer)
            tb.units = _fuse_units(_hoist_keys(ops, self.flow), self.flow)
            self.cache[key] = tb
        return tb

    def late(self, tbs: list[list[TB]]) -> set[TbKey]:
        """Paired threadblocks (as ``apart`` keys) where a step would start later than
        the IR's schedule says: a send after its start, a receive after its arrival, or
        a fused receive-send holding back another reader of the received value."""
        bad = set()
        slack = self.slack
        for rank_tbs in tbs:
            for tb in rank_tbs:
                if tb.send < 0 or tb.recv < 0:
                    continue
                key = (tb.rank, tb.chan, tb.recv, tb.send)
                is_late = self.late_cache.get(key)
                if is_late is None:
                    is_late = self.late_cache[key] = _tb_late(self.alg, self.flow, tb, slack)
                if is_late:
                    bad.add(key)
        return bad

    def finish(self, tbs: list[list[TB]]) -> tuple[list[Op], list[Op]]:
        """Settle on ``tbs`` and return the send and receive ops per transfer.

        A fused reduction is stored only if its value is read again or final (else
        ``rrs``); a stored value nobody reads again goes to its threadblock's sink. The
        other threadblocks built are dropped."""
        flow = self.flow
        m = len(self.alg.transfers)
        send_ops: list = [None] * m
        recv_ops: list = [None] * m
        kept = set()
        for rank_tbs in tbs:
            for tb in rank_tbs:
                kept.add(id(tb))
                for unit in tb.units:
                    op = unit[0]
                    if op.kind == "s":
                        send_ops[op.transfer] = op
                        continue
                    recv_ops[op.transfer] = op
                    if len(unit) == 2:
                        send_ops[unit[1].transfer] = unit[1]
                    v = flow.made[op.transfer]
                    last = unit[-1].transfer
                    needed = v.final or any(j != last for j in v.readers)
                    if len(unit) == 2 and v.operand is not None:
                        v.stored = needed
                    if v.stored and not needed:
                        v.sink = tb.id
        for tb in self.cache.values():
            if id(tb) not in kept:  # break the op <-> threadblock cycles
                tb.units = []
        self.cache.clear()
        self.matchings.clear()
        self.late_cache.clear()
        return send_ops, recv_ops


def _star_matching(edges: list[tuple[int, int, int]], recv_center: bool) -> dict[int, int]:
    """A maximum-weight matching of a star of 2+ edges (sorted, as :class:`Threadblocks`
    builds them): one heaviest edge; of several, the last if the center is a receive
    peer, else the first (the one networkx's general matching picks, so that plans do not
    depend on which path found the matching)."""
    top = max(w for _, _, w in edges)
    best = [(a, b) for a, b, w in edges if w == top]
    a, b = best[-1] if recv_center else best[0]
    return {a: b}


def _tb_late(alg: Algorithm, flow: Flow, tb: TB, slack: float) -> bool:
    ts = alg.transfers
    done = 0.0
    for unit in tb.units:
        for op in unit:
            if op.kind == "c":
                continue
            t = ts[op.transfer]
            due = t.start if op.kind == "s" else t.end
            if done > due + slack:
                return True
            done = max(done, t.end)
        if len(unit) == 2:
            r, s = unit
            end = ts[s.transfer].end
            if any(
                ts[j].start + slack < end for j in flow.made[r.transfer].readers if j != s.transfer
            ):
                return True
    return False


def _hoist_keys(ops: list[Op], flow: Flow) -> list[Op]:
    """A threadblock's ops (in transfer order) with every send hoisted as early as its
    data allows (see the module docstring); receives keep their keys ``(k, 0, 0)``."""
    out: list[Op] = []
    keys: list[Key] = []
    first_free = 0  # sends may not pass the previous send
    for op in ops:
        at = len(out)
        if op.kind == "s":
            at = first_free
            producer = flow.sent[op.transfer].producer
            floor = (producer, 0, 0) if producer is not None else None
            if floor is not None:
                at = max(at, bisect_right(keys, floor))
            if at < len(out):
                left = keys[at - 1] if at else (-1, 0, 0)
                anchor = max(left[0], floor[0] if floor is not None else -1)
                op.key = (anchor, 1, left[2] + 1 if left[:2] == (anchor, 1) else 0)
            first_free = at + 1
            out.insert(at, op)
            keys.insert(at, op.key)
        else:
            out.append(op)
            keys.append(op.key)
    return out


def _fuse_units(ops: list[Op], flow: Flow) -> list[list[Op]]:
    """Group a receive with the send right after it that sends on the received value."""
    units = []
    i, n = 0, len(ops)
    while i < n:
        op = ops[i]
        if op.kind == "r" and i + 1 < n:
            nxt = ops[i + 1]
            if nxt.kind == "s" and flow.sent[nxt.transfer] is flow.made[op.transfer]:
                units.append([op, nxt])
                i += 2
                continue
        units.append([op])
        i += 1
    return units

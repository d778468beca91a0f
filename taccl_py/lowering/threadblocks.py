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

from ..synth.ir import Algorithm
from .buffers import Flow, Loc

MAX_TBS = 216

Key = tuple[int, int, int]


@dataclass(eq=False)
class Op:
    """A send ``s`` or receive ``r`` side of a transfer, or a local copy ``c``, on one rank."""

    kind: str
    rank: int
    key: Key
    transfer: int = -1
    reads: tuple[Loc, ...] = ()
    writes: tuple[Loc, ...] = ()
    deps: list[Op] = field(default_factory=list)  # ops of other threadblocks to wait for
    tb: TB | None = None
    step: object = None  # the lowered step holding this op

    @property
    def order(self) -> Key:
        """Position in the IR's sequential execution (where its accesses happen)."""
        return (self.transfer, 0, 0) if self.transfer >= 0 else self.key


@dataclass(eq=False)
class TB:
    """A threadblock; ``units`` are its ops grouped into steps ([op] or fused [recv, send])."""

    rank: int
    send: int
    recv: int
    chan: int
    id: int = -1
    units: list[list[Op]] = field(default_factory=list)
    steps: list = field(default_factory=list)


def assign_threadblocks(alg: Algorithm, flow: Flow,
                        apart: frozenset[tuple[int, int, int, int]] = frozenset()
                        ) -> list[list[TB]]:
    """Threadblocks of every rank, sorted and numbered.

    ``apart`` holds (rank, channel, recv peer, send peer) pairs never to share one.
    """
    n = alg.num_ranks
    peers: list[set[tuple[int, str, int]]] = [set() for _ in range(n)]
    forwards: Counter[tuple[int, int, int, int]] = Counter()
    for j, t in enumerate(alg.transfers):
        peers[t.src].add((t.channel, "s", t.dst))
        peers[t.dst].add((t.channel, "r", t.src))
        k = flow.sent[j].producer
        if k is not None and alg.transfers[k].channel == t.channel:
            forwards[(t.src, t.channel, alg.transfers[k].src, t.dst)] += 1
    for pair in apart:
        forwards.pop(pair, None)
    result = []
    for r in range(n):
        chans = sorted({ch for ch, _, _ in peers[r]})
        for compact in (False, True):
            tbs = [tb for ch in chans for tb in _channel_tbs(r, ch, peers[r], forwards, n, compact)]
            if len(tbs) <= MAX_TBS:
                break
        tbs.sort(key=lambda tb: (tb.chan, tb.send if tb.send >= 0 else n,
                                 tb.recv if tb.recv >= 0 else n))
        for i, tb in enumerate(tbs):
            tb.id = i
        result.append(tbs)
    return result


def _channel_tbs(r: int, ch: int, peers: set, forwards: Counter, n: int,
                 compact: bool) -> list[TB]:
    recvs = sorted(p for c, kind, p in peers if c == ch and kind == "r")
    sends = sorted(p for c, kind, p in peers if c == ch and kind == "s")
    graph = nx.Graph()
    graph.add_nodes_from(recvs)
    graph.add_nodes_from(n + b for b in sends)  # integer labels keep the matching deterministic
    graph.add_weighted_edges_from((a, n + b, forwards[(r, ch, a, b)]) for a in recvs
                                  for b in sends if forwards[(r, ch, a, b)])
    pair = {}
    for u, v in nx.max_weight_matching(graph):
        a, b = min(u, v), max(u, v) - n
        pair[a] = b
    if compact:  # over the runtime's threadblock limit: also share unrelated peers
        free_r = [a for a in recvs if a not in pair]
        free_s = [b for b in sends if b not in pair.values()]
        pair.update((a, a) for a in free_r if a in free_s)
        free_r = [a for a in free_r if a not in pair]
        free_s = [b for b in free_s if b not in pair.values()]
        pair.update(zip(free_r, free_s))
    paired = set(pair.values())
    return ([TB(r, b, a, ch) for a, b in pair.items()]
            + [TB(r, -1, a, ch) for a in recvs if a not in pair]
            + [TB(r, b, -1, ch) for b in sends if b not in paired])


def delayed_pairs(alg: Algorithm, flow: Flow,
                  tbs: list[list[TB]]) -> set[tuple[int, int, int, int]]:
    """Paired threadblocks whose steps would start later than the schedule says.

    For an IR with start and end times (a schedule), each step of a threadblock must be
    able to begin when the schedule says: a send at its start, a receive by its arrival.
    A fused receive-send also holds back other readers of the received value until the
    send arrives. Returns (rank, channel, recv peer, send peer) of every threadblock
    where a step would wait.
    """
    ts = alg.transfers
    slack = 1e-9 * max((t.end for t in ts), default=0.0)
    bad = set()
    for rank_tbs in tbs:
        for tb in rank_tbs:
            if tb.send < 0 or tb.recv < 0:
                continue
            done = 0.0
            for unit in tb.units:
                for op in unit:
                    if op.kind == "c":
                        continue
                    t = ts[op.transfer]
                    due = t.start if op.kind == "s" else t.end
                    if done > due + slack:
                        bad.add((tb.rank, tb.chan, tb.recv, tb.send))
                    done = max(done, t.end)
                if len(unit) == 2:
                    r, s = unit
                    if any(ts[j].start + slack < ts[s.transfer].end
                           for j in flow.made[r.transfer].readers if j != s.transfer):
                        bad.add((tb.rank, tb.chan, tb.recv, tb.send))
    return bad


def build_units(alg: Algorithm, flow: Flow, tbs: list[list[TB]]) -> tuple[list[Op], list[Op]]:
    """Create every transfer's send and receive op, order and fuse them in their threadblocks.

    Sets ``stored`` and ``sink`` of received values; returns the send and receive ops per
    transfer.
    """
    send_tb = {(tb.rank, tb.send, tb.chan): tb for rank in tbs for tb in rank if tb.send >= 0}
    recv_tb = {(tb.rank, tb.recv, tb.chan): tb for rank in tbs for tb in rank if tb.recv >= 0}
    ops: dict[TB, list[Op]] = {tb: [] for rank in tbs for tb in rank}
    send_ops, recv_ops = [], []
    for k, t in enumerate(alg.transfers):
        key = (k, 0, 0)
        s = Op("s", t.src, key, k, tb=send_tb[(t.src, t.dst, t.channel)])
        r = Op("r", t.dst, key, k, tb=recv_tb[(t.dst, t.src, t.channel)])
        ops[s.tb].append(s)
        ops[r.tb].append(r)
        send_ops.append(s)
        recv_ops.append(r)
    for tb, tb_ops in ops.items():
        tb.units = _fuse(_hoist(tb_ops, flow, recv_ops), flow, tb.id)
    return send_ops, recv_ops


def _hoist(ops: list[Op], flow: Flow, recv_ops: list[Op]) -> list[Op]:
    out: list[Op] = []
    keys: list[Key] = []
    first_free = 0  # sends may not pass the previous send
    for op in ops:
        at = len(out)
        if op.kind == "s":
            at = first_free
            producer = flow.sent[op.transfer].producer
            floor = recv_ops[producer].key if producer is not None else None
            if floor is not None:
                at = max(at, bisect_right(keys, floor))
            if at < len(out):  # copies of inputs are keyed (-1, 0, i) and go first
                left = keys[at - 1] if at else (-1, 0, 0)
                anchor = max(left[0], floor[0] if floor is not None else -1)
                op.key = (anchor, 1, left[2] + 1 if left[:2] == (anchor, 1) else 0)
            first_free = at + 1
        out.insert(at, op)
        keys.insert(at, op.key)
    return out


def _fuse(ops: list[Op], flow: Flow, tb_id: int) -> list[list[Op]]:
    """Group a receive with the send right after it that sends on the received value.

    A fused reduction is stored only if its value is read again or final (else ``rrs``);
    a stored value nobody reads again goes to the threadblock's sink.
    """
    units = []
    i = 0
    while i < len(ops):
        op = ops[i]
        unit = [op]
        if op.kind == "r":
            v = flow.made[op.transfer]
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            if nxt is not None and nxt.kind == "s" and flow.sent[nxt.transfer] is v:
                unit.append(nxt)
            needed = v.final or any(j != unit[-1].transfer for j in v.readers)
            if len(unit) == 2 and v.operand is not None:
                v.stored = needed
            if v.stored and not needed:
                v.sink = tb_id
        units.append(unit)
        i += len(unit)
    return units

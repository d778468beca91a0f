"""Stage 3 of the staged synthesizer: exact send times, merging, and steps.

With routes and per-resource orders fixed, the earliest send times are a longest-path
computation over the precedence graph (input arrival, and the previous send on every
resource), which is exactly what an LP over those constraints would give. On network
connections (high α) consecutive sends of consecutive chunks may be merged into one
transfer that pays α once; a merge is kept when it lowers the makespan.

Transfers then get steps in order of start time, a merged group sharing one step, so a
transfer's step exceeds those of the transfers it waits for and every resource's sends
keep their order.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

from ...ir.algorithm import Transfer
from ...topology.model import Topology
from .ordering import Order


@dataclass
class Schedule:
    """Merged groups of sends (indices into ``order.sends``) with their start times (s)."""

    order: Order
    groups: list[list[int]]
    start: list[float]
    makespan: float

    def transfers(self) -> list[Transfer]:
        """The IR transfers, steps following start times (ties in precedence order)."""
        sends = self.order.sends
        rank = sorted(range(len(self.groups)), key=lambda g: (self.start[g], g))
        out = []
        for step, g in enumerate(rank):
            members = self.groups[g]
            end = self.start[g] + sum(sends[i].dur for i in members) + sends[members[0]].alpha
            out += [
                Transfer(step, self.start[g], sends[i].src, sends[i].dst, c, end=end)
                for i in members
                for c in range(sends[i].chunk, sends[i].chunk + sends[i].count)
            ]
        return out


def timing(order: Order, groups: list[list[int]]) -> tuple[list[float], float] | None:
    """Earliest start of every group and the makespan; None if the groups make a cycle.

    A group takes the place of its first member on every resource it holds. A group
    waits for the arrival of the groups it takes data from and of the previous group of
    its sender on a resource (see :mod:`.ordering`), else for that group's end.
    """
    sends = order.sends
    group_of = {i: g for g, members in enumerate(groups) for i in members}
    src = [sends[m[0]].src for m in groups]
    succ: dict[int, set[int]] = defaultdict(set)
    late: set[tuple[int, int]] = set()  # (g, h): h waits for g's arrival
    for _r, seq in order.sequence.items():
        chain = list(dict.fromkeys(group_of[i] for i in seq))
        for a, b in zip(chain, chain[1:]):
            succ[a].add(b)
            if src[a] == src[b]:
                late.add((a, b))
    for i, s in enumerate(sends):
        for p in s.preds:
            if group_of[p] != group_of[i]:
                succ[group_of[p]].add(group_of[i])
                late.add((group_of[p], group_of[i]))
    indeg = [0] * len(groups)
    for g in succ:
        for h in succ[g]:
            indeg[h] += 1
    dur = [sum(sends[i].dur for i in m) for m in groups]
    alpha = [sends[m[0]].alpha for m in groups]
    start = [0.0] * len(groups)
    todo = deque(g for g in range(len(groups)) if indeg[g] == 0)
    seen = 0
    makespan = 0.0
    while todo:
        g = todo.popleft()
        seen += 1
        arrival = start[g] + dur[g] + alpha[g]
        makespan = max(makespan, arrival)
        for h in succ[g]:
            wait = arrival if (g, h) in late else start[g] + dur[g]
            start[h] = max(start[h], wait)
            indeg[h] -= 1
            if indeg[h] == 0:
                todo.append(h)
    if seen < len(groups):
        return None
    return start, makespan


def schedule(
    topology: Topology, order: Order, merge: bool = True, deadline: float | None = None
) -> Schedule:
    """Exact times for ``order``; with ``merge``, merge sends on network links.

    On the network connections whose α adds up to at least 0.1 % of the makespan,
    neighbouring groups of consecutive chunks are merged two by two (doubling the group
    size), on all those connections at once and then on each alone, as long as that
    lowers the makespan and ``time.monotonic()`` has not passed ``deadline``.
    """
    sends = order.sends
    by_start = sorted(range(len(sends)), key=lambda i: (order.start[i], i))
    groups = [[i] for i in by_start]
    first = timing(order, groups)
    assert first is not None  # one send per group, in the order's start times: no cycle
    start, best = first
    if not merge:
        return Schedule(order, groups, start, best)
    seqs = [
        seq
        for name, seq in order.sequence.items()
        if name.startswith("conn:")
        and topology.connections[(sends[seq[0]].src, sends[seq[0]].dst)].kind == "network"
        and sends[seq[0]].alpha * len(seq) >= 1e-3 * best
    ]
    for chosen in [seqs] + [[seq] for seq in seqs]:
        while chosen and (deadline is None or time.monotonic() <= deadline):
            trial = groups
            for seq in chosen:
                trial = _pair_up(sends, trial, seq) or trial
            got = None if trial is groups else timing(order, trial)
            if got is None or got[1] >= best * (1 - 1e-12):
                break
            groups, (start, best) = trial, got
    return Schedule(order, groups, start, best)


def _pair_up(sends, groups: list[list[int]], seq: list[int]) -> list[list[int]] | None:
    """``groups`` with neighbouring groups of ``seq`` merged two by two where their chunks
    are consecutive; None if no pair can merge."""
    group_of = {i: g for g, m in enumerate(groups) for i in m}
    along = list(dict.fromkeys(group_of[i] for i in seq))
    merged: dict[int, int] = {}  # absorbed group -> group it joins
    k = 0
    while k + 1 < len(along):
        a, b = groups[along[k]], groups[along[k + 1]]
        if sends[b[0]].chunk == sends[a[-1]].chunk + sends[a[-1]].count:
            merged[along[k + 1]] = along[k]
            k += 2
        else:
            k += 1
    if not merged:
        return None
    out = [list(m) for m in groups]
    for absorbed, into in merged.items():
        out[into] += out[absorbed]
    return [m for g, m in enumerate(out) if g not in merged]

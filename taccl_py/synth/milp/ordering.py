"""Stage 2 of the staged synthesizer: order the routed sends on every resource.

Greedy list scheduling (Giffler-Thompson style): take the send that could finish first;
among the sends that compete with it for a resource and could start before it finishes,
run the one with the longest remaining path (critical path first) at the earliest time
its input has arrived and all its resources are free.

Besides the topology's resources every connection is a resource of its own: one
threadblock sends on it, each send waiting for the previous one's arrival. A rank's sends
on any shared resource wait likewise (the lowering keeps their order by making each
depend on the previous one, and a send step completes when its data arrives); a send
of another rank only waits for the resource to be free (b/B).
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from dataclasses import dataclass

from ...errors import TacclError
from ...topology.graph import bfs_parents
from ...topology.model import Topology
from .routing import Routes


class TimeUp(TacclError):
    """A stage passed its deadline (see :func:`order`)."""


@dataclass(frozen=True)
class Send:
    """One hop of ``count`` consecutive chunks from ``chunk`` as one transfer; ``pred`` is
    the send that brings them to ``src``, ``also`` the further sends that bring some of
    them (a bundle of several sources' chunks waits for every one)."""

    chunk: int
    src: int
    dst: int
    pred: int | None
    resources: tuple[str, ...]
    dur: float  # seconds the topology's resources are held
    alpha: float
    count: int = 1
    also: tuple[int, ...] = ()

    @property
    def preds(self) -> tuple[int, ...]:
        """Every send this one waits for (``pred`` first)."""
        return self.also if self.pred is None else (self.pred, *self.also)

    @property
    def conn(self) -> str:
        return f"conn:{self.src}->{self.dst}"


@dataclass
class Order:
    """Per resource, the indices of the sends on it in order; ``start`` per send (s)."""

    sends: list[Send]
    sequence: dict[str, list[int]]
    start: list[float]

    @property
    def makespan(self) -> float:
        return max((self.start[i] + s.dur + s.alpha for i, s in enumerate(self.sends)), default=0.0)


def make_sends(topology: Topology, routes: Routes) -> list[Send]:
    """The sends of ``routes``, each chunk's in breadth-first order from its source."""
    coll, b = routes.collective, routes.chunk_bytes
    sends: list[Send] = []
    for c in sorted(routes.edges):
        src = coll.precondition(c)[0]
        into: dict[int, int] = {}  # rank -> index of the send that brings it the chunk
        for v, u in bfs_parents(sorted(routes.edges[c]), src).items():
            if u is None:
                continue
            conn = topology.connections[(u, v)]
            sends.append(
                Send(
                    c,
                    u,
                    v,
                    into.get(u),
                    (*conn.resources, f"conn:{u}->{v}"),
                    b / topology.bandwidth(conn),
                    conn.alpha,
                )
            )
            into[v] = len(sends) - 1
    return sends


def remaining(sends: list[Send]) -> list[float]:
    """Longest path (s) from each send's start to the end of its chunk's subtree."""
    rest = [s.dur + s.alpha for s in sends]
    for i in range(len(sends) - 1, -1, -1):  # children follow their parents
        for p in sends[i].preds:
            rest[p] = max(rest[p], sends[p].dur + sends[p].alpha + rest[i])
    return rest


def descendants(sends: list[Send]) -> list[float]:
    """How many sends wait (directly or not) for each send's chunk to arrive."""
    count = [0.0] * len(sends)
    for i in range(len(sends) - 1, -1, -1):  # children follow their parents
        for p in sends[i].preds:
            count[p] += count[i] + 1
    return count


def order(
    sends: list[Send],
    *,
    own_data_first: bool = False,
    prio: list | None = None,
    deadline: float | None = None,
    senders_only: bool = False,
) -> Order:
    """List-schedule ``sends``: critical path first, each at its earliest feasible time.

    ``prio`` replaces the critical path (:func:`remaining`) as the priority of each send.

    With ``own_data_first`` (a sketch hint), among competing sends a rank's own chunks
    (sends from the chunk's source) go before the chunks it relays, then critical path.
    Raises TimeUp once ``time.monotonic()`` passes ``deadline``.

    With ``senders_only``, priorities only order each sender's own sends: among the
    senders competing for a resource (a receiving NIC), the one whose send is ready first
    goes first, as a runtime arbitrates them (no plan can order two GPUs' sends into one
    NIC).
    """
    prio = remaining(sends) if prio is None else prio
    children = defaultdict(list)
    waits = [len(s.preds) for s in sends]  # preds not yet placed
    for i, s in enumerate(sends):
        for p in s.preds:
            children[p].append(i)
    ready = {i: 0.0 for i, s in enumerate(sends) if not waits[i]}
    last: dict[str, tuple[int, float, float]] = {}  # resource -> (rank, end, arrival)
    sequence: dict[str, list[int]] = defaultdict(list)
    start = [0.0] * len(sends)
    waiting: dict[str, set[int]] = defaultdict(set)  # resource -> ready sends needing it
    est: dict[int, float] = {}
    finishes: list[tuple[float, int]] = []  # heap of (est + dur, send); stale entries skipped

    def free(i: int) -> float:
        """When every resource of send ``i`` is free for it: the end of the last send on
        it, or that send's arrival if it is from the same rank."""
        src, t = sends[i].src, 0.0
        for r in sends[i].resources:
            if r in last:
                rank, end, arrival = last[r]
                t = max(t, arrival if rank == src else end)
        return t

    def set_est(i: int, t: float) -> None:
        est[i] = t
        heapq.heappush(finishes, (t + sends[i].dur, i))

    def arrive(i: int) -> None:
        set_est(i, max(ready[i], free(i)))
        for r in sends[i].resources:
            waiting[r].add(i)

    for i in ready:
        arrive(i)
    picked = 0
    while est:
        picked += 1
        if deadline is not None and picked % 64 == 0 and time.monotonic() > deadline:
            raise TimeUp(f"ordering {len(sends)} sends passed the time limit")
        while True:  # the send that could finish first
            finish, a = finishes[0]
            if a in est and est[a] + sends[a].dur == finish:
                break
            heapq.heappop(finishes)
        rivals = {i for r in sends[a].resources for i in waiting[r] if est[i] < finish}
        if senders_only:
            pick = _first_ready_sender(sends, rivals, prio, est)
        else:
            pick = max(
                rivals,
                key=lambda i: (own_data_first and sends[i].pred is None, prio[i], -est[i], -i),
            )
        s = sends[pick]
        t = start[pick] = est.pop(pick)
        del ready[pick]
        touched = set()
        for r in s.resources:
            last[r] = (s.src, t + s.dur, t + s.dur + s.alpha)
            sequence[r].append(pick)
            waiting[r].discard(pick)
            touched |= waiting[r]
        for i in touched:
            later = max(est[i], free(i))
            if later != est[i]:
                set_est(i, later)
        for j in children[pick]:
            waits[j] -= 1
            ready[j] = max(ready.get(j, 0.0), t + s.dur + s.alpha)
            if not waits[j]:
                arrive(j)
    return Order(sends, dict(sequence), start)


def _first_ready_sender(sends: list[Send], rivals: set[int], prio, est: dict) -> int:
    """Each sender's highest-priority rival, then the first ready of those."""
    best: dict[int, tuple[tuple, int]] = {}
    for i in rivals:
        key = (prio[i], -est[i], -i)
        if sends[i].src not in best or key > best[sends[i].src][0]:
            best[sends[i].src] = (key, i)
    return min((est[i], -prio[i], i) for _, i in best.values())[2]

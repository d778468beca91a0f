"""NCCL-like double-binary-tree AllReduce baseline.

Two complementary binary trees span the ranks (NCCL's ``ncclGetDtree``): tree A is the
in-order binary tree over positions 0..N-1 (position 0 is the root with one child, odd
positions are leaves); tree B is tree A mirrored (position p -> N-1-p) for even N, shifted
by one position for odd N. For even N every rank is an interior node of at most one tree,
so the two trees share the ranks' send bandwidth evenly.

Positions are mapped to ranks by a small search for an embedding in which every tree
edge is a connection of the topology in both directions (starting from the ring order, so
that nodes stay together). Where the search finds none, the ring order is used and tree
edges without a connection are relayed over shortest routes.

Chunk ``c`` goes over tree ``c % 2`` (with chunk-up 1 that is block parity, with even
chunk-up it is the sub-chunk's parity), tree A on channel 0 and tree B on channel 1. Each
chunk is reduced up its tree (a node sends its partial sum once all its children's have
arrived, the parent reducing it into its own) and the root's total is then broadcast down.
Chunks are independent and share step numbers, so they pipeline.

A relay forwards a partial sum unchanged (it stores it in its own slot of the chunk, then
sends it on), which is only safe once the relay has sent its own partial sum up and before
it receives the final value; the schedule keeps to that, and relays one partial at a time.
"""

from __future__ import annotations

from collections import deque

from ..collectives import ALLREDUCE, Collective
from ..errors import TacclError, TopologyError
from ..topology.model import Topology
from .ir import Algorithm, Transfer
from .ring import find_ring
from .routes import require_ranks

#: nodes the embedding search may visit before it falls back to relays
SEARCH_BUDGET = 50000


def btree_parent(n: int, pos: int) -> int:
    """Parent position of ``pos`` in NCCL's in-order binary tree over ``n`` positions (-1: root)."""
    if pos == 0:
        return -1
    bit = pos & -pos
    up = (pos ^ bit) | (bit << 1)
    return up if up < n else pos ^ bit


def dtree_parents(n: int) -> tuple[list[int], list[int]]:
    """Parent positions of the two complementary trees (NCCL's double binary tree)."""
    a = [btree_parent(n, p) for p in range(n)]
    if n % 2 == 0:  # mirror
        b = [-1 if a[n - 1 - p] < 0 else n - 1 - a[n - 1 - p] for p in range(n)]
    else:  # shift by one
        b = [-1 if a[(p - 1) % n] < 0 else (a[(p - 1) % n] + 1) % n for p in range(n)]
    return a, b


def _embed(topology: Topology, trees: tuple[list[int], ...], start: list[int],
           same_node: bool) -> list[int] | None:
    """Positions -> ranks so that every tree edge is a two-way connection, or None.

    With ``same_node`` position p may only go to a rank on the node of ``start[p]``.
    """
    n = len(start)
    conns = topology.connections
    nbrs: dict[int, set[int]] = {p: set() for p in range(n)}
    for parent in trees:
        for p, q in enumerate(parent):
            if q >= 0:
                nbrs[p].add(q)
                nbrs[q].add(p)
    order, seen = [], {0}
    todo = deque([0])
    while todo:
        p = todo.popleft()
        order.append(p)
        for q in sorted(nbrs[p]):
            if q not in seen:
                seen.add(q)
                todo.append(q)
    order += [p for p in range(n) if p not in seen]
    if same_node:  # one node after another, so that a dead end backtracks within its node
        order.sort(key=lambda p: topology.node_of(start[p]))
    start_index = {r: i for i, r in enumerate(start)}

    def preference(pos: int) -> list[int]:
        home = start[pos]
        ranks = [r for r in range(n) if not same_node
                 or topology.node_of(r) == topology.node_of(home)]
        return sorted(ranks, key=lambda r: (topology.node_of(r) != topology.node_of(home),
                                                abs(start_index[r] - pos), r))

    prefs = {p: preference(p) for p in range(n)}
    rank_of: dict[int, int] = {}
    used: set[int] = set()
    budget = [SEARCH_BUDGET]

    def place(i: int) -> bool:
        if i == n:
            return True
        pos = order[i]
        for r in prefs[pos]:
            if r in used:
                continue
            budget[0] -= 1
            if budget[0] < 0:
                return False
            if all((r, rank_of[q]) in conns and (rank_of[q], r) in conns
                   for q in nbrs[pos] if q in rank_of):
                rank_of[pos] = r
                used.add(r)
                if place(i + 1):
                    return True
                del rank_of[pos]
                used.discard(r)
        return False

    return [rank_of[p] for p in range(n)] if place(0) else None


def _shortest(topology: Topology, src: int, dst: int, allowed) -> tuple[int, ...] | None:
    """Fewest-hop route src -> dst whose intermediate ranks all satisfy ``allowed``."""
    prev = {src: src}
    todo = deque([src])
    while todo:
        u = todo.popleft()
        if u == dst:
            route = [dst]
            while route[-1] != src:
                route.append(prev[route[-1]])
            return tuple(reversed(route))
        for v in range(topology.num_ranks):
            if v not in prev and (u, v) in topology.connections and (v == dst or allowed(v)):
                prev[v] = u
                todo.append(v)
    return None


def tree_schedule(topology: Topology, parent: list[int]) -> list[tuple[int, int, int, bool]]:
    """(step, src, dst, reduce) of one chunk: reduce up rank tree ``parent``, then broadcast."""
    n = len(parent)
    root = parent.index(-1)
    children: dict[int, list[int]] = {r: [] for r in range(n)}
    for r, p in enumerate(parent):
        if p >= 0:
            children[p].append(r)

    def ancestors(r: int) -> set[int]:
        out = set()
        while r >= 0:
            out.add(r)
            r = parent[r]
        return out

    out: list[tuple[int, int, int, bool]] = []
    # -- reduce phase --------------------------------------------------------
    arrived: dict[int, int] = {}  # rank -> step its partial reached its parent
    sent: dict[int, int] = {}  # rank -> step it sent its own partial up
    busy: dict[int, int] = {}  # relay -> last step it forwarded a partial
    pending = set(r for r in range(n) if r != root)
    while pending:
        ready = sorted((max((arrived[c] + 1 for c in children[r]), default=0), r)
                       for r in pending if all(c in arrived for c in children[r]))
        progressed = False
        for at, r in ready:
            p = parent[r]
            banned = ancestors(p)
            route = _shortest(topology, r, p, lambda x: x in sent and x not in banned)
            if route is None:
                continue
            step = at
            for i in range(len(route) - 1):
                a, b = route[i], route[i + 1]
                if b != p:  # b relays: it must have sent its own partial, and be free
                    step = max(step, sent[b] + 1, busy.get(b, -1) + 1)
                out.append((step, a, b, b == p))
                if i == 0:
                    sent[r] = step
                else:
                    busy[a] = step
                step += 1
            arrived[r] = step - 1
            pending.discard(r)
            progressed = True
            break  # recompute readiness: relays may have become available
        if not progressed:
            raise TacclError(f"{topology.label}: no relay schedule for the reduction tree "
                             f"{parent}")
    # -- broadcast phase -----------------------------------------------------
    have = {root: max((arrived[c] + 1 for c in children[root]), default=0)}
    for r in _top_down(root, children):
        if r == root:
            continue
        p = parent[r]
        route = _shortest(topology, p, r, lambda x: True)
        if route is None:
            raise TopologyError(f"{topology.label}: rank {p} cannot reach rank {r}")
        step = have[p]
        for a, b in zip(route, route[1:]):
            step = max(step, have.get(a, step))
            out.append((step, a, b, False))
            have[b] = min(have.get(b, step + 1), step + 1)
            step += 1
    return out


def _top_down(root: int, children: dict[int, list[int]]) -> list[int]:
    order, todo = [], deque([root])
    while todo:
        r = todo.popleft()
        order.append(r)
        todo.extend(sorted(children[r]))
    return order


def tree_algorithm(topology: Topology, collective: Collective) -> Algorithm:
    """The double-binary-tree AllReduce of ``collective`` on ``topology``."""
    if collective.kind != ALLREDUCE:
        raise TacclError("method tree builds allreduce only")
    require_ranks(topology, collective)
    n = collective.num_ranks
    if n == 1:
        return Algorithm("tree", collective, [], topology.label,
                         meta={"trees": [[-1], [-1]], "order": [0]})
    try:
        start = find_ring(topology)
    except TopologyError:
        start = list(range(n))
    pos_trees = dtree_parents(n)
    order = _embed(topology, pos_trees, start, True) or _embed(topology, pos_trees, start, False)
    relayed = order is None
    if order is None:
        order = start
    trees = []
    for pos_parent in pos_trees:
        parent = [-1] * n
        for p, q in enumerate(pos_parent):
            parent[order[p]] = -1 if q < 0 else order[q]
        trees.append(parent)
    schedules = [tree_schedule(topology, parent) for parent in trees]
    transfers = [Transfer(step, 0.0, src, dst, c, reduce, channel=c % 2)
                 for c in range(collective.num_chunks)
                 for step, src, dst, reduce in schedules[c % 2]]
    return Algorithm("tree", collective, transfers, topology.label,
                     meta={"trees": trees, "order": order, "relayed": relayed})

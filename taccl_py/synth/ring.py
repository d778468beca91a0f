"""NCCL-like ring baseline: the best Hamiltonian ring of a topology and the ring schedules.

A ring visits the nodes one after another. Inside a node it follows a Hamiltonian path
over the node's own connections (NVLink, xGMI, switch) from an entry GPU to an exit GPU;
from the exit GPU it crosses the network to the next node's entry GPU. Such a ring crosses
the network once per node, the fewest possible. Among all of them :func:`find_ring` picks,
in order of priority: the highest bottleneck bandwidth; the highest intra-node bottleneck;
the fewest nodes whose entry and exit GPUs share a NIC; the lowest total α; the
lexicographically smallest rank order (which starts at node 0's entry GPU).

Intra-node paths come from an exact bitmask DP over a node's GPUs (at most 16 unless the
node is uniformly all-to-all, where any order is as good and the sorted one is taken).
"""

from __future__ import annotations

import numpy as np

from ..collectives import ALLGATHER, ALLREDUCE, ALLTOALL, REDUCESCATTER, Collective
from ..errors import TopologyError
from ..topology.model import Topology
from .ir import Algorithm, Transfer
from .routes import require_ranks

_MAX_DP_GPUS = 16
_INF = 1 << 50  # "no edge" / "no path" in the integer-picosecond DP tables

Path = tuple[int, ...]


def _ps(alpha: float) -> int:
    """α in integer picoseconds, so that sums compare exactly."""
    return round(alpha * 1e12)


def _connected(adjacent: np.ndarray) -> bool:
    """Whether the graph of boolean matrix ``adjacent`` is connected, ignoring direction."""
    seen, todo = {0}, [0]
    while todo:
        v = todo.pop()
        for u in np.flatnonzero(adjacent[v] | adjacent[:, v]):
            if int(u) not in seen:
                seen.add(int(u))
                todo.append(int(u))
    return len(seen) == len(adjacent)


class _NodePaths:
    """Best Hamiltonian paths through the GPUs of one node, by bandwidth floor."""

    def __init__(self, topology: Topology) -> None:
        g = topology.gpus_per_node
        self.topology = topology
        self.g = g
        self.bw = np.zeros((g, g))
        self.alpha = np.full((g, g), _INF, dtype=np.int64)
        for a in range(g):
            for b in range(g):
                conn = topology.connections.get((a, b))
                if conn is not None:
                    self.bw[a, b] = topology.bandwidth(conn)
                    self.alpha[a, b] = _ps(conn.alpha)
        self._cache: dict[bytes, dict[tuple[int, int], tuple[int, Path]]] = {}

    def bandwidths(self) -> list[float]:
        """Distinct intra-node connection bandwidths, highest first."""
        return sorted({float(b) for b in self.bw.flat if b > 0}, reverse=True)

    def paths(self, floor: float) -> dict[tuple[int, int], tuple[int, Path]]:
        """(entry, exit) -> (α in ps, local order) of the best path using bandwidths >= floor.

        Best means lowest total α, then lexicographically smallest order; pairs without a
        Hamiltonian path are absent.
        """
        w = np.where(self.bw >= floor, self.alpha, _INF)
        key = w.tobytes()
        if key not in self._cache:
            self._cache[key] = self._solve(w)
        return self._cache[key]

    def _solve(self, w: np.ndarray) -> dict[tuple[int, int], tuple[int, Path]]:
        g = self.g
        if g == 1:
            return {(0, 0): (0, (0,))}
        off = w[~np.eye(g, dtype=bool)]
        if (off == off[0]).all() and off[0] < _INF:
            # uniform all-to-all node: every order costs the same; take the sorted one
            cost = int(off[0]) * (g - 1)
            return {(e, x): (cost, (e, *(v for v in range(g) if v not in (e, x)), x))
                    for e in range(g) for x in range(g) if e != x}
        if not _connected(w < _INF):
            return {}
        if g > _MAX_DP_GPUS:
            raise TopologyError(
                f"{self.topology.label}: ring search handles at most {_MAX_DP_GPUS} GPUs per "
                "node unless they are uniformly all-to-all; give the ring order explicitly")
        out: dict[tuple[int, int], tuple[int, Path]] = {}
        for x in range(g):
            rest = self._completion(w, x)
            for e in range(g):
                if e != x and rest[1 << e, e] < _INF:
                    out[(e, x)] = (int(rest[1 << e, e]), self._walk(w, rest, e))
        return out

    def _completion(self, w: np.ndarray, exit_gpu: int) -> np.ndarray:
        """rest[mask, v]: least α from v through every GPU outside ``mask`` to ``exit_gpu``."""
        g = self.g
        masks = np.arange(1 << g)
        popcount = sum((masks >> b) & 1 for b in range(g))
        rest = np.full((1 << g, g), _INF, dtype=np.int64)
        rest[(1 << g) - 1, exit_gpu] = 0
        for size in range(g - 1, 0, -1):
            layer = masks[popcount == size]
            for u in range(g):
                sel = layer[(layer >> u) & 1 == 0]
                via_u = np.minimum(w[:, u][None, :] + rest[sel | (1 << u), u][:, None], _INF)
                rest[sel] = np.minimum(rest[sel], via_u)
        return rest

    def _walk(self, w: np.ndarray, rest: np.ndarray, entry: int) -> Path:
        """The lexicographically smallest least-α path from ``entry`` that ``rest`` allows."""
        full = (1 << self.g) - 1
        path, mask, v = [entry], 1 << entry, entry
        while mask != full:
            v = next(u for u in range(self.g) if not mask >> u & 1 and w[v, u] < _INF
                     and w[v, u] + rest[mask | 1 << u, u] == rest[mask, v])
            path.append(v)
            mask |= 1 << v
        return tuple(path)


def _best_ring(topology: Topology, node: _NodePaths, intra_floor: float,
               hop_floor: float) -> tuple[int, int, Path] | None:
    """(shared-NIC nodes, α in ps, order) of the best ring, or None.

    Paths inside nodes use bandwidths >= ``intra_floor``; the hops from node i's exit GPU
    to node i+1's entry GPU (a network hop, or the closing hop of a one-node ring) use
    bandwidths >= ``hop_floor``.
    """
    g, k = topology.gpus_per_node, topology.nodes
    legs: dict[int, list[tuple[int, int, int, Path]]] = {}
    for (e, x), (alpha, path) in node.paths(intra_floor).items():
        nic_e, nic_x = topology.nic_of(e), topology.nic_of(x)
        shared = int(k > 1 and e != x and nic_e is not None and nic_e == nic_x)
        legs.setdefault(e, []).append((x, shared, alpha, path))
    # hops[i][x]: (entry GPU of node i+1, α in ps) reachable from node i's GPU x
    hops: list[dict[int, list[tuple[int, int]]]] = []
    for i in range(k):
        base, next_base = i * g, (i + 1) % k * g
        table: dict[int, list[tuple[int, int]]] = {}
        for x in range(g):
            for e2 in range(g):
                conn = topology.connections.get((base + x, next_base + e2))
                if conn is not None and topology.bandwidth(conn) >= hop_floor:
                    table.setdefault(x, []).append((e2, _ps(conn.alpha)))
        hops.append(table)
    best = None
    for first in ([0] if k == 1 else range(g)):
        # Forward DP over the nodes. A state is the entry GPU of the next node, holding
        # (shared, alpha, rank, trail): rank orders the states' rank sequences so far
        # lexicographically, trail is (previous trail, node, local path).
        states: dict[int, tuple] = {first: (0, 0, 0, None)}
        for i in range(k):
            new: dict[int, tuple] = {}
            for e, (shared, alpha, rank, trail) in states.items():
                for x, leg_shared, leg_alpha, path in legs.get(e, ()):
                    for e2, hop_alpha in hops[i].get(x, ()):
                        if i == k - 1 and e2 != first:
                            continue
                        cand = (shared + leg_shared, alpha + leg_alpha + hop_alpha, rank, path,
                                (trail, i, path))
                        old = new.get(e2)
                        if old is None or cand[:4] < old[:4]:
                            new[e2] = cand
            ranks = {key: r for r, key in enumerate(sorted({v[2:4] for v in new.values()}))}
            states = {e2: (v[0], v[1], ranks[v[2:4]], v[4]) for e2, v in new.items()}
        if first in states:
            shared, alpha, _, trail = states[first]
            cand = (shared, alpha, _unwind(trail, g))
            if best is None or cand < best:
                best = cand
    return best


def _unwind(trail: tuple | None, g: int) -> Path:
    """The rank order a DP trail stands for."""
    parts = []
    while trail is not None:
        trail, i, path = trail
        parts.append(tuple(i * g + v for v in path))
    return sum(reversed(parts), ())


def _no_ring_reason(topology: Topology, node: _NodePaths) -> str:
    g = topology.gpus_per_node
    if topology.nodes > 1 and all(topology.nic_of(r) is None for r in range(g)):
        return "node has no NIC"
    if topology.nodes == 1:
        return "no cycle through all GPUs of the node"
    if not node.paths(0.0):
        return "no path through all GPUs of a node"
    return ("no GPUs that start and end a path through a node can be joined to the next "
            "node over the network")


def find_ring(topology: Topology) -> list[int]:
    """The best NCCL-like Hamiltonian ring over ``topology``'s one-hop connections.

    Raises TopologyError (saying why) when the topology has no such ring.
    """
    if topology.num_ranks == 1:
        return [0]
    node = _NodePaths(topology)
    floors = sorted({topology.bandwidth(c) for c in topology.connections.values()}, reverse=True)
    for bottleneck in floors:
        ring = _best_ring(topology, node, bottleneck, bottleneck)
        if ring is not None:
            break
    else:
        raise TopologyError(
            f"{topology.label}: no Hamiltonian ring: {_no_ring_reason(topology, node)}")
    if topology.nodes > 1:
        for intra in node.bandwidths():
            if intra <= bottleneck or node.paths(intra) is node.paths(bottleneck):
                break
            better = _best_ring(topology, node, intra, bottleneck)
            if better is not None:
                ring = better
                break
    order = list(ring[2])
    check_ring(topology, order)  # guards against nodes that are not identical after all
    return order


def check_ring(topology: Topology, order: list[int]) -> list[int]:
    """Validate a user-given ring order; return it as a list of ints."""
    ring = [int(r) for r in order]
    n = topology.num_ranks
    if sorted(ring) != list(range(n)):
        shown = ",".join(map(str, ring[:16])) + (",..." if len(ring) > 16 else "")
        raise TopologyError(f"ring order {shown} ({len(ring)} ranks) is not a permutation "
                            f"of the {n} ranks of {topology.label}")
    if n > 1:
        for a, b in zip(ring, ring[1:] + ring[:1]):
            if (a, b) not in topology.connections:
                raise TopologyError(
                    f"ring order needs rank {a} -> rank {b}, which {topology.label} "
                    "has no link for")
    return ring


def ring_bottleneck(topology: Topology, order: list[int]) -> float:
    """The lowest bandwidth of the ring's hops (inf for a single rank)."""
    if len(order) < 2:
        return float("inf")
    return min(topology.bandwidth(topology.connection(a, b))
               for a, b in zip(order, order[1:] + order[:1]))


def ring_algorithm(topology: Topology, collective: Collective,
                   order: list[int] | None = None) -> Algorithm:
    """The classic ring schedule of ``collective`` on ``order`` (default: :func:`find_ring`).

    With chunk-up k the ring runs k rounds one after another (NCCL's pipelining loop), round
    j moving sub-chunk j of every block; at each step of a round every rank forwards what it
    received at the previous step.

    * AllGather: a block travels N-1 hops from its owner.
    * ReduceScatter: the block of ring position p starts at p+1 and its partial sum travels
      N-1 hops (each a reduction) to p.
    * AllReduce: that ReduceScatter, then an AllGather of each block from the rank that
      finished its reduction (2(N-1) steps per round).
    * AllToAll: chunk (s, d) is relayed forward along the ring from s to d.
    """
    require_ranks(topology, collective)
    ring = find_ring(topology) if order is None else check_ring(topology, order)
    n, k, kind = collective.num_ranks, collective.chunkup, collective.kind
    pos = {r: i for i, r in enumerate(ring)}
    hops = n - 1
    transfers: list[Transfer] = []

    def send(step: int, from_pos: int, chunk: int, reduce: bool = False) -> None:
        transfers.append(Transfer(step, 0.0, ring[from_pos % n], ring[(from_pos + 1) % n],
                                  chunk, reduce))

    for j in range(k):
        if kind == ALLTOALL:
            for s in range(n):
                for d in range(n):
                    for h in range((pos[d] - pos[s]) % n):
                        send(j * hops + h, pos[s] + h, (s * n + d) * k + j)
            continue
        base = j * hops * (2 if kind == ALLREDUCE else 1)
        for b in range(n):
            p, chunk = pos[b], b * k + j
            if kind in (REDUCESCATTER, ALLREDUCE):
                for h in range(hops):
                    send(base + h, p + 1 + h, chunk, True)
            if kind in (ALLGATHER, ALLREDUCE):
                start = base + (hops if kind == ALLREDUCE else 0)
                for h in range(hops):
                    send(start + h, p + h, chunk)
    return Algorithm("ring", collective, transfers, topology.label, meta={"ring": ring})

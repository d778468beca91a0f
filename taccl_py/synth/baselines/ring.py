"""NCCL's ring baseline: ring channels over a topology's real links and the ring schedules.

:func:`find_rings` builds NCCL's ring channels (several rings, spread over every NIC
rail); :func:`ring_algorithm` runs one ring per channel with the data split evenly.

A ring visits the nodes one after another. Inside a node it follows a Hamiltonian path
over the node's own connections (NVLink, xGMI, switch) from an entry GPU to an exit GPU;
from the exit GPU it crosses the network to the next node's entry GPU. Such a ring crosses
the network once per node, the fewest possible. Among all of them :func:`find_ring` picks
the best single ring (where no set of ring channels fits), in order of priority: the highest
bottleneck bandwidth; the highest intra-node bottleneck; the fewest nodes whose entry and
exit GPUs share a NIC; the lowest total α; the lexicographically smallest rank order
(which starts at node 0's entry GPU). Its intra-node paths come from an exact bitmask DP
over a node's GPUs (at most 16 unless the node is uniformly all-to-all, where any order
is as good and the sorted one is taken).
"""

from __future__ import annotations

import numpy as np

from ...collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    SCATTER,
    Collective,
)
from ...errors import TopologyError
from ...ir.algorithm import Algorithm, Transfer
from ...topology.graph import distances
from ...topology.model import Topology
from ..checks import require_ranks

_MAX_DP_GPUS = 16
_INF = 1 << 50  # "no edge" / "no path" in the integer-picosecond DP tables

Path = tuple[int, ...]


def _ps(alpha: float) -> int:
    """α in integer picoseconds, so that sums compare exactly."""
    return round(alpha * 1e12)


def _connected(adjacent: np.ndarray) -> bool:
    """Whether the graph of boolean matrix ``adjacent`` is connected, ignoring direction."""
    us, vs = np.nonzero(adjacent | adjacent.T)
    return len(distances(zip(us.tolist(), vs.tolist()), 0)) == len(adjacent)


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
            return {
                (e, x): (cost, (e, *(v for v in range(g) if v not in (e, x)), x))
                for e in range(g)
                for x in range(g)
                if e != x
            }
        if not _connected(w < _INF):
            return {}
        if g > _MAX_DP_GPUS:
            raise TopologyError(
                f"{self.topology.label}: ring search handles at most {_MAX_DP_GPUS} GPUs per "
                "node unless they are uniformly all-to-all; give the ring order explicitly"
            )
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
            v = next(
                u
                for u in range(self.g)
                if not mask >> u & 1
                and w[v, u] < _INF
                and w[v, u] + rest[mask | 1 << u, u] == rest[mask, v]
            )
            path.append(v)
            mask |= 1 << v
        return tuple(path)


def _best_ring(
    topology: Topology, node: _NodePaths, intra_floor: float, hop_floor: float
) -> tuple[int, int, Path] | None:
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
    for first in [0] if k == 1 else range(g):
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
                        cand = (
                            shared + leg_shared,
                            alpha + leg_alpha + hop_alpha,
                            rank,
                            path,
                            (trail, i, path),
                        )
                        old = new.get(e2)
                        if old is None or cand[:4] < old[:4]:
                            new[e2] = cand
            ranks = {key: r for r, key in enumerate(sorted({v[2:4] for v in new.values()}))}
            states = {e2: (v[0], v[1], ranks[v[2:4]], v[4]) for e2, v in new.items()}
        if first in states:
            shared, alpha, _, trail = states[first]
            ring = (shared, alpha, _unwind(trail, g))
            if best is None or ring < best:
                best = ring
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
    return (
        "no GPUs that start and end a path through a node can be joined to the next "
        "node over the network"
    )


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
            f"{topology.label}: no Hamiltonian ring: {_no_ring_reason(topology, node)}"
        )
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
        raise TopologyError(
            f"ring order {shown} ({len(ring)} ranks) is not a permutation "
            f"of the {n} ranks of {topology.label}"
        )
    if n > 1:
        for a, b in zip(ring, ring[1:] + ring[:1]):
            if (a, b) not in topology.connections:
                raise TopologyError(
                    f"ring order needs rank {a} -> rank {b}, which {topology.label} has no link for"
                )
    return ring


def ring_bottleneck(topology: Topology, order: list[int]) -> float:
    """The lowest bandwidth of the ring's hops (inf for a single rank)."""
    if len(order) < 2:
        return float("inf")
    return min(
        topology.bandwidth(topology.connection(a, b)) for a, b in zip(order, order[1:] + order[:1])
    )


# -- NCCL's ring channels ----------------------------------------------------------------

#: most ring channels :func:`find_rings` builds (NCCL allows MAXCHANNELS / 2 = 32; 16
#: leaves room for ``--instances 2`` within MSCCL's 32 channels)
MAX_RINGS = 16
#: search nodes one speed's channel search may visit (NCCL's NCCL_SEARCH_TIMEOUT, 2^14)
SEARCH_BUDGET = 1 << 14


class _SearchTimeout(Exception):
    pass


class _Fabric:
    """Node 0 as NCCL's ring search sees it: its GPUs, NICs, connections and the
    bandwidth left on every resource (``rem``) while channels are being placed."""

    def __init__(self, topology: Topology) -> None:
        g = self.g = topology.gpus_per_node
        self.multi = topology.nodes > 1
        self.res: dict[tuple[int, int], tuple[str, ...]] = {}
        bw: dict[tuple[int, int], float] = {}
        for (a, b), conn in topology.connections.items():
            if a < g and b < g:
                self.res[(a, b)] = conn.resources
                bw[(a, b)] = topology.bandwidth(conn)
        self.cap = topology.resource_bandwidth
        # the NIC of every GPU that has one
        self.nic = {v: nic for v in range(g) if (nic := topology.nic_of(v)) is not None}
        self.nics = sorted(set(self.nic.values()), key=lambda n: (n.rail, n.name))
        switched = len(self.res) == g * (g - 1) and all(
            topology.connections[k].kind == "switch" for k in self.res
        )
        # NCCL's ncclTopoSearchNextGpuSort: highest bandwidth first, then the GPUs after u in
        # index order; behind one NVSwitch only u's neighbours u+1 and u-1
        self.next = {}
        for u in range(g):
            if switched:
                self.next[u] = list(dict.fromkeys(v % g for v in (u + 1, u - 1) if v % g != u))
            else:
                self.next[u] = sorted(
                    (v for v in range(g) if (u, v) in self.res),
                    key=lambda v: (-bw[(u, v)], (v - u) % g),
                )

    def speeds(self) -> list[float]:
        """Per-channel bandwidths worth trying: every resource's bandwidth / m, highest first."""
        return sorted(
            {c / m for c in self.cap.values() for m in range(1, MAX_RINGS + 1)}, reverse=True
        )

    def most(self, speed: float) -> int:
        """An upper bound on the channels that fit at ``speed``: with several nodes each
        enters on a NIC; on one node each leaves every GPU on the first resource of one of
        the GPU's connections."""

        def fit(res) -> int:
            return sum(int(self.cap[r] / speed * (1 + 1e-9)) for r in set(res))

        if self.multi:
            return min(MAX_RINGS, fit(f"nicin:{n.name}" for n in self.nics))
        return min(
            MAX_RINGS, *(fit(self.res[(u, v)][0] for v in self.next[u]) for u in range(self.g))
        )

    def search(self, speed: float, cross: bool) -> list[Path]:
        """The most node paths (≤ MAX_RINGS rings) that fit when each takes ``speed`` from
        every resource it uses; a depth-first search over whole sets of paths, as NCCL's.

        A path goes through all of the node's GPUs. With several nodes it enters on its
        first GPU's NIC and leaves on its last GPU's: the same NIC unless ``cross``, where
        paths come in pairs, the second entering on the NIC the first leaves on and leaving
        on the one it enters on (NCCL's crossNic=2); a ring takes the first on even nodes
        and the second on odd ones, so the two use separate resources. On one node a path
        closes into a cycle.
        """
        g, nics = self.g, self.nics
        rems = [dict(self.cap), dict(self.cap)]  # resources left on even and odd nodes
        eps = speed * 1e-9
        chans: list[Path] = []
        best: list[Path] = []
        left = [SEARCH_BUDGET]
        limit = MAX_RINGS * (2 if cross else 1)

        def fits(res) -> bool:
            rem = rems[cross and len(chans) % 2]
            return all(rem[r] >= speed - eps for r in res)

        def take(res, sign: int) -> None:
            rem = rems[cross and len(chans) % 2]
            for r in res:
                rem[r] -= sign * speed

        def ends(entry: int, exit_: int) -> tuple[str, ...]:
            if self.multi:
                return (f"nicin:{self.nic[entry].name}", f"nicout:{self.nic[exit_].name}")
            return self.res.get((exit_, entry), ("-",)) if g > 1 else ()

        def candidates(n: int):
            if not self.multi:
                yield 0, None
                return
            if cross and n % 2:
                first, last = chans[-1][0], chans[-1][-1]
                for e in self.nic[last].ranks:
                    yield e, set(self.nic[first].ranks)
                return
            for i in range(len(nics)):
                nic = nics[(n // (2 if cross else 1) + i) % len(nics)]
                for e in nic.ranks:
                    yield e, None if cross else set(nic.ranks)

        def extend(path: list[int], used: int, exits: set[int] | None) -> bool:
            left[0] -= 1
            if left[0] < 0:
                raise _SearchTimeout
            u = path[-1]
            if len(path) == g:
                if exits is not None and u not in exits:
                    return False
                end = ends(path[0], u)
                if "-" in end or not fits(end):
                    return False
                take(end, 1)
                chans.append(tuple(path))
                done = next_channel()
                chans.pop()
                take(end, -1)
                return done
            for v in self.next[u]:
                if used >> v & 1:
                    continue
                if (
                    exits is not None
                    and len(path) + 1 < g
                    and all(used >> x & 1 or x == v for x in exits)
                ):
                    continue
                res = self.res[(u, v)]
                if not fits(res):
                    continue
                take(res, 1)
                path.append(v)
                done = extend(path, used | 1 << v, exits)
                path.pop()
                take(res, -1)
                if done:
                    return True
            return False

        def next_channel() -> bool:
            n = len(chans)
            if n > len(best) and not (cross and n % 2):
                best[:] = chans
            if n == limit:
                return True
            for entry, exits in candidates(n):
                if self.multi:  # the NICs' bandwidth left decides before any path is tried
                    if entry not in self.nic or not fits((f"nicin:{self.nic[entry].name}",)):
                        continue
                    exits = {
                        x
                        for x in (range(g) if exits is None else exits)
                        if x in self.nic and fits((f"nicout:{self.nic[x].name}",))
                    }
                    if not exits:
                        continue
                if extend([entry], 1 << entry, exits):
                    return True
            return False

        if self.multi and not nics:
            return []
        try:
            next_channel()
        except _SearchTimeout:
            pass
        return best


def _assemble(topology: Topology, paths: list[Path], cross: bool) -> list[list[int]]:
    """Rank orders of the rings: ring c crosses every node on ``paths[c]``, or with
    ``cross`` even nodes on ``paths[2c]`` and odd nodes on ``paths[2c + 1]``."""
    g, step = topology.gpus_per_node, 2 if cross else 1
    return [
        [i * g + v for i in range(topology.nodes) for v in paths[c + (cross and i % 2)]]
        for c in range(0, len(paths), step)
    ]


def find_rings(topology: Topology) -> list[list[int]]:
    """NCCL's ring channels on ``topology``: rank orders, one per channel.

    As NCCL (src/graph/search.cc) the search looks at one node. At a per-channel
    bandwidth ("speed") it places as many node paths as the resources allow, each taking
    that speed from every link, switch port and NIC it uses (a depth-first search over
    whole channel sets, bounded like NCCL's by a visit budget); it keeps the speed with
    the most aggregate bandwidth (rings × speed), the higher speed on a tie. Speeds are
    every resource's bandwidth / m (NCCL steps through a fixed speed table). Path c
    enters on NIC c (rotating, as ``ncclTopoSearchRecNet``), at that NIC's GPUs; the next
    GPU is the best-connected one, then the following index (``ncclTopoSearchNextGpuSort``),
    and behind one NVSwitch only u+1 or u-1. A path leaves on the NIC it entered on
    where a GPU sharing that NIC ends it (crossNic=0, tried first); otherwise paths
    come in pairs, the second entering on the NIC the first leaves on and leaving on the
    one it enters on (crossNic=2). NCCL runs both paths of a pair on every node and
    swaps them on odd nodes (connect.cc) so that every network hop stays on its rail;
    here ring c takes the first path on even nodes and the second on odd ones, the same
    rails and NIC load, with all rings of a node crossing it in one direction (the
    simulator queues a switch transfer until both of its ports are free, which mixed
    directions turn into needless waits). So on 2 × DGX-A100 the 8 rings enter and leave
    each node on 8 different NICs. NCCL then duplicates the channels, which only splits
    the data finer (``--instances`` does that). Where nodes differ (mixed types, failed
    NICs), the channels are those of what every node has
    (:func:`~taccl_py.topology.core.symmetric_core`), as NCCL's ranks agree on the
    channels every node can run. Where no channel set fits the single :func:`find_ring`
    is used.

    >>> from taccl_py.topology.loader import load_topology
    >>> rings = find_rings(load_topology("dgx-a100", 2))
    >>> len(rings), rings[0][:8], rings[1][:8]
    (8, [0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 0])
    """
    if topology.num_ranks == 1:
        return [[0]]
    if topology.nodes > 1 and not topology.node_symmetric:
        # NCCL searches each node and the ranks agree on the channels all of them can
        # run (the fewest, the slowest): here, the channels of what every node has
        from ...topology.core import symmetric_core

        core = symmetric_core(topology)
        if core is not None:
            rings = find_rings(core)  # the core's connections are all the cluster's
            if len(rings) > 1:
                return [check_ring(topology, ring) for ring in rings]
    fab = _Fabric(topology)
    best: tuple[float, list[Path], bool] = (0.0, [], False)
    for speed in fab.speeds():
        if speed * fab.most(speed) <= best[0] * (1 + 1e-9):
            continue
        for cross in (False, True) if fab.multi else (False,):
            paths = fab.search(speed, cross)
            count = len(paths) // (2 if cross else 1)
            if count * speed > best[0] * (1 + 1e-9):
                best = (count * speed, paths, cross)
    _, paths, cross = best
    if paths:
        rings = _assemble(topology, paths, cross)
        try:
            for ring in rings:
                check_ring(topology, ring)
            return rings
        except TopologyError:  # nodes that differ, or a rail-only hop across rails
            pass
    return [find_ring(topology)]


def ring_algorithm(
    topology: Topology, collective: Collective, order: list[int] | None = None
) -> Algorithm:
    """NCCL's ring schedule of ``collective``: one ring per channel, the data split evenly.

    The rings are :func:`find_rings`'s, or the one ring ``order``. Ring i runs on channel
    i. With R rings, AllGather, ReduceScatter and AllReduce cut every chunk into R
    (the algorithm's chunk-up is R × the collective's), ring i moving sub-chunk j·R + i in
    round j, so that lowering can spread long threadblocks over rounds; AllToAll gives
    ring i the blocks b with b mod R = i. With chunk-up k each ring runs k rounds one
    after another (NCCL's pipelining loop), round j moving sub-chunk j of every block; at
    each step of a round every rank forwards what it received at the previous step.

    * AllGather: a block travels N-1 hops from its owner.
    * ReduceScatter: the block of ring position p starts at p+1 and its partial sum travels
      N-1 hops (each a reduction) to p.
    * AllReduce: that ReduceScatter, then an AllGather of each block from the rank that
      finished its reduction (2(N-1) steps per round).
    * AllToAll: chunk (s, d) is relayed forward along the ring from s to d.

    The rooted collectives split the data over the rings alike (sub-chunk i of every chunk
    on ring i); ring i moves its N·k chunks one after another (chunk m = block·k + j):

    * Broadcast: NCCL's ring broadcast (src/device/broadcast.h), a pipelined chain from
      the root to the rank before it: the rank h hops after the root forwards chunk m at
      step m + h, so every other rank receives each chunk exactly once.
    * Reduce: NCCL's ring reduce (reduce.h), the chain from the rank after the root to the
      root: the rank h hops after the root's successor sends its partial sum of chunk m
      (reduced into the next rank's) at step m + h.
    * Gather / Scatter: NCCL has neither (torch's NCCL backend runs them as grouped sends
      and receives: our ``direct``). Here each block is relayed along the ring: Gather
      forward from its owner to the root, each rank sending its own block first and then
      the blocks it relays in the order they arrive; Scatter forward from the root, the
      farthest rank's block first, so that every hop keeps its link busy.

    >>> from taccl_py.topology.loader import load_topology
    >>> alg = ring_algorithm(load_topology("dgx-a100", 2), Collective("allreduce", 16))
    >>> alg.nchannels, alg.collective.chunkup, alg.num_steps
    (8, 8, 30)
    """
    require_ranks(topology, collective)
    rings = find_rings(topology) if order is None else [check_ring(topology, order)]
    transfers: list[Transfer] = []
    for i, ring in enumerate(rings):
        transfers += _ring_transfers(ring, collective, len(rings), i)
    split = 1 if collective.kind == ALLTOALL else len(rings)
    return Algorithm(
        "ring",
        collective.with_chunkup(collective.chunkup * split),
        transfers,
        topology.label,
        meta={"ring": rings[0], "rings": rings},
    )


def ring_transfer_count(topology: Topology, collective: Collective) -> int | None:
    """How many transfers :func:`ring_algorithm` makes for an AllGather, ReduceScatter or
    AllReduce (None for the others), without making them: at 1,024 ranks they are
    millions, and a caller can tell from the count alone that no loader takes the plan.

    >>> from taccl_py.topology.loader import load_topology
    >>> topo, coll = load_topology("dgx-a100", 2), Collective("allreduce", 16)
    >>> ring_transfer_count(topo, coll) == len(ring_algorithm(topo, coll).transfers)
    True
    """
    if collective.kind not in (ALLGATHER, REDUCESCATTER, ALLREDUCE):
        return None
    n, k = collective.num_ranks, collective.chunkup
    per_ring = k * n * (n - 1) * (2 if collective.kind == ALLREDUCE else 1)
    return len(find_rings(topology)) * per_ring


def _ring_transfers(
    ring: list[int], collective: Collective, rings: int, index: int
) -> list[Transfer]:
    """The transfers of ring ``index`` of ``rings`` (see :func:`ring_algorithm`)."""
    n, k, kind = collective.num_ranks, collective.chunkup, collective.kind
    pos = {r: i for i, r in enumerate(ring)}
    hops = n - 1
    transfers: list[Transfer] = []

    def send(step: int, from_pos: int, block: int, j: int, reduce: bool = False) -> None:
        chunk = block * k + j if kind == ALLTOALL else (block * k + j) * rings + index
        transfers.append(
            Transfer(
                step,
                0.0,
                ring[from_pos % n],
                ring[(from_pos + 1) % n],
                chunk,
                reduce,
                channel=index,
            )
        )

    if collective.rooted:
        _rooted_transfers(ring, pos[collective.root], k, kind, send)
        return transfers
    for j in range(k):
        if kind == ALLTOALL:
            for s in range(n):
                for d in range(n):
                    if (s * n + d) % rings == index:
                        for h in range((pos[d] - pos[s]) % n):
                            send(j * hops + h, pos[s] + h, s * n + d, j)
            continue
        base = j * hops * (2 if kind == ALLREDUCE else 1)
        for b in range(n):
            p = pos[b]
            if kind in (REDUCESCATTER, ALLREDUCE):
                for h in range(hops):
                    send(base + h, p + 1 + h, b, j, True)
            if kind in (ALLGATHER, ALLREDUCE):
                start = base + (hops if kind == ALLREDUCE else 0)
                for h in range(hops):
                    send(start + h, p + h, b, j)
    return transfers


def _rooted_transfers(ring: list[int], p: int, k: int, kind: str, send) -> None:
    """Sends of a rooted collective on ``ring``, whose root sits at position ``p`` (see
    :func:`ring_algorithm`); ``send(step, from_pos, block, j, reduce)``."""
    n = len(ring)
    if kind in (BROADCAST, REDUCE):
        first = p if kind == BROADCAST else p + 1
        for m in range(n * k):
            block, j = divmod(m, k)
            for h in range(n - 1):
                send(m + h, first + h, block, j, kind == REDUCE)
        return
    for q in range(1, n):  # the rank q hops from the root along the ring
        for j in range(k):
            if kind == GATHER:  # from position p - q forward to p
                for d in range(q, 0, -1):  # sent by the rank d hops before the root
                    send((q - d) * k + j, p - d, ring[(p - q) % n], j)
            else:
                assert kind == SCATTER
                for d in range(q):  # sent by the rank d hops after the root
                    send((n - 1 - q) * k + j + d, p + d, ring[(p + q) % n], j)

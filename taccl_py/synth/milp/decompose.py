"""Decomposed AllGather for many nodes: solve one node, compose, replicate by node shifts.

A chunk of source ``s`` (local GPU ``k``) travels in three phases:

1. ``k``'s intra-node out-tree on its own node (which reaches its relay ``r``);
2. the network, from the relay ``r`` of a node to the receiving GPU ``q`` of others,
   along a node-level tree of fan-out ``f`` over node offsets (``f = nodes - 1``: every
   node directly, ``f = 1``: a ring), with ``r`` forwarding on intermediate nodes;
3. ``q``'s intra-node out-tree on every other node.

The intra-node trees come from the routing MILP (:func:`.routing.route`, with its
warm starts) solved once on a single node; the relays and receivers from the sketch
(rail ``r -> r`` where allowed; or one relay per shared NIC, :func:`nic_relays`); the
fan-out from a search (see :func:`.staged.decomposed_algorithm`). Routes are built for
node 0's sources only: every other node's are node 0's shifted. The schedule is found on the
*quotient* by node shifts, the sends whose sender is on node 0, with every receiving
resource renamed to its node-0 image: a node-symmetric schedule of the cluster is exactly
a schedule of the quotient, so ordering works on ``1 / nodes`` of the sends and the MILP
does not grow with the nodes at all. Early network hops carry several chunks at once
(:func:`bundle_sizes`): each transfer of a rank on its NIC pays α.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace

from ...collectives import ALLGATHER, Collective
from ...errors import TacclError
from ...ir.algorithm import Transfer
from ...topology.graph import distances
from ...topology.model import Topology
from .node_routes import node_trees_for
from .ordering import Send
from .routing import Edge, Routes, relaxed_makespan
from .schedule import Schedule
from .sketch import Sketch

#: a network connection's resources on the receiving side (its NIC, its leaf's downlinks)
_RECEIVING = ("nicin:", "down:")
NETWORK_CHANNEL = 1  # network sends get channels of their own: more peers per rank fit
#: MSCCL's sending (and receiving) threadblocks per channel: a rank's network peers at node
#: offsets 1..32 share the first network channel, 33..64 the next, and so on
PEERS_PER_CHANNEL = 32


def network_channel(topology: Topology, src: int, dst: int) -> int:
    """The channel of a network transfer from rank ``src`` to rank ``dst``: by their node
    offset, so that each rank sends to (and receives from) at most
    :data:`PEERS_PER_CHANNEL` nodes per channel; the offset is the same on every node
    shift, so sender and receiver agree.

    >>> from taccl_py.topology.loader import load_topology
    >>> topo = load_topology("dgx-h100", 128)
    >>> [network_channel(topo, 0, 8 * d) for d in (1, 32, 33, 127)]
    [1, 1, 2, 4]
    """
    g = topology.gpus_per_node
    offset = (dst // g - src // g) % topology.nodes
    return NETWORK_CHANNEL + (offset - 1) // PEERS_PER_CHANNEL


def node_topology(topology: Topology) -> Topology:
    """Node 0 of ``topology`` alone (no network)."""
    g = topology.gpus_per_node
    return replace(
        topology,
        nodes=1,
        links=tuple(x for x in topology.links if x.src < g),
        switches=tuple(s for s in topology.switches if s.node == 0),
        nics=tuple(n for n in topology.nics if n.node == 0),
    )


def node_trees(
    topology: Topology, chunk_bytes: float, *, time_limit: float
) -> tuple[dict[int, list[Edge]], bool]:
    """Local GPU -> its intra-node out-tree (local ids), from the routing MILP on node 0
    (or its kept solution, :func:`.node_routes.node_trees_for`), and whether it is a
    proven optimum.

    Every local GPU fans out ``nodes`` chunks per source (its own and the relayed ones),
    so the model is solved for chunks of ``nodes * chunk_bytes``.
    """
    return node_trees_for(topology, 0, chunk_bytes, time_limit=time_limit)


#: above this many nodes only the direct pattern is searched: a tree's or a ring's chunk
#: crosses many nodes in turn, and ordering those sends alone outlasts any time limit
#: (128 nodes: the ring was not ordered in 90 s) while direct is the fastest from 8 on
DIRECT_ONLY_NODES = 32


def fanouts(nodes: int) -> list[int]:
    """The node-level patterns searched: direct (fan-out ``nodes - 1``), trees, ring
    (direct only above :data:`DIRECT_ONLY_NODES` nodes).

    >>> fanouts(8), fanouts(64)
    ([7, 4, 2, 1], [63])
    """
    if nodes > DIRECT_ONLY_NODES:
        return [nodes - 1]
    return sorted({nodes - 1, *(f for f in (4, 2, 1) if f < nodes - 1)}, reverse=True)


def _receiver(topology: Topology, sketch: Sketch, r: int) -> int:
    """Relay ``r``'s receiver on the other nodes: its rail peer where the sketch allows it,
    else its first allowed peer."""
    peers = [b for a, b in sketch.connections if a == r]
    if not peers:
        raise TacclError(f"{topology.label}: relay GPU {r} has no inter-node connection")
    return r if r in peers else peers[0]


def relays(
    topology: Topology, sketch: Sketch, trees: dict[int, list[Edge]]
) -> dict[int, tuple[int, int]]:
    """Local source -> (relay that sends its data across, receiver on the other nodes).

    The relay is a sketch-allowed carrier nearest the source in its tree (itself if it
    may), least used on ties; the receiver, see :func:`_receiver`.
    """
    g = topology.gpus_per_node
    used: dict[int, int] = defaultdict(int)
    out = {}
    for k in range(g):
        depth = distances(trees[k], k)
        allowed = [r for r in range(g) if k in sketch.relays.get(r, ()) and r in depth]
        if not allowed:
            raise TacclError(f"{topology.label}: no relay carries local GPU {k}'s data")
        r = min(allowed, key=lambda r: (depth[r], used[r], r))
        used[r] += 1
        out[k] = (r, _receiver(topology, sketch, r))
    return out


def spread_relays(
    topology: Topology,
    sketch: Sketch,
    trees: dict[int, list[Edge]],
    carriers: dict[int, tuple[int, int]],
) -> dict[int, list[tuple[int, int]]] | None:
    """``carriers`` with the data of each GPU that cannot send its own across (no NIC)
    spread over every relay the sketch allows for it, one chunk each in turn, so that
    its share of the network is carried by several NICs at once rather than adding to one
    (one relay per GPU is how :func:`relays` places it). None if every GPU carries its
    own data."""
    g = topology.gpus_per_node
    out: dict[int, list[tuple[int, int]]] = {k: [c] for k, c in carriers.items()}
    spread = False
    for k in range(g):
        if carriers[k][0] == k:
            continue
        depth = distances(trees[k], k)
        allowed = sorted(r for r in range(g) if k in sketch.relays.get(r, ()) and r in depth)
        if len(allowed) > 1:
            out[k] = [(r, _receiver(topology, sketch, r)) for r in allowed]
            spread = True
    return out if spread else None


def nic_relays(
    topology: Topology,
    sketch: Sketch,
    trees: dict[int, list[Edge]],
    carriers: dict[int, tuple[int, int]],
) -> dict[int, tuple[int, int]] | None:
    """``carriers`` with the data of every NIC shared by several relays carried by one of
    them (the one the sketch allows for all that data, nearest its sources), so that
    one GPU sends on the NIC and one receives: the runtime shares a NIC first-ready, which
    can undo the schedule's order of several GPUs' sends. None if nothing changes."""
    groups: dict[str, list[int]] = defaultdict(list)
    for k, (r, _) in carriers.items():
        nic = topology.nic_of(r)
        if nic is not None:
            groups[nic.name].append(k)
    out = dict(carriers)
    for sources in groups.values():
        if len({carriers[k][0] for k in sources}) < 2:
            continue
        depths = [distances(trees[k], k) for k in sources]
        allowed = [
            r
            for r in sorted({carriers[k][0] for k in sources})
            if all(k in sketch.relays.get(r, ()) and r in d for k, d in zip(sources, depths))
        ]
        if allowed:
            r = min(allowed, key=lambda r: (sum(d[r] for d in depths), r))
            out.update((k, (r, _receiver(topology, sketch, r))) for k in sources)
    return None if out == carriers else out


@dataclass
class Decomposition:
    """Node 0's routes of a decomposed AllGather; every other node's are shifts of them."""

    topology: Topology
    collective: Collective
    chunk_bytes: float
    fanout: int
    routes: dict[int, list[Edge]]  # chunk of a node-0 source -> its out-tree
    bundles: tuple[int, ...] = ()  # chunks per network transfer into node 1, 2, ... (1)
    #: chunks of node 0's block (all its sources' chunks) that each hop into node 1, 2,
    #: ... and on within it carries at once (empty: per ``bundles``)
    blocks: tuple[int, ...] = ()

    def shift(self, rank: int, by: int) -> int:
        """``rank`` moved ``by`` nodes on (modulo the nodes)."""
        g, n = self.topology.gpus_per_node, self.topology.nodes
        return (rank // g + by) % n * g + rank % g

    def shift_chunk(self, chunk: int, by: int) -> int:
        c = self.collective.chunkup
        return self.shift(chunk // c, by) * c + chunk % c

    def lead(self, chunk: int, u: int, v: int) -> tuple[int, int]:
        """The first chunk of the transfer that carries node 0's ``chunk`` over ``u -> v``,
        and how many chunks it carries."""
        g, cu = self.topology.gpus_per_node, self.collective.chunkup
        o = v // g
        if self.blocks and o != 0:
            size = self.blocks[o - 1]
            return chunk // size * size, size
        size = self.bundles[o - 1] if u // g != o and o <= len(self.bundles) else 1
        first = chunk - chunk % cu
        lead = first + (chunk - first) // size * size
        return lead, min(size, first + cu - lead)

    def full_routes(self) -> Routes:
        """The routes of every chunk (``nodes`` shifted copies of node 0's)."""
        edges = {
            self.shift_chunk(c, a): sorted((self.shift(u, a), self.shift(v, a)) for u, v in es)
            for a in range(self.topology.nodes)
            for c, es in self.routes.items()
        }
        return Routes(
            self.collective,
            self.chunk_bytes,
            edges,
            relaxed_makespan(self.topology, self.collective, self.chunk_bytes, edges),
            None,
            False,
            0.0,
            0,
        )

    def sends(self) -> list[Send]:
        """The quotient's sends (sender on node 0), parents before children; a network
        hop of several chunks (see ``bundles`` and ``blocks``) is one send, by its first
        chunk, waiting for every send that brings one of them."""
        topo, g = self.topology, self.topology.gpus_per_node
        conns = topo.connections
        source = {c: self.collective.precondition(c)[0] for c in self.routes}
        parents = {c: {v: u for u, v in es} for c, es in self.routes.items()}
        depths = {c: distances(es, source[c]) for c, es in self.routes.items()}
        items = []  # (depth, chunk, src, dst, pred keys, chunks carried)
        for c, es in self.routes.items():
            for u, v in es:
                lead, count = self.lead(c, u, v)
                if lead != c:
                    continue
                by = -(u // g)
                preds = []  # the hops that bring each of the chunks carried to u
                for m in range(c, c + count):
                    if u == source[m]:
                        continue
                    w = parents[m][u]
                    back = -(w // g)
                    key = (
                        self.shift_chunk(self.lead(m, w, u)[0], back),
                        self.shift(w, back),
                        self.shift(u, back),
                    )
                    if key not in preds:
                        preds.append(key)
                items.append(
                    (
                        max(depths[m][v] for m in range(c, c + count)),
                        self.shift_chunk(c, by),
                        self.shift(u, by),
                        self.shift(v, by),
                        tuple(preds),
                        count,
                    )
                )
        items.sort(key=lambda it: it[:4])
        index = {it[1:4]: i for i, it in enumerate(items)}
        out = []
        for _, c, u, v, keys, count in items:
            conn = conns[(u, v)]
            res = conn.resources
            if conn.kind == "network":  # the receiving NIC, renamed to its node-0 image
                home = conns[(self.shift(u, -(v // g)), v % g)]
                res = tuple(x for x in res if not x.startswith(_RECEIVING)) + tuple(
                    x for x in home.resources if x.startswith(_RECEIVING)
                )
            out.append(
                Send(
                    c,
                    u,
                    v,
                    index[keys[0]] if keys else None,
                    (*res, f"conn:{u}->{v}"),
                    count * self.chunk_bytes / topo.bandwidth(conn),
                    conn.alpha,
                    count,
                    tuple(index[p] for p in keys[1:]),
                )
            )
        return out

    def transfers(self, sched: Schedule) -> list[Transfer]:
        """The quotient schedule's transfers replicated on every node shift."""
        conns = self.topology.connections
        out = []
        for t in sched.transfers():
            network = conns[(t.src, t.dst)].kind == "network"
            ch = network_channel(self.topology, t.src, t.dst) if network else 0
            out += [
                Transfer(
                    t.step,
                    t.start,
                    self.shift(t.src, a),
                    self.shift(t.dst, a),
                    self.shift_chunk(t.chunk, a),
                    end=t.end,
                    channel=ch,
                )
                for a in range(self.topology.nodes)
            ]
        return out


def bundle_sizes(
    topology: Topology,
    chunkup: int,
    chunk_bytes: float,
    trees: dict[int, list[Edge]],
    carriers: dict[int, tuple[int, int]],
) -> tuple[int, ...]:
    """Chunks per network transfer into node offset 1, 2, ... (see :func:`decompose`).

    Every network transfer after the first of a rank costs its α (the lowering makes it
    wait for the previous one's arrival), so early ones carry several chunks; but a
    receiver fans each transfer out in its node, and only after it has arrived, so the
    sizes shrink to one chunk at the end. Going back from the last offset (one chunk),
    each offset gets the largest size (the whole chunk-up or a multiple of the next
    offset's, so transfers nest along a route) whose fan-outs still finish before the
    receiver's next transfer arrives, the slack carried over.
    """
    g, n = topology.gpus_per_node, topology.nodes
    conns = topology.connections
    net = [conns[(r, g + q)] for r, q in carriers.values()]
    step = max(chunk_bytes / topology.bandwidth(c) for c in net)  # network time per chunk
    alpha = max(c.alpha for c in net)
    fan = max(
        (
            sum(
                chunk_bytes / topology.bandwidth(conns[e]) + conns[e].alpha
                for e in trees[q]
                if e[0] == u
            )
            for _, q in carriers.values()
            for u in range(g)
        ),
        default=0.0,
    )  # busiest fan-out per chunk received
    sizes = [1]
    slack = (chunkup - 1) * (step + alpha - fan)  # left by the last offset's transfers
    after = [1] * chunkup  # the later offset's transfer sizes
    for _ in range(n - 2):
        for size in [chunkup, *range((chunkup - 1) // sizes[0] * sizes[0], 0, -sizes[0])]:
            parts = [min(size, chunkup - i) for i in range(0, chunkup, size)]
            left, nxt, fits = slack, after[0], True
            for b in reversed(parts):
                left += step * nxt + alpha - fan * b
                nxt, fits = b, fits and left >= 0
            if fits or size == sizes[0]:
                break
        sizes.insert(0, size)
        slack, after = left, parts
    return tuple(sizes)


def offset_relays(
    topology: Topology, sketch: Sketch, trees: dict[int, list[Edge]], spread: int = 0
) -> dict[int, tuple[int, int] | None] | None:
    """Node offset -> (relay, receiver) of the direct pattern with relays by offset: every
    GPU's data first reaches every GPU of its node (its tree), and the node's data for
    node offset ``o`` leaves on the ``(o - 1) mod``-th GPU with a NIC and a sketch
    connection, over its own NIC, to its peer. Each GPU then has ``nodes / relays``
    network peers instead of ``nodes - 1``: what keeps a 1,024-rank plan within MSCCL's
    threadblocks (32 per channel, ``depid`` < 128 for those waited on) and its node
    budget. The last ``spread`` offsets map to None: there every GPU sends its own data
    over its own NIC (the sketch's carriers, :func:`relays`), so they load every NIC
    evenly whatever their number, and a receiver forwards only its GPU's share. The
    default sketch's rule that a GPU sends only its own data across is set aside (it
    keeps a GPU on its own NIC, as this does); so only the default sketch uses it. None
    if no GPU qualifies or a tree does not reach every GPU.

    >>> from taccl_py.topology.loader import load_topology
    >>> from taccl_py.synth.milp.sketch import default_sketch
    >>> topo = load_topology("dgx-h100", 64)
    >>> trees = {k: [(k, j) for j in range(8) if j != k] for k in range(8)}
    >>> by = offset_relays(topo, default_sketch(topo), trees, spread=7)
    >>> by[1], by[8], by[9], by[56], by[57], by[63]
    ((0, 0), (7, 7), (0, 0), (7, 7), None, None)
    """
    g, n = topology.gpus_per_node, topology.nodes
    if any(len(distances(trees[k], k)) < g for k in range(g)):
        return None
    carriers = [
        r
        for r in range(g)
        if topology.nic_of(r) is not None and any(a == r for a, _ in sketch.connections)
    ]
    if not carriers:
        return None
    out: dict[int, tuple[int, int] | None] = {
        o: (r, _receiver(topology, sketch, r))
        for o in range(1, n - spread)
        for r in [carriers[(o - 1) % len(carriers)]]
    }
    return out | dict.fromkeys(range(max(1, n - spread), n))


def spread_offsets(topology: Topology, relays: int) -> tuple[int, ...]:
    """How many of the last node offsets :func:`offset_relays` may spread over every NIC:
    the remainder of the offsets over the ``relays`` (so the relays' offsets are as many
    each) and one round more (whose network time may hide the forwarding of the last
    whole block), both if there are that many offsets.

    >>> from taccl_py.topology.loader import load_topology
    >>> spread_offsets(load_topology("dgx-h100", 128), 8)
    (7, 15)
    >>> spread_offsets(load_topology("dgx-h100", 8), 8)  # all 7 spread: plain direct
    ()
    """
    rest = (topology.nodes - 1) % relays
    return tuple(s for s in (rest, rest + relays) if 0 < s < topology.nodes - 1)


@dataclass(frozen=True)
class BlockParts:
    """How many parts a relay's block goes in, with relays by offset: ``rest`` parts, and
    in the last rounds of offsets (one offset per relay each, in turn) ``last[0]`` parts
    in the last round, ``last[1]`` in the one before, and so on. Finer parts at the end
    taper the tail: a receiver forwards a part in its node once it has all arrived, so
    the last part's forwarding is what is left after the network; whole blocks earlier
    pay α once each. A count that does not divide the block leaves it whole.

    >>> [BlockParts(1, (4, 2)).of_round(i, 5) for i in range(5)]
    [1, 1, 1, 2, 4]
    >>> BlockParts(2).most
    2
    """

    rest: int = 1
    last: tuple[int, ...] = ()

    def of_round(self, index: int, rounds: int) -> int:
        """The parts of the ``index``-th of ``rounds`` rounds."""
        back = rounds - 1 - index
        return self.last[back] if back < len(self.last) else self.rest

    @property
    def most(self) -> int:
        """The most parts of any round."""
        return max((self.rest, *self.last))


def decompose(
    topology: Topology,
    collective: Collective,
    chunk_bytes: float,
    trees: dict[int, list[Edge]],
    carriers: dict,
    fanout: int,
    bundles: tuple[int, ...] = (),
    by_offset: Mapping[int, tuple[int, int] | None] | None = None,
    parts: BlockParts = BlockParts(),
) -> Decomposition:
    """Compose node 0's routes from the intra-node ``trees``, the relays and receivers
    (``carriers``, see :func:`relays`; a list of them per source: one per chunk in turn,
    see :func:`spread_relays`) and a node-level tree of ``fanout``; a network hop into
    node ``o`` carries ``bundles[o - 1]`` chunks of a source at once (default 1: which
    spread carriers need, as a bundle's chunks share one route). With ``by_offset``
    (:func:`offset_relays`; direct pattern only) the relay and receiver of the hop into
    node ``o`` are ``by_offset[o]`` for every source instead, and each hop off node 0
    carries its block of every source's chunks in parts (``parts``), or into a spread
    offset (None) each source's chunks from the source's own carrier
    (:func:`block_sizes`)."""
    if collective.kind != ALLGATHER or topology.nodes < 2:
        raise TacclError("decomposition is for AllGather over several nodes")
    g, n = topology.gpus_per_node, topology.nodes
    if by_offset is not None and fanout != n - 1:
        raise TacclError("relays by node offset are for the direct pattern only")
    pattern = [((o - 1) // fanout, o) for o in range(1, n)]
    routes = {}
    for k in range(g):
        options = _options(carriers[k])
        for j in range(collective.chunkup):
            edges = list(trees[k])
            for po, o in pattern:
                by = None if by_offset is None else by_offset[o]
                r, q = options[j % len(options)] if by is None else by
                edges.append((po * g + r, o * g + q))
                edges += [(o * g + u, o * g + v) for u, v in trees[q]]
            routes[k * collective.chunkup + j] = sorted(edges)
    blocks = () if by_offset is None else block_sizes(by_offset, collective.chunkup, g, parts)
    return Decomposition(topology, collective, chunk_bytes, fanout, routes, bundles, blocks)


def block_sizes(
    by_offset: Mapping[int, tuple[int, int] | None],
    chunkup: int,
    gpus: int,
    parts: BlockParts = BlockParts(),
) -> tuple[int, ...]:
    """Chunks per hop into node offset 1, 2, ... with relays by offset: a node's block
    (``gpus x chunkup`` chunks, contiguous) in equal parts, as many as ``parts`` gives
    its round (a relay sends its offsets in turn, so the ``i``-th relayed offsets of
    every relay make round ``i // relays``), and a GPU's ``chunkup`` chunks into a spread
    offset (None: each GPU sends its own).

    >>> block_sizes({1: (0, 0), 2: (1, 1), 3: None}, 2, 4, BlockParts(2))
    (4, 4, 2)
    >>> block_sizes({1: (0, 0)}, 1, 6, BlockParts(4))
    (6,)
    >>> block_sizes({o: (o % 2, o % 2) for o in range(1, 7)}, 1, 4, BlockParts(1, (4, 2)))
    (4, 4, 2, 2, 1, 1)
    """
    block = gpus * chunkup
    relayed = [o for o in sorted(by_offset) if by_offset[o] is not None]
    ways = max(1, len({by_offset[o] for o in relayed}))
    rounds = -(-len(relayed) // ways)
    size = {}
    for i, o in enumerate(relayed):
        k = parts.of_round(i // ways, rounds)
        size[o] = block // k if block % k == 0 else block
    return tuple(size.get(o, chunkup) for o in sorted(by_offset))


def _options(carrier) -> list[tuple[int, int]]:
    """A source's (relay, receiver) choices: one pair, or a list taken chunk by chunk."""
    return carrier if isinstance(carrier, list) else [carrier]

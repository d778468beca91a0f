"""Topology model: ranks on identical nodes, links, switches, NICs, the network.

Units inside the model are SI: bandwidth in bytes/s, latency (α) in seconds. The YAML
files use GB/s and µs; the loader converts.

Every directly connected ordered rank pair has one :class:`Connection`: the α of a
transfer, and the *resources* it occupies, each with its own bandwidth:

* ``link:a->b``     a point-to-point link (NVLink, xGMI, PCIe), per direction;
* ``swout:a`` / ``swin:b``   the sender's out-port and the receiver's in-port of a switch;
* ``nicout:N`` / ``nicin:N`` the NICs of sender and receiver (shared by their GPUs);
* ``up:N`` / ``down:N``  NIC N's share of its leaf's uplinks to the spine, on transfers
  between leaves of a :class:`Fabric` (rail switches or leaf switches).

A transfer of b bytes on a connection costs α + b / min(resource bandwidth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from ..errors import TopologyError

FULL_BISECTION = "full-bisection"
RAIL_ONLY = "rail-only"
LEAF_SPINE = "leaf-spine"
RAIL_OPTIMIZED = "rail-optimized"


@dataclass(frozen=True)
class Fabric:
    """A two-tier network: NICs on leaf switches joined by a spine.

    ``leaf-spine``: the NICs of nodes ``k·nodes_per_leaf ..`` share leaf ``k``;
    ``rail-optimized``: NIC ``i`` of every node is on rail switch ``i`` (a rail-only
    network is one without a spine, :data:`RAIL_ONLY`). Inside a leaf the network is
    non-blocking. Between leaves a NIC gets a fixed share of its leaf's uplinks, its
    bandwidth ÷ ``oversubscription`` (or, with ``uplink`` bytes/s per leaf, its part of
    that in proportion to its bandwidth): what ECMP gives each NIC when every NIC of the
    leaf is busy, as in a collective.

    >>> Fabric(LEAF_SPINE, nodes_per_leaf=4, oversubscription=2).label
    'leaf-spine, 4 nodes per leaf, 2:1'
    """

    kind: str
    nodes_per_leaf: int = 0
    oversubscription: float = 1.0
    uplink: float | None = None  # bytes/s per leaf and direction, instead of the ratio

    def leaf(self, nic: Nic) -> int:
        """The leaf (or rail) switch ``nic`` is on."""
        return nic.rail if self.kind == RAIL_OPTIMIZED else nic.node // self.nodes_per_leaf

    @property
    def label(self) -> str:
        where = (
            f"{self.nodes_per_leaf} nodes per leaf"
            if self.kind == LEAF_SPINE
            else "rails joined by a spine"
        )
        ratio = (
            f"uplinks {self.uplink / 1e9:g} GB/s per leaf"
            if self.uplink is not None
            else f"{self.oversubscription:g}:1"
        )
        return f"{self.kind}, {where}, {ratio}"


@dataclass(frozen=True)
class Link:
    """A directed point-to-point link bundle between two ranks of one node."""

    src: int
    dst: int
    bandwidth: float  # bytes/s of the whole bundle (count × per-link)
    alpha: float
    count: int = 1
    kind: str = "nvlink"


@dataclass(frozen=True)
class Switch:
    """An intra-node switch; each attached rank has one in- and one out-port."""

    name: str
    node: int
    ranks: tuple[int, ...]
    bandwidth: float  # per port, per direction
    alpha: float


@dataclass(frozen=True)
class Nic:
    """A NIC of one node, shared by ``ranks``; ``rail`` is its index within the node."""

    name: str
    node: int
    rail: int
    ranks: tuple[int, ...]
    bandwidth: float  # per direction
    alpha: float


@dataclass(frozen=True)
class Connection:
    """How ``src`` reaches ``dst`` in one hop."""

    src: int
    dst: int
    alpha: float
    resources: tuple[str, ...]
    kind: str  # "link", "switch" or "network"


@dataclass
class Topology:
    """K identical nodes of ``gpus_per_node`` ranks; rank = node * gpus_per_node + local."""

    name: str
    gpus_per_node: int
    nodes: int
    links: tuple[Link, ...] = ()
    switches: tuple[Switch, ...] = ()
    nics: tuple[Nic, ...] = ()
    network: str = FULL_BISECTION
    description: str = ""
    source: str = ""
    fabric: Fabric | None = None
    #: a cluster file's fixed node count and node types: its label is its name
    cluster: bool = False
    node_types: tuple[str, ...] = ()  # each node's type name (a cluster's groups)
    resource_bandwidth: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        bw: dict[str, float] = {}
        for link in self.links:
            bw[f"link:{link.src}->{link.dst}"] = link.bandwidth
        for sw in self.switches:
            for r in sw.ranks:
                bw[f"swout:{r}"] = sw.bandwidth
                bw[f"swin:{r}"] = sw.bandwidth
        for nic in self.nics:
            bw[f"nicout:{nic.name}"] = nic.bandwidth
            bw[f"nicin:{nic.name}"] = nic.bandwidth
        for name, share in self.uplink_shares().items():
            bw[f"up:{name}"] = share
            bw[f"down:{name}"] = share
        self.resource_bandwidth = bw

    def uplink_shares(self) -> dict[str, float]:
        """NIC name -> its share of its leaf's uplinks (bytes/s), with a :attr:`fabric`."""
        fab = self.fabric
        if fab is None:
            return {}
        if fab.uplink is None:
            return {nic.name: nic.bandwidth / fab.oversubscription for nic in self.nics}
        total: dict[int, float] = {}
        for nic in self.nics:
            total[fab.leaf(nic)] = total.get(fab.leaf(nic), 0.0) + nic.bandwidth
        return {nic.name: fab.uplink * nic.bandwidth / total[fab.leaf(nic)] for nic in self.nics}

    @property
    def num_ranks(self) -> int:
        return self.gpus_per_node * self.nodes

    @property
    def label(self) -> str:
        return self.name if self.nodes == 1 or self.cluster else f"{self.name}x{self.nodes}"

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def local(self, rank: int) -> int:
        return rank % self.gpus_per_node

    def nic_of(self, rank: int) -> Nic | None:
        """The NIC a rank sends and receives inter-node traffic through."""
        return self._nic_by_rank.get(rank)

    @cached_property
    def _nic_by_rank(self) -> dict[int, Nic]:
        out: dict[int, Nic] = {}
        for nic in self.nics:
            for r in nic.ranks:
                out.setdefault(r, nic)
        return out

    def bandwidth(self, conn: Connection) -> float:
        return min(self.resource_bandwidth[r] for r in conn.resources)

    def cost(self, conn: Connection, nbytes: float) -> float:
        """α-β time of one transfer of ``nbytes`` on ``conn``, alone on its resources."""
        return conn.alpha + nbytes / self.bandwidth(conn)

    @cached_property
    def connections(self) -> dict[tuple[int, int], Connection]:
        """The best one-hop connection of every directly connected ordered pair."""
        conns: dict[tuple[int, int], Connection] = {}

        def offer(c: Connection) -> None:
            old = conns.get((c.src, c.dst))
            if old is None or (self.bandwidth(c), -c.alpha) > (self.bandwidth(old), -old.alpha):
                conns[(c.src, c.dst)] = c

        for link in self.links:
            offer(
                Connection(
                    link.src, link.dst, link.alpha, (f"link:{link.src}->{link.dst}",), "link"
                )
            )
        for sw in self.switches:
            for a in sw.ranks:
                for b in sw.ranks:
                    if a != b:
                        offer(Connection(a, b, sw.alpha, (f"swout:{a}", f"swin:{b}"), "switch"))
        fab = self.fabric
        for a, nic_a in sorted(self._nic_by_rank.items()):
            for b, nic_b in sorted(self._nic_by_rank.items()):
                if nic_a.node == nic_b.node:
                    continue
                if self.network == RAIL_ONLY and nic_a.rail != nic_b.rail:
                    continue
                res: tuple[str, ...] = (f"nicout:{nic_a.name}", f"nicin:{nic_b.name}")
                if fab is not None and fab.leaf(nic_a) != fab.leaf(nic_b):
                    res = (res[0], f"up:{nic_a.name}", f"down:{nic_b.name}", res[1])
                offer(Connection(a, b, max(nic_a.alpha, nic_b.alpha), res, "network"))
        return dict(sorted(conns.items()))

    @cached_property
    def node_symmetric(self) -> bool:
        """Whether moving every rank one node on (the last node to the first) keeps every
        resource (link, switch port, NIC, uplink share) and its speed: identical, healthy
        nodes on a fabric that treats them alike. The node-shift decomposition needs it.

        >>> from taccl_py.topology.loader import load_topology
        >>> load_topology("dgx-h100", 2).node_symmetric
        True
        """
        if self.nodes < 2:
            return False
        if self.fabric is not None and self.fabric.kind == LEAF_SPINE:
            if self.fabric.nodes_per_leaf < self.nodes:  # a shift moves nodes across leaves
                return False
        return len({self._node_parts(k) for k in range(self.nodes)}) == 1

    def _node_parts(self, node: int) -> str:
        """Node ``node``'s links, switches, NICs and uplink shares in local GPU ids: equal
        for two nodes when shifting one onto the other keeps every resource."""
        g = self.gpus_per_node
        base = node * g
        shares = self.uplink_shares()
        links = sorted(
            (lk.src - base, lk.dst - base, lk.bandwidth, lk.alpha)
            for lk in self.links
            if self.node_of(lk.src) == node
        )
        switches = sorted(
            (tuple(r - base for r in sw.ranks), sw.bandwidth, sw.alpha)
            for sw in self.switches
            if sw.node == node
        )
        nics = sorted(
            (
                nic.rail,
                tuple(r - base for r in nic.ranks),
                nic.bandwidth,
                nic.alpha,
                shares.get(nic.name),
            )
            for nic in self.nics
            if nic.node == node
        )
        return repr((links, switches, nics))

    def connection(self, src: int, dst: int) -> Connection:
        try:
            return self.connections[(src, dst)]
        except KeyError:
            raise TopologyError(
                f"{self.label}: no direct connection from rank {src} to rank {dst}"
            ) from None

    def graph(self):
        """A networkx DiGraph of ranks; edges carry ``alpha``, ``bandwidth``, ``kind``."""
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(range(self.num_ranks))
        for (s, d), c in self.connections.items():
            g.add_edge(s, d, alpha=c.alpha, bandwidth=self.bandwidth(c), kind=c.kind)
        return g

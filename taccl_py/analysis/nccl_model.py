"""A model of NCCL's algorithm and protocol choice, built from NVIDIA/nccl's tuning.cc.

This is a **model, not a measurement**: which (algorithm, protocol) pairs NCCL v2.30.7
(:data:`~.protocols.NCCL_COMMIT`) would consider on a topology, following the enable logic
of ``ncclTopoTuneModel`` (``src/graph/tuning.cc``), and what each costs:

* **ring** (AllGather, ReduceScatter, AllReduce) and **tree** (AllReduce, double binary
  tree): the project's own plans (``--method ring`` / ``tree``) timed by the
  protocol-aware simulator (:mod:`.simulate`), the same function that times our plans;
* **ring** for Broadcast and Reduce: tuning.cc gives them no other algorithm (NCCL chains
  the data around each ring channel from or to the root); our ring plan rooted there;
* **p2p** (AllToAll is grouped send/recv): the ``direct`` plan in NCCL's round order (round
  i: rank r sends to r + i), LL when the bytes to one peer are at most
  ``NCCL_P2P_LL_THRESHOLD`` (16 KiB), Simple above (enqueue.cc). **Gather and Scatter**
  are no NCCL collective: torch's NCCL backend (``ProcessGroupNCCL::gather``/``scatter``)
  runs them as one group of ``ncclSend``/``ncclRecv`` between the root and every rank,
  which is this p2p model on the ``direct`` plan rooted there. NCCL keeps every peer's
  transfer in flight at once and the network shares bandwidth among them, which the
  simulator (one transfer at a time per resource) does not model, so p2p is also given
  the fluid time :func:`fluid_time` (its busiest resource's load, one network α, the
  base latency) and timed at the lower of the two: the model never makes NCCL's
  AllToAll slower than its busiest link or NIC allows;
* **nvls** (one node) and **nvls_tree** (AllReduce, several nodes): in-switch reduction
  and multicast, which no MSCCL plan can express, costed by tuning.cc's formula
  (:func:`nccl_formula_time`). They need a third-generation NVSwitch (Hopper): we take a
  node whose switch spans all its GPUs with per-port bandwidth >= 450 GB/s (18 NVLink4
  links of 25 GB/s) for one; that is ``dgx-h100``, not ``dgx-a100`` (300 GB/s) or ``dgx2``.
  NVLS over several nodes needs CollNet and is off, as in tuning.cc.
* **pat** (AllGather, ReduceScatter): only with one GPU per node (``ncclPatEnable``),
  costed by the formula.
* **collnet_direct / collnet_chain**: need SHARP in the network; topologies do not
  declare it, so never offered.

LL128 is offered where tuning.cc enables it by default: every GPU pair of a node joined
over NVLink-class connections in at most two hops (``typeIntra <= PATH_NVB``); NIC paths
are assumed within ``PATH_PXB``, as the topologies do not model PCIe switches.

The formula's latencies are put on the simulator's scale: those tuning.cc charges per
step or hop (a ring's or tree's hops, NVLS-tree's network levels, PAT's) are the
topology's α times tuning.cc's ratio to ring Simple on the same link class
(:func:`~.protocols.hop_latency`), as the simulator charges them; those it charges once
per call (base latencies, NVLS's in-switch latency, 25 µs) are taken as written. Its channel counts
and per-channel bandwidths approximate ``search.cc`` (see :func:`nccl_graph`). Left out:
the ring's network overhead and plateau factors and the CPU-specific cases (Intel rows).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import NamedTuple

from ..collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    SCATTER,
    Collective,
    canonical_kind,
)
from ..errors import PlanError, TacclError
from ..lowering.lower import LowerOptions
from ..plan.model import Plan
from ..plan.runtimes import check_runtime
from ..topology.model import Topology
from . import protocols as P
from .protocols import (
    AMPERE,
    BLACKWELL,
    HOPPER,
    LL,
    LL128,
    NET,
    NVLINK,
    NVLS,
    NVLS_TREE,
    PAT,
    PCI,
    RING,
    SIMPLE,
    TREE,
    VOLTA,
)
from .simulate import simulate

P2P = "p2p"
SIMULATED, FORMULA = "simulated plan", "tuning.cc formula"
#: our plan-building method for each NCCL algorithm that a plan can express
PLAN_METHODS = {RING: "ring", TREE: "tree", P2P: "direct"}
#: per-port NVSwitch bandwidth (bytes/s) that marks a third-generation NVSwitch (NVLink4)
NVLS_MIN_SWITCH_BW = 450e9
_GB = 1e9


@dataclass(frozen=True)
class NcclChoice:
    """NCCL's (modelled) pick at one size: ``time`` in seconds, ``how`` it was costed."""

    algorithm: str
    protocol: str
    time: float
    how: str  # SIMULATED or FORMULA
    size: int = 0


class Graph(NamedTuple):
    """An NCCL channel graph: channel count and per-channel bandwidths (GB/s)."""

    n_channels: int
    bw_intra: float
    bw_inter: float


# -- hardware, from the topology -----------------------------------------------------------


def _node_connections(topology: Topology):
    return [
        c
        for (s, d), c in topology.connections.items()
        if s < topology.gpus_per_node and d < topology.gpus_per_node
    ]


def _intra_hws(topology: Topology) -> dict[tuple[int, int], str]:
    kinds = {(link.src, link.dst): link.kind for link in topology.links}
    return {
        (c.src, c.dst): P.connection_hw(c, kinds.get((c.src, c.dst)))
        for c in _node_connections(topology)
    }


def gpu_bandwidth(topology: Topology) -> float:
    """Least intra-node bandwidth of a GPU (its links plus its switch ports), bytes/s.

    >>> from taccl_py.topology.loader import load_topology
    >>> gpu_bandwidth(load_topology("dgx1")) / 1e9
    150.0
    """
    per = []
    for r in range(topology.gpus_per_node):
        bw = sum(link.bandwidth for link in topology.links if link.src == r)
        bw += sum(sw.bandwidth for sw in topology.switches if r in sw.ranks)
        per.append(bw)
    return min(per, default=0.0)


def gpu_generation(topology: Topology) -> str:
    """The GPU generation whose tuning constants apply, from a GPU's intra-node bandwidth
    (per direction): >= 900 GB/s Blackwell (NVLink5), >= 450 Hopper, >= 300 Ampere, else
    Volta.

    >>> from taccl_py.topology.loader import load_topology
    >>> gpu_generation(load_topology("dgx-h100")), gpu_generation(load_topology("dgx1"))
    ('hopper', 'volta')
    """
    bw = gpu_bandwidth(topology)
    return BLACKWELL if bw >= 900e9 else HOPPER if bw >= 450e9 else AMPERE if bw >= 300e9 else VOLTA


def nvls_supported(topology: Topology) -> bool:
    """Whether a node has a third-generation NVSwitch (multicast): one switch spanning all
    of a node's GPUs (at least 2) with ports of at least :data:`NVLS_MIN_SWITCH_BW`.

    >>> from taccl_py.topology.loader import load_topology
    >>> nvls_supported(load_topology("dgx-h100")), nvls_supported(load_topology("dgx-a100"))
    (True, False)
    """
    node = set(range(topology.gpus_per_node))
    return topology.gpus_per_node >= 2 and any(
        sw.node == 0 and node <= set(sw.ranks) and sw.bandwidth >= NVLS_MIN_SWITCH_BW
        for sw in topology.switches
    )


def ll128_enabled(topology: Topology) -> bool:
    """Whether tuning.cc enables LL128 by default: every GPU pair of a node joined over
    NVLink-class connections (NVLink, xGMI, NVSwitch) directly or through one GPU.

    >>> from taccl_py.topology.loader import load_topology
    >>> ll128_enabled(load_topology("dgx1"))
    True
    """
    n = topology.gpus_per_node
    nv = {pair for pair, hw in _intra_hws(topology).items() if hw == NVLINK}
    out = {a: {b for (s, b) in nv if s == a} for a in range(n)}
    return all(
        b in out[a] or any(b in out[m] for m in out[a])
        for a in range(n)
        for b in range(n)
        if a != b
    )


# -- candidates ------------------------------------------------------------------------------


def nccl_candidates(topology: Topology, kind: str) -> list[tuple[str, str]]:
    """(algorithm, protocol) pairs NCCL would consider for ``kind`` on ``topology``.

    >>> from taccl_py.topology.loader import load_topology
    >>> nccl_candidates(load_topology("dgx-h100"), "allreduce")[-1]
    ('nvls', 'Simple')
    """
    kind = canonical_kind(kind)
    if topology.num_ranks < 2:
        return []
    if kind in (ALLTOALL, GATHER, SCATTER):
        return [(P2P, LL), (P2P, SIMPLE)]
    protos = [LL, LL128, SIMPLE] if ll128_enabled(topology) else [LL, SIMPLE]
    one_node = topology.nodes == 1
    out = [(RING, p) for p in protos]
    if kind in (BROADCAST, REDUCE):  # tuning.cc: `a != NCCL_ALGO_RING` is skipped for them
        return out
    if kind == ALLREDUCE:
        out += [(TREE, p) for p in protos]
        if nvls_supported(topology):
            out.append((NVLS, SIMPLE) if one_node else (NVLS_TREE, SIMPLE))
    else:
        if topology.gpus_per_node == 1:
            out.append((PAT, SIMPLE))
        if one_node and nvls_supported(topology):
            out.append((NVLS, SIMPLE))
    return out


def p2p_protocol(topology: Topology, size: int) -> str:
    """The protocol NCCL's grouped send/recv uses for an AllToAll of ``size`` bytes per rank
    (or a Gather / Scatter of ``size`` bytes at the root): size / N bytes to each peer.

    >>> from taccl_py.topology.loader import load_topology
    >>> p2p_protocol(load_topology("dgx1"), 1 << 17), p2p_protocol(load_topology("dgx1"), 1 << 18)
    ('LL', 'Simple')
    """
    return LL if size / topology.num_ranks <= P.P2P_LL_THRESHOLD else SIMPLE


# -- tuning.cc formula -----------------------------------------------------------------------


def _speed(speeds: tuple[float, ...], limit: float, total: float, channels: int) -> float:
    """search.cc: the first per-channel speed within one path's bandwidth and the total."""
    return next((s for s in speeds if s <= limit and s * channels <= total), speeds[-1])


def nccl_graph(topology: Topology, algorithm: str) -> Graph:
    """An approximation of search.cc's graph for ``algorithm``: per-channel speed from its
    speed arrays (the first within one connection's bandwidth), as many channels as the
    GPU's (several nodes: the node's NICs') bandwidth holds, doubled as ncclTopoDupChannels
    does; NVLS: one channel per head GPU (several nodes: per NIC), bwInter raised to at
    most twice bwIntra as search.cc's second pass does.

    >>> from taccl_py.topology.loader import load_topology
    >>> nccl_graph(load_topology("dgx-h100", 2), "ring")
    Graph(n_channels=8, bw_intra=48.0, bw_inter=48.0)
    """
    gen = gpu_generation(topology)
    one = topology.gpus_per_node == 1  # no intra-node hop: the NICs bound everything
    intra = math.inf if one else gpu_bandwidth(topology) / _GB
    path = max((topology.bandwidth(c) / _GB for c in _node_connections(topology)), default=math.inf)
    nics = [nic.bandwidth / _GB for nic in topology.nics if nic.node == 0]
    if topology.nodes > 1:
        if not nics:
            raise TacclError(f"{topology.label}: several nodes but no NIC")
        speeds, path, total = P.SPEED_INTER[gen], min(path, max(nics)), min(intra, sum(nics))
    else:
        speeds, total = P.SPEED_INTRA[gen], intra
    if algorithm in (NVLS, NVLS_TREE):
        heads = min(
            P.NCCL_MAX_NVLS_ARITY,
            topology.gpus_per_node,
            len(nics) if topology.nodes > 1 else topology.gpus_per_node,
        )
        s = _speed(speeds, path, total, heads)  # pass 2 then raises bwInter up to 2 bwIntra
        return Graph(heads, s, max(v for v in speeds if v <= max(s, min(path, 2 * s))))
    s = _speed(speeds, path, total, 1)
    n = max(1, min(P.MAXCHANNELS // 2, math.floor(total / s)))
    if s >= 25 and not (gen in (HOPPER, BLACKWELL) and s < 50 and n > 4):
        dup = min(2 * n, P.MAXCHANNELS // 2)
        s /= -(-dup // n)
        n = dup
    return Graph(n, s, s)


def _calibrated(topology: Topology, hw: str, proto: str, algorithm: str) -> float:
    """tuning.cc's hop latency (µs) on the simulator's scale: the topology's α of that link
    class times tuning.cc's ratio to ring Simple (as :mod:`.simulate` charges it)."""
    if hw == NET:
        alphas = [c.alpha for c in topology.connections.values() if c.kind == "network"]
    else:
        alphas = [c.alpha for c in _node_connections(topology)]
    return P.hop_latency(max(alphas, default=0.0), hw, proto, algorithm) * 1e6


def nccl_formula_time(
    topology: Topology, kind: str, size: int, algorithm: str, protocol: str
) -> float:
    """tuning.cc's time (seconds) of one call: latency + size / bandwidth, with its
    bus-bandwidth factors and channel counts (:func:`nccl_graph`); raises where NCCL would
    not run (algorithm, protocol) for ``kind``.

    >>> from taccl_py.topology.loader import load_topology
    >>> t = nccl_formula_time(load_topology("dgx-h100"), "allreduce", 1 << 30, "nvls", "Simple")
    >>> round((1 << 30) / t / 1e9)  # algorithm bandwidth, GB/s
    273
    """
    kind = canonical_kind(kind)
    if (algorithm, protocol) not in nccl_candidates(topology, kind) or algorithm == P2P:
        raise TacclError(
            f"NCCL does not run {kind} with {algorithm}/{protocol} on "
            f"{topology.label}" + (" (p2p has no tuning.cc formula)" if algorithm == P2P else "")
        )
    n, nodes, ppn = topology.num_ranks, topology.nodes, topology.gpus_per_node
    gen = gpu_generation(topology)
    i2 = min(nodes, 3) - 1
    ll_max = P.LL_MAX_BW[gen if nodes == 1 else VOLTA][i2]  # several nodes: Intel CPU row
    nsteps = (
        2 * (n - 1) if kind == ALLREDUCE else n - 1 if kind in (ALLGATHER, REDUCESCATTER) else n
    )
    g = nccl_graph(topology, algorithm)
    bw = g.bw_intra if nodes <= 2 else g.bw_inter
    if algorithm in (NVLS, NVLS_TREE):
        intra_bw = g.bw_intra * P.NVLS_EFFICIENCY[gen] * (g.n_channels - 1) / g.n_channels
        intra_bw *= 2.0 if kind == ALLREDUCE else (ppn - 1) / ppn
        inter_bw = g.bw_inter * (2 if nodes <= 2 and algorithm == NVLS_TREE else 1)
        bw = min(
            intra_bw,
            inter_bw,
            P.PER_CH_MAX_NVLS_TREE_BW[gen][i2] if algorithm == NVLS_TREE else math.inf,
        )
    bus = g.n_channels * bw
    if algorithm == RING and protocol == LL:
        bus = min(ll_max, bus * P.RING_LL_FACTOR)
    if algorithm == RING and protocol == LL128:
        bus = min(bus * P.RING_LL128_FACTOR, g.n_channels * P.PER_CH_MAX_RING_LL128_BW[gen][i2])
    if algorithm == TREE:
        bus = min(bus * P.TREE_ALLREDUCE_FACTOR, g.n_channels * P.PER_CH_MAX_TREE_BW[gen][i2])
        if protocol == LL:
            bus = min(bus * P.TREE_LL_FACTOR, ll_max)
        if protocol == LL128:
            bus = min(
                bus * (P.TREE_LL128_FACTOR_ONE_NODE if nodes == 1 else P.TREE_LL128_FACTOR),
                g.n_channels * P.PER_CH_MAX_TREE_LL128_BW[gen][i2],
            )
    if algorithm == PAT:
        bus *= P.PAT_FACTOR
    if algorithm == RING or kind == ALLREDUCE:  # bus bandwidth -> algorithm bandwidth
        bus *= n / nsteps if algorithm in (RING, NVLS, NVLS_TREE) else 0.5
    if bus <= 0:
        raise TacclError(f"tuning.cc gives {algorithm}/{protocol} no bandwidth on {topology.label}")

    hws = set(_intra_hws(topology).values())
    intra_hw = NVLINK if hws <= {NVLINK} else PCI
    intra_lat = _calibrated(topology, intra_hw, protocol, algorithm) if ppn > 1 else 0.0
    inter_lat = (
        _calibrated(topology, NET, protocol, TREE if ppn == 1 else algorithm) if nodes > 1 else 0.0
    )
    log_nodes = nodes.bit_length() - 1
    lat = P.BASE_LATENCY_US[algorithm][protocol]
    if algorithm == RING and kind in (BROADCAST, REDUCE):
        # one hop when every channel is the same ring (search.cc's sameChannels, taken as
        # one node), else nsteps "chunk latencies", Simple's at tree's hop latency
        hw = intra_hw if nodes == 1 else NET
        if nodes == 1:
            lat += _calibrated(topology, hw, protocol, RING)
        else:
            lat += nsteps * _calibrated(
                topology, hw, protocol, TREE if protocol == SIMPLE else RING
            )
    elif algorithm == RING:
        n_inter = 0 if nodes == 1 else 2 * (nodes - 1) if kind == ALLREDUCE else nodes - 1
        lat += (nsteps - n_inter) * intra_lat + n_inter * inter_lat
    elif algorithm == TREE:
        lat += 2 * ((ppn - 1) * intra_lat + log_nodes * inter_lat)
    elif algorithm == NVLS:  # one switch operation per call: taken as written
        lat = P.HW_LATENCY_US[intra_hw][NVLS][protocol] + inter_lat
    elif algorithm == NVLS_TREE:
        lat += P.HW_LATENCY_US[intra_hw][NVLS_TREE][protocol] + 2 * log_nodes * inter_lat
    else:  # PAT: log latency over nodes, plus 2.8 µs per rank (put on the NET scale)
        net_scale = _calibrated(topology, NET, SIMPLE, RING) / P.HW_LATENCY_US[NET][RING][SIMPLE]
        lat += log_nodes * inter_lat / 3.5 + n * 2.8 * net_scale
    log_size = (size >> 6).bit_length() - 1
    if (
        kind == ALLREDUCE
        and 0 <= log_size < 23
        and (algorithm == TREE or (algorithm == NVLS_TREE and gen == BLACKWELL))
    ):
        bus *= P.TREE_CORRECTION[protocol][log_size]
    return (lat + size / (1000 * bus)) * 1e-6


# -- NCCL's pick -----------------------------------------------------------------------------

_PLANS: OrderedDict[tuple, Plan | None] = OrderedDict()
_PLAN_CACHE_SIZE = 64
#: steps per threadblock a model plan may have (an MSCCL loader's most children of an element)
_MODEL_MAX_STEPS = 1024
#: a ring, tree or p2p plan of more transfers is not built to be simulated (at 512 ranks
#: and more they are millions: minutes and gigabytes): tuning.cc's formula times it
#: instead (within 1 % of the simulated ring on 8 x DGX-H100 at 1 GB)
MODEL_MAX_TRANSFERS = 2_500_000
_TOO_BIG: dict[tuple, bool] = {}  # see _too_big


def _fingerprint(topology: Topology) -> tuple:
    return (
        topology.label,
        hash(
            (
                topology.gpus_per_node,
                topology.nodes,
                topology.links,
                topology.switches,
                topology.nics,
                topology.network,
                topology.fabric,
            )
        ),
    )


def nccl_plan(
    topology: Topology, kind: str, algorithm: str, protocol: str, root: int = 0
) -> Plan | None:
    """The verified plan of a ring, tree or p2p candidate under ``protocol`` (None where our
    method cannot build it; ``root``: a rooted collective's); cached per (topology, kind,
    root, algorithm).

    >>> from taccl_py.topology.loader import load_topology
    >>> nccl_plan(load_topology("dgx1"), "allgather", "ring", "LL").proto
    'LL'
    """
    from ..build.pipeline import build_plan

    kind = canonical_kind(kind)
    key = (*_fingerprint(topology), kind, root, algorithm)
    if key in _PLANS:
        _PLANS.move_to_end(key)
    else:
        collective = Collective(kind, topology.num_ranks, root=root)
        # NCCL runs its own kernels: the plan only has to be timed, so where an MSCCL
        # runtime's steps per threadblock are too few for it, it is lowered for the most
        try:
            plan = build_plan(topology, collective, PLAN_METHODS[algorithm]).plan
        except PlanError:  # e.g. more steps per threadblock than an MSCCL runtime takes
            try:
                lowering = LowerOptions(max_steps=_MODEL_MAX_STEPS)
                plan = build_plan(
                    topology, collective, PLAN_METHODS[algorithm], lower=lowering
                ).plan
            except TacclError:
                plan = None
        except TacclError:
            plan = None
        _PLANS[key] = plan
        if len(_PLANS) > _PLAN_CACHE_SIZE:
            _PLANS.popitem(last=False)
    plan = _PLANS[key]
    return None if plan is None else replace(plan, proto=protocol)


def reusable_plans(
    topology: Topology,
    collective: Collective,
    built: Mapping[str, Plan],
    options: LowerOptions,
    *,
    verified: bool = False,
) -> dict[tuple[str, str], Plan]:
    """:func:`nccl_best`'s ``plans`` from baselines a command has built already, so that
    the model does not build them again.

    ``built`` maps a method to its plan of ``collective`` on ``topology`` (its algorithm
    made with the default :class:`~taccl_py.synth.methods.SynthOptions`, lowered with
    ``options``). Kept, under every protocol, is each plan that is the one
    :func:`nccl_plan` builds itself: method ring, tree or direct; ``collective`` at
    chunk-up 1, out of place (with its root: pass ``collective.root`` to :func:`nccl_best`);
    ``options`` the defaults but for the name, protocol and size selection; under the
    model's name the runtime still loads it, and it verifies (checked here unless
    ``verified``).

    >>> from taccl_py.build.pipeline import build_plan
    >>> from taccl_py.topology.loader import load_topology
    >>> topo, coll = load_topology("dgx1"), Collective("allgather", 8)
    >>> ring = build_plan(topo, coll, "ring").plan
    >>> sorted(reusable_plans(topo, coll, {"ring": ring}, LowerOptions(), verified=True))
    [('ring', 'LL'), ('ring', 'LL128'), ('ring', 'Simple')]
    >>> reusable_plans(topo, coll, {"ring": ring}, LowerOptions(instances=2))
    {}
    """
    from ..plan.verify import verify

    base = replace(options, name=None, proto=SIMPLE, min_bytes=0, max_bytes=0, inplace=None)
    if (
        collective != Collective(collective.kind, topology.num_ranks, root=collective.root)
        or options.inplace not in (None, collective.inplace)
        or base != LowerOptions()
    ):
        return {}
    methods = {method: algorithm for algorithm, method in PLAN_METHODS.items()}
    plans = {}
    for method, plan in built.items():
        if method not in methods or (canonical_kind(plan.coll), plan.root) != (
            collective.kind,
            collective.root,
        ):
            continue
        name = f"{topology.label}-{collective.label}-{method}"  # as build_plan names it
        plan = replace(plan, name=name, proto=SIMPLE, min_bytes=0, max_bytes=0)
        if check_runtime(plan, selection=False):
            continue
        if not verified:
            try:
                verify(plan)
            except TacclError:
                continue
        plans.update({(methods[method], p): replace(plan, proto=p) for p in P.PROTOCOLS})
    return plans


def fluid_time(result, topology: Topology) -> float:
    """A call's time if its busiest resource were never idle: that resource's load, plus
    the topology's largest α (one hop of latency) and the protocol's base latency.

    >>> from taccl_py.topology.loader import load_topology
    >>> topo = load_topology("dgx1")
    >>> plan = nccl_plan(topo, "alltoall", P2P, "Simple")
    >>> res = simulate(plan, topo, 1 << 30)
    >>> fluid_time(res, topo) <= res.call_time
    True
    """
    alpha = max((c.alpha for c in topology.connections.values()), default=0.0)
    return max(result.resource_busy.values(), default=0.0) + alpha + result.base_latency


def nccl_best(
    topology: Topology,
    kind: str,
    size: int,
    plans: dict[tuple[str, str], Plan] | None = None,
    root: int | None = None,
) -> NcclChoice:
    """NCCL's fastest (algorithm, protocol) at ``size`` bytes in this model, timed by the
    simulator's ``call_time`` (ring, tree, p2p) or tuning.cc's formula (nvls, nvls_tree,
    pat; a ring or tree whose plan would have more than :data:`MODEL_MAX_TRANSFERS`
    transfers, unless given; p2p is then left out). ``plans`` maps (algorithm, protocol)
    to an already built plan to time instead.
    ``root`` is a rooted collective's root (default: the root of the ``plans`` given, else
    0); a plan given for another root is not used.

    >>> from taccl_py.topology.loader import load_topology
    >>> nccl_best(load_topology("dgx1"), "allgather", 1 << 10).protocol
    'LL'
    >>> nccl_best(load_topology("dgx1"), "gather", 1 << 30, root=2).algorithm
    'p2p'
    """
    kind = canonical_kind(kind)
    if root is None:
        root = min((p.root for p in (plans or {}).values()), default=0)
    plans = {key: p for key, p in (plans or {}).items() if p.root == root}
    best = None
    for algorithm, protocol in nccl_candidates(topology, kind):
        if algorithm == P2P and protocol != p2p_protocol(topology, size):
            continue
        plan = plans.get((algorithm, protocol))
        if algorithm in PLAN_METHODS and plan is None and _too_big(topology, kind, algorithm, root):
            if algorithm == P2P:  # (no formula)
                continue
            choice = NcclChoice(
                algorithm,
                protocol,
                nccl_formula_time(topology, kind, size, algorithm, protocol),
                FORMULA,
                size,
            )
        elif algorithm in PLAN_METHODS:
            plan = plan or nccl_plan(topology, kind, algorithm, protocol, root)
            if plan is None:
                continue
            result = simulate(plan, topology, size)
            time = result.call_time
            if algorithm == P2P:
                time = min(time, fluid_time(result, topology))
            choice = NcclChoice(algorithm, protocol, time, SIMULATED, size)
            if algorithm == RING and kind in (BROADCAST, REDUCE):
                # NCCL pipelines its chain in slices far finer than the ring plan's chunks:
                # where tuning.cc's own estimate is faster, NCCL is credited with it
                formula = nccl_formula_time(topology, kind, size, algorithm, protocol)
                if formula < time:
                    choice = NcclChoice(algorithm, protocol, formula, FORMULA, size)
        else:
            choice = NcclChoice(
                algorithm,
                protocol,
                nccl_formula_time(topology, kind, size, algorithm, protocol),
                FORMULA,
                size,
            )
        if best is None or choice.time < best.time:
            best = choice
    if best is None:
        raise TacclError(f"no NCCL algorithm for {kind} on {topology.label}")
    return best


def _too_big(topology: Topology, kind: str, algorithm: str, root: int) -> bool:
    """Whether the plan of NCCL's ``algorithm`` has more than :data:`MODEL_MAX_TRANSFERS`
    transfers (counted, not made).

    >>> from taccl_py.topology.loader import load_topology
    >>> [_too_big(load_topology("dgx-h100", n), "allreduce", "ring", 0) for n in (32, 64)]
    [False, True]
    """
    from ..synth.baselines.ring import ring_transfer_count
    from ..synth.baselines.trees import tree_transfer_count

    key = (*_fingerprint(topology), kind, root, algorithm)
    if key not in _TOO_BIG:  # (counting takes seconds at 512 ranks and more)
        coll = Collective(kind, topology.num_ranks, root=root)
        counter = {RING: ring_transfer_count, TREE: tree_transfer_count}.get(algorithm)
        count = None if counter is None else counter(topology, coll)
        if count is None:  # other collectives: every chunk to every other rank, at most
            count = coll.num_chunks * (topology.num_ranks - 1)
        _TOO_BIG[key] = count > MODEL_MAX_TRANSFERS
    return _TOO_BIG[key]


def nccl_table(topology: Topology, kind: str, sizes: list[int], root: int = 0) -> list[NcclChoice]:
    """:func:`nccl_best` at each size (plans built once; ``root``: a rooted collective's).

    >>> from taccl_py.topology.loader import load_topology
    >>> [c.protocol for c in nccl_table(load_topology("dgx1"), "allgather", [1 << 10, 1 << 30])]
    ['LL', 'Simple']
    """
    return [nccl_best(topology, kind, size, root=root) for size in sizes]

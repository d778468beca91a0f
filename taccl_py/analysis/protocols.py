"""NCCL's protocols (Simple, LL, LL128) and the cost constants of its tuning model.

Every number here is read from NVIDIA/nccl **v2.30.7** (commit ``5067397c2676``,
:data:`NCCL_COMMIT`): the tables of ``src/graph/tuning.cc`` (``ncclTunerConstantsDefaults``
and the factors of ``ncclTopoTuneModel``), the line formats of ``src/include/device.h``,
the channel search constants of ``src/graph/search.cc`` and ``src/graph/topo.h``, and
``NCCL_P2P_LL_THRESHOLD`` of ``src/enqueue.cc``. Names follow NCCL's; latencies are in µs
and bandwidths in GB/s, as NCCL writes them.

How the simulator uses them (:func:`hop_latency`, :data:`LINE_EFFICIENCY`,
:func:`base_latency`): a topology's α is the latency of one *Simple* hop on that
connection; another protocol's hop costs α scaled by tuning.cc's ratio of its ring hop
latency to Simple's on that link class, its bandwidth is the line's data fraction, and a
call pays the protocol's ring base latency once.
"""

from __future__ import annotations

from ..errors import TacclError
from ..topology.model import Connection

NCCL_VERSION = "2.30.7"
NCCL_COMMIT = "5067397c2676d5aed50042fc39e5c8ee96eb0027"

LL, LL128, SIMPLE = "LL", "LL128", "Simple"  # NCCL_PROTO_LL, _LL128, _SIMPLE
PROTOCOLS = (LL, LL128, SIMPLE)  # in NCCL's order

TREE, RING, COLLNET_DIRECT, COLLNET_CHAIN, NVLS, NVLS_TREE, PAT = (
    "tree",
    "ring",
    "collnet_direct",
    "collnet_chain",
    "nvls",
    "nvls_tree",
    "pat",
)
ALGORITHMS = (TREE, RING, COLLNET_DIRECT, COLLNET_CHAIN, NVLS, NVLS_TREE, PAT)

NVLINK, PCI, NET = "nvlink", "pci", "net"  # NCCL_HW_NVLINK, NCCL_HW_PCI, NCCL_HW_NET

VOLTA, AMPERE, HOPPER, BLACKWELL = "volta", "ampere", "hopper", "blackwell"
GENERATIONS = (VOLTA, AMPERE, HOPPER, BLACKWELL)  # NCCL's compCapIndex order

# -- line formats (device.h) ----------------------------------------------------------------
#: union ncclLLFifoLine: {data1, flag1, data2, flag2}, each uint32: 4 data bytes per 8
LL_LINE_BYTES, LL_DATA_BYTES = 8, 4
#: NCCL_LL128_LINESIZE; NCCL_LL128_DATAELEMS = 15 of its 16 uint64 elements carry data
LL128_LINE_BYTES, LL128_DATA_BYTES = 128, 120
#: fraction of a link's bandwidth that carries data under each protocol
LINE_EFFICIENCY = {
    SIMPLE: 1.0,
    LL: LL_DATA_BYTES / LL_LINE_BYTES,
    LL128: LL128_DATA_BYTES / LL128_LINE_BYTES,
}


def _by_proto(ll: float, ll128: float, simple: float) -> dict[str, float]:
    return {LL: ll, LL128: ll128, SIMPLE: simple}


# -- tuning.cc, ncclTunerConstantsDefaults (µs) ----------------------------------------------
#: baseLatencies[algorithm][protocol]
BASE_LATENCY_US = {
    TREE: _by_proto(6.8, 14.0, 8.4),
    RING: _by_proto(6.6, 14.0, 8.4),
    COLLNET_DIRECT: _by_proto(0, 0, 0),
    COLLNET_CHAIN: _by_proto(0, 0, 0),
    NVLS: _by_proto(0, 0, 0),
    NVLS_TREE: _by_proto(0, 0, 0),
    PAT: _by_proto(8.0, 8.0, 8.0),
}
#: hwLatencies[hw][algorithm][protocol]
HW_LATENCY_US = {
    NVLINK: {
        TREE: _by_proto(0.6, 1.25, 4.0),
        RING: _by_proto(0.6, 1.9, 3.4),
        COLLNET_DIRECT: _by_proto(0, 0, 3.7),
        COLLNET_CHAIN: _by_proto(0, 0, 2.8),
        NVLS: _by_proto(0, 0, 25),
        NVLS_TREE: _by_proto(0, 0, 25),
        PAT: _by_proto(0, 0, 4.0),
    },
    PCI: {
        TREE: _by_proto(1.0, 1.9, 4.0),
        RING: _by_proto(1.0, 2.5, 5.7),
        COLLNET_DIRECT: _by_proto(0, 0, 3.7),
        COLLNET_CHAIN: _by_proto(0, 0, 2.8),
        NVLS: _by_proto(0, 0, 0),
        NVLS_TREE: _by_proto(0, 0, 0),
        PAT: _by_proto(0, 0, 4.0),
    },
    NET: {
        TREE: _by_proto(5.0, 8.5, 14),
        RING: _by_proto(2.7, 4.0, 14.0),
        COLLNET_DIRECT: _by_proto(0, 0, 31),
        COLLNET_CHAIN: _by_proto(0, 0, 30),
        NVLS: _by_proto(0, 0, 18),
        NVLS_TREE: _by_proto(0, 0, 20.9),
        PAT: _by_proto(0, 0, 14),
    },
}

# -- tuning.cc bandwidth caps (GB/s), indexed [generation][min(nodes, 3) - 1] ----------------
#: llMaxBws; for one node the row is the GPU generation, for more the CPU (Intel row used)
LL_MAX_BW = {
    VOLTA: (39.0, 39.0, 20.4),
    AMPERE: (87.7, 22.5, 19.0),
    HOPPER: (141.0, 45.0, 35.0),
    BLACKWELL: (2 * 141.0, 2 * 45.0, 2 * 35.0),
}
#: perChMaxRingLL128Bws
PER_CH_MAX_RING_LL128_BW = {
    VOLTA: (20.0,) * 3,
    AMPERE: (20.0,) * 3,
    HOPPER: (36.7,) * 3,
    BLACKWELL: (40.0,) * 3,
}
#: perChMaxTreeLL128Bws
PER_CH_MAX_TREE_LL128_BW = {
    VOLTA: (20.0,) * 3,
    AMPERE: (20.0,) * 3,
    HOPPER: (36.7, 36.7, 29.0),
    BLACKWELL: (55.6, 31.67, 20.0),
}
#: perChMaxTreeBws
PER_CH_MAX_TREE_BW = {
    VOLTA: (26.5, 18.5, 10.0),
    AMPERE: (24.0, 23.6, 17.8),
    HOPPER: (38.7, 41.4, 36.0),
    BLACKWELL: (70.0, 42.8, 24.0),
}
#: perChMaxNVLSTreeBws
PER_CH_MAX_NVLS_TREE_BW = {
    VOLTA: (26.5, 18.5, 10.0),
    AMPERE: (24.0, 23.6, 17.8),
    HOPPER: (0.0, 57.7, 45.5),
    BLACKWELL: (0.0, 96.0, 80.0),
}
#: nvlsEfficiency
NVLS_EFFICIENCY = {VOLTA: 0.0, AMPERE: 0.0, HOPPER: 0.85, BLACKWELL: 0.74}

# -- tuning.cc model refinements in ncclTopoTuneModel ------------------------------------------
RING_LL_FACTOR = 0.5  # busBw * .5 for ring LL
RING_LL128_FACTOR = 0.92  # busBw * 0.92 (commented 120/128) for ring LL128
TREE_ALLREDUCE_FACTOR = 0.92  # busBw * .92 for tree AllReduce
TREE_LL_FACTOR = 1.0 / 3.8
TREE_LL128_FACTOR_ONE_NODE = 7.0 / 9.0
TREE_LL128_FACTOR = 120.0 / 128.0
PAT_FACTOR = 0.75
#: treeCorrectionFactor[protocol][log2(nBytes / 64)], for tree AllReduce, 64 B to 256 MB
TREE_CORRECTION = {
    LL: (
        1.0,
        1.0,
        1.0,
        1.0,
        0.9,
        0.8,
        0.7,
        0.7,
        0.7,
        0.7,
        0.6,
        0.5,
        0.4,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
    ),
    LL128: (
        1.0,
        1.0,
        1.0,
        1.0,
        1.0,
        0.9,
        0.8,
        0.8,
        0.8,
        0.7,
        0.6,
        0.6,
        0.6,
        0.6,
        0.6,
        0.6,
        0.8,
        0.9,
        0.9,
        0.9,
        0.9,
        1.0,
        1.0,
        1.0,
    ),
    SIMPLE: (
        0.9,
        0.9,
        0.9,
        0.9,
        0.9,
        0.9,
        0.9,
        0.8,
        0.7,
        0.6,
        0.6,
        0.5,
        0.5,
        0.5,
        0.5,
        0.6,
        0.7,
        0.8,
        0.7,
        0.7,
        0.8,
        0.9,
        0.9,
        0.9,
    ),
}

# -- channel search (search.cc, topo.h, device.h) ---------------------------------------------
#: speedArrayIntra / sm90SpeedArrayIntra / sm100SpeedArrayIntra (GB/s per channel)
SPEED_INTRA = {
    VOLTA: (40.0, 30.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0),
    HOPPER: (60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0),
    BLACKWELL: (90.0, 80.0, 70.0, 60.0, 50.0, 45.0, 40.0, 30.0, 24.0, 20.0, 19.0, 18.0),
}
SPEED_INTRA[AMPERE] = SPEED_INTRA[VOLTA]
#: speedArrayInter / sm90SpeedArrayInter / sm100SpeedArrayInter
SPEED_INTER = {
    VOLTA: (
        48.0,
        30.0,
        28.0,
        24.0,
        20.0,
        18.0,
        15.0,
        12.0,
        10.0,
        9.0,
        7.0,
        6.0,
        5.0,
        4.0,
        3.0,
        2.4,
        1.2,
        0.24,
        0.12,
    ),
    HOPPER: (
        48.0,
        45.0,
        42.0,
        40.0,
        30.0,
        24.0,
        22.0,
        20.0,
        17.5,
        15.0,
        12.0,
        6.0,
        3.0,
        2.4,
        1.2,
        0.24,
        0.12,
    ),
    BLACKWELL: (
        96.0,
        86.0,
        80.0,
        48.0,
        45.1,
        42.0,
        40.0,
        30.0,
        24.0,
        22.0,
        20.0,
        17.5,
        15.0,
        12.0,
        6.0,
        3.0,
        2.4,
        1.2,
        0.24,
        0.12,
    ),
}
SPEED_INTER[AMPERE] = SPEED_INTER[VOLTA]
MAXCHANNELS = 64  # device.h; rings and trees search up to MAXCHANNELS / 2 (init.cc)
NCCL_MAX_NVLS_ARITY = 32  # device.h: NVLS graphs have at most this many heads
#: enqueue.cc: a p2p transfer uses LL when its bytes <= nChannels * this (one channel
#: below 64 KiB, so: LL iff the bytes to one peer <= this)
P2P_LL_THRESHOLD = 16384


def base_latency(proto: str, algorithm: str = RING) -> float:
    """tuning.cc's per-call base latency of ``algorithm`` under ``proto``, in seconds.

    >>> round(base_latency("LL") * 1e6, 3)
    6.6
    """
    return BASE_LATENCY_US[algorithm][_check(proto)] / 1e6


def latency_ratio(hw: str, proto: str, algorithm: str = RING) -> float:
    """tuning.cc's hop latency of (algorithm, proto) on ``hw`` over ring Simple's there.

    >>> round(latency_ratio("nvlink", "LL"), 4)
    0.1765
    """
    return HW_LATENCY_US[hw][algorithm][_check(proto)] / HW_LATENCY_US[hw][RING][SIMPLE]


def hop_latency(alpha: float, hw: str, proto: str, algorithm: str = RING) -> float:
    """Latency of one hop whose Simple latency (the topology's α) is ``alpha`` seconds.

    >>> hop_latency(0.7e-6, "nvlink", "Simple")
    7e-07
    """
    return alpha * latency_ratio(hw, proto, algorithm)


#: link kinds NCCL's tuning counts as NVLink (RCCL's topology treats xGMI as NVLink too);
#: any other point-to-point link (pcie, ...) is the PCI class
NVLINK_KINDS = frozenset({"nvlink", "xgmi"})


def connection_hw(conn: Connection, link_kind: str | None = None) -> str:
    """tuning.cc's link class of a connection: a switch is NVSwitch (NVLink), a network
    hop NET, a link NVLink or PCI by its ``kind`` (``link_kind``, default nvlink).

    >>> connection_hw(Connection(0, 1, 1e-6, ("link:0->1",), "link"), "pcie")
    'pci'
    """
    if conn.kind == "network":
        return NET
    if conn.kind == "switch" or (link_kind or "nvlink") in NVLINK_KINDS:
        return NVLINK
    return PCI


def _check(proto: str) -> str:
    if proto not in LINE_EFFICIENCY:
        raise TacclError(f"protocol {proto!r} is not one of {', '.join(PROTOCOLS)}")
    return proto

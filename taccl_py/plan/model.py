"""The plan object between lowering and runtime: an MSCCL XML algorithm in memory.

Field names follow MSCCL's XML, as msccl-tools writes it. Offsets and counts are in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    ROOTED_KINDS,
    SCATTER,
    Collective,
    canonical_kind,
)

SEND_TYPES = frozenset({"s", "rcs", "rrs", "rrcs"})
RECV_TYPES = frozenset({"r", "rcs", "rrc", "rrs", "rrcs"})
REDUCE_TYPES = frozenset({"rrc", "rrs", "rrcs", "re"})
LOCAL_TYPES = frozenset({"cpy", "re", "nop"})
STEP_TYPES = SEND_TYPES | RECV_TYPES | LOCAL_TYPES


def has_input(coll: Collective, rank: int) -> bool:
    """Whether ``coll`` gives ``rank`` input chunks (Broadcast, Scatter: the root only)."""
    return coll.kind not in (BROADCAST, SCATTER) or rank == coll.root


def has_output(coll: Collective, rank: int) -> bool:
    """Whether ``rank`` holds output chunks of ``coll`` (Reduce, Gather: the root only)."""
    return coll.kind not in (REDUCE, GATHER) or rank == coll.root


def rank_buffers(coll: Collective, rank: int) -> tuple[int, int]:
    """``(i_chunks, o_chunks)`` of ``rank`` in a lowered plan of ``coll``.

    A buffer is as long as the collective's input (output) where it holds them; in
    place, AllGather and Gather keep their input in the output buffer (``i_chunks`` 0),
    AllReduce, AllToAll, Broadcast and Reduce their output in the input buffer
    (``o_chunks`` 0). Out of place, a buffer that NCCL reads only on the root (a
    non-root's Broadcast or Scatter input, its Reduce or Gather output) has 0 chunks,
    so both loaders' bounds check keeps the plan off it.

    >>> [rank_buffers(Collective("broadcast", 4, root=1), r) for r in (0, 1)]
    [(0, 4), (4, 4)]
    >>> [rank_buffers(Collective("gather", 4, inplace=True), r) for r in (0, 1)]
    [(0, 4), (0, 4)]
    """
    if coll.inplace:
        no_input = coll.kind in (ALLGATHER, GATHER)
        no_output = coll.kind in (ALLREDUCE, ALLTOALL, BROADCAST, REDUCE)
    else:
        no_input = not has_input(coll, rank)
        no_output = not has_output(coll, rank)
    return (0 if no_input else coll.i_chunks, 0 if no_output else coll.o_chunks)


@dataclass(slots=True)
class Step:
    s: int
    type: str
    srcbuf: str | None = None
    srcoff: int = -1
    dstbuf: str | None = None
    dstoff: int = -1
    cnt: int = 1
    depid: int = -1
    deps: int = -1
    hasdep: int = 0


@dataclass
class Threadblock:
    id: int
    send: int = -1
    recv: int = -1
    chan: int = 0
    steps: list[Step] = field(default_factory=list)


@dataclass
class GpuPlan:
    id: int
    i_chunks: int
    o_chunks: int
    s_chunks: int = 0
    tbs: list[Threadblock] = field(default_factory=list)


@dataclass(frozen=True)
class XmlSource:
    """How the file a plan was read from wrote it, where that matters to a runtime."""

    coll: str  # the ``coll`` attribute as written
    absent: frozenset[str]  # "tag.attribute" the file left out (the reader's default used)


@dataclass
class Plan:
    name: str
    coll: str  # canonical collective kind
    ngpus: int
    nchunksperloop: int
    nchannels: int = 1
    proto: str = "Simple"
    inplace: bool = False
    outofplace: bool = True
    min_bytes: int = 0
    max_bytes: int = 0
    redop: str = "nop"
    gpus: list[GpuPlan] = field(default_factory=list)
    #: the root of a rooted collective (written as our own ``root`` attribute, which
    #: neither MSCCL runtime reads: they select a rooted plan for calls with any root)
    root: int = 0
    #: the file it was read from (None: built in memory); not part of equality
    source: XmlSource | None = field(default=None, compare=False, repr=False)

    def collective(self) -> Collective:
        """The collective this plan claims to implement (chunk-up from nchunksperloop)."""
        kind = canonical_kind(self.coll)
        chunkup = max(1, self.nchunksperloop // max(1, self.ngpus))
        return Collective(kind, self.ngpus, chunkup, self.inplace, self.root)

    @property
    def root_assumed(self) -> bool:
        """Whether the plan is rooted and its file gave no ``root`` (0 was taken)."""
        kind = canonical_kind(self.coll)
        absent = self.source is not None and "algo.root" in self.source.absent
        return absent and kind in ROOTED_KINDS

    @property
    def label(self) -> str:
        """The collective for messages, with the root of a rooted one.

        >>> Plan("p", "broadcast", 4, 4, root=2).label, Plan("p", "allgather", 4, 4).label
        ('broadcast (root 2)', 'allgather')
        """
        kind = canonical_kind(self.coll)
        if kind not in ROOTED_KINDS:
            return kind
        return f"{kind} (root {self.root}{', assumed: no root attribute' * self.root_assumed})"

    def buffer_size(self, gpu: GpuPlan, buf: str) -> int:
        return {"i": gpu.i_chunks, "o": gpu.o_chunks, "s": gpu.s_chunks}.get(buf, 0)

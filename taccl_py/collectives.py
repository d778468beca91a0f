"""Collectives as chunk pre/postconditions.

Every collective splits its buffers into ``num_blocks * chunkup`` chunks. Chunk ``c``
belongs to block ``c // chunkup``:

* AllGather(N): block r is rank r's input; it must reach every rank.
* AllToAll(N): block s*N + d starts on rank s (input slot d) and must reach rank d
  (output slot s).
* ReduceScatter(N): block r is reduced over all ranks' inputs and ends on rank r.
* AllReduce(N): block x is reduced over all ranks' inputs and ends on every rank.

The rooted collectives have a ``root`` and also cut their buffers into N blocks:

* Broadcast(N, root): block x starts on the root and must reach every rank.
* Reduce(N, root): block x is reduced over all ranks' inputs and ends on the root.
* Gather(N, root): block r is rank r's input; it must reach the root (output slot r).
* Scatter(N, root): block r starts on the root (input slot r) and must reach rank r.

A *contribution* is ``(rank, input_index)``: one rank's input chunk. A chunk's value is
the set of contributions it holds (a reduction is a disjoint union).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .errors import CollectiveError

ALLGATHER = "allgather"
ALLTOALL = "alltoall"
REDUCESCATTER = "reducescatter"
ALLREDUCE = "allreduce"
BROADCAST = "broadcast"
REDUCE = "reduce"
GATHER = "gather"
SCATTER = "scatter"
#: the collectives every rank takes part in alike
KINDS = (ALLGATHER, ALLTOALL, REDUCESCATTER, ALLREDUCE)
#: the collectives with a root
ROOTED_KINDS = (BROADCAST, REDUCE, GATHER, SCATTER)
ALL_KINDS = KINDS + ROOTED_KINDS

#: accepted spellings -> canonical kind (MSCCL XML uses "reduce_scatter")
_ALIASES = {
    "allgather": ALLGATHER,
    "all_gather": ALLGATHER,
    "ag": ALLGATHER,
    "alltoall": ALLTOALL,
    "all_to_all": ALLTOALL,
    "a2a": ALLTOALL,
    "reducescatter": REDUCESCATTER,
    "reduce_scatter": REDUCESCATTER,
    "rs": REDUCESCATTER,
    "allreduce": ALLREDUCE,
    "all_reduce": ALLREDUCE,
    "ar": ALLREDUCE,
    "broadcast": BROADCAST,
    "bcast": BROADCAST,
    "reduce": REDUCE,
    "gather": GATHER,
    "scatter": SCATTER,
}
#: canonical kind -> the ``coll`` attribute MSCCL runtimes expect
XML_NAMES = {
    ALLGATHER: "allgather",
    ALLTOALL: "alltoall",
    REDUCESCATTER: "reduce_scatter",
    ALLREDUCE: "allreduce",
    BROADCAST: "broadcast",
    REDUCE: "reduce",
    GATHER: "gather",
    SCATTER: "scatter",
}

Contribution = tuple[int, int]


def canonical_kind(name: str) -> str:
    """Map a user or XML spelling of a collective to its canonical kind.

    >>> canonical_kind("Reduce-Scatter"), canonical_kind("ar")
    ('reducescatter', 'allreduce')
    """
    kind = _ALIASES.get(name.strip().lower().replace("-", "_"))
    if kind is None:
        raise CollectiveError(f"unknown collective {name!r}; choose one of {', '.join(ALL_KINDS)}")
    return kind


#: most chunks a collective may move (keeps synthesis and verification in memory)
MAX_CHUNKS = 1 << 16


@dataclass(frozen=True)
class Collective:
    """A collective on ``num_ranks`` ranks with each block cut into ``chunkup`` chunks.

    >>> c = Collective("all_to_all", 2, chunkup=2)
    >>> c.kind, c.num_blocks, c.num_chunks, c.nchunksperloop
    ('alltoall', 4, 8, 4)
    >>> c.precondition(5), c.postcondition(5), c.input_index(1, 5), c.output_index(0, 5)
    ((1,), (0,), 1, 3)

    A rooted collective names its root (0 by default; other collectives have root 0):

    >>> g = Collective("gather", 4, root=2)
    >>> g.precondition(1), g.postcondition(1), g.output_index(2, 1), g.output_index(1, 1)
    ((1,), (2,), 1, None)
    """

    kind: str
    num_ranks: int
    chunkup: int = 1
    inplace: bool = False
    root: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", canonical_kind(self.kind))
        if self.num_ranks < 1:
            raise CollectiveError(f"a collective needs at least 1 rank, got {self.num_ranks}")
        if self.root != 0 and not self.rooted:
            raise CollectiveError(f"{self.kind} has no root (got root {self.root})")
        if not 0 <= self.root < self.num_ranks:
            raise CollectiveError(
                f"root {self.root} is not a rank of {self.num_ranks} (0..{self.num_ranks - 1})"
            )
        if self.chunkup < 1:
            raise CollectiveError(f"chunk-up must be >= 1, got {self.chunkup}")
        if self.num_chunks > MAX_CHUNKS:
            raise CollectiveError(
                f"{self.kind} on {self.num_ranks} ranks with chunk-up {self.chunkup} has "
                f"{self.num_chunks} chunks, more than the {MAX_CHUNKS} supported"
            )

    # -- sizes ---------------------------------------------------------------
    @property
    def reducing(self) -> bool:
        return self.kind in (REDUCESCATTER, ALLREDUCE, REDUCE)

    @property
    def rooted(self) -> bool:
        return self.kind in ROOTED_KINDS

    @property
    def label(self) -> str:
        """The kind, with the root for a rooted collective.

        >>> Collective("reduce", 4, root=3).label, Collective("allreduce", 4).label
        ('reduce-root3', 'allreduce')
        """
        return f"{self.kind}-root{self.root}" if self.rooted else self.kind

    @property
    def num_blocks(self) -> int:
        n = self.num_ranks
        return n * n if self.kind == ALLTOALL else n

    @property
    def num_chunks(self) -> int:
        return self.num_blocks * self.chunkup

    @property
    def nchunksperloop(self) -> int:
        """Chunks the largest buffer is cut into (MSCCL's ``nchunksperloop``)."""
        return self.num_ranks * self.chunkup

    @property
    def i_chunks(self) -> int:
        return self.chunkup if self.kind in (ALLGATHER, GATHER) else self.nchunksperloop

    @property
    def o_chunks(self) -> int:
        return self.chunkup if self.kind in (REDUCESCATTER, SCATTER) else self.nchunksperloop

    def splits(self, size: int, type_size: int = 4) -> bool:
        """Whether an nccl-tests ``size`` of ``type_size``-byte elements cuts into whole
        chunks, as msccl-executor wants of a call before it selects a plan.

        >>> [Collective("allgather", 8, c).splits(1 << 30) for c in (6, 8)]
        [False, True]
        """
        elems, rest = divmod(size, type_size)
        return rest == 0 and elems % self.nchunksperloop == 0

    def fitting_chunkups(self, size: int, factors: tuple[int, ...]) -> tuple[int, ...]:
        """``factors`` (of this chunk-up) that split ``size``, each one that does not
        replaced by the nearest that does (the larger on a tie; none above twice it);
        ``factors`` themselves where none splits ``size`` at all.

        >>> Collective("allgather", 8).fitting_chunkups(1 << 30, (1, 2, 6))
        (1, 2, 8)
        >>> Collective("allgather", 8).fitting_chunkups(12 << 20, (1, 2, 6))
        (1, 2, 6)
        """
        fit: set[int] = set()
        for f in factors:
            up = range(1, 2 * f + 1)
            near = [g for g in up if self.with_chunkup(self.chunkup * g).splits(size)]
            if near:
                fit.add(min(near, key=lambda g: (abs(g - f), -g)))
        return tuple(sorted(fit)) or tuple(factors)

    def chunk_bytes(self, size: int) -> float:
        """Bytes per chunk for an nccl-tests ``size`` (AG/gather output, A2A/AR/broadcast/
        reduce buffer, RS/scatter input)."""
        return size / self.nchunksperloop

    # -- chunk semantics -----------------------------------------------------
    def precondition(self, chunk: int) -> tuple[int, ...]:
        """Ranks holding an input contribution to ``chunk`` at the start."""
        block = chunk // self.chunkup
        if self.kind in (ALLGATHER, GATHER):
            return (block,)
        if self.kind == ALLTOALL:
            return (block // self.num_ranks,)
        if self.kind in (BROADCAST, SCATTER):
            return (self.root,)
        return tuple(range(self.num_ranks))

    def postcondition(self, chunk: int) -> tuple[int, ...]:
        """Ranks that must hold the finished ``chunk`` at the end."""
        block = chunk // self.chunkup
        if self.kind in (ALLGATHER, ALLREDUCE, BROADCAST):
            return tuple(range(self.num_ranks))
        if self.kind == ALLTOALL:
            return (block % self.num_ranks,)
        if self.kind in (REDUCE, GATHER):
            return (self.root,)
        return (block,)

    def holds_input(self, rank: int, chunk: int) -> bool:
        """Whether ``rank`` is in ``precondition(chunk)`` (in O(1))."""
        block = chunk // self.chunkup
        if self.kind in (ALLGATHER, GATHER):
            return rank == block
        if self.kind == ALLTOALL:
            return rank == block // self.num_ranks
        if self.kind in (BROADCAST, SCATTER):
            return rank == self.root
        return 0 <= rank < self.num_ranks

    def needs_output(self, rank: int, chunk: int) -> bool:
        """Whether ``rank`` is in ``postcondition(chunk)`` (in O(1))."""
        block = chunk // self.chunkup
        if self.kind in (ALLGATHER, ALLREDUCE, BROADCAST):
            return 0 <= rank < self.num_ranks
        if self.kind == ALLTOALL:
            return rank == block % self.num_ranks
        if self.kind in (REDUCE, GATHER):
            return rank == self.root
        return rank == block

    def input_index(self, rank: int, chunk: int) -> int | None:
        """Index of ``rank``'s input contribution to ``chunk`` (None if it has none)."""
        if not self.holds_input(rank, chunk):
            return None
        return self._input_slot(chunk)

    def _input_slot(self, chunk: int) -> int:
        """:meth:`input_index` of ``chunk`` on a rank in ``precondition(chunk)``."""
        block, j = divmod(chunk, self.chunkup)
        if self.kind in (ALLGATHER, GATHER):
            return j
        if self.kind == ALLTOALL:
            return (block % self.num_ranks) * self.chunkup + j
        return chunk

    def output_index(self, rank: int, chunk: int) -> int | None:
        """Index where ``rank`` must hold finished ``chunk`` (None if not a destination)."""
        if not self.needs_output(rank, chunk):
            return None
        return self._output_slot(chunk)

    def _output_slot(self, chunk: int) -> int:
        """:meth:`output_index` of ``chunk`` on a rank in ``postcondition(chunk)``."""
        block, j = divmod(chunk, self.chunkup)
        if self.kind == ALLTOALL:
            return (block // self.num_ranks) * self.chunkup + j
        if self.kind in (REDUCESCATTER, SCATTER):
            return j
        return chunk

    def expected(self, chunk: int) -> frozenset[Contribution]:
        """The finished value of ``chunk``: every contribution to it, exactly once.

        >>> sorted(Collective("allreduce", 2).expected(1))
        [(0, 1), (1, 1)]
        """
        slot = self._input_slot(chunk)
        return frozenset((r, slot) for r in self.precondition(chunk))

    @cached_property
    def output_map(self) -> dict[tuple[int, int], int]:
        """(rank, output index) -> chunk, for every postcondition."""
        return {
            (r, self._output_slot(c)): c
            for c in range(self.num_chunks)
            for r in self.postcondition(c)
        }

    @cached_property
    def input_map(self) -> dict[tuple[int, int], int]:
        """(rank, input index) -> chunk, for every precondition."""
        return {
            (r, self._input_slot(c)): c
            for c in range(self.num_chunks)
            for r in self.precondition(c)
        }

    def inplace_output(self, rank: int, out_index: int) -> tuple[str, int]:
        """Where output chunk ``out_index`` lives when the collective runs in place
        (gather and scatter as MSCCL's runtimes lay them out: like AllGather and
        ReduceScatter)."""
        if self.kind in (ALLGATHER, GATHER):
            return ("o", out_index)
        if self.kind in (REDUCESCATTER, SCATTER):
            return ("i", rank * self.chunkup + out_index)
        return ("i", out_index)

    def inplace_input(self, rank: int, in_index: int) -> tuple[str, int]:
        """Where input chunk ``in_index`` lives when the collective runs in place."""
        if self.kind in (ALLGATHER, GATHER):
            return ("o", rank * self.chunkup + in_index)
        return ("i", in_index)

    def with_chunkup(self, chunkup: int) -> Collective:
        return Collective(self.kind, self.num_ranks, chunkup, self.inplace, self.root)

    def with_root(self, root: int) -> Collective:
        return Collective(self.kind, self.num_ranks, self.chunkup, self.inplace, root)

    def refine(self, chunk: int, instances: int, instance: int) -> int:
        """Chunk id of sub-chunk ``instance`` of ``chunk`` under ``with_chunkup(k*instances)``."""
        block, j = divmod(chunk, self.chunkup)
        return block * self.chunkup * instances + instance * self.chunkup + j

"""Buffer placement for lowering: the values each rank holds and where each one is stored.

Every transfer makes a new *version* of its chunk on the receiver. A version is stored in
the rank's output location for that chunk when the rank is a postcondition rank (unless,
in place, that location still holds another chunk's live value), otherwise in a scratch
slot of its own (one slot per relayed (rank, chunk), numbered in IR order) -- or, when no
step ever reads it (a relay's ``rcs`` copy), in its threadblock's scratch *sink*, placed
after merging. Inputs stay where the collective puts them. A final value not in its
output location is copied there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..collectives import Collective
from ..ir.algorithm import Algorithm

Loc = tuple[str, int]


@dataclass(eq=False, slots=True)
class Version:
    """One value of ``chunk`` on ``rank``, from the transfer that made it until replaced."""

    rank: int
    chunk: int
    producer: int | None = None  # index of the transfer that made it; None: an input
    operand: Version | None = None  # the receiver's previous value that a reduction combines
    readers: list[int] = field(default_factory=list)  # transfers sending or reducing it
    final: bool = False  # the rank's last value of one of its postcondition chunks
    stored: bool = True  # False: a reduction that is only sent on (rrs)
    sink: int | None = None  # stored but never read: id of the threadblock that stores it
    loc: Loc | None = None


@dataclass
class Flow:
    """Per transfer, the version it sends and the version it makes; inputs and finals."""

    sent: list[Version]
    made: list[Version]
    inputs: list[Version]
    finals: list[Version]


@dataclass
class Copy:
    """A local copy of a final value into its output location, after transfer ``after``."""

    version: Version
    dst: Loc
    after: int


def value_flow(alg: Algorithm) -> Flow:
    """Run the IR on versions (the IR is assumed checked)."""
    coll = alg.collective
    cur: dict[tuple[int, int], Version] = {}
    inputs = []
    for c in range(coll.num_chunks):
        for r in coll.precondition(c):
            cur[(r, c)] = v = Version(r, c)
            inputs.append(v)
    sent, made = [], []
    for k, t in enumerate(alg.transfers):
        v = cur[(t.src, t.chunk)]
        v.readers.append(k)
        operand = cur[(t.dst, t.chunk)] if t.reduce else None
        if operand is not None:
            operand.readers.append(k)
        cur[(t.dst, t.chunk)] = w = Version(t.dst, t.chunk, k, operand)
        sent.append(v)
        made.append(w)
    finals = []
    for c in range(coll.num_chunks):
        for r in coll.postcondition(c):
            cur[(r, c)].final = True
            finals.append(cur[(r, c)])
    return Flow(sent, made, inputs, finals)


def placed(v: Version) -> Loc:
    """Where ``v`` is stored: :func:`place` placed every input and stored version."""
    assert v.loc is not None, f"rank {v.rank}, chunk {v.chunk}: a value read before placed"
    return v.loc


def input_loc(coll: Collective, rank: int, chunk: int) -> Loc:
    """Where ``rank``'s input contribution to ``chunk`` lives (``rank`` holds one)."""
    index = coll.input_index(rank, chunk)
    assert index is not None, f"rank {rank} has no input for chunk {chunk}"
    return coll.inplace_input(rank, index) if coll.inplace else ("i", index)


def output_loc(coll: Collective, rank: int, chunk: int) -> Loc | None:
    """Where ``rank`` must hold finished ``chunk`` (None if it is not a destination)."""
    index = coll.output_index(rank, chunk)
    if index is None:
        return None
    return coll.inplace_output(rank, index) if coll.inplace else ("o", index)


def place(alg: Algorithm, flow: Flow) -> tuple[list[int], list[Copy]]:
    """Set ``loc`` of every stored version; return scratch slots per rank and final copies.

    Sink locations are ``("sink", threadblock id)``, to be given scratch offsets later.
    """
    coll = alg.collective
    content: dict[tuple[int, Loc], Version] = {}
    touched: dict[tuple[int, Loc], int] = {}  # last transfer reading or writing a location
    slots: dict[tuple[int, int], int] = {}
    nslots = [0] * coll.num_ranks

    def scratch(rank: int, chunk: int) -> Loc:
        if (rank, chunk) not in slots:
            slots[(rank, chunk)] = nslots[rank]
            nslots[rank] += 1
        return ("s", slots[(rank, chunk)])

    def live(v: Version | None, chunk: int, k: int) -> bool:
        return (
            v is not None
            and v.chunk != chunk
            and (v.final or (bool(v.readers) and v.readers[-1] > k))
        )

    dest: dict[tuple[int, int], Loc] = {}
    for v in flow.finals:
        out = output_loc(coll, v.rank, v.chunk)
        assert out is not None, f"rank {v.rank}: final chunk {v.chunk} is not its output"
        dest[(v.rank, v.chunk)] = out
    for v in flow.inputs:
        v.loc = input_loc(coll, v.rank, v.chunk)
        content[(v.rank, v.loc)] = v
    for k, (v, w) in enumerate(zip(flow.sent, flow.made)):
        if v.stored:
            touched[(v.rank, placed(v))] = k
        if w.operand is not None:
            touched[(w.rank, placed(w.operand))] = k
        if not w.stored:
            continue
        loc = dest.get((w.rank, w.chunk))  # finals are exactly the postcondition pairs
        if loc is None or live(content.get((w.rank, loc)), w.chunk, k):
            loc = ("sink", w.sink) if w.sink is not None else scratch(w.rank, w.chunk)
        w.loc = loc
        content[(w.rank, loc)] = w
        touched[(w.rank, loc)] = k
    copies = []
    for v in flow.finals:
        dst = dest[(v.rank, v.chunk)]
        if v.loc != dst:
            after = max(-1 if v.producer is None else v.producer, touched.get((v.rank, dst), -1))
            copies.append(Copy(v, dst, after))
    return nslots, copies

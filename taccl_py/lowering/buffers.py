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


def blocks(alg: Algorithm) -> list[list[int]]:
    """The transfers that a schedule sends at once (one sender, receiver, channel and start
    time), two or more of consecutive chunks: a block that should go as one step. None
    without a schedule (a baseline's transfers all start at 0).

    >>> from taccl_py.ir.algorithm import Transfer
    >>> ts = [Transfer(0, 0.0, 0, 1, 0), Transfer(0, 0.0, 0, 1, 1), Transfer(1, 1.0, 0, 1, 3)]
    >>> blocks(Algorithm("x", Collective("allgather", 2, chunkup=2), ts, "t", 1, {}))
    [[0, 1]]
    """
    if len({t.start for t in alg.transfers}) < 2:
        return []
    at_once: dict[tuple, list[int]] = {}
    for k, t in enumerate(alg.transfers):
        at_once.setdefault((t.src, t.dst, t.channel, t.start), []).append(k)
    out = []
    for ks in at_once.values():
        cs = [alg.transfers[k].chunk for k in ks]
        if max(cs) - min(cs) + 1 == len(cs) == len(set(cs)) > 1:
            out.append(ks)
    return out


def place(alg: Algorithm, flow: Flow) -> tuple[list[int], list[Copy]]:
    """Set ``loc`` of every stored version; return scratch slots per rank and final copies.

    Sink locations are ``("sink", threadblock id)``, to be given scratch offsets later.
    Partial values that a block (:func:`blocks`) brings to a rank that keeps only some of
    its chunks (a ReduceScatter's relay) stay in scratch together, the rank's own too, so
    that the block is received in one step; only their final values go to the output.
    A block's scratch slots are consecutive, in chunk order.
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
    at_once = blocks(alg)
    together = {  # the transfers of blocks whose receiver keeps some of their chunks only
        k
        for ks in at_once
        if len({(alg.transfers[k].dst, alg.transfers[k].chunk) in dest for k in ks}) > 1
        for k in ks
    }
    # a block's scratch slots are consecutive in chunk order, the largest blocks' first
    # (a smaller one is a part of one): so it is received, and sent on, as one step
    for ks in sorted(at_once, key=lambda ks: (-len(ks), ks[0])):
        pairs = sorted(
            (alg.transfers[k].dst, alg.transfers[k].chunk)
            for k in ks
            if flow.made[k].stored
            and flow.made[k].sink is None
            and (
                (alg.transfers[k].dst, alg.transfers[k].chunk) not in dest
                or (k in together and not flow.made[k].final)
            )
        )
        if len(pairs) > 1 and not any(p in slots for p in pairs):
            for rank, chunk in pairs:
                scratch(rank, chunk)
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
        if (
            loc is None
            or live(content.get((w.rank, loc)), w.chunk, k)
            or (k in together and not w.final)
        ):
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

"""Plan verification: what a correct MSCCL plan means, checked at the data level.

:func:`check_limits` checks the XML format and the limits of the loosest MSCCL runtime
(:class:`PlanError`; :func:`~taccl_py.plan.runtimes.check_runtime` has each runtime's
own). :func:`verify` then runs the plan symbolically
(:class:`VerificationError` on the first fault): every input chunk is one contribution
``(rank, input_index)``, a value is the set of contributions it holds.

The run is done by :class:`Interpreter`, which is shared with the numeric reference
executor: threadblocks run their steps in order; a step waits for its dependency; a
connection (sender, receiver, channel) is an unbounded FIFO, so a send never blocks and the
n-th send matches the n-th receive. Threadblocks of one rank share memory and run
concurrently, so every pair of conflicting accesses to a location must be ordered by
happens-before (program order, dependencies, send -> matching receive); vector clocks over
all threadblocks check this (FastTrack-style: per location the last write and the reads
since). Faults other than races (reading uninitialised data, reducing a contribution twice)
are reported after the run, so a race that explains them is reported instead.

Rooted collectives: only the root holds a Broadcast's or Scatter's input (other ranks
start with nothing), and only the root's output is checked for Reduce and Gather
(other ranks' outputs are unconstrained). Out of place, no step may touch a buffer that
NCCL reads only on the root (a non-root's Broadcast/Scatter input, Reduce/Gather output).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, cast, overload

import numpy as np

from ..collectives import ALLGATHER, GATHER, REDUCE, REDUCESCATTER, SCATTER, Collective
from ..errors import PlanError, VerificationError
from ..util.nogc import gc_paused
from .model import (
    RECV_TYPES,
    REDUCE_TYPES,
    SEND_TYPES,
    STEP_TYPES,
    GpuPlan,
    Plan,
    has_input,
    has_output,
)
from .runtimes import PROTOCOLS, RUNTIMES
from .xml import BUFFERS

# what at least one runtime loads (lowering/runtimes.py); steps per threadblock: what a
# custom build may take, up to the children the XML reader keeps per element
MAX_TBS = max(r.max_tbs for r in RUNTIMES.values())
MAX_TBS_PER_CHANNEL = max(r.max_tbs_per_channel for r in RUNTIMES.values())
CHANNELS = max(r.channels for r in RUNTIMES.values())
MAX_STEPS = max(r.max_children for r in RUNTIMES.values())
MAX_CNT = max(r.max_cnt for r in RUNTIMES.values())
REDOPS = ("sum", "prod", "max", "min")
_CLOCK_BITS = 16  # a clock (a step count, at most MAX_STEPS) in the low bits of an int
_CLOCK_MASK = (1 << _CLOCK_BITS) - 1
READS_SRC = frozenset({"s", "rrc", "rrs", "rrcs", "cpy", "re"})
WRITES_DST = frozenset({"r", "rcs", "rrc", "rrcs", "cpy", "re"})

V = TypeVar("V")

#: a message in flight: (values, sender's clock, sender's depth, sender tb, sender step)
_Message = tuple[tuple[Any, ...], np.ndarray, int, int, int]
#: why an unfinished threadblock waits: a receive on a connection, or a step it depends on
_Blocked = tuple[Literal["recv"], int] | tuple[Literal["dep"], tuple[int, int]]


@dataclass(frozen=True)
class VerifyReport:
    """Size-independent statistics of a verified plan."""

    ranks: int
    threadblocks: int
    max_tbs_per_gpu: int
    max_steps_per_tb: int
    steps: int
    sends: int  # send-type steps (s, rcs, rrs, rrcs)
    receives: int
    reductions: int  # reducing steps (rrc, rrs, rrcs, re)
    copies: int
    nops: int
    chunks_sent: int  # sum of cnt over send-type steps
    connections: int  # distinct (sender, receiver, channel) used
    depth: int  # longest happens-before chain, in steps

    def summary(self) -> str:
        """One line for humans."""
        return (
            f"{self.steps} steps ({self.sends} sends, {self.reductions} reductions, "
            f"{self.nops} nops) in {self.threadblocks} threadblocks (<= {self.max_tbs_per_gpu}"
            f" per rank, <= {self.max_steps_per_tb} steps each), {self.connections} "
            f"connections, critical path {self.depth} steps"
        )


# -- format and runtime limits -------------------------------------------------------------


def canonical_location(coll: Collective, rank: int, buf: str, off: int) -> tuple[str, int]:
    """Where ``buf[off]`` of ``rank`` really lives (in-place plans alias input and output)."""
    if coll.inplace:
        if buf == "i":
            return coll.inplace_input(rank, off)
        if buf == "o":
            return coll.inplace_output(rank, off)
    return buf, off


def check_limits(plan: Plan) -> None:
    """Raise :class:`PlanError` if no MSCCL runtime would load and run ``plan`` right.

    >>> check_limits(Plan("p", "allgather", 2, 2))
    Traceback (most recent call last):
    taccl_py.errors.PlanError: ngpus=2 but the gpu ids are [] (need 0..1 once each)
    """
    n = plan.ngpus
    if n < 1:
        raise PlanError(f"ngpus must be >= 1, got {n}")
    ids = sorted(g.id for g in plan.gpus)
    if ids != list(range(n)):
        raise PlanError(f"ngpus={n} but the gpu ids are {_short(ids)} (need 0..{n - 1} once each)")
    if plan.nchunksperloop < 1 or plan.nchunksperloop % n:
        raise PlanError(
            f"nchunksperloop={plan.nchunksperloop} must be a positive multiple of ngpus={n}"
        )
    if plan.proto not in PROTOCOLS:
        raise PlanError(f"proto {plan.proto!r} is not one of {', '.join(PROTOCOLS)}")
    if not 1 <= plan.nchannels <= CHANNELS:
        raise PlanError(f"nchannels={plan.nchannels} outside 1..{CHANNELS}")
    if plan.min_bytes < 0 or plan.max_bytes < 0 or 0 < plan.max_bytes < plan.min_bytes:
        raise PlanError(
            f"minBytes={plan.min_bytes} / maxBytes={plan.max_bytes}: both must be "
            ">= 0 and min <= max (max 0 = unbounded)"
        )
    coll = plan.collective()
    if coll.reducing and plan.redop not in REDOPS:
        raise PlanError(
            f"redop {plan.redop!r} for a reducing collective; use one of {', '.join(REDOPS)}"
        )
    for gpu in sorted(plan.gpus, key=lambda g: g.id):
        _check_gpu(plan, coll, gpu)


def _check_gpu(plan: Plan, coll: Collective, gpu: GpuPlan) -> None:
    where = f"gpu {gpu.id}"
    n, per_loop = plan.ngpus, plan.nchunksperloop
    for name in ("i_chunks", "o_chunks", "s_chunks"):
        if getattr(gpu, name) < 0:
            raise PlanError(f"{where}: {name}={getattr(gpu, name)} is negative")
    # a gather's input and a scatter's output are one block, as AllGather's and
    # ReduceScatter's (msccl checks this for those two; it loads neither rooted one)
    m_in = n if coll.kind in (ALLGATHER, GATHER) else 1
    m_out = n if coll.kind in (REDUCESCATTER, SCATTER) else 1
    if gpu.i_chunks > 0 and gpu.i_chunks * m_in != per_loop:
        raise PlanError(f"{where}: i_chunks={gpu.i_chunks} x {m_in} != nchunksperloop={per_loop}")
    if gpu.o_chunks > 0 and gpu.o_chunks * m_out != per_loop:
        raise PlanError(f"{where}: o_chunks={gpu.o_chunks} x {m_out} != nchunksperloop={per_loop}")
    mode = "in-place" if coll.inplace else "out-of-place"
    for role, buf, count, held in (
        ("input", "i", coll.i_chunks, has_input(coll, gpu.id)),
        ("output", "o", coll.o_chunks, has_output(coll, gpu.id)),
    ):
        real, last = canonical_location(coll, gpu.id, buf, count - 1)
        if held and last >= plan.buffer_size(gpu, real):
            raise PlanError(
                f"{where}: {real}_chunks={plan.buffer_size(gpu, real)} has no room "
                f"for the {role} of the {mode} {coll.label} ({count} chunks)"
            )
    if len(gpu.tbs) > MAX_TBS:
        raise PlanError(
            f"{where}: {len(gpu.tbs)} threadblocks, no MSCCL runtime loads more than {MAX_TBS}"
        )
    tids = sorted(tb.id for tb in gpu.tbs)
    if tids != list(range(len(gpu.tbs))):
        raise PlanError(
            f"{where}: threadblock ids {_short(tids)} must be 0..{len(tids) - 1} "
            "without gaps or repeats"
        )
    steps_of = {tb.id: tb.steps for tb in gpu.tbs}
    sizes = {buf: plan.buffer_size(gpu, buf) for buf in BUFFERS}
    owner: dict[tuple[str, int, int], int] = {}
    per_channel: Counter[tuple[str, int]] = Counter()
    for tb in sorted(gpu.tbs, key=lambda t: t.id):
        wtb = f"{where} tb {tb.id}"
        for role, peer in (("send", tb.send), ("recv", tb.recv)):
            if peer != -1 and (not 0 <= peer < n or peer == gpu.id):
                raise PlanError(
                    f"{wtb}: {role} peer {peer} must be -1 or another rank in 0..{n - 1}"
                )
            if peer == -1:
                continue
            key = (role, tb.chan, peer)
            if key in owner:
                verb = "sends to" if role == "send" else "receives from"
                raise PlanError(
                    f"{wtb}: tb {owner[key]} already {verb} rank {peer} on channel {tb.chan}"
                )
            owner[key] = tb.id
            per_channel[(role, tb.chan)] += 1
            if per_channel[(role, tb.chan)] > MAX_TBS_PER_CHANNEL:
                raise PlanError(
                    f"{wtb}: more than {MAX_TBS_PER_CHANNEL} threadblocks {role} "
                    f"on channel {tb.chan}"
                )
        if not 0 <= tb.chan < min(CHANNELS, plan.nchannels):
            top = min(CHANNELS, plan.nchannels) - 1
            raise PlanError(f"{wtb}: chan {tb.chan} outside 0..{top} (nchannels={plan.nchannels})")
        if len(tb.steps) > MAX_STEPS:
            raise PlanError(
                f"{wtb}: {len(tb.steps)} steps, no MSCCL runtime loads more than {MAX_STEPS}"
            )
        for i, st in enumerate(tb.steps):
            if st.s != i:
                raise PlanError(
                    f"{wtb}: step #{i} has s={st.s}; steps must be numbered 0, 1, ... in order"
                )
            _check_step(gpu, sizes, tb, i, steps_of, wtb)


def _check_step(gpu: GpuPlan, sizes: dict[str, int], tb, i: int, steps_of: dict, wtb: str) -> None:
    st = tb.steps[i]
    if st.type not in STEP_TYPES:
        raise PlanError(f"{wtb} step {i}: unknown step type {st.type!r}")
    if st.type != "nop" and not 1 <= st.cnt <= MAX_CNT:
        raise PlanError(f"{_at(wtb, st)}: cnt={st.cnt} outside 1..{MAX_CNT}")
    if st.type in SEND_TYPES and tb.send < 0:
        raise PlanError(f"{_at(wtb, st)}: sends but its threadblock has no send peer")
    if st.type in RECV_TYPES and tb.recv < 0:
        raise PlanError(f"{_at(wtb, st)}: receives but its threadblock has no recv peer")
    if st.type in READS_SRC:
        _check_range(wtb, st, "src", st.srcbuf, st.srcoff, sizes)
    if st.type in WRITES_DST:
        _check_range(wtb, st, "dst", st.dstbuf, st.dstoff, sizes)
    if st.hasdep not in (0, 1):
        raise PlanError(f"{_at(wtb, st)}: hasdep={st.hasdep} must be 0 or 1")
    if (st.depid == -1) != (st.deps == -1):
        raise PlanError(f"{_at(wtb, st)}: depid={st.depid} deps={st.deps}: both -1 or both set")
    if st.depid != -1:
        where = _at(wtb, st)
        target = steps_of.get(st.depid)
        if target is None:
            raise PlanError(f"{where}: depends on tb {st.depid}, which gpu {gpu.id} lacks")
        if not 0 <= st.deps < len(target):
            raise PlanError(
                f"{where}: depends on tb {st.depid} step {st.deps}, which does not "
                f"exist ({len(target)} steps)"
            )
        dep = target[st.deps]
        if dep.type == "nop":
            raise PlanError(
                f"{where}: depends on tb {st.depid} step {st.deps}, a nop (the runtime "
                "never signals nops)"
            )
        if dep.hasdep != 1:
            raise PlanError(
                f"{where}: depends on tb {st.depid} step {st.deps}, whose hasdep=0 "
                "(the runtime would not signal it)"
            )
        if st.type == "nop":
            after = next((s for s in tb.steps[i + 1 :] if s.type != "nop"), None)
            if after is not None and after.depid == -1:
                raise PlanError(
                    f"{where}: its dependency chain ends at step {after.s} "
                    f"({after.type}), which has no dependency of its own (the "
                    "runtime rejects this)"
                )


def _check_range(wtb: str, st, which: str, buf, off: int, sizes: dict[str, int]) -> None:
    if buf not in BUFFERS:
        raise PlanError(f"{_at(wtb, st)}: needs a {which} buffer (i, o or s), got {buf!r}")
    size = sizes[buf]
    if off < 0 or off + st.cnt > size:
        raise PlanError(
            f"{_at(wtb, st)}: {which} {buf}[{off}:{off + st.cnt}] is outside buffer "
            f"'{buf}' ({size} chunks)"
        )


def _at(wtb: str, st) -> str:
    """A step's position in messages (its ``s`` is its index, checked before)."""
    return f"{wtb} step {st.s} ({st.type})"


def _short(items: list, limit: int = 8) -> str:
    text = ", ".join(map(str, items[:limit]))
    return f"[{text}{', ...' if len(items) > limit else ''}]"


# -- the interpreter -----------------------------------------------------------------------


class _Op:
    """A compiled step: location ids, dependency (tb index, step), connection ids."""

    __slots__ = ("type", "src", "dst", "cnt", "dep", "rconn", "sconn", "snap")

    def __init__(self, type_, src, dst, cnt, dep, rconn, sconn, snap):
        self.type, self.src, self.dst, self.cnt = type_, src, dst, cnt
        self.dep, self.rconn, self.sconn, self.snap = dep, rconn, sconn, snap


class Interpreter(Generic[V]):
    """Executes a plan (that passed :func:`check_limits`) on per-chunk values.

    ``initial(rank, input_index)`` gives each input chunk's value (a rank the collective
    gives no input, a non-root of Broadcast or Scatter, starts with none); ``reduce(a, b)``
    combines two values and may raise :class:`VerificationError` (reported with the
    step's position).
    After :meth:`run`, :meth:`output` reads each rank's output chunks.
    """

    def __init__(
        self, plan: Plan, initial: Callable[[int, int], V], reduce: Callable[[V, V], V]
    ) -> None:
        self.plan = plan
        self.coll = coll = plan.collective()
        self.reduce = reduce
        # locations are numbered rank by rank, buffer by buffer (i, o, s): no table of them
        self._first: list[int] = []  # each rank's first location
        self._bases: list[tuple[int, int, int]] = []  # each rank's buffers' first locations
        extent = {g.id: (g.i_chunks, g.o_chunks, g.s_chunks) for g in plan.gpus}
        total = 0
        for rank in range(plan.ngpus):
            ni, no, ns = extent.get(rank, (0, 0, 0))
            ni, no = max(ni, coll.i_chunks), max(no, coll.o_chunks)
            self._first.append(total)
            self._bases.append((total, total + ni, total + ni + no))
            total += ni + no + ns
        self.mem: list = [None] * total
        for rank in range(plan.ngpus):
            if has_input(coll, rank):
                for j in range(coll.i_chunks):
                    self.mem[self._loc(rank, "i", j)] = initial(rank, j)
        gpus = sorted(plan.gpus, key=lambda g: g.id)
        self.tbs = [(g.id, tb) for g in gpus for tb in sorted(g.tbs, key=lambda t: t.id)]
        # a rank's tbs are numbered 0.. (check_limits), so tb t of rank r is base[r] + t
        base: dict[int, int] = {}
        for i, (rank, _) in enumerate(self.tbs):
            base.setdefault(rank, i)
        self._conns: dict[tuple[int, int, int], int] = {}
        spans: dict[tuple[int, str | None, int, int], tuple[int, ...]] = {}
        self.ops: list[list[_Op]] = []
        deps = []
        for _g, (rank, tb) in enumerate(self.tbs):
            ops = []
            rconn = sconn = None
            for st in tb.steps:
                t = st.type
                src: tuple[int, ...] | None = ()
                dst: tuple[int, ...] | None = ()
                # check_limits gave every step that reads (writes) a src (dst) buffer
                if t in READS_SRC:
                    key = (rank, st.srcbuf, st.srcoff, st.cnt)
                    src = spans.get(key)
                    if src is None:
                        src = spans[key] = self._span(rank, cast(str, st.srcbuf), st.srcoff, st.cnt)
                if t in WRITES_DST:
                    key = (rank, st.dstbuf, st.dstoff, st.cnt)
                    dst = spans.get(key)
                    if dst is None:
                        dst = spans[key] = self._span(rank, cast(str, st.dstbuf), st.dstoff, st.cnt)
                dep = None
                if st.depid >= 0:
                    dep = (base[rank] + st.depid, st.deps)
                    deps.append(dep)
                # connection ids in order of first use: the unmatched-send report follows it
                if t in RECV_TYPES and rconn is None:
                    rconn = self._conn(tb.recv, rank, tb.chan)
                if t in SEND_TYPES and sconn is None:
                    sconn = self._conn(rank, tb.send, tb.chan)
                ops.append(
                    _Op(
                        t,
                        src,
                        dst,
                        st.cnt,
                        dep,
                        rconn if t in RECV_TYPES else None,
                        sconn if t in SEND_TYPES else None,
                        False,
                    )
                )
            self.ops.append(ops)
        # steps others depend on -> how many depend on each (a snapshot of the step's
        # vector clock is kept until the last of them has used it)
        self._snap_uses = Counter(deps)
        for g, s in self._snap_uses:
            self.ops[g][s].snap = True
        self.depth = 0
        self._fault: str | None = None

    def _loc(self, rank: int, buf: str, off: int) -> int:
        buf, off = canonical_location(self.coll, rank, buf, off)
        return self._bases[rank][BUFFERS.index(buf)] + off

    def _span(self, rank: int, buf: str, off: int, cnt: int) -> tuple[int, ...]:
        return tuple(self._loc(rank, buf, off + c) for c in range(cnt))

    def _conn(self, sender: int, receiver: int, chan: int) -> int:
        return self._conns.setdefault((sender, receiver, chan), len(self._conns))

    @property
    def connections(self) -> int:
        """Distinct (sender, receiver, channel) connections the plan uses."""
        return len(self._conns)

    def output(self, rank: int, index: int) -> V | None:
        """Value of output chunk ``index`` of ``rank`` (None if never written)."""
        return self.mem[self._loc(rank, "o", index)]

    def _where(self, loc: int) -> str:
        rank = bisect_right(self._first, loc) - 1
        b = bisect_right(self._bases[rank], loc) - 1
        return f"rank {rank} {BUFFERS[b]}[{loc - self._bases[rank][b]}]"

    def _step_name(self, g: int, s: int) -> str:
        rank, tb = self.tbs[g]
        return f"rank {rank} tb {tb.id} step {s} ({tb.steps[s].type})"

    # -- scheduling -----------------------------------------------------------------------
    def run(self, *, local: bool = False) -> Interpreter[V]:
        """Execute every threadblock to completion; raise VerificationError on a fault.

        With ``local``, clocks hold only the entries of the threadblock's own rank (the
        only ones a race check reads: a rank's steps touch its own buffers only) and a
        message from another rank orders nothing: a rank's threadblocks are then ordered
        only by their dependencies and messages among themselves, a subset of the
        happens-before order. Memory grows with the threadblocks per rank instead of
        their square; a plan without races here has none, and one with a race here may
        still be ordered through other ranks (run again without ``local`` to know).
        """
        ntb = len(self.tbs)
        self.pc = pc = [0] * ntb
        rank_of = [rank for rank, _ in self.tbs]
        # clock entry of each tb: its own (whole cluster) or its number in its rank
        self.entry = entry = [tb.id for _, tb in self.tbs] if local else list(range(ntb))
        width = max(entry, default=-1) + 1
        # a clock is a step count (<= MAX_STEPS): one byte each where every tb has fewer
        # than 256 steps
        longest = max((len(ops) for ops in self.ops), default=0)
        dtype = np.uint8 if longest <= np.iinfo(np.uint8).max else np.int16
        # A tb's clock is made at its first step and dropped when it finishes. Messages and
        # snapshots share it as it was at their step: the tb's next merge makes a new array
        # instead of changing it, but the tb sets its own entry in place, so users take
        # that entry from the step.
        self.vc: list[np.ndarray | None] = [None] * ntb
        self.shared = shared = [False] * ntb
        self.snap_uses = snap_uses = dict(self._snap_uses)
        self.lam = lams = [0] * ntb
        self.queues: list[deque[_Message]] = [deque() for _ in self._conns]
        queues = self.queues
        self.conn_waiter = conn_waiter = [-1] * len(self._conns)
        self.dep_waiters: list[list[int]] = [[] for _ in range(ntb)]
        dep_waiters = self.dep_waiters
        self.blocked: list[_Blocked | None] = [None] * ntb  # why an unfinished tb waits
        self.snaps: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        snaps = self.snaps
        # each location's last write, its tb and clock as one int (see _CLOCK_BITS)
        self.wr: list[int | None] = [None] * len(self.mem)
        self.unread: list[tuple[int, int, int, V]] = []  # (gpu, step, loc, overwritten value)
        # the reads of a location since its last write: tb -> clock, or one as an int
        self.rds: list[dict[int, int] | int | None] = [None] * len(self.mem)
        self.ready = ready = deque(range(ntb))
        self.queued = queued = [True] * ntb
        read, write, combine, maximum = self._read, self._write, self._combine, np.maximum
        depth = 0
        while ready:
            g = ready.popleft()
            queued[g] = False
            ops, vc, lam, sh = self.ops[g], self.vc[g], lams[g], shared[g]
            k = start = pc[g]
            while k < len(ops):
                op = ops[k]
                dep = op.dep
                if dep is not None and pc[dep[0]] <= dep[1]:
                    self.blocked[g] = ("dep", dep)
                    dep_waiters[dep[0]].append(g)
                    break
                rconn = op.rconn
                if rconn is not None:
                    queue = queues[rconn]
                    if not queue:
                        self.blocked[g] = ("recv", rconn)
                        conn_waiter[rconn] = g
                        break
                clk = k + 1
                if vc is None:
                    vc = np.zeros(width, dtype=dtype)
                if dep is not None:
                    snap_vc, snap_lam = snaps[dep]
                    left = snap_uses[dep] - 1
                    if left:
                        snap_uses[dep] = left
                    else:  # its last user: free the snapshot
                        del snaps[dep], snap_uses[dep]
                    dg = entry[dep[0]]  # (a dependency is on a tb of the same rank)
                    mine = vc[dg]
                    if sh:
                        vc, sh = maximum(vc, snap_vc), False
                    else:
                        maximum(vc, snap_vc, out=vc)
                    vc[dg] = max(mine, dep[1] + 1)
                    if snap_lam > lam:
                        lam = snap_lam
                # what a receive got (only receiving steps read it)
                incoming: tuple[Any, ...] = ()
                if rconn is not None:
                    incoming, msg_vc, msg_lam, sg, ss = queue.popleft()
                    if len(incoming) != op.cnt:
                        raise VerificationError(
                            f"{self._step_name(g, k)} receives cnt={op.cnt} but the matching "
                            f"send {self._step_name(sg, ss)} has cnt={len(incoming)}"
                        )
                    if not local or rank_of[sg] == rank_of[g]:
                        se = entry[sg]
                        mine = vc[se]
                        if sh:
                            vc, sh = maximum(vc, msg_vc), False
                        else:
                            maximum(vc, msg_vc, out=vc)
                        vc[se] = max(mine, ss + 1)
                    if msg_lam > lam:
                        lam = msg_lam
                vc[entry[g]] = clk  # after the merges: no clock sent earlier holds a later step
                lam += 1
                t = op.type
                if t != "nop":
                    src = [read(g, k, clk, vc, loc) for loc in op.src]
                    out: Sequence[Any]
                    if t == "s" or t == "cpy":
                        out = src
                    elif t == "r" or t == "rcs":
                        out = incoming
                    elif t == "re":
                        out = [
                            combine(g, k, loc, read(g, k, clk, vc, loc), b)
                            for loc, b in zip(op.dst, src)
                        ]
                    else:  # rrc, rrs, rrcs
                        out = [combine(g, k, loc, a, b) for loc, a, b in zip(op.src, incoming, src)]
                    for loc, value in zip(op.dst, out):
                        write(g, k, clk, vc, loc, value)
                    if op.sconn is not None:
                        queues[op.sconn].append((tuple(out), vc, lam, g, k))
                        sh = True
                        waiter = conn_waiter[op.sconn]
                        if waiter >= 0 and not queued[waiter]:
                            queued[waiter] = True
                            ready.append(waiter)
                        conn_waiter[op.sconn] = -1
                if op.snap:
                    snaps[(g, k)] = (vc, lam)
                    sh = True
                k += 1
                pc[g] = k
            lams[g], shared[g] = lam, sh
            # once finished, nothing reads its clock again
            self.vc[g] = vc if k < len(ops) else None
            if lam > depth:
                depth = lam
            if k > start and dep_waiters[g]:
                waiters, dep_waiters[g] = dep_waiters[g], []
                for w in waiters:
                    if not queued[w]:
                        queued[w] = True
                        ready.append(w)
        self.depth = depth
        if self._fault:
            raise VerificationError(self._fault)
        self._check_finished()
        return self

    def _combine(self, g: int, k: int, loc: int, a, b):
        if a is None or b is None:
            return None
        try:
            return self.reduce(a, b)
        except VerificationError as exc:
            if self._fault is None:
                self._fault = f"{self._step_name(g, k)} at {self._where(loc)}: {exc}"
            return None

    def _read(self, g: int, k: int, clk: int, vc: np.ndarray, loc: int):
        w = self.wr[loc]
        if (
            w is not None
            and w >> _CLOCK_BITS != g
            and vc[self.entry[w >> _CLOCK_BITS]] < w & _CLOCK_MASK
        ):
            self._race(loc, (w >> _CLOCK_BITS, w & _CLOCK_MASK), "writes", g, k, "reads")
        rds = self.rds[loc]
        if isinstance(rds, dict):
            rds[g] = clk
        elif rds is None or rds >> _CLOCK_BITS == g:
            self.rds[loc] = g << _CLOCK_BITS | clk  # one reader: one int, not a dict
        else:
            self.rds[loc] = {rds >> _CLOCK_BITS: rds & _CLOCK_MASK, g: clk}
        value = self.mem[loc]
        if value is None and self._fault is None:
            self._fault = f"{self._step_name(g, k)} reads uninitialised {self._where(loc)}"
        return value

    def _write(self, g: int, k: int, clk: int, vc: np.ndarray, loc: int, value) -> None:
        w = self.wr[loc]
        if (
            w is not None
            and w >> _CLOCK_BITS != g
            and vc[self.entry[w >> _CLOCK_BITS]] < w & _CLOCK_MASK
        ):
            self._race(loc, (w >> _CLOCK_BITS, w & _CLOCK_MASK), "writes", g, k, "writes")
        rds = self.rds[loc]
        if rds is not None:
            if not isinstance(rds, dict):
                rds = {rds >> _CLOCK_BITS: rds & _CLOCK_MASK}
            for other, oclk in rds.items():
                if other != g and vc[self.entry[other]] < oclk:
                    self._race(loc, (other, oclk), "reads", g, k, "writes")
            self.rds[loc] = None
        elif self.mem[loc] is not None:  # a value nobody read is lost
            self.unread.append((g, k, loc, self.mem[loc]))
        self.wr[loc] = g << _CLOCK_BITS | clk
        self.mem[loc] = value

    def _race(
        self, loc: int, first: tuple[int, int], first_verb: str, g: int, k: int, verb: str
    ) -> None:
        og, oclk = first
        _, otb = self.tbs[og]
        _, tb = self.tbs[g]
        raise VerificationError(
            f"race on {self._where(loc)}: tb {otb.id} step {oclk - 1} ({otb.steps[oclk - 1].type}) "
            f"{first_verb} it and tb {tb.id} step {k} ({tb.steps[k].type}) {verb} it with "
            "nothing ordering them (missing dependency)"
        )

    def _check_finished(self) -> None:
        stuck = []
        for g, ops in enumerate(self.ops):
            if self.pc[g] < len(ops):
                blocked = self.blocked[g]
                assert blocked is not None, "a threadblock stops only at a step that waits"
                if blocked[0] == "recv":
                    conn = blocked[1]
                    sender, _, chan = next(c for c, i in self._conns.items() if i == conn)
                    wait = f"a send from rank {sender} on channel {chan}"
                else:
                    dg, ds = blocked[1]
                    wait = f"tb {self.tbs[dg][1].id} step {ds}"
                stuck.append(f"{self._step_name(g, self.pc[g])} waits for {wait}")
        if stuck:
            more = f"; ... (+{len(stuck) - 8} more)" if len(stuck) > 8 else ""
            raise VerificationError(f"deadlock: {'; '.join(stuck[:8])}{more}")
        pending = [q[0] for q in self.queues if q]
        if pending:
            values, _, _, g, k = pending[0]
            rank, tb = self.tbs[g]
            more = (
                f" (+{len(pending) - 1} more connections with unmatched sends)"
                if len(pending) > 1
                else ""
            )
            raise VerificationError(
                f"unmatched send: {self._step_name(g, k)} sends {len(values)} chunk(s) to rank "
                f"{tb.send} on channel {tb.chan} that no step receives{more}"
            )


# -- symbolic verification -----------------------------------------------------------------


@gc_paused()
def verify(plan: Plan) -> VerifyReport:
    """Check limits, then run ``plan`` symbolically; raise on the first fault (a rooted
    plan read without a ``root`` attribute is checked as root 0, which a fault says).

    A 2-rank AllGather: each rank sends its input chunk to the other, receives the
    other's, and copies its own into place.

    >>> from taccl_py.plan.model import Step, Threadblock
    >>> def gpu(r):
    ...     steps = [Step(0, "s", "i", 0), Step(1, "r", dstbuf="o", dstoff=1 - r)]
    ...     steps.append(Step(2, "cpy", "i", 0, "o", r))
    ...     return GpuPlan(r, 1, 2, tbs=[Threadblock(0, send=1 - r, recv=1 - r, steps=steps)])
    >>> plan = Plan("ag", "allgather", 2, 2, gpus=[gpu(0), gpu(1)])
    >>> report = verify(plan)
    >>> report.steps, report.sends, report.connections, report.depth
    (6, 2, 2, 3)
    >>> del plan.gpus[1].tbs[0].steps[2]  # rank 1 no longer copies its own chunk
    >>> verify(plan)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    taccl_py.errors.VerificationError: rank 1 o[1] (chunk 1): expected {(1,0)}, got nothing ...
    """
    try:
        return _verify(plan)
    except (PlanError, VerificationError) as exc:
        if not plan.root_assumed:
            raise
        raise type(exc)(f"{exc} (root 0 assumed: the plan gives no root attribute)") from None


def _verify(plan: Plan) -> VerifyReport:
    check_limits(plan)
    coll = plan.collective()
    _check_root_only(plan, coll)
    # A value is a set of contributions: bits numbered by (chunk, rank, input index), so
    # that a chunk's contributions are neighbours, held as (lowest bit, mask >> lowest
    # bit) to keep each mask as short as the value's span; errors use plain masks.
    contribs = sorted(coll.input_map, key=lambda c: (coll.input_map[c], c))
    index = {c: i for i, c in enumerate(contribs)}

    def reduce(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
        (alo, am), (blo, bm) = a, b
        lo = alo if alo < blo else blo
        am <<= alo - lo
        bm <<= blo - lo
        both = am & bm
        if both:
            r, j = min(contribs[lo + i] for i in range(both.bit_length()) if both >> i & 1)
            raise VerificationError(f"reduces contribution ({r},{j}) twice")
        return lo, am | bm

    def initial(rank: int, j: int) -> tuple[int, int]:
        return index[(rank, j)], 1

    try:  # rank-local clocks first (small); a fault there is confirmed with whole ones
        run = Interpreter(plan, initial, reduce).run(local=True)
    except VerificationError:
        run = Interpreter(plan, initial, reduce).run()
    want: dict[int, tuple[int, int]] = {}
    for (rank, out), chunk in sorted(coll.output_map.items()):
        if chunk not in want:
            mask = sum(1 << index[c] for c in coll.expected(chunk))
            lo = (mask & -mask).bit_length() - 1
            want[chunk] = (lo, mask >> lo)
        got = run.output(rank, out)
        if got != want[chunk]:
            _, buf, off = (rank, *canonical_location(coll, rank, "o", out))
            w, m = _mask(want[chunk]), _mask(got)
            raise VerificationError(
                f"rank {rank} {buf}[{off}] (chunk {chunk}): expected "
                f"{_fmt(w, contribs)}, got "
                f"{'nothing (never written)' if m is None else _fmt(m, contribs)}"
                f"{_diff(w, m, contribs)}{_lost(run, w, m, contribs)}"
            )
    return _report(plan, run.connections, run.depth)


def _check_root_only(plan: Plan, coll: Collective) -> None:
    """Out of place, a non-root's Broadcast/Scatter input and Reduce/Gather output are
    the root's only: NCCL ignores them on other ranks (they may be null there), so no
    step may touch them."""
    if not coll.rooted or coll.inplace:
        return
    buf = "o" if coll.kind in (REDUCE, GATHER) else "i"
    role = "output" if buf == "o" else "input"
    for gpu in sorted(plan.gpus, key=lambda g: g.id):
        if gpu.id == coll.root:
            continue
        for tb in sorted(gpu.tbs, key=lambda t: t.id):
            for st in tb.steps:
                for verb, b, off, used in (
                    ("reads", st.srcbuf, st.srcoff, st.type in READS_SRC),
                    ("writes", st.dstbuf, st.dstoff, st.type in WRITES_DST),
                ):
                    if used and b == buf:
                        raise VerificationError(
                            f"rank {gpu.id} tb {tb.id} step {st.s} ({st.type}) {verb} "
                            f"{buf}[{off}], but out of place a {coll.kind}'s {role} buffer "
                            f"is the root's (rank {coll.root}) only: NCCL ignores it on "
                            "other ranks, where it may be null"
                        )


@overload
def _mask(value: tuple[int, int]) -> int: ...
@overload
def _mask(value: None) -> None: ...
@overload
def _mask(value: tuple[int, int] | None) -> int | None: ...
def _mask(value: tuple[int, int] | None) -> int | None:
    """A value ``(lowest bit, mask >> lowest bit)`` as a plain mask (None stays None)."""
    return None if value is None else value[1] << value[0]


def _fmt(mask: int, contribs: list, limit: int = 6) -> str:
    items = sorted(contribs[i] for i in range(mask.bit_length()) if mask >> i & 1)
    text = ", ".join(f"({r},{j})" for r, j in items[:limit])
    return "{" + text + (f", ... {len(items)} in all" if len(items) > limit else "") + "}"


def _diff(want: int, got: int | None, contribs: list) -> str:
    if got is None or (want.bit_count() <= 6 and got.bit_count() <= 6):
        return ""
    parts = [
        f"{label} {_fmt(mask, contribs)}"
        for label, mask in (("missing", want & ~got), ("extra", got & ~want))
        if mask
    ]
    return f" ({', '.join(parts)})"


def _lost(run: Interpreter[tuple[int, int]], want: int, got: int | None, contribs: list) -> str:
    """Name the step that overwrote, unread, a value holding a missing contribution."""
    missing = want & ~(got or 0)
    for g, k, loc, value in run.unread:
        old = _mask(value)
        if old & missing:
            return (
                f"; {run._step_name(g, k)} overwrote {run._where(loc)} holding "
                f"{_fmt(old & missing, contribs)} before anything read it"
            )
    return ""


def _report(plan: Plan, connections: int, depth: int) -> VerifyReport:
    tbs = [tb for g in plan.gpus for tb in g.tbs]
    types = Counter(st.type for tb in tbs for st in tb.steps)
    return VerifyReport(
        ranks=plan.ngpus,
        threadblocks=len(tbs),
        max_tbs_per_gpu=max((len(g.tbs) for g in plan.gpus), default=0),
        max_steps_per_tb=max((len(tb.steps) for tb in tbs), default=0),
        steps=types.total(),
        sends=sum(types[t] for t in SEND_TYPES),
        receives=sum(types[t] for t in RECV_TYPES),
        reductions=sum(types[t] for t in REDUCE_TYPES),
        copies=types["cpy"],
        nops=types["nop"],
        chunks_sent=sum(st.cnt for tb in tbs for st in tb.steps if st.type in SEND_TYPES),
        connections=connections,
        depth=depth,
    )

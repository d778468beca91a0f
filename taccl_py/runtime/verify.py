"""Plan verification (``specs/msccl-xml.md``, "What a correct plan means").

:func:`check_limits` checks the XML format and the MSCCL runtime's limits
(:class:`PlanError`). :func:`verify` then runs the plan symbolically
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
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

import numpy as np

from ..collectives import ALLGATHER, REDUCESCATTER, Collective
from ..errors import PlanError, VerificationError
from ..lowering.plan import RECV_TYPES, REDUCE_TYPES, SEND_TYPES, STEP_TYPES, GpuPlan, Plan
from ..nogc import gc_paused
from ..lowering.xml import BUFFERS

MAX_TBS = 216
MAX_TBS_PER_CHANNEL = 32
MAX_CHANNEL = 32
MAX_STEPS = 256
MAX_CNT = 71
PROTOCOLS = ("Simple", "LL", "LL128")
REDOPS = ("sum", "prod", "max", "min")
READS_SRC = frozenset({"s", "rrc", "rrs", "rrcs", "cpy", "re"})
WRITES_DST = frozenset({"r", "rcs", "rrc", "rrcs", "cpy", "re"})

V = TypeVar("V")


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
        return (f"{self.steps} steps ({self.sends} sends, {self.reductions} reductions, "
                f"{self.nops} nops) in {self.threadblocks} threadblocks (<= {self.max_tbs_per_gpu}"
                f" per rank, <= {self.max_steps_per_tb} steps each), {self.connections} "
                f"connections, critical path {self.depth} steps")


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
    """Raise :class:`PlanError` if the MSCCL runtime would reject or mis-run ``plan``."""
    n = plan.ngpus
    if n < 1:
        raise PlanError(f"ngpus must be >= 1, got {n}")
    ids = sorted(g.id for g in plan.gpus)
    if ids != list(range(n)):
        raise PlanError(f"ngpus={n} but the gpu ids are {_short(ids)} (need 0..{n - 1} once each)")
    if plan.nchunksperloop < 1 or plan.nchunksperloop % n:
        raise PlanError(f"nchunksperloop={plan.nchunksperloop} must be a positive multiple of "
                        f"ngpus={n}")
    if plan.proto not in PROTOCOLS:
        raise PlanError(f"proto {plan.proto!r} is not one of {', '.join(PROTOCOLS)}")
    if not 1 <= plan.nchannels <= MAX_CHANNEL + 1:
        raise PlanError(f"nchannels={plan.nchannels} outside 1..{MAX_CHANNEL + 1}")
    if plan.min_bytes < 0 or plan.max_bytes < 0 or 0 < plan.max_bytes < plan.min_bytes:
        raise PlanError(f"minBytes={plan.min_bytes} / maxBytes={plan.max_bytes}: both must be "
                        ">= 0 and min <= max (max 0 = unbounded)")
    coll = plan.collective()
    if coll.reducing and plan.redop not in REDOPS:
        raise PlanError(f"redop {plan.redop!r} for a reducing collective; use one of "
                        f"{', '.join(REDOPS)}")
    for gpu in sorted(plan.gpus, key=lambda g: g.id):
        _check_gpu(plan, coll, gpu)


def _check_gpu(plan: Plan, coll: Collective, gpu: GpuPlan) -> None:
    where = f"gpu {gpu.id}"
    n, per_loop = plan.ngpus, plan.nchunksperloop
    for name in ("i_chunks", "o_chunks", "s_chunks"):
        if getattr(gpu, name) < 0:
            raise PlanError(f"{where}: {name}={getattr(gpu, name)} is negative")
    m_in = n if coll.kind == ALLGATHER else 1
    m_out = n if coll.kind == REDUCESCATTER else 1
    if gpu.i_chunks > 0 and gpu.i_chunks * m_in != per_loop:
        raise PlanError(f"{where}: i_chunks={gpu.i_chunks} x {m_in} != nchunksperloop={per_loop}")
    if gpu.o_chunks > 0 and gpu.o_chunks * m_out != per_loop:
        raise PlanError(f"{where}: o_chunks={gpu.o_chunks} x {m_out} != nchunksperloop={per_loop}")
    mode = "in-place" if coll.inplace else "out-of-place"
    for role, buf, count in (("input", "i", coll.i_chunks), ("output", "o", coll.o_chunks)):
        real, last = canonical_location(coll, gpu.id, buf, count - 1)
        if last >= plan.buffer_size(gpu, real):
            raise PlanError(f"{where}: {real}_chunks={plan.buffer_size(gpu, real)} has no room "
                            f"for the {role} of the {mode} {coll.kind} ({count} chunks)")
    if len(gpu.tbs) > MAX_TBS:
        raise PlanError(f"{where}: {len(gpu.tbs)} threadblocks, the runtime allows {MAX_TBS}")
    tids = sorted(tb.id for tb in gpu.tbs)
    if tids != list(range(len(gpu.tbs))):
        raise PlanError(f"{where}: threadblock ids {_short(tids)} must be 0..{len(tids) - 1} "
                        "without gaps or repeats")
    steps_of = {tb.id: tb.steps for tb in gpu.tbs}
    owner: dict[tuple[str, int, int], int] = {}
    per_channel: Counter[tuple[str, int]] = Counter()
    for tb in sorted(gpu.tbs, key=lambda t: t.id):
        wtb = f"{where} tb {tb.id}"
        for role, peer in (("send", tb.send), ("recv", tb.recv)):
            if peer != -1 and (not 0 <= peer < n or peer == gpu.id):
                raise PlanError(f"{wtb}: {role} peer {peer} must be -1 or another rank in "
                                f"0..{n - 1}")
            if peer == -1:
                continue
            key = (role, tb.chan, peer)
            if key in owner:
                verb = "sends to" if role == "send" else "receives from"
                raise PlanError(f"{wtb}: tb {owner[key]} already {verb} rank {peer} on "
                                f"channel {tb.chan}")
            owner[key] = tb.id
            per_channel[(role, tb.chan)] += 1
            if per_channel[(role, tb.chan)] > MAX_TBS_PER_CHANNEL:
                raise PlanError(f"{wtb}: more than {MAX_TBS_PER_CHANNEL} threadblocks {role} "
                                f"on channel {tb.chan}")
        if not 0 <= tb.chan <= MAX_CHANNEL or tb.chan >= plan.nchannels:
            top = min(MAX_CHANNEL, plan.nchannels - 1)
            raise PlanError(f"{wtb}: chan {tb.chan} outside 0..{top} (nchannels={plan.nchannels})")
        if len(tb.steps) > MAX_STEPS:
            raise PlanError(f"{wtb}: {len(tb.steps)} steps, the runtime allows {MAX_STEPS}")
        for i, st in enumerate(tb.steps):
            if st.s != i:
                raise PlanError(f"{wtb}: step #{i} has s={st.s}; steps must be numbered 0, 1, ... "
                                "in order")
            _check_step(plan, gpu, tb.send, tb.recv, tb.steps, i, steps_of, f"{wtb} step {i}")


def _check_step(plan: Plan, gpu: GpuPlan, send: int, recv: int, steps: list, i: int,
                steps_of: dict, where: str) -> None:
    st = steps[i]
    if st.type not in STEP_TYPES:
        raise PlanError(f"{where}: unknown step type {st.type!r}")
    where = f"{where} ({st.type})"
    if st.type != "nop" and not 1 <= st.cnt <= MAX_CNT:
        raise PlanError(f"{where}: cnt={st.cnt} outside 1..{MAX_CNT}")
    if st.type in SEND_TYPES and send < 0:
        raise PlanError(f"{where}: sends but its threadblock has no send peer")
    if st.type in RECV_TYPES and recv < 0:
        raise PlanError(f"{where}: receives but its threadblock has no recv peer")
    for which, buf, off, used in (("src", st.srcbuf, st.srcoff, st.type in READS_SRC),
                                  ("dst", st.dstbuf, st.dstoff, st.type in WRITES_DST)):
        if not used:
            continue
        if buf not in BUFFERS:
            raise PlanError(f"{where}: needs a {which} buffer (i, o or s), got {buf!r}")
        size = plan.buffer_size(gpu, buf)
        if off < 0 or off + st.cnt > size:
            raise PlanError(f"{where}: {which} {buf}[{off}:{off + st.cnt}] is outside buffer "
                            f"'{buf}' ({size} chunks)")
    if st.hasdep not in (0, 1):
        raise PlanError(f"{where}: hasdep={st.hasdep} must be 0 or 1")
    if (st.depid == -1) != (st.deps == -1):
        raise PlanError(f"{where}: depid={st.depid} deps={st.deps}: both -1 or both set")
    if st.depid != -1:
        target = steps_of.get(st.depid)
        if target is None:
            raise PlanError(f"{where}: depends on tb {st.depid}, which gpu {gpu.id} lacks")
        if not 0 <= st.deps < len(target):
            raise PlanError(f"{where}: depends on tb {st.depid} step {st.deps}, which does not "
                            f"exist ({len(target)} steps)")
        dep = target[st.deps]
        if dep.type == "nop":
            raise PlanError(f"{where}: depends on tb {st.depid} step {st.deps}, a nop (the runtime "
                            "never signals nops)")
        if dep.hasdep != 1:
            raise PlanError(f"{where}: depends on tb {st.depid} step {st.deps}, whose hasdep=0 "
                            "(the runtime would not signal it)")
        if st.type == "nop":
            after = next((s for s in steps[i + 1:] if s.type != "nop"), None)
            if after is not None and after.depid == -1:
                raise PlanError(f"{where}: its dependency chain ends at step {after.s} "
                                f"({after.type}), which has no dependency of its own (the "
                                "runtime rejects this)")


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

    ``initial(rank, input_index)`` gives each input chunk's value; ``reduce(a, b)`` combines
    two values and may raise :class:`VerificationError` (reported with the step's position).
    After :meth:`run`, :meth:`output` reads each rank's output chunks.
    """

    def __init__(self, plan: Plan, initial: Callable[[int, int], V],
                 reduce: Callable[[V, V], V]) -> None:
        self.plan = plan
        self.coll = coll = plan.collective()
        self.reduce = reduce
        self._locs: dict[tuple[int, str, int], int] = {}
        self._names: list[tuple[int, str, int]] = []
        self.mem: list = []
        for rank in range(plan.ngpus):
            for j in range(coll.i_chunks):
                self.mem[self._loc(rank, "i", j)] = initial(rank, j)
        gpus = sorted(plan.gpus, key=lambda g: g.id)
        self.tbs = [(g.id, tb) for g in gpus for tb in sorted(g.tbs, key=lambda t: t.id)]
        gidx = {(rank, tb.id): i for i, (rank, tb) in enumerate(self.tbs)}
        # steps others depend on -> how many depend on each (a snapshot of the step's
        # vector clock is kept until the last of them has used it)
        targets = Counter((gidx[(rank, st.depid)], st.deps)
                          for rank, tb in self.tbs for st in tb.steps if st.depid >= 0)
        self._snap_uses = targets
        self._conns: dict[tuple[int, int, int], int] = {}
        self.ops: list[list[_Op]] = []
        for g, (rank, tb) in enumerate(self.tbs):
            ops = []
            for st in tb.steps:
                src = dst = ()
                if st.type in READS_SRC:
                    src = tuple(self._loc(rank, st.srcbuf, st.srcoff + c) for c in range(st.cnt))
                if st.type in WRITES_DST:
                    dst = tuple(self._loc(rank, st.dstbuf, st.dstoff + c) for c in range(st.cnt))
                dep = (gidx[(rank, st.depid)], st.deps) if st.depid >= 0 else None
                rconn = self._conn(tb.recv, rank, tb.chan) if st.type in RECV_TYPES else None
                sconn = self._conn(rank, tb.send, tb.chan) if st.type in SEND_TYPES else None
                ops.append(_Op(st.type, src, dst, st.cnt, dep, rconn, sconn,
                               (g, st.s) in targets))
            self.ops.append(ops)
        self.depth = 0
        self._fault: str | None = None

    def _loc(self, rank: int, buf: str, off: int) -> int:
        key = (rank, *canonical_location(self.coll, rank, buf, off))
        loc = self._locs.get(key)
        if loc is None:
            loc = self._locs[key] = len(self._names)
            self._names.append(key)
            self.mem.append(None)
        return loc

    def _conn(self, sender: int, receiver: int, chan: int) -> int:
        return self._conns.setdefault((sender, receiver, chan), len(self._conns))

    @property
    def connections(self) -> int:
        """Distinct (sender, receiver, channel) connections the plan uses."""
        return len(self._conns)

    def output(self, rank: int, index: int) -> V | None:
        """Value of output chunk ``index`` of ``rank`` (None if never written)."""
        key = (rank, *canonical_location(self.coll, rank, "o", index))
        loc = self._locs.get(key)
        return None if loc is None else self.mem[loc]

    def _where(self, loc: int) -> str:
        rank, buf, off = self._names[loc]
        return f"rank {rank} {buf}[{off}]"

    def _step_name(self, g: int, s: int) -> str:
        rank, tb = self.tbs[g]
        return f"rank {rank} tb {tb.id} step {s} ({tb.steps[s].type})"

    # -- scheduling -----------------------------------------------------------------------
    def run(self) -> "Interpreter[V]":
        """Execute every threadblock to completion; raise VerificationError on a fault."""
        ntb = len(self.tbs)
        self.pc = [0] * ntb
        # a clock is a step count (<= MAX_STEPS): one byte each where every tb has fewer
        # than 256 steps
        longest = max((len(ops) for ops in self.ops), default=0)
        dtype = np.uint8 if longest <= np.iinfo(np.uint8).max else np.int16
        # A tb's clock is made at its first step and dropped when it finishes. Messages and
        # snapshots share it as it was at their step: the tb copies it before its next
        # merge, but sets its own entry in place, so users take that entry from the step.
        self._vc_dtype = dtype
        self.vc: list[np.ndarray | None] = [None] * ntb
        self.shared = [False] * ntb
        self.snap_uses = dict(self._snap_uses)
        self.lam = [0] * ntb
        self.queues = [deque() for _ in self._conns]
        self.conn_waiter = [-1] * len(self._conns)
        self.dep_waiters: list[list[int]] = [[] for _ in range(ntb)]
        self.blocked: list[tuple | None] = [None] * ntb
        self.snaps: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        self.wr: list[tuple[int, int] | None] = [None] * len(self.mem)
        self.unread: list[tuple[int, int, int, V]] = []  # (gpu, step, loc, overwritten value)
        self.rds: list[dict[int, int] | None] = [None] * len(self.mem)
        self.ready = deque(range(ntb))
        self.queued = [True] * ntb
        while self.ready:
            g = self.ready.popleft()
            self.queued[g] = False
            self._advance(g)
        if self._fault:
            raise VerificationError(self._fault)
        self._check_finished()
        return self

    def _wake(self, g: int) -> None:
        if not self.queued[g]:
            self.queued[g] = True
            self.ready.append(g)

    def _advance(self, g: int) -> None:
        ops, pc, vc = self.ops[g], self.pc, self.vc[g]
        k = pc[g]
        start = k
        while k < len(ops):
            op = ops[k]
            dep = op.dep
            if dep is not None and pc[dep[0]] <= dep[1]:
                self.blocked[g] = ("dep", dep)
                self.dep_waiters[dep[0]].append(g)
                break
            rconn = op.rconn
            if rconn is not None:
                queue = self.queues[rconn]
                if not queue:
                    self.blocked[g] = ("recv", rconn)
                    self.conn_waiter[rconn] = g
                    break
            self.blocked[g] = None
            clk = k + 1
            if vc is None:
                vc = self.vc[g] = np.zeros(len(self.ops), dtype=self._vc_dtype)
            elif self.shared[g] and (dep is not None or rconn is not None):
                vc = self.vc[g] = vc.copy()
                self.shared[g] = False
            vc[g] = clk
            lam = self.lam[g]
            if dep is not None:
                snap_vc, snap_lam = self.snaps[dep]
                left = self.snap_uses[dep] - 1
                if left:
                    self.snap_uses[dep] = left
                else:  # its last user: free the snapshot
                    del self.snaps[dep], self.snap_uses[dep]
                dg = dep[0]
                mine = vc[dg]
                np.maximum(vc, snap_vc, out=vc)
                vc[dg] = max(mine, dep[1] + 1)
                lam = max(lam, snap_lam)
            incoming = None
            if rconn is not None:
                values, msg_vc, msg_lam, sg, ss = queue.popleft()
                if len(values) != op.cnt:
                    raise VerificationError(
                        f"{self._step_name(g, k)} receives cnt={op.cnt} but the matching send "
                        f"{self._step_name(sg, ss)} has cnt={len(values)}")
                mine = vc[sg]
                np.maximum(vc, msg_vc, out=vc)
                vc[sg] = max(mine, ss + 1)
                lam = max(lam, msg_lam)
                incoming = values
            lam += 1
            self.lam[g] = lam
            self._execute(g, k, clk, vc, op, incoming, lam)
            if op.snap:
                self.snaps[(g, k)] = (vc, lam)
                self.shared[g] = True
            k += 1
            pc[g] = k
        if k == len(ops):
            self.vc[g] = None  # finished: nothing reads its clock again
        self.depth = max(self.depth, self.lam[g])
        if k > start and self.dep_waiters[g]:
            waiters, self.dep_waiters[g] = self.dep_waiters[g], []
            for w in waiters:
                self._wake(w)

    def _execute(self, g: int, k: int, clk: int, vc: np.ndarray, op: _Op, incoming,
                 lam: int) -> None:
        t = op.type
        if t == "nop":
            return
        src = [self._read(g, k, clk, vc, loc) for loc in op.src]
        if t == "s" or t == "cpy":
            out = src
        elif t == "r" or t == "rcs":
            out = incoming
        elif t == "re":
            out = [self._combine(g, k, loc, self._read(g, k, clk, vc, loc), b)
                   for loc, b in zip(op.dst, src)]
        else:  # rrc, rrs, rrcs
            out = [self._combine(g, k, loc, a, b) for loc, a, b in zip(op.src, incoming, src)]
        for loc, value in zip(op.dst, out):
            self._write(g, k, clk, vc, loc, value)
        if op.sconn is not None:
            self.queues[op.sconn].append((tuple(out), vc, lam, g, k))
            self.shared[g] = True
            waiter = self.conn_waiter[op.sconn]
            if waiter >= 0:
                self.conn_waiter[op.sconn] = -1
                self._wake(waiter)

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
        if w is not None and w[0] != g and vc[w[0]] < w[1]:
            self._race(loc, w, "writes", g, k, "reads")
        rds = self.rds[loc]
        if rds is None:
            self.rds[loc] = {g: clk}
        else:
            rds[g] = clk
        value = self.mem[loc]
        if value is None and self._fault is None:
            self._fault = f"{self._step_name(g, k)} reads uninitialised {self._where(loc)}"
        return value

    def _write(self, g: int, k: int, clk: int, vc: np.ndarray, loc: int, value) -> None:
        w = self.wr[loc]
        if w is not None and w[0] != g and vc[w[0]] < w[1]:
            self._race(loc, w, "writes", g, k, "writes")
        rds = self.rds[loc]
        if rds is not None:
            for other, oclk in rds.items():
                if other != g and vc[other] < oclk:
                    self._race(loc, (other, oclk), "reads", g, k, "writes")
            self.rds[loc] = None
        elif self.mem[loc] is not None:  # a value nobody read is lost
            self.unread.append((g, k, loc, self.mem[loc]))
        self.wr[loc] = (g, clk)
        self.mem[loc] = value

    def _race(self, loc: int, first: tuple[int, int], first_verb: str, g: int, k: int,
              verb: str) -> None:
        og, oclk = first
        _, otb = self.tbs[og]
        _, tb = self.tbs[g]
        raise VerificationError(
            f"race on {self._where(loc)}: tb {otb.id} step {oclk - 1} ({otb.steps[oclk - 1].type}) "
            f"{first_verb} it and tb {tb.id} step {k} ({tb.steps[k].type}) {verb} it with "
            "nothing ordering them (missing dependency)")

    def _check_finished(self) -> None:
        stuck = []
        for g, ops in enumerate(self.ops):
            if self.pc[g] < len(ops):
                kind, what = self.blocked[g]
                if kind == "recv":
                    sender, _, chan = next(c for c, i in self._conns.items() if i == what)
                    wait = f"a send from rank {sender} on channel {chan}"
                else:
                    wait = f"tb {self.tbs[what[0]][1].id} step {what[1]}"
                stuck.append(f"{self._step_name(g, self.pc[g])} waits for {wait}")
        if stuck:
            more = f"; ... (+{len(stuck) - 8} more)" if len(stuck) > 8 else ""
            raise VerificationError(f"deadlock: {'; '.join(stuck[:8])}{more}")
        pending = [q[0] for q in self.queues if q]
        if pending:
            values, _, _, g, k = pending[0]
            rank, tb = self.tbs[g]
            more = f" (+{len(pending) - 1} more connections with unmatched sends)" \
                if len(pending) > 1 else ""
            raise VerificationError(
                f"unmatched send: {self._step_name(g, k)} sends {len(values)} chunk(s) to rank "
                f"{tb.send} on channel {tb.chan} that no step receives{more}")


# -- symbolic verification -----------------------------------------------------------------

@gc_paused()
def verify(plan: Plan) -> VerifyReport:
    """Check limits, then run ``plan`` symbolically; raise on the first fault."""
    check_limits(plan)
    coll = plan.collective()
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

    run = Interpreter(plan, lambda rank, j: (index[(rank, j)], 1), reduce).run()
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
                f"{'nothing (never written)' if got is None else _fmt(m, contribs)}"
                f"{_diff(w, m, contribs)}{_lost(run, w, m, contribs)}")
    return _report(plan, run.connections, run.depth)


def _mask(value: tuple[int, int] | None) -> int | None:
    return None if value is None else value[1] << value[0]


def _fmt(mask: int, contribs: list, limit: int = 6) -> str:
    items = sorted(contribs[i] for i in range(mask.bit_length()) if mask >> i & 1)
    text = ", ".join(f"({r},{j})" for r, j in items[:limit])
    return "{" + text + (f", ... {len(items)} in all" if len(items) > limit else "") + "}"


def _diff(want: int, got: int | None, contribs: list) -> str:
    if got is None or (want.bit_count() <= 6 and got.bit_count() <= 6):
        return ""
    parts = [f"{label} {_fmt(mask, contribs)}"
             for label, mask in (("missing", want & ~got), ("extra", got & ~want)) if mask]
    return f" ({', '.join(parts)})"


def _lost(run: Interpreter, want: int, got: int | None, contribs: list) -> str:
    """Name the step that overwrote, unread, a value holding a missing contribution."""
    missing = want & ~(got or 0)
    for g, k, loc, value in run.unread:
        old = _mask(value)
        if old & missing:
            return (f"; {run._step_name(g, k)} overwrote {run._where(loc)} holding "
                    f"{_fmt(old & missing, contribs)} before anything read it")
    return ""


def _report(plan: Plan, connections: int, depth: int) -> VerifyReport:
    steps = [st for g in plan.gpus for tb in g.tbs for st in tb.steps]
    return VerifyReport(
        ranks=plan.ngpus,
        threadblocks=sum(len(g.tbs) for g in plan.gpus),
        max_tbs_per_gpu=max((len(g.tbs) for g in plan.gpus), default=0),
        max_steps_per_tb=max((len(tb.steps) for g in plan.gpus for tb in g.tbs), default=0),
        steps=len(steps),
        sends=sum(st.type in SEND_TYPES for st in steps),
        receives=sum(st.type in RECV_TYPES for st in steps),
        reductions=sum(st.type in REDUCE_TYPES for st in steps),
        copies=sum(st.type == "cpy" for st in steps),
        nops=sum(st.type == "nop" for st in steps),
        chunks_sent=sum(st.cnt for st in steps if st.type in SEND_TYPES),
        connections=connections,
        depth=depth)

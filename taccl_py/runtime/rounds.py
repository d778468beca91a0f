"""A plan as a synchronous round schedule, for executors built on grouped point-to-point calls.

Every rank computes the same :class:`Schedule` from the plan. In round k each rank

1. packs the sources of its round-k sends that span several buffer runs (local copies),
2. posts all its receives and sends of round k (one NCCL ``groupStart``/``groupEnd``),
3. runs its local work: copies/reductions of received data, ``cpy``/``re`` steps.

Rules, which make the rounds compute what :class:`~taccl_py.plan.verify.Interpreter`
computes (threadblocks in order, dependencies, FIFO connections):

* A message moves in the round its sending step runs; the receiver posts the matching
  receive in that same round, into a private temporary (or straight into the step's
  destination when no other step of the rank touches those chunks). So, like the
  Interpreter's unbounded FIFO, a send never waits for the receiving threadblock.
* A receiving step runs (consumes its message) in the local phase of that round or later,
  after its threadblock's previous step and its dependency are done.
* A send runs in round k only if every predecessor was done before round k's group, or is
  itself a send of round k (sends only read, and NCCL runs calls to one peer in issue
  order; messages of one round are issued in (peer, channel, sequence) order on both sides).
  Hence data sent in round k was produced in an earlier round (or is input), and a fused
  rcs/rrs/rrcs forwards in a round after the one it consumed its message in.
* A step is done when all of it is (a fused step: after its send).

Offsets and counts are in chunks; executors scale them by ``chunk_elems``. A plan whose
threadblocks wait on each other forever raises :class:`VerificationError`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from ..collectives import Collective
from ..errors import TacclError, VerificationError
from ..plan.model import RECV_TYPES, REDUCE_TYPES, SEND_TYPES, GpuPlan, Plan, Step, Threadblock
from ..plan.verify import READS_SRC, WRITES_DST, canonical_location, check_limits
from .reference import receives_output

Loc = tuple[str, int]  # (physical buffer, chunk offset); buffers i, o, s and t (temporaries)
Run = tuple[str, int, int]  # (physical buffer, first chunk, end chunk)
StepId = tuple[int, int, int]  # (rank, threadblock id, step index)
Time = tuple[int, int, int]  # (round, phase: 0 group / 1 local, position in the local work)
_Pos = tuple[int, int]  # (threadblock index in _Sim.tbs, step index)

#: plan redop -> name of the array-module ufunc ('nop' plans reduce by sum)
REDUCERS = {"sum": "add", "nop": "add", "prod": "multiply", "max": "maximum", "min": "minimum"}


@dataclass(frozen=True)
class Msg:
    """One point-to-point call: ``cnt`` chunks at ``buf[off:]`` to or from ``peer``."""

    peer: int
    buf: str
    off: int
    cnt: int
    chan: int
    seq: int  # position of the message on its connection (sender, receiver, chan)


@dataclass(frozen=True)
class Local:
    """A local copy (``out <- a``) or reduction (``out <- a op b``), piece by piece.

    Each piece is ``(chunks, (out, a[, b]))`` with every location a :data:`Loc`.
    """

    reduce: bool
    pieces: tuple[tuple[int, tuple[Loc, ...]], ...]


@dataclass(frozen=True)
class StepOps:
    """A step compiled for one rank: receive region, local work, send packing, send region."""

    recv: Msg | None
    local: tuple[Local, ...]
    pack: tuple[Local, ...]
    send: Msg | None


@dataclass
class Round:
    """One rank's part of a round: pack, then one group of receives and sends, then local."""

    pack: list[Local] = field(default_factory=list)
    recvs: list[Msg] = field(default_factory=list)
    sends: list[Msg] = field(default_factory=list)
    local: list[Local] = field(default_factory=list)


@dataclass
class RankProgram:
    """Everything one rank executes. ``sizes`` gives each physical buffer's chunks."""

    rank: int
    sizes: dict[str, int]
    in_locs: tuple[Loc, ...]  # where input chunk j lives
    out_locs: tuple[Loc, ...]  # where output chunk j lives
    steps: dict[tuple[int, int], StepOps]  # (threadblock id, step index) -> compiled step
    rounds: list[Round] = field(default_factory=list)

    @property
    def written(self) -> frozenset[str]:
        """Physical buffers that some local op or receive writes."""
        outs = {
            locs[0][0]
            for ops in self.steps.values()
            for op in ops.local + ops.pack
            for _, locs in op.pieces
        }
        return frozenset(outs | {ops.recv.buf for ops in self.steps.values() if ops.recv})

    @property
    def output_buffer(self) -> str | None:
        """The physical buffer that is exactly the output (so it can be the user's buffer)."""
        bufs = {b for b, _ in self.out_locs}
        if len(bufs) != 1:
            return None
        b = bufs.pop()
        exact = [o for _, o in self.out_locs] == list(range(len(self.out_locs)))
        return b if exact and self.sizes[b] == len(self.out_locs) else None


@dataclass(frozen=True)
class StepTiming:
    """When a step started and finished; rounds of its message in and out."""

    start: Time
    done: Time
    received: int | None  # round its incoming message moved
    sent: int | None  # round its outgoing message moved


@dataclass
class Schedule:
    """The round schedule of a plan (same on every rank)."""

    coll: Collective
    redop: str
    ranks: list[RankProgram]
    timing: dict[StepId, StepTiming]
    order: list[StepId]  # steps in start order: a valid sequential execution order
    senders: dict[StepId, StepId]  # receiving step -> sending step
    deps: dict[StepId, StepId]  # step -> the step it depends on

    @property
    def nrounds(self) -> int:
        return len(self.ranks[0].rounds) if self.ranks else 0


def reducer(xp: Any, redop: str) -> Callable:
    """The ufunc of ``xp`` (numpy, cupy) that implements ``redop``.

    >>> reducer(np, "max") is np.maximum
    True
    """
    name = REDUCERS.get(redop)
    if name is None:
        raise TacclError(
            f"redop {redop!r} is not supported; use one of {', '.join(sorted(REDUCERS))}"
        )
    return getattr(xp, name)


def apply_local(op: Local, bufs: Mapping[str, Any], ce: int, reduce: Callable) -> None:
    """Run ``op`` on 1-D arrays ``bufs`` (numpy or cupy) with ``ce`` elements a chunk."""
    for n, locs in op.pieces:
        views = [bufs[b][o * ce : (o + n) * ce] for b, o in locs]
        if op.reduce:
            reduce(views[1], views[2], out=views[0])
        else:
            views[0][...] = views[1]


def chunk_elems(coll: Collective, arrays: Sequence[Any]) -> int:
    """Elements per chunk of per-rank 1-D inputs; ValueError if their sizes do not fit."""
    if len(arrays) != coll.num_ranks:
        raise ValueError(f"{len(arrays)} input buffers for a {coll.num_ranks}-rank plan")
    size = arrays[0].size
    if size == 0 or size % coll.i_chunks or any(a.size != size for a in arrays):
        raise ValueError(
            f"every input buffer needs the same multiple of {coll.i_chunks} "
            f"elements, got sizes {sorted({a.size for a in arrays})}"
        )
    return size // coll.i_chunks


# -- compiling one rank ----------------------------------------------------------------------


def _align(*lists: tuple[Run, ...]) -> tuple[tuple[int, tuple[Loc, ...]], ...]:
    """Cut equally long run lists into pieces that lie in one run of each list."""
    idx, pos, pieces = [0] * len(lists), [0] * len(lists), []
    while idx[0] < len(lists[0]):
        runs = [runs[i] for runs, i in zip(lists, idx)]
        n = min(r[2] - r[1] - p for r, p in zip(runs, pos))
        pieces.append((n, tuple((r[0], r[1] + p) for r, p in zip(runs, pos))))
        for j, r in enumerate(runs):
            pos[j] += n
            if r[1] + pos[j] == r[2]:
                idx[j], pos[j] = idx[j] + 1, 0
    return tuple(pieces)


def _copy(dst: tuple[Run, ...], src: tuple[Run, ...]) -> Local:
    return Local(False, _align(dst, src))


def _reduce(out: tuple[Run, ...], a: tuple[Run, ...], b: tuple[Run, ...]) -> Local:
    return Local(True, _align(out, a, b))


def _overlap(a: tuple[Run, ...], b: tuple[Run, ...]) -> bool:
    return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)


class _RankCompiler:
    """Compiles one rank's steps into :class:`StepOps` (chunk units, temporaries in 't')."""

    def __init__(self, coll: Collective, gpu: GpuPlan) -> None:
        self.coll, self.rank, self.temp_chunks = coll, gpu.id, 0
        self.tbs = sorted(gpu.tbs, key=lambda t: t.id)
        self.touches: Counter[Loc] = Counter()
        for tb in self.tbs:
            for st in tb.steps:
                for b, lo, hi in self._src(st) + self._dst(st):
                    self.touches.update((b, c) for c in range(lo, hi))

    def runs(self, buf: str, off: int, cnt: int) -> tuple[Run, ...]:
        """Physical chunk runs of ``buf[off:off+cnt]`` (in-place plans alias i and o)."""
        runs: list[list] = []
        for c in range(cnt):
            b, o = canonical_location(self.coll, self.rank, buf, off + c)
            if runs and runs[-1][0] == b and runs[-1][2] == o:
                runs[-1][2] += 1
            else:
                runs.append([b, o, o + 1])
        return tuple(tuple(r) for r in runs)

    # check_limits gave every step that reads (writes) a src (dst) buffer
    def _src(self, st: Step) -> tuple[Run, ...]:
        return self.runs(cast(str, st.srcbuf), st.srcoff, st.cnt) if st.type in READS_SRC else ()

    def _dst(self, st: Step) -> tuple[Run, ...]:
        return self.runs(cast(str, st.dstbuf), st.dstoff, st.cnt) if st.type in WRITES_DST else ()

    def _temp(self, cnt: int) -> tuple[Run, ...]:
        off, self.temp_chunks = self.temp_chunks, self.temp_chunks + cnt
        return (("t", off, off + cnt),)

    def _exclusive(self, runs: tuple[Run, ...]) -> bool:
        return len(runs) == 1 and all(
            self.touches[(runs[0][0], c)] == 1 for c in range(runs[0][1], runs[0][2])
        )

    def program(self, gpu: GpuPlan) -> RankProgram:
        steps = {}
        for tb in self.tbs:
            seq: Counter[str] = Counter()
            for st in tb.steps:
                steps[(tb.id, st.s)] = self._step(tb, st, seq)
        coll, rank = self.coll, self.rank
        sizes = {"i": gpu.i_chunks, "o": gpu.o_chunks, "s": gpu.s_chunks, "t": self.temp_chunks}
        return RankProgram(
            rank,
            sizes,
            tuple(canonical_location(coll, rank, "i", j) for j in range(coll.i_chunks)),
            tuple(canonical_location(coll, rank, "o", j) for j in range(coll.o_chunks)),
            steps,
        )

    def _step(self, tb: Threadblock, st: Step, seq: Counter) -> StepOps:
        t, src, dst = st.type, self._src(st), self._dst(st)
        local: list[Local] = []
        pack: tuple[Local, ...] = ()
        recv = send = None
        region: tuple[Run, ...] = ()
        if t in RECV_TYPES:
            direct = t in ("r", "rcs") and self._exclusive(dst)
            region = dst if direct else self._temp(st.cnt)
            if t in ("r", "rcs") and not direct:
                local.append(_copy(dst, region))
            elif t == "rrc" and dst == src:  # accumulate in place
                local.append(_reduce(dst, region, src))
            elif t in REDUCE_TYPES:
                local.append(_reduce(region, region, src))
                if dst:
                    local.append(_copy(dst, region))
            recv = Msg(tb.recv, region[0][0], region[0][1], st.cnt, tb.chan, seq["r"])
            seq["r"] += 1
        elif t in ("cpy", "re") and _overlap(src, dst) and src != dst:
            stage = self._temp(st.cnt)  # partly overlapping ranges: go through a temporary
            local += [
                _copy(stage, src),
                _reduce(dst, dst, stage) if t == "re" else _copy(dst, stage),
            ]
        elif t == "cpy" and src != dst:
            local.append(_copy(dst, src))
        elif t == "re":
            local.append(_reduce(dst, dst, src))
        if t in SEND_TYPES:
            if t == "s":
                region = src if len(src) == 1 else self._temp(st.cnt)
                pack = () if len(src) == 1 else (_copy(region, src),)
            send = Msg(tb.send, region[0][0], region[0][1], st.cnt, tb.chan, seq["s"])
            seq["s"] += 1
        return StepOps(recv, tuple(local), pack, send)


# -- the round simulation --------------------------------------------------------------------


class _Sim:
    """Runs the plan in synchronous rounds and records each rank's :class:`Round` list."""

    def __init__(self, plan: Plan) -> None:
        self.coll = plan.collective()
        gpus = sorted(plan.gpus, key=lambda g: g.id)
        self.programs = [_RankCompiler(self.coll, g).program(g) for g in gpus]
        self.tbs = [(g.id, tb) for g in gpus for tb in sorted(g.tbs, key=lambda t: t.id)]
        index = {(rank, tb.id): i for i, (rank, tb) in enumerate(self.tbs)}
        self.dep = [
            [(index[(rank, st.depid)], st.deps) if st.depid >= 0 else None for st in tb.steps]
            for rank, tb in self.tbs
        ]
        self.ops = [
            [self.programs[rank].steps[(tb.id, st.s)] for st in tb.steps] for rank, tb in self.tbs
        ]
        self.redop = plan.redop
        self.senders = self._match()
        # sending step -> the matching receive (a matched receiving step has one)
        self.recv_of = {s: cast(Msg, self.ops[r[0]][r[1]].recv) for r, s in self.senders.items()}
        self.pc = [0] * len(self.tbs)
        self.half = [False] * len(self.tbs)  # fused step consumed its message, send pending
        self.start: dict[tuple[int, int], Time] = {}
        self.done: dict[tuple[int, int], Time] = {}
        self.moved: dict[StepId, int] = {}  # sending step -> round its message moved
        self.order: list[StepId] = []

    def sid(self, g: int, k: int) -> StepId:
        return self.tbs[g][0], self.tbs[g][1].id, k

    def _match(self) -> dict[_Pos, _Pos]:
        """Pair the n-th send and receive of each connection; check counts and sizes."""
        ends: dict[tuple[int, int, int], tuple[list[_Pos], list[_Pos]]] = {}
        for g, (rank, _) in enumerate(self.tbs):
            for k, ops in enumerate(self.ops[g]):
                if ops.send:
                    ends.setdefault((rank, ops.send.peer, ops.send.chan), ([], []))[0].append(
                        (g, k)
                    )
                if ops.recv:
                    ends.setdefault((ops.recv.peer, rank, ops.recv.chan), ([], []))[1].append(
                        (g, k)
                    )
        senders: dict[_Pos, _Pos] = {}
        for (_a, b, chan), (sends, recvs) in sorted(ends.items()):
            if len(sends) > len(recvs):
                raise VerificationError(
                    f"unmatched send: {self._name(*sends[len(recvs)])} sends to rank {b} on "
                    f"channel {chan}, which receives only {len(recvs)} message(s) there"
                )
            for s, r in zip(sends, recvs):
                cs = cast(Msg, self.ops[s[0]][s[1]].send).cnt
                cr = cast(Msg, self.ops[r[0]][r[1]].recv).cnt
                if cs != cr:
                    raise VerificationError(
                        f"{self._name(*r)} receives cnt={cr} but the "
                        f"matching send {self._name(*s)} has cnt={cs}"
                    )
                senders[r] = s
        return senders

    def _name(self, g: int, k: int) -> str:
        rank, tb = self.tbs[g]
        return f"rank {rank} tb {tb.id} step {k} ({tb.steps[k].type})"

    def run(self) -> Schedule:
        total, k = sum(len(ops) for ops in self.ops), 0
        while len(self.done) < total:
            for prog in self.programs:
                prog.rounds.append(Round())
            if not (self._group(k) | self._local(k)):
                raise VerificationError(f"deadlock in round {k}: {self._stuck()}")
            k += 1
        for prog in self.programs:
            for rnd in prog.rounds:
                rnd.sends.sort(key=lambda m: (m.peer, m.chan, m.seq))
                rnd.recvs.sort(key=lambda m: (m.peer, m.chan, m.seq))
        deps = {
            self.sid(g, k): self.sid(*d)
            for g, ds in enumerate(self.dep)
            for k, d in enumerate(ds)
            if d is not None
        }
        senders = {self.sid(*r): self.sid(*s) for r, s in self.senders.items()}
        return Schedule(
            self.coll, self.redop, self.programs, self._timing(senders), self.order, senders, deps
        )

    def _ready(self, g: int) -> bool:
        dep = self.dep[g][self.pc[g]]
        return dep is None or dep in self.done

    def _finish(self, g: int, when: Time) -> None:
        key = (g, self.pc[g])
        if key not in self.start:
            self.start[key] = when
            self.order.append(self.sid(*key))
        self.done[key] = when
        self.pc[g] += 1
        self.half[g] = False

    def _group(self, k: int) -> bool:
        """Round k's sends (and nops they unblock); the matching receives join the group."""
        progress, changed = False, True
        while changed:
            changed = False
            for g, (_rank, tb) in enumerate(self.tbs):
                while self.pc[g] < len(tb.steps) and self._ready(g):
                    kind = tb.steps[self.pc[g]].type
                    if kind != "nop" and not (kind == "s" or self.half[g]):
                        break
                    if kind != "nop":
                        self._send(g, k)
                    self._finish(g, (k, 0, 0))
                    changed = progress = True
        return progress

    def _send(self, g: int, k: int) -> None:
        ops = self.ops[g][self.pc[g]]
        send = cast(Msg, ops.send)  # _group calls it for sending steps only
        rank = self.tbs[g][0]
        rnd = self.programs[rank].rounds[k]
        rnd.pack.extend(ops.pack)
        rnd.sends.append(send)
        self.moved[self.sid(g, self.pc[g])] = k
        self.programs[send.peer].rounds[k].recvs.append(self.recv_of[(g, self.pc[g])])

    def _local(self, k: int) -> bool:
        """Round k's local work: consume arrived messages, cpy/re/nop, in dependency order."""
        pos = [0] * len(self.programs)
        progress, changed = False, True
        while changed:
            changed = False
            for g, (rank, tb) in enumerate(self.tbs):
                while self.pc[g] < len(tb.steps) and not self.half[g] and self._ready(g):
                    key = (g, self.pc[g])
                    kind = tb.steps[key[1]].type
                    if kind == "s" or (kind in RECV_TYPES and not self._arrived(key, k)):
                        break
                    when = (k, 1, pos[rank])
                    pos[rank] += 1
                    self.programs[rank].rounds[k].local.extend(self.ops[g][key[1]].local)
                    changed = progress = True
                    if kind in SEND_TYPES:  # fused: forward in a later round
                        self.start[key] = when
                        self.order.append(self.sid(*key))
                        self.half[g] = True
                        break
                    self._finish(g, when)
        return progress

    def _arrived(self, key: tuple[int, int], k: int) -> bool:
        sender = self.senders.get(key)
        return sender is not None and self.moved.get(self.sid(*sender), k + 1) <= k

    def _stuck(self) -> str:
        parts = []
        for g, (_rank, tb) in enumerate(self.tbs):
            k = self.pc[g]
            if k >= len(tb.steps):
                continue
            dep = self.dep[g][k]
            if dep is not None and dep not in self.done:
                why = f"waits for tb {self.tbs[dep[0]][1].id} step {dep[1]}"
            else:
                why = f"waits for a message from rank {tb.recv} on channel {tb.chan}"
            parts.append(f"{self._name(g, k)} {why}")
        more = f"; ... (+{len(parts) - 8} more)" if len(parts) > 8 else ""
        return "; ".join(parts[:8]) + more

    def _timing(self, senders: dict[StepId, StepId]) -> dict[StepId, StepTiming]:
        timing = {}
        for key, done in self.done.items():
            sid = self.sid(*key)
            sender = senders.get(sid)
            received = None if sender is None else self.moved.get(sender)
            timing[sid] = StepTiming(self.start[key], done, received, self.moved.get(sid))
        return timing


def plan_rounds(plan: Plan) -> Schedule:
    """The round schedule of ``plan`` (checked with :func:`check_limits` first).

    In the direct AllGather every send moves in round 0; the receives and local copies
    finish in that round's local phase.

    >>> from taccl_py.testing.plans import direct_allgather
    >>> sched = plan_rounds(direct_allgather(2))
    >>> sched.nrounds, [len(r.sends) for r in sched.ranks[0].rounds]
    (1, [1])
    >>> sched.timing[(0, 0, 1)]  # rank 0, tb 0, step 1: the receive
    StepTiming(start=(0, 1, 0), done=(0, 1, 0), received=0, sent=None)
    """
    check_limits(plan)
    return _Sim(plan).run()


def run_rounds(
    plan: Plan, inputs: Sequence[np.ndarray], schedule: Schedule | None = None
) -> list[np.ndarray]:
    """Execute the round schedule of ``plan`` for all ranks in one process with NumPy.

    Same contract as :func:`~taccl_py.runtime.reference.run_reference`. A round's messages
    are matched the way NCCL matches a group's calls: per (sender, receiver) pair in issue
    order, whatever their channel.

    >>> from taccl_py.testing.plans import direct_allgather
    >>> [out.tolist() for out in run_rounds(direct_allgather(2), [np.ones(2), np.zeros(2)])]
    [[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    """
    sched = schedule or plan_rounds(plan)
    coll = sched.coll
    arrays = [np.asarray(a).reshape(-1) for a in inputs]
    ce = chunk_elems(coll, arrays)
    reduce = reducer(np, sched.redop)
    bufs = [
        {b: np.zeros(n * ce, dtype=arrays[0].dtype) for b, n in prog.sizes.items()}
        for prog in sched.ranks
    ]
    for prog, array in zip(sched.ranks, arrays):
        for j, (b, o) in enumerate(prog.in_locs):
            if o < prog.sizes.get(b, 0):  # a rank without this input (a rooted plan's) skips it
                bufs[prog.rank][b][o * ce : (o + 1) * ce] = array[j * ce : (j + 1) * ce]
    for k in range(sched.nrounds):
        rounds = [prog.rounds[k] for prog in sched.ranks]
        for r, rnd in enumerate(rounds):
            for op in rnd.pack:
                apply_local(op, bufs[r], ce, reduce)
        _exchange(rounds, bufs, ce)
        for r, rnd in enumerate(rounds):
            for op in rnd.local:
                apply_local(op, bufs[r], ce, reduce)
    return [
        np.concatenate([bufs[prog.rank][b][o * ce : (o + 1) * ce] for b, o in prog.out_locs])
        if receives_output(coll, prog.rank)
        else np.zeros(0, dtype=arrays[0].dtype)  # a non-root of a Reduce or Gather
        for prog in sched.ranks
    ]


def _exchange(rounds: list[Round], bufs: list[dict[str, np.ndarray]], ce: int) -> None:
    """One group of every rank: FIFO per (sender, receiver), sizes must agree."""
    wire: dict[tuple[int, int], deque] = {}
    for r, rnd in enumerate(rounds):
        for m in rnd.sends:
            data = bufs[r][m.buf][m.off * ce : (m.off + m.cnt) * ce].copy()
            wire.setdefault((r, m.peer), deque()).append(data)
    for r, rnd in enumerate(rounds):
        for m in rnd.recvs:
            queue = wire.get((m.peer, r))
            if not queue or queue[0].size != m.cnt * ce:
                raise VerificationError(
                    f"rank {r} posts a receive of {m.cnt} chunk(s) from "
                    f"rank {m.peer} that no send of the group matches"
                )
            bufs[r][m.buf][m.off * ce : (m.off + m.cnt) * ce] = queue.popleft()
    if any(wire.values()):
        raise VerificationError("a send of the group has no matching receive")

"""Execute one rank's part of an MSCCL plan on NumPy buffers over a point-to-point transport.

Semantics mirror :class:`~taccl_py.plan.verify.Interpreter`: each threadblock runs its
steps in order, a step waits for its dependency (``depid``/``deps``, same rank), a connection
(sender, receiver, channel) is a FIFO whose n-th send matches the n-th receive, and the
buffer a step reads or writes is found with :func:`~taccl_py.plan.verify.canonical_location`
(in-place plans alias input and output).

Execution model: the plan is compiled once per (rank, chunk size, dtype) into a flat
program of instructions (wait for a receive, copy, reduce, post a send, wait for a send) run
by the calling thread, with no per-call allocation. The rank's steps run in the order of the
plan's round schedule (:func:`~taccl_py.runtime.rounds.plan_rounds`), which every rank
derives alike: a rank only ever blocks on a message that its peer posts earlier in that
order, so blocking waits cannot deadlock. A receive is posted before the first step (into
a private temporary, or straight into its destination when no other step of the rank
touches those chunks), or, when its destination is free by then, straight into it at the
start of the round its message moves (no temporary, no copy); a send never waits for the
receiving step.

Messages larger than ``segment_bytes`` move as several segments (both ends cut them alike),
and relaying steps (rcs, rrs, rrcs) forward each segment once it arrived and was reduced:
the ring's reduce and copy pipeline like Gloo's own segmented ring. A reduce-and-forward
step (rrcs) reduces straight into its destination and sends from there. A write to a range
that an earlier send still reads first waits for that send.

A wait that sees no progress for ``timeout`` seconds raises :class:`TacclError` naming the
rank and the stuck threadblock/step and its peer.

The transport (MPI in :mod:`.mpi_exec`, Gloo in :mod:`taccl_py.torch`) posts byte messages;
a transport with a blocking ``wait(req, timeout) -> bool`` is waited on directly, others are
polled with ``progress``.

Rooted collectives: a rank whose input is meaningless (a broadcast's or scatter's non-root)
may pass ``sendbuf=None``, and one whose output is (a reduce's or gather's non-root) may pass
``recvbuf=None``; the executor then uses internal scratch buffers, kept across calls.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from ..collectives import BROADCAST, GATHER, REDUCE, SCATTER
from ..errors import TacclError
from ..plan.model import RECV_TYPES, SEND_TYPES, Plan
from ..plan.verify import READS_SRC, WRITES_DST, canonical_location, check_limits
from .rounds import plan_rounds

REDOPS = {"sum": np.add, "nop": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}
#: messages above this many bytes move in segments of about this size
SEGMENT_BYTES = 4 << 20

#: ranks that pass no input (``sendbuf=None``) / no output (``recvbuf=None``), by kind
NO_INPUT = (BROADCAST, SCATTER)
NO_OUTPUT = (REDUCE, GATHER)


class Transport(Protocol):
    """Non-blocking point-to-point messages between the ranks of one group.

    A transport may also offer ``wait(req, timeout) -> bool`` (True once ``req`` completed,
    False after ``timeout`` seconds; raises :class:`TacclError` if it failed), which the
    executor then uses instead of polling ``progress``."""

    tag_ub: int

    def irecv(self, target: np.ndarray, peer: int, tag: int) -> Any:
        """Post a receive of ``target.nbytes`` bytes from ``peer`` into ``target``."""

    def isend(self, data: np.ndarray, peer: int, tag: int) -> Any:
        """Post a send of ``data``'s bytes (kept unmodified until the request completes)."""

    def progress(self, reqs: list, block: float) -> list[int]:
        """Indices of completed ``reqs``; may wait up to ``block`` seconds for one.

        Raises :class:`TacclError` if a request failed (e.g. the peer is gone)."""

    def cancel(self, reqs: list) -> None:
        """Best effort: withdraw outstanding receives after a timeout."""


Span = tuple[str, int, int]  # (physical buffer, first element, end element)
_B = TypeVar("_B", bound="np.ndarray | None")

# instruction codes; an instruction is (code, step, operands...)
_WAIT_RECV, _COPY, _REDUCE, _SEND, _WAIT_SEND, _POST = range(6)


class PlanExecutor:
    """This rank's compiled part of ``plan`` for ``chunk_elems`` elements of ``dtype`` a chunk.

    Reusable: :meth:`run` can be called many times (timing loops) with fresh buffers; the
    compiled program, receive temporaries and scratch buffers are kept. The transport must
    carry no other traffic with the same tags meanwhile.

    A 1-rank group moves no messages, so its transport is never called:

    >>> from taccl_py.testing.plans import direct_allgather
    >>> class Alone:
    ...     tag_ub = 0
    >>> ex = PlanExecutor(direct_allgather(1), Alone(), 0, 1, 2, np.float32)
    >>> ex.run(np.array([1, 2], dtype=np.float32), np.zeros(2, dtype=np.float32)).tolist()
    [1.0, 2.0]
    """

    def __init__(
        self,
        plan: Plan,
        transport: Transport,
        rank: int,
        nranks: int,
        chunk_elems: int,
        dtype,
        redop: str | None = None,
        *,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        check_limits(plan)
        if nranks != plan.ngpus:
            raise TacclError(f"plan {plan.name} needs {plan.ngpus} ranks, the group has {nranks}")
        self.plan, self.transport = plan, transport
        self.rank = rank
        self.coll = coll = plan.collective()
        self.ce = ce = int(chunk_elems)
        self.dtype = np.dtype(dtype)
        redop = redop or plan.redop
        if redop not in REDOPS:
            raise TacclError(f"redop {redop!r} is not supported by the executor")
        self.reduce = REDOPS[redop]
        self._wait_fn = getattr(transport, "wait", None)
        gpu = next(g for g in plan.gpus if g.id == rank)
        self.tbs = sorted(gpu.tbs, key=lambda t: t.id)
        self.sizes = {"i": gpu.i_chunks * ce, "o": gpu.o_chunks * ce, "s": gpu.s_chunks * ce}
        self.in_locs = [canonical_location(coll, rank, "i", j) for j in range(coll.i_chunks)]
        self.out_locs = [canonical_location(coll, rank, "o", j) for j in range(coll.o_chunks)]
        # recvbuf is the physical output buffer when the output is exactly one whole buffer
        self.out_phys: str | None = None
        out_bufs = {b for b, _ in self.out_locs}
        if len(out_bufs) == 1:
            b = out_bufs.pop()
            if [o for _, o in self.out_locs] == list(range(coll.o_chunks)) and self.sizes[
                b
            ] == coll.o_chunks * ce:
                self.out_phys = b
        seg, sched = max(1, segment_bytes // self.dtype.itemsize), _schedule(plan)
        compiler = _Compiler(self, seg, sched, late=True)
        if not compiler.compile():  # a send waited on before its round: post every
            compiler = _Compiler(self, seg, sched, late=False)  # receive up front
            compiler.compile()
        compiler.install()
        # out-of-place plans that write their input buffer work on a copy of sendbuf
        self.copy_input = "i" in self.written and not coll.inplace
        self.temp = np.empty(self.temp_elems, dtype=self.dtype)
        self._scratch: dict[str, np.ndarray] = {}
        self._sends: list[Any] = [None] * len(self.send_wires)

    # -- buffers --------------------------------------------------------------------------
    def _buffer(self, name: str, elems: int) -> np.ndarray:
        """An internal buffer, allocated on first use and kept."""
        buf = self._scratch.get(name)
        if buf is None:
            buf = self._scratch[name] = np.empty(elems, dtype=self.dtype)
        return buf

    def _setup(self, sendbuf: np.ndarray | None, recvbuf: np.ndarray | None) -> dict:
        coll, ce, rank = self.coll, self.ce, self.rank
        if sendbuf is None and not (coll.kind in NO_INPUT and rank != coll.root):
            raise TacclError(f"rank {rank}: {coll.label} needs this rank's send buffer")
        if recvbuf is None and not (coll.kind in NO_OUTPUT and rank != coll.root):
            raise TacclError(f"rank {rank}: {coll.label} needs this rank's receive buffer")
        send = None
        if sendbuf is not None:
            send = np.ascontiguousarray(sendbuf).reshape(-1)
            if send.dtype != self.dtype:
                raise TacclError(f"send buffer must be {self.dtype}, got {send.dtype}")
            if send.size != coll.i_chunks * ce:
                raise TacclError(
                    f"rank {rank}: send buffer has {send.size} elements, the plan "
                    f"needs {coll.i_chunks} chunks of {ce}"
                )
        recv = None
        if recvbuf is not None:
            if recvbuf.dtype != self.dtype:
                raise TacclError(f"receive buffer must be {self.dtype}, got {recvbuf.dtype}")
            if recvbuf.size != coll.o_chunks * ce or not recvbuf.flags.c_contiguous:
                raise TacclError(
                    f"rank {rank}: receive buffer must be contiguous with "
                    f"{coll.o_chunks * ce} elements, got {recvbuf.size}"
                )
            recv = recvbuf.reshape(-1)
        bufs: dict[str, np.ndarray] = {"t": self.temp}
        if self.out_phys is not None:
            bufs[self.out_phys] = (
                recv if recv is not None else self._buffer("out", self.sizes[self.out_phys])
            )
        for name, elems in self.sizes.items():
            if name not in bufs and elems > 0:
                if name == "i" and send is not None and not coll.inplace and not self.copy_input:
                    bufs[name] = send
                else:
                    bufs[name] = self._buffer(name, elems)
        if send is not None and (coll.inplace or self.copy_input):
            for j, (b, o) in enumerate(self.in_locs):
                if b not in bufs:  # a rank whose plan never reads its input
                    continue
                target = bufs[b][o * ce : (o + 1) * ce]
                source = send[j * ce : (j + 1) * ce]
                if target.ctypes.data != source.ctypes.data:  # sendbuf may alias recvbuf
                    target[...] = source
        return bufs

    # -- execution ------------------------------------------------------------------------
    def run(self, sendbuf: np.ndarray | None, recvbuf: _B, timeout: float = 60.0) -> _B:
        """Run the plan once: ``sendbuf`` holds the input chunks, ``recvbuf`` gets the output
        (``None`` on a rooted collective's rank that has no input / no output). Returns
        ``recvbuf``."""
        tp, reduce, sends = self.transport, self.reduce, self._sends
        bufs = self._setup(sendbuf, recvbuf)
        wires = self.recv_wires
        recvs: list[Any] = [None] * len(wires)
        step, what = (-1, -1), "recv"
        try:
            for w in self.early:
                peer, tag, (b, lo, hi), step = wires[w]
                recvs[w] = tp.irecv(bufs[b][lo:hi], peer, tag)
            for ins in self.program:
                code, step = ins[0], ins[1]
                what = "send" if code == _WAIT_SEND else "recv"
                if code == _COPY:
                    (b, lo, hi), (b2, lo2, hi2) = ins[2], ins[3]
                    bufs[b][lo:hi] = bufs[b2][lo2:hi2]
                elif code == _REDUCE:
                    (b, lo, hi), (b2, lo2, hi2), (b3, lo3, hi3) = ins[2], ins[3], ins[4]
                    reduce(bufs[b2][lo2:hi2], bufs[b3][lo3:hi3], out=bufs[b][lo:hi])
                elif code == _WAIT_RECV:
                    self._wait(recvs[ins[2]], timeout, step, "recv", recvs)
                elif code == _SEND:
                    w = ins[2]
                    peer, tag, _ = self.send_wires[w]
                    b, lo, hi = ins[3]
                    sends[w] = tp.isend(bufs[b][lo:hi], peer, tag)
                elif code == _WAIT_SEND:
                    w = ins[2]
                    self._wait(sends[w], timeout, step, "send", recvs)
                    sends[w] = None
                else:
                    w = ins[2]
                    peer, tag, (b, lo, hi), _ = wires[w]
                    recvs[w] = tp.irecv(bufs[b][lo:hi], peer, tag)
            what = "send"
            for w, req in enumerate(sends):
                if req is not None:
                    step = self.send_wires[w][2]
                    self._wait(req, timeout, step, "send", recvs)
                    sends[w] = None
        except TacclError as exc:
            sends[:] = [None] * len(sends)
            raise self._failed(exc, step, what) from None
        if self.out_phys is None and recvbuf is not None:
            out, ce = recvbuf.reshape(-1), self.ce
            for j, (b, o) in enumerate(self.out_locs):
                if b in bufs:  # else a rank whose plan writes no output (a rooted one)
                    out[j * ce : (j + 1) * ce] = bufs[b][o * ce : (o + 1) * ce]
        return recvbuf

    def _wait(self, req, timeout: float, step: tuple[int, int], what: str, recvs: list) -> None:
        if self._wait_fn is not None:
            done = self._wait_fn(req, timeout)
        else:
            done, deadline = False, time.monotonic() + timeout
            while not done:
                done = bool(self.transport.progress([req], 0.05))
                if not done and time.monotonic() > deadline:
                    break
        if not done:
            self.transport.cancel([r for r in recvs if r is not None])
            raise TacclError(
                f"rank {self.rank}: no progress for {timeout:g} s: " + self._where(step, what)
            )

    def _failed(self, exc: TacclError, step: tuple[int, int], what: str) -> TacclError:
        if str(exc).startswith(f"rank {self.rank}:"):
            return exc
        return TacclError(f"rank {self.rank}: {exc}; {self._where(step, what)}")

    def _where(self, step: tuple[int, int], what: str) -> str:
        """Which threadblock/step of this rank waits, and for what."""
        if step[0] < 0:
            return "before its first step"
        tb = self.tbs[step[0]]
        st = tb.steps[step[1]]
        if what == "recv":
            why = f"waits to receive from rank {tb.recv} on channel {tb.chan}"
        else:
            why = f"waits for its earlier send to rank {tb.send} to complete"
        return f"tb {tb.id} step {step[1]} ({st.type}) {why}"

    # filled in by _Compiler
    program: list[tuple]
    recv_wires: list[tuple[int, int, Span, tuple[int, int]]]  # peer, tag, region, step
    early: list[int]  # receive wires posted before the first step
    send_wires: list[tuple[int, int, tuple[int, int]]]  # peer, tag, step
    temp_elems: int
    written: frozenset[str]


#: round schedules of recently compiled plans: id -> (plan, schedule); a plan run at many
#: sizes (DDP's buckets) is simulated once
_SCHEDULES: dict[int, tuple[Plan, Any]] = {}
SCHEDULE_CACHE = 16


_SCHEDULES_LOCK = threading.Lock()


def _schedule(plan: Plan):
    with _SCHEDULES_LOCK:
        hit = _SCHEDULES.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    sched = plan_rounds(plan)
    with _SCHEDULES_LOCK:
        if len(_SCHEDULES) >= SCHEDULE_CACHE:
            _SCHEDULES.pop(next(iter(_SCHEDULES)))
        _SCHEDULES[id(plan)] = (plan, sched)
    return sched


class _Compiler:
    """Compiles one rank's steps, in round-schedule order, into ``ex.program``.

    A receive (r, rcs) lands in place when no other step of the rank touches its
    destination: posted before the first step. It also lands in place when every earlier
    step touching the destination is done before the round its message moves: then it is
    posted at the start of that round (after the sends reading that range completed). Both
    ends derive that round from the same schedule; a wait on a send then never waits for a
    receive that its peer posts later, unless the send is waited on before its round (a
    write races with it: never in a verified plan), when every receive is posted up front
    instead (``late=False``)."""

    def __init__(self, ex: PlanExecutor, seg_elems: int, sched, late: bool) -> None:
        self.ex, self.seg, self.sched, self.allow_late = ex, seg_elems, sched, late
        self.program: list[tuple] = []
        self.recv_wires: list[tuple[int, int, Span, tuple[int, int]]] = []
        self.late: set[int] = set()  # receive wires posted by a _POST instruction
        self.send_wires: list[tuple[int, int, tuple[int, int]]] = []
        self.temp = 0
        # unfinished sends: (range, send wire, round it moves in)
        self.busy: list[tuple[Span, int, int]] = []
        self.written: set[str] = set()
        self.round = 0  # the round of the step being compiled
        self.safe = True  # no send waited on before its round
        self.posted: dict[tuple[int, int], list[int]] = {}  # late step -> its wires

    def compile(self) -> bool:
        """Fill the program; False if it waits on a send before its round while some
        receive is posted late."""
        ex, sched = self.ex, self.sched
        plan, rank, ce = ex.plan, ex.rank, ex.ce
        index = {tb.id: g for g, tb in enumerate(ex.tbs)}
        order = [(index[tb], s) for r, tb, s in sched.order if r == rank]
        self.timing = {(index[tb], s): t for (r, tb, s), t in sched.timing.items() if r == rank}
        # which steps touch each chunk; tags: wires numbered per connection in step order
        touchers: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.tags: dict[tuple[str, int, int], int] = {}  # (r/s, tb, step) -> first wire
        overflow = False
        for g, tb in enumerate(ex.tbs):
            seq = {"r": 0, "s": 0}
            for s, st in enumerate(tb.steps):
                for b, lo, hi in self._src(st) + self._dst(st):
                    for c in range(lo // ce, hi // ce):
                        touchers.setdefault((b, c), []).append((g, s))
                for way, types in (("r", RECV_TYPES), ("s", SEND_TYPES)):
                    if st.type in types:
                        self.tags[(way, g, s)] = seq[way]
                        seq[way] += len(self._segments(st.cnt * ce))
            top = max(seq.values()) * max(1, plan.nchannels) + tb.chan
            overflow = overflow or top > ex.transport.tag_ub
        self.touchers = touchers
        # late receives: posted at the start of the round their message moves
        posts: list[tuple[tuple, tuple[int, int]]] = []
        if self.allow_late and not overflow:  # (else receives go in connection order)
            for g, s in order:
                k = self._late_round(g, s)
                if k is not None:
                    posts.append(((k, 0, -1), (g, s)))
        events = sorted(
            [(self.timing[gs].start, 1, gs) for gs in order] + [(t, 0, gs) for t, gs in posts]
        )
        for when, kind, (g, s) in events:
            self.round = when[0]
            if kind == 0:
                self._post(g, s)
            else:
                self._step(g, s)
        return self.safe or not self.late

    def install(self) -> None:
        ex = self.ex
        ex.program, ex.recv_wires, ex.send_wires = self.program, self.recv_wires, self.send_wires
        ex.early = [w for w in range(len(self.recv_wires)) if w not in self.late]
        ex.temp_elems, ex.written = self.temp, frozenset(self.written)

    def _late_round(self, g: int, s: int) -> int | None:
        """The round to post step (g, s)'s receive straight into its destination, if any."""
        st = self.ex.tbs[g].steps[s]
        if st.type not in ("r", "rcs"):
            return None
        dst = self._dst(st)
        if len(dst) != 1 or self._exclusive(dst[0]):
            return None
        t = self.timing[(g, s)]
        k = t.received
        if k is None:
            return None
        ce = self.ex.ce
        for c in range(dst[0][1] // ce, dst[0][2] // ce):
            for x in self.touchers[(dst[0][0], c)]:
                if x == (g, s):
                    continue
                tx = self.timing[x]
                if tx.start < t.start and not tx.done < (k, 0, 0):
                    return None  # an earlier step still uses the range in round k
                if (k, 0, 0) <= tx.start < t.start:
                    return None
        return k

    # -- ranges ---------------------------------------------------------------------------
    def _runs(self, buf: str, off: int, cnt: int) -> tuple[Span, ...]:
        """Physical element ranges of chunks buf[off:off+cnt]."""
        ex, runs = self.ex, cast(list[Span], [])
        for c in range(cnt):
            b, o = canonical_location(ex.coll, ex.rank, buf, off + c)
            if runs and runs[-1][0] == b and runs[-1][2] == o * ex.ce:
                runs[-1] = (b, runs[-1][1], runs[-1][2] + ex.ce)
            else:
                runs.append((b, o * ex.ce, (o + 1) * ex.ce))
        return tuple(runs)

    def _src(self, st) -> tuple[Span, ...]:
        # check_limits gave every step that reads (writes) a src (dst) buffer
        return self._runs(cast(str, st.srcbuf), st.srcoff, st.cnt) if st.type in READS_SRC else ()

    def _dst(self, st) -> tuple[Span, ...]:
        return self._runs(cast(str, st.dstbuf), st.dstoff, st.cnt) if st.type in WRITES_DST else ()

    def _temp(self, elems: int) -> tuple[Span, ...]:
        self.temp += elems
        return (("t", self.temp - elems, self.temp),)

    # -- instructions ---------------------------------------------------------------------
    def _guard(self, step, spans) -> None:
        """Wait for unfinished sends that read any of ``spans`` (about to be written)."""
        keep = []
        for entry in self.busy:
            rng, w, moves = entry
            if any(b == rng[0] and lo < rng[2] and rng[1] < hi for b, lo, hi in spans):
                self.program.append((_WAIT_SEND, step, w))
                if moves > self.round:  # its receiver may post it only then
                    self.safe = False
            else:
                keep.append(entry)
        self.busy = keep

    def _copy(self, step, dst, src) -> None:
        self._guard(step, dst)
        self.written.update(b for b, _, _ in dst)
        for out, a in _align(dst, src):
            self.program.append((_COPY, step, out, a))

    def _reduce(self, step, out, a, b) -> None:
        self._guard(step, out)
        self.written.update(x for x, _, _ in out)
        for o, x, y in _align(out, a, b):
            self.program.append((_REDUCE, step, o, x, y))

    def _tag(self, way: str, step: tuple[int, int], j: int) -> int:
        """Tag of segment ``j`` of the message ``step`` receives (``way`` r) or sends (s):
        its number on the connection, which both ends count alike."""
        tb = self.ex.tbs[step[0]]
        tag = (self.tags[(way, *step)] + j) * max(1, self.ex.plan.nchannels) + tb.chan
        return tag if tag <= self.ex.transport.tag_ub else tb.chan  # in-order delivery

    def _recv(self, step, j: int, region: Span) -> None:
        """Wait for segment ``j`` of ``step``'s message (posted early, or by :meth:`_post`)."""
        wires = self.posted.get(step)
        if wires is not None:
            w = wires[j]
        else:
            w = len(self.recv_wires)
            peer = self.ex.tbs[step[0]].recv
            self.recv_wires.append((peer, self._tag("r", step, j), region, step))
        self.written.add(region[0])
        self.program.append((_WAIT_RECV, step, w))

    def _post(self, g: int, s: int) -> None:
        """Post step (g, s)'s receive straight into its destination, at its round's start."""
        tb, step = self.ex.tbs[g], (g, s)
        dst = self._dst(tb.steps[s])[0]
        self._guard(step, (dst,))
        wires = self.posted[step] = []
        for j, (a, b) in enumerate(self._segments(tb.steps[s].cnt * self.ex.ce)):
            w = len(self.recv_wires)
            self.recv_wires.append((tb.recv, self._tag("r", step, j), _sub(dst, a, b), step))
            self.late.add(w)
            self.program.append((_POST, step, w))
            wires.append(w)

    def _send(self, step, j: int, region: Span) -> None:
        tb = self.ex.tbs[step[0]]
        w = len(self.send_wires)
        self.send_wires.append((tb.send, self._tag("s", step, j), step))
        self.program.append((_SEND, step, w, region))
        sent = self.timing[step].sent
        self.busy.append((region, w, self.round if sent is None else sent))

    def _segments(self, n: int) -> list[tuple[int, int]]:
        k = max(1, n // self.seg)
        return [(n * j // k, n * (j + 1) // k) for j in range(k)]

    def _step(self, g: int, s: int) -> None:
        ex = self.ex
        tb = ex.tbs[g]
        st = tb.steps[s]
        t, step, n = st.type, (g, s), st.cnt * ex.ce
        src, dst = self._src(st), self._dst(st)
        if t == "nop":
            return
        if t == "cpy" or t == "re":
            if _overlap(src, dst) and src != dst:  # partly overlapping: through a temporary
                stage = self._temp(n)
                self._copy(step, stage, src)
                src = stage
            if t == "cpy":
                if src != dst:
                    self._copy(step, dst, src)
            else:
                self._reduce(step, dst, dst, src)
            return
        if t == "s":
            if len(src) == 1:
                region = src[0]
            else:  # gather the pieces into one message
                region = self._temp(n)[0]
                self._copy(step, (region,), src)
            for j, (a, b) in enumerate(self._segments(n)):
                self._send(step, j, _sub(region, a, b))
            return
        # receiving steps
        assert t in RECV_TYPES
        direct = t in ("r", "rcs") and len(dst) == 1
        direct = direct and (self._exclusive(dst[0]) or step in self.posted)
        region = dst[0] if direct else self._temp(n)[0]
        # a reduction may write dst piece by piece unless dst partly overlaps src
        into_dst = bool(dst) and not (_overlap(src, dst) and src != dst)
        into_dst = into_dst and (t == "rrc" or (t == "rrcs" and len(dst) == 1))
        for j, (a, b) in enumerate(self._segments(n)):
            seg = _sub(region, a, b)
            self._recv(step, j, seg)
            out = seg
            if t in ("r", "rcs"):
                if not direct:
                    self._copy(step, _subruns(dst, a, b), (seg,))
            elif into_dst:  # rrc, or rrcs sending from its destination
                self._reduce(step, _subruns(dst, a, b), (seg,), _subruns(src, a, b))
                out = _sub(dst[0], a, b) if t == "rrcs" else seg
            else:
                self._reduce(step, (seg,), (seg,), _subruns(src, a, b))
                if dst:
                    self._copy(step, _subruns(dst, a, b), (seg,))
            if t in SEND_TYPES:
                self._send(step, j, out)

    def _exclusive(self, span: Span) -> bool:
        ce = self.ex.ce
        return all(
            len(self.touchers[(span[0], c)]) == 1 for c in range(span[1] // ce, span[2] // ce)
        )


def _sub(span: Span, a: int, b: int) -> Span:
    return (span[0], span[1] + a, span[1] + b)


def _subruns(runs: tuple[Span, ...], a: int, b: int) -> tuple[Span, ...]:
    """Elements ``a:b`` of the concatenation of ``runs``."""
    out, pos = [], 0
    for buf, lo, hi in runs:
        n = hi - lo
        s, e = max(a, pos), min(b, pos + n)
        if s < e:
            out.append((buf, lo + s - pos, lo + e - pos))
        pos += n
    return tuple(out)


def _align(*lists: tuple[Span, ...]) -> list[tuple[Span, ...]]:
    """Cut equally long span lists into pieces that lie in one span of each list."""
    idx, pos, pieces = [0] * len(lists), [0] * len(lists), []
    while idx[0] < len(lists[0]):
        spans = [runs[i] for runs, i in zip(lists, idx)]
        n = min(s[2] - s[1] - p for s, p in zip(spans, pos))
        pieces.append(tuple((s[0], s[1] + p, s[1] + p + n) for s, p in zip(spans, pos)))
        for j, s in enumerate(spans):
            pos[j] += n
            if s[1] + pos[j] == s[2]:
                idx[j], pos[j] = idx[j] + 1, 0
    return pieces


def _overlap(a: tuple[Span, ...], b: tuple[Span, ...]) -> bool:
    return any(x[0] == y[0] and x[1] < y[2] and y[1] < x[2] for x in a for y in b)

"""Execute one rank's part of an MSCCL plan on NumPy buffers over a point-to-point transport.

Semantics mirror :class:`~taccl_py.plan.verify.Interpreter`: each threadblock runs its
steps in order, a step waits for its dependency (``depid``/``deps``, same rank), a connection
(sender, receiver, channel) is a FIFO whose n-th send matches the n-th receive, and the
buffer a step reads or writes is found with :func:`~taccl_py.plan.verify.canonical_location`
(in-place plans alias input and output).

Execution model: all threadblocks of the rank are state machines advanced by one thread.
Every receive of the plan is posted (into a private temporary, tag = connection sequence
number and channel) before any step runs, so a connection behaves like the interpreter's
unbounded FIFO and a send never waits for the receiving threadblock to reach its step. A
threadblock advances while its next step's dependency is done, its message (if it receives)
has arrived, and the locations it writes are not still being read by one of this rank's
in-flight sends; sends are posted as soon as their step runs (for rcs/rrs/rrcs after the
receive and the local copy/reduce). With no progress for ``timeout`` seconds a
:class:`TacclError` names the rank and the stuck threadblock/step.

The transport (MPI in :mod:`.mpi_exec`, Gloo in :mod:`taccl_py.torch`) posts byte messages
and reports which requests completed.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, cast

import numpy as np

from ..errors import TacclError
from ..plan.model import RECV_TYPES, SEND_TYPES, Plan, Step
from ..plan.verify import READS_SRC, WRITES_DST, canonical_location, check_limits

REDOPS = {"sum": np.add, "nop": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}


class Transport(Protocol):
    """Non-blocking point-to-point messages between the ranks of one group."""

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


_Runs = tuple[tuple[str, int, int], ...]  # physical element ranges (buffer, start, stop)


class _Step:
    """A compiled step: element ranges, dependency (tb index, step), message slot / peer."""

    __slots__ = ("type", "src", "dst", "cnt", "dep", "recv_slot", "send_peer", "send_tag", "s")

    def __init__(self, st: Step, src: _Runs, dst: _Runs, dep: tuple[int, int] | None) -> None:
        self.type, self.src, self.dst, self.cnt, self.dep = st.type, src, dst, st.cnt, dep
        self.s = st.s
        self.recv_slot = -1
        self.send_peer = -1
        self.send_tag = 0


class PlanExecutor:
    """This rank's compiled part of ``plan`` for ``chunk_elems`` elements of ``dtype`` a chunk.

    Reusable: :meth:`run` can be called many times (timing loops) with fresh buffers. The
    transport must carry no other traffic with the same tags meanwhile.

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
        gpu = next(g for g in plan.gpus if g.id == rank)
        self.gpu = gpu
        self.tbs = sorted(gpu.tbs, key=lambda t: t.id)
        tb_index = {tb.id: i for i, tb in enumerate(self.tbs)}
        sizes = {"i": gpu.i_chunks, "o": gpu.o_chunks, "s": gpu.s_chunks}

        # Where the collective's input/output chunks live; whether recvbuf can be the
        # physical buffer holding the output, and whether the plan writes the input buffer.
        self.in_locs = [canonical_location(coll, rank, "i", j) for j in range(coll.i_chunks)]
        self.out_locs = [canonical_location(coll, rank, "o", j) for j in range(coll.o_chunks)]
        out_bufs = {b for b, _ in self.out_locs}
        self.out_phys = None
        if len(out_bufs) == 1:
            b = out_bufs.pop()
            if [o for _, o in self.out_locs] == list(range(coll.o_chunks)) and sizes[
                b
            ] == coll.o_chunks:
                self.out_phys = b
        written: set[str] = set()
        ttag_ub = transport.tag_ub
        self.recv_shapes: list[tuple[int, int, int]] = []  # (peer, tag, cnt)
        self.program: list[list[_Step]] = []
        for tb in self.tbs:
            steps, rseq, sseq = [], 0, 0
            for st in tb.steps:
                # check_limits gave every step that reads (writes) a src (dst) buffer
                src = (
                    self._runs(cast(str, st.srcbuf), st.srcoff, st.cnt)
                    if st.type in READS_SRC
                    else ()
                )
                dst = (
                    self._runs(cast(str, st.dstbuf), st.dstoff, st.cnt)
                    if st.type in WRITES_DST
                    else ()
                )
                written.update(b for b, _, _ in dst)
                dep = (tb_index[st.depid], st.deps) if st.depid >= 0 else None
                step = _Step(st, src, dst, dep)
                if st.type in RECV_TYPES:
                    step.recv_slot = len(self.recv_shapes)
                    self.recv_shapes.append((tb.recv, self._tag(rseq, tb.chan, ttag_ub), st.cnt))
                    rseq += 1
                if st.type in SEND_TYPES:
                    step.send_peer = tb.send
                    step.send_tag = self._tag(sseq, tb.chan, ttag_ub)
                    sseq += 1
                steps.append(step)
            self.program.append(steps)
        # out-of-place plans that write their input buffer work on a copy of sendbuf
        self.copy_input = "i" in written and not coll.inplace
        self.sizes = sizes
        # A plain receive (r/rcs) whose destination is one contiguous range that no other
        # step of this rank reads or writes can land in place: its Irecv targets the final
        # location directly (no temporary, no copy), since nothing can observe that range
        # between the pre-posted Irecv and the step itself.
        touches: dict[tuple[str, int], int] = {}
        for steps in self.program:
            for op in steps:
                for b, lo, hi in op.src + op.dst:
                    for c in range(lo // ce, hi // ce):
                        touches[(b, c)] = touches.get((b, c), 0) + 1
        self.direct: list[tuple[str, int, int] | None] = [None] * len(self.recv_shapes)
        for steps in self.program:
            for op in steps:
                if op.type in ("r", "rcs") and len(op.dst) == 1:
                    b, lo, hi = op.dst[0]
                    if all(touches[(b, c)] == 1 for c in range(lo // ce, hi // ce)):
                        self.direct[op.recv_slot] = op.dst[0]
        self.temps = [
            None if self.direct[slot] is not None else np.empty(cnt * ce, dtype=self.dtype)
            for slot, (_, _, cnt) in enumerate(self.recv_shapes)
        ]

    def _tag(self, seq: int, chan: int, tag_ub: int) -> int:
        tag = seq * max(1, self.plan.nchannels) + chan
        return tag if tag <= tag_ub else chan  # FIFO then rests on in-order delivery

    def _runs(self, buf: str, off: int, cnt: int) -> _Runs:
        """Physical element ranges (buffer, start, stop) of chunks buf[off:off+cnt]."""
        runs: list[list] = []
        for c in range(cnt):
            b, o = canonical_location(self.coll, self.rank, buf, off + c)
            if runs and runs[-1][0] == b and runs[-1][2] == o * self.ce:
                runs[-1][2] += self.ce
            else:
                runs.append([b, o * self.ce, (o + 1) * self.ce])
        return tuple(tuple(r) for r in runs)

    # -- buffers --------------------------------------------------------------------------
    def _setup(self, sendbuf: np.ndarray, recvbuf: np.ndarray) -> dict[str, np.ndarray]:
        coll, ce = self.coll, self.ce
        send = np.ascontiguousarray(sendbuf).reshape(-1)
        if send.dtype != self.dtype or recvbuf.dtype != self.dtype:
            raise TacclError(f"buffers must be {self.dtype}, got {send.dtype}/{recvbuf.dtype}")
        if send.size != coll.i_chunks * ce:
            raise TacclError(
                f"rank {self.rank}: send buffer has {send.size} elements, the plan "
                f"needs {coll.i_chunks} chunks of {ce}"
            )
        if recvbuf.size != coll.o_chunks * ce or not recvbuf.flags.c_contiguous:
            raise TacclError(
                f"rank {self.rank}: receive buffer must be contiguous with "
                f"{coll.o_chunks * ce} elements, got {recvbuf.size}"
            )
        recv = recvbuf.reshape(-1)
        bufs: dict[str, np.ndarray] = {}
        if self.out_phys is not None:
            bufs[self.out_phys] = recv
        for name, nchunks in self.sizes.items():
            if name not in bufs and nchunks > 0:
                if name == "i" and not coll.inplace and not self.copy_input:
                    bufs[name] = send
                else:
                    bufs[name] = np.empty(nchunks * ce, dtype=self.dtype)
        if coll.inplace or self.copy_input:
            for j, (b, o) in enumerate(self.in_locs):
                target = bufs[b][o * ce : (o + 1) * ce]
                source = send[j * ce : (j + 1) * ce]
                if target.ctypes.data != source.ctypes.data:  # sendbuf may alias recvbuf
                    target[...] = source
        return bufs

    def _read(self, bufs, runs) -> np.ndarray:
        if len(runs) == 1:
            b, lo, hi = runs[0]
            return bufs[b][lo:hi]
        return np.concatenate([bufs[b][lo:hi] for b, lo, hi in runs])

    def _write(self, bufs, runs, data: np.ndarray) -> None:
        pos = 0
        for b, lo, hi in runs:
            bufs[b][lo:hi] = data[pos : pos + hi - lo]
            pos += hi - lo

    # -- execution ------------------------------------------------------------------------
    def run(self, sendbuf: np.ndarray, recvbuf: np.ndarray, timeout: float = 60.0) -> np.ndarray:
        """Run the plan once: ``sendbuf`` holds the input chunks, ``recvbuf`` gets the output."""
        tp = self.transport
        bufs = self._setup(sendbuf, recvbuf)
        ntb = len(self.program)
        pc = [0] * ntb
        recv_done = [False] * len(self.recv_shapes)
        # outstanding requests and what each completion means:
        # ("r", slot) a receive; ("s", (buf, lo, hi) or None) a send reading that range
        reqs: list = []
        kinds: list = []
        for slot, (peer, tag, _) in enumerate(self.recv_shapes):
            d = self.direct[slot]
            # a receive that does not land in place has a temporary
            target = cast(np.ndarray, self.temps[slot]) if d is None else bufs[d[0]][d[1] : d[2]]
            try:
                reqs.append(tp.irecv(target, peer, tag))
            except TacclError as exc:
                raise self._failed(exc, pc, recv_done) from None
            kinds.append(("r", slot))
        busy: list[tuple[str, int, int]] = []  # ranges read by in-flight sends
        last = time.monotonic()
        remaining = sum(len(p) for p in self.program)
        while True:
            progressed = False
            for g in range(ntb):
                steps = self.program[g]
                k = pc[g]
                while k < len(steps):
                    st = steps[k]
                    dep = st.dep
                    if dep is not None and pc[dep[0]] <= dep[1]:
                        break
                    if st.recv_slot >= 0 and not recv_done[st.recv_slot]:
                        break
                    if busy and st.dst and _overlaps(busy, st.dst):
                        break
                    out = self._execute(st, bufs)
                    if st.send_peer >= 0:
                        try:
                            # a sending step's _execute returns what it sends
                            data = cast(np.ndarray, out)
                            reqs.append(tp.isend(data, st.send_peer, st.send_tag))
                        except TacclError as exc:
                            raise self._failed(exc, pc, recv_done) from None
                        rng = st.src[0] if st.type == "s" and len(st.src) == 1 else None
                        kinds.append(("s", rng))
                        if rng is not None:
                            busy.append(rng)
                    k += 1
                    remaining -= 1
                    progressed = True
                pc[g] = k
            if not reqs and remaining == 0:
                break
            if reqs:
                wait = 0.0 if progressed else max(0.0, timeout - (time.monotonic() - last))
                try:
                    done = tp.progress(reqs, min(wait, 0.05))
                except TacclError as exc:
                    raise self._failed(exc, pc, recv_done) from None
                if done:
                    progressed = True
                    for i in done:
                        kind, what = kinds[i]
                        if kind == "r":
                            recv_done[what] = True
                        elif what is not None:
                            busy.remove(what)
                    gone = set(done)
                    keep = [i for i in range(len(reqs)) if i not in gone]
                    reqs = [reqs[i] for i in keep]
                    kinds = [kinds[i] for i in keep]
            if progressed:
                last = time.monotonic()
            elif time.monotonic() - last > timeout:
                tp.cancel([r for r, (kind, _) in zip(reqs, kinds) if kind == "r"])
                raise TacclError(
                    f"rank {self.rank}: no progress for {timeout:g} s: "
                    + self._stuck(pc, recv_done)
                )
        if self.out_phys is None:
            recv = recvbuf.reshape(-1)
            ce = self.ce
            for j, (b, o) in enumerate(self.out_locs):
                recv[j * ce : (j + 1) * ce] = bufs[b][o * ce : (o + 1) * ce]
        return recvbuf

    def _execute(self, st: _Step, bufs) -> np.ndarray | None:
        t = st.type
        if t == "nop":
            return None
        if t == "s":
            return np.ascontiguousarray(self._read(bufs, st.src))
        if t == "cpy":
            data = self._read(bufs, st.src)
            if len(st.src) == 1 and _overlaps(st.src, st.dst):  # a view of what we write
                data = data.copy()
            self._write(bufs, st.dst, data)
            return None
        if t == "re":
            cur = self._read(bufs, st.dst)
            self._write(bufs, st.dst, self.reduce(cur, self._read(bufs, st.src)))
            return None
        d = self.direct[st.recv_slot]
        if d is not None:  # already in place (r/rcs)
            return bufs[d[0]][d[1] : d[2]]
        incoming = cast(np.ndarray, self.temps[st.recv_slot])  # not in place: a temporary
        if t in ("rrc", "rrs", "rrcs"):
            self.reduce(incoming, self._read(bufs, st.src), out=incoming)
        if st.dst:
            self._write(bufs, st.dst, incoming)
        return incoming

    def _failed(self, exc: TacclError, pc, recv_done) -> TacclError:
        return TacclError(f"rank {self.rank}: {exc}; {self._stuck(pc, recv_done)}")

    def _stuck(self, pc, recv_done) -> str:
        """Where each unfinished threadblock of this rank waits, and for what."""
        parts = []
        for g, steps in enumerate(self.program):
            k = pc[g]
            if k >= len(steps):
                continue
            tb, st = self.tbs[g], steps[k]
            if st.dep is not None and pc[st.dep[0]] <= st.dep[1]:
                why = f"waits for tb {self.tbs[st.dep[0]].id} step {st.dep[1]}"
            elif st.recv_slot >= 0 and not recv_done[st.recv_slot]:
                why = f"waits to receive from rank {tb.recv} on channel {tb.chan}"
            else:
                why = "waits for its earlier sends to complete"
            parts.append(f"tb {tb.id} step {k} ({st.type}) {why}")
        if not parts:
            peers = sorted({self.tbs[g].send for g in range(len(self.tbs))} - {-1})
            parts.append(f"sends to rank(s) {peers} never completed")
        more = f"; ... (+{len(parts) - 4} more)" if len(parts) > 4 else ""
        return "; ".join(parts[:4]) + more


def _overlaps(busy, runs) -> bool:
    for b, lo, hi in runs:
        for bb, blo, bhi in busy:
            if b == bb and lo < bhi and blo < hi:
                return True
    return False

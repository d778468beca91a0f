"""Run plans on GPUs with CuPy: over NCCL (one rank per GPU) or all ranks on one GPU.

CuPy is imported lazily: this module imports without it.

* :class:`NcclPlanExecutor` runs one rank's part of the round schedule of
  :mod:`~taccl_py.runtime.rounds`: per round, pack multi-run sends, one NCCL
  ``groupStart``/``groupEnd`` with the round's receives and sends, then local copies and
  reductions, all on one (the caller's) stream.
* :func:`run_single_device` runs every rank's buffers on one device, one stream per (rank,
  threadblock); a send is a device-to-device copy into the receiver's region, and events
  order dependencies and send -> receive. The engine takes an injectable :class:`Device`
  (array module, streams, events): :class:`CupyDevice` on a GPU; :class:`HostDevice` runs
  the very same engine with NumPy on CPU, either immediately or with streams interleaved at
  random as far as their events allow (that is how it is tested without a GPU).

Results are exact for integer dtypes (reductions are elementwise ufuncs in the buffer dtype).
"""

from __future__ import annotations

import pickle
import random
from collections import deque
from functools import partial
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..errors import TacclError
from ..lowering.plan import Plan
from .rounds import (Msg, RankProgram, Schedule, StepOps, apply_local, chunk_elems, plan_rounds,
                     reducer)

#: numpy dtype name -> cupy.cuda.nccl constant name
NCCL_DTYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
               "uint32": "NCCL_UINT32", "int64": "NCCL_INT64", "uint64": "NCCL_UINT64",
               "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32",
               "float64": "NCCL_FLOAT64"}


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise TacclError("the CUDA executor needs CuPy (pip install cupy-cuda12x)") from exc
    return cupy


def nccl_dtype(dtype) -> int:
    """The NCCL data type of a NumPy dtype; :class:`TacclError` if NCCL has none."""
    name = NCCL_DTYPES.get(np.dtype(dtype).name)
    if name is None:
        raise TacclError(f"dtype {np.dtype(dtype).name} has no NCCL type; use one of "
                         f"{', '.join(NCCL_DTYPES)}")
    from cupy.cuda import nccl
    return getattr(nccl, name)


def communicator_from_store(store, rank: int, size: int, key: str = "taccl/nccl_id"):
    """A ``NcclCommunicator`` over ``size`` ranks; the unique id travels through ``store``
    (a c10d-style store: ``set(key, bytes)``, blocking ``get(key)``)."""
    from cupy.cuda import nccl
    if rank == 0:
        uid = nccl.get_unique_id()
        store.set(key, pickle.dumps(uid))
    else:
        uid = pickle.loads(store.get(key))
    return nccl.NcclCommunicator(size, uid, rank)


# -- NCCL, one rank per GPU -------------------------------------------------------------------

class NcclPlanExecutor:
    """This rank's compiled part of ``plan`` for ``chunk_elems`` elements of ``dtype`` a chunk.

    ``comm`` is a ``cupy.cuda.nccl.NcclCommunicator`` with ``plan.ngpus`` ranks. Reusable:
    :meth:`run` may be called many times; runs on different streams must be ordered by the
    caller.
    """

    def __init__(self, plan: Plan, comm, rank: int, chunk_elems: int, dtype,
                 schedule: Schedule | None = None, redop: str | None = None) -> None:
        if comm.size() != plan.ngpus:
            raise TacclError(f"plan {plan.name} needs {plan.ngpus} NCCL ranks, the "
                             f"communicator has {comm.size()}")
        self.cp = _cupy()
        self.comm, self.rank, self.ce = comm, rank, int(chunk_elems)
        self.dtype = np.dtype(dtype)
        self.nccl_dtype = nccl_dtype(self.dtype)
        sched = schedule or plan_rounds(plan)
        self.coll = sched.coll
        self.reduce = reducer(self.cp, redop or sched.redop)
        self.program: RankProgram = sched.ranks[rank]
        self.out_buf = self.program.output_buffer
        self.copy_input = self.coll.inplace or "i" in self.program.written

    def run(self, sendbuf, recvbuf, stream=None):
        """Run the plan: ``sendbuf`` holds the input chunks, ``recvbuf`` gets the output
        chunks (contiguous cupy arrays of ``dtype``; they may alias for in-place plans).
        Work is enqueued on ``stream`` (default: the current stream); returns ``recvbuf``."""
        from cupy.cuda import nccl
        cp, ce, prog = self.cp, self.ce, self.program
        stream = stream if stream is not None else cp.cuda.get_current_stream()
        with stream:
            bufs = self._setup(sendbuf, recvbuf)
            for rnd in prog.rounds:
                for op in rnd.pack:
                    apply_local(op, bufs, ce, self.reduce)
                if rnd.sends or rnd.recvs:
                    nccl.groupStart()
                    try:
                        for m in rnd.recvs:
                            self.comm.recv(self._ptr(bufs, m), m.cnt * ce, self.nccl_dtype,
                                           m.peer, stream.ptr)
                        for m in rnd.sends:
                            self.comm.send(self._ptr(bufs, m), m.cnt * ce, self.nccl_dtype,
                                           m.peer, stream.ptr)
                    finally:
                        nccl.groupEnd()
                for op in rnd.local:
                    apply_local(op, bufs, ce, self.reduce)
            if self.out_buf is None:
                recv = recvbuf.reshape(-1)
                for j, (b, o) in enumerate(prog.out_locs):
                    recv[j * ce:(j + 1) * ce] = bufs[b][o * ce:(o + 1) * ce]
        return recvbuf

    def _ptr(self, bufs, m: Msg) -> int:
        return bufs[m.buf].data.ptr + m.off * self.ce * self.dtype.itemsize

    def _setup(self, sendbuf, recvbuf) -> dict[str, Any]:
        cp, ce, coll, prog = self.cp, self.ce, self.coll, self.program
        for name, buf, chunks in (("send", sendbuf, coll.i_chunks),
                                  ("receive", recvbuf, coll.o_chunks)):
            if buf.dtype != self.dtype or buf.size != chunks * ce or not buf.flags.c_contiguous:
                raise TacclError(f"rank {self.rank}: {name} buffer must be a contiguous "
                                 f"{self.dtype} array of {chunks * ce} elements, got "
                                 f"{buf.dtype} x {buf.size}")
        send, recv = sendbuf.reshape(-1), recvbuf.reshape(-1)
        bufs: dict[str, Any] = {self.out_buf: recv} if self.out_buf else {}
        for name, chunks in prog.sizes.items():
            if name in bufs or chunks == 0:
                continue
            bufs[name] = send if name == "i" and not self.copy_input else \
                cp.empty(chunks * ce, dtype=self.dtype)
        if self.copy_input:
            for j, (b, o) in enumerate(prog.in_locs):
                target, source = bufs[b][o * ce:(o + 1) * ce], send[j * ce:(j + 1) * ce]
                if target.data.ptr != source.data.ptr:  # in place: already there
                    target[...] = source
        return bufs


# -- all ranks on one device ------------------------------------------------------------------

class Device(Protocol):
    """What :func:`run_single_device` needs from a device."""

    xp: Any

    def main_stream(self) -> Any: ...
    def new_stream(self) -> Any: ...
    def new_event(self) -> Any: ...
    def launch(self, stream, fn: Callable[[], None]) -> None: ...
    def record(self, event, stream) -> None: ...
    def wait(self, stream, event) -> None: ...
    def finish(self) -> None: ...


class CupyDevice:
    """The current CUDA device: non-blocking streams, timing-free events."""

    def __init__(self) -> None:
        self.xp = cp = _cupy()
        self.main = cp.cuda.get_current_stream()

    def main_stream(self):
        return self.main

    def new_stream(self):
        return self.xp.cuda.Stream(non_blocking=True)

    def new_event(self):
        return self.xp.cuda.Event(disable_timing=True)

    def launch(self, stream, fn: Callable[[], None]) -> None:
        with stream:
            fn()

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait(self, stream, event) -> None:
        stream.wait_event(event)

    def finish(self) -> None:
        self.main.synchronize()


class _HostEvent:
    __slots__ = ("recorded", "fired")

    def __init__(self) -> None:
        self.recorded = self.fired = False


class HostDevice:
    """NumPy stand-in for a GPU. ``seed=None``: work runs when launched. Otherwise streams
    are queues that :meth:`finish` drains in a random interleaving (seeded) that only event
    waits constrain. Either way, waiting on an event not yet recorded raises, as CUDA would
    silently not wait."""

    xp = np

    def __init__(self, seed: int | None = None) -> None:
        self.rng = None if seed is None else random.Random(seed)
        self.streams: list[deque] = []

    def main_stream(self) -> deque:
        return self.new_stream()

    def new_stream(self) -> deque:
        self.streams.append(deque())
        return self.streams[-1]

    def new_event(self) -> _HostEvent:
        return _HostEvent()

    def launch(self, stream: deque, fn: Callable[[], None]) -> None:
        self._put(stream, ("run", fn))

    def record(self, event: _HostEvent, stream: deque) -> None:
        event.recorded = True
        self._put(stream, ("record", event))

    def wait(self, stream: deque, event: _HostEvent) -> None:
        if not event.recorded:
            raise RuntimeError("a stream waits on an event that is not recorded yet")
        self._put(stream, ("wait", event))

    def _put(self, stream: deque, item: tuple) -> None:
        stream.append(item)
        if self.rng is None:
            self._pop(stream)

    def _pop(self, stream: deque) -> None:
        kind, what = stream.popleft()
        if kind == "run":
            what()
        elif kind == "record":
            what.fired = True
        elif not what.fired:
            raise RuntimeError("an immediate stream waits on an event that has not fired")

    def finish(self) -> None:
        while True:
            ready = [s for s in self.streams
                     if s and (s[0][0] != "wait" or s[0][1].fired)]
            if not ready:
                break
            self._pop(self.rng.choice(ready) if self.rng else ready[0])
        if any(self.streams):
            raise RuntimeError("streams wait on each other forever")


def run_single_device(plan: Plan, inputs: Sequence[Any], device: Device | None = None,
                      schedule: Schedule | None = None) -> list[Any]:
    """Run ``plan`` with every rank's buffers on one device; same contract as
    :func:`~taccl_py.runtime.reference.run_reference` (inputs: per-rank 1-D arrays)."""
    device = device or CupyDevice()
    xp = device.xp
    sched = schedule or plan_rounds(plan)
    arrays = [xp.asarray(a).reshape(-1) for a in inputs]
    ce = chunk_elems(sched.coll, arrays)
    reduce = reducer(xp, sched.redop)
    dtype = arrays[0].dtype
    bufs = [{b: xp.zeros(n * ce, dtype=dtype) for b, n in prog.sizes.items()}
            for prog in sched.ranks]
    main = device.main_stream()
    device.launch(main, partial(_place_inputs, sched.ranks, bufs, arrays, ce))
    begin = device.new_event()
    device.record(begin, main)
    streams: dict[tuple[int, int], Any] = {}
    events: dict[tuple[int, int, int], Any] = {}
    signalled = set(sched.deps.values()) | set(sched.senders.values())
    receiver = {s: r for r, s in sched.senders.items()}
    for sid in sched.order:
        rank, tbid, s = sid
        stream = streams.get((rank, tbid))
        if stream is None:
            stream = streams[(rank, tbid)] = device.new_stream()
            device.wait(stream, begin)
        for before in (sched.deps.get(sid), sched.senders.get(sid)):
            if before is not None:
                device.wait(stream, events[before])
        ops = sched.ranks[rank].steps[(tbid, s)]
        target = None
        if ops.send is not None:
            peer, ptb, ps = receiver[sid]
            target = (bufs[peer], sched.ranks[peer].steps[(ptb, ps)].recv)
        device.launch(stream, partial(_run_step, ops, bufs[rank], target, ce, reduce))
        if sid in signalled:
            events[sid] = device.new_event()
            device.record(events[sid], stream)
    for stream in streams.values():
        end = device.new_event()
        device.record(end, stream)
        device.wait(main, end)
    outputs = [xp.empty(len(prog.out_locs) * ce, dtype=dtype) for prog in sched.ranks]
    device.launch(main, partial(_gather_outputs, sched.ranks, bufs, outputs, ce))
    device.finish()
    return outputs


def _place_inputs(programs: list[RankProgram], bufs: list[dict], arrays: list, ce: int) -> None:
    for prog, array in zip(programs, arrays):
        for j, (b, o) in enumerate(prog.in_locs):
            bufs[prog.rank][b][o * ce:(o + 1) * ce] = array[j * ce:(j + 1) * ce]


def _gather_outputs(programs: list[RankProgram], bufs: list[dict], outputs: list,
                    ce: int) -> None:
    for prog, out in zip(programs, outputs):
        for j, (b, o) in enumerate(prog.out_locs):
            out[j * ce:(j + 1) * ce] = bufs[prog.rank][b][o * ce:(o + 1) * ce]


def _run_step(ops: StepOps, bufs: dict, target: tuple[dict, Msg] | None, ce: int,
              reduce: Callable) -> None:
    """A step's local work and packing, then its send: a copy into the receiver's region."""
    for op in ops.local + ops.pack:
        apply_local(op, bufs, ce, reduce)
    if target is not None:
        peer_bufs, m = target
        s = ops.send
        peer_bufs[m.buf][m.off * ce:(m.off + m.cnt) * ce] = \
            bufs[s.buf][s.off * ce:(s.off + s.cnt) * ce]

"""Run plans on GPUs with CuPy: over NCCL (one rank per GPU) or all ranks on one GPU.

CuPy is imported lazily: this module imports without it; :func:`require_cuda` says in one
line which piece of the CUDA stack is missing.

* :class:`NcclPlanExecutor` runs one rank's part of the round schedule of
  :mod:`~taccl_py.runtime.rounds` on its communicator's GPU: per round, pack multi-run
  sends, one NCCL ``groupStart``/``groupEnd`` with the round's receives and sends (raw
  bytes, so any dtype moves), then local copies and reductions (CuPy kernels), all on one
  (the caller's) stream. :meth:`~NcclPlanExecutor.run` returns an :class:`InFlight` whose
  events tell when each round is done.
* :class:`Watchdog` aborts the communicator when a run is not done within a timeout or NCCL
  reports an error, and keeps the error, naming the round and peers it was stuck on.
* :func:`communicator_from_store` makes the communicator with a deadline.
* :func:`run_single_device` runs every rank's buffers on one device, one stream per (rank,
  threadblock); a send is a device-to-device copy into the receiver's region, and events
  order dependencies and send -> receive. The engine takes an injectable :class:`Device`
  (array module, streams, events): :class:`CupyDevice` on a GPU; :class:`HostDevice` runs
  the very same engine with NumPy on CPU, either immediately or with streams interleaved at
  random as far as their events allow.

Results are exact for integer dtypes (reductions are elementwise ufuncs in the buffer dtype).
Without a GPU, :mod:`taccl_py.testing.fake_cuda` stands in for CuPy and NCCL.
"""

from __future__ import annotations

import pickle
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol, cast

import numpy as np

from ..errors import TacclError
from ..plan.model import Plan, has_input, has_output
from .rounds import (
    Msg,
    RankProgram,
    Round,
    Schedule,
    StepOps,
    apply_local,
    chunk_elems,
    plan_rounds,
    reducer,
)

#: NCCL's byte type: plan messages move raw bytes (point-to-point is type-agnostic), so every
#: dtype that the array module can reduce is served; reductions run as array kernels
NCCL_BYTES = "NCCL_UINT8"
#: how often the watchdog looks at collectives in flight (seconds)
POLL_S = 0.01


#: what to install for each missing piece of the CUDA stack
INSTALL = "pip install 'taccl_py[cuda]'"


def require_cuda():
    """CuPy with NVRTC, NCCL and a visible GPU, or :class:`TacclError` in one line saying
    what is missing and what to install.

    >>> require_cuda()  # doctest: +SKIP
    <module 'cupy' ...>
    """
    import warnings

    try:
        import cupy
    except ImportError:
        raise TacclError(f"the CUDA route needs CuPy and NCCL: {INSTALL}") from None
    except Exception as exc:  # noqa: BLE001 - a broken CuPy install: say so in one line
        raise TacclError(
            f"CuPy does not import ({type(exc).__name__}: {_line(exc)}); reinstall: {INSTALL}"
        ) from None
    with warnings.catch_warnings():  # CuPy warns over several lines when NCCL is missing
        warnings.simplefilter("ignore")
        try:
            from cupy.cuda import nccl
        except ImportError:
            nccl = None
    if nccl is None or not getattr(nccl, "available", False):
        raise TacclError(
            "CuPy finds no NCCL library: pip install 'nvidia-nccl-cu12>=2.18.1,<3' "
            "(part of 'taccl_py[cuda]')"
        )
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - DynamicLibNotFoundError / RuntimeError
        raise TacclError(
            f"CuPy finds no NVRTC ({_line(exc)}): pip install "
            f"'nvidia-cuda-nvrtc-cu12>=12.2,<13' (part of 'taccl_py[cuda]')"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError without a driver or GPU
        raise TacclError(
            f"no usable CUDA GPU: {_line(exc)} (an NVIDIA driver and a GPU are needed)"
        ) from None
    if count < 1:
        raise TacclError("no usable CUDA GPU: none is visible (check CUDA_VISIBLE_DEVICES)")
    return cupy


def _line(exc: Exception) -> str:
    """The first line of an exception's message."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class StreamRef:
    """A raw ``cudaStream_t`` in the CUDA stream protocol, for ``Stream.from_external``."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


def external_stream(cp, ptr: int, device: int):
    """A CuPy stream for the raw stream ``ptr`` of GPU ``device`` (which must be current):
    ``Stream.from_external`` on CuPy 14, ``ExternalStream`` before."""
    from_external = getattr(cp.cuda.Stream, "from_external", None)
    if from_external is not None:
        return from_external(StreamRef(ptr))
    return cp.cuda.ExternalStream(ptr, device)


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise TacclError("the CUDA executor needs CuPy: pip install 'taccl_py[cuda]'") from exc
    return cupy


def communicator_from_store(
    store, rank: int, size: int, device: int, timeout: float, key: str = "taccl/nccl"
):
    """An NCCL communicator of ``size`` ranks on GPU ``device``, or :class:`TacclError`
    within ``timeout`` seconds.

    ``store`` is a c10d-style store (``set``, blocking ``get``, ``wait(keys, timedelta)``,
    ``check(keys)``). Every rank first announces itself and its device there, so a missing
    rank or two ranks of one host on one GPU is reported by name before NCCL starts; the
    unique id then travels through the store. CuPy offers only the blocking
    ``ncclCommInitRank``, so it runs on a helper thread that is given up after the deadline.
    """
    import datetime
    import socket
    import threading

    from cupy.cuda import nccl

    cupy = _cupy()
    me = f"{socket.gethostname()}:{device}"
    store.set(f"{key}/dev/{rank}", me.encode())
    keys = [f"{key}/dev/{r}" for r in range(size)]
    try:
        store.wait(keys, datetime.timedelta(seconds=timeout))
    except Exception:  # noqa: BLE001 - the store's own timeout error
        missing = [r for r, k in enumerate(keys) if not store.check([k])]
        raise TacclError(
            f"rank {rank}: NCCL setup: rank(s) {missing} did not join within {timeout:g} s"
        ) from None
    owners: dict[str, int] = {}
    for r, k in enumerate(keys):
        where = store.get(k).decode()
        if where in owners:
            host, dev = where.rsplit(":", 1)
            raise TacclError(
                f"ranks {owners[where]} and {r} both use cuda:{dev} on {host}: "
                f"give each rank its own GPU (torch.cuda.set_device(local_rank) "
                f"and tensors on that device)"
            )
        owners[where] = r
    if rank == 0:
        store.set(f"{key}/uid", pickle.dumps(nccl.get_unique_id()))
    uid = pickle.loads(store.get(f"{key}/uid"))
    made: list = []

    def init() -> None:
        try:
            with cupy.cuda.Device(device):
                made.append(nccl.NcclCommunicator(size, uid, rank))
        except Exception as exc:  # noqa: BLE001 - reported by the waiting thread
            made.append(exc)

    helper = threading.Thread(target=init, name=f"taccl-nccl-init-{rank}", daemon=True)
    helper.start()
    helper.join(timeout)
    if not made:
        raise TacclError(
            f"rank {rank}: NCCL communicator setup did not finish within "
            f"{timeout:g} s (a rank stopped, or the GPUs cannot reach each other)"
        )
    if isinstance(made[0], Exception):
        raise TacclError(f"rank {rank}: NCCL communicator setup failed: {made[0]}")
    return made[0]


# -- NCCL, one rank per GPU -------------------------------------------------------------------


@dataclass
class InFlight:
    """One enqueued run: an event after each round's group and one at the end.

    :meth:`stuck` names the first round whose group has not finished, with its peers."""

    rank: int
    what: str  # e.g. "plan ring-allreduce-4" or "broadcast from rank 0"
    rounds: list[tuple[int, Round, Any]]  # (round index, round, event after its group)
    total: int  # rounds in the plan
    end: Any  # event after the run's last work
    buffers: dict  # temporaries, kept until the run is over
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> bool:
        return bool(self.end.done)

    def stuck(self) -> str:
        for k, rnd, event in self.rounds:
            if not event.done:
                parts = [
                    f"receive of {m.cnt} chunk(s) from rank {m.peer} (channel {m.chan}, "
                    f"message {m.seq})"
                    for m in rnd.recvs[:3]
                ]
                parts += [
                    f"send of {m.cnt} chunk(s) to rank {m.peer} (channel {m.chan}, message {m.seq})"
                    for m in rnd.sends[: 3 - len(parts)]
                ]
                more = len(rnd.recvs) + len(rnd.sends) - len(parts)
                extra = f" (+{more} more)" if more > 0 else ""
                return f"round {k + 1} of {self.total}: {'; '.join(parts)}{extra}"
        return "its work after the last message" if self.rounds else "its NCCL calls"


class NcclPlanExecutor:
    """This rank's compiled part of ``plan`` for ``chunk_elems`` elements of ``dtype`` a chunk.

    ``comm`` is a ``cupy.cuda.nccl.NcclCommunicator`` with ``plan.ngpus`` ranks; all work runs
    on its GPU. Reusable: :meth:`run` may be called many times.
    """

    def __init__(
        self,
        plan: Plan,
        comm,
        rank: int,
        chunk_elems: int,
        dtype,
        schedule: Schedule | None = None,
        redop: str | None = None,
    ) -> None:
        if comm.size() != plan.ngpus:
            raise TacclError(
                f"plan {plan.name} needs {plan.ngpus} NCCL ranks, the "
                f"communicator has {comm.size()}"
            )
        self.cp = _cupy()
        from cupy.cuda import nccl

        self.nccl, self.bytes_type = nccl, getattr(nccl, NCCL_BYTES)
        self.comm, self.rank, self.ce = comm, rank, int(chunk_elems)
        self.device = comm.device_id()
        self.dtype = np.dtype(dtype)
        self.plan_name = plan.name
        sched = schedule or plan_rounds(plan)
        self.coll = sched.coll
        self.reduce = reducer(self.cp, redop or sched.redop)
        self.program: RankProgram = sched.ranks[rank]
        self.out_buf = self.program.output_buffer
        self.copy_input = self.coll.inplace or "i" in self.program.written
        #: whether this rank takes input / gives output (a rooted plan's non-root may not)
        self.has_input = has_input(self.coll, rank)
        self.has_output = has_output(self.coll, rank)

    def run(self, sendbuf: Any | None, recvbuf: Any | None, stream=None) -> InFlight:
        """Enqueue the plan on ``stream`` (default: this thread's current stream on the
        communicator's GPU): ``sendbuf`` holds the input chunks, ``recvbuf`` gets the output
        chunks (contiguous arrays of ``dtype`` on that GPU; they may alias for in-place
        plans). Returns the run's :class:`InFlight` (its events tell when it is done).

        Rooted plans: a rank without input (a Broadcast's or Scatter's non-root) may pass
        ``sendbuf=None``, one without output (a Reduce's or Gather's non-root)
        ``recvbuf=None``; a ``recvbuf`` given there is left as it was. Buffers that the
        plan gives this rank 0 chunks of are never touched."""
        cp, ce, prog = self.cp, self.ce, self.program
        with cp.cuda.Device(self.device):
            stream = stream if stream is not None else cp.cuda.get_current_stream()
            marks: list[tuple[int, Round, Any]] = []
            with stream:
                bufs = self._setup(sendbuf, recvbuf)
                for k, rnd in enumerate(prog.rounds):
                    for op in rnd.pack:
                        apply_local(op, bufs, ce, self.reduce)
                    if rnd.sends or rnd.recvs:
                        self._group(bufs, rnd, stream)
                        event = cp.cuda.Event(disable_timing=True)
                        event.record(stream)
                        marks.append((k, rnd, event))
                    for op in rnd.local:
                        apply_local(op, bufs, ce, self.reduce)
                if self.out_buf is None and recvbuf is not None and self.has_output:
                    recv = recvbuf.reshape(-1)
                    for j, (b, o) in enumerate(prog.out_locs):
                        recv[j * ce : (j + 1) * ce] = bufs[b][o * ce : (o + 1) * ce]
                end = cp.cuda.Event(disable_timing=True)
                end.record(stream)
        return InFlight(self.rank, f"plan {self.plan_name}", marks, len(prog.rounds), end, bufs)

    def _group(self, bufs, rnd: Round, stream) -> None:
        nccl, size = self.nccl, self.ce * self.dtype.itemsize
        nccl.groupStart()
        try:
            for m in rnd.recvs:
                self.comm.recv(
                    self._ptr(bufs, m), m.cnt * size, self.bytes_type, m.peer, stream.ptr
                )
            for m in rnd.sends:
                self.comm.send(
                    self._ptr(bufs, m), m.cnt * size, self.bytes_type, m.peer, stream.ptr
                )
        finally:
            nccl.groupEnd()

    def _ptr(self, bufs, m: Msg) -> int:
        return bufs[m.buf].data.ptr + m.off * self.ce * self.dtype.itemsize

    def _setup(self, sendbuf, recvbuf) -> dict[str, Any]:
        cp, ce, coll, prog = self.cp, self.ce, self.coll, self.program
        for name, buf, chunks, needed in (
            ("send", sendbuf, coll.i_chunks, self.has_input),
            ("receive", recvbuf, coll.o_chunks, self.has_output),
        ):
            if buf is None:
                if needed:
                    raise TacclError(
                        f"rank {self.rank}: {coll.label} needs this rank's {name} buffer"
                    )
                continue
            if buf.dtype != self.dtype or buf.size != chunks * ce or not buf.flags.c_contiguous:
                raise TacclError(
                    f"rank {self.rank}: {name} buffer must be a contiguous "
                    f"{self.dtype} array of {chunks * ce} elements, got "
                    f"{buf.dtype} x {buf.size}"
                )
            if buf.device.id != self.device:
                raise TacclError(
                    f"rank {self.rank}: {name} buffer is on cuda:{buf.device.id}, "
                    f"the NCCL communicator on cuda:{self.device}"
                )
        send = None if sendbuf is None or not self.has_input else sendbuf.reshape(-1)
        recv = None if recvbuf is None or not self.has_output else recvbuf.reshape(-1)
        bufs: dict[str, Any] = {}
        if self.out_buf and prog.sizes.get(self.out_buf, 0):
            bufs[self.out_buf] = (
                recv if recv is not None else cp.empty(prog.sizes[self.out_buf] * ce, self.dtype)
            )
        for name, chunks in prog.sizes.items():
            if name in bufs or chunks == 0:
                continue
            bufs[name] = (
                send
                if name == "i" and send is not None and not self.copy_input
                else cp.empty(chunks * ce, dtype=self.dtype)
            )
        if self.copy_input and send is not None:
            for j, (b, o) in enumerate(prog.in_locs):
                if b not in bufs:  # a buffer this rank's plan has no chunks of
                    continue
                target, source = bufs[b][o * ce : (o + 1) * ce], send[j * ce : (j + 1) * ce]
                if target.data.ptr != source.data.ptr:  # in place: already there
                    target[...] = source
        return bufs


class Watchdog:
    """Watches one communicator's runs in flight. A run not done within ``timeout`` seconds,
    or an asynchronous NCCL error, aborts the communicator (``ncclCommAbort``, so that the
    GPU work of every collective on it ends) and keeps a :class:`TacclError` naming the rank,
    the plan and the round and peers it was stuck on; :meth:`check` raises it from then on.
    """

    def __init__(self, comm, rank: int, timeout: float) -> None:
        import threading

        self.comm, self.rank, self.timeout = comm, rank, timeout
        self.error: TacclError | None = None
        self._runs: deque[InFlight] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(
            target=self._loop, name=f"taccl-watchdog-{rank}", daemon=True
        )
        self._thread.start()

    def watch(self, run: InFlight) -> None:
        """Start watching ``run`` (raises first if the communicator already failed)."""
        self.check()
        with self._lock:
            self._runs.append(run)
        self._wake.set()

    def check(self) -> None:
        """Raise the failure, if any."""
        if self.error is not None:
            raise self.error

    def wait(self, run: InFlight) -> None:
        """Block until ``run`` is done, or raise its failure (within the timeout)."""
        while not run.done:
            self.check()
            time.sleep(POLL_S)
        self.check()

    def close(self) -> None:
        """Stop watching (the communicator stays as it is)."""
        self._stop = True
        self._wake.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop and self.error is None:
            with self._lock:
                while self._runs and self._runs[0].done:
                    self._runs.popleft()
                oldest = self._runs[0] if self._runs else None
            if oldest is None:
                self._wake.wait()
                self._wake.clear()
                continue
            why = self._async_error()
            if why is None and time.monotonic() - oldest.started > self.timeout:
                why = f"not done within {self.timeout:g} s"
            if why is not None:
                self._fail(oldest, why)
            else:
                time.sleep(POLL_S)

    def _async_error(self) -> str | None:
        try:
            self.comm.check_async_error()
        except Exception as exc:  # noqa: BLE001 - NCCL's asynchronous error
            return f"NCCL error {exc}"
        return None

    def abort(self, why: str) -> None:
        """Fail now: abort the communicator and keep ``why`` as the error."""
        if self.error is None:
            self.error = TacclError(f"rank {self.rank}: {why}; the NCCL communicator was aborted")
            try:
                self.comm.abort()
            except Exception:  # noqa: BLE001 - aborting is best effort; the error stands
                pass
        self._wake.set()

    def _fail(self, run: InFlight, why: str) -> None:
        self.abort(f"{run.what} {why}; stuck at {run.stuck()}")


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
            ready = [s for s in self.streams if s and (s[0][0] != "wait" or s[0][1].fired)]
            if not ready:
                break
            self._pop(self.rng.choice(ready) if self.rng else ready[0])
        if any(self.streams):
            raise RuntimeError("streams wait on each other forever")


def run_single_device(
    plan: Plan,
    inputs: Sequence[Any],
    device: Device | None = None,
    schedule: Schedule | None = None,
) -> list[Any]:
    """Run ``plan`` with every rank's buffers on one device; same contract as
    :func:`~taccl_py.runtime.reference.run_reference` (inputs: per-rank 1-D arrays; a
    rooted collective's rank without output gets an empty array).

    >>> from taccl_py.testing.plans import direct_allgather
    >>> inputs = [np.array([r, r], dtype=np.int32) for r in range(3)]
    >>> run_single_device(direct_allgather(3), inputs, HostDevice(seed=1))[2].tolist()
    [0, 0, 1, 1, 2, 2]
    >>> run_single_device(direct_allgather(3), inputs)  # doctest: +SKIP
    [array([0, 0, 1, 1, 2, 2], dtype=int32), ...]
    """
    device = device or CupyDevice()
    xp = device.xp
    sched = schedule or plan_rounds(plan)
    arrays = [xp.asarray(a).reshape(-1) for a in inputs]
    ce = chunk_elems(sched.coll, arrays)
    reduce = reducer(xp, sched.redop)
    dtype = arrays[0].dtype
    bufs = [
        {b: xp.zeros(n * ce, dtype=dtype) for b, n in prog.sizes.items()} for prog in sched.ranks
    ]
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
        target: tuple[dict[str, Any], Msg] | None = None
        if ops.send is not None:
            peer, ptb, ps = receiver[sid]
            # the step that receives this send has a receive
            target = (bufs[peer], cast(Msg, sched.ranks[peer].steps[(ptb, ps)].recv))
        device.launch(stream, partial(_run_step, ops, bufs[rank], target, ce, reduce))
        if sid in signalled:
            events[sid] = device.new_event()
            device.record(events[sid], stream)
    for stream in streams.values():
        end = device.new_event()
        device.record(end, stream)
        device.wait(main, end)
    given = [has_output(sched.coll, prog.rank) for prog in sched.ranks]
    outputs = [
        xp.empty(len(prog.out_locs) * ce if out else 0, dtype=dtype)
        for prog, out in zip(sched.ranks, given)
    ]
    device.launch(main, partial(_gather_outputs, sched.ranks, bufs, outputs, ce))
    device.finish()
    return outputs


def _place_inputs(programs: list[RankProgram], bufs: list[dict], arrays: list, ce: int) -> None:
    for prog, array in zip(programs, arrays):
        for j, (b, o) in enumerate(prog.in_locs):
            if prog.sizes[b]:  # else a rooted plan's rank that has no input
                bufs[prog.rank][b][o * ce : (o + 1) * ce] = array[j * ce : (j + 1) * ce]


def _gather_outputs(programs: list[RankProgram], bufs: list[dict], outputs: list, ce: int) -> None:
    for prog, out in zip(programs, outputs):
        if not out.size:  # a rooted plan's rank that has no output
            continue
        for j, (b, o) in enumerate(prog.out_locs):
            out[j * ce : (j + 1) * ce] = bufs[prog.rank][b][o * ce : (o + 1) * ce]


def _run_step(
    ops: StepOps, bufs: dict, target: tuple[dict, Msg] | None, ce: int, reduce: Callable
) -> None:
    """A step's local work and packing, then its send: a copy into the receiver's region."""
    for op in ops.local + ops.pack:
        apply_local(op, bufs, ce, reduce)
    if target is not None:
        peer_bufs, m = target
        s = cast(Msg, ops.send)  # a step with a target sends
        peer_bufs[m.buf][m.off * ce : (m.off + m.cnt) * ce] = bufs[s.buf][
            s.off * ce : (s.off + s.cnt) * ce
        ]

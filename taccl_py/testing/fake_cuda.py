"""A pure-NumPy fake of the CuPy 14 / NCCL subset a plan executor uses, for tests on CPU.

``FakeCuda(devices=4)`` builds a module usable as ``cupy`` (with ``cupy.cuda``,
``cupy.cuda.nccl``, ``cupy.cuda.runtime``); ranks are Python threads.

Model:

* Memory: every allocation is a NumPy byte buffer registered by address range with the device
  that was current when it was made (``empty`` fills it with seeded garbage, as ``cudaMalloc``
  does not zero). ``cupy.ndarray`` wraps a NumPy view and is no NumPy subclass, so anything not
  implemented raises. :meth:`FakeCuda.adopt` registers foreign NumPy memory as device memory.
* Devices and current streams are per thread, as in CUDA and CuPy: a new thread starts on
  device 0 and its null stream.
* Every data-touching operation is an op enqueued on a stream; one engine under one lock runs
  each stream's head op as soon as it is ready, after every enqueue. Streams run concurrently;
  events, the legacy null stream (which waits for and blocks the device's blocking streams), and
  NCCL's serialisation of one communicator's launches order them. A kernel touching an array of
  another device raises at once.
* NCCL: point-to-point messages match FIFO per (communicator, sender, receiver) in posting
  order; a send's bytes are taken when it starts and it completes when the matching receive has
  started (rendezvous, so send-then-receive without a group deadlocks, as in NCCL). A group is
  one op on all its streams of a device (NCCL joins them). Collectives match by call order.
  Pointers are checked against the allocations (NCCL does not check by default).
* Host waits (``synchronize``, ``get``, communicator init) raise :class:`FakeHang` once nothing
  in the fake has changed for ``hang_timeout`` seconds, naming what each blocked stream waits
  for: a dead peer or a deadlock fails the test instead of hanging it.

Limits: ops run instantly under one global lock (no timing, no data races between streams that
touch the same memory unordered); only basic indexing; no per-thread default stream, memory
pools, graphs, peer access or ``initAll``; a host thread busy for ``hang_timeout`` without
touching the fake looks like a hang to its waiting peers.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import operator
import sys
import threading
import time
import types
import warnings
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Self, TypeVar, cast

import numpy as np

_T = TypeVar("_T")
#: ``casting`` values of ``copyto`` (those every NumPy version takes)
_Casting = Literal["no", "equiv", "safe", "same_kind", "unsafe"]
_DTYPES = frozenset(
    np.dtype(n)
    for n in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
)
_ELEMENTWISE = (
    "add",
    "subtract",
    "multiply",
    "divide",
    "true_divide",
    "maximum",
    "minimum",
    "logical_and",
    "logical_or",
    "bitwise_and",
    "bitwise_or",
    "bitwise_xor",
    "left_shift",
    "right_shift",
    "equal",
    "not_equal",
    "isnan",
    "where",
)
_NCCL_CONSTANTS = {
    "NCCL_SUM": 0,
    "NCCL_PROD": 1,
    "NCCL_MAX": 2,
    "NCCL_MIN": 3,
    "NCCL_AVG": 4,
    "NCCL_INT8": 0,
    "NCCL_CHAR": 0,
    "NCCL_UINT8": 1,
    "NCCL_INT32": 2,
    "NCCL_INT": 2,
    "NCCL_UINT32": 3,
    "NCCL_INT64": 4,
    "NCCL_UINT64": 5,
    "NCCL_FLOAT16": 6,
    "NCCL_HALF": 6,
    "NCCL_FLOAT32": 7,
    "NCCL_FLOAT": 7,
    "NCCL_FLOAT64": 8,
    "NCCL_DOUBLE": 8,
    "NCCL_BFLOAT16": 9,
}
_BF16 = 9
#: NCCL data type -> NumPy dtype of its elements (bfloat16 is kept as its uint16 bits)
_NCCL_TYPES = {
    code: np.dtype(name)
    for code, name in enumerate(
        (
            "int8",
            "uint8",
            "int32",
            "uint32",
            "int64",
            "uint64",
            "float16",
            "float32",
            "float64",
            "uint16",
        )
    )
}
_NCCL_STATUS = {
    1: ("NCCL_ERROR_UNHANDLED_CUDA_ERROR", "unhandled cuda error"),
    4: ("NCCL_ERROR_INVALID_ARGUMENT", "invalid argument"),
    5: ("NCCL_ERROR_INVALID_USAGE", "invalid usage"),
}
_CUDA_ERRORS = {
    101: ("cudaErrorInvalidDevice", "invalid device ordinal"),
    400: ("cudaErrorInvalidResourceHandle", "invalid resource handle"),
    600: ("cudaErrorNotReady", "device not ready"),
}
_C_RANGES = {
    "int": (-(2**31), 2**31 - 1),
    "intptr_t": (-(2**63), 2**63 - 1),
    "size_t": (0, 2**64 - 1),
}


class FakeHang(RuntimeError):
    """A host wait that real CUDA would never return from (deadlock, dead peer)."""


class _StatusError(RuntimeError):
    _names: dict[int, tuple[str, str]]

    def __init__(self, status: int, detail: str = "") -> None:
        self.status = status
        name, text = self._names[status]
        super().__init__(f"{name}: {text}" + (f" ({detail})" if detail else ""))


class NcclError(_StatusError):
    """``cupy.cuda.nccl.NcclError``: ``status`` is the ``ncclResult_t``."""

    _names = _NCCL_STATUS


class CUDARuntimeError(_StatusError):
    """``cupy.cuda.runtime.CUDARuntimeError``: ``status`` is the ``cudaError_t``."""

    _names = _CUDA_ERRORS


@dataclass(frozen=True)
class Call:
    """One logged NCCL call, kernel launch, event operation or host synchronisation."""

    kind: str
    thread: str
    device: int
    stream: int | None
    rank: int | None = None
    peer: int | None = None
    nbytes: int | None = None


@dataclass(frozen=True)
class MemoryPointer:
    """What ``ndarray.data`` gives: the address of the first element."""

    ptr: int
    device_id: int

    def __int__(self) -> int:
        return self.ptr


def _c(value: Any, ctype: str) -> int:
    """Convert an argument as Cython converts to a C integer, but reject ``bool`` too."""
    if isinstance(value, (bool, np.bool_)) or not hasattr(type(value), "__index__"):
        raise TypeError(f"an integer is required for a C {ctype}, got {type(value).__name__}")
    value = operator.index(value)
    lo, hi = _C_RANGES[ctype]
    if not lo <= value <= hi:
        raise OverflowError(
            f"can't convert {'negative ' if value < 0 else ''}value {value} to {ctype}"
        )
    return value


def _dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise TypeError(f"fake cupy: dtype {dt} is not supported")
    return dt


def _basic(key: Any) -> tuple:
    """``key`` as a tuple of basic indices ending in ``...`` (so the result is a view)."""
    key = key if isinstance(key, tuple) else (key,)
    for k in key:
        if isinstance(k, (bool, np.bool_)) or not (
            k is None or k is Ellipsis or isinstance(k, (int, np.integer, slice))
        ):
            raise TypeError(f"fake cupy: only basic indexing is supported, got {k!r}")
    return key if any(k is Ellipsis for k in key) else key + (Ellipsis,)


def _reduce(datas: list[np.ndarray], op: int, dt: int) -> np.ndarray:
    """NCCL reduction ``op`` of equally long arrays, elementwise in the data type."""
    if dt == _BF16:
        wide = _reduce([(d.astype(np.uint32) << 16).view(np.float32) for d in datas], op, 7)
        u = wide.view(np.uint32).astype(np.uint64)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)  # round to even
    out = functools.reduce((np.add, np.multiply, np.maximum, np.minimum, np.add)[op], datas)
    if op == 4:  # average: floats divide, integers truncate towards zero
        n = len(datas)
        out = (
            (out / n).astype(out.dtype)
            if out.dtype.kind == "f"
            else out // n + ((out % n != 0) & (out < 0))
        )
    return out


class _Queue:
    """One CUDA stream of one device: its ops run in order; ``error`` is sticky."""

    def __init__(self, device: int, ptr: int, kind: str) -> None:
        self.device, self.ptr, self.kind = device, ptr, kind  # kind: null/blocking/nonblocking
        self.ops: deque[_Op] = deque()
        self.tail: _Op | None = None
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"device {self.device} stream {self.ptr:#x}"


class _Op:
    """Work on one or more streams: starts when at the head of all of them and its ``deps``
    are done (``start`` runs then), finishes when all its NCCL ``parts`` are done."""

    def __init__(
        self,
        what: str,
        queues: list[_Queue],
        start: Callable[[], Any] | None = None,
        parts: tuple = (),
        deps: tuple = (),
    ) -> None:
        self.what, self.queues, self.start, self.parts = what, queues, start, parts
        self.deps = list(deps)
        self.started = self.done = False
        self.finished_at = 0.0  # time.perf_counter() when done


class _Clique:
    """The shared state of the ranks of one NCCL unique id."""

    def __init__(self, uid: tuple, n: int) -> None:
        self.n, self.name = n, bytes(b & 0xFF for b in uid[:3]).hex()
        self.members: dict[int, _NcclCommunicator] = {}
        self.error: tuple[int, str] | None = None
        self.p2p: dict[tuple[int, int, int], dict[str, _P2P]] = {}
        self.colls: dict[int, dict[int, _Coll]] = {}


class _Part:
    """One NCCL call inside a (possibly one-call) group op."""

    def __init__(self, comm: _NcclCommunicator, what: str) -> None:
        self.comm, self.what, self.fin = comm, what, False
        self.op: _Op | None = None

    def done(self) -> bool:
        return self.fin or self.comm._closed == "aborted"

    def start(self) -> None:
        """Run when its group op starts (on every stream it is enqueued on)."""
        raise NotImplementedError

    def why(self) -> str:
        """What it waits for, when it is not done."""
        raise NotImplementedError

    def fail(self, err: NcclError) -> None:
        assert self.op is not None, "a part fails once its group op has started"
        self.fin = True
        self.comm._async_error = self.comm._async_error or err
        for q in self.op.queues:
            q.error = q.error or err


class _P2P(_Part):
    def __init__(
        self, comm: _NcclCommunicator, kind: str, peer: int, seq: int, view: np.ndarray
    ) -> None:
        super().__init__(
            comm,
            f"{kind} of {view.size} B {('from', 'to')[kind == 'send']} "
            f"rank {peer} of comm {comm._clique.name}",
        )
        self.kind, self.view = kind, view
        self.payload: np.ndarray | None = None
        me = comm._rank
        self.key = (me, peer, seq) if kind == "send" else (peer, me, seq)

    def start(self) -> None:
        if self.done():
            return
        if self.kind == "send":
            self.payload = self.view.copy()
        cl = self.comm._clique
        pair = cl.p2p.setdefault(self.key, {})
        pair[self.kind] = self
        if len(pair) == 2:
            del cl.p2p[self.key]
            send, recv = pair["send"], pair["recv"]
            send.fin = True
            if send.view.size != recv.view.size:
                recv.fail(
                    NcclError(5, f"message truncated: {recv.what} but it sent {send.view.size} B")
                )
            else:
                recv.view[...] = send.payload
                recv.fin = True

    def why(self) -> str:
        return f"{self.what} never {'received' if self.kind == 'send' else 'posted'}"


class _Coll(_Part):
    def __init__(
        self,
        comm: _NcclCommunicator,
        kind: str,
        sig: tuple,
        send: np.ndarray | None,
        recv: np.ndarray | None,
    ) -> None:
        self.k = comm._ncoll
        comm._ncoll += 1
        super().__init__(comm, f"{kind} #{self.k} of comm {comm._clique.name}")
        self.kind, self.sig, self.send, self.recv = kind, sig, send, recv
        self.data: np.ndarray | None = None

    def start(self) -> None:
        if self.done():
            return
        cl, (_, count, dt, op, root) = self.comm._clique, self.sig
        slot = cl.colls.setdefault(self.k, {})
        other = next(iter(slot.values()), None)
        if other is not None and other.sig != self.sig:
            return self.fail(
                NcclError(
                    5,
                    f"{self.what}: rank {self.comm._rank} calls "
                    f"{self.sig}, rank {other.comm._rank} {other.sig}",
                )
            )
        if self.send is not None:
            self.data = self.send.view(_NCCL_TYPES[dt]).copy()
        slot[self.comm._rank] = self
        if len(slot) < cl.n:
            return
        del cl.colls[self.k]
        parts = [slot[r] for r in range(cl.n)]
        # what each rank gets; data: what each rank sent (the root's only, for broadcast)
        outs: list[np.ndarray | None]
        if self.kind == "broadcast":
            outs = [parts[root].data] * cl.n
        else:
            data = [cast(np.ndarray, p.data) for p in parts]
            if self.kind == "allGather":
                outs = [np.concatenate(data)] * cl.n
            else:
                red = _reduce(data, op, dt)
                by_kind: dict[str, list[np.ndarray | None]] = {
                    "allReduce": [red] * cl.n,
                    "reduce": [red if r == root else None for r in range(cl.n)],
                    "reduceScatter": [red[r * count : (r + 1) * count] for r in range(cl.n)],
                }
                outs = by_kind[self.kind]
        for p, out in zip(parts, outs):
            if out is not None:  # a rank that gets data gave a receive buffer
                cast(np.ndarray, p.recv).view(_NCCL_TYPES[dt])[...] = out
            p.fin = True

    def why(self) -> str:
        slot = self.comm._clique.colls.get(self.k, {})
        return (
            f"{self.what} waits for ranks "
            f"{[r for r in range(self.comm._clique.n) if r not in slot]}"
        )


def _start_parts(parts: tuple[_Part, ...]) -> None:
    """Start each NCCL call of a group op, in order."""
    for p in parts:
        p.start()


def _inplace(name: str) -> Callable[[_NDArray, Any], _NDArray]:
    """An in-place operator that launches the ufunc ``name`` with ``out=self``."""

    def op(self: _NDArray, other: Any) -> _NDArray:
        getattr(self._fc.cupy, name)(self, other, out=self)
        return self

    return op


class _NDArray:
    """``cupy.ndarray``: a NumPy view on one fake device."""

    __slots__ = ("_a", "_dev")
    _fc: FakeCuda

    def __init__(self, a: np.ndarray, dev: int) -> None:
        self._a, self._dev = a, dev

    shape = property(lambda self: self._a.shape)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    dtype = property(lambda self: self._a.dtype)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: self._view(self._a.T))
    flags = property(
        lambda self: types.SimpleNamespace(
            c_contiguous=self._a.flags.c_contiguous,
            f_contiguous=self._a.flags.f_contiguous,
            owndata=False,
        )
    )
    data = property(lambda self: MemoryPointer(self._a.ctypes.data, self._dev))
    device = property(lambda self: self._fc.cupy.cuda.Device(self._dev))

    def _view(self, a: np.ndarray) -> _NDArray:
        return type(self)(a, self._dev)

    def __len__(self) -> int:
        return len(self._a)

    def __getitem__(self, key: Any) -> _NDArray:
        return self._view(self._a[_basic(key)])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._fc._copyto(self[key], value, "unsafe")

    def reshape(self, *shape: Any) -> _NDArray:
        r = self._a.reshape(*shape)
        if r.size == 0 or np.may_share_memory(r, self._a):
            return self._view(r)
        return self.copy().reshape(*shape)  # as CuPy: a copy when no view fits

    def ravel(self) -> _NDArray:
        return self.reshape(-1)

    def view(self, dtype: Any) -> _NDArray:
        return self._view(self._a.view(_dtype(dtype)))

    def astype(self, dtype: Any, copy: bool = True) -> _NDArray:
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        out = self._fc._empty(self.shape, dtype)
        self._fc._copyto(out, self, "unsafe")
        return out

    def copy(self) -> _NDArray:
        return self.astype(self.dtype)

    def fill(self, value: Any) -> None:
        self._fc._launch("fill", [self], lambda: self._a.fill(value))

    def get(self, stream: Any = None) -> np.ndarray:
        """Synchronise ``stream`` (default: the current stream of the array's device), then
        return a NumPy copy."""
        return self._fc._get(self, stream)

    @property
    def __cuda_array_interface__(self) -> dict:
        ptr = self._fc._get_current_stream().ptr
        return {
            "version": 3,
            "data": (self.data.ptr, False),
            "shape": self.shape,
            "strides": None if self._a.flags.c_contiguous else self.strides,
            "typestr": self.dtype.str,
            "descr": [("", self.dtype.str)],
            "stream": ptr or 1,
        }  # 1: the legacy default stream

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use "
            "`.get()` to construct a NumPy array explicitly."
        )

    def __bool__(self) -> bool:
        if self.size != 1:
            raise ValueError(
                "The truth value of an array with more than one element is "
                "ambiguous. Use a.any() or a.all()"
            )
        return bool(self.get())  # a host synchronisation, as in CuPy

    def __eq__(self, other: object) -> _NDArray:  # type: ignore[override]
        return self._fc.cupy.equal(self, other)

    def __ne__(self, other: object) -> _NDArray:  # type: ignore[override]
        return self._fc.cupy.not_equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<fake cupy.ndarray {self.shape} {self.dtype} on device {self._dev}>"

    __iadd__, __isub__ = _inplace("add"), _inplace("subtract")
    __imul__, __itruediv__ = _inplace("multiply"), _inplace("true_divide")


class _Device:
    """``cupy.cuda.Device``."""

    _fc: FakeCuda

    def __init__(self, device: Any = None) -> None:
        self.id = self._fc._state().device if device is None else int(device)
        self._stack: list[int] = []

    def __int__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Device) and other.id == self.id

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"

    def __enter__(self) -> Self:
        previous = self._fc._state().device
        self.use()
        self._stack.append(previous)
        return self

    def __exit__(self, *exc: object) -> None:
        self._fc._set_device(self._stack.pop())

    def use(self) -> None:
        self._fc._set_device(self.id)

    def synchronize(self) -> None:
        """Wait for all work on every stream of this device (from any thread)."""
        fc = self._fc
        with fc._cv:
            fc._sync(
                [fc._null[self.id]] + [q for q in fc._queues.values() if q.device == self.id],
                self.id,
                None,
            )


class _Stream:
    """``cupy.cuda.Stream``; ``Stream.null`` (``ptr`` 0, ``device_id`` -1) is the legacy
    default stream of whichever device is current."""

    _fc: FakeCuda
    null: _Stream
    _foreign: Any  # what from_external wrapped (kept alive with the stream)

    def __init__(
        self,
        null: bool = False,
        non_blocking: bool = False,
        ptds: bool = False,
        priority: int | None = None,
    ) -> None:
        if ptds:
            raise NotImplementedError("fake cupy: no per-thread default stream")
        if null:
            self.ptr, self.device_id = 0, -1
        else:
            self.device_id = self._fc._state().device
            self.ptr = self._fc._new_queue(self.device_id, non_blocking)

    @classmethod
    def from_external(cls, obj: Any) -> _Stream:
        """Wrap an object with ``__cuda_stream__`` (returning ``(0, ptr)``) on the current
        device; the pointer must be one of :meth:`FakeCuda.external_stream` (or 0)."""
        try:
            proto = obj.__cuda_stream__
        except AttributeError:
            raise AttributeError(
                f"Object of type {type(obj).__name__} does not implement the "
                "CUDA stream protocol (__cuda_stream__ method)"
            ) from None
        result = proto()
        if not (
            isinstance(result, tuple)
            and len(result) == 2
            and all(isinstance(x, int) for x in result)
        ):
            raise TypeError(f"__cuda_stream__() must return (int, int), got {result!r}")
        if result[0] != 0:
            raise ValueError(f"__cuda_stream__() returned unsupported version {result[0]}")
        stream = cls.__new__(cls)
        stream.ptr, stream.device_id = result[1], cls._fc._state().device
        stream._foreign = obj
        stream._check()
        return stream

    def _q(self) -> _Queue:
        return self._fc._queue_of(self, self._fc._state().device)

    def _check(self) -> int:
        dev, q = self._fc._state().device, self._q()
        if q.device != dev or self.device_id not in (-1, dev):
            raise RuntimeError(
                f"The device that the stream is created on ({q.device}) does "
                f"not match with the current device ({dev})"
            )
        return dev

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Stream) and other.ptr == self.ptr

    def __hash__(self) -> int:
        return self.ptr

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.ptr} (device {self.device_id})>"

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.ptr

    def __enter__(self) -> Self:
        st, dev = self._fc._state(), self._check()
        st.streams[dev].append(self)
        st.stream_devices.append(dev)
        return self

    def __exit__(self, *exc: object) -> None:
        st = self._fc._state()
        st.streams[st.stream_devices.pop()].pop()

    def use(self) -> _Stream:
        self._fc._state().streams[self._check()][-1] = self
        return self

    @property
    def done(self) -> bool:
        with self._fc._cv:
            tail = self._q().tail
            return tail is None or tail.done

    def synchronize(self) -> None:
        q = self._q()
        self._fc._sync([q], q.device, q.ptr)

    def record(self, event: Any = None) -> Any:
        event = event if event is not None else self._fc.cupy.cuda.Event()
        event.record(self)
        return event

    def wait_event(self, event: _Event) -> None:
        fc, q = self._fc, self._q()
        with fc._cv:
            fc._log("wait_event", q.device, q.ptr)
            if event._op is not None:
                fc._push(_Op(f"wait for event {event.ptr:#x}", [q], deps=(event._op,)))


class _ExternalStream(_Stream):
    """``cupy.cuda.ExternalStream`` (deprecated in CuPy 14)."""

    def __init__(self, ptr: int, device_id: int = -1) -> None:
        warnings.warn(
            "ExternalStream is deprecated. Use Stream.from_external() instead to "
            "interoperate with external streams that implement the CUDA stream "
            "protocol.",
            DeprecationWarning,
            stacklevel=2,
        )
        self.ptr, self.device_id = _c(ptr, "intptr_t"), device_id
        q = self._q()
        if device_id not in (-1, q.device):
            raise ValueError(f"stream {self.ptr:#x} is on device {q.device}, not {device_id}")


class _Event:
    """``cupy.cuda.Event``, made on the current device."""

    _fc: FakeCuda

    def __init__(
        self, block: bool = False, disable_timing: bool = False, interprocess: bool = False
    ) -> None:
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self.ptr, self._device = next(self._fc._ptrs), self._fc._state().device
        self._op: _Op | None = None
        self._timing = not disable_timing

    def record(self, stream: _Stream | None = None) -> None:
        fc = self._fc
        q = (stream or fc._get_current_stream())._q()
        if q.device != self._device:
            raise CUDARuntimeError(400, f"event of device {self._device} recorded on {q}")
        with fc._cv:
            fc._log("record", q.device, q.ptr)
            self._op = fc._push(_Op(f"event {self.ptr:#x} record", [q]))

    @property
    def done(self) -> bool:
        with self._fc._cv:
            return self._op is None or self._op.done

    def synchronize(self) -> None:
        op = self._op
        self._fc._log("synchronize", self._device, None)
        self._fc._wait(lambda: op is None or op.done)


class _NcclCommunicator:
    """``cupy.cuda.nccl.NcclCommunicator``: one rank, bound to the current device."""

    _fc: FakeCuda

    def __init__(
        self,
        ndev: int,
        commId: bytes,
        rank: int,  # CuPy 14's names
        config: Any = None,
    ) -> None:
        ndev, rank = _c(ndev, "int"), _c(rank, "int")
        if not isinstance(commId, bytes):
            raise TypeError(
                f"Argument 'commId' has incorrect type (expected bytes, got "
                f"{type(commId).__name__})"
            )
        if len(commId) != 128:
            raise AssertionError(f"commId has {len(commId)} entries, not 128")
        self._rank, self._device = rank, self._fc._state().device
        self._closed: str | None = None  # or "aborted", "destroyed"
        self._async_error: NcclError | None = None
        self._last: _Op | None = None  # NCCL serialises a communicator's launches
        self._ncoll = 0
        self._seq: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._clique = self._fc._join(self, ndev, tuple(commId))

    def _live(self) -> None:
        if self._closed:
            raise NcclError(4, f"communicator {self._closed}")

    def device_id(self) -> int:
        self._live()
        return self._device

    def rank_id(self) -> int:
        self._live()
        return self._rank

    def size(self) -> int:
        self._live()
        return self._clique.n

    def destroy(self) -> None:
        """Wait for this rank's pending operations (as ncclCommFinalize), then close."""
        with self._fc._cv:
            if not self._closed:
                last = self._last
                self._fc._wait(lambda: last is None or last.done)
                self._closed = "destroyed"

    def abort(self) -> None:
        """Close at once: pending operations of this rank are dropped, their streams go on."""
        fc = self._fc
        with fc._cv:
            if self._closed:
                return
            self._closed, cl = "aborted", self._clique
            for key in [
                k for k, pair in cl.p2p.items() if any(p.comm is self for p in pair.values())
            ]:
                del cl.p2p[key]
            for slot in cl.colls.values():
                slot.pop(self._rank, None)
            fc._changed()

    def check_async_error(self) -> None:
        self._live()
        if self._async_error is not None:
            raise self._async_error

    def send(self, sendbuf: int, count: int, datatype: int, peer: int, stream: int) -> None:
        self._p2p("send", sendbuf, count, datatype, peer, stream)

    def recv(self, recvbuf: int, count: int, datatype: int, peer: int, stream: int) -> None:
        self._p2p("recv", recvbuf, count, datatype, peer, stream)

    def allReduce(
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int
    ) -> None:
        self._coll("allReduce", sendbuf, recvbuf, count, datatype, op, 0, stream)

    def reduce(
        self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, root: int, stream: int
    ) -> None:
        self._coll("reduce", sendbuf, recvbuf, count, datatype, op, root, stream)

    def broadcast(
        self, sendbuff: int, recvbuff: int, count: int, datatype: int, root: int, stream: int
    ) -> None:
        self._coll("broadcast", sendbuff, recvbuff, count, datatype, None, root, stream)

    def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
        self._coll("broadcast", buff, buff, count, datatype, None, root, stream, "bcast")

    def reduceScatter(
        self, sendbuf: int, recvbuf: int, recvcount: int, datatype: int, op: int, stream: int
    ) -> None:
        self._coll("reduceScatter", sendbuf, recvbuf, recvcount, datatype, op, 0, stream)

    def allGather(self, sendbuf: int, recvbuf: int, count: int, datatype: int, stream: int) -> None:
        self._coll("allGather", sendbuf, recvbuf, count, datatype, None, 0, stream)

    def _checked(self, datatype: int, stream: int) -> tuple[int, _Queue]:
        self._live()
        if datatype not in _NCCL_TYPES:
            raise NcclError(4, f"invalid data type {datatype}")
        return _NCCL_TYPES[datatype].itemsize, self._fc._nccl_queue(stream, self._device)

    def _p2p(self, kind: str, ptr: Any, count: Any, datatype: Any, peer: Any, stream: Any) -> None:
        ptr, count, stream = _c(ptr, "intptr_t"), _c(count, "size_t"), _c(stream, "intptr_t")
        datatype, peer, fc = _c(datatype, "int"), _c(peer, "int"), self._fc
        with fc._cv:
            size, q = self._checked(datatype, stream)
            if not 0 <= peer < self._clique.n:
                raise NcclError(4, f"peer {peer} out of range for {self._clique.n} ranks")
            view = fc._devbuf(ptr, count * size, self._device, kind + "buff")
            seq = self._seq[kind, peer]
            self._seq[kind, peer] += 1
            fc._log(kind, self._device, stream, self._rank, peer, view.size)
            fc._post(q, _P2P(self, kind, peer, seq, view))

    def _coll(
        self,
        kind: str,
        sendbuf: Any,
        recvbuf: Any,
        count: Any,
        datatype: Any,
        op: Any,
        root: Any,
        stream: Any,
        name: str | None = None,
    ) -> None:
        sendbuf, recvbuf = _c(sendbuf, "intptr_t"), _c(recvbuf, "intptr_t")
        count, datatype, root = _c(count, "size_t"), _c(datatype, "int"), _c(root, "int")
        op = None if op is None else _c(op, "int")
        stream, fc, n = _c(stream, "intptr_t"), self._fc, self._clique.n
        with fc._cv:
            size, q = self._checked(datatype, stream)
            if op is not None and op not in range(5):
                raise NcclError(4, f"invalid reduction operation {op}")
            if not 0 <= root < n:
                raise NcclError(4, f"root {root} out of range for {n} ranks")
            nb = count * size
            send_nb, recv_nb = {"allGather": (nb, nb * n), "reduceScatter": (nb * n, nb)}.get(
                kind, (nb, nb)
            )
            me = self._rank
            send = (
                None
                if kind == "broadcast" and me != root
                else fc._devbuf(sendbuf, send_nb, self._device, "sendbuff")
            )
            recv = (
                None
                if kind == "reduce" and me != root
                else fc._devbuf(recvbuf, recv_nb, self._device, "recvbuff")
            )
            fc._log(
                name or kind,
                self._device,
                stream,
                me,
                root if kind in ("reduce", "broadcast") else None,
                send_nb,
            )
            fc._post(q, _Coll(self, kind, (kind, count, datatype, op, root), send, recv))


class FakeCuda:
    """``devices`` fake GPUs with CuPy's and NCCL's semantics; see the module docstring.

    >>> fc = FakeCuda(devices=2)
    >>> with fc.installed() as cupy:
    ...     with cupy.cuda.Device(1):
    ...         a = cupy.asarray(np.arange(4.0))
    ...         a *= 2
    ...     a.get().tolist(), fc.device_of(a.data.ptr)
    ([0.0, 2.0, 4.0, 6.0], 1)
    >>> with fc.installed() as cupy:  # device 0 is current: a kernel on device 1's array
    ...     b = cupy.zeros(4)
    ...     b += a  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: Array device must be same as the current device: array device = 1 while ...
    """

    def __init__(self, devices: int = 4, seed: int = 0, hang_timeout: float = 20.0) -> None:
        self.devices, self.hang_timeout = devices, hang_timeout
        self.log: list[Call] = []
        self._cv = threading.Condition(threading.RLock())
        self._rng = np.random.default_rng(seed)
        self._tls = threading.local()
        self._epoch = 0
        self._ptrs = itertools.count(0x7F3A_0000_0000, 0x200)
        self._null = [_Queue(d, 0, "null") for d in range(devices)]
        self._queues: dict[int, _Queue] = {}
        self._busy: dict[_Queue, None] = {}  # queues with ops, in insertion order
        self._starts: list[int] = []
        self._regions: dict[int, tuple[int, Callable[[], np.ndarray | None], int]] = {}
        self._cliques: dict[tuple, _Clique] = {}
        self.cupy = self._build()

    # -- public helpers -----------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator[types.ModuleType]:
        """Put the fake into ``sys.modules`` as ``cupy`` (and its submodules) for a while."""
        cuda = self.cupy.cuda
        mods = {
            "cupy": self.cupy,
            "cupy.cuda": cuda,
            "cupy.cuda.nccl": cuda.nccl,
            "cupy.cuda.runtime": cuda.runtime,
            "cupy.cuda.nvrtc": cuda.nvrtc,
        }
        saved = {name: sys.modules.get(name) for name in mods}
        sys.modules.update(mods)
        try:
            yield self.cupy
        finally:
            for name, mod in saved.items():
                if mod is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = mod

    def external_stream(self, device: int, non_blocking: bool = True) -> int:
        """A new stream on ``device`` as a raw pointer (like ``torch.cuda.Stream().cuda_stream``;
        torch's pool streams are non-blocking)."""
        if not 0 <= device < self.devices:
            raise CUDARuntimeError(101)
        return self._new_queue(device, non_blocking)

    def adopt(self, array: np.ndarray, device: int) -> None:
        """Make the memory of the C-contiguous ``array`` count as memory of ``device`` (kept
        alive by the fake), e.g. for a CPU tensor that plays a CUDA tensor."""
        if not array.flags.c_contiguous:
            raise ValueError("fake cupy: adopt needs a C-contiguous array")
        buf = array.reshape(-1).view(np.uint8)
        start, end = buf.ctypes.data, buf.ctypes.data + buf.nbytes
        with self._cv:
            for s, (e, ref, _) in self._regions.items():
                if ref() is not None and s < end and start < e:
                    raise ValueError(f"memory {start:#x}..{end:#x} is already device memory")
            self._register(buf, device, strong=True)

    register_host_memory = adopt

    def device_of(self, ptr: int) -> int | None:
        """The device whose allocation contains ``ptr``; None if none does."""
        with self._cv:
            found = self._region(ptr, 1)
        return None if found is None else found[2]

    # -- threads, devices, streams ------------------------------------------------------------

    def _state(self) -> types.SimpleNamespace:
        st = getattr(self._tls, "state", None)
        if st is None:
            null = self.cupy.cuda.Stream.null
            st = self._tls.state = types.SimpleNamespace(
                device=0,
                streams=[[null] for _ in range(self.devices)],
                stream_devices=[],
                group_depth=0,
                group=[],
            )
        return st

    def _set_device(self, device: Any) -> None:
        device = _c(device, "int")
        if not 0 <= device < self.devices:
            raise CUDARuntimeError(101, f"device {device} of {self.devices}")
        self._state().device = device

    def _get_current_stream(self, device_id: int = -1) -> _Stream:
        st = self._state()
        return st.streams[st.device if device_id < 0 else device_id][-1]

    def _new_queue(self, device: int, non_blocking: bool) -> int:
        with self._cv:
            ptr = next(self._ptrs)
            self._queues[ptr] = _Queue(device, ptr, ("blocking", "nonblocking")[non_blocking])
        return ptr

    def _queue_of(self, stream: _Stream, device: int) -> _Queue:
        if stream.ptr == 0:
            return self._null[device if stream.device_id < 0 else stream.device_id]
        q = self._queues.get(stream.ptr)
        if q is None:
            raise CUDARuntimeError(400, f"unknown stream {stream.ptr:#x}")
        return q

    def _nccl_queue(self, ptr: int, device: int) -> _Queue:
        q = self._null[device] if ptr == 0 else self._queues.get(ptr)
        if q is None or q.device != device:
            where = "unknown" if q is None else f"on device {q.device}"
            raise NcclError(1, f"stream {ptr:#x} is {where}, communicator on device {device}")
        return q

    # -- the engine ---------------------------------------------------------------------------

    def _log(
        self,
        kind: str,
        device: int,
        stream: int | None,
        rank: int | None = None,
        peer: int | None = None,
        nbytes: int | None = None,
    ) -> None:
        with self._cv:
            self.log.append(
                Call(kind, threading.current_thread().name, device, stream, rank, peer, nbytes)
            )

    def _push(self, op: _Op) -> _Op:
        """Enqueue ``op`` on its streams (adding the legacy null stream's implicit order)."""
        with self._cv:
            deps = [d for d in op.deps if not d.done]
            for q in op.queues:
                null = self._null[q.device]
                if q is null:
                    deps += [
                        x.tail for x in self._busy if x.device == q.device and x.kind == "blocking"
                    ]
                elif q.kind == "blocking" and null in self._busy:
                    deps.append(null.tail)
            op.deps = deps
            for q in op.queues:
                q.ops.append(op)
                q.tail = op
                self._busy[q] = None
            self._changed()
        return op

    def _changed(self) -> None:
        self._epoch += 1
        self._progress()
        self._cv.notify_all()

    def _progress(self) -> None:
        """Run every stream's ready head ops until nothing moves."""
        moved = True
        with np.errstate(all="ignore"):
            while moved:
                moved = False
                for q in list(self._busy):
                    while q.ops:
                        op = q.ops[0]
                        if not op.started:
                            if any(not d.done for d in op.deps) or any(
                                x.ops[0] is not op for x in op.queues
                            ):
                                break
                            op.started = moved = True
                            try:
                                if op.start is not None:
                                    op.start()
                            except Exception as exc:  # noqa: BLE001 - a fault: raised at sync
                                for x in op.queues:
                                    x.error = x.error or exc
                        if not all(p.done() for p in op.parts):
                            break
                        op.done = moved = True
                        op.finished_at = time.perf_counter()
                        for x in op.queues:
                            x.ops.popleft()
                            if not x.ops:
                                del self._busy[x]

    def _wait(self, pred: Callable[[], bool], why: Callable[[], str] | None = None) -> None:
        """Block until ``pred()``; :class:`FakeHang` after ``hang_timeout`` s without change."""
        with self._cv:
            epoch, deadline = self._epoch, time.monotonic() + self.hang_timeout
            while not pred():
                if self._epoch != epoch:
                    epoch, deadline = self._epoch, time.monotonic() + self.hang_timeout
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FakeHang(
                        f"no progress for {self.hang_timeout} s; " + (why or self._blocked)()
                    )
                self._cv.wait(left)

    def _blocked(self) -> str:
        lines = []
        for q in self._busy:
            op = q.ops[0]
            pending = [d for d in op.deps if not d.done]
            if op.started:
                why = "; ".join(p.why() for p in op.parts if not p.done())
            elif pending:
                why = f"{op.what} waits for {pending[0].what} on {pending[0].queues[0]}"
            else:
                why = f"{op.what} waits for its other streams to reach it"
            lines.append(f"{q}: {why}")
        return "blocked: " + ("; ".join(lines) or "nothing (a host-side wait)")

    def _sync(self, queues: list[_Queue], device: int, stream: int | None) -> None:
        with self._cv:
            self._log("synchronize", device, stream)
            tails = [q.tail for q in queues if q.tail is not None]
            self._wait(lambda: all(t.done for t in tails))
            for q in queues:
                if q.error is not None:
                    raise q.error

    def _launch(self, what: str, arrays: list[_NDArray], fn: Callable[[], Any]) -> None:
        """Enqueue kernel ``fn`` touching ``arrays`` (the first one written)."""
        dev = self._state().device
        for a in arrays:
            if a._dev != dev:
                raise ValueError(
                    f"Array device must be same as the current device: array "
                    f"device = {a._dev} while current = {dev} ({what})"
                )
        q = self._queue_of(self._get_current_stream(), dev)
        with self._cv:
            self._log("kernel", dev, q.ptr, nbytes=arrays[0].nbytes)
            self._push(_Op(what, [q], start=fn))

    # -- memory -------------------------------------------------------------------------------

    def _register(self, buf: np.ndarray, device: int, strong: bool = False) -> None:
        with self._cv:
            for s in [s for s, (_, ref, _) in self._regions.items() if ref() is None]:
                del self._regions[s]
                self._starts.remove(s)
            start = buf.ctypes.data
            if start not in self._regions:
                bisect.insort(self._starts, start)
            ref = (lambda: buf) if strong else weakref.ref(buf)
            self._regions[start] = (start + buf.nbytes, ref, device)

    def _region(self, ptr: int, nbytes: int) -> tuple[np.ndarray, int, int] | None:
        """(byte buffer, its address, device) of the live allocation holding the range."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        while i >= 0:
            start = self._starts[i]
            end, ref, device = self._regions[start]
            buf = ref()
            if buf is not None:  # live allocations do not overlap: the nearest one decides
                return (buf, start, device) if ptr + max(nbytes, 1) <= end else None
            i -= 1
        return None

    def _devbuf(self, ptr: int, nbytes: int, device: int, name: str) -> np.ndarray:
        """The bytes [ptr, ptr + nbytes) of one allocation on ``device``, for NCCL."""
        if nbytes == 0:
            return np.empty(0, np.uint8)
        found = self._region(ptr, nbytes)
        if found is None:
            raise NcclError(4, f"{name} {ptr:#x} + {nbytes} B is not inside one allocation")
        buf, start, dev = found
        if dev != device:
            raise NcclError(4, f"{name} on device {dev}, communicator on device {device}")
        return buf[ptr - start : ptr - start + nbytes]

    def _empty(
        self, shape: Any, dtype: Any = float, order: Literal["K", "A", "C", "F"] = "C"
    ) -> _NDArray:
        dt = _dtype(dtype)
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        with self._cv:
            buf = self._rng.integers(0, 256, max(1, dt.itemsize * int(np.prod(shape))), np.uint8)
            device = self._state().device
            self._register(buf, device)
        return self.cupy.ndarray(np.ndarray(shape, dt, buffer=buf, order=order), device)

    def _filled(self, shape: Any, dtype: Any, value: int) -> _NDArray:
        out = self._empty(shape, dtype)
        out.fill(value)  # a kernel, like cudaMemsetAsync
        return out

    def _asarray(self, obj: Any, dtype: Any = None) -> _NDArray:
        if isinstance(obj, _NDArray):
            return obj if dtype is None or np.dtype(dtype) == obj.dtype else obj.astype(dtype)
        desc = getattr(obj, "__cuda_array_interface__", None)
        if desc is not None:
            arr = self._from_interface(desc)
            return arr if dtype is None or np.dtype(dtype) == arr.dtype else arr.astype(dtype)
        host = np.array(obj, dtype=dtype)  # a snapshot, as the copy leaves pageable memory
        out = self._empty(host.shape, host.dtype)
        self._launch("memcpy HtoD", [out], lambda: np.copyto(out._a, host))
        return out

    def _ascontiguousarray(self, a: Any, dtype: Any = None) -> _NDArray:
        arr = self._asarray(a, dtype)
        return arr if arr.flags.c_contiguous else arr.copy()

    def _from_interface(self, desc: dict) -> _NDArray:
        """A zero-copy view of the allocation ``desc`` (CUDA array interface v3) points into;
        synchronises its ``stream`` as CuPy does."""
        ptr, shape, dt = desc["data"][0], tuple(desc["shape"]), _dtype(desc["typestr"])
        strides = desc.get("strides")
        strides = None if strides is None else tuple(strides)
        if strides is None:
            strides = tuple(int(np.prod(shape[i + 1 :])) * dt.itemsize for i in range(len(shape)))
        if 0 in shape:
            return self._empty(shape, dt)
        lo = ptr + sum(min(0, s * (n - 1)) for s, n in zip(strides, shape))
        hi = ptr + sum(max(0, s * (n - 1)) for s, n in zip(strides, shape)) + dt.itemsize
        with self._cv:
            found = self._region(lo, hi - lo)
        if found is None:
            raise ValueError(f"pointer {ptr:#x} is not inside one fake device allocation")
        buf, start, device = found
        stream = desc.get("stream")
        if stream is not None:
            if stream in (0, 2):
                raise ValueError(
                    f"fake cupy: __cuda_array_interface__ stream {stream} is "
                    "disallowed or not modelled"
                )
            q = self._null[self._state().device] if stream == 1 else self._queues.get(stream)
            if q is None:
                raise CUDARuntimeError(400, f"unknown stream {stream:#x}")
            self._sync([q], q.device, q.ptr)
        return self.cupy.ndarray(
            np.ndarray(shape, dt, buffer=buf, offset=ptr - start, strides=strides), device
        )

    def _copyto(self, dst: _NDArray, src: Any, casting: _Casting = "same_kind") -> None:
        on_device = isinstance(src, _NDArray)
        value = src if on_device or np.isscalar(src) else np.array(src)  # host data: a snapshot
        shape = np.shape(src._a if on_device else value)
        if np.broadcast_shapes(shape, dst.shape) != dst.shape:
            raise ValueError(f"could not broadcast {shape} into {dst.shape}")
        np.copyto(
            np.empty((), dst.dtype),
            value if np.isscalar(value) else np.empty((), value.dtype),
            casting=casting,
        )  # casting errors now
        self._launch(
            "copy",
            [dst, src] if on_device else [dst],
            lambda: np.copyto(dst._a, src._a if on_device else value, casting="unsafe"),
        )

    def _elementwise(self, fn: Callable[..., Any]) -> Callable[..., _NDArray]:
        """CuPy's ``fn`` (a ufunc or ``where``): a kernel over device arrays and scalars."""

        def call(*args: Any, out: _NDArray | None = None) -> _NDArray:
            for x in (*args, out):
                if isinstance(x, np.ndarray):
                    raise TypeError(f"Unsupported type {type(x)}")
            dev = [isinstance(x, _NDArray) for x in args]

            def values(args=args, dev=dev) -> list:
                return [x._a if d else x for x, d in zip(args, dev)]

            with np.errstate(all="ignore"):
                dtype = fn(*(np.empty((), x.dtype) if d else x for x, d in zip(args, dev))).dtype
            shape = np.broadcast_shapes(*map(np.shape, values()))
            if out is None:
                out = self._empty(shape, dtype)
            elif np.broadcast_shapes(shape, out.shape) != out.shape:
                raise ValueError(f"{fn.__name__}: cannot write {shape} into {out.shape}")
            elif not np.can_cast(dtype, out.dtype, "same_kind"):
                raise TypeError(f"{fn.__name__}: cannot cast {dtype} to {out.dtype}")
            self._launch(
                fn.__name__,
                [out] + [x for x, d in zip(args, dev) if d],
                lambda: np.copyto(out._a, fn(*values()), casting="unsafe"),
            )
            return out

        call.__name__ = fn.__name__
        return call

    def _concatenate(self, arrays: list[_NDArray], axis: int = 0) -> _NDArray:
        shapes = [a.shape for a in arrays]
        axis %= len(shapes[0])
        if any(
            len(s) != len(shapes[0])
            or s[:axis] + s[axis + 1 :] != shapes[0][:axis] + shapes[0][axis + 1 :]
            for s in shapes
        ):
            raise ValueError(f"concatenate: shapes {shapes} do not fit along axis {axis}")
        shape = list(shapes[0])
        shape[axis] = sum(s[axis] for s in shapes)
        out = self._empty(shape, np.result_type(*(a.dtype for a in arrays)))
        self._launch(
            "concatenate",
            [out, *arrays],
            lambda: np.concatenate([a._a for a in arrays], axis=axis, out=out._a),
        )
        return out

    def _get(self, arr: _NDArray, stream: _Stream | None) -> np.ndarray:
        q = self._queue_of(stream or self._get_current_stream(arr._dev), arr._dev)
        if q.device != arr._dev:
            raise CUDARuntimeError(400, f"copy of an array of device {arr._dev} on {q}")
        host = np.empty(arr.shape, arr.dtype)
        with self._cv:
            self._push(_Op("memcpy DtoH", [q], start=lambda: np.copyto(host, arr._a)))
            self._sync([q], q.device, q.ptr)
        return host

    def _elapsed(self, start: _Event, end: _Event) -> float:
        """``get_elapsed_time``: milliseconds between two done events (host time here)."""
        finished = []
        for event in (start, end):
            if not event._timing:
                raise CUDARuntimeError(400, "an event without timing")
            if event._op is None or not event._op.done:
                raise CUDARuntimeError(600)
            finished.append(event._op.finished_at)
        return (finished[1] - finished[0]) * 1e3

    # -- NCCL ---------------------------------------------------------------------------------

    def _unique_id(self) -> bytes:
        with self._cv:
            return bytes(int(b) for b in self._rng.integers(0, 256, 128))

    def _join(self, comm: _NcclCommunicator, n: int, uid: tuple) -> _Clique:
        """Add ``comm`` to the clique of ``uid`` and wait for all ``n`` ranks."""
        rank, device = comm._rank, comm._device
        with self._cv:
            if n < 1:
                raise NcclError(4, f"ndev {n} < 1")
            cl = self._cliques.setdefault(uid, _Clique(uid, n))
            if n != cl.n or not 0 <= rank < n:
                raise NcclError(4, f"rank {rank} of {n} for comm {cl.name} of {cl.n} ranks")
            if rank in cl.members:
                raise NcclError(5, f"rank {rank} of comm {cl.name} joined twice")
            for other, c in cl.members.items():
                if c._device == device:
                    cl.error = (
                        5,
                        (
                            f"Duplicate GPU detected: rank {rank} and rank {other} "
                            f"both on CUDA device {device}"
                        ),
                    )
                    self._changed()
                    raise NcclError(*cl.error)
            cl.members[rank] = comm
            self._changed()
            self._wait(
                lambda: len(cl.members) == n or cl.error is not None,
                lambda: (
                    f"comm {cl.name}: ranks {sorted(set(range(n)) - set(cl.members))} never joined"
                ),
            )
            if cl.error is not None:
                raise NcclError(*cl.error)
        return cl

    def _group_start(self) -> None:
        self._state().group_depth += 1

    def _group_end(self) -> None:
        st = self._state()
        if st.group_depth == 0:
            raise NcclError(5, "groupEnd without groupStart")
        st.group_depth -= 1
        if st.group_depth == 0:
            self._flush()

    def _post(self, q: _Queue, part: _Part) -> None:
        st = self._state()
        st.group.append((q, part))
        if st.group_depth == 0:
            self._flush()

    def _flush(self) -> None:
        """Enqueue the thread's collected calls: one op per device on all its streams, after
        the previous op of each communicator (NCCL serialises a communicator's launches)."""
        st = self._state()
        calls, st.group = st.group, []
        by_device: dict[int, list[tuple[_Queue, _Part]]] = defaultdict(list)
        for q, part in calls:
            by_device[q.device].append((q, part))
        for items in by_device.values():
            parts = tuple(p for _, p in items)
            comms = list(dict.fromkeys(p.comm for p in parts))
            op = _Op(
                ", ".join(p.what for p in parts),
                list(dict.fromkeys(q for q, _ in items)),
                start=functools.partial(_start_parts, parts),
                parts=parts,
                deps=tuple(c._last for c in comms if c._last is not None),
            )
            for p in parts:
                p.op = op
            for c in comms:
                c._last = op
            self._push(op)

    # -- the module ---------------------------------------------------------------------------

    def _build(self) -> types.ModuleType:
        def cls(name: str, base: type[_T], **extra: Any) -> type[_T]:
            return type(name, (base,), {"_fc": self, "__module__": "cupy.cuda", **extra})

        def module(name: str, **attrs: Any) -> types.ModuleType:
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            return mod

        stream = cls("Stream", _Stream)
        runtime = module(
            "cupy.cuda.runtime",
            CUDARuntimeError=CUDARuntimeError,
            getDevice=lambda: self._state().device,
            setDevice=self._set_device,
            getDeviceCount=lambda: self.devices,
        )
        nccl = module(
            "cupy.cuda.nccl",
            available=True,
            NcclError=NcclError,
            NcclCommunicator=cls("NcclCommunicator", _NcclCommunicator),
            get_version=lambda: 22304,
            get_unique_id=self._unique_id,
            groupStart=self._group_start,
            groupEnd=self._group_end,
            **_NCCL_CONSTANTS,
        )
        cuda = module(
            "cupy.cuda",
            Device=cls("Device", _Device),
            Stream=stream,
            ExternalStream=cls("ExternalStream", _ExternalStream),
            Event=cls("Event", _Event),
            get_current_stream=self._get_current_stream,
            get_elapsed_time=self._elapsed,
            is_available=lambda: True,
            MemoryPointer=MemoryPointer,
            runtime=runtime,
            nccl=nccl,
            nvrtc=module("cupy.cuda.nvrtc", getVersion=lambda: (12, 4)),
        )
        cupy = module(
            "cupy",
            __version__="14.0.0",
            cuda=cuda,
            dtype=np.dtype,
            ndarray=cls("ndarray", _NDArray, __slots__=(), __module__="cupy"),
            empty=self._empty,
            asarray=self._asarray,
            zeros=lambda shape, dtype=float: self._filled(shape, dtype, 0),
            ones=lambda shape, dtype=float: self._filled(shape, dtype, 1),
            empty_like=lambda a, dtype=None: self._empty(a.shape, dtype or a.dtype),
            zeros_like=lambda a, dtype=None: self._filled(a.shape, dtype or a.dtype, 0),
            ascontiguousarray=self._ascontiguousarray,
            concatenate=self._concatenate,
            copyto=self._copyto,
            asnumpy=lambda a, stream=None: (
                a.get(stream) if isinstance(a, _NDArray) else np.asarray(a)
            ),
            **{
                n: getattr(np, n)
                for n in (
                    "bool_",
                    "int8",
                    "int16",
                    "int32",
                    "int64",
                    "uint8",
                    "uint16",
                    "uint32",
                    "uint64",
                    "float16",
                    "float32",
                    "float64",
                    "complex64",
                    "complex128",
                )
            },
            **{n: self._elementwise(getattr(np, n)) for n in _ELEMENTWISE},
        )
        stream.null = stream(null=True)
        return cupy

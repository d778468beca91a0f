"""CUDA tensors in the taccl backend: plans run with NCCL point-to-point through CuPy.

Everything runs in the calling thread, on the GPU of the tensors and on the caller's
current torch stream there, like NCCL's own collectives are stream-ordered: the work is
enqueued and the call returns. The tensors are recorded on that stream
(``record_stream``), so the caching allocator keeps them for the work enqueued there.
``Work.wait()`` makes the waiting thread's current stream wait for the collective (with
``blocking_wait``: the host waits, and raises on a failure).

The NCCL communicator is made on the first CUDA call (its unique id through the group's
store, with a deadline). A :class:`~taccl_py.runtime.cuda_exec.Watchdog` aborts it when a
collective is not done within the group's timeout, or NCCL reports an error; every later
call on the group then raises that error, naming the round and the peers it was stuck on.

Every collective runs a plan of the group's library, as on CPU: Broadcast, Reduce, Gather
and Scatter their own plans for the call's root (where those do not build, the unrooted
plan that contains them, :data:`~taccl_py.torch.backend.STAND_IN`); uneven and list
all-to-all pad every block to the largest (agreed by a one-element AllReduce MAX plan, which
the host waits for) for the AllToAll plan. NCCL carries only the plans' point-to-point
messages, and ``send``/``recv``, which are point to point already; no NCCL collective runs
and no CUDA tensor is handed to Gloo.

Plan traffic moves bytes, so every dtype is exact for gathers and all-to-all; reductions
run as CuPy kernels in the tensor's dtype (bfloat16: in float32, rounded back once, as on
CPU). ``reduce`` leaves the other ranks' tensors as they were, as NCCL's does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist

from ..collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCESCATTER,
    SCATTER,
)
from ..collectives import REDUCE as REDUCE_KIND
from ..errors import TacclError
from ..runtime.cuda_exec import (
    InFlight,
    NcclPlanExecutor,
    Watchdog,
    communicator_from_store,
    external_stream,
    require_cuda,
)
from .backend import STAND_IN
from .checks import _R, REDUCE, as_real, check_list, check_output, check_pair
from .library import PADDED, PlanLibrary

#: executors kept per group (each holds a compiled program)
EXECUTOR_CACHE = 32


class TorchCuda:
    """What the CUDA route needs from torch; tests substitute a fake over CPU tensors."""

    def is_cuda(self, tensor: torch.Tensor) -> bool:
        return tensor.is_cuda

    def device(self, tensor: torch.Tensor) -> int:
        return tensor.device.index

    def stream(self, device: int) -> int:
        """The calling thread's current stream on ``device`` (a ``cudaStream_t``)."""
        return torch.cuda.current_stream(device).cuda_stream

    def array(self, tensor: torch.Tensor):
        """A CuPy view of ``tensor``'s memory (bfloat16 as its int16 bits)."""
        import cupy

        return cupy.asarray(as_cupy_dtype(tensor.detach()))

    def record_stream(self, tensor: torch.Tensor, device: int) -> None:
        tensor.record_stream(torch.cuda.current_stream(device))


def as_cupy_dtype(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or a view of its bits in a dtype CuPy has (bfloat16 as int16, the
    one-byte floats as uint8).

    >>> as_cupy_dtype(torch.ones(2, dtype=torch.bfloat16))
    tensor([16256, 16256], dtype=torch.int16)
    """
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16)
    if tensor.dtype.is_floating_point and tensor.element_size() == 1:
        return tensor.view(torch.uint8)
    return tensor


#: the torch side used by new runners
BRIDGE = TorchCuda()


class CudaWork(dist.Work):
    """A CUDA collective enqueued on the caller's stream; see the module docstring."""

    def __init__(self, runner: CudaRunner, run: InFlight, outputs) -> None:
        super().__init__()
        self._runner, self._run = runner, run
        self._fut: torch.futures.Future[Any] = torch.futures.Future()
        self._fut.set_result(outputs)

    def wait(self, timeout=None) -> bool:
        self._runner.wait(self._run)
        return True

    def is_completed(self) -> bool:
        return self._run.done

    def is_success(self) -> bool:
        return self._run.done and self._runner.dog.error is None

    def get_future(self) -> torch.futures.Future:
        return self._fut


class CudaRunner:
    """Runs the collectives of one process group on CUDA tensors of one GPU."""

    def __init__(
        self,
        store,
        rank: int,
        size: int,
        library: PlanLibrary,
        timeout: float,
        blocking_wait: bool = False,
        bridge: TorchCuda | None = None,
    ) -> None:
        self.cp = require_cuda()
        self.store, self.rank, self.size, self.library = store, rank, size, library
        self.timeout, self.blocking = timeout, blocking_wait
        self.bridge = bridge or BRIDGE
        self.device: int | None = None
        self.comm: Any = None
        self.watchdog: Watchdog | None = None
        self.executors: OrderedDict[tuple, NcclPlanExecutor] = OrderedDict()
        self.posted = 0  # NCCL calls (plan runs, point-to-point groups) enqueued so far
        self.runs: list[InFlight] = []  # the plan runs of the call being enqueued

    # -- plumbing ------------------------------------------------------------------------
    def owns(self, tensors) -> bool:
        """Whether ``tensors`` (nested lists) are CUDA tensors (all or none)."""
        flat = flatten(tensors)
        cuda = [self.bridge.is_cuda(t) for t in flat]
        if any(cuda) and not all(cuda):
            raise TacclError("a collective's tensors must all be on CUDA or all on CPU")
        return bool(flat) and all(cuda)

    def call(self, body: Callable[[Any], str], outputs, inputs=()) -> CudaWork:
        """Enqueue ``body(stream)`` on the caller's current stream of the tensors' GPU;
        ``body`` returns what it does, for a stuck-collective error."""
        tensors = flatten([outputs, inputs])
        device = self._device_of(tensors)
        cp = self.cp
        with cp.cuda.Device(device):
            stream = external_stream(cp, self.bridge.stream(device), device)
            with stream:
                posted, self.runs = self.posted, []
                try:
                    what = body(stream)
                except Exception as exc:
                    if self.posted != posted:  # peers wait on what was posted: stop them
                        self.dog.abort(f"failed after posting NCCL calls: {exc}")
                    raise
                end = cp.cuda.Event(disable_timing=True)
                end.record(stream)
        for t in tensors:
            self.bridge.record_stream(t, device)
        for plan_run in self.runs:
            self.dog.watch(plan_run)
        run = InFlight(self.rank, what, [], 0, end, {})
        self.dog.watch(run)
        return CudaWork(self, run, outputs)

    def wait(self, run: InFlight) -> None:
        """``Work.wait``: see the module docstring."""
        dog = self.dog
        dog.check()
        if self.blocking:
            dog.wait(run)
            return
        cp, device = self.cp, cast(int, self.device)  # set with the watchdog
        with cp.cuda.Device(device):
            external_stream(cp, self.bridge.stream(device), device).wait_event(run.end)

    @property
    def dog(self) -> Watchdog:
        """The watchdog, made with the communicator by the first CUDA call."""
        assert self.watchdog is not None, "no CUDA call has made the communicator yet"
        return self.watchdog

    def close(self) -> None:
        if self.watchdog is not None:
            self.watchdog.close()
        self.executors.clear()

    def _device_of(self, tensors) -> int:
        devices = {self.bridge.device(t) for t in tensors}
        if len(devices) != 1:
            raise TacclError(
                f"a collective's tensors must be on one GPU, got "
                f"{sorted(f'cuda:{d}' for d in devices)}"
            )
        device = devices.pop()
        if self.comm is None:
            self.comm = communicator_from_store(
                self.store, self.rank, self.size, device, self.timeout, key="taccl-nccl"
            )
            self.device = device
            self.watchdog = Watchdog(self.comm, self.rank, self.timeout)
        elif device != self.device:
            raise TacclError(
                f"this group's NCCL communicator is on cuda:{self.device}, the "
                f"tensors are on cuda:{device} (one GPU per rank)"
            )
        self.dog.check()
        return device

    def array(self, tensor: torch.Tensor):
        return self.bridge.array(tensor)

    # -- the process group's operations ----------------------------------------------------
    def reduction(self, kind: str, pairs: list[tuple[torch.Tensor, torch.Tensor]], op):
        """AllReduce / ReduceScatter of each (output, input) pair by plans."""
        red = self._red(op)
        pairs = [(as_real(o, op), as_real(i, op)) for o, i in pairs]
        for o, i in pairs:
            check_pair(kind, o, i, op, self.size, cuda=True)
            check_output(o)
        return self.call(
            lambda s: "; ".join(
                self.collective(
                    kind,
                    self.array(o),
                    self.array(i),
                    red,
                    op == _R.AVG,
                    o.dtype == torch.bfloat16,
                    s,
                )
                for o, i in pairs
            ),
            [o for o, _ in pairs],
            [i for _, i in pairs],
        )

    def moves(self, kind: str, pairs: list[tuple[torch.Tensor, torch.Tensor]]):
        """AllGather or (even) AllToAll of each (output, input) pair by plans."""
        for o, i in pairs:
            check_pair(kind, o, i, None, self.size, cuda=True)
            check_output(o)
        return self.call(
            lambda s: "; ".join(
                self.collective(kind, self.array(o), self.array(i), "sum", False, False, s)
                for o, i in pairs
            ),
            [o for o, _ in pairs],
            [i for _, i in pairs],
        )

    def allgather_list(self, parts: list[torch.Tensor], tensor: torch.Tensor):
        """``all_gather`` into a list of tensors."""
        check_list("all_gather", parts, tensor, self.size)
        for p in parts:
            check_output(p)

        def body(stream) -> str:
            numel = tensor.numel()
            flat = self.cp.empty(numel * self.size, self.array(tensor).dtype)
            what = self.collective(ALLGATHER, flat, self.array(tensor), "sum", False, False, stream)
            for r, part in enumerate(parts):
                out = self.array(part)
                out[...] = flat[r * numel : (r + 1) * numel].reshape(out.shape)
            return what

        return self.call(body, parts, [tensor])

    def reduce_scatter_list(self, output: torch.Tensor, parts: list[torch.Tensor], op):
        """``reduce_scatter`` from a list of tensors."""
        red = self._red(op)
        output, parts = as_real(output, op), [as_real(p, op) for p in parts]
        check_list("reduce_scatter", parts, output, self.size)
        check_output(output)

        def body(stream) -> str:
            cp = self.cp
            flat = cp.concatenate([cp.ascontiguousarray(self.array(p)).reshape(-1) for p in parts])
            return self.collective(
                REDUCESCATTER,
                self.array(output),
                flat,
                red,
                op == _R.AVG,
                output.dtype == torch.bfloat16,
                stream,
            )

        return self.call(body, [output], parts)

    def alltoall_split(
        self, output: torch.Tensor, input: torch.Tensor, out_splits: list[int], in_splits: list[int]
    ):
        """``all_to_all_single`` with split sizes (rows of dim 0), by the AllToAll plan with
        every block padded to the largest (see the module docstring)."""
        check_output(output)
        if output.dtype != input.dtype:
            raise TacclError(f"all_to_all: input {input.dtype} and output {output.dtype}")
        sends = _split_rows(input, in_splits, self.size, "input")
        recvs = _split_rows(output, out_splits, self.size, "output")
        return self.call(lambda s: self.blocks(recvs, sends, s), [output], [input])

    def alltoall_list(self, outputs: list[torch.Tensor], inputs: list[torch.Tensor]):
        """``all_to_all`` of tensor lists (of any sizes), as :meth:`alltoall_split`."""
        if len(outputs) != self.size or len(inputs) != self.size:
            raise TacclError(
                f"all_to_all on {self.size} ranks needs {self.size} input and "
                f"output tensors, got {len(inputs)} and {len(outputs)}"
            )
        for t in (*outputs, *inputs):
            if t.dtype != outputs[0].dtype:
                raise TacclError(
                    f"all_to_all: tensors of {t.dtype} and {outputs[0].dtype} in one call"
                )
        for o in outputs:
            check_output(o)
        return self.call(lambda s: self.blocks(outputs, inputs, s), outputs, inputs)

    def broadcast(self, tensors: list[torch.Tensor], root: int):
        """Broadcast from ``root`` by its Broadcast plan."""
        self._check_root(BROADCAST, root)
        for t in tensors:
            check_output(t)
            check_pair(BROADCAST, t, t, None, self.size, cuda=True)
        planned = any(t.numel() for t in tensors) and self._has_plans(BROADCAST, root)

        def body(stream) -> str:
            cp, whats = self.cp, []
            for t in tensors:
                if not t.numel():
                    continue
                arr = self.array(t)
                buf = _flat(cp, arr)
                if planned:
                    send = buf if self.rank == root else None
                    whats.append(self.rooted(BROADCAST, root, send, buf, buf.size, "sum", stream))
                else:  # the AllReduce plan sums the bytes: the root's, zeros elsewhere (exact)
                    raw = buf.view(cp.uint8)
                    send = raw.copy() if self.rank == root else cp.zeros(raw.size, cp.uint8)
                    whats.append(self.collective(ALLREDUCE, raw, send, "sum", False, False, stream))
                _back(arr, buf)
            return "; ".join(whats) or "broadcast of nothing"

        return self.call(body, tensors)

    def reduce(self, tensors: list[torch.Tensor], root: int, op):
        """Reduce to ``root`` by its Reduce plan (other ranks' tensors stay as they are)."""
        self._check_root(REDUCE_KIND, root)
        red = self._red(op)
        tensors = [as_real(t, op) for t in tensors]
        for t in tensors:
            check_output(t)
            check_pair(REDUCE_KIND, t, t, op, self.size, cuda=True)
        avg = op == _R.AVG
        planned = any(t.numel() for t in tensors) and self._has_plans(REDUCE_KIND, root)

        def body(stream) -> str:
            cp, whats = self.cp, []
            for t in tensors:
                if not t.numel():
                    continue
                arr, bf16 = self.array(t), t.dtype == torch.bfloat16
                if not planned:
                    out = arr if self.rank == root else cp.empty(arr.shape, arr.dtype)
                    whats.append(self.collective(ALLREDUCE, out, arr, red, avg, bf16, stream))
                    continue
                send = _flat(cp, arr)
                if bf16:
                    send = _bf16_to_float(cp, send)
                total = cp.empty(send.size, send.dtype) if self.rank == root else None
                whats.append(self.rooted(REDUCE_KIND, root, send, total, send.size, red, stream))
                if total is not None:
                    if avg:
                        cp.true_divide(total, self.size, out=total)
                    arr[...] = (_float_to_bf16(cp, total) if bf16 else total).reshape(arr.shape)
            return "; ".join(whats) or "reduce of nothing"

        return self.call(body, tensors)

    def gather(self, outputs: list[torch.Tensor], input: torch.Tensor, root: int):
        """Gather to ``root`` by its Gather plan."""
        self._check_root(GATHER, root)
        n, mine = self.size, self.rank == root
        if mine:
            check_list("gather", outputs, input, n)
            for o in outputs:
                check_output(o)
        planned = bool(input.numel()) and self._has_plans(GATHER, root)

        def body(stream) -> str:
            cp, e = self.cp, input.numel()
            if not e:
                return "gather of nothing"
            send = _flat(cp, self.array(input))
            if planned:
                every = cp.empty(n * e, send.dtype) if mine else None
                what = self.rooted(GATHER, root, send, every, n * e, "sum", stream)
            else:
                every = cp.empty(n * e, send.dtype)
                what = self.collective(ALLGATHER, every, send, "sum", False, False, stream)
            if mine:
                assert every is not None
                for r, part in enumerate(outputs):
                    out = self.array(part)
                    out[...] = every[r * e : (r + 1) * e].reshape(out.shape)
            return what

        return self.call(body, outputs, [input])

    def scatter(self, output: torch.Tensor, inputs: list[torch.Tensor], root: int):
        """Scatter from ``root`` by its Scatter plan."""
        self._check_root(SCATTER, root)
        n, mine = self.size, self.rank == root
        check_output(output)
        if mine:
            check_list("scatter", inputs, output, n)
            for p in inputs:
                if p.dtype != output.dtype:
                    raise TacclError(f"scatter: input {p.dtype} and output {output.dtype}")
        planned = bool(output.numel()) and self._has_plans(SCATTER, root)

        def body(stream) -> str:
            cp, e = self.cp, output.numel()
            if not e:
                return "scatter of nothing"
            arr = self.array(output)
            buf = _flat(cp, arr)
            send = cp.concatenate([_flat(cp, self.array(p)) for p in inputs]) if mine else None
            if planned:
                what = self.rooted(SCATTER, root, send, buf, n * e, "sum", stream)
            else:  # the AllToAll plan: every rank keeps the block the root sent it
                send = send if send is not None else cp.zeros(n * e, buf.dtype)
                every = cp.empty(n * e, buf.dtype)
                what = self.collective(ALLTOALL, every, send, "sum", False, False, stream)
                buf[...] = every[root * e : (root + 1) * e]
            _back(arr, buf)
            return what

        return self.call(body, [output], inputs)

    def send(self, tensors: list[torch.Tensor], peer: int):
        return self.call(lambda s: self.exchange([(peer, t) for t in tensors], [], s), [], tensors)

    def recv(self, tensors: list[torch.Tensor], peer: int):
        for t in tensors:
            check_output(t)
        return self.call(lambda s: self.exchange([], [(peer, t) for t in tensors], s), tensors)

    def _check_root(self, kind: str, root: int) -> None:
        if not 0 <= root < self.size:
            raise TacclError(f"{kind}: root {root} is not a rank of {self.size}")

    def _has_plans(self, kind: str, root: int) -> bool:
        """Whether ``kind`` rooted at ``root`` has plans; if not, the unrooted plan that
        serves it (:data:`~taccl_py.torch.backend.STAND_IN`) is announced once with the
        reason (as on CPU)."""
        why = self.library.unavailable(kind, root)
        if why:
            self.library.announce_text(
                f"{kind} root {root}: no {kind} plan ({why}); served by the {STAND_IN[kind]} plan"
            )
        return not why

    def _red(self, op) -> str:
        if op not in REDUCE:
            raise TacclError(
                f"reduce op {op} is not supported on CUDA tensors (plans and "
                f"NCCL reduce by SUM, AVG, PRODUCT, MIN, MAX)"
            )
        return REDUCE[op]

    # -- plans -----------------------------------------------------------------------------
    def collective(self, kind: str, out, inp, red: str, avg: bool, bf16: bool, stream) -> str:
        """Enqueue ``out`` ← the ``kind`` collective of every rank's ``inp`` (CuPy arrays of
        any layout; bfloat16 as int16 bits when ``bf16``)."""
        cp = self.cp
        if bf16 and kind in (ALLREDUCE, REDUCESCATTER):
            result = self._plan(kind, _bf16_to_float(cp, inp), red, stream)
            if avg:
                cp.true_divide(result, self.size, out=result)
            out[...] = _float_to_bf16(cp, result).reshape(out.shape)
        else:
            result = self._plan(kind, inp, red, stream, out if out.flags.c_contiguous else None)
            if avg:
                cp.true_divide(result, self.size, out=result)
            if result.data.ptr != out.data.ptr or not out.flags.c_contiguous:
                out[...] = result.reshape(out.shape)
        return f"{kind} of {inp.size} x {inp.dtype}"

    def _plan(self, kind: str, inp, red: str, stream, out=None):
        """The ``kind`` plan's output of ``inp`` as a flat array (``out`` flattened when it
        is given and fits)."""
        cp, n = self.cp, self.size
        send = cp.ascontiguousarray(inp).reshape(-1)
        elems = send.size
        out_elems = {ALLGATHER: elems * n, REDUCESCATTER: elems // n}.get(kind, elems)
        # torch's all_reduce is in place on every rank, so every rank asks for the in-place
        # plan (a rank deciding from its own pointers could pick another plan than its peers)
        inplace = kind == ALLREDUCE
        big = max(elems, out_elems)  # the plan's chunks split the larger buffer
        plan = self.library.choose(kind, n, big * send.itemsize, big, inplace)
        chunks = plan.nchunksperloop
        target = out.reshape(-1) if out is not None else cp.empty(out_elems, send.dtype)
        if big % chunks:  # only AllReduce gets here: pad to whole chunks
            if kind != ALLREDUCE:
                raise TacclError(
                    f"{kind} of {elems} elements does not split into the plan's {chunks} chunks"
                )
            send = cp.concatenate([send, cp.zeros(chunks - elems % chunks, send.dtype)])
            padded = send if plan.inplace else cp.empty_like(send)
            self._execute(plan, send, padded, red, stream)
            target[...] = padded[:elems]
            return target
        if plan.inplace and send.data.ptr != target.data.ptr:
            target[...] = send  # the in-place plan reads and writes one buffer
            send = target
        elif not plan.inplace and send.data.ptr == target.data.ptr:
            send = send.copy()
        self._execute(plan, send, target, red, stream)
        return target

    def rooted(self, kind: str, root: int, send, recv, elems: int, red: str, stream) -> str:
        """Enqueue the ``kind`` plan rooted at ``root``: ``send`` and ``recv`` are flat
        contiguous arrays, ``None`` on a rank without input (Broadcast's, Scatter's non-root)
        or output (Reduce's, Gather's non-root); ``elems`` is the larger of the collective's
        input and output elements (the same on every rank, so all choose one plan)."""
        cp, n = self.cp, self.size
        dtype = (send if send is not None else recv).dtype
        plan = self.library.choose(kind, n, elems * np.dtype(dtype).itemsize, elems, False, root)
        chunks = plan.nchunksperloop
        if elems % chunks:  # Broadcast, Reduce: pad to whole chunks
            if kind not in PADDED:
                raise TacclError(
                    f"{kind} of {elems} elements does not split into the plan's {chunks} chunks"
                )
            pad = chunks - elems % chunks
            if send is not None:
                send = cp.concatenate([send, cp.zeros(pad, dtype)])
            padded = cp.empty(elems + pad, dtype) if recv is not None else None
            self._execute(plan, send, padded, red, stream)
            if recv is not None:
                assert padded is not None
                recv[...] = padded[:elems]
        else:
            if (
                not plan.inplace
                and send is not None
                and recv is not None
                and send.data.ptr == recv.data.ptr
            ):
                send = send.copy()
            self._execute(plan, send, recv, red, stream)
        return f"{plan.label} of {elems} x {np.dtype(dtype)}"

    def blocks(self, outs: list[torch.Tensor], ins: list[torch.Tensor], stream) -> str:
        """All-to-all of blocks of any sizes: ``outs[q]`` ← rank q's ``ins[rank]``. The ranks
        agree on the largest block (an AllReduce MAX plan, waited for on the host), and every
        block is padded to it for the AllToAll plan."""
        cp, n = self.cp, self.size
        outs_a, ins_a = [self.array(t) for t in outs], [self.array(t) for t in ins]
        largest = cp.asarray(np.array([max(a.size for a in (*outs_a, *ins_a))], np.int64))
        self.collective(ALLREDUCE, largest, largest, "max", False, False, stream)
        self._sync()
        block = int(largest.get()[0])
        if not block:
            return "all-to-all of nothing"
        dtype = ins_a[0].dtype
        send = cp.zeros(n * block, dtype)
        for q, a in enumerate(ins_a):
            send[q * block : q * block + a.size] = _flat(cp, a)
        every = cp.empty(n * block, dtype)
        what = self.collective(ALLTOALL, every, send, "sum", False, False, stream)
        for q, a in enumerate(outs_a):
            a[...] = every[q * block : q * block + a.size].reshape(a.shape)
        return f"{what} (blocks padded to {block})"

    def _sync(self) -> None:
        """Wait on the host for the plan runs enqueued so far in this call (watched: a
        stuck peer aborts the communicator within the timeout, and this raises)."""
        runs, self.runs = self.runs, []
        for run in runs:
            self.dog.watch(run)
        for run in runs:
            self.dog.wait(run)

    def _execute(self, plan, send, recv, red: str, stream) -> None:
        """Run ``plan`` on flat contiguous arrays (either ``None`` where the rank has no
        input / output in a rooted plan)."""
        coll = plan.collective()
        ce = send.size // coll.i_chunks if send is not None else recv.size // coll.o_chunks
        dtype = (send if send is not None else recv).dtype
        key = (id(plan), ce, np.dtype(dtype).str, red)
        ex = self.executors.pop(key, None)
        if ex is None:
            ex = NcclPlanExecutor(plan, self.comm, self.rank, ce, dtype, redop=red)
            if len(self.executors) >= EXECUTOR_CACHE:
                self.executors.popitem(last=False)
        self.executors[key] = ex  # most recently used last
        self.posted += 1
        self.runs.append(ex.run(send, recv, stream))

    # -- point-to-point: NCCL's own send and receive ------------------------------------------
    def exchange(
        self, sends: list[tuple[int, torch.Tensor]], recvs: list[tuple[int, torch.Tensor]], stream
    ) -> str:
        """One NCCL group: each (peer, tensor) of ``sends`` to that peer, each of ``recvs``
        from it (tensors of any layout)."""
        from cupy.cuda import nccl

        cp = self.cp
        out = [(peer, self.array(t)) for peer, t in recvs]
        staged = [
            (peer, a, a if a.flags.c_contiguous else cp.empty(a.shape, a.dtype)) for peer, a in out
        ]
        ins = [(peer, cp.ascontiguousarray(self.array(t))) for peer, t in sends]
        self.posted += 1
        nccl.groupStart()
        try:
            for peer, _, buf in staged:
                self.comm.recv(buf.data.ptr, buf.nbytes, _bytes(), peer, stream.ptr)
            for peer, buf in ins:
                self.comm.send(buf.data.ptr, buf.nbytes, _bytes(), peer, stream.ptr)
        finally:
            nccl.groupEnd()
        for _, arr, buf in staged:
            if buf is not arr:
                arr[...] = buf
        peers = sorted({p for p, _ in sends} | {p for p, _ in recvs})
        return f"point-to-point with rank(s) {peers}"


def _bytes() -> int:
    from cupy.cuda import nccl

    return nccl.NCCL_UINT8


def _bf16_to_float(cp, bits):
    """bfloat16 bits (an int16 array) as float32 values."""
    wide = cp.ascontiguousarray(bits).view(cp.uint16).astype(cp.uint32)
    return cp.left_shift(wide, 16).view(cp.float32)


def _float_to_bf16(cp, values):
    """float32 values rounded to the nearest bfloat16, ties to even (NaN stays NaN), as
    int16 bits."""
    bits = cp.ascontiguousarray(values).view(cp.uint32)
    odd = cp.bitwise_and(cp.right_shift(bits, 16), 1)
    rounded = cp.right_shift(cp.add(cp.add(bits, 0x7FFF), odd), 16)
    nan = cp.bitwise_or(cp.right_shift(bits, 16), 0x40)  # quiet NaN, sign kept
    return cp.where(cp.isnan(values), nan, rounded).astype(cp.uint16).view(cp.int16)


def _flat(cp, arr):
    """``arr`` (a CuPy array) as a flat contiguous array: a view when it is contiguous."""
    return cp.ascontiguousarray(arr).reshape(-1)


def _back(arr, flat) -> None:
    """Copy ``flat`` (from :func:`_flat`) into ``arr`` unless it is ``arr``'s own memory."""
    if not arr.flags.c_contiguous or flat.data.ptr != arr.data.ptr:
        arr[...] = flat.reshape(arr.shape)


def flatten(tensors) -> list:
    """The tensors of ``tensors`` (a tensor, or lists of them), in order.

    >>> flatten([[torch.zeros(1)], torch.ones(1)])
    [tensor([0.]), tensor([1.])]
    """
    if isinstance(tensors, (list, tuple)):
        return [t for x in tensors for t in flatten(x)]
    return [tensors]


def _split_rows(tensor: torch.Tensor, splits: list[int], n: int, name: str) -> list:
    """``tensor`` cut along dim 0 into ``n`` parts of ``splits`` rows (even without)."""
    rows = tensor.shape[0] if tensor.dim() else 1
    splits = list(splits) or ([rows // n] * n if rows % n == 0 else [])
    if len(splits) != n or sum(splits) != rows or min(splits) < 0:
        raise TacclError(
            f"all_to_all on {n} ranks: {name} split sizes {list(splits)} do not cut its {rows} rows"
        )
    return list(tensor.split(splits)) if tensor.dim() else [tensor]

"""``TacclProcessGroup``: torch.distributed collectives run by taccl plans.

CPU tensors: the plan's messages go over an inner Gloo group (one Gloo group for plan
traffic, another for point-to-point calls and the operations delegated to Gloo: barrier,
broadcast, reduce, gather, scatter, all-to-all with split sizes or tensor lists, and the
reduce ops no plan does: BAND, BOR, BXOR, PREMUL_SUM). CUDA tensors: NCCL point-to-point
through CuPy (:mod:`taccl_py.runtime.cuda_exec`). Collectives run in issue order on one
worker thread; every call returns a ``Work`` whose future carries the output tensors, so
``async_op=True`` overlaps with the caller. Tensors of any layout are served: plans and
Gloo see contiguous stand-ins, copied back into non-contiguous outputs; on CPU the dtypes
are Gloo's (:data:`GLOO_DTYPES`).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import datetime
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.distributed as dist

from ..collectives import ALLGATHER, ALLREDUCE, ALLTOALL, REDUCESCATTER
from ..errors import TacclError
from ..runtime.executor import PlanExecutor
from .checks import _R, REDUCE, as_real, check_list, check_output, check_pair, reduce_op
from .gloo_transport import GlooTransport
from .library import PlanLibrary

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import GroupName

    from .cuda import CudaRunner

#: executors kept per group (each holds its compiled program and receive temporaries)
EXECUTOR_CACHE = 32
#: set to 1 to make ``Work.wait()`` of CUDA collectives wait on the host (and raise a failure)
BLOCKING_WAIT_ENV = "TACCL_BLOCKING_WAIT"
#: groups not yet shut down; those left at exit are shut down before the interpreter ends
_LIVE: weakref.WeakSet = weakref.WeakSet()


class _Work(dist.Work):
    """A collective in flight: ``wait`` re-raises its error (the Work that
    ``_create_work_from_future`` makes returns normally from a failed future)."""

    def __init__(self, fut: torch.futures.Future) -> None:
        super().__init__()
        self._fut = fut

    def wait(self, timeout=None) -> bool:
        self._fut.wait()
        return True

    def is_completed(self) -> bool:
        return self._fut.done()

    def get_future(self) -> torch.futures.Future:
        return self._fut


class TacclProcessGroup(dist.ProcessGroup):
    """A process group whose collectives run synthesized (or fallback) plans."""

    def __init__(
        self,
        store,
        rank: int,
        size: int,
        timeout: datetime.timedelta,
        plan_dir=None,
        cache_dir=None,
        blocking_wait: bool | None = None,
    ) -> None:
        super().__init__(rank, size)  # type: ignore[call-arg]  # the stub lacks (rank, size)
        self._store, self._timeout = store, timeout.total_seconds()
        self._library = PlanLibrary(plan_dir, cache_dir)
        # Gloo's own timeout on plan messages comes later than the executor's, whose error
        # names the plan step and peer that stalled
        # the inner groups and the transport are dropped by shutdown()
        self._plan_pg: dist.ProcessGroupGloo | None = dist.ProcessGroupGloo(
            dist.PrefixStore("taccl-plan", store),
            rank,
            size,
            timeout * 2 + datetime.timedelta(seconds=5),
        )
        self._gloo: dist.ProcessGroupGloo | None = dist.ProcessGroupGloo(
            dist.PrefixStore("taccl-p2p", store), rank, size, timeout
        )
        self._transport: GlooTransport | None = GlooTransport(self._plan_pg)
        self._worker = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="taccl-coll")
        self._executors: dict[tuple, PlanExecutor] = {}
        self._cuda: CudaRunner | None = None  # made on the first CUDA call
        self._blocking = _env_flag(BLOCKING_WAIT_ENV) if blocking_wait is None else blocking_wait
        self._name = ""
        _LIVE.add(self)

    # -- identity ------------------------------------------------------------------------
    def getBackendName(self) -> str:
        return "taccl"

    def setGroupName(self, name: str) -> None:
        self._name = name

    def getGroupName(self) -> str:
        return self._name

    @property
    def group_name(self) -> GroupName:
        return cast("GroupName", self._name)

    def shutdown(self) -> None:
        """Finish the queued collectives, stop the worker threads and release the inner Gloo
        groups (``dist.destroy_process_group`` calls this), so that no Gloo thread still
        holds a tensor when the interpreter exits (a Gloo thread that drops the last
        reference to a tensor then aborts the process)."""
        _LIVE.discard(self)
        self._worker.shutdown(wait=True)
        if self._cuda is not None:
            self._cuda.close()
        if self._transport is not None:
            self._transport.close()
        self._executors.clear()
        self._transport = self._plan_pg = self._gloo = None

    def _check_live(self) -> None:
        if self._gloo is None:
            raise TacclError("this taccl process group was shut down (dist.destroy_process_group)")

    # -- plumbing ------------------------------------------------------------------------
    def _submit(
        self, fn: Callable[[Any, Any], object], outputs: Any, inputs: Any = (), op: Any = None
    ) -> _Work:
        """Run ``fn(outputs, inputs)`` on the worker, in issue order, with contiguous stand-ins
        for the tensors (lists, nested once at most; complex ones as real views when reduced
        by ``op``); stand-ins of non-contiguous outputs are copied back when ``fn`` succeeds.
        The Work's future yields ``outputs``."""
        self._check_live()
        fut: torch.futures.Future[object] = torch.futures.Future()

        def job() -> None:
            try:
                written: list[tuple[torch.Tensor, torch.Tensor]] = []
                outs = _map(lambda t: _stand_in(t, written), outputs)
                ins = _map(lambda t: t.detach().contiguous(), inputs)
                if op is not None:
                    outs, ins = _map(lambda t: as_real(t, op), (outs, ins))
                fn(outs, ins)
                for tensor, staged in written:
                    tensor.copy_(staged)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            else:
                fut.set_result(outputs)

        self._worker.submit(job)
        return _Work(fut)

    def _delegate(self, call, outputs, inputs=(), op=None):
        """An operation Gloo does itself (``call(outputs, inputs)`` returns its Work), on the
        same stand-ins and in issue order with the plan collectives."""
        return self._submit(lambda outs, ins: call(outs, ins).wait(), outputs, inputs, op)

    def _each(self, kind: str, op=_R.SUM):
        """A job running the ``kind`` collective on each (output, input) pair."""

        def run(outputs, inputs):
            for output, input in zip(outputs, inputs):
                self._collective(kind, output, input, op)

        return run

    def _executor(self, plan, ce: int, dtype: np.dtype, redop: str) -> PlanExecutor:
        key = (id(plan), ce, dtype.str, redop)
        ex = self._executors.pop(key, None)
        if ex is None:
            transport = self._transport
            # jobs run on the worker, which shutdown() stops before it drops the transport
            assert transport is not None, "the group was shut down"
            ex = PlanExecutor(plan, transport, self.rank(), self.size(), ce, dtype, redop)
            if len(self._executors) >= EXECUTOR_CACHE:
                self._executors.pop(next(iter(self._executors)))
        self._executors[key] = ex  # most recently used last
        return ex

    def _collective(self, kind: str, output: torch.Tensor, input: torch.Tensor, op=_R.SUM) -> None:
        """``output`` ← the ``kind`` collective of every rank's ``input`` (contiguous tensors,
        taken as flat arrays); ``op`` is one of :data:`REDUCE`."""
        check_pair(kind, output, input, op, self.size())
        if input.numel() == 0:
            return
        output, input = output.view(-1), input.view(-1)
        self._cpu(kind, output, input, REDUCE[op])
        if op == _R.AVG:
            output.div_(self.size())

    def _cpu(self, kind: str, output: torch.Tensor, input: torch.Tensor, red: str) -> None:
        """:meth:`_collective` on flat contiguous CPU tensors."""
        if output.dtype == torch.bfloat16:  # no NumPy dtype: raw bits, or reduced in float32
            if kind in (ALLREDUCE, REDUCESCATTER):
                wide = torch.empty(output.shape, dtype=torch.float32)
                self._cpu(kind, wide, input.float(), red)
                output.copy_(wide)
                return
            output, input = output.view(torch.int16), input.view(torch.int16)
        send, recv = input.numpy(), output.numpy()
        n = self.size()
        nbytes = max(send.nbytes, recv.nbytes)
        elems = max(send.size, recv.size)
        inplace = kind == ALLREDUCE and np.shares_memory(send, recv)
        plan = self._library.choose(kind, n, nbytes, elems, inplace)
        chunks = plan.nchunksperloop
        if elems % chunks:  # only AllReduce gets here: pad to whole chunks
            if kind != ALLREDUCE:
                raise TacclError(
                    f"{kind} of {elems} elements does not split into the plan's {chunks} chunks"
                )
            pad = chunks - elems % chunks
            send = np.concatenate([send, np.zeros(pad, send.dtype)])
            padded = np.empty_like(send)
            self._run(plan, send, padded, red)
            recv[...] = padded[:elems]
        else:
            if np.shares_memory(send, recv) and not plan.inplace:
                send = send.copy()
            self._run(plan, send, recv, red)

    def _run(self, plan, send: np.ndarray, recv: np.ndarray, red: str) -> None:
        coll = plan.collective()
        ce = send.size // coll.i_chunks
        self._executor(plan, ce, send.dtype, red).run(send, recv, self._timeout)

    def _gpu(self, *tensors):
        """The CUDA runner when ``tensors`` (nested lists) are CUDA tensors, else None."""
        self._check_live()
        from . import cuda

        flat = cuda.flatten(tensors)
        on_gpu = [cuda.BRIDGE.is_cuda(t) for t in flat]
        if not any(on_gpu):
            return None
        if not all(on_gpu):
            raise TacclError("a call's tensors must all be CUDA tensors or all CPU tensors")
        if self._cuda is None:
            self._cuda = cuda.CudaRunner(
                self._store, self.rank(), self.size(), self._library, self._timeout, self._blocking
            )
        return self._cuda

    # -- collectives (both the torch <= 2.12 and the 2.13 method names) ------------------
    def allreduce(self, tensors, opts=None):
        op = reduce_op(opts)
        if gpu := self._gpu(tensors):
            return gpu.reduction(ALLREDUCE, [(t, t) for t in tensors], op)
        if op not in REDUCE:
            return self._delegate(lambda ts, _: self._gloo.allreduce(ts, opts), tensors, op=op)
        return self._submit(lambda ts, _: self._each(ALLREDUCE, op)(ts, ts), tensors, op=op)

    def allreduce_coalesced(self, tensors, opts=None):
        op = reduce_op(opts)
        if gpu := self._gpu(tensors):
            return gpu.reduction(ALLREDUCE, [(t, t) for t in tensors], op)
        if op not in REDUCE:
            return self._delegate(
                lambda ts, _: self._gloo.allreduce_coalesced(ts, opts), tensors, op=op
            )
        return self._submit(lambda ts, _: self._each(ALLREDUCE, op)(ts, ts), tensors, op=op)

    def allgather(self, output_tensors, input_tensors, opts=None):
        if gpu := self._gpu(output_tensors, input_tensors):
            (parts,), (t,) = output_tensors, input_tensors
            return gpu.allgather_list(parts, t)

        def run(outs, ins):
            (parts,), (t,) = outs, ins
            check_list("all_gather", parts, t, self.size())
            flat = torch.empty(self.size(), t.numel(), dtype=t.dtype, device=t.device)
            self._collective(ALLGATHER, flat, t)
            for part, row in zip(parts, flat):
                part.copy_(row.view_as(part))

        return self._submit(run, output_tensors, input_tensors)

    def all_gather_single(self, output, input, opts=None):
        if gpu := self._gpu(output, input):
            return gpu.moves(ALLGATHER, [(output, input)])
        return self._submit(self._each(ALLGATHER), [output], [input])

    _allgather_base = all_gather_single

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        if gpu := self._gpu(outputs, inputs):
            return gpu.moves(ALLGATHER, list(zip(outputs, inputs)))
        return self._submit(self._each(ALLGATHER), outputs, inputs)

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        if gpu := self._gpu(output, input):
            if (
                not output_split_sizes
                and not input_split_sizes
                and input.dim()
                and input.shape[0] % self.size() == 0
            ):
                return gpu.moves(ALLTOALL, [(output, input)])
            return gpu.alltoall_split(output, input, output_split_sizes, input_split_sizes)
        # split sizes are Gloo's: only all of them tell whether the blocks are even, and
        # every rank must choose the same way
        if (
            not output_split_sizes
            and not input_split_sizes
            and input.dim()
            and input.shape[0] % self.size() == 0
        ):
            return self._submit(self._each(ALLTOALL), [output], [input])
        return self._delegate(
            lambda o, i: self._gloo.alltoall_base(
                o[0], i[0], output_split_sizes, input_split_sizes
            ),
            [output],
            [input],
        )

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        """Gloo's all-to-all with split sizes (whether another rank's tensors differ in size
        is unknown here), which unlike Gloo's own list version takes uneven tensors."""
        if gpu := self._gpu(output_tensors, input_tensors):
            return gpu.alltoall_list(output_tensors, input_tensors)

        def run(outs, ins):
            sizes = [t.numel() for t in outs]
            flat = torch.empty(sum(sizes), dtype=outs[0].dtype, device=outs[0].device)
            send = torch.cat([t.reshape(-1) for t in ins])
            self._gloo.alltoall_base(flat, send, sizes, [t.numel() for t in ins]).wait()
            for o, part in zip(outs, flat.split(sizes)):
                o.copy_(part.view_as(o))

        return self._submit(run, output_tensors, input_tensors)

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        op = reduce_op(opts)
        if gpu := self._gpu(output_tensors, input_tensors):
            (out,), (parts,) = output_tensors, input_tensors
            return gpu.reduce_scatter_list(out, parts, op)
        if op not in REDUCE:
            return self._delegate(
                lambda o, i: self._gloo.reduce_scatter(_map(_flat, o), _map(_flat, i), opts),
                output_tensors,
                input_tensors,
                op,
            )

        def run(outs, ins):
            (out,), (parts,) = outs, ins
            check_list("reduce_scatter", parts, out, self.size())
            self._collective(REDUCESCATTER, out, torch.cat([t.reshape(-1) for t in parts]), op)

        return self._submit(run, output_tensors, input_tensors, op)

    def reduce_scatter_single(self, output, input, opts=None):
        return self.reduce_scatter_tensor_coalesced([output], [input], opts)

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        op = reduce_op(opts)
        if gpu := self._gpu(outputs, inputs):
            return gpu.reduction(REDUCESCATTER, list(zip(outputs, inputs)), op)
        if op in REDUCE:
            return self._submit(self._each(REDUCESCATTER, op), outputs, inputs, op)

        def gloo(outs, ins):
            for o, i in zip(outs, ins):
                self._gloo._reduce_scatter_base(_flat(o), _flat(i), opts).wait()

        return self._submit(gloo, outputs, inputs, op)

    # -- delegated to Gloo (in issue order) -----------------------------------------------
    def barrier(self, opts=None):
        return self._delegate(lambda *_: self._gloo.barrier(), [])

    def broadcast(self, tensors, opts):
        if gpu := self._gpu(tensors):
            return gpu.broadcast(tensors, opts.rootRank)
        return self._delegate(lambda ts, _: self._gloo.broadcast(ts, opts), tensors)

    def reduce(self, tensors, opts):
        if gpu := self._gpu(tensors):
            return gpu.reduce(tensors, opts.rootRank, reduce_op(opts))
        return self._delegate(
            lambda ts, _: self._gloo.reduce(ts, opts), tensors, op=reduce_op(opts)
        )

    def gather(self, output_tensors, input_tensors, opts):
        if gpu := self._gpu(output_tensors, input_tensors):
            return gpu.gather(
                output_tensors[0] if output_tensors else [], input_tensors[0], opts.rootRank
            )
        return self._delegate(
            lambda o, i: self._gloo.gather(o, i, opts), output_tensors, input_tensors
        )

    def scatter(self, output_tensors, input_tensors, opts):
        if gpu := self._gpu(output_tensors, input_tensors):
            return gpu.scatter(
                output_tensors[0], input_tensors[0] if input_tensors else [], opts.rootRank
            )
        return self._delegate(
            lambda o, i: self._gloo.scatter(o, i, opts), output_tensors, input_tensors
        )

    def send(self, tensors, dstRank, tag):  # noqa: N803 - torch's keyword names
        if gpu := self._gpu(tensors):
            return gpu.send(tensors, dstRank)
        return self._gloo.send(tensors, dstRank, tag)

    def recv(self, tensors, srcRank, tag):  # noqa: N803
        if gpu := self._gpu(tensors):
            return gpu.recv(tensors, srcRank)
        return self._gloo.recv(tensors, srcRank, tag)

    def recv_anysource(self, tensors, tag):
        if self._gpu(tensors):
            raise TacclError(
                "recv from any source is not supported on CUDA tensors (NCCL "
                "point-to-point names its peer)"
            )
        return self._gloo.recv_anysource(tensors, tag)


def _map(fn, tensors):
    """``tensors`` (a tensor, or lists of them) with ``fn`` applied to each tensor."""
    if isinstance(tensors, (list, tuple)):
        return [_map(fn, t) for t in tensors]
    return fn(tensors)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor as 1-d (Gloo checks shapes that plans take as flat)."""
    return tensor.view(-1)


def _stand_in(
    tensor: torch.Tensor, written: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """``tensor`` itself when contiguous, else a contiguous copy, noted in ``written`` as
    (tensor, copy) to be copied back."""
    tensor = tensor.detach()
    if tensor.is_contiguous():
        return tensor
    check_output(tensor)
    staged = tensor.contiguous()
    written.append((tensor, staged))
    return staged


@atexit.register
def _shutdown_live_groups() -> None:
    for group in list(_LIVE):
        group.shutdown()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")

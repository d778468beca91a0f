"""``TacclProcessGroup``: torch.distributed collectives run by taccl plans.

CPU tensors: the plan's messages go over an inner Gloo group (one Gloo group for plan
traffic, another for point-to-point calls and the operations delegated to Gloo: barrier,
broadcast, reduce, gather, scatter, uneven all-to-all). CUDA tensors: NCCL point-to-point
through CuPy (:mod:`taccl_py.runtime.cuda_exec`). Collectives run in issue order on one
worker thread; every call returns a ``Work`` whose future carries the output tensors, so
``async_op=True`` overlaps with the caller.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime

import numpy as np
import torch
import torch.distributed as dist

from ..collectives import ALLGATHER, ALLREDUCE, ALLTOALL, REDUCESCATTER
from ..errors import TacclError
from ..runtime.executor import PlanExecutor
from .gloo_transport import GlooTransport
from .library import PlanLibrary

_R = dist.ReduceOp.RedOpType
REDUCE = {_R.SUM: "sum", _R.AVG: "sum", _R.PRODUCT: "prod", _R.MIN: "min", _R.MAX: "max"}
#: executors kept per group (each holds its compiled program and receive temporaries)
EXECUTOR_CACHE = 32


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

    def __init__(self, store, rank: int, size: int, timeout: datetime.timedelta,
                 plan_dir=None, cache_dir=None) -> None:
        super().__init__(rank, size)
        self._store, self._timeout = store, timeout.total_seconds()
        self._library = PlanLibrary(plan_dir, cache_dir)
        # Gloo's own timeout on plan messages comes later than the executor's, whose error
        # names the plan step and peer that stalled
        self._plan_pg = dist.ProcessGroupGloo(dist.PrefixStore("taccl-plan", store),
                                              rank, size, timeout * 2 + datetime.timedelta(
                                                  seconds=5))
        self._gloo = dist.ProcessGroupGloo(dist.PrefixStore("taccl-p2p", store), rank, size,
                                           timeout)
        self._transport = GlooTransport(self._plan_pg)
        self._worker = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="taccl-coll")
        self._executors: dict[tuple, PlanExecutor] = {}
        self._cuda = None  # taccl_py.torch.cuda.CudaRunner, made on the first CUDA call
        self._name = ""

    # -- identity ------------------------------------------------------------------------
    def getBackendName(self) -> str:
        return "taccl"

    def setGroupName(self, name: str) -> None:
        self._name = name

    def getGroupName(self) -> str:
        return self._name

    @property
    def group_name(self) -> str:
        return self._name

    # -- plumbing ------------------------------------------------------------------------
    def _submit(self, fn, result):
        """Run ``fn`` on the worker; the returned Work's future yields ``result``."""
        fut = torch.futures.Future()

        def job():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            else:
                fut.set_result(result)

        self._worker.submit(job)
        return _Work(fut)

    def _delegate(self, call, result):
        """An operation Gloo does itself, kept in issue order with the plan collectives."""
        return self._submit(lambda: call().wait(), result)

    def _executor(self, plan, ce: int, dtype: np.dtype, redop: str) -> PlanExecutor:
        key = (id(plan), ce, dtype.str, redop)
        ex = self._executors.pop(key, None)
        if ex is None:
            ex = PlanExecutor(plan, self._transport, self.rank(), self.size(), ce, dtype,
                              redop)
            if len(self._executors) >= EXECUTOR_CACHE:
                self._executors.pop(next(iter(self._executors)))
        self._executors[key] = ex  # most recently used last
        return ex

    def _collective(self, kind: str, output: torch.Tensor, input: torch.Tensor,
                    op=None) -> None:
        """``output`` ← the ``kind`` collective of every rank's ``input`` (flat views)."""
        if output.device != input.device or output.dtype != input.dtype:
            raise TacclError(f"{kind}: input and output must share device and dtype, got "
                             f"{input.device}/{input.dtype} and {output.device}/{output.dtype}")
        n = self.size()
        expect = {ALLGATHER: input.numel() * n, REDUCESCATTER: input.numel() // n}
        if output.numel() != expect.get(kind, input.numel()) or (
                kind == REDUCESCATTER and input.numel() % n):
            raise TacclError(f"{kind} on {n} ranks: output has {output.numel()} elements for "
                             f"an input of {input.numel()}")
        if input.numel() == 0:
            return
        kind_of_op = getattr(op, "op", op) if op is not None else _R.SUM  # torch < 2.13: enum
        red = REDUCE.get(kind_of_op)
        if kind in (ALLREDUCE, REDUCESCATTER) and red is None:
            raise TacclError(f"reduce op {kind_of_op} is not supported by the taccl backend")
        if output.is_cuda:
            self._cuda_runner().run(kind, output, input, red or "sum")
        else:
            self._cpu(kind, output, input, red or "sum")
        if kind_of_op == _R.AVG:
            if not output.is_floating_point():
                raise TacclError("ReduceOp.AVG needs a floating-point tensor")
            output.div_(n)

    def _cpu(self, kind: str, output: torch.Tensor, input: torch.Tensor, red: str) -> None:
        if output.is_complex():
            raise TacclError(f"complex tensors are not supported ({output.dtype})")
        work_out = output if output.is_contiguous() else torch.empty_like(output)
        src = input.detach().contiguous()
        reduces = kind in (ALLREDUCE, REDUCESCATTER)
        convert = _numpy_dtype(output.dtype) is None
        if convert:  # bfloat16 / float8: move as raw bits, reduce in float32
            if reduces:
                send_t, recv_t = src.float(), torch.empty(work_out.shape, dtype=torch.float32)
            else:
                bits = _bits_dtype(output.dtype)
                send_t, recv_t = src.view(bits), work_out.view(bits)
        else:
            send_t, recv_t = src, work_out
        send = send_t.detach().numpy().reshape(-1)
        recv = recv_t.detach().numpy().reshape(-1)
        n = self.size()
        nbytes = max(send.nbytes, recv.nbytes)
        elems = max(send.size, recv.size)
        inplace = kind == ALLREDUCE and np.shares_memory(send, recv)
        plan = self._library.choose(kind, n, nbytes, elems, inplace)
        chunks = plan.nchunksperloop
        if elems % chunks:  # only AllReduce gets here: pad to whole chunks
            if kind != ALLREDUCE:
                raise TacclError(f"{kind} of {elems} elements does not split into the plan's "
                                 f"{chunks} chunks")
            pad = chunks - elems % chunks
            send = np.concatenate([send, np.zeros(pad, send.dtype)])
            padded = np.empty_like(send)
            self._run(plan, send, padded, red)
            recv[...] = padded[:elems]
        else:
            if np.shares_memory(send, recv) and not plan.inplace:
                send = send.copy()
            self._run(plan, send, recv, red)
        if recv_t is not work_out and convert and reduces:
            work_out.copy_(recv_t)
        if work_out is not output:
            output.copy_(work_out)

    def _run(self, plan, send: np.ndarray, recv: np.ndarray, red: str) -> None:
        coll = plan.collective()
        ce = send.size // coll.i_chunks
        self._executor(plan, ce, send.dtype, red).run(send, recv, self._timeout)

    def _cuda_runner(self):
        if self._cuda is None:
            from .cuda import CudaRunner

            self._cuda = CudaRunner(self._store, self.rank(), self.size(), self._library)
        return self._cuda

    # -- collectives (both the torch <= 2.12 and the 2.13 method names) ------------------
    def allreduce(self, tensors, opts=None):
        (t,) = tensors
        op = opts.reduceOp if opts is not None else None
        return self._submit(lambda: self._collective(ALLREDUCE, t, t, op), tensors)

    def allgather(self, output_tensors, input_tensors, opts=None):
        (outs,), (t,) = output_tensors, input_tensors

        def run():
            flat = torch.empty(t.numel() * self.size(), dtype=t.dtype, device=t.device)
            self._collective(ALLGATHER, flat, t.reshape(-1))
            for o, part in zip(outs, flat.chunk(self.size())):
                o.copy_(part.view_as(o))

        return self._submit(run, output_tensors)

    def all_gather_single(self, output, input, opts=None):
        return self._submit(
            lambda: self._collective(ALLGATHER, output.view(-1), input.reshape(-1)), [output])

    _allgather_base = all_gather_single

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        def run():
            for o, i in zip(outputs, inputs):
                self._collective(ALLGATHER, o.view(-1), i.reshape(-1))

        return self._submit(run, outputs)

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes,
                          opts=None):
        n = self.size()
        if _uneven(output_split_sizes, output, n) or _uneven(input_split_sizes, input, n):
            return self._delegate(lambda: self._gloo.alltoall_base(
                output, input, output_split_sizes, input_split_sizes), [output])
        return self._submit(
            lambda: self._collective(ALLTOALL, output.view(-1), input.reshape(-1)), [output])

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        dtype, device = output_tensors[0].dtype, output_tensors[0].device
        even = len({t.numel() for t in [*output_tensors, *input_tensors]}) == 1

        def run():
            flat = torch.empty(sum(t.numel() for t in output_tensors), dtype=dtype,
                               device=device)
            send = torch.cat([t.reshape(-1) for t in input_tensors])
            if even:
                self._collective(ALLTOALL, flat, send)
            else:  # uneven: Gloo's own all-to-all with splits
                self._gloo.alltoall_base(flat, send, [t.numel() for t in output_tensors],
                                         [t.numel() for t in input_tensors]).wait()
            for o, part in zip(output_tensors, flat.split([t.numel() for t in output_tensors])):
                o.copy_(part.view_as(o))

        return self._submit(run, output_tensors)

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        (out,), (ins,) = output_tensors, input_tensors
        op = opts.reduceOp if opts is not None else None
        return self._submit(lambda: self._collective(
            REDUCESCATTER, out.view(-1), torch.cat([t.reshape(-1) for t in ins]), op),
            output_tensors)

    def reduce_scatter_single(self, output, input, opts=None):
        op = opts.reduceOp if opts is not None else None
        return self._submit(lambda: self._collective(
            REDUCESCATTER, output.view(-1), input.reshape(-1), op), [output])

    _reduce_scatter_base = reduce_scatter_single

    def reduce_scatter_tensor_coalesced(self, outputs, inputs, opts=None):
        op = opts.reduceOp if opts is not None else None

        def run():
            for o, i in zip(outputs, inputs):
                self._collective(REDUCESCATTER, o.view(-1), i.reshape(-1), op)

        return self._submit(run, outputs)

    # -- delegated to Gloo (in issue order) -----------------------------------------------
    def barrier(self, opts=None):
        return self._delegate(lambda: self._gloo.barrier(), [])

    def broadcast(self, tensors, opts):
        return self._delegate(lambda: self._gloo.broadcast(tensors, opts), tensors)

    def reduce(self, tensors, opts):
        return self._delegate(lambda: self._gloo.reduce(tensors, opts), tensors)

    def gather(self, output_tensors, input_tensors, opts):
        return self._delegate(lambda: self._gloo.gather(output_tensors, input_tensors, opts),
                              output_tensors)

    def scatter(self, output_tensors, input_tensors, opts):
        return self._delegate(lambda: self._gloo.scatter(output_tensors, input_tensors, opts),
                              output_tensors)

    def send(self, tensors, dstRank, tag):  # noqa: N803 - torch's keyword names
        return self._gloo.send(tensors, dstRank, tag)

    def recv(self, tensors, srcRank, tag):  # noqa: N803
        return self._gloo.recv(tensors, srcRank, tag)

    def recv_anysource(self, tensors, tag):
        return self._gloo.recv_anysource(tensors, tag)


def _uneven(splits, tensor: torch.Tensor, n: int) -> bool:
    return bool(splits) and len(set(splits)) > 1 or tensor.numel() % n != 0


def _numpy_dtype(dtype: torch.dtype):
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        return None


def _bits_dtype(dtype: torch.dtype) -> torch.dtype:
    size = torch.empty(0, dtype=dtype).element_size()
    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]

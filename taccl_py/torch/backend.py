"""``TacclProcessGroup``: torch.distributed collectives run by taccl plans.

Served by plans (CPU tensors), from the group's plan library (:mod:`taccl_py.torch.library`:
built for the cluster once and cached; ``$TACCL_PLAN_DIR`` plans first):

* ``all_reduce`` (also coalesced), ``all_gather``/``all_gather_into_tensor``,
  ``reduce_scatter``/``reduce_scatter_tensor``, ``all_to_all_single``/``all_to_all``, by
  their own plans; ``all_to_all_single`` without split sizes runs the AllToAll plan on the
  tensors as they are, with split sizes (every rank must then pass them) and the list form
  pad every block to the largest (agreed by a one-element AllReduce MAX plan).
  ``all_reduce`` runs the in-place plan of its size (no copy).
* ``broadcast``, ``reduce``, ``gather``, ``scatter`` by their own plans for the call's root
  (built on first use of that root; broadcast and reduce in place, a non-root passing no
  buffer it lacks); where a rooted plan cannot be built, the unrooted plan
  that contains it serves instead (:data:`STAND_IN`), said once with the reason.
* ``barrier``: a one-byte AllReduce plan.
* Reduce ops: SUM, PRODUCT, MIN, MAX by the plan, AVG as its SUM then divided; BAND, BOR,
  BXOR by the AllGather plan and a local combine in rank order (exact); PREMUL_SUM is refused.

Served by the transport: the plans' messages, and ``send``/``recv``, which are point to point
already: an inner Gloo group on CPU. CUDA tensors (:mod:`taccl_py.torch.cuda`) run the
same plans over NCCL point-to-point: every collective above, rooted ones by their own plans
for the call's root, uneven/list all-to-all padded for the AllToAll plan; only
``send``/``recv`` use NCCL's own send/recv. No collective is delegated to NCCL or Gloo.

Collectives run in issue order on one worker thread; every call returns a ``Work`` whose
future carries the output tensors, so ``async_op=True`` overlaps with the caller. Tensors of
any layout are served: plans see contiguous stand-ins, copied back into non-contiguous
outputs; on CPU the dtypes are Gloo's (:data:`~taccl_py.torch.checks.GLOO_DTYPES`).
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
from ..runtime.executor import NO_INPUT, NO_OUTPUT, PlanExecutor
from .checks import (
    _R,
    BITWISE,
    REDUCE,
    REDUCING,
    as_real,
    check_list,
    check_output,
    check_pair,
    reduce_op,
)
from .gloo_transport import GlooTransport
from .library import PADDED, PlanLibrary

if TYPE_CHECKING:
    from torch.distributed.distributed_c10d import GroupName

    from .cuda import CudaRunner

#: executors kept per group (each holds its compiled program and receive temporaries)
EXECUTOR_CACHE = 32
#: set to 1 to make ``Work.wait()`` of CUDA collectives wait on the host (and raise a failure)
BLOCKING_WAIT_ENV = "TACCL_BLOCKING_WAIT"
#: the unrooted plan serving a rooted collective whose own plans do not build (yet): the
#: AllReduce plan sums the root's bytes with zeros (broadcast) or reduces every input (reduce),
#: the AllGather plan gathers to every rank, the AllToAll plan scatters from the root
STAND_IN = {BROADCAST: ALLREDUCE, REDUCE_KIND: ALLREDUCE, GATHER: ALLGATHER, SCATTER: ALLTOALL}
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
    """A process group whose collectives run the plans of its plan library.

    >>> import datetime, torch.distributed as dist
    >>> pg = TacclProcessGroup(dist.HashStore(), 0, 1, datetime.timedelta(seconds=30),
    ...                        cache_dir="/tmp/taccl-doc")  # doctest: +SKIP
    >>> pg.allreduce([torch.ones(4)]).wait()  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        store,
        rank: int,
        size: int,
        timeout: datetime.timedelta,
        plan_dir=None,
        cache_dir=None,
        blocking_wait: bool | None = None,
        topology=None,
        methods: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(rank, size)  # type: ignore[call-arg]  # the stub lacks (rank, size)
        self._store, self._timeout = store, timeout.total_seconds()
        # the cluster's plan library: built here by one process, loaded by the others
        self._library = PlanLibrary(
            plan_dir,
            cache_dir,
            nranks=size,
            topology=topology,
            methods=methods,
            timeout=self._timeout,
            quiet=rank != 0,
        )
        self._library.prepare()
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
        self._chunks: dict[int, tuple] = {}  # id(plan) -> (plan, input, output chunks)
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

    def _each(self, kind: str, op=_R.SUM, inplace: bool = False):
        """A job running the ``kind`` collective on each (output, input) pair."""

        def run(outputs, inputs):
            for output, input in zip(outputs, inputs):
                self._collective(kind, output, input, op, inplace=inplace)

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

    def _collective(
        self,
        kind: str,
        output: torch.Tensor,
        input: torch.Tensor,
        op=_R.SUM,
        root: int = 0,
        inplace: bool = False,
    ) -> None:
        """``output`` ← the ``kind`` collective (rooted at ``root``) of every rank's ``input``
        (contiguous tensors, taken as flat arrays) reduced by ``op``; ``inplace``: run an
        in-place plan (every rank must pass the same). A rooted collective's non-root leaves
        ``output`` untouched where it gets none (reduce, gather) and does not read ``input``
        where it has none (broadcast, scatter)."""
        n = self.size()
        check_pair(kind, output, input, op if kind in REDUCING else None, n)
        if not max(input.numel(), output.numel()):
            return
        output, input = output.view(-1), input.view(-1)
        if op in BITWISE:
            self._bitwise(kind, output, input, op, root)
            return
        out: torch.Tensor | None = output
        src: torch.Tensor | None = input
        if self.rank() != root:
            if kind in NO_OUTPUT:
                out = None
            elif kind in NO_INPUT:
                src = None
        self._cpu(kind, out, src, REDUCE[op] if kind in REDUCING else "sum", root, inplace)
        if op == _R.AVG and kind in REDUCING and out is not None:
            out.div_(n)

    def _bitwise(self, kind: str, output: torch.Tensor, input: torch.Tensor, op, root: int):
        """A bitwise reduction (no plan does one): the AllGather plan brings every rank's
        input, which are combined here in rank order."""
        n, size = self.size(), input.numel()
        every = torch.empty(n * size, dtype=input.dtype)
        self._cpu(ALLGATHER, every, input, "sum")
        total = every[:size].clone()
        for q in range(1, n):
            BITWISE[op](total, every[q * size : (q + 1) * size], out=total)
        if kind == REDUCESCATTER:
            total = total[self.rank() * output.numel() :][: output.numel()]
        if kind != REDUCE_KIND or self.rank() == root:
            output.copy_(total)

    def _cpu(
        self,
        kind: str,
        output: torch.Tensor | None,
        input: torch.Tensor | None,
        red: str,
        root: int = 0,
        inplace: bool = False,
    ) -> None:
        """:meth:`_collective` on flat contiguous CPU tensors (None: a non-root's missing
        buffer), with a plan reduce op; ``inplace`` asks for an in-place plan."""
        some = output if output is not None else input
        assert some is not None
        if some.dtype == torch.bfloat16:  # no NumPy dtype: raw bits, or reduced in float32
            if kind in REDUCING:
                wide_in = None if input is None else input.float()
                wide = None
                if output is not None:
                    same = inplace and wide_in is not None
                    wide = wide_in if same else torch.empty(output.shape, dtype=torch.float32)
                self._cpu(kind, wide, wide_in, red, root, inplace)
                if output is not None and wide is not None:
                    output.copy_(wide)
                return
            output = None if output is None else output.view(torch.int16)
            input = None if input is None else input.view(torch.int16)
        send = None if input is None else input.numpy()
        recv = None if output is None else output.numpy()
        n = self.size()
        elems = _elems(kind, send, recv, n)
        nbytes = elems * some.element_size()
        plan = self._library.choose(kind, n, nbytes, elems, inplace, root)
        chunks = plan.nchunksperloop
        pad = -elems % chunks
        if pad:  # the whole-buffer kinds: pad to whole chunks
            if kind not in PADDED:
                raise TacclError(
                    f"{kind} of {elems} elements does not split into the plan's {chunks} chunks"
                )
            if send is not None:
                send = np.concatenate([send, np.zeros(pad, send.dtype)])
            work = None
            if recv is not None:
                work = (
                    send if plan.inplace and send is not None else np.empty(elems + pad, recv.dtype)
                )
            self._run(plan, send, work, red)
            if recv is not None and work is not None:
                recv[...] = work[:elems]
            return
        if send is not None and recv is not None and np.shares_memory(send, recv):
            if not (plan.inplace and _same(send, recv)):
                send = send.copy()
        self._run(plan, send, recv, red)

    def _blocks(self, outs: list[torch.Tensor], ins: list[torch.Tensor]) -> None:
        """All-to-all of flat blocks of any sizes: ``outs[q]`` ← rank q's ``ins[rank]``. The
        ranks agree on the largest block (an AllReduce MAX), and every block is padded to it
        for the AllToAll plan."""
        n = self.size()
        largest = torch.tensor([max(t.numel() for t in (*outs, *ins))], dtype=torch.int64)
        self._collective(ALLREDUCE, largest, largest, _R.MAX, inplace=True)
        block = int(largest.item())
        if not block:
            return
        dtype = ins[0].dtype
        send = torch.empty(n * block, dtype=dtype)  # the padding is sent but never read
        for q, t in enumerate(ins):
            send[q * block : q * block + t.numel()] = t
        every = torch.empty(n * block, dtype=dtype)
        self._collective(ALLTOALL, every, send)
        for q, t in enumerate(outs):
            t.copy_(every[q * block : q * block + t.numel()])

    def _run(self, plan, send: np.ndarray | None, recv: np.ndarray | None, red: str) -> None:
        chunks = self._chunks.get(id(plan))
        if chunks is None or chunks[0] is not plan:
            coll = plan.collective()
            chunks = self._chunks[id(plan)] = (plan, coll.i_chunks, coll.o_chunks)
        if send is not None:
            ce, dtype = send.size // chunks[1], send.dtype
        else:
            assert recv is not None
            ce, dtype = recv.size // chunks[2], recv.dtype
        self._executor(plan, ce, dtype, red).run(send, recv, self._timeout)

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
        run = self._each(ALLREDUCE, op, inplace=True)
        return self._submit(lambda ts, _: run(ts, ts), tensors, op=op)

    def allreduce_coalesced(self, tensors, opts=None):
        return self.allreduce(tensors, opts)

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

        n = self.size()
        if not output_split_sizes and not input_split_sizes and _even(input, output, n):
            # even blocks on every rank: the AllToAll plan straight on the flat tensors
            return self._submit(self._each(ALLTOALL), [output], [input])

        def run(outs, ins):
            (out,), (inp,) = outs, ins
            check_pair(ALLTOALL, out, out, None, self.size())
            check_pair(ALLTOALL, inp, inp, None, self.size())
            self._blocks(
                _rows("output", out, output_split_sizes, self.size()),
                _rows("input", inp, input_split_sizes, self.size()),
            )

        return self._submit(run, [output], [input])

    alltoall_base = all_to_all_single

    def alltoall(self, output_tensors, input_tensors, opts=None):
        """All-to-all of tensor lists, whose tensors may differ in size (unlike Gloo's)."""
        if gpu := self._gpu(output_tensors, input_tensors):
            return gpu.alltoall_list(output_tensors, input_tensors)

        def run(outs, ins):
            n = self.size()
            if len(outs) != n or len(ins) != n:
                raise TacclError(
                    f"all_to_all on {n} ranks needs {n} output and {n} input tensors, got "
                    f"{len(outs)} and {len(ins)}"
                )
            for t in (*outs, *ins):
                check_pair(ALLTOALL, t, t, None, n)  # a dtype that plans carry
                if t.dtype != outs[0].dtype:
                    raise TacclError(
                        f"all_to_all: tensors of {t.dtype} and {outs[0].dtype} in one call"
                    )
            self._blocks([t.view(-1) for t in outs], [t.view(-1) for t in ins])

        return self._submit(run, output_tensors, input_tensors)

    def reduce_scatter(self, output_tensors, input_tensors, opts=None):
        op = reduce_op(opts)
        if gpu := self._gpu(output_tensors, input_tensors):
            (out,), (parts,) = output_tensors, input_tensors
            return gpu.reduce_scatter_list(out, parts, op)

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
        return self._submit(self._each(REDUCESCATTER, op), outputs, inputs, op)

    def barrier(self, opts=None):
        """A one-byte AllReduce, run by its plan."""

        def run(*_):
            self._library.announce_text("barrier: served by a 1-byte allreduce")
            self._collective(ALLREDUCE, *[torch.zeros(1, dtype=torch.uint8)] * 2, inplace=True)

        return self._submit(run, [])

    # -- rooted collectives: their own plans for the call's root, built on first use ------
    def _rooted(self, kind: str, root: int) -> bool:
        """Whether ``kind`` rooted at ``root`` has plans; if not, the unrooted plan that
        serves it (:data:`STAND_IN`) is announced once with the reason."""
        if not 0 <= root < self.size():
            raise TacclError(f"{kind}: root {root} is not a rank of {self.size()}")
        why = self._library.unavailable(kind, root)
        if why:
            self._library.announce_text(
                f"{kind} root {root}: no {kind} plan ({why}); served by the {STAND_IN[kind]} plan"
            )
        return not why

    def broadcast(self, tensors, opts):
        root = opts.rootRank
        if gpu := self._gpu(tensors):
            return gpu.broadcast(tensors, root)

        def run(ts, _):
            for t in ts:
                check_pair(BROADCAST, t, t, None, self.size())
                if not t.numel():
                    continue
                flat = t.view(-1)
                if self._rooted(BROADCAST, root):  # in place: the root's tensor is its input
                    self._collective(BROADCAST, flat, flat, root=root, inplace=True)
                    continue
                # the AllReduce plan sums the bytes: the root's, zeros elsewhere (exact)
                raw = flat.view(torch.uint8)
                if self.rank() != root:
                    raw.zero_()
                self._collective(ALLREDUCE, raw, raw, inplace=True)

        return self._submit(run, tensors)

    def reduce(self, tensors, opts):
        root, op = opts.rootRank, reduce_op(opts)
        if gpu := self._gpu(tensors):
            return gpu.reduce(tensors, root, op)

        def run(ts, _):
            for t in ts:
                # other ranks' tensors are left as they were
                if self._rooted(REDUCE_KIND, root):  # in place; non-roots get no output
                    self._collective(REDUCE_KIND, t, t, op, root, inplace=True)
                    continue
                out = t if self.rank() == root else torch.empty_like(t)
                self._collective(ALLREDUCE, out, t, op)

        return self._submit(run, tensors, op=op)

    def gather(self, output_tensors, input_tensors, opts):
        root = opts.rootRank
        if gpu := self._gpu(output_tensors, input_tensors):
            return gpu.gather(output_tensors[0] if output_tensors else [], input_tensors[0], root)

        def run(outs, ins):
            (t,) = ins
            n = self.size()
            if self.rank() == root:
                check_list("gather", outs[0] if outs else [], t, n)
            flat = torch.empty(n, t.numel(), dtype=t.dtype)  # a non-root's is not written
            kind = GATHER if self._rooted(GATHER, root) else ALLGATHER
            self._collective(kind, flat, t, root=root)
            if self.rank() == root:
                for part, row in zip(outs[0], flat):
                    part.copy_(row.view_as(part))

        return self._submit(run, output_tensors, input_tensors)

    def scatter(self, output_tensors, input_tensors, opts):
        root = opts.rootRank
        if gpu := self._gpu(output_tensors, input_tensors):
            return gpu.scatter(output_tensors[0], input_tensors[0] if input_tensors else [], root)

        def run(outs, ins):
            (out,) = outs
            n, e = self.size(), out.numel()
            if self.rank() == root:
                parts = ins[0] if ins else []
                check_list("scatter", parts, out, n)
                send = torch.cat([p.reshape(-1) for p in parts])
            else:  # not read by the Scatter plan; the AllToAll plan's blocks are dropped
                send = torch.empty(n * e, dtype=out.dtype)
            if self._rooted(SCATTER, root):
                self._collective(SCATTER, out, send, root=root)
                return
            # the AllToAll plan: every rank keeps the block the root sent it
            every = torch.empty(n * e, dtype=out.dtype)
            self._collective(ALLTOALL, every, send)
            out.view(-1).copy_(every[root * e : (root + 1) * e])

        return self._submit(run, output_tensors, input_tensors)

    # -- point-to-point: the transport's own send and receive --------------------------------
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


def _elems(kind: str, send: np.ndarray | None, recv: np.ndarray | None, n: int) -> int:
    """Elements in the larger buffer of a ``kind`` call, alike on every rank (a rooted
    collective's non-root passes None for the buffer it lacks)."""
    if send is not None and recv is not None:
        return max(send.size, recv.size)
    if kind == GATHER and send is not None:
        return n * send.size
    if kind == SCATTER and recv is not None:
        return n * recv.size
    known = send if send is not None else recv
    assert known is not None
    return known.size


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two flat arrays are the very same memory."""
    return a.ctypes.data == b.ctypes.data and a.nbytes == b.nbytes


def _even(input: torch.Tensor, output: torch.Tensor, n: int) -> bool:
    """Whether an all-to-all without split sizes cuts ``input`` and ``output`` into ``n``
    equal blocks of rows (else :func:`_rows` says why not)."""
    return (
        input.dim() > 0
        and output.dim() > 0
        and input.shape[0] % n == 0
        and output.shape[0] % n == 0
        and input.numel() == output.numel()
    )


def _rows(name: str, tensor: torch.Tensor, splits, n: int) -> list[torch.Tensor]:
    """A contiguous tensor cut on dim 0 into ``n`` flat blocks of ``splits`` rows (even
    without them)."""
    if not tensor.dim():
        raise TacclError(f"all_to_all_single: the {name} needs at least one dimension")
    rows = tensor.shape[0]
    per = tensor[0].numel() if rows else 0
    if not splits:
        if rows % n:
            raise TacclError(
                f"all_to_all_single: the {name}'s {rows} rows do not split evenly over {n} ranks"
            )
        splits = [rows // n] * n
    splits = [int(s) for s in splits]
    if len(splits) != n or sum(splits) != rows or min(splits) < 0:
        raise TacclError(
            f"all_to_all_single: {name} split sizes {splits} do not cut its {rows} rows "
            f"into {n} blocks"
        )
    flat, at, blocks = tensor.view(-1), 0, []
    for k in splits:
        blocks.append(flat[at * per : (at + k) * per])
        at += k
    return blocks


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

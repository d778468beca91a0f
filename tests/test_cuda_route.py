"""The GPU path on the CPU stand-in: the NCCL plan executor and the torch backend's CUDA route.

Ranks are threads; each plays ``torch.cuda.set_device(rank)`` in its own thread, as under
``torchrun``. The stand-in (:mod:`taccl_py.testing.fake_cuda`, :mod:`taccl_py.testing.fake_torch`)
keeps CUDA's per-thread current device and stream, fills new memory with garbage, matches
NCCL sends to receives FIFO, refuses two ranks on one GPU, and reports a hang instead of
hanging.
"""

from __future__ import annotations

import datetime
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

import taccl_py.torch as tt  # noqa: E402
from taccl_py.build.pipeline import build_plan  # noqa: E402
from taccl_py.collectives import KINDS, ROOTED_KINDS, Collective  # noqa: E402
from taccl_py.errors import TacclError  # noqa: E402
from taccl_py.plan.model import has_input, has_output  # noqa: E402
from taccl_py.runtime.cuda_exec import NcclPlanExecutor  # noqa: E402
from taccl_py.runtime.reference import numpy_result  # noqa: E402
from taccl_py.testing.fake_cuda import FakeCuda, FakeHang  # noqa: E402
from taccl_py.testing.fake_torch import FakeTorch  # noqa: E402
from taccl_py.topology.model import FULL_BISECTION, Link, Topology  # noqa: E402

R = dist.ReduceOp


class StreamRef:
    """A raw stream pointer in the CUDA stream protocol (``Stream.from_external``)."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.ptr)


@pytest.fixture
def gpus():
    """Four fake GPUs, installed as ``cupy`` and as torch's CUDA side."""
    fake = FakeCuda(devices=4, hang_timeout=8.0)
    ft = FakeTorch(fake)
    with fake.installed(), ft.installed():
        yield ft


def ring(n: int) -> Topology:
    links = [Link(a, b, 25e9, 0.7e-6) for a in range(n) for b in {(a + 1) % n, (a - 1) % n}]
    return Topology(f"ring{n}", n, 1, tuple(links), (), (), FULL_BISECTION)


def on_ranks(n: int, body, timeout: float = 30.0):
    """``body(rank)`` on ``n`` threads; the first error is raised."""
    results, errors = [None] * n, [None] * n

    def one(r: int) -> None:
        try:
            results[r] = body(r)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors[r] = exc

    threads = [threading.Thread(target=one, args=(r,), name=f"rank{r}") for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    for exc in errors:
        if exc is not None:
            raise exc
    return results


#: the methods the tests' plan libraries are built with (as in test_torch_backend)
FAST = ("milp", "ring", "direct")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One plan cache for the module's groups (each collective and root built once)."""
    return tmp_path_factory.mktemp("taccl-cache")


def groups(n: int, tmp_path, body, timeout_s: float = 20.0, rank_kw=None, **kw):
    """``body(pg, rank)`` with a taccl process group per rank thread, each rank on its own
    GPU (``torch.cuda.set_device(rank)`` in the rank's thread); ``rank_kw(rank)`` adds
    options of one rank's group; plans are cached under ``tmp_path / "cache"``."""
    kw.setdefault("methods", FAST)
    store = dist.HashStore()

    def one(r: int):
        torch.cuda.set_device(r)
        pg = tt.TacclProcessGroup(
            dist.PrefixStore("t", store),
            r,
            n,
            datetime.timedelta(seconds=timeout_s),
            cache_dir=tmp_path / "cache",
            **kw,
            **(rank_kw(r) if rank_kw else {}),
        )
        try:
            return body(pg, r)
        finally:
            pg.shutdown()

    return on_ranks(n, one, timeout=timeout_s * 3 + 60)  # a hang guard: the plan library
    # may be built first; the tests time what they promise themselves


# -- the executor ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.int16, np.uint16, np.bool_])
def test_executor_every_collective_and_dtype(gpus, n, kind, dtype):
    if dtype == np.bool_ and kind in ("allreduce", "reducescatter"):
        dtype = np.uint8
    cp = gpus.fake.cupy
    nccl = cp.cuda.nccl
    plan = build_plan(ring(n), Collective(kind, n, 2), "ring").plan
    coll = plan.collective()
    ce = 33
    rng = np.random.default_rng(n)
    inputs = [rng.integers(0, 50, coll.i_chunks * ce).astype(dtype) for _ in range(n)]
    uid = nccl.get_unique_id()

    def rank(r: int):
        with cp.cuda.Device(r):
            comm = nccl.NcclCommunicator(n, uid, r)
            ex = NcclPlanExecutor(plan, comm, r, ce, dtype)
            send = cp.asarray(inputs[r])
            recv = cp.empty(coll.o_chunks * ce, dtype)
            ex.run(send, recv)
            ex.run(send, recv)  # reusable
            return cp.asnumpy(recv)

    for got, want in zip(on_ranks(n, rank), numpy_result(coll, inputs)):
        np.testing.assert_array_equal(got, want)


def _rooted_buffers(cp, coll: Collective, r: int, x: np.ndarray, ce: int, none: bool):
    """Rank ``r``'s (send, recv) device arrays for a rooted plan: in place, views of one
    buffer laid out as MSCCL's runtimes do; ``none``: None where the rank has no input or
    output. Every byte outside the input starts as -7."""
    no_in, no_out = none and not has_input(coll, r), none and not has_output(coll, r)
    if coll.inplace:
        buf = cp.asarray(np.full(max(coll.i_chunks, coll.o_chunks) * ce, -7, x.dtype))
        in_off = coll.inplace_input(r, 0)[1] * ce if coll.i_chunks < coll.o_chunks else 0
        out_off = coll.inplace_output(r, 0)[1] * ce if coll.o_chunks < coll.i_chunks else 0
        buf[in_off : in_off + x.size] = cp.asarray(x)
        send, recv = buf[in_off : in_off + x.size], buf[out_off : out_off + coll.o_chunks * ce]
    else:
        send = cp.asarray(x)
        recv = cp.asarray(np.full(coll.o_chunks * ce, -7, x.dtype))
    return (None if no_in else send), (None if no_out else recv)


ROOTED_EXEC = [
    (kind, method, inplace, none)
    for kind in ROOTED_KINDS
    for method in ("direct", "ring")
    for inplace in (False, True)
    for none in (True, False)
]


@pytest.mark.parametrize(
    "kind,method,inplace,none", ROOTED_EXEC, ids=lambda v: str(v) if v is not None else ""
)
def test_executor_rooted_plans_per_rank_buffers(gpus, kind, method, inplace, none):
    """Rooted plans (root 2 of 4) whose non-roots have 0-chunk buffers: ``None`` where a rank
    has no input / no output, or full buffers everywhere; the root's result is NumPy's, and
    a non-root's output that the collective does not give is left as it was."""
    cp = gpus.fake.cupy
    nccl = cp.cuda.nccl
    n, root, ce = 4, 2, 5
    plan = build_plan(ring(n), Collective(kind, n, 2, inplace, root), method).plan
    coll = plan.collective()
    rng = np.random.default_rng(len(kind) + 10 * inplace)
    inputs = [rng.integers(0, 99, coll.i_chunks * ce).astype(np.int32) for _ in range(n)]
    uid = nccl.get_unique_id()

    def rank(r: int):
        with cp.cuda.Device(r):
            comm = nccl.NcclCommunicator(n, uid, r)
            ex = NcclPlanExecutor(plan, comm, r, ce, np.int32)
            runs = []
            for _ in range(2):  # reusable (fresh buffers: in place, the input is overwritten)
                send, recv = _rooted_buffers(cp, coll, r, inputs[r], ce, none)
                before = None if recv is None else cp.asnumpy(recv)
                ex.run(send, recv)
                runs.append((before, None if recv is None else cp.asnumpy(recv)))
            return runs

    want = numpy_result(coll, inputs)
    for r, runs in enumerate(on_ranks(n, rank)):
        for before, got in runs:
            if has_output(coll, r):
                assert got is not None
                np.testing.assert_array_equal(got, want[r])
            elif none:
                assert got is None
            elif not inplace:  # a buffer this rank has no output in: not written
                np.testing.assert_array_equal(got, before)


@pytest.mark.parametrize("kind", ROOTED_KINDS)
@pytest.mark.parametrize("inplace", [False, True])
def test_single_device_rooted_plans(kind, inplace):
    """run_single_device (HostDevice, streams interleaved at random) on rooted plans whose
    non-roots have 0-chunk buffers: NumPy's result; ranks without output get empty arrays."""
    from taccl_py.runtime.cuda_exec import HostDevice, run_single_device

    plan = build_plan(ring(4), Collective(kind, 4, 2, inplace, root=1), "ring").plan
    coll = plan.collective()
    rng = np.random.default_rng(3)
    inputs = [rng.integers(-50, 50, coll.i_chunks * 3) for _ in range(4)]
    outs = run_single_device(plan, inputs, HostDevice(seed=5))
    for r, (got, want) in enumerate(zip(outs, numpy_result(coll, inputs))):
        assert got.size == (coll.o_chunks * 3 if has_output(coll, r) else 0)
        np.testing.assert_array_equal(got, want)


def test_executor_rooted_refuses_missing_buffers(gpus):
    """``None`` only where the rank has no input / no output: one clear error otherwise."""
    cp = gpus.fake.cupy
    nccl = cp.cuda.nccl
    plan = build_plan(ring(2), Collective("reduce", 2, 1, root=1), "direct").plan
    uid = nccl.get_unique_id()

    def rank(r: int):
        with cp.cuda.Device(r):
            comm = nccl.NcclCommunicator(2, uid, r)
            ex = NcclPlanExecutor(plan, comm, r, 3, np.float32)
            buf = cp.zeros(6, np.float32)
            if r == 1:
                with pytest.raises(TacclError, match="needs this rank's receive buffer"):
                    ex.run(buf, None)
            else:
                with pytest.raises(TacclError, match="needs this rank's send buffer"):
                    ex.run(None, buf)

    on_ranks(2, rank)


# -- the torch route ---------------------------------------------------------------------------


def _values(r: int, shape, dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(r)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    return torch.randint(-20, 20, shape, generator=gen).to(dtype)


@pytest.mark.parametrize("n", [2, 3])
def test_every_collective_on_each_ranks_gpu(gpus, shared_cache, n):
    """Each rank's NCCL communicator is on its own GPU (set_device in the rank's thread),
    and every torch collective gives the exact result."""
    ft = gpus

    def body(pg, r):
        dev = torch.cuda.current_device()
        x = ft.tensor(_values(r, (6, 4), torch.float32), dev)
        out = {}
        t = ft.tensor(x.as_subclass(torch.Tensor), dev)
        pg.allreduce([t]).wait()
        out["allreduce"] = ft.host(t)
        t = ft.tensor(x.as_subclass(torch.Tensor), dev)
        opts = dist.AllreduceOptions()
        opts.reduceOp = R.MAX
        pg.allreduce([t], opts).wait()
        out["max"] = ft.host(t)
        t = ft.tensor(x.as_subclass(torch.Tensor), dev)
        opts.reduceOp = R.AVG
        pg.allreduce([t], opts).wait()
        out["avg"] = ft.host(t)
        g = ft.empty((n * 6, 4), torch.float32, dev)
        pg._allgather_base(g, x).wait()
        out["allgather"] = ft.host(g)
        parts = [ft.empty((6, 4), torch.float32, dev) for _ in range(n)]
        pg.allgather([parts], [x]).wait()
        out["allgather_list"] = torch.stack([ft.host(p) for p in parts])
        big = ft.tensor(_values(r, (n * 2, 4), torch.float32), dev)
        rs = ft.empty((2, 4), torch.float32, dev)
        pg._reduce_scatter_base(rs, big).wait()
        out["reducescatter"] = ft.host(rs)
        rs_list = ft.empty((2, 4), torch.float32, dev)
        pg.reduce_scatter([rs_list], [[big[2 * q : 2 * q + 2] for q in range(n)]]).wait()
        out["reducescatter_list"] = ft.host(rs_list)
        a2a = ft.empty((n * 2, 4), torch.float32, dev)
        pg.alltoall_base(a2a, big, [], []).wait()
        out["alltoall"] = ft.host(a2a)
        splits = [q + 1 for q in range(n)]  # rank r sends q + 1 rows to rank q
        src = ft.tensor(_values(r, (sum(splits), 3), torch.float32), dev)
        dst = ft.empty(((r + 1) * n, 3), torch.float32, dev)
        pg.alltoall_base(dst, src, [r + 1] * n, splits).wait()
        out["alltoall_uneven"] = ft.host(dst)
        b = ft.tensor(x.as_subclass(torch.Tensor), dev)
        bopts = dist.BroadcastOptions()
        bopts.rootRank = n - 1
        pg.broadcast([b], bopts).wait()
        out["broadcast"] = ft.host(b)
        red = ft.tensor(x.as_subclass(torch.Tensor), dev)
        ropts = dist.ReduceOptions()
        ropts.rootRank = 1
        pg.reduce([red], ropts).wait()
        out["reduce"] = ft.host(red)
        gathered = [ft.empty((6, 4), torch.float32, dev) for _ in range(n)] if r == n - 1 else []
        gopts = dist.GatherOptions()
        gopts.rootRank = n - 1
        pg.gather([gathered] if r == n - 1 else [], [x], gopts).wait()
        out["gather"] = [ft.host(t) for t in gathered]
        sc = ft.empty((6, 4), torch.float32, dev)
        sopts = dist.ScatterOptions()
        sopts.rootRank = 1
        pieces = [ft.tensor(_values(100 + q, (6, 4), torch.float32), dev) for q in range(n)]
        pg.scatter([sc], [pieces] if r == 1 else [], sopts).wait()
        out["scatter"] = ft.host(sc)
        got = ft.empty((6, 4), torch.float32, dev)
        # one NCCL stream: a send waits on the GPU until it is received, so even ranks
        # send first (the order NCCL's own point-to-point needs)
        calls = [lambda: pg.send([x], (r + 1) % n, 0), lambda: pg.recv([got], (r - 1) % n, 0)]
        for call in calls if r % 2 == 0 else calls[::-1]:
            call().wait()
        out["sendrecv"] = ft.host(got)
        return out

    res = groups(n, shared_cache, body)
    xs = [_values(r, (6, 4), torch.float32) for r in range(n)]
    bigs = [_values(r, (n * 2, 4), torch.float32) for r in range(n)]
    total = sum(xs)
    for r, out in enumerate(res):
        torch.testing.assert_close(out["allreduce"], total, rtol=0, atol=0)
        torch.testing.assert_close(out["max"], torch.stack(xs).amax(0), rtol=0, atol=0)
        torch.testing.assert_close(out["avg"], total / n)
        torch.testing.assert_close(out["allgather"], torch.cat(xs), rtol=0, atol=0)
        torch.testing.assert_close(out["allgather_list"], torch.stack(xs), rtol=0, atol=0)
        torch.testing.assert_close(out["reducescatter"], sum(bigs)[2 * r : 2 * r + 2])
        torch.testing.assert_close(out["reducescatter_list"], sum(bigs)[2 * r : 2 * r + 2])
        torch.testing.assert_close(out["alltoall"], torch.cat([b[2 * r : 2 * r + 2] for b in bigs]))
        srcs = [_values(q, (n * (n + 1) // 2, 3), torch.float32) for q in range(n)]
        start = r * (r + 1) // 2
        torch.testing.assert_close(
            out["alltoall_uneven"], torch.cat([s[start : start + r + 1] for s in srcs])
        )
        torch.testing.assert_close(out["broadcast"], xs[n - 1], rtol=0, atol=0)
        torch.testing.assert_close(out["reduce"], total if r == 1 else xs[r], rtol=0, atol=0)
        if r == n - 1:
            assert len(out["gather"]) == n
            assert all(torch.equal(a, b) for a, b in zip(out["gather"], xs))
        torch.testing.assert_close(out["scatter"], _values(100 + r, (6, 4), torch.float32))
        torch.testing.assert_close(out["sendrecv"], xs[(r - 1) % n], rtol=0, atol=0)


class PlanTraffic:
    """Counts the point-to-point calls that plan runs make (NcclPlanExecutor's groups) and
    refuses the CUDA route's own point-to-point exchange (``send``/``recv`` only)."""

    def __init__(self, monkeypatch) -> None:
        from taccl_py.torch import cuda as route

        self.calls = 0
        self.lock = threading.Lock()
        group = NcclPlanExecutor._group

        def counted(ex, bufs, rnd, stream):
            with self.lock:
                self.calls += len(rnd.sends) + len(rnd.recvs)
            return group(ex, bufs, rnd, stream)

        def refused(*args, **kw):
            raise AssertionError("a collective used NCCL's own send/recv, not a plan")

        monkeypatch.setattr(NcclPlanExecutor, "_group", counted)
        monkeypatch.setattr(route.CudaRunner, "exchange", refused)

    def check(self, log) -> None:
        """Every NCCL call in ``log`` is a plan's send or receive."""
        nccl = [c.kind for c in log if c.kind not in ("kernel", "record", "wait_event")]
        nccl = [k for k in nccl if k not in ("synchronize", "memcpy DtoH", "memcpy HtoD")]
        assert set(nccl) <= {"send", "recv"}, sorted(set(nccl))
        assert len(nccl) == self.calls > 0


def _plans_run(pg) -> set:
    """(kind, root) of the plans the group's CUDA route has executors for."""
    return {(ex.coll.kind, ex.coll.root) for ex in pg._cuda.executors.values()}


def test_rooted_and_uneven_all_to_all_run_plans_only(gpus, shared_cache, monkeypatch):
    """Broadcast, Reduce, Gather, Scatter at non-zero roots, and uneven all-to-all (splits
    with empty blocks, tensor lists of different shapes) on CUDA tensors: NumPy's results,
    by the rooted collectives' own plans and the AllToAll plan, with no NCCL collective and
    no point-to-point call outside a plan. Sizes that split into no whole number of chunks,
    a transposed tensor, bfloat16 and MAX; ``reduce`` leaves non-roots' tensors as they
    were, as NCCL's does."""
    ft, n = gpus, 3
    traffic = PlanTraffic(monkeypatch)
    b_root, r_root, g_root, s_root = n - 1, 1, n - 1, 1

    def body(pg, r):
        dev = torch.cuda.current_device()
        out = {}
        base = ft.tensor(_values(r, (3, 7), torch.int64), dev)
        opts = dist.BroadcastOptions()
        opts.rootRank = b_root
        pg.broadcast([base.t()], opts).wait()  # non-contiguous, 21 elements
        out["broadcast"] = ft.host(base)
        red = ft.tensor(_values(r, (5,), torch.bfloat16), dev)
        mx = ft.tensor(_values(r, (2, 5), torch.int32), dev)
        ropts = dist.ReduceOptions()
        ropts.rootRank = r_root
        pg.reduce([red], ropts).wait()
        ropts.reduceOp = R.MAX
        pg.reduce([mx], ropts).wait()
        out["reduce"], out["max"] = ft.host(red), ft.host(mx)
        x = ft.tensor(_values(10 + r, (5,), torch.float16), dev)
        mine = r == g_root
        gathered = [ft.empty((5,), torch.float16, dev) for _ in range(n)] if mine else []
        gopts = dist.GatherOptions()
        gopts.rootRank = g_root
        pg.gather([gathered] if mine else [], [x], gopts).wait()
        out["gather"] = [ft.host(t) for t in gathered]
        sc = ft.empty((5,), torch.uint8, dev)
        pieces = [ft.tensor(_values(20 + q, (5,), torch.uint8), dev) for q in range(n)]
        sopts = dist.ScatterOptions()
        sopts.rootRank = s_root
        pg.scatter([sc], [pieces] if r == s_root else [], sopts).wait()
        out["scatter"] = ft.host(sc)
        # rank r sends (r + q) % 3 rows to rank q: some blocks are empty
        sends = [(r + q) % 3 for q in range(n)]
        recvs = [(q + r) % 3 for q in range(n)]
        src = ft.tensor(_values(30 + r, (sum(sends), 2), torch.float32), dev)
        dst = ft.empty((sum(recvs), 2), torch.float32, dev)
        pg.alltoall_base(dst, src, recvs, sends).wait()
        out["alltoall_uneven"] = ft.host(dst)
        ins = [
            ft.tensor(_values(40 + r * n + q, (r + 1, q + 1), torch.int16), dev) for q in range(n)
        ]
        outs = [ft.empty((q + 1, r + 1), torch.int16, dev) for q in range(n)]
        pg.alltoall(outs, ins).wait()
        out["alltoall_list"] = [ft.host(t) for t in outs]
        return out, _plans_run(pg)

    res = groups(n, shared_cache, body)
    traffic.check(ft.fake.log)
    for kind, root in [("broadcast", b_root), ("reduce", r_root), ("gather", g_root)]:
        assert all((kind, root) in plans for _, plans in res), (kind, root)
    assert all(("scatter", s_root) in plans and ("alltoall", 0) in plans for _, plans in res)
    for r, (out, _) in enumerate(res):
        assert torch.equal(out["broadcast"], _values(b_root, (3, 7), torch.int64))
        bf = [_values(q, (5,), torch.bfloat16) for q in range(n)]
        ints = np.stack([_values(q, (2, 5), torch.int32).numpy() for q in range(n)])
        if r == r_root:  # bfloat16: summed in float32, rounded once
            assert torch.equal(out["reduce"], sum(t.float() for t in bf).bfloat16())
            assert np.array_equal(out["max"].numpy(), ints.max(0))
        else:  # as it was
            assert torch.equal(out["reduce"], bf[r])
            assert np.array_equal(out["max"].numpy(), ints[r])
        if r == g_root:
            want = [_values(10 + q, (5,), torch.float16) for q in range(n)]
            assert len(out["gather"]) == n
            assert all(torch.equal(a, b) for a, b in zip(out["gather"], want))
        assert torch.equal(out["scatter"], _values(20 + r, (5,), torch.uint8))
        srcs = [
            _values(30 + q, (sum((q + p) % 3 for p in range(n)), 2), torch.float32).numpy()
            for q in range(n)
        ]
        starts = [sum((q + p) % 3 for p in range(r)) for q in range(n)]
        want_a2a = np.concatenate([srcs[q][starts[q] : starts[q] + (q + r) % 3] for q in range(n)])
        assert np.array_equal(out["alltoall_uneven"].numpy(), want_a2a)
        for q, got in enumerate(out["alltoall_list"]):
            assert torch.equal(got, _values(40 + q * n + r, (q + 1, r + 1), torch.int16))


def test_rooted_stand_ins_when_no_rooted_plan(gpus, shared_cache, monkeypatch):
    """Where a rooted collective's plans do not build, the unrooted plan that contains it
    serves on CUDA too (as on CPU), with the same results and no NCCL collective."""
    from taccl_py.torch.library import PlanLibrary

    ft, n = gpus, 3
    monkeypatch.setattr(PlanLibrary, "unavailable", lambda self, kind, root=0: "not in this test")
    traffic = PlanTraffic(monkeypatch)

    def body(pg, r):
        dev = torch.cuda.current_device()
        b = ft.tensor(_values(r, (7,), torch.float64), dev)
        opts = dist.BroadcastOptions()
        opts.rootRank = 2
        pg.broadcast([b], opts).wait()
        red = ft.tensor(_values(r, (7,), torch.float64), dev)
        ropts = dist.ReduceOptions()
        ropts.rootRank = 1
        pg.reduce([red], ropts).wait()
        x = ft.tensor(_values(10 + r, (4,), torch.int32), dev)
        gathered = [ft.empty((4,), torch.int32, dev) for _ in range(n)] if r == 2 else []
        gopts = dist.GatherOptions()
        gopts.rootRank = 2
        pg.gather([gathered] if r == 2 else [], [x], gopts).wait()
        sc = ft.empty((4,), torch.int32, dev)
        pieces = [ft.tensor(_values(20 + q, (4,), torch.int32), dev) for q in range(n)]
        sopts = dist.ScatterOptions()
        sopts.rootRank = 1
        pg.scatter([sc], [pieces] if r == 1 else [], sopts).wait()
        got = ft.host(b), ft.host(red), [ft.host(t) for t in gathered], ft.host(sc)
        return got, _plans_run(pg)

    res = groups(n, shared_cache, body)
    traffic.check(ft.fake.log)
    xs = [_values(q, (7,), torch.float64) for q in range(n)]
    for r, ((b, red, gathered, sc), plans) in enumerate(res):
        assert {k for k, _ in plans} <= set(KINDS)  # no rooted plan ran
        assert torch.equal(b, xs[2])
        assert torch.equal(red, sum(xs) if r == 1 else xs[r])
        if r == 2:
            assert (
                all(
                    torch.equal(g, _values(10 + q, (4,), torch.int32))
                    for q, g in enumerate(gathered)
                )
                and len(gathered) == n
            )
        assert torch.equal(sc, _values(20 + r, (4,), torch.int32))


def test_rooted_bad_root_is_one_clear_error(gpus, shared_cache):
    ft = gpus

    def body(pg, r):
        t = ft.tensor(torch.ones(4), torch.cuda.current_device())
        opts = dist.BroadcastOptions()
        opts.rootRank = 5
        with pytest.raises(TacclError, match="broadcast: root 5 is not a rank of 2"):
            pg.broadcast([t], opts)

    groups(2, shared_cache, body)


DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int16,
    torch.uint16,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_dtype_exact(gpus, shared_cache, dtype):
    """AllReduce (sum; bool: or, as NCCL's) and AllGather of every dtype NCCL moves."""
    ft, n = gpus, 3

    def body(pg, r):
        dev = torch.cuda.current_device()
        x = ft.tensor(_values(r, (5, 3), dtype), dev)
        g = ft.empty((n * 5, 3), dtype, dev)
        pg._allgather_base(g, x).wait()
        t = ft.tensor(_values(r, (5, 3), dtype), dev)
        pg.allreduce([t]).wait()
        return ft.host(g), ft.host(t)

    res = groups(n, shared_cache, body)
    xs = [_values(r, (5, 3), dtype) for r in range(n)]
    if dtype == torch.bool:
        want = xs[0] | xs[1] | xs[2]
    elif dtype == torch.bfloat16:  # reduced in float32, rounded once
        want = sum(x.float() for x in xs).bfloat16()
    else:  # in NumPy: torch adds no uint16 on CPU
        want = torch.from_numpy(xs[0].numpy() + xs[1].numpy() + xs[2].numpy())
    for g, t in res:
        assert torch.equal(g, torch.cat(xs))
        assert torch.equal(t, want)


LAYOUTS = {
    "transposed": lambda t: t.t(),
    "stepped": lambda t: t[::2, 1::2],
    "channels_last": lambda t: t.view(2, 2, 3, 2).permute(0, 3, 1, 2),  # NHWC memory
    "scalar": lambda t: t[0, 0],
    "empty": lambda t: t[:0],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_any_layout_exact(gpus, shared_cache, layout):
    """Non-contiguous outputs get the result (a copy that is not written back would leave
    the tensor as it was)."""
    ft, n = gpus, 2
    view = LAYOUTS[layout]

    def body(pg, r):
        dev = torch.cuda.current_device()
        base = ft.tensor(_values(r, (4, 6), torch.int32), dev)
        t = view(base)
        pg.allreduce([t]).wait()
        return ft.host(base)

    res = groups(n, shared_cache, body)
    want = [_values(r, (4, 6), torch.int32) for r in range(n)]
    total = [view(w) for w in want]
    for r, got in enumerate(res):
        expect = want[r].clone()
        view(expect).copy_(total[0] + total[1])
        assert torch.equal(got, expect)


def test_work_runs_on_the_callers_stream(gpus, tmp_path):
    """The caller's current stream carries every NCCL call and kernel, and the tensors are
    recorded on it; input written on a side stream is what gets reduced."""
    ft, n = gpus, 2
    cp = ft.fake.cupy

    def body(pg, r):
        dev = torch.cuda.current_device()
        side = ft.fake.external_stream(dev)
        t = ft.empty((8,), torch.float32, dev)
        with ft.use_stream(dev, side):
            with cp.cuda.Stream.from_external(StreamRef(side)):
                cp.asarray(t).fill(r + 1)  # a kernel on the side stream
            pg.allreduce([t]).wait()
            out = ft.host(t)
        return side, out

    before = len(ft.fake.log)
    res = groups(n, tmp_path, body)
    for _, out in res:
        assert torch.equal(out, torch.full((8,), 3.0))
    sides = {side for side, _ in res}
    nccl_calls = [c for c in ft.fake.log[before:] if c.kind in ("send", "recv")]
    assert nccl_calls and {c.stream for c in nccl_calls} <= sides
    assert {s for _, _, s in ft.recorded} == sides


@pytest.mark.parametrize("blocking", [True, False])
def test_dead_rank_aborts_and_raises_within_the_timeout(gpus, tmp_path, blocking):
    """Rank 2 never joins the AllReduce: ranks 0 and 1 abort their communicator and raise,
    naming where they were stuck, within the timeout (blocking: from wait; else from the
    next call)."""
    ft, n, timeout = gpus, 3, 1.5

    def body(pg, r):
        dev = torch.cuda.current_device()
        warm = ft.tensor(torch.ones(4), dev)
        pg.allreduce([warm]).wait()
        ft.host(warm)
        if r == 2:
            return None
        t = ft.tensor(torch.ones(4), dev)
        start = time.monotonic()
        with pytest.raises(TacclError) as err:
            pg.allreduce([t]).wait()
            time.sleep(timeout + 1)
            pg.allreduce([t]).wait()
        return time.monotonic() - start, str(err.value)

    res = groups(
        n, tmp_path, body, timeout_s=timeout, **({"blocking_wait": True} if blocking else {})
    )
    for elapsed, message in res[:2]:
        assert elapsed < timeout + 2.5
        assert "aborted" in message and "round" in message and "rank" in message


def test_uneven_all_to_all_waits_for_the_block_size_within_the_timeout(gpus, shared_cache):
    """Uneven all-to-all agrees on the block size on the host: with no data at all it
    does nothing more; when rank 2 never joins, ranks 0 and 1 raise from the call itself
    within the timeout (the watchdog aborts the AllReduce MAX they wait for)."""
    ft, n, timeout = gpus, 3, 1.5

    def body(pg, r):
        dev = torch.cuda.current_device()
        empty = ft.empty((0, 2), torch.float32, dev)
        pg.alltoall_base(empty, empty, [0] * n, [0] * n).wait()
        if r == 2:
            return None
        src = ft.tensor(torch.ones(n, 2), dev)
        dst = ft.empty((n, 2), torch.float32, dev)
        start = time.monotonic()
        with pytest.raises(TacclError, match="aborted") as err:
            pg.alltoall_base(dst, src, [1] * n, [1] * n)
        return time.monotonic() - start, str(err.value)

    res = groups(n, shared_cache, body, timeout_s=timeout)
    for elapsed, message in res[:2]:
        assert elapsed < timeout + 2.5
        assert "allreduce" in message and "round" in message


def test_ranks_on_different_plans_fail_within_the_timeout(gpus, tmp_path):
    """Rank 0's plan directory has a ring AllGather one way round, the others' the other
    way: in the first round every rank's group waits on a peer that sends elsewhere, and
    every rank raises within the timeout."""
    from taccl_py.plan.xml import write_plan

    ft, n, timeout = gpus, 3, 1.5
    dirs = {}
    for way in (1, -1):
        links = [Link(a, (a + way) % n, 25e9, 0.7e-6) for a in range(n)]
        topo = Topology(f"way{way}", n, 1, tuple(links), (), (), FULL_BISECTION)
        dirs[way] = tmp_path / f"way{way}"
        dirs[way].mkdir()
        write_plan(build_plan(topo, Collective("allgather", n), "ring").plan, dirs[way] / "p.xml")

    def body(pg, r):
        dev = torch.cuda.current_device()
        x = ft.tensor(torch.full((6,), float(r)), dev)
        g = ft.empty((6 * n,), torch.float32, dev)
        start = time.monotonic()
        with pytest.raises(TacclError, match="aborted") as err:
            pg._allgather_base(g, x).wait()
        return time.monotonic() - start, str(err.value)

    res = groups(
        n,
        tmp_path,
        body,
        timeout_s=timeout,
        blocking_wait=True,
        rank_kw=lambda r: {"plan_dir": dirs[1 if r == 0 else -1]},
    )
    assert all(elapsed < timeout + 2.5 for elapsed, _ in res)


def test_two_ranks_on_one_gpu_is_one_clear_error(gpus, tmp_path):
    ft = gpus

    def body(pg, r):
        t = ft.tensor(torch.ones(4), 0)  # both ranks' tensors on cuda:0
        pg.allreduce([t]).wait()

    with pytest.raises(TacclError, match="both use cuda:0"):
        groups(2, tmp_path, body)


def test_no_cuda_tensor_reaches_gloo(gpus, tmp_path):
    """Rooted and point-to-point calls on CUDA tensors run over NCCL, never Gloo."""
    ft, n = gpus, 2

    class NoTensors:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            def call(*args, **kw):
                raise AssertionError(f"Gloo {name} called with CUDA tensors")

            return call if name != "barrier" else getattr(self.inner, name)

    def body(pg, r):
        pg._gloo = NoTensors(pg._gloo)
        dev = torch.cuda.current_device()
        t = ft.tensor(torch.full((4,), float(r)), dev)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        pg.broadcast([t], opts).wait()
        ropts = dist.ReduceOptions()
        ropts.rootRank = 0
        pg.reduce([t], ropts).wait()
        pg.send([t], 1 - r, 0).wait() if r == 0 else pg.recv([t], 0, 0).wait()
        pg.barrier().wait()
        return ft.host(t)

    res = groups(n, tmp_path, body)
    assert torch.equal(res[0], torch.zeros(4)) and torch.equal(res[1], torch.zeros(4))


def test_executor_cache_is_bounded(gpus, tmp_path):
    from taccl_py.torch import cuda as route

    ft, n = gpus, 2

    def body(pg, r):
        dev = torch.cuda.current_device()
        for size in range(1, route.EXECUTOR_CACHE + 9):
            pg.allreduce([ft.tensor(torch.ones(size * 2), dev)]).wait()
        return len(pg._cuda.executors)

    assert groups(n, tmp_path, body) == [route.EXECUTOR_CACHE] * n


def test_fake_hang_is_reported_not_hung(gpus):
    """The stand-in itself: a receive nobody sends reports a hang."""
    cp = gpus.fake.cupy
    nccl = cp.cuda.nccl
    gpus.fake.hang_timeout = 0.3
    uid = nccl.get_unique_id()

    def rank(r):
        with cp.cuda.Device(r):
            comm = nccl.NcclCommunicator(2, uid, r)
            if r == 0:
                buf = cp.empty(4, np.float32)
                comm.recv(buf.data.ptr, 4, nccl.NCCL_FLOAT32, 1, 0)
                with pytest.raises(FakeHang):
                    cp.cuda.Device(r).synchronize()
                comm.abort()

    on_ranks(2, rank)

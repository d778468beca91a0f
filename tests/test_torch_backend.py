"""taccl_py.torch: the "taccl" process-group backend (CPU tensors, inner Gloo transport)."""

from __future__ import annotations

import datetime
import glob
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with Gloo is needed", allow_module_level=True)

import taccl_py.torch as tt  # noqa: E402
from taccl_py.build.pipeline import build_plan  # noqa: E402
from taccl_py.collectives import Collective  # noqa: E402
from taccl_py.errors import PlanError, TacclError, VerificationError  # noqa: E402
from taccl_py.lowering.lower import LowerOptions  # noqa: E402
from taccl_py.plan.model import SEND_TYPES  # noqa: E402
from taccl_py.plan.xml import plan_to_xml, write_plan  # noqa: E402
from taccl_py.topology.model import FULL_BISECTION, Link, Topology  # noqa: E402
from taccl_py.torch import backend  # noqa: E402
from taccl_py.torch.library import PlanLibrary  # noqa: E402

WORKER = Path(__file__).with_name("torch_worker.py")
ROOT = Path(__file__).resolve().parent.parent
#: the methods the unit tests' libraries are built with (milp: plans of several chunks a block)
FAST = ("milp", "ring", "direct")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One plan cache for the module's groups (each world size built once)."""
    return tmp_path_factory.mktemp("taccl-cache")


class NoGloo:
    """Stands in for the group's inner Gloo group where a test proves that no collective
    reaches it (point-to-point calls would)."""

    def __getattr__(self, name):
        raise AssertionError(f"a collective was delegated to Gloo ({name})")


def ring4() -> Topology:
    links = [Link(a, b, 25e9, 0.7e-6) for a in range(4) for b in ((a + 1) % 4, (a - 1) % 4)]
    return Topology("ring4", 4, 1, tuple(links), (), (), FULL_BISECTION)


def in_threads(n: int, body, tmp_path, timeout_s: float = 120.0, gloo: bool = False, **kw) -> list:
    """Run ``body(pg, rank)`` on ``n`` threads, each with its own TacclProcessGroup (its
    inner Gloo group replaced by :class:`NoGloo` unless ``gloo``); ``tmp_path / "cache"``
    holds the plans. The group timeout is generous by default: a library built on a loaded
    machine must not time out Gloo's connection of the other ranks. Of several errors the
    first that is not Gloo's (a rank that failed makes its peers' Gloo calls fail) is
    raised."""
    kw.setdefault("methods", FAST)
    store = dist.HashStore()
    results: list = [None] * n
    errors: list = [None] * n
    keep: list = [None] * n

    def one(r: int) -> None:
        try:
            pg = tt.TacclProcessGroup(
                dist.PrefixStore("t", store),
                r,
                n,
                datetime.timedelta(seconds=timeout_s),
                cache_dir=tmp_path / "cache",
                **kw,
            )
            if not gloo:
                # kept alive until every thread is done: a Gloo group dropped here closes its
                # connections while a slower peer thread may still be connecting the same group
                keep[r] = pg._gloo
                pg._gloo = NoGloo()
            results[r] = body(pg, r)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors[r] = exc

    threads = [threading.Thread(target=one, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s + 120)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    found = [exc for exc in errors if exc is not None]
    if found:
        raise next((e for e in found if "Gloo" not in str(e)), found[0])
    return results


def test_registered_backend():
    assert "taccl" in dist.Backend.backend_list


def _root_opts(cls, root, op=None):
    opts = cls()
    opts.rootRank = root
    if op is not None:
        opts.reduceOp = op
    return opts


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64, torch.bfloat16, torch.uint8])
def test_every_collective_exact(shared_cache, n, dtype):
    """Every collective, rooted ones at the last rank, on plans only (no Gloo group)."""
    root = n - 1

    def body(pg, r):
        x = (torch.arange(6) % 5 + r).to(dtype)
        ag = torch.empty(6 * n, dtype=dtype)
        pg.all_gather_single(ag, x).wait()
        outs = [torch.empty(6, dtype=dtype) for _ in range(n)]
        pg.allgather([outs], [x]).wait()
        a2a = torch.empty(2 * n, dtype=dtype)
        pg.all_to_all_single(a2a, (torch.arange(2 * n) + 3 * r).to(dtype), [], []).wait()
        rs = torch.empty(3, dtype=dtype)
        pg.reduce_scatter_single(rs, (torch.arange(3 * n) % 4 + r).to(dtype)).wait()
        ar = (torch.arange(5) % 3 + r).to(dtype)  # 5 elements: not whole chunks for n > 1
        pg.allreduce([ar]).wait()
        bc = (torch.arange(5) + r).to(dtype)
        pg.broadcast([bc], _root_opts(dist.BroadcastOptions, root)).wait()
        red = (torch.arange(5) % 3 + r).to(dtype)
        pg.reduce([red], _root_opts(dist.ReduceOptions, root, dist.ReduceOp.SUM)).wait()
        parts = [torch.zeros(3, dtype=dtype) for _ in range(n)] if r == root else []
        pg.gather(
            [parts] if parts else [],
            [(torch.arange(3) + 4 * r).to(dtype)],
            _root_opts(dist.GatherOptions, root),
        ).wait()
        sc = torch.zeros(2, dtype=dtype)
        blocks = [[(torch.arange(2) + 2 * q).to(dtype) for q in range(n)]] if r == root else []
        pg.scatter([sc], blocks, _root_opts(dist.ScatterOptions, root)).wait()
        pg.barrier().wait()
        return ag, torch.cat(outs), a2a, rs, ar, bc, red, parts, sc

    res = in_threads(n, body, shared_cache)
    inputs = [(torch.arange(6) % 5 + r).to(dtype) for r in range(n)]
    gathered = torch.cat(inputs)
    sums_rs = sum((torch.arange(3 * n) % 4 + r).double() for r in range(n))
    sum_ar = sum((torch.arange(5) % 3 + r).double() for r in range(n))
    for r, (ag, ag_list, a2a, rs, ar, bc, red, parts, sc) in enumerate(res):
        assert torch.equal(ag, gathered) and torch.equal(ag_list, gathered)
        want_a2a = torch.tensor([2 * r + k + 3 * q for q in range(n) for k in range(2)])
        assert torch.equal(a2a, want_a2a.to(dtype))
        assert torch.equal(rs.double(), sums_rs[3 * r : 3 * r + 3])
        assert torch.equal(ar.double(), sum_ar)
        assert torch.equal(bc, (torch.arange(5) + root).to(dtype))
        assert torch.equal(sc, (torch.arange(2) + 2 * r).to(dtype))
        if r == root:
            assert torch.equal(red.double(), sum_ar)
            assert [p.tolist() for p in parts] == [
                (torch.arange(3) + 4 * q).to(dtype).tolist() for q in range(n)
            ]
        else:  # the other ranks' tensors are left alone
            assert torch.equal(red, (torch.arange(5) % 3 + r).to(dtype))


def test_pre_2_13_method_names(shared_cache):
    """torch <= 2.12 calls _allgather_base / alltoall_base / _reduce_scatter_base; a bitwise
    reduction (no plan reduces by XOR) runs the AllGather plan and combines locally."""

    def body(pg, r):
        ag, a2a, rs = torch.empty(4), torch.empty(2), torch.empty(1)
        pg._allgather_base(ag, torch.tensor([r, r + 0.5])).wait()
        pg.alltoall_base(a2a, torch.tensor([10.0 * r, 10.0 * r + 1]), [], []).wait()
        pg._reduce_scatter_base(rs, torch.tensor([1.0 + r, 2.0 + r])).wait()
        xor = torch.tensor([r + 1, 3], dtype=torch.int32)
        pg.allreduce([xor], _opts(dist.ReduceOp.BXOR)).wait()
        return ag.tolist(), a2a.tolist(), rs.tolist(), xor.tolist()

    res = in_threads(2, body, shared_cache)
    assert res[0] == ([0, 0.5, 1, 1.5], [0.0, 10.0], [3.0], [3, 0])
    assert res[1] == ([0, 0.5, 1, 1.5], [1.0, 11.0], [5.0], [3, 0])


def test_reduce_ops_async_and_noncontiguous(shared_cache):
    def body(pg, r):
        m = torch.tensor([float(r), -float(r), 2.0**r])
        mx, mn, pr, av = m.clone(), m.clone(), m.clone(), m.clone()
        works = [
            pg.allreduce([mx], _opts(dist.ReduceOp.MAX)),
            pg.allreduce([mn], _opts(dist.ReduceOp.MIN)),
            pg.allreduce([pr], _opts(dist.ReduceOp.PRODUCT)),
            pg.allreduce([av], _opts(dist.ReduceOp.AVG)),
        ]
        for w in works:  # issued asynchronously, completed in order
            w.wait()
        grid = torch.arange(12, dtype=torch.float32).reshape(3, 4) * (r + 1)
        col = grid[:, 1]  # a non-contiguous view, reduced in place
        pg.allreduce([col]).wait()
        return mx, mn, pr, av, grid

    res = in_threads(3, body, shared_cache)
    for mx, mn, pr, av, grid in res:
        assert mx.tolist() == [2.0, 0.0, 4.0]
        assert mn.tolist() == [0.0, -2.0, 1.0]
        assert pr.tolist() == [0.0, -0.0, 8.0]
        assert torch.equal(av, torch.tensor([1.0, -1.0, 7.0 / 3.0]))
        base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        assert grid[:, 1].tolist() == (base[:, 1] * 6).tolist()
        assert grid[:, 0].tolist() != (base[:, 0] * 6).tolist()  # other columns untouched


def test_any_layout_and_clear_refusals(shared_cache):
    """Issue 16: a transposed tensor is reduced in place (it came back as zeros); dtypes Gloo
    refuses, expanded outputs and complex products are refused up front, on every rank."""

    def body(pg, r):
        x = torch.ones(4, 6).t()
        pg.allreduce([x]).wait()
        for bad, reason in [
            (torch.ones(3, dtype=torch.int16), "int16 is not supported on CPU"),
            (torch.ones(1).expand(3), "share memory"),
            (torch.ones(2, dtype=torch.complex64), "PRODUCT is not supported"),
        ]:
            with pytest.raises(TacclError, match=reason):
                pg.allreduce([bad], _opts(dist.ReduceOp.PRODUCT)).wait()
        with pytest.raises(TacclError, match="BAND needs an integer or bool tensor"):
            pg.allreduce([torch.ones(2)], _opts(dist.ReduceOp.BAND)).wait()
        premul = dist._make_nccl_premul_sum(2.0)
        with pytest.raises(TacclError, match="PREMUL_SUM is not supported"):
            pg.allreduce([torch.ones(2)], _opts(premul)).wait()
        return x

    for x in in_threads(2, body, shared_cache):
        assert x.stride() == (1, 6) and torch.equal(x, torch.full((6, 4), 2.0))


def _opts(op):
    opts = dist.AllreduceOptions()
    opts.reduceOp = op
    return opts


def test_uneven_all_to_all_bitwise_and_nonzero_roots(shared_cache):
    """Uneven all-to-all (lists and split sizes, empty blocks too) is padded to the largest
    block for the AllToAll plan; bitwise reductions and every root, all on plans."""
    n = 3

    def body(pg, r):
        ins = [torch.full((q + 1,), float(10 * r + q)) for q in range(n)]
        outs = [torch.empty(r + 1) for _ in range(n)]
        pg.alltoall(outs, ins).wait()
        # rank r sends q rows of 2 to rank q (none to rank 0)
        send = torch.cat([torch.full((q, 2), 100 * r + q) for q in range(n)])
        recv = torch.empty(r * n, 2, dtype=torch.int64)
        pg.all_to_all_single(recv, send, [r] * n, list(range(n))).wait()
        band = torch.tensor([7, 6 + r], dtype=torch.int64)
        pg.allreduce([band], _opts(dist.ReduceOp.BAND)).wait()
        bor = torch.tensor([1 << r, r % 2 == 1], dtype=torch.bool)
        pg.allreduce([bor], _opts(dist.ReduceOp.BOR)).wait()
        rs = torch.empty(1, dtype=torch.int32)
        pg.reduce_scatter_single(
            rs, torch.tensor([r + 1, 1 << r, 5], dtype=torch.int32), _opts(dist.ReduceOp.BXOR)
        ).wait()
        per_root = []
        for root in range(n):
            bc = torch.tensor([r, -r], dtype=torch.float64)
            pg.broadcast([bc], _root_opts(dist.BroadcastOptions, root)).wait()
            red = torch.tensor([r + 1], dtype=torch.int64)
            pg.reduce([red], _root_opts(dist.ReduceOptions, root, dist.ReduceOp.PRODUCT)).wait()
            per_root.append((bc.tolist(), red.item()))
        pg.barrier().wait()
        return outs, recv, band.tolist(), bor.tolist(), rs.item(), per_root

    res = in_threads(n, body, shared_cache)
    for r, (outs, recv, band, bor, rs, per_root) in enumerate(res):
        for q, t in enumerate(outs):
            assert t.tolist() == [float(10 * q + r)] * (r + 1)
        assert recv.tolist() == [[100 * q + r] * 2 for q in range(n) for _ in range(r)]
        assert band == [7, 6 & 7 & 8]
        assert bor == [True, True]
        assert rs == [1 ^ 2 ^ 3, 1 ^ 2 ^ 4, 5][r]
        for root, (bc, red) in enumerate(per_root):
            assert bc == [root, -root]
            assert red == (6 if r == root else r + 1)


def _gloo_threads() -> frozenset[str]:
    """Thread ids of the Gloo worker threads alive in this process.

    A thread may end while it is listed: its ``comm`` file then reads as missing
    (FileNotFoundError) or as gone (ProcessLookupError), and it is not counted.
    """
    tids = set()
    for comm in glob.glob("/proc/self/task/*/comm"):
        try:
            if Path(comm).read_text().strip() == "pt_gloo_runloop":
                tids.add(Path(comm).parent.name)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return frozenset(tids)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc thread names")
def test_shutdown_joins_gloo_threads_and_refuses_later_calls(tmp_path):
    """destroy_process_group calls shutdown: the inner Gloo groups' threads end while the
    interpreter lives (a Gloo thread that frees a tensor during interpreter exit aborts the
    process); later calls are one clear error; atexit shuts down groups left alive."""
    before = _gloo_threads()
    both_shut = threading.Barrier(2)

    def body(pg, r):
        x = torch.ones(3)
        pg.allreduce([x]).wait()
        pg.barrier().wait()
        during = _gloo_threads()
        pg.shutdown()
        pg.shutdown()  # again: nothing left to do
        both_shut.wait(timeout=30)
        after = _gloo_threads()  # while both groups are still referenced
        with pytest.raises(TacclError, match="shut down"):
            pg.allreduce([x])
        with pytest.raises(TacclError, match="shut down"):
            pg.send([x], 1 - r, 0)
        return during, after, x.tolist(), pg in backend._LIVE

    res = in_threads(2, body, tmp_path, gloo=True)
    # the threads this test's groups started (threads of earlier tests may end meanwhile)
    started = [during - before for during, _, _, _ in res]
    assert all(new for new in started)
    assert all(not (new & after) for new, (_, after, _, _) in zip(started, res, strict=True))
    assert [x for *_, x, _ in res] == [[2.0] * 3] * 2
    assert not any(live for *_, live in res)


def test_mismatched_sizes_are_clear_errors(shared_cache):
    def body(pg, r):
        with pytest.raises(TacclError, match="output has 5 elements for an input of 2"):
            pg.all_gather_single(torch.empty(5), torch.ones(2)).wait()
        with pytest.raises(TacclError, match=r"split sizes \[1, 1\] do not cut its 3 rows"):
            pg.all_to_all_single(torch.empty(2), torch.empty(3), [1, 1], [1, 1]).wait()
        with pytest.raises(TacclError, match="root 5 is not a rank of 2"):
            pg.broadcast([torch.ones(1)], _root_opts(dist.BroadcastOptions, 5)).wait()
        return True

    assert in_threads(2, body, shared_cache) == [True, True]


def test_plan_directory_wins_then_the_library(tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir()
    coll = Collective("allgather", 4, 1, False)
    small = build_plan(ring4(), coll, "direct", lower=LowerOptions(max_bytes=1 << 16)).plan
    big = build_plan(
        ring4(), Collective("allgather", 4, 2, False), "ring", lower=LowerOptions(min_bytes=1 << 16)
    ).plan
    write_plan(small, plans / "small.xml")
    write_plan(big, plans / "big.xml")
    lib = PlanLibrary(plans, tmp_path / "cache", nranks=4, methods=("ring", "direct"))
    assert lib.choose("allgather", 4, 1024, 256).name == small.name
    assert lib.choose("allgather", 4, 1 << 20, 1 << 18).name == big.name
    # an odd element count does not split into big's 8 chunks: the library's plan serves it
    odd = lib.choose("allgather", 4, (1 << 20) + 4, (1 << 18) + 1)
    assert odd.nchunksperloop == 4 and odd.name.startswith("host4-allgather-")
    ar = build_plan(ring4(), Collective("allreduce", 4, 2, False), "ring").plan
    write_plan(ar, plans / "ar.xml")
    # 8 chunks do not divide 1001 elements, but AllReduce buffers are padded
    lib = PlanLibrary(plans, tmp_path / "cache", nranks=4, methods=("ring", "direct"))
    assert lib.choose("allreduce", 4, 4004, 1001).name == ar.name
    # the plan directory alone serves only what it has
    with pytest.raises(TacclError, match="serves its plan directory only"):
        PlanLibrary(plans, tmp_path / "cache").choose("alltoall", 4, 1024, 256)
    with pytest.raises(TacclError, match="does not exist"):
        PlanLibrary(tmp_path / "missing")


def test_library_sizes_ranges_and_whole_block_plans(tmp_path):
    """Each size is served by the fastest candidate there; a buffer that does not divide into
    its chunks gets the fastest one-chunk-a-block plan of the same range."""
    lib = PlanLibrary(None, tmp_path / "cache", nranks=4, methods=FAST)
    table = lib.table("allgather")
    assert table.ranges[0].lo == 0 and table.ranges[-1].hi == 0
    assert all(a.hi == b.lo for a, b in zip(table.ranges, table.ranges[1:]))
    assert all(r.whole.nchunksperloop == 4 for r in table.ranges)
    for rng in table.ranges:
        size = max(rng.lo, 1 << 10)
        for elems in (4 * (size // 16), 4 * (size // 16 + 1), 4 * 77):  # 4 blocks of e
            plan = lib.choose("allgather", 4, size, elems)
            assert elems % plan.nchunksperloop == 0
            assert plan is (rng.plan if elems % rng.plan.nchunksperloop == 0 else rng.whole)
    assert {r.plan.coll for r in table.ranges} == {"allgather"}


@pytest.mark.parametrize(
    "old, new, error, reason",
    [
        ('cnt="1"', 'cnt="0"', PlanError, r"gpu 0 tb 0 step 0 \(cpy\): cnt=0 outside 1\.\.71"),
        (
            'type="cpy"',
            'type="nop"',
            VerificationError,
            r"rank 0 o\[0\] \(chunk 0\): expected \{\(0,0\)\}, got nothing \(never written\)",
        ),
    ],
    ids=["cnt0", "never-written"],
)
def test_plan_directory_refuses_invalid_plan(tmp_path, old, new, error, reason):
    """A plan that fails verification stops the group's creation with the verifier's one-line
    reason (the library never stands in for it silently)."""
    plans = tmp_path / "plans"
    plans.mkdir()
    xml = plan_to_xml(build_plan(ring4(), Collective("allgather", 4, 1, False), "ring").plan)
    bad = xml.replace(old, new, 1)
    assert bad != xml
    (plans / "ag.xml").write_text(bad)
    with pytest.raises(error, match=f"^{re.escape(str(plans / 'ag.xml'))}: {reason}$"):
        tt.TacclProcessGroup(
            dist.HashStore(),
            0,
            1,
            datetime.timedelta(seconds=5),
            plan_dir=plans,
            cache_dir=tmp_path / "cache",
        )


def test_plans_from_directory_run(tmp_path):
    """A 4-rank direct AllGather from the plan directory serves the call, exactly."""
    plans = tmp_path / "plans"
    plans.mkdir()
    write_plan(
        build_plan(ring4(), Collective("allgather", 4, 1, False), "direct").plan, plans / "ag.xml"
    )

    def body(pg, r):
        out = torch.empty(12, dtype=torch.int32)
        pg.all_gather_single(out, torch.arange(3, dtype=torch.int32) + 10 * r).wait()
        return out, next(iter(pg._executors.values())).plan.name

    for out, name in in_threads(4, body, tmp_path, plan_dir=plans, methods=("direct",)):
        assert out.tolist() == [10 * q + k for q in range(4) for k in range(3)]
        assert "direct" in name


def run_ranks(mode: str, tmp_path, cache, n: int = 4, timeout: float = 120, env_extra=None):
    """Start ``n`` worker processes; return the exit codes and outputs of those that are
    expected to end (all of them, or all but rank n-1 when it dies or stalls). ``cache``:
    the module's plan cache (the in-process tests' libraries of the same methods, loaded
    from disk, or built here)."""
    env = dict(
        os.environ,
        TACCL_CACHE_DIR=str(cache / "cache"),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        PYTHONWARNINGS="ignore",
        TACCL_METHODS=",".join(FAST),  # as the in-process tests: no smt or tree candidates
        **(env_extra or {}),
    )
    init = tmp_path / "init"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(n), str(init), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for r in range(n)
    ]
    watched = procs if mode == "all" else procs[: n - 1]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in watched]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [p.returncode for p in watched], outs


def test_four_processes_every_collective_and_ddp(tmp_path, shared_cache):
    codes, outs = run_ranks("all", tmp_path, shared_cache)
    assert codes == [0, 0, 0, 0], "\n".join(outs)
    for r, out in enumerate(outs):
        assert f"rank {r} ok" in out


@pytest.mark.parametrize("mode", ["die", "stall"])
def test_dead_or_silent_rank_fails_cleanly(tmp_path, shared_cache, mode):
    """Rank 3 exits (or never sends): the others raise an error naming a step and a peer,
    within the group's 4 s timeout, instead of hanging."""
    codes, outs = run_ranks(
        mode, tmp_path, shared_cache, timeout=60, env_extra={"TACCL_TEST_TIMEOUT": "4"}
    )
    assert codes == [1, 1, 1], "\n".join(outs)
    joined = "\n".join(outs)
    for r, out in enumerate(outs):
        line = next((x for x in out.splitlines() if x.startswith(f"rank {r} error after")), None)
        assert line is not None, out
        assert float(line.split("after ")[1].split(" s")[0]) < 10
        assert "Traceback" not in out
        assert " step " in line and "rank " in line.split(": ", 1)[1]
    if mode == "stall":
        assert "no progress for 4 s" in joined and "waits to receive from rank" in joined
    else:
        assert "from rank 3 failed" in joined or "to rank 3 failed" in joined


def _record_runs(monkeypatch) -> list[tuple]:
    """Every plan run of the groups made after this: (rank, plan name, collective, in
    place, no send buffer, no receive buffer)."""
    runs: list[tuple] = []

    class Recording(backend.PlanExecutor):
        def run(self, sendbuf, recvbuf, timeout=60.0):
            plan = self.plan
            runs.append(
                (self.rank, plan.name, plan.coll, plan.inplace, sendbuf is None, recvbuf is None)
            )
            return super().run(sendbuf, recvbuf, timeout)

    monkeypatch.setattr(backend, "PlanExecutor", Recording)
    return runs


def test_plan_calls_even_all_to_all_in_place_and_missing_buffers(tmp_path, monkeypatch):
    """Even all_to_all_single runs the AllToAll plan alone (no size agreement), uneven
    splits add the AllReduce MAX; all_reduce, broadcast and reduce run in-place plans; a
    non-root passes no buffer it lacks; every rank runs the same plans in the same order."""
    n, root = 4, 1
    runs = _record_runs(monkeypatch)

    def body(pg, r):
        a2a = torch.empty(4 * n)
        pg.all_to_all_single(a2a, torch.arange(4.0 * n) + 100 * r, [], []).wait()
        uneven = torch.empty(n)
        pg.all_to_all_single(uneven, torch.full((n,), float(r)), [1] * n, [1] * n).wait()
        ar = torch.full((6,), float(r))
        pg.allreduce([ar]).wait()
        bc = torch.full((6,), float(r))
        pg.broadcast([bc], _root_opts(dist.BroadcastOptions, root)).wait()
        red = torch.full((6,), float(r + 1))
        pg.reduce([red], _root_opts(dist.ReduceOptions, root, dist.ReduceOp.SUM)).wait()
        parts = [torch.empty(2) for _ in range(n)] if r == root else []
        pg.gather([parts] if parts else [], [torch.full((2,), float(r))],
                  _root_opts(dist.GatherOptions, root)).wait()  # fmt: skip
        sc = torch.empty(2)
        blocks = [[torch.full((2,), float(q)) for q in range(n)]] if r == root else []
        pg.scatter([sc], blocks, _root_opts(dist.ScatterOptions, root)).wait()
        return a2a, uneven, ar, bc, red, parts, sc

    res = in_threads(n, body, tmp_path, methods=("ring", "direct"))
    for r, (a2a, uneven, ar, bc, red, parts, sc) in enumerate(res):
        assert a2a.tolist() == [100.0 * q + 4 * r + k for q in range(n) for k in range(4)]
        assert uneven.tolist() == [float(q) for q in range(n)]
        assert ar.tolist() == [float(sum(range(n)))] * 6
        assert bc.tolist() == [float(root)] * 6
        want = float(sum(range(1, n + 1))) if r == root else float(r + 1)
        assert red.tolist() == [want] * 6  # a non-root's tensor is left as it was
        if r == root:
            assert [p.tolist() for p in parts] == [[float(q)] * 2 for q in range(n)]
        assert sc.tolist() == [float(r)] * 2
    per_rank = [[run[1:4] for run in runs if run[0] == r] for r in range(n)]
    assert all(calls == per_rank[0] for calls in per_rank)  # same plans, same order
    kinds = [coll for _, coll, _ in per_rank[0]]
    assert kinds == [
        "alltoall",
        "allreduce",  # the uneven call's block-size agreement
        "alltoall",
        "allreduce",
        "broadcast",
        "reduce",
        "gather",
        "scatter",
    ]
    in_place = {coll: inplace for _, coll, inplace in per_rank[0][3:6]}
    assert in_place == {"allreduce": True, "broadcast": True, "reduce": True}
    lacks = {"broadcast": (True, False), "reduce": (False, True)}
    lacks |= {"gather": (False, True), "scatter": (True, False)}
    for rank, _, coll, _, no_send, no_recv in runs:
        if coll in lacks:
            assert (no_send, no_recv) == (lacks[coll] if rank != root else (False, False))
        else:
            assert (no_send, no_recv) == (False, False)


def _sends(plan) -> list[int]:
    return [sum(st.type in SEND_TYPES for tb in g.tbs for st in tb.steps) for g in plan.gpus]


def test_host_library_direct_small_ring_large_in_place_twins(tmp_path):
    """The host model's α (a Gloo message, ~0.2 ms) dominates 1 KB, where direct plans (one
    round of messages a phase) beat the ring's n-1 sequential hops a phase; at 64 MB its
    bandwidth does, where the ring's pipelined hops beat direct's contended ports. In-place
    calls of AllReduce, Broadcast and Reduce get the same algorithm lowered in place; the
    CPU executor has no protocols, so only Simple plans are made."""
    lib = PlanLibrary(None, tmp_path / "cache", nranks=4, methods=("ring", "direct"))
    assert lib.host
    for kind, root in (("allreduce", 0), ("broadcast", 2), ("reduce", 1)):
        small = lib.choose(kind, 4, 1 << 10, 256, False, root)
        large = lib.choose(kind, 4, 64 << 20, 16 << 20, False, root)
        assert "-direct-" in small.name and "-ring-" in large.name, (small.name, large.name)
        for nbytes, plan in ((1 << 10, small), (64 << 20, large)):
            twin = lib.choose(kind, 4, nbytes, nbytes // 4, True, root)
            assert twin.inplace and not plan.inplace
            assert twin.name == plan.name.replace("-Simple", "-inplace-Simple")
            assert _sends(twin) == _sends(plan)  # the same messages
    # AllGather has no in-place twin: an in-place request gets the out-of-place plan
    ag = lib.choose("allgather", 4, 1 << 10, 256, True)
    assert not ag.inplace and ag is lib.choose("allgather", 4, 1 << 10, 256)
    for label in ("allreduce", "allgather", "broadcast-root2"):
        kind, _, root = label.partition("-root")
        for rng in lib.table(kind, int(root or 0)).ranges:
            for plan in (rng.plan, rng.whole, rng.inplace):
                assert plan is None or plan.proto == "Simple"
    # a GPU cluster's library times every protocol: LL's shorter hops win at 1 KB there
    gpu = PlanLibrary(None, tmp_path / "cache", nranks=4, topology=ring4(), methods=("ring",))
    assert not gpu.host and gpu.choose("allreduce", 4, 1 << 10, 256).proto != "Simple"

"""``taccl run`` with nccl-tests' conventions: size sweeps, types, ops, roots, plan
libraries, bus factors; end to end under mpiexec for every collective kind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from taccl_py.cli import main
from taccl_py.collectives import ALL_KINDS, ROOTED_KINDS, Collective
from taccl_py.errors import TacclError
from taccl_py.plan.model import Plan
from taccl_py.runtime.mpi_run import (
    MAX_ROWS,
    NCCL_TYPES,
    OPS,
    Entry,
    bus_factor,
    choose,
    nccl_counts,
    parse_dtypes,
    parse_ops,
    size_granule,
    sweep_sizes,
)

PER_RANK = {"allgather", "reducescatter", "alltoall", "gather", "scatter"}

# -- bus factors: nccl-tests' <Coll>GetBw, written out from its sources ----------------------
#: busBw / algBw in src/all_reduce.cu, all_gather.cu, ... (nranks n)
NCCL_TESTS_FACTOR = {
    "allreduce": lambda n: 2.0 * (n - 1) / n,
    "allgather": lambda n: (n - 1) / n,
    "reducescatter": lambda n: (n - 1) / n,
    "alltoall": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
    "gather": lambda n: (n - 1) / n,
    "scatter": lambda n: (n - 1) / n,
}


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("n", [2, 3, 8, 64])
def test_bus_factor_is_nccl_tests(kind, n):
    assert bus_factor(kind, n) == pytest.approx(NCCL_TESTS_FACTOR[kind](n))


def test_bus_factors_by_hand():
    assert bus_factor("allreduce", 8) == 1.75 and bus_factor("reduce", 8) == 1.0
    assert bus_factor("scatter", 4) == 0.75 and bus_factor("bcast", 2) == 1.0


@given(
    kind=st.sampled_from(ALL_KINDS),
    n=st.integers(1, 64),
    nbytes=st.integers(1, 1 << 34),
    itemsize=st.sampled_from([1, 2, 4, 8]),
)
def test_algbw_base_is_the_row_size(kind, n, nbytes, itemsize):
    """nccl-tests' algBw numerator (count x typesize, x nranks for the per-rank kinds) is
    the size the row shows, and that size never exceeds the one asked for."""
    c = nccl_counts(kind, n, nbytes, itemsize)
    base = c.count * itemsize * (n if kind in PER_RANK else 1)
    assert base == c.size <= nbytes
    assert c.size == max(c.send, c.recv) * itemsize
    if kind in PER_RANK:  # whole elements per rank (no 16-byte rounding: see mpi_run)
        assert nbytes - c.size < n * itemsize + itemsize
        assert {c.send, c.recv} == {c.count, c.count * n} or kind == "alltoall"
        if nbytes % (n * itemsize) == 0:
            assert c.size == nbytes
    else:
        assert c.count == c.send == c.recv == nbytes // itemsize


# -- the size sweep ------------------------------------------------------------------------


@given(
    lo=st.integers(1, 1 << 40),
    span=st.integers(0, 1 << 40),
    step=st.integers(1, 1 << 30),
    factor=st.integers(1, 64),
)
def test_sweep_sizes_properties(lo, span, step, factor):
    hi = lo + span
    try:
        sizes = sweep_sizes(lo, hi, step, factor)
    except TacclError as exc:
        assert f"more than {MAX_ROWS} sizes" in str(exc)
        return
    assert sizes[0] == lo and sizes[-1] <= hi and 1 <= len(sizes) <= MAX_ROWS
    for a, b in zip(sizes, sizes[1:]):
        assert b == (a * factor if factor > 1 else a + step)
    nxt = sizes[-1] * factor if factor > 1 else sizes[-1] + step
    assert nxt > hi


@given(lo=st.integers(2, 1 << 40), less=st.integers(1, 1 << 20))
def test_sweep_refuses_min_above_max(lo, less):
    with pytest.raises(TacclError, match="above max size"):
        sweep_sizes(lo, max(1, lo - less), 1, 2)


def test_sweep_nccl_tests_example():
    assert sweep_sizes(1024, 1 << 30, 0, 2) == [1 << k for k in range(10, 31)]
    assert sweep_sizes(8, 8, 0, 1) == [8]


# -- types and ops ---------------------------------------------------------------------------


@given(st.lists(st.sampled_from(sorted(NCCL_TYPES) + ["float32", "int", "char"]), min_size=1))
def test_parse_dtypes_lists(names):
    got = parse_dtypes(",".join(names))
    assert len({dt for _, dt in got}) == len(got)  # no repeats
    assert {dt for _, dt in got} == {dt for name in names for _, dt in parse_dtypes(name)}


@given(st.text(max_size=12))
def test_parse_dtypes_refuses_unknown(text):
    names = [t.strip().lower() for t in text.split(",")]
    known = set(NCCL_TYPES) | {"char", "int", "float16", "float32", "float64"}
    if names == ["all"] or all(n in known for n in names):
        assert parse_dtypes(text)
    else:
        with pytest.raises(TacclError, match="unsupported dtype"):
            parse_dtypes(text)


def test_parse_dtypes_all_is_nccl_tests_order():
    assert [n for n, _ in parse_dtypes("all")] == [
        "int8",
        "uint8",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "half",
        "float",
        "double",
    ]
    assert parse_dtypes("half")[0][1] == np.float16


@given(st.lists(st.sampled_from(OPS + ("avg", "mulsum", "all")), min_size=1, max_size=5))
def test_parse_ops(names):
    text = ",".join(names)
    if names == ["all"]:
        assert parse_ops(text) == list(OPS)
    elif all(n in OPS for n in names):
        assert parse_ops(text) == list(dict.fromkeys(names))
    else:
        with pytest.raises(TacclError, match="unsupported op"):
            parse_ops(text)


# -- the command line, before any MPI --------------------------------------------------------


def cli(*args):
    return CliRunner().invoke(main, ["run", "p.xml", *args])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--size", "1K", "-b", "2K"], "not both"),
        (["-b", "4K", "-e", "1K"], "above max size"),
        (["-b", "1", "-e", "1G", "-i", "1"], "more than 1024 sizes"),
        (["-d", "bfloat16"], "unsupported dtype"),
        (["-d", "bool"], "unsupported dtype"),
        (["-o", "avg"], "leave avg to NCCL"),
        (["-c", "-1"], "-c"),
        (["-n", "0"], "Invalid value for '--iters'"),
        (["-w", "-1"], "Invalid value for '--warmup'"),
        (["--warmup_iters", "x"], "Invalid value for '--warmup'"),
        (["-f", "0"], "stepfactor"),
        (["--collective", "allsum"], "unknown collective"),
    ],
)
def test_cli_refuses_bad_arguments(args, needle):
    r = cli(*args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("taccl: error:"), r.stderr
    assert needle in lines[0] and "Traceback" not in r.output


# -- plan choice -----------------------------------------------------------------------------


def entry(name, kind="allgather", ncpl=4, lo=0, hi=0, inplace=False, root=0, n=4):
    return Entry(
        name, Plan(name, kind, n, ncpl, inplace=inplace, min_bytes=lo, max_bytes=hi, root=root)
    )


@given(
    lo=st.integers(0, 1 << 20),
    width=st.integers(0, 1 << 20),
    size=st.integers(1, 1 << 22),
    ncpl=st.integers(1, 16),
)
def test_choose_follows_msccl_executor(lo, width, size, ncpl):
    """minBytes <= size <= maxBytes (maxBytes 0: open), larger buffer divisible by
    nchunksperloop, same kind, ranks, placement."""
    hi = lo + width
    e = entry("a.xml", "allreduce", ncpl, lo, hi)
    counts = nccl_counts("allreduce", 4, size, 4)
    got, why = choose([e], "allreduce", 4, False, counts, None)
    in_range = lo <= counts.size and (hi == 0 or counts.size <= hi)
    want = in_range and counts.larger > 0 and counts.larger % ncpl == 0
    assert (got is e) == want and (not why) == want
    assert choose([e], "allreduce", 4, True, counts, None) == (None, [])
    assert choose([e], "allgather", 4, False, counts, None) == (None, [])
    assert choose([e], "allreduce", 8, False, counts, None) == (None, [])


def test_choose_prefers_root_then_narrowest_then_name():
    counts = nccl_counts("broadcast", 4, 4096, 4)
    wide = entry("a.xml", "broadcast", root=1)
    narrow = entry("b.xml", "broadcast", lo=1024, hi=8192, root=1)
    other = entry("c.xml", "broadcast", lo=4096, hi=4096, root=3)
    assert choose([wide, narrow, other], "broadcast", 4, False, counts, 1)[0] is narrow
    assert choose([wide, narrow, other], "broadcast", 4, False, counts, None)[0] is other
    assert (
        choose([wide, replace(narrow, name="0.xml")], "broadcast", 4, False, counts, 1)[0].name
        == "0.xml"
    )


def test_unserved_size_names_the_nearest_that_works():
    e = entry("a.xml", "allreduce", ncpl=6)
    got, why = choose([e], "allreduce", 4, False, nccl_counts("allreduce", 4, 1000, 4), None)
    assert got is None and why == [
        "a.xml: 1000 B is not a multiple of 24 B (6 chunks per loop of 4-byte elements); "
        "try --size 984 (984)"
    ]
    assert size_granule(e.plan, 4, 4) == 24


# -- end to end under mpiexec ----------------------------------------------------------------

pytest.importorskip("mpi4py")
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which(str(BIN / "mpiexec"))
TACCL = shutil.which(str(BIN / "taccl"))
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or TACCL is None, reason="needs the venv's mpiexec and taccl script"
)
ROOT = 2


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Direct plans of every kind on 4 ranks, out of place and in place; rooted ones for
    root 2; plus an AllGather plan that serves only up to 2 KiB (out of place)."""
    from taccl_py.build.pipeline import build_plan
    from taccl_py.plan.xml import write_plan
    from taccl_py.topology.model import FULL_BISECTION, Switch, Topology

    topo = Topology(
        "host4", 4, 1, (), (Switch("host", 0, (0, 1, 2, 3), 1e10, 1e-6),), (), FULL_BISECTION
    )
    out = tmp_path_factory.mktemp("library")
    for kind in ALL_KINDS:
        for inplace in (False, True):
            root = ROOT if kind in ROOTED_KINDS else 0
            plan = build_plan(topo, Collective(kind, 4, 1, inplace, root), "direct").plan
            write_plan(plan, out / f"{kind}-{'ip' if inplace else 'oop'}.xml")
    return out


def mpirun(*args, n=4, timeout=180):
    return subprocess.run(
        [MPIEXEC, "-n", str(n), TACCL, "run", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(stdout: str) -> list[list[str]]:
    return [ln.split() for ln in stdout.splitlines() if ln.strip() and not ln.startswith("#")]


@needs_mpi
def test_library_sweep_checks_every_kind(library):
    """-b 1K -e 4K -f 4 with -c 1 over every kind, both placements, root 2."""
    proc = mpirun(library, "-b", "1K", "-e", "4K", "-f", "4", "-n", "1", "-w", "0", "-c", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert len(table) == 2 * len(ALL_KINDS)
    for kind in ALL_KINDS:
        mine = [r for r in table if r[-1] == f"{kind}-oop.xml,{kind}-ip.xml"]
        assert [int(r[0]) for r in mine] == [1024, 4096], kind
        for r in mine:
            assert r[4] == (str(ROOT) if kind in ROOTED_KINDS else "-1")
            assert r[3] == ("sum" if kind in ("allreduce", "reducescatter", "reduce") else "none")
            assert r[8] == "0" and r[12] == "0"  # #wrong, out of place and in place
            assert float(r[5]) > 0 and float(r[9]) > 0 and float(r[13]) > 0
            count = int(r[1])
            assert count * 4 * (4 if kind in PER_RANK else 1) == int(r[0])
    assert "# Out of bounds values : 0 OK" in proc.stdout
    assert "# Avg bus bandwidth" in proc.stdout and "check ok" in proc.stdout


@needs_mpi
def test_rooted_types_ops_and_unserved_rows(library, tmp_path):
    """Reduce with max over int32 and half; a size no plan serves is a row saying so."""
    for name in ("reduce-oop.xml", "reduce-ip.xml"):
        shutil.copy(library / name, tmp_path / name)
    small = (tmp_path / "reduce-oop.xml").read_text().replace('maxBytes="0"', 'maxBytes="2048"')
    (tmp_path / "reduce-oop.xml").write_text(small)
    (tmp_path / "reduce-ip.xml").unlink()
    proc = mpirun(
        tmp_path, "-b", "1K", "-e", "4K", "-f", "4", "-d", "int32,half", "-o", "max", "-r", "2",
        "-n", "1", "-w", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = rows(proc.stdout)
    assert [(r[0], r[2], r[3], r[4]) for r in table] == [
        ("1024", "int32", "max", "2"),
        ("4096", "int32", "max", "2"),
        ("1024", "half", "max", "2"),
        ("4096", "half", "max", "2"),
    ]
    for r in table:
        if r[0] == "1024":
            assert r[8] == "0" and r[9] == "n/a" and r[-1] == "reduce-oop.xml,-"
        else:
            assert " ".join(r[5:]).startswith("no plan serves reduce of 4096 B")
            assert "outside its minBytes..maxBytes 0..2048" in " ".join(r)


@needs_mpi
@pytest.mark.parametrize(
    "args, needle",
    [
        (["reduce-oop.xml", "-r", "1"], "for root 2, not root 1"),
        (["gather-oop.xml", "-r", "4"], "root 4 is not a rank of 4"),
        (["broadcast-oop.xml", "--size", "1000"], "no plan serves broadcast"),
    ],
)
def test_bad_runs_fail_once_on_every_rank(library, args, needle):
    proc = mpirun(library / args[0], *args[1:], "-n", "1", "-w", "0", timeout=120)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("taccl: error:") and needle in lines[0]

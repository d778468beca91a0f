"""Plan libraries: contiguous, non-overlapping ranges, each served only where it beats NCCL."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.build.candidates import CandidateOptions, build_candidates, is_nccl_algorithm
from taccl_py.build.library import (
    LibraryOptions,
    build_library,
    span_sizes,
    write_library,
)
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.plan.runtimes import RUNTIMES, check_runtime, selects
from taccl_py.plan.verify import verify
from taccl_py.plan.xml import parse_plan
from taccl_py.topology.loader import load_topology

FAST = ("smt", "ring", "tree", "direct")  # no milp: seconds, not minutes


@settings(max_examples=200)
@given(st.integers(1, 1 << 40), st.integers(0, 1 << 40))
def test_span_sizes_cover_the_span_in_doublings(lo, extra):
    hi = lo + extra
    sizes = span_sizes(lo, hi)
    assert sizes[0] == lo and sizes[-1] == hi
    assert sizes == sorted(set(sizes))
    inner = sizes[1:-1]
    assert all(p & (p - 1) == 0 for p in inner)  # powers of two inside
    assert all(b <= 2 * a for a, b in itertools.pairwise(sizes))


def test_span_sizes_refuse_empty_spans():
    with pytest.raises(TacclError, match="need 0 < low <= high"):
        span_sizes(0, 10)
    with pytest.raises(TacclError, match="need 0 < low <= high"):
        span_sizes(10, 5)


def test_candidates_are_verified_and_name_nccl_algorithms():
    topo = load_topology("dgx1")
    found = build_candidates(
        topo,
        Collective("allreduce", 8),
        CandidateOptions(methods=("smt", "ring", "tree", "direct")),
    )
    methods = [c.method for c in found.candidates]
    assert methods == ["ring", "tree", "direct"]  # smt does no AllReduce: not attempted
    for c in found.candidates:
        assert c.report.ranks == 8
        assert not check_runtime(c.plan, "msccl-executor")
    assert is_nccl_algorithm("tree", "allreduce") and not is_nccl_algorithm("tree", "allgather")
    assert is_nccl_algorithm("direct", "alltoall") and not is_nccl_algorithm("ring", "alltoall")


@pytest.fixture(scope="module")
def dgx1_allgather():
    topo = load_topology("dgx1")
    return build_library(
        topo, Collective("allgather", 8), LibraryOptions(lo=1 << 10, hi=1 << 30, methods=FAST)
    )


def test_library_ranges_are_contiguous_disjoint_and_beat_nccl(dgx1_allgather):
    lib = dgx1_allgather
    assert lib.entries, "the DGX-1 direct/smt AllGather beats NCCL's ring somewhere"
    for a, b in zip(lib.entries, lib.entries[1:]):
        assert a.hi <= b.lo
    for e in lib.entries:
        assert not is_nccl_algorithm(e.served.candidate.method, "allgather")
        assert e.plan.proto == e.served.proto
        verify(e.plan)
    for row in lib.rows:
        covering = [e for e in lib.entries if e.lo <= row.size < e.hi]
        assert len(covering) == (row.served is not None)
        assert row.served_time <= row.nccl.time * (1 + 1e-12)
        if row.served is not None:
            assert row.speedup >= 1.0 / (1 - 0.01) - 1e-9
        else:
            assert row.served_time == row.nccl.time


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_written_library_is_selected_exactly_on_its_ranges(tmp_path, dgx1_allgather, runtime):
    lib = (
        dgx1_allgather  # built for this runtime already (the default one)
        if dgx1_allgather.options.runtime == runtime
        else build_library(
            dgx1_allgather.topology,
            dgx1_allgather.collective,
            LibraryOptions(lo=1 << 10, hi=1 << 30, methods=FAST, runtime=runtime),
        )
    )
    files = write_library(lib, tmp_path / "lib")
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == sorted(p.name for p in files)
    limit = RUNTIMES[runtime].max_files
    assert limit is None or len(files) <= limit
    plans = [parse_plan(p) for p in files]
    for plan in plans:
        assert not check_runtime(plan, runtime)
    for row in lib.rows:
        chosen = [p for p in plans if selects(RUNTIMES[runtime], p, row.size)]
        assert len(chosen) == (row.served is not None), row


def test_write_library_refuses_a_non_empty_directory(tmp_path, dgx1_allgather):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "other.xml").write_text("x")
    with pytest.raises(TacclError, match="not an empty directory"):
        write_library(dgx1_allgather, tmp_path / "lib")
    assert sorted(p.name for p in (tmp_path / "lib").iterdir()) == ["other.xml"]

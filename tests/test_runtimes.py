"""Plans the target runtime loads and selects: each loader rule broken once, the size
selection of both runtimes, lowering that fits a runtime, and `taccl verify --runtime`."""

from __future__ import annotations

import doctest
import re
from dataclasses import replace

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.cli import main
from taccl_py.collectives import Collective
from taccl_py.errors import PlanError
from taccl_py.ir.algorithm import Algorithm, Transfer
from taccl_py.lowering.lower import LowerOptions, lower
from taccl_py.plan import runtimes
from taccl_py.plan.model import Plan, Step, Threadblock
from taccl_py.plan.runtimes import (
    DEFAULT_RUNTIME,
    MSCCL_OPEN_TOP,
    RUNTIMES,
    check_library,
    check_runtime,
    deploy_lines,
    selection_bytes,
    selects,
    size_range,
)
from taccl_py.plan.verify import verify
from taccl_py.plan.xml import parse_plan, plan_to_xml, write_plan
from taccl_py.synth.methods import SynthOptions, synthesize
from taccl_py.topology.loader import load_topology

EXECUTOR, MSCCL = RUNTIMES["msccl-executor"], RUNTIMES["msccl"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def ring(kind: str = "allgather", topology: str = "dgx1", **lowering) -> Plan:
    topo = load_topology(topology)
    alg = synthesize(topo, Collective(kind, topo.num_ranks), "ring")
    return lower(alg, topo, LowerOptions(**lowering))


def sized(plan: Plan, runtime: str, lo: int = 1024, hi: int | None = 1 << 20) -> Plan:
    lo_b, hi_b = selection_bytes(RUNTIMES[runtime], lo, hi)
    return replace(plan, min_bytes=lo_b, max_bytes=hi_b)


def unmergeable(k: int) -> Algorithm:
    """AllGather on 2 ranks, chunk-up k, one chunk per step: threadblocks of k steps."""
    ts = [Transfer(j, float(j), b, 1 - b, b * k + (j * 7) % k) for b in range(2) for j in range(k)]
    return Algorithm("long", Collective("allgather", 2, k), ts)


def test_module_examples():
    assert doctest.testmod(runtimes).failed == 0


def test_default_runtime_is_the_executor():
    assert DEFAULT_RUNTIME == "msccl-executor"
    assert (EXECUTOR.max_steps, MSCCL.max_steps) == (64, 256)
    assert (EXECUTOR.max_files, MSCCL.max_files) == (None, 4)


# -- each rule broken once ---------------------------------------------------------------------


def test_coll_spelling():
    text = plan_to_xml(sized(ring("reducescatter"), "msccl"), "msccl")
    assert 'coll="reduce_scatter"' in text
    plan = parse_plan(text)  # the parser reads both spellings
    assert plan.coll == "reducescatter" and check_runtime(plan, "msccl") == []
    (line,) = check_runtime(plan, "msccl-executor")
    assert line.startswith(
        'coll="reduce_scatter": msccl-executor reads reducescatter only as coll="reducescatter"'
    )
    back = parse_plan(plan_to_xml(plan))
    assert (back.source.coll, check_runtime(back)) == ("reducescatter", [])
    assert check_runtime(back, "msccl")[0].startswith('coll="reducescatter": msccl reads')


def test_missing_attribute():
    text = plan_to_xml(sized(ring(), "msccl-executor"))
    start = text.index(' maxBytes="')
    no_max = text[:start] + text[text.index('"', start + 11) + 1 :]
    (line,) = check_runtime(parse_plan(no_max), "msccl-executor")
    assert line.startswith("missing attribute maxBytes: msccl-executor requires it")
    # msccl reads a missing maxBytes as 128 MiB
    plan = parse_plan(no_max)
    assert size_range(MSCCL, plan) == (1024, 1 << 27) and check_runtime(plan, "msccl") == []
    no_name = re.sub(r' (name|s_chunks)="[^"]*"', "", text)
    lines = check_runtime(parse_plan(no_name), "msccl")
    assert lines[0].startswith("missing attributes name, gpu.s_chunks: msccl requires them")


def test_max_bytes_zero_under_msccl():
    plan = ring()
    (line,) = check_runtime(plan, "msccl")
    assert line.startswith("maxBytes=0: msccl never selects it")
    assert check_runtime(plan, "msccl-executor") == []  # 0 = no upper end
    assert check_runtime(replace(plan, min_bytes=10, max_bytes=5), "msccl")[0].startswith(
        "minBytes=10 > maxBytes=5: msccl skips the plan"
    )
    assert "selects no size" in check_runtime(replace(plan, min_bytes=10, max_bytes=5))[0]


def test_overlapping_ranges_for_the_executor():
    plan = Plan("p", "allgather", 8, 48)
    a = sized(plan, "msccl-executor", 1024, 1 << 20)
    b = sized(plan, "msccl-executor", 1 << 19, None)
    (line,) = check_library([("b.xml", b), ("a.xml", a)], "msccl-executor")
    assert line.startswith(
        "a.xml and b.xml both select allgather on 8 ranks (out-of-place) "
        "for sizes 524304..1048575: msccl-executor takes a.xml"
    )
    (line,) = check_library([("a.xml", b), ("b.xml", b)], "msccl-executor")
    assert "for sizes 524304 and up" in line  # the first multiple of 48 (nchunksperloop)
    after = sized(plan, "msccl-executor", 1 << 20, None)
    assert check_library([("a.xml", a), ("b.xml", after)], "msccl-executor") == []
    inplace = replace(b, inplace=True, outofplace=False)
    assert check_library([("a.xml", a), ("b.xml", inplace)], "msccl-executor") == []


def test_more_than_four_files_under_msccl():
    plan = Plan("p", "allgather", 8, 8)
    plans = [(f"{i}.xml", sized(plan, "msccl", 1024 << i, 2048 << i)) for i in range(5)]
    (line,) = check_library(plans, "msccl")
    assert (
        line == "5 plan files: msccl loads at most 4 (MSCCL_XML_FILES) and ignores the rest (4.xml)"
    )
    assert check_library(plans[:4], "msccl") == []
    spread = [(f"{i}.xml", sized(plan, "msccl-executor", 1024 << i, 2048 << i)) for i in range(5)]
    assert check_library(spread, "msccl-executor") == []


def test_steps_per_threadblock():
    plan = sized(lower(unmergeable(64), options=LowerOptions(runtime="msccl")), "msccl-executor")
    assert max(len(tb.steps) for g in plan.gpus for tb in g.tbs) == 65
    (line,) = check_runtime(plan)
    assert line.startswith("gpu 0 tb ") and "has 65 steps" in line
    assert (
        "msccl-executor allows 64 per threadblock; a build with make MSCCL_MAX_NUM_STEPS=N" in line
    )
    assert check_runtime(plan, max_steps=256) == []
    assert check_runtime(plan, max_steps=65) == []
    with pytest.raises(PlanError, match="max_steps=2000 outside 1..1024"):
        check_runtime(plan, max_steps=2000)


def test_depid_over_127():
    plan = ring()
    gpu = plan.gpus[0]
    gpu.tbs += [Threadblock(i) for i in range(len(gpu.tbs), 130)]
    gpu.tbs[0].steps[0] = replace(gpu.tbs[0].steps[0], depid=129, deps=0)
    (line,) = check_runtime(plan, selection=False)
    assert line == (
        "gpu 0 tb 0 step 0 depends on tb 129: depid is stored as int8, so "
        "msccl-executor would wait on the wrong threadblock (ids above 127)"
    )


def test_more_than_1024_children():
    plan = ring()
    plan.gpus[0].tbs += [Threadblock(i) for i in range(len(plan.gpus[0].tbs), 1025)]
    lines = check_runtime(plan, selection=False)
    assert "gpu 0 has 1025 threadblocks: msccl-executor allows 1024 per gpu" in lines
    assert (
        "gpu 0 has 1025 <tb> children: the loader keeps at most 1024 children per element" in lines
    )


def test_more_than_4095_elements_per_rank():
    plan = ring()  # 8 ranks: 1 <algo> + 8 <gpu>
    gpu = plan.gpus[3]
    extra = 4095 - (1 + 8 + len(gpu.tbs) + sum(len(tb.steps) for tb in gpu.tbs))
    sizes = [50] * (extra // 51) + ([extra % 51 - 1] if extra % 51 else [])
    gpu.tbs += [
        Threadblock(len(gpu.tbs) + i, steps=[Step(s, "nop") for s in range(k)])
        for i, k in enumerate(sizes)
    ]  # a <tb> and its k <step>s each
    assert check_runtime(plan, selection=False) == []  # exactly 4095
    gpu.tbs.append(Threadblock(len(gpu.tbs)))
    (line,) = check_runtime(plan, selection=False)
    assert line.startswith(
        "rank 3 needs 4096 XML elements (1 <algo>, every <gpu>, its own "
        "<tb> and <step>): the loader keeps at most 4095"
    )


def test_channel_32():
    plan = ring()
    plan.nchannels = 33
    plan.gpus[2].tbs[0].chan = 32
    lines = check_runtime(plan, "msccl", selection=False)
    assert lines == [
        "nchannels=33: msccl has 32 channels",
        "gpu 2 tb 0 is on channel 32: msccl has channels 0..31",
    ]


def test_threadblocks_per_channel():
    plan = ring()
    gpu = plan.gpus[0]
    gpu.tbs += [Threadblock(len(gpu.tbs) + i, send=1) for i in range(32)]
    (line,) = check_runtime(plan, selection=False)
    assert line == (
        "gpu 0 has more than 32 threadblocks that send on channel 0: msccl-executor allows 32"
    )


def test_threadblocks_per_gpu_under_msccl():
    plan = ring()
    gpu = plan.gpus[0]
    gpu.tbs += [Threadblock(i, chan=1) for i in range(len(gpu.tbs), 217)]
    assert check_runtime(plan, "msccl", selection=False) == [
        "gpu 0 has 217 threadblocks: msccl allows 216 per gpu"
    ]
    assert check_runtime(plan, selection=False) == []


def test_names_the_reader_cannot_read():
    plan = replace(ring(), name='a "b"')
    assert check_runtime(plan, selection=False)[0].startswith("<algo name>: has '\"'")
    assert "256 characters long" in check_runtime(replace(plan, name="x" * 256), selection=False)[0]


def test_no_selectable_size():
    plan = replace(ring(), nchunksperloop=48)  # sizes must be multiples of 48
    assert check_runtime(replace(plan, min_bytes=1, max_bytes=47), selection=True)[-1].endswith(
        "no size in that range divides into nchunksperloop=48 chunks, so "
        "msccl-executor never selects it"
    )
    assert check_runtime(replace(plan, min_bytes=1, max_bytes=48)) == []


# -- size selection -------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    lo=st.integers(0, 1 << 40),
    span=st.integers(1, 1 << 40),
    runtime=st.sampled_from(sorted(RUNTIMES)),
    kind=st.sampled_from(["allgather", "allreduce"]),
    picks=st.lists(st.integers(0, 1 << 41), max_size=8),
)
def test_selection_bytes_selects_exactly_the_range(lo, span, runtime, kind, picks):
    hi = lo + span
    if hi <= 1:
        with pytest.raises(PlanError, match="holds no size"):
            selection_bytes(RUNTIMES[runtime], lo, hi)
        return
    rules = RUNTIMES[runtime]
    lo_b, hi_b = selection_bytes(rules, lo, hi)
    plan = Plan("p", kind, 8, 8, min_bytes=lo_b, max_bytes=hi_b)
    assert check_runtime(plan, runtime) == [] or lo // 32 == (hi - 1) // 32  # none divides
    unit = 32  # 4-byte elements, 8 ranks, 8 chunks: every multiple of 32 divides evenly
    near = [b // unit * unit + d * unit for b in (lo, hi) for d in (-1, 0, 1)]
    for n in near + [p // unit * unit for p in picks]:
        if n > 0:
            assert selects(rules, plan, n) == (lo <= n < hi), (n, lo_b, hi_b)


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_an_open_range(runtime):
    rules = RUNTIMES[runtime]
    plan = Plan("p", "allreduce", 8, 8)
    plan.min_bytes, plan.max_bytes = selection_bytes(rules, 4096, None)
    assert not selects(rules, plan, 4064) and selects(rules, plan, 4096)
    assert selects(rules, plan, 1 << 30)
    # msccl sizes its scratch from maxBytes: an open range ends at 2 GiB
    assert selects(rules, plan, MSCCL_OPEN_TOP) == (runtime == "msccl-executor")
    assert selection_bytes(MSCCL, 3 << 30, None) == (3 << 30, 4 << 30)


def test_selection_needs_divisible_sizes():
    plan = Plan("p", "allreduce", 8, 48, min_bytes=0, max_bytes=0)  # chunk-up 6 on 8 ranks
    assert not selects(EXECUTOR, plan, 1 << 20)  # 262144 floats do not split in 48
    assert selects(EXECUTOR, plan, 48 * 4 * 1000)
    ag = Plan("p", "allgather", 8, 48, min_bytes=0, max_bytes=1 << 30)
    # msccl counts AllGather in bytes, the executor in elements
    assert selects(MSCCL, ag, 96) and not selects(EXECUTOR, ag, 96)  # 24 floats
    assert selects(EXECUTOR, ag, 96, type_size=1)
    assert not selects(EXECUTOR, ag, 0)


# -- deployment -------------------------------------------------------------------------------


def test_deploy_lines(tmp_path):
    lib = tmp_path / "my plans"
    assert deploy_lines("msccl-executor", lib, ["a.xml"]) == [f"MSCCL_ALGO_DIR='{lib}'"]
    assert deploy_lines("msccl", lib, ["a.xml", "b.xml"]) == [
        f"MSCCL_XML_FILES='{lib}/a.xml:{lib}/b.xml'",
        "NCCL_ALGO=MSCCL,Tree,Ring,CollNet",
    ]
    with pytest.raises(PlanError, match="5 plan files: msccl loads at most 4"):
        deploy_lines("msccl", lib, [f"{i}.xml" for i in range(5)])
    with pytest.raises(PlanError, match="holds ':'"):
        deploy_lines("msccl", lib, ["a:b.xml"])
    with pytest.raises(PlanError, match="unknown runtime 'nccl'"):
        deploy_lines("nccl", lib, [])


# -- lowering fits the runtime -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ring", "milp"])
def test_ndv2_2x8_allreduce_fits_the_executor(method):
    topo = load_topology("ndv2", 2)
    alg = synthesize(topo, Collective("allreduce", 16), method, SynthOptions(time_limit=3.0))
    plan = lower(alg, topology=topo)
    assert max(len(tb.steps) for g in plan.gpus for tb in g.tbs) <= 64
    assert check_runtime(plan, selection=False) == []
    verify(plan)
    roomy = lower(alg, topo, LowerOptions(runtime="msccl"))
    if max(len(tb.steps) for g in roomy.gpus for tb in g.tbs) > 64:  # milp's: spread out
        assert plan.nchannels > roomy.nchannels


def test_lowering_raises_where_no_channels_are_left():
    alg = unmergeable(300)
    alg.transfers[0] = replace(alg.transfers[0], channel=31)
    with pytest.raises(
        PlanError,
        match="has 304 steps.*allows 64 per threadblock.*with 32 channel.*a smaller chunk-up",
    ):
        lower(alg)
    assert lower(alg, options=LowerOptions(max_steps=1024)).nchannels == 32


def _relays(relayed: set[int]) -> Algorithm:
    """Direct AllGather on 6 ranks, chunk-up 32, chunk j on channel j; each rank s in
    ``relayed`` sends its chunks to the next rank through rank 1 instead, arriving there
    on channel j (31 for a single relayed rank) and leaving on another."""
    n, k = 6, 32
    ts = []
    for s in range(n):
        nxt = next((d for d in range(n) if d not in (1, s) and d > s), 0) if s in relayed else None
        for j in range(k):
            for d in range(n):
                if d not in (s, nxt):
                    chan = 31 if relayed == {s} and d == 1 else j
                    ts.append(Transfer(0, 0.0, s, d, s * k + j, channel=chan))
            if nxt is not None:
                ts.append(
                    Transfer(
                        1, 1.0, 1, nxt, s * k + j, channel=0 if relayed == {s} else (j + 1) % k
                    )
                )
    return Algorithm("relays", Collective("allgather", n, k), ts)


def test_waited_for_threadblocks_get_ids_below_128():
    plan = lower(_relays({0}))
    verify(plan)
    gpu = plan.gpus[1]
    assert len(gpu.tbs) == 160
    (waited,) = {st.depid for tb in gpu.tbs for st in tb.steps if st.depid >= 0}
    assert waited == 0 and (gpu.tbs[0].recv, gpu.tbs[0].chan) == (0, 31)
    full = lower(_relays({0, 2, 3, 4}))  # 128 waited-for threadblocks on rank 1: ids 0..127
    assert max(st.depid for g in full.gpus for tb in g.tbs for st in tb.steps) == 127
    with pytest.raises(
        PlanError,
        match="rank 1: steps wait for 160 threadblocks, but a step's "
        r"depid is stored as int8 \(ids 0..127\)",
    ):
        lower(_relays({0, 2, 3, 4, 5}))


# -- taccl verify --runtime ----------------------------------------------------------------------


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("kind", ["allgather", "reducescatter", "allreduce"])
def test_a_plan_written_for_a_runtime_passes_verify(tmp_path, runtime, kind):
    path = write_plan(sized(ring(kind, runtime=runtime), runtime), tmp_path / "p.xml", runtime)
    res = run("verify", str(path), "--runtime", runtime, "--no-reference")
    assert res.exit_code == 0, res.output
    assert f"{runtime} loads it, for sizes from 1K below 1M" in res.output
    other = "msccl" if runtime == "msccl-executor" else "msccl-executor"
    if kind == "reducescatter":
        assert run("verify", str(path), "--runtime", other, "--no-reference").exit_code == 1


def test_verify_lists_each_broken_rule(tmp_path):
    plan = sized(lower(unmergeable(64), options=LowerOptions(runtime="msccl")), "msccl-executor")
    a = write_plan(plan, tmp_path / "a.xml")
    b = write_plan(replace(plan, min_bytes=2048), tmp_path / "b.xml")
    res = run("verify", str(a), str(b), "--runtime", "msccl-executor", "--no-reference")
    assert res.exit_code == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("taccl: error: ") for line in lines)
    assert "a.xml: gpu 0 tb " in lines[0] and "has 65 steps" in lines[0]
    assert lines[2].startswith(f"taccl: error: {a} and {b} both select allgather on 2 ranks")
    ok = run(
        "verify", str(a), "--runtime", "msccl-executor", "--max-steps", "256", "--no-reference"
    )
    assert ok.exit_code == 0, ok.output
    assert run("verify", str(a), "--no-reference").exit_code == 0  # data level only
    res = run("verify", str(a), "--max-steps", "256")
    assert res.exit_code == 2 and "--max-steps applies with --runtime only" in res.stderr

"""Exact SMT synthesis (SCCL-style (S, R, C) synchronous algorithms) and its frontier."""

from __future__ import annotations

from fractions import Fraction

import pytest
from click.testing import CliRunner

from taccl_py.analysis.simulate import simulate
from taccl_py.cli import main
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.lowering.lower import lower
from taccl_py.plan.verify import verify
from taccl_py.plan.xml import parse_plan
from taccl_py.synth import smt
from taccl_py.synth.methods import SynthOptions, synthesize
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import FULL_BISECTION, Link, Nic, Switch, Topology

GB, US = 1e9, 1e-6
SIZES = (1 << 10, 1 << 20, 1 << 30)


def ring4() -> Topology:
    """4 GPUs in a bidirectional ring of single 25 GB/s links."""
    links = [Link(a, b, 25 * GB, 0.7 * US) for a in range(4) for b in ((a + 1) % 4, (a - 1) % 4)]
    return Topology("ring4", 4, 1, tuple(links), (), (), FULL_BISECTION)


def check_runs(alg, topo) -> list[float]:
    alg.check()
    plan = lower(alg, topology=topo)
    verify(plan)
    times = [simulate(plan, topo, size).time for size in SIZES]
    assert all(t > 0 for t in times)
    return times


@pytest.fixture(scope="module")
def dgx1():
    return load_topology("dgx1")


def test_static_bounds(dgx1):
    assert smt.least_steps(dgx1, "allgather") == 2
    assert smt.unit_bandwidth(dgx1) == pytest.approx(25 * GB)
    assert smt.least_rounds_per_chunk(dgx1, "allgather") == pytest.approx(7 / 6)
    cap = smt.resource_capacity(dgx1)
    assert cap["link:0->1"] == 2 and cap["link:0->2"] == 1  # double / single NVLink
    assert cap["nicout:n0.nic0"] == Fraction(1, 2)
    assert smt.least_steps(ring4(), "allgather") == 2
    assert smt.least_rounds_per_chunk(ring4(), "allgather") == pytest.approx(3 / 2)


def test_dgx1_allgather_frontier(dgx1):
    front = smt.pareto(dgx1, "allgather", max_chunks=6, time_limit=60)
    got = [(p.steps, p.rounds, p.chunks) for p in front.points]
    assert got == [(2, 3, 2), (3, 7, 6)]  # latency-optimal, bandwidth-optimal (SCCL)
    assert front.points[-1].ratio == Fraction(7, 6)
    for p in front.points:
        assert p.algorithm.num_steps == p.steps
        assert p.algorithm.collective.chunkup == p.chunks
        assert sum(p.algorithm.meta["rounds_per_step"]) == p.rounds
        check_runs(p.algorithm, dgx1)


def test_dgx1_known_unsat(dgx1):
    with pytest.raises(TacclError, match="unsat: no algorithm with 2 steps, 4 rounds, 3 chunks"):
        smt.smt_algorithm(dgx1, "allgather", 2, 4, 3, time_limit=60)


def test_ring_too_few_steps_or_rounds_unsat():
    topo = ring4()
    with pytest.raises(TacclError, match="unsat"):
        smt.smt_algorithm(topo, "allgather", 1, 3, 1)
    with pytest.raises(TacclError, match="unsat"):  # R/C = 1 < 3/2 cut bound
        smt.smt_algorithm(topo, "allgather", 2, 2, 2)
    alg = smt.smt_algorithm(topo, "allgather", 2, 3, 2)
    check_runs(alg, topo)


def test_ring_frontier_both_collectives():
    topo = ring4()
    front = smt.pareto(topo, "allgather", max_chunks=4, time_limit=30)
    assert [(p.steps, p.rounds, p.chunks) for p in front.points] == [(2, 3, 2)]
    front = smt.pareto(topo, "alltoall", max_chunks=2, time_limit=30)
    assert front.points
    for p in front.points:
        check_runs(p.algorithm, topo)


def switch4() -> Topology:
    """4 GPUs on one switch, 25 GB/s ports (shared in- and out-ports)."""
    return Topology(
        "switch4", 4, 1, (), (Switch("sw", 0, (0, 1, 2, 3), 25 * GB, 1 * US),), (), FULL_BISECTION
    )


def two_by_two() -> Topology:
    """2 nodes of 2 NVLinked GPUs, one 12.5 GB/s NIC per node (half a round's unit)."""
    links = [Link(2 * n + a, 2 * n + 1 - a, 25 * GB, 0.7 * US) for n in range(2) for a in range(2)]
    nics = tuple(Nic(f"nic{n}", n, 0, (2 * n, 2 * n + 1), 12.5 * GB, 2 * US) for n in range(2))
    return Topology("twobytwo", 2, 2, tuple(links), (), nics, FULL_BISECTION)


def test_switch_ports_bound_each_step():
    topo = switch4()
    front = smt.pareto(topo, "allgather", max_chunks=2, time_limit=30)
    assert [(p.steps, p.rounds, p.chunks) for p in front.points] == [(1, 3, 1)]
    with pytest.raises(TacclError, match="unsat"):  # an in-port takes 1 chunk per round
        smt.smt_algorithm(topo, "allgather", 1, 2, 1)
    for kind in ("allgather", "alltoall"):
        alg = smt.smt_algorithm(topo, kind, 1, 3, 1)
        check_runs(alg, topo)


def test_shared_half_speed_nic_frontier():
    topo = two_by_two()
    assert smt.resource_capacity(topo)["nicin:nic0"] == Fraction(1, 2)
    front = smt.pareto(topo, "allgather", max_steps=3, max_chunks=2, time_limit=30)
    got = [(p.steps, p.rounds, p.chunks) for p in front.points]
    # 1 step: node 0's NIC takes 4 chunks at half a chunk per round
    assert got == [(1, 8, 1), (2, 5, 1), (3, 9, 2)]
    assert all(p.proven for p in front.points)
    for p in front.points:
        check_runs(p.algorithm, topo)


def test_method_smt(dgx1):
    coll = Collective("allgather", 8)
    alg = synthesize(dgx1, coll, "smt", SynthOptions(steps=2, rounds=3, chunks=2))
    assert alg.meta["method"] == "smt" and alg.collective.chunkup == 2
    topo = ring4()
    alg = synthesize(
        topo, Collective("allgather", 4), "smt", SynthOptions(chunks=2)
    )  # frontier's best
    assert (alg.meta["steps"], alg.meta["rounds"], alg.meta["chunks"]) == (2, 3, 2)
    with pytest.raises(TacclError, match="smt method supports"):
        synthesize(topo, Collective("allreduce", 4), "smt", SynthOptions(steps=2, rounds=3))


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_pareto_prints_frontier():
    res = run("pareto", "-t", "dgx1", "-c", "allgather", "--max-chunks", "6")
    assert res.exit_code == 0, res.output
    rows = [line.split() for line in res.stdout.splitlines()[2:]]
    assert [r[:4] for r in rows] == [["2", "3", "2", "1.5"], ["3", "7", "6", "1.167"]]
    assert all(len(r) == 8 for r in rows)
    assert "R/C" in res.stdout and "1G us" in res.stdout
    assert "smt (S 3, R 7, C 6): sat in" in res.stderr  # live progress, on stderr only


def test_cli_synthesize_smt_writes_verified_plan(tmp_path):
    out = tmp_path / "smt.xml"
    res = run(
        "synthesize",
        "-t",
        "dgx1",
        "-c",
        "allgather",
        "-m",
        "smt",
        "--steps",
        "2",
        "--rounds",
        "3",
        "--chunks",
        "2",
        "-o",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert "method smt" in res.output and "chunk-up 2" in res.output
    verify(parse_plan(out))
    res = CliRunner().invoke(
        main,
        [
            "synthesize",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "-m",
            "smt",
            "--steps",
            "2",
            "--rounds",
            "4",
            "--chunks",
            "3",
            "-o",
            str(tmp_path / "no.xml"),
        ],
    )
    assert res.exit_code == 2
    assert "unsat: no algorithm with 2 steps, 4 rounds, 3 chunks" in res.stderr
    res = CliRunner().invoke(
        main,
        [
            "synthesize",
            "-m",
            "ring",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "--steps",
            "2",
            "-o",
            str(tmp_path / "x.xml"),
        ],
    )
    assert res.exit_code == 2 and "only apply to --method smt" in res.stderr


@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
def test_switch_plan_keeps_ports_apart_within_a_step(kind):
    """The rounds of a step are realised: each shared port carries one chunk per round."""
    topo = switch4()
    front = smt.pareto(topo, kind, max_chunks=2, time_limit=30)
    best = min(front.points, key=lambda p: p.rounds / p.chunks)
    plan = lower(best.algorithm, topology=topo)
    verify(plan)
    coll = best.algorithm.collective
    size = 1 << 30
    per_round = coll.chunk_bytes(size) / (25 * GB)
    got = simulate(plan, topo, size).time
    assert got == pytest.approx(best.rounds * per_round, rel=1e-3)

"""Report, plots and the `simulate` / `plot` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from taccl_py.analysis.nccl_model import reusable_plans
from taccl_py.analysis.report import evaluate, format_table
from taccl_py.build.pipeline import build_plan
from taccl_py.cli import main
from taccl_py.collectives import KINDS, ROOTED_KINDS, Collective
from taccl_py.lowering.lower import LowerOptions
from taccl_py.topology.loader import builtin_names, load_topology

SIZES = [1 << 10, 1 << 20, 1 << 30]


@pytest.mark.parametrize(
    "name, nodes",
    [
        pytest.param(name, nodes, id=f"{name}-{nodes}")
        for nodes in (1, 2)
        for name in builtin_names()
        # two DGX-2 nodes (32 ranks) cost as much as all the others together; their bounds
        # are still checked by the rooted test below
        if (name, nodes) != ("dgx2", 2)
    ],
)
def test_no_plan_beats_its_lower_bound(name, nodes):
    topo = load_topology(name, nodes)
    for kind in KINDS:
        for method in ("ring", "direct"):
            plan = build_plan(topo, Collective(kind, topo.num_ranks), method).plan
            for row in evaluate(plan, topo, SIZES):
                assert row.time >= row.bound_time * (1 - 1e-9), (kind, method, row)
                assert 0 < row.pct_of_bound <= 100 + 1e-6


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("name", builtin_names())
def test_no_rooted_plan_beats_its_lower_bound(name, nodes):
    """At a root other than 0; NCCL's model is its ring (broadcast, reduce) or torch's
    point-to-point (gather, scatter), never faster than itself."""
    topo = load_topology(name, nodes)
    root = topo.num_ranks - 1
    for kind in ROOTED_KINDS:
        coll = Collective(kind, topo.num_ranks, root=root)
        built = {method: build_plan(topo, coll, method).plan for method in ("ring", "direct")}
        nccl_plans = reusable_plans(topo, coll, built, LowerOptions(), verified=True)
        for method, plan in built.items():
            for row in evaluate(plan, topo, [1 << 10, 1 << 30], nccl_plans):
                assert row.time >= row.bound_time * (1 - 1e-9), (kind, method, row)
                assert 0 < row.pct_of_bound <= 100 + 1e-6
                nccl = "ring" if kind in ("broadcast", "reduce") else "p2p"
                assert row.nccl_choice.startswith(nccl + "/")
                if method == ("ring" if nccl == "ring" else "direct"):  # NCCL's own plan
                    assert row.speedup_vs_nccl <= 1 + 1e-9


def test_rooted_report_uses_the_plans_root():
    """Rooted at rank 8 of two NDv2 nodes, a gather's bound is node 1's NIC ingress (node 0's
    half of the data must enter it over one 12.5 GB/s NIC), and the bound moves with the
    root."""
    topo = load_topology("ndv2", 2)
    plan = build_plan(topo, Collective("gather", 16, root=8), "direct").plan
    [row] = evaluate(plan, topo, [1 << 30])
    assert row.bound_time == pytest.approx((1 << 29) / 12.5e9, rel=1e-12)
    assert row.bound_detail == "ingress of node 1: nic 12.5 GB/s"
    plan = build_plan(topo, Collective("gather", 16, root=3), "direct").plan
    [row] = evaluate(plan, topo, [1 << 30])
    assert row.bound_detail == "ingress of node 0: nic 12.5 GB/s"


def test_nccl_ring_is_never_faster_than_nccls_best():
    topo = load_topology("dgx-h100", 2)
    plan = build_plan(topo, Collective("allreduce", 16), "ring").plan
    rows = evaluate(plan, topo, SIZES)
    # NCCL's ring (Simple) is one of the (algorithm, protocol) pairs NCCL picks from
    assert all(r.speedup_vs_nccl <= 1 + 1e-9 for r in rows)
    assert all(r.nccl_choice.split("/")[1] in ("Simple", "LL", "LL128") for r in rows)
    # 1 GB ring AllReduce is NIC-bound, with 8 rings over the 8 rails of 50 GB/s:
    # 2(N-1)/N * size / (8 x 50 GB/s)
    assert rows[-1].time == pytest.approx(2 * 15 / 16 * (1 << 30) / (8 * 50e9), rel=0.02)
    table = format_table(rows).splitlines()
    assert table[0].split()[:3] == ["size", "time(us)", "algbw(GB/s)"]
    assert [line.split()[0] for line in table[1:]] == ["1K", "1M", "1G"]


def _write_plan(tmp_path, *args):
    out = tmp_path / "p.xml"
    res = CliRunner().invoke(main, ["synthesize", "-m", "ring", *args, "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_simulate_command_json_and_errors(tmp_path):
    plan = _write_plan(tmp_path, "-t", "ndv2", "-n", "2", "-c", "allgather", "-m", "direct")
    res = CliRunner().invoke(
        main, ["simulate", str(plan), "-t", "ndv2", "-n", "2", "--sizes", "1K,1G", "--json"]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["size"] for r in rows] == [1024, 1 << 30]
    assert rows[1]["nccl_time"] > 0 and rows[1]["speedup_vs_nccl"] > 0
    assert rows[1]["nccl_choice"].startswith(("ring/", "tree/"))
    res = CliRunner().invoke(main, ["simulate", str(plan), "-t", "ndv2"])
    assert res.exit_code == 2 and "16 ranks" in res.stderr and "--nodes" in res.stderr


def test_plots_are_real_pngs(tmp_path):
    plan = _write_plan(tmp_path, "-t", "dgx1", "-c", "allreduce")
    algbw, timeline = tmp_path / "algbw.png", tmp_path / "timeline.png"
    res = CliRunner().invoke(
        main,
        [
            "plot",
            str(plan),
            "-t",
            "dgx1",
            "--algbw",
            str(algbw),
            "--timeline",
            str(timeline),
            "--size",
            "1M",
        ],
    )
    assert res.exit_code == 0, res.output
    img = imread(algbw)
    assert img.shape[:2] == (500, 800)
    assert np.ptp(img[..., :3]) > 0.5  # something was drawn
    img = imread(timeline)
    assert img.shape[1] == 1000 and img.shape[0] >= 300
    assert np.ptp(img[..., :3]) > 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["algbw.png", "p.xml", "timeline.png"]


def test_plot_needs_an_output(tmp_path):
    plan = _write_plan(tmp_path, "-t", "dgx1", "-c", "allgather")
    res = CliRunner().invoke(main, ["plot", str(plan), "-t", "dgx1"])
    assert res.exit_code == 2 and "--algbw" in res.stderr


def test_timeline_of_a_plan_without_traffic_is_a_clear_error(tmp_path):
    from taccl_py.analysis.simulate import SimResult
    from taccl_py.errors import TacclError
    from taccl_py.viz.plot import timeline_png

    with pytest.raises(TacclError, match="moves no data"):
        timeline_png(SimResult(0, 0.0, [0.0], {}, {}))

"""Timeline plot: natural order of resource names, a colour and legend entry per kind."""

from __future__ import annotations

import doctest

import pytest

from taccl_py.analysis.simulate import SimResult, simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.topology.loader import load_topology
from taccl_py.viz import plot
from taccl_py.viz.plot import natural_key, resource_kind, timeline_figure, timeline_png


def test_natural_order():
    names = ["link:15->2", "link:9->2", "link:9->10", "link:9->3", "swout:10", "swout:2"]
    assert sorted(names, key=natural_key) == [
        "link:9->2",
        "link:9->3",
        "link:9->10",
        "link:15->2",
        "swout:2",
        "swout:10",
    ]
    assert sorted(["nicin:n10.nic0", "nicin:n2.nic1", "nicin:n2.nic0"], key=natural_key) == [
        "nicin:n2.nic0",
        "nicin:n2.nic1",
        "nicin:n10.nic0",
    ]


def test_kinds():
    assert [
        resource_kind(n)
        for n in ("link:0->1", "swout:3", "swin:3", "nicout:a", "nicin:a", "pcie:0")
    ] == ["link", "switch port", "switch port", "NIC", "NIC", "pcie"]


def fake(names):
    return SimResult(1, 1e-6, [1e-6], {n: 1e-7 for n in names}, {n: [(0.0, 1e-7)] for n in names})


def labels(fig):
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    return rows, [t.get_text() for t in ax.get_legend().get_texts()]


def test_rows_in_natural_order_and_legend_lists_kinds_present():
    fig = timeline_figure(fake(["swout:10", "link:15->0", "link:9->0", "swin:2"]))
    rows, legend = labels(fig)
    assert rows == ["link:9->0", "link:15->0", "swin:2", "swout:10"]
    assert legend == ["link", "switch port"]
    colours = {tuple(c.get_facecolor()[0]) for c in fig.axes[0].collections}
    assert len(colours) == 2  # one colour per kind
    plot._pyplot().close(fig)


def test_real_plan_on_two_nodes():
    topo = load_topology("dgx-a100", 2)
    res = simulate(build_plan(topo, Collective("allgather", 16), "ring").plan, topo, 1 << 20)
    fig = timeline_figure(res)
    rows, legend = labels(fig)
    assert sorted(legend) == ["NIC", "switch port"]
    assert rows == sorted(res.intervals, key=natural_key)
    plot._pyplot().close(fig)
    assert timeline_png(res).startswith(b"\x89PNG")


def test_no_traffic_is_an_error():
    from taccl_py.errors import TacclError

    with pytest.raises(TacclError, match="moves no data"):
        timeline_figure(SimResult(0, 0.0, [0.0], {}, {}))


def test_docstrings():
    assert doctest.testmod(plot).failed == 0

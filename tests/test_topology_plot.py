"""`taccl topology show --png`: the drawn graph, the PNG, and clean errors."""

from __future__ import annotations

from collections import Counter

import pytest
from click.testing import CliRunner
from matplotlib.figure import Figure

from taccl_py.cli import main
from taccl_py.topology.loader import builtin_names, load_topology
from taccl_py.viz.topology import MAX_NODES, MAX_WIDTH, topology_graph, topology_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CUSTOM = """\
name: custom
gpus_per_node: 4
links:
  - {pairs: [[0, 1], [2, 3]], count: 4, bandwidth: 25, alpha: 0.7}
  - {pairs: [[1, 2]], directed: true, bandwidth: 25, alpha: 0.7}
switches:
  - {name: pcie0, gpus: all, bandwidth: 16, alpha: 1.0}
nics:
  - {name: nic0, gpus: [0, 1], bandwidth: 25, alpha: 2.0}
  - {name: nic1, gpus: [2, 3], bandwidth: 25, alpha: 2.0}
network: rail-only
"""


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_clean_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taccl: error:"), lines
    assert needle in lines[0]


def kinds(g) -> Counter:
    return Counter(kind for _, kind in g.nodes(data="kind"))


def edge_kinds(g) -> Counter:
    return Counter(kind for _, _, kind in g.edges(data="kind"))


@pytest.mark.parametrize("name", builtin_names())
@pytest.mark.parametrize("nodes", [1, 2])
def test_show_png_writes_a_png(tmp_path, name, nodes):
    out = tmp_path / "topo.png"
    res = run("topology", "show", name, "--nodes", str(nodes), "--png", str(out))
    assert res.exit_code == 0, res.output
    assert f"wrote {out}" in res.output
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["topo.png"]


def test_dgx2_graph():
    g = topology_graph(load_topology("dgx2"))
    assert kinds(g) == {"gpu": 16, "nvswitch": 1, "nic": 8, "network": 1}
    assert edge_kinds(g) == {"switch": 16, "nic": 16, "network": 8}
    assert g.degree["sw:n0.nvswitch"] == 16 and g.degree["network"] == 8
    assert all(g.degree[f"nic:n0.nic{k}"] == 3 for k in range(8))  # 2 GPUs + network


def test_dgx_h100_two_nodes_graph():
    topo = load_topology("dgx-h100", 2)
    g = topology_graph(topo)
    assert kinds(g) == {"gpu": 16, "nvswitch": 2, "nic": 16, "network": 1}
    assert edge_kinds(g) == {"switch": 16, "nic": 16, "network": 16}
    assert set(g["sw:n1.nvswitch"]) == {f"gpu{r}" for r in range(8, 16)}
    assert set(g["nic:n1.nic3"]) == {"gpu11", "network"}
    # nodes side by side: every GPU of node 1 right of every GPU of node 0
    x = {n: g.nodes[n]["pos"][0] for n in g if g.nodes[n]["kind"] == "gpu"}
    assert max(x[f"gpu{r}"] for r in range(8)) < min(x[f"gpu{r}"] for r in range(8, 16))


@pytest.mark.parametrize("name", builtin_names())
def test_widths_proportional_to_bandwidth(name):
    g = topology_graph(load_topology(name, 2))
    ratios = {d["width"] / d["bandwidth"] for _, _, d in g.edges(data=True)}
    assert max(ratios) == pytest.approx(min(ratios))
    assert max(w for _, _, w in g.edges(data="width")) == pytest.approx(MAX_WIDTH)


def test_dgx1_nvlink_bundles_are_thicker():
    g = topology_graph(load_topology("dgx1"))
    assert kinds(g) == {"gpu": 8, "nic": 4, "network": 1}
    assert edge_kinds(g) == {"nvlink": 16, "nic": 8, "network": 4}
    double, single = g.edges["gpu0", "gpu1"], g.edges["gpu0", "gpu2"]
    assert (double["count"], single["count"]) == (2, 1)
    assert double["bandwidth"] == 50e9 and double["width"] == pytest.approx(2 * single["width"])
    assert double["oneway"] is None


def test_rail_only_pcie_switch_and_one_way_link(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM)
    g = topology_graph(load_topology(str(path), 3))
    assert kinds(g) == {"gpu": 12, "pcie-switch": 3, "nic": 6, "network": 2}
    assert {n for n, k in g.nodes(data="kind") if k == "network"} == {"rail0", "rail1"}
    assert set(g["rail1"]) == {f"nic:n{k}.nic1" for k in range(3)}
    assert g.edges["gpu1", "gpu2"]["oneway"] == 1
    assert g.edges["gpu0", "gpu1"]["width"] == pytest.approx(MAX_WIDTH)  # 4 x 25 GB/s
    assert topology_png(load_topology(str(path), 3)).startswith(PNG_SIGNATURE)


def test_missing_directory_is_a_clean_error(tmp_path):
    out = tmp_path / "no-such-dir" / "topo.png"
    assert_clean_error(run("topology", "show", "dgx2", "--png", str(out)), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_target_is_a_directory_is_a_clean_error(tmp_path):
    (tmp_path / "d").mkdir()
    assert_clean_error(
        run("topology", "show", "dgx1", "--png", str(tmp_path / "d")), "cannot write"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
    assert list((tmp_path / "d").iterdir()) == []


def test_failed_drawing_leaves_the_old_file(tmp_path, monkeypatch):
    def broken(self, fname, **kwargs):
        fname.write(PNG_SIGNATURE)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", broken)
    (tmp_path / "topo.png").write_bytes(b"old")
    out = tmp_path / "topo.png"
    assert_clean_error(run("topology", "show", "dgx1", "--png", str(out)), "No space left")
    assert [p.name for p in tmp_path.iterdir()] == ["topo.png"]
    assert out.read_bytes() == b"old"


def test_too_many_nodes_is_a_clean_error(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM)
    res = run(
        "topology",
        "show",
        str(path),
        "--nodes",
        str(MAX_NODES + 1),
        "--png",
        str(tmp_path / "t.png"),
    )
    assert_clean_error(res, "too many nodes to draw")
    assert not (tmp_path / "t.png").exists()

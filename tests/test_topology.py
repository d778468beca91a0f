"""The built-in topology library, YAML loading, replication and error messages."""

from __future__ import annotations

import shutil
from pathlib import Path

import networkx as nx
import pytest
import yaml

from taccl_py.errors import TopologyError
from taccl_py.topology import loader
from taccl_py.topology.loader import builtin_names, describe, load_topology, validate_file

BUILTINS = ["dgx-a100", "dgx-h100", "dgx1", "dgx2", "mi300x", "ndv2"]
GPUS = {"dgx1": 8, "ndv2": 8, "dgx2": 16, "dgx-a100": 8, "dgx-h100": 8, "mi300x": 8}
REPO_TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"


def test_builtin_names_sorted():
    assert builtin_names() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("nodes", [1, 2])
def test_builtin_loads(name, nodes):
    topo = load_topology(name, nodes)
    assert topo.name == name
    assert topo.nodes == nodes
    assert topo.num_ranks == GPUS[name] * nodes
    assert topo.description and "\n" not in topo.description
    # every rank can reach every other one, possibly over several hops
    assert nx.is_strongly_connected(topo.graph())
    names = [n.name for n in topo.nics] + [s.name for s in topo.switches]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_files_validate(name):
    validate_file(REPO_TOPOLOGIES / f"{name}.yaml")


def test_dgx1_numbers():
    t = load_topology("dgx1")
    assert t.connection(0, 1).kind == "link"
    assert t.bandwidth(t.connection(0, 1)) == pytest.approx(50e9)
    assert t.bandwidth(t.connection(0, 2)) == pytest.approx(25e9)
    assert t.connection(0, 1).alpha == pytest.approx(0.7e-6)
    assert (0, 5) not in t.connections
    assert len(t.links) == 32
    for r in range(8):  # six NVLinks per GPU, 150 GB/s out
        out = sum(lk.bandwidth for lk in t.links if lk.src == r)
        assert out == pytest.approx(150e9)
    assert [n.ranks for n in t.nics] == [(0, 1), (2, 3), (4, 5), (6, 7)]


def test_dgx2_switch():
    t = load_topology("dgx2")
    c = t.connection(0, 5)
    assert c.kind == "switch"
    assert c.resources == ("swout:0", "swin:5")
    assert t.bandwidth(c) == pytest.approx(125e9)
    assert c.alpha == pytest.approx(0.35e-6)
    assert t.nic_of(5).ranks == (4, 5)


def test_ndv2_shared_nic():
    t = load_topology("ndv2", 2)
    c = t.connection(0, 9)
    assert c.kind == "network"
    assert c.resources == ("nicout:n0.nic0", "nicin:n1.nic0")
    assert t.bandwidth(c) == pytest.approx(12.5e9)
    assert c.alpha == pytest.approx(1.7e-6)
    assert t.nic_of(7).name == "n0.nic0" and t.nic_of(15).name == "n1.nic0"


def test_dgx_a100_rails():
    t = load_topology("dgx-a100", 2)
    assert t.nic_of(3).name == "n0.nic3" and t.nic_of(3).rail == 3
    assert t.nic_of(11).name == "n1.nic3" and t.nic_of(11).node == 1
    assert t.bandwidth(t.connection(3, 11)) == pytest.approx(25e9)
    assert t.bandwidth(t.connection(0, 1)) == pytest.approx(300e9)
    assert t.network == "full-bisection"
    assert (3, 12) in t.connections


def test_h100_and_mi300x_numbers():
    h = load_topology("dgx-h100", 2)
    assert h.bandwidth(h.connection(0, 7)) == pytest.approx(450e9)
    assert h.bandwidth(h.connection(0, 8)) == pytest.approx(50e9)
    m = load_topology("mi300x", 2)
    assert all(m.connection(a, b).kind == "link" for a in range(8) for b in range(8) if a != b)
    assert m.bandwidth(m.connection(2, 6)) == pytest.approx(64e9)
    assert m.connection(0, 8).alpha == pytest.approx(2.0e-6)


def write(tmp_path: Path, doc, name: str = "my.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def a100_doc(**changes) -> dict:
    doc = yaml.safe_load((REPO_TOPOLOGIES / "dgx-a100.yaml").read_text())
    doc.update(changes)
    return doc


def test_rail_only_restricts_cross_node(tmp_path):
    path = write(tmp_path, a100_doc(name="a100-rails", network="rail-only"))
    t = load_topology(str(path), 2)
    assert t.network == "rail-only"
    assert (3, 11) in t.connections
    assert (3, 12) not in t.connections
    assert (3, 4) in t.connections  # intra-node unaffected
    assert sum(c.kind == "network" for c in t.connections.values()) == 16


def test_user_file_by_path(tmp_path):
    doc = {
        "gpus_per_node": 4,
        "links": [
            {"pairs": [[0, 1], [2, 3]], "count": 3, "bandwidth": 20, "alpha": 1, "kind": "pcie"},
            {"pairs": [[1, 2]], "directed": True, "bandwidth": 10, "alpha": 2},
        ],
        "nics": [{"gpus": "all", "bandwidth": 5, "alpha": 3}],
        "max_nodes": 2,
    }
    path = write(tmp_path, doc, "ring4.yaml")
    t = load_topology(path, 2)
    assert t.name == "ring4"  # defaults to the file's stem
    assert t.source == str(path)
    assert t.num_ranks == 8
    assert t.bandwidth(t.connection(4, 5)) == pytest.approx(60e9)
    assert t.connection(5, 6).alpha == pytest.approx(2e-6)
    assert (6, 5) not in t.connections  # directed link
    assert t.nics[1].name == "n1.nic0"
    assert t.links[0].kind == "pcie" and t.links[0].count == 3
    with pytest.raises(TopologyError, match="at most 2 nodes"):
        load_topology(path, 3)


def test_describe():
    text = describe(load_topology("dgx1", 2))
    assert text.startswith("dgx1x2: NVIDIA DGX-1")
    assert "ranks: 16" in text
    assert "0<->1: nvlink x2, 50 GB/s, alpha 0.7 us" in text
    assert "NIC nic0 (rail 0): GPUs 0,1, 12.5 GB/s, alpha 2.6 us" in text
    assert "network: full-bisection" in text
    assert f"connections: {len(load_topology('dgx1', 2).connections)}" in text
    assert "switch nvswitch: GPUs 0..15, 125 GB/s per port" in describe(load_topology("dgx2"))


def test_nodes_errors(tmp_path):
    path = write(
        tmp_path,
        {
            "name": "solo",
            "gpus_per_node": 2,
            "links": [{"pairs": [[0, 1]], "bandwidth": 1, "alpha": 1}],
        },
    )
    assert load_topology(path).num_ranks == 2
    with pytest.raises(TopologyError, match="solo: has no NICs, so it cannot span 2 nodes"):
        load_topology(path, 2)
    with pytest.raises(TopologyError, match="nodes must be an integer >= 1"):
        load_topology("dgx1", 0)


def test_unknown_name_lists_builtins():
    with pytest.raises(TopologyError) as exc:
        load_topology("dgx9")
    assert "dgx9" in str(exc.value)
    assert all(name in str(exc.value) for name in BUILTINS)


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda d: d.pop("gpus_per_node"), "gpus_per_node: required"),
        (lambda d: d["nics"][3].update(bandwidth=0), "nics[3].bandwidth: must be >= 0.001"),
        (lambda d: d["switches"][0].update(alpha=-1), "switches[0].alpha: must be >= 0"),
        (lambda d: d["nics"][0].update(gpus=[0, 1, 9]), "nics[0].gpus[2]: GPU 9 out of range 0..7"),
        (lambda d: d.update(network="mesh"), "network: must be one of full-bisection, rail-only"),
        (lambda d: d["nics"][1].update(bandwith=3), "nics[1].bandwith: unknown field 'bandwith'"),
        (lambda d: d.update(gpus_per_node="8"), "gpus_per_node: must be an integer, got '8'"),
        (lambda d: d["nics"][2].update(name="nic0"), "nics[2].name: duplicate name 'nic0'"),
        (lambda d: d["nics"][2].update(gpus=[1]), "nics[2].gpus[0]: GPU 1 is already on nics[1]"),
        (
            lambda d: d.update(links=[{"pairs": [[1, 1]], "bandwidth": 1, "alpha": 0}]),
            "links[0].pairs[0]: self-link 1-1",
        ),
        (
            lambda d: d.update(links=[{"pairs": [[1, 2], [2, 1]], "bandwidth": 1, "alpha": 0}]),
            "links[0].pairs[1]: duplicate link 2->1",
        ),
        (
            lambda d: d.update(links=[{"pairs": [[1, 2, 3]], "bandwidth": 1, "alpha": 0}]),
            "links[0].pairs[0]: must be a pair of GPU ids",
        ),
        (lambda d: d["switches"][0].update(gpus="most"), 'switches[0].gpus: must be "all" or'),
        (
            lambda d: d["nics"][0].update(bandwidth=float("nan")),
            "nics[0].bandwidth: must be a finite number, got nan",
        ),
    ],
)
def test_errors_name_file_and_field(tmp_path, change, expected):
    doc = a100_doc()
    change(doc)
    path = write(tmp_path, doc)
    with pytest.raises(TopologyError) as exc:
        load_topology(str(path))
    message = str(exc.value)
    assert message.startswith(f"{path}: {expected}")
    assert "\n" not in message
    with pytest.raises(TopologyError) as again:
        validate_file(path)
    assert str(again.value).splitlines()[0] == message


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "empty file"),
        ("# nothing\n", "empty file"),
        ("- 1\n- 2\n", "top level: must be a mapping of fields, got a list"),
        ("gpus_per_node: [8\n", "line 2, column 1: invalid YAML"),
        ("gpus_per_node: 8\ngpus_per_node: 4\n", "line 2, column 1: invalid YAML: duplicate key"),
        ("gpus_per_node: 8\n\tnics: []\n", "line 2, column 1: invalid YAML"),
        ("name: a\x00b\n", "line 1: invalid YAML: unacceptable character #x0000"),
        ("[" * 3000, "line 1: brackets nested more than 64 deep"),
        ("- " * 2000 + "x\n", "YAML nested too deeply"),
    ],
)
def test_malformed_yaml(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as exc:
        validate_file(path)
    assert str(exc.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(exc.value)


def test_unreadable_paths(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(TopologyError, match=r"bin.yaml: not a UTF-8 text file"):
        load_topology(str(tmp_path / "bin.yaml"))
    with pytest.raises(TopologyError, match=r"nope.yaml: cannot read: no such file"):
        load_topology(str(tmp_path / "nope.yaml"))
    with pytest.raises(TopologyError, match=r"is a directory"):
        validate_file(tmp_path)


def test_packaged_dir_preferred(tmp_path, monkeypatch):
    """A wheel install ships the files as taccl_py/_data/topologies; that copy wins."""
    package = tmp_path / "taccl_py"
    shutil.copytree(REPO_TOPOLOGIES, package / "_data" / "topologies")
    (package / "_data" / "topologies" / "extra.yaml").write_text(
        "gpus_per_node: 2\ndescription: packaged only\n"
    )
    monkeypatch.setattr(loader.resources, "files", lambda pkg: package)
    assert "extra" in builtin_names()
    assert load_topology("extra").description == "packaged only"
    monkeypatch.setattr(loader.resources, "files", lambda pkg: tmp_path / "missing")
    assert builtin_names() == BUILTINS

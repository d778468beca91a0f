"""`taccl topology import nvidia-smi`: parsing, mapping, CLI, and plans on the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from taccl_py.build.pipeline import build_plan
from taccl_py.cli import main
from taccl_py.collectives import Collective
from taccl_py.errors import TopologyError
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.loader import load_topology
from taccl_py.topology.nvsmi import convert, import_nvidia_smi, parse

FIXTURES = Path(__file__).parent / "fixtures" / "nvsmi"
ALL = ["dgx1", "dgx-a100", "dgx-h100", "pcie-4gpu"]


def text(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_bytes().decode()  # keep the \r of CRLF files


def doc(name: str, **options) -> dict:
    return convert(parse(text(name), name), name=name, **options).doc


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def rail(names: list[str], bw: float = 25.0) -> list[dict]:
    return [{"name": n, "gpus": [g], "bandwidth": bw, "alpha": 2.0} for g, n in enumerate(names)]


# -- mapping -------------------------------------------------------------------------
def test_dgx1_cube_mesh_pcie_and_paired_nics():
    d = doc("dgx1")
    assert d["gpus_per_node"] == 8 and "switches" not in d
    nv2, nv1, sys_ = d["links"]
    assert nv2 == {
        "pairs": [[0, 1], [0, 4], [1, 3], [2, 3], [2, 6], [4, 5], [5, 7], [6, 7]],
        "count": 2,
        "bandwidth": 25.0,
        "alpha": 0.7,
        "kind": "nvlink",
    }
    assert nv1 == {
        "pairs": [[0, 2], [0, 3], [1, 2], [1, 5], [3, 7], [4, 6], [4, 7], [5, 6]],
        "count": 1,
        "bandwidth": 25.0,
        "alpha": 0.7,
        "kind": "nvlink",
    }
    assert sys_ == {
        "pairs": [
            [0, 5],
            [0, 6],
            [0, 7],
            [1, 4],
            [1, 6],
            [1, 7],
            [2, 4],
            [2, 5],
            [2, 7],
            [3, 4],
            [3, 5],
            [3, 6],
        ],
        "bandwidth": 8.0,
        "alpha": 2.5,
        "kind": "pcie",
    }  # Gen3 16 GB/s x 0.5
    assert d["nics"] == [
        {"name": f"mlx5_{k}", "gpus": [2 * k, 2 * k + 1], "bandwidth": 12.5, "alpha": 2.0}
        for k in range(4)
    ]
    assert d["network"] == "full-bisection"


def test_dgx1_without_pcie_matches_the_builtin_links():
    imported = import_nvidia_smi(text("dgx1"), "dgx1.txt", pcie=False, nic_bw=12.5)[1]
    builtin = load_topology("dgx1")
    assert {(lk.src, lk.dst, lk.count, lk.bandwidth) for lk in imported.links} == {
        (lk.src, lk.dst, lk.count, lk.bandwidth) for lk in builtin.links
    }
    assert [n.ranks for n in imported.nics] == [n.ranks for n in builtin.nics]


def test_dgx_a100_nvswitch_splits_nic_pairs_and_skips_storage_nics():
    d = doc("dgx-a100")
    assert "links" not in d
    assert d["switches"] == [{"name": "nvswitch", "gpus": "all", "bandwidth": 300.0, "alpha": 0.7}]
    assert d["nics"] == rail([f"mlx5_{k}" for k in (0, 1, 2, 3, 6, 7, 8, 9)])


def test_dgx_h100_nvswitch_and_rail_nics():
    d = doc("dgx-h100")
    assert d["switches"] == [{"name": "nvswitch", "gpus": "all", "bandwidth": 450.0, "alpha": 0.5}]
    assert d["nics"] == rail([f"mlx5_{k}" for k in range(8)], bw=50.0)  # NDR for H100


def test_pcie_only_classes_and_far_nic_needs_nics_option():
    d = doc("pcie-4gpu")
    assert d["links"] == [
        {"pairs": [[0, 1]], "bandwidth": 32.0, "alpha": 1.0, "kind": "pcie"},
        {"pairs": [[0, 2], [1, 2]], "bandwidth": 24.0, "alpha": 1.5, "kind": "pcie"},
        {"pairs": [[0, 3], [1, 3], [2, 3]], "bandwidth": 16.0, "alpha": 2.5, "kind": "pcie"},
    ]
    assert "nics" not in d  # the only NIC is PHB from every GPU
    named = doc("pcie-4gpu", nics=["NIC0"], pcie_bw=16.0)
    assert named["nics"] == [{"name": "mlx5_0", "gpus": [0, 1], "bandwidth": 25.0, "alpha": 2.0}]
    assert [lk["bandwidth"] for lk in named["links"]] == [16.0, 12.0, 8.0]


def test_overrides_and_nic_selection():
    d = doc("dgx1", nvlink_bw=20.0, nics=["mlx5_2", "mlx5_0"], nic_bw=12.5)
    assert [lk["bandwidth"] for lk in d["links"][:2]] == [20.0, 20.0]
    assert [(n["name"], n["gpus"], n["bandwidth"]) for n in d["nics"]] == [
        ("mlx5_0", [0, 1], 12.5),
        ("mlx5_2", [4, 5], 12.5),
    ]
    assert "nics" not in doc("dgx-h100", nics=["none"])
    assert doc("dgx-a100", nvlink_bw=50.0)["switches"][0]["bandwidth"] == 600.0
    with pytest.raises(TopologyError, match=r"no NIC 'mlx5_9'.*mlx5_0, mlx5_1"):
        doc("dgx1", nics=["mlx5_9"])


def test_nics_sharing_too_few_gpus_are_dropped_with_a_note():
    rows = [
        "\tGPU0\tGPU1\tNIC0\tNIC1\tNIC2",
        "GPU0\t X \tNV4\tPIX\tPIX\tPIX",
        "GPU1\tNV4\t X \tPIX\tPIX\tPIX",
        "NIC0\tPIX\tPIX\t X \tPIX\tPIX",
        "NIC1\tPIX\tPIX\tPIX\t X \tPIX",
        "NIC2\tPIX\tPIX\tPIX\tPIX\t X ",
    ]
    imported = convert(parse("\n".join(rows)), name="two")
    assert [(n["name"], n["gpus"]) for n in imported.doc["nics"]] == [("NIC0", [0]), ("NIC1", [1])]
    assert imported.doc["links"] == [
        {"pairs": [[0, 1]], "count": 4, "bandwidth": 20.0, "alpha": 0.7, "kind": "nvlink"}
    ]  # 4 links: P100
    assert any("NIC2 dropped" in note for note in imported.notes)


# -- CLI and loader ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_cli_writes_yaml_the_loader_accepts(tmp_path, name):
    out = tmp_path / "my.yaml"
    res = run("topology", "import", "nvidia-smi", str(FIXTURES / f"{name}.txt"), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"wrote {out}: ")
    written = out.read_text()
    assert written.startswith("# Imported by `taccl topology import nvidia-smi`")
    assert "# Assumptions" in written
    assert yaml.safe_load(written) == doc(name) | {
        "description": yaml.safe_load(written)["description"]
    }
    assert run("topology", "validate", str(out)).exit_code == 0
    topo = load_topology(out)
    assert topo.name == name and topo.gpus_per_node == (4 if name == "pcie-4gpu" else 8)


def test_cli_stdin_name_and_options(tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "topology",
            "import",
            "nvidia-smi",
            "-",
            "--name",
            "lab1",
            "--nics",
            "mlx5_0",
            "--pcie-bw",
            "16",
            "--no-pcie",
        ],
        input=text("pcie-4gpu"),
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    d = yaml.safe_load(res.output)
    assert d["name"] == "lab1" and "links" not in d and d["nics"][0]["gpus"] == [0, 1]
    assert "--no-pcie: 6 GPU pair(s) without NVLink left unconnected" in res.output


def test_synthesize_uses_the_imported_file(tmp_path):
    topo = tmp_path / "h.yaml"
    assert (
        run(
            "topology", "import", "nvidia-smi", str(FIXTURES / "dgx-h100.txt"), "-o", str(topo)
        ).exit_code
        == 0
    )
    res = run(
        "synthesize",
        "-m",
        "ring",
        "--topology",
        str(topo),
        "--nodes",
        "2",
        "-c",
        "allreduce",
        "-o",
        str(tmp_path / "p.xml"),
    )
    assert res.exit_code == 0, res.output
    assert "verified" in res.output


# -- plans on imported topologies ---------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_ring_allgather_plan_verifies(name):
    topo = import_nvidia_smi(text(name), f"{name}.txt")[1]
    res = build_plan(topo, Collective("allgather", topo.num_ranks, 1, False), "ring")
    assert res.plan.ngpus == topo.num_ranks


@pytest.mark.parametrize(
    "name,nics", [("dgx1", None), ("dgx-a100", None), ("pcie-4gpu", ["mlx5_0"])]
)
def test_two_node_ring_plan_verifies(tmp_path, name, nics):
    path = tmp_path / f"{name}.yaml"
    path.write_text(import_nvidia_smi(text(name), f"{name}.txt", nics=nics)[0])
    topo = load_topology(path, nodes=2)
    assert topo.num_ranks == 2 * topo.gpus_per_node and len(topo.nics) == 2 * len(
        yaml.safe_load(path.read_text())["nics"]
    )
    res = build_plan(topo, Collective("allgather", topo.num_ranks, 1, False), "ring")
    assert res.plan.ngpus == topo.num_ranks


def test_milp_plan_on_imported_dgx1():
    topo = import_nvidia_smi(text("dgx1"), "dgx1.txt")[1]
    res = build_plan(
        topo, Collective("allgather", 8, 1, False), "milp", synth=SynthOptions(time_limit=5)
    )
    assert res.plan.ngpus == 8 and "chosen" in res.algorithm.meta


# -- malformed input ------------------------------------------------------------------------
GOOD = [
    "\tGPU0\tGPU1\tGPU2\tNIC0\tCPU Affinity",
    "GPU0\t X \tNV2\tSYS\tPIX\t0-7",
    "GPU1\tNV2\t X \tNV1\tPXB\t0-7",
    "GPU2\tSYS\tNV1\t X \tSYS\t8-15",
    "NIC0\tPIX\tPXB\tSYS\t X \t",
]


def bad(line: int, row: str) -> str:
    rows = list(GOOD)
    rows[line] = row
    return "\n".join(rows)


@pytest.mark.parametrize(
    "src,message",
    [
        ("Some other tool's output\n", "no header row with GPU0"),
        ("\tGPU1\tGPU0\n", "header columns must be GPU0..GPUn"),
        (bad(2, "GPU1\tNV2\t X \tPXB\t0-7"), "line 3: row GPU1 has 3 cells, the header has 4"),
        (bad(2, "GPU1\tNV2\t X \tNV1"), "line 3: row GPU1 has 3 cells"),
        (bad(2, "GPU1\tNV2\t X \tNVX\tPXB"), "line 3: row GPU1, column GPU2: unknown cell 'NVX'"),
        (
            bad(3, "GPU2\tSYS\tNV2\t X \tSYS"),
            "line 3: asymmetric matrix: GPU1-GPU2 is 'NV1' but GPU2-GPU1 (line 4) is 'NV2'",
        ),
        (bad(4, "NIC0\tPIX\tPIX\tSYS\t X "), "asymmetric matrix"),
        (
            bad(1, "GPU0\tSYS\tNV2\tSYS\tPIX"),
            "line 2: row GPU0, column GPU0: 'SYS' on the diagonal",
        ),
        (bad(1, "GPU0\t X \tX\tSYS\tPIX"), "column GPU1: 'X' off the diagonal"),
        (bad(1, "GPU0\t X \tNV2\tSYS\tNV1"), "'NV1' is not an NVLink between two GPUs"),
        (bad(3, "GPU7\tSYS\tNV1\t X \tSYS"), "line 4: row 'GPU7' is not a column"),
        (bad(3, "GPU1\tNV2\t X \tNV1\tPXB"), "line 4: second row for GPU1"),
        (bad(3, ""), "no row for GPU2"),
    ],
)
def test_malformed_input_is_one_clear_line(tmp_path, src, message):
    with pytest.raises(TopologyError) as err:
        parse(src, "topo.txt")
    assert message in str(err.value) and "\n" not in str(err.value)
    path = tmp_path / "topo.txt"
    path.write_text(src)
    res = run("topology", "import", "nvidia-smi", str(path))
    assert res.exit_code == 2
    assert res.stderr.startswith("taccl: error: ") and message in res.stderr
    assert res.stderr.count("\n") == 1


def test_bad_name_and_missing_file(tmp_path):
    res = run("topology", "import", "nvidia-smi", str(FIXTURES / "dgx1.txt"), "--name", "a b")
    assert res.exit_code == 2 and "--name 'a b'" in res.stderr
    res = run("topology", "import", "nvidia-smi", str(tmp_path / "nope.txt"))
    assert res.exit_code == 2 and "nope.txt: cannot read" in res.stderr

"""The `taccl` command line: acceptance paths and clear one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.cli import main
from taccl_py.collectives import KINDS, ROOTED_KINDS
from taccl_py.plan.xml import parse_plan, plan_to_xml
from taccl_py.topology.loader import builtin_names

TACCL = Path(sys.executable).with_name("taccl")


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_clean_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("taccl: error:") or err.startswith("Usage:"), err
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize(
    "topo, nodes",
    [
        pytest.param(topo, nodes, id=f"{topo}-{nodes}")
        for nodes in (1, 2)
        for topo in builtin_names()
        # two DGX-2 nodes (32 ranks) cost as much as all the others together; the rooted
        # test below still synthesizes rings on them
        if (topo, nodes) != ("dgx2", 2)
    ],
)
def test_ring_synthesizes_and_verifies_everywhere(tmp_path, topo, nodes):
    for kind in KINDS:
        out = tmp_path / f"{topo}-{kind}.xml"
        res = run(
            "synthesize",
            "--topology",
            topo,
            "--nodes",
            str(nodes),
            "--collective",
            kind,
            "--method",
            "ring",
            "-o",
            str(out),
        )
        assert res.exit_code == 0, res.output
        assert "verified" in res.output
        plan = parse_plan(out)
        assert plan.ngpus == (8 if topo != "dgx2" else 16) * nodes
        check = run("verify", str(out), "--no-reference")
        assert check.exit_code == 0, check.output


def test_same_inputs_give_byte_identical_xml(tmp_path):
    a, b = tmp_path / "a.xml", tmp_path / "b.xml"
    for out in (a, b):
        res = run(
            "synthesize",
            "-m",
            "ring",
            "-t",
            "dgx1",
            "-c",
            "allreduce",
            "--chunkup",
            "2",
            "--instances",
            "2",
            "-o",
            str(out),
        )
        assert res.exit_code == 0, res.output
    assert a.read_bytes() == b.read_bytes()


def test_ir_json_and_default_output_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run(
        "synthesize",
        "-t",
        "ndv2",
        "-n",
        "2",
        "-c",
        "alltoall",
        "--method",
        "direct",
        "--ir",
        "alg.json",
    )
    assert res.exit_code == 0, res.output
    written = re.search(r"wrote (\S+)", res.output).group(1)
    assert (tmp_path / written).is_file()
    assert '"transfers"' in (tmp_path / "alg.json").read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_verify_rejects_a_wrong_offset_naming_rank_and_chunk(tmp_path):
    out = tmp_path / "ring.xml"
    assert (
        run("synthesize", "-m", "ring", "-t", "dgx2", "-c", "allgather", "-o", str(out)).exit_code
        == 0
    )
    plan = parse_plan(out)
    step = next(st for tb in plan.gpus[3].tbs for st in tb.steps if st.type in ("r", "rcs"))
    step.dstoff = (step.dstoff + 1) % plan.gpus[3].o_chunks
    bad = tmp_path / "bad.xml"
    bad.write_text(plan_to_xml(plan))
    res = run("verify", str(bad))
    assert_clean_error(res, "rank", "chunk")


@pytest.mark.parametrize(
    "args, needles",
    [
        (["synthesize", "-m", "ring", "-t", "nosuch", "-c", "allgather"], ["nosuch", "dgx2"]),
        (["synthesize", "-m", "ring", "-t", "dgx2", "-c", "allgather", "--size", "12Q"], ["12Q"]),
        (
            ["synthesize", "-m", "ring", "-t", "dgx2", "-c", "allgather", "--order", "0,1,x"],
            ["--order"],
        ),
        (
            [
                "synthesize",
                "-m",
                "ring",
                "-t",
                "dgx1",
                "-c",
                "allgather",
                "--order",
                "0,5,1,2,3,4,6,7",
            ],
            ["0", "5"],
        ),
        (
            [
                "synthesize",
                "-m",
                "ring",
                "-t",
                "dgx2",
                "-c",
                "allgather",
                "-o",
                "/nonexistent/dir/p.xml",
            ],
            ["/nonexistent/dir"],
        ),
        (["verify", "/nonexistent/plan.xml"], ["plan.xml"]),
    ],
)
def test_bad_input_is_one_clean_line(args, needles):
    assert_clean_error(run(*args), *needles)


def test_malformed_topology_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngpus_per_node: -3\n")
    res = run("synthesize", "-m", "ring", "-t", str(bad), "-c", "allgather")
    assert_clean_error(res, "bad.yaml", "gpus_per_node")
    assert len(res.stderr.strip().splitlines()) == 1
    res = run("topology", "validate", str(bad))
    assert res.exit_code == 1 and "bad.yaml" in res.stderr


def test_failed_verification_writes_nothing(tmp_path, monkeypatch):
    from taccl_py.build import pipeline
    from taccl_py.errors import VerificationError

    def broken(plan):
        raise VerificationError("rank 0: chunk 1 wrong")

    monkeypatch.setattr(pipeline, "verify", broken)
    out = tmp_path / "p.xml"
    assert_clean_error(
        run("synthesize", "-m", "ring", "-t", "dgx2", "-c", "allgather", "-o", str(out)), "chunk 1"
    )
    assert list(tmp_path.iterdir()) == []


def test_topology_list_and_show():
    res = run("topology", "list")
    assert res.exit_code == 0
    assert set(builtin_names()) <= {line.split()[0] for line in res.output.splitlines()}
    res = run("topology", "show", "dgx-a100", "--nodes", "2")
    assert res.exit_code == 0 and "16" in res.output


def test_console_script_is_installed(tmp_path):
    proc = subprocess.run(
        [
            str(TACCL),
            "synthesize",
            "--topology",
            "dgx2",
            "--collective",
            "allgather",
            "-o",
            str(tmp_path / "p.xml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "p.xml").read_text().startswith("<algo")


def test_synthesize_with_builtin_and_default_sketch(tmp_path):
    out = tmp_path / "p.xml"
    res = run(
        "synthesize",
        "-t",
        "ndv2",
        "-n",
        "2",
        "-c",
        "allgather",
        "-m",
        "milp",
        "--sketch",
        "ndv2",
        "--time-limit",
        "5",
        "-o",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert "sketch ndv2-relay" in res.output and "verified" in res.output
    assert "target size 1G" in res.output  # the sketch's size, --size not given
    assert parse_plan(out).ngpus == 16
    res = run(
        "synthesize",
        "-t",
        "dgx-a100",
        "-n",
        "2",
        "-c",
        "allgather",
        "-m",
        "milp",
        "--sketch",
        "default",
        "--size",
        "1M",
        "--time-limit",
        "3",
        "-o",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert "sketch dgx-a100-default" in res.output and "target size 1M" in res.output


def test_bad_sketch_is_one_clean_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inter_node: {connections: [[0, 9]]}\n")
    res = run(
        "synthesize",
        "-t",
        "dgx1",
        "-n",
        "2",
        "-c",
        "allgather",
        "-m",
        "milp",
        "--sketch",
        str(bad),
        "-o",
        str(tmp_path / "p.xml"),
    )
    assert_clean_error(res, "bad.yaml", "inter_node.connections[0][1]", "out of range")
    assert len(res.stderr.strip().splitlines()) == 1
    assert_clean_error(
        run("synthesize", "-m", "ring", "-t", "dgx1", "-c", "allgather", "--sketch", "dgx1"),
        "--sketch only applies to --method milp",
    )
    assert_clean_error(
        run("sketch", "validate", str(bad), "-t", "dgx1", "-n", "2"), "bad.yaml", "out of range"
    )
    assert not (tmp_path / "p.xml").exists()


def test_sketch_init_validate_round_trip(tmp_path):
    from taccl_py.synth.milp.sketch import default_sketch, load_sketch
    from taccl_py.topology.loader import load_topology

    out = tmp_path / "s.yaml"
    res = run("sketch", "init", "-t", "dgx1", "-n", "2", "-o", str(out))
    assert res.exit_code == 0 and f"wrote {out}" in res.output
    assert not list(tmp_path.glob(".*.tmp"))
    printed = run("sketch", "init", "-t", "dgx1", "-n", "2")
    assert printed.exit_code == 0 and printed.output == out.read_text()
    res = run("sketch", "validate", str(out), "-t", "dgx1", "-n", "2")
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{out}: ok: sketch dgx1-default for dgx1x2")
    assert len(res.output.strip().splitlines()) == 1
    topo = load_topology("dgx1", 2)
    assert load_sketch(out, topo) == default_sketch(topo)
    assert_clean_error(
        run("sketch", "init", "-t", "dgx1", "-o", "/nonexistent/dir/s.yaml"), "/nonexistent/dir"
    )


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("topo", builtin_names())
def test_rooted_collectives_synthesize_and_verify_everywhere(tmp_path, topo, nodes):
    ranks = (8 if topo != "dgx2" else 16) * nodes
    for i, kind in enumerate(ROOTED_KINDS):
        root = 1 + (2 + 5 * i) % (ranks - 1)  # a different non-zero root per kind
        out = tmp_path / f"{kind}.xml"
        res = run(
            "synthesize",
            *("-t", topo, "-n", str(nodes), "-c", kind, "--root", str(root)),
            *("-m", "ring", "--runtime", "msccl-executor", "-o", str(out)),
        )
        assert res.exit_code == 0, res.output
        assert f"{kind}-root{root}" in res.output and "verified" in res.output
        if kind in ("gather", "scatter"):  # loads, but no NCCL call would select it
            assert "no NCCL call selects them" in res.output
        else:  # selected for any root's call: the user is told
            assert f"does not compare the root: this plan (root {root})" in res.output
        plan = parse_plan(out)
        assert (plan.coll, plan.root, plan.ngpus) == (kind, root, ranks)
        check = run("verify", str(out))
        assert check.exit_code == 0, check.output


@pytest.mark.parametrize(
    "args, needles",
    [
        (("-c", "allreduce", "--root", "1"), ["--root only applies to", "broadcast"]),
        (("-c", "broadcast", "--root", "8"), ["root 8", "0..7"]),
        (("-c", "gather", "--root", "-1"), ["--root", "-1"]),
    ],
)
def test_bad_root_is_one_clear_line(tmp_path, args, needles):
    res = run("synthesize", "-t", "dgx1", "-m", "direct", *args, "-o", str(tmp_path / "p.xml"))
    assert_clean_error(res, *needles)
    assert not (tmp_path / "p.xml").exists()


@settings(max_examples=12)
@given(kind=st.sampled_from(ROOTED_KINDS), root=st.integers(0, 7), inplace=st.booleans())
def test_rooted_plan_round_trips_its_root(kind, root, inplace):
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "p.xml")
        args = ["-t", "dgx1", "-c", kind, "-r", str(root), "-m", "direct", "-o", out]
        res = run("synthesize", *args, *(["--inplace"] if inplace else []))
        assert res.exit_code == 0, res.output
        plan = parse_plan(Path(out))
        assert (plan.coll, plan.root, plan.inplace) == (kind, root, inplace)
        assert plan.collective().root == root

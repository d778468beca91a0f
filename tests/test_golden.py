"""Golden outputs: plans and reports of a fixed set of cases, byte for byte.

Each case in ``CASES`` runs ``taccl synthesize <args> -o <name>.xml`` and then
``taccl simulate <name>.xml <args>`` (in-process, through click's CliRunner), and the
plan XML and the simulate report (JSON rows or the text table) must equal the files
stored under ``tests/golden/`` byte for byte. This pins today's behaviour so that a
refactor (issue 19: the package's new layout) can show that nothing changed.

Every case is deterministic, whatever the machine's speed or load:

- ``--method auto`` is left out (its smt candidate has a wall-clock cap);
- smt runs with fixed ``--steps/--rounds/--chunks`` (one satisfiability query, answered
  far inside its time limit);
- milp runs only where every routing MILP closes its 0.2 % gap at once (the warm start
  meets the bound or the root solve proves it), with ``--time-limit 600`` so that no
  deadline or time share of the staged search comes near; each case was checked to give
  the same bytes on repeated runs, also with another CPU-bound process running.

Regenerating the golden files is only for a deliberate change of behaviour (a better
plan, a new XML attribute, a corrected model), never to make a refactor pass::

    TACCL_GOLDEN_UPDATE=1 .venv/bin/python -m pytest tests/test_golden.py

then review ``git diff tests/golden`` and commit it with the change that explains it.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from taccl_py.cli import main

GOLDEN = Path(__file__).with_name("golden")
UPDATE = os.environ.get("TACCL_GOLDEN_UPDATE", "") not in ("", "0")
SIZES = "1K,1M,1G"
DIFF_LINES = 40  # the most diff lines shown on a mismatch

# (name, synthesize arguments without -o, simulate arguments without the plan path).
# A report is JSON (`--json`, stored as <name>.json) or the text table (<name>.txt).
CASES: list[tuple[str, list[str], list[str]]] = [
    # NCCL's rings
    (
        "ring-dgx1-allgather",
        ["-t", "dgx1", "-c", "allgather", "-m", "ring"],
        ["-t", "dgx1", "--sizes", SIZES, "--json"],
    ),
    (
        "ring-dgx2-allreduce",
        ["-t", "dgx2", "-c", "allreduce", "-m", "ring"],
        ["-t", "dgx2", "--sizes", SIZES, "--json"],
    ),
    (
        "ring-dgx-a100-reducescatter-msccl",
        ["-t", "dgx-a100", "-c", "reducescatter", "-m", "ring", "--runtime", "msccl"],
        ["-t", "dgx-a100", "--sizes", SIZES, "--json"],
    ),
    (
        "ring-ndv2-2n-alltoall",
        ["-t", "ndv2", "-n", "2", "-c", "alltoall", "-m", "ring"],
        ["-t", "ndv2", "-n", "2", "--sizes", SIZES, "--json"],
    ),
    (
        "ring-dgx1-allreduce-ll-chunkup2-instances2",
        [
            "-t",
            "dgx1",
            "-c",
            "allreduce",
            "-m",
            "ring",
            "--chunkup",
            "2",
            "--instances",
            "2",
            "--proto",
            "LL",
        ],
        ["-t", "dgx1", "--sizes", SIZES],
    ),
    # NCCL's double binary tree (AllReduce only)
    (
        "tree-dgx1-allreduce",
        ["-t", "dgx1", "-c", "allreduce", "-m", "tree"],
        ["-t", "dgx1", "--sizes", SIZES],
    ),
    (
        "tree-ndv2-2n-allreduce",
        ["-t", "ndv2", "-n", "2", "-c", "allreduce", "-m", "tree"],
        ["-t", "ndv2", "-n", "2", "--sizes", SIZES, "--json"],
    ),
    # every chunk straight to its destination
    (
        "direct-mi300x-alltoall",
        ["-t", "mi300x", "-c", "alltoall", "-m", "direct"],
        ["-t", "mi300x", "--sizes", SIZES, "--json"],
    ),
    (
        "direct-ndv2-2n-alltoall",
        ["-t", "ndv2", "-n", "2", "-c", "alltoall", "-m", "direct"],
        ["-t", "ndv2", "-n", "2", "--sizes", SIZES, "--json"],
    ),
    (
        "direct-dgx2-reducescatter",
        ["-t", "dgx2", "-c", "reducescatter", "-m", "direct"],
        ["-t", "dgx2", "--sizes", SIZES, "--json"],
    ),
    # exact synthesis at a fixed (steps, rounds, chunks): one query, no search
    (
        "smt-dgx1-allgather-s2-r4-c2",
        [
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
            "2",
        ],
        ["-t", "dgx1", "--sizes", SIZES, "--json"],
    ),
    (
        "smt-dgx1-alltoall-s3-r3-c1",
        [
            "-t",
            "dgx1",
            "-c",
            "alltoall",
            "-m",
            "smt",
            "--steps",
            "3",
            "--rounds",
            "3",
            "--chunks",
            "1",
        ],
        ["-t", "dgx1", "--sizes", SIZES, "--json"],
    ),
    (
        "smt-mi300x-alltoall-s1-r1-c1",
        [
            "-t",
            "mi300x",
            "-c",
            "alltoall",
            "-m",
            "smt",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--chunks",
            "1",
        ],
        ["-t", "mi300x", "--sizes", SIZES, "--json"],
    ),
    # staged (TACCL-style) synthesis: every routing MILP at 0 % gap at once, far from
    # the time limit
    (
        "milp-mi300x-allgather",
        ["-t", "mi300x", "-c", "allgather", "-m", "milp", "--time-limit", "600"],
        ["-t", "mi300x", "--sizes", SIZES, "--json"],
    ),
    (
        "milp-mi300x-reducescatter",
        ["-t", "mi300x", "-c", "reducescatter", "-m", "milp", "--time-limit", "600"],
        ["-t", "mi300x", "--sizes", SIZES, "--json"],
    ),
    (
        "milp-dgx-h100-allreduce",
        ["-t", "dgx-h100", "-c", "allreduce", "-m", "milp", "--time-limit", "600"],
        ["-t", "dgx-h100", "--sizes", SIZES, "--json"],
    ),
    (
        "milp-dgx-a100-alltoall",
        ["-t", "dgx-a100", "-c", "alltoall", "-m", "milp", "--time-limit", "600"],
        ["-t", "dgx-a100", "--sizes", SIZES, "--json"],
    ),
    (
        "milp-mi300x-2n-allgather",  # the multi-node AllGather decomposition, too
        ["-t", "mi300x", "-n", "2", "-c", "allgather", "-m", "milp", "--time-limit", "600"],
        ["-t", "mi300x", "-n", "2", "--sizes", SIZES, "--json"],
    ),
]


def _report_name(name: str, sim_args: list[str]) -> str:
    return f"{name}.json" if "--json" in sim_args else f"{name}.txt"


def _invoke(*args: str) -> str:
    res = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, f"taccl {' '.join(args)}\n{res.output}"
    return res.stdout


def _compare(golden: Path, got: bytes) -> None:
    if UPDATE:
        golden.write_bytes(got)
        return
    assert golden.is_file(), (
        f"{golden} is missing: regenerate with TACCL_GOLDEN_UPDATE=1 (deliberate changes only)"
    )
    want = golden.read_bytes()
    if got == want:
        return
    diff = list(
        difflib.unified_diff(
            want.decode(errors="replace").splitlines(),
            got.decode(errors="replace").splitlines(),
            f"golden/{golden.name}",
            "now",
            n=2,
            lineterm="",
        )
    )
    more = len(diff) - DIFF_LINES
    shown = "\n".join(diff[:DIFF_LINES]) + (f"\n... {more} more diff lines" if more > 0 else "")
    pytest.fail(
        f"{golden.name} differs from the golden file "
        f"({len(want)} bytes stored, {len(got)} now):\n{shown}",
        pytrace=False,
    )


@pytest.mark.parametrize(("name", "synth_args", "sim_args"), CASES, ids=[c[0] for c in CASES])
def test_golden(tmp_path, name, synth_args, sim_args):
    xml = tmp_path / f"{name}.xml"
    _invoke("synthesize", *synth_args, "-o", str(xml))
    report = _invoke("simulate", str(xml), *sim_args)
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
    _compare(GOLDEN / f"{name}.xml", xml.read_bytes())
    _compare(GOLDEN / _report_name(name, sim_args), report.encode())


def test_golden_files_match_the_cases():
    """Every stored file belongs to a case (no stale files after a case is renamed)."""
    expected = {f"{name}.xml" for name, _, _ in CASES}
    expected |= {_report_name(name, sim) for name, _, sim in CASES}
    assert len(CASES) == len({name for name, _, _ in CASES})
    if UPDATE:
        for stale in sorted({p.name for p in GOLDEN.iterdir()} - expected):
            (GOLDEN / stale).unlink()
    assert {p.name for p in GOLDEN.iterdir()} == expected

"""``taccl run`` / runtime.mpi_exec: plans executed over MPI (mpiexec, 4 CPU ranks)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.plan.xml import parse_plan, write_plan
from taccl_py.topology.model import FULL_BISECTION, Link, Topology

pytest.importorskip("mpi4py")
BIN = Path(sys.executable).parent
MPIEXEC = shutil.which(str(BIN / "mpiexec"))
TACCL = shutil.which(str(BIN / "taccl"))
pytestmark = pytest.mark.skipif(
    MPIEXEC is None or TACCL is None, reason="needs the venv's mpiexec and taccl script"
)
HELPER = Path(__file__).with_name("mpi_dead_rank.py")
GB, US = 1e9, 1e-6


def ring4() -> Topology:
    links = [Link(a, b, 25 * GB, 0.7 * US) for a in range(4) for b in ((a + 1) % 4, (a - 1) % 4)]
    return Topology("ring4", 4, 1, tuple(links), (), (), FULL_BISECTION)


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpiplans")
    made = {}
    for kind, method, inplace in [
        ("allgather", "ring", False),
        ("alltoall", "ring", False),
        ("reducescatter", "ring", False),
        ("allreduce", "ring", False),
        ("allreduce", "ring", True),
        ("allgather", "direct", False),
    ]:
        plan = build_plan(ring4(), Collective(kind, 4, 1, inplace), method).plan
        assert plan.inplace == inplace
        made[(kind, method, inplace)] = write_plan(plan, out / f"{kind}-{method}-{inplace}.xml")
    return made


def taccl_run(plan_path, *args, n=4, timeout=120):
    return subprocess.run(
        [MPIEXEC, "-n", str(n), TACCL, "run", str(plan_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "key",
    [
        ("allgather", "ring", False),
        ("alltoall", "ring", False),
        ("reducescatter", "ring", False),
        ("allreduce", "ring", False),
        ("allreduce", "ring", True),
        ("allgather", "direct", False),
    ],
    ids=lambda k: "-".join(map(str, k)),
)
def test_run_matches_mpi(plans, key):
    proc = taccl_run(plans[key], "--size", "1M", "--check", "--iters", "2", "--warmup", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check ok" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert len(rows) == 1 and rows[0][0] == str(1 << 20)
    row = rows[0]
    # size count type redop root, out-of-place (time algbw busbw #wrong), in-place, mpi, plans
    if key[2]:  # an in-place plan: the out-of-place cells say n/a
        assert row[5] == "n/a" and float(row[6]) > 0 and row[9] == "0"
        assert row[-1].startswith("-,") and len(row) == 12
    else:
        assert float(row[5]) > 0 and row[8] == "0" and row[9] == "n/a"
        assert row[-1].endswith(",-") and len(row) == 12


def test_run_integer_dtype(plans):
    proc = taccl_run(
        plans[("reducescatter", "ring", False)],
        "--size",
        "64K",
        "--dtype",
        "int32",
        "--check",
        "--iters",
        "1",
        "--warmup",
        "0",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check ok" in proc.stdout and "int32" in proc.stdout


def test_run_wrong_rank_count(plans):
    proc = taccl_run(plans[("allgather", "ring", False)], "--size", "1M", n=2)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith("taccl: error: ")
    assert "4-rank plan" in errors[0] and "Traceback" not in proc.stderr


def test_run_bad_size(plans):
    path = plans[("allreduce", "ring", False)]
    unit = parse_plan(path).nchunksperloop * 4  # float32 elements per chunk: at least one
    assert 1000 % unit
    proc = taccl_run(path, "--size", "1000")
    assert proc.returncode == 2 and not proc.stdout
    assert f"not a multiple of {unit} B" in proc.stderr and "Traceback" not in proc.stderr
    assert f"try --size {1000 // unit * unit or unit}" in proc.stderr


def test_stalled_rank_times_out(plans):
    """A rank that never joins: the others name their stuck step and peer within --timeout."""
    start = time.monotonic()
    proc = subprocess.run(
        [
            MPIEXEC,
            "-n",
            "4",
            sys.executable,
            str(HELPER),
            str(plans[("allgather", "ring", False)]),
            "2",
            "stall",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 30
    assert proc.returncode != 0
    assert "no progress for 2 s" in proc.stdout, proc.stdout + proc.stderr
    assert "waits to receive from rank 3" in proc.stdout  # rank 3's ring successor
    assert "step" in proc.stdout and "(r" in proc.stdout


def test_exited_rank_ends_job(plans):
    """A rank that exits before the plan: MPICH's mpiexec tears the whole job down at once."""
    start = time.monotonic()
    proc = subprocess.run(
        [
            MPIEXEC,
            "-n",
            "4",
            sys.executable,
            str(HELPER),
            str(plans[("allgather", "ring", False)]),
            "3",
            "exit",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - start < 30  # no hang
    out = proc.stdout + proc.stderr
    assert "finished without the dead rank" not in out
    # the survivors fail with the executor's timeout, or hydra kills them first; then its
    # status is the first exit's, the dead rank's 0, and nothing is printed (seen under load)
    assert (
        proc.returncode != 0
        and ("no progress" in out or "BAD TERMINATION" in out)
        or (proc.returncode == 0 and not out.strip())
    )

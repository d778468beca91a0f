"""examples/: the MPI AllGather example under mpiexec. (The DDP example runs under torchrun
in tests/test_tutorial.py, which walks docs/new-cluster.md.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MPIEXEC = shutil.which(str(Path(sys.executable).parent / "mpiexec"))


def run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """Run an example with a private plan cache and no plan directory."""
    env = {**os.environ, "TACCL_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("TACCL_PLAN_DIR", None)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


@pytest.mark.skipif(MPIEXEC is None, reason="needs the venv's mpiexec")
@pytest.mark.skipif(MPIEXEC is None, reason="needs the venv's mpiexec")
def test_mpi_allgather_example(tmp_path):
    pytest.importorskip("mpi4py")
    done = run(
        [MPIEXEC, "-n", "4", sys.executable, str(EXAMPLES / "mpi_allgather.py"), "--size", "1M"],
        tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "allgather ok:" in done.stdout and "on 4 ranks, 1M" in done.stdout

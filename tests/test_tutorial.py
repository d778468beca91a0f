"""docs/new-cluster.md: every ``$`` command of the walk-through runs, in order, in a fresh
directory holding the two files it starts from."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from taccl_py.plan.verify import verify
from taccl_py.plan.xml import parse_plan
from taccl_py.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "new-cluster.md"
BIN = Path(sys.executable).parent

pytest.importorskip("torch")
pytest.importorskip("mpi4py")
pytestmark = pytest.mark.skipif(
    not (BIN / "mpiexec").exists() or not (BIN / "torchrun").exists(),
    reason="the tutorial needs the venv's mpiexec and torchrun",
)


def commands() -> list[str]:
    blocks = re.findall(r"```console\n(.*?)```", DOC.read_text(), re.S)
    return [line[2:] for block in blocks for line in block.splitlines() if line.startswith("$ ")]


def test_tutorial_lists_the_whole_path():
    cmds = commands()
    for step in (
        "topology import nvidia-smi",
        "topology show",
        "sketch init",
        "synthesize",
        "taccl profile",
        "taccl run",
        "TACCL_PLAN_DIR=plans",
    ):
        assert any(step in c for c in cmds), step


def test_every_command_runs(tmp_path):
    shutil.copy(ROOT / "docs" / "new-cluster" / "topo.txt", tmp_path)
    shutil.copy(ROOT / "examples" / "ddp_train.py", tmp_path)
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        TACCL_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONWARNINGS="ignore",
        # the DDP step's plan library (collectives the plan directory lacks) is built by the
        # quick methods only: every synthesis method per kind and root would take most of
        # the test's time and is covered by the torch and plan-library tests
        TACCL_METHODS="ring,direct",
    )
    env.pop("TACCL_PLAN_DIR", None)
    outputs = {}
    for cmd in commands():
        proc = subprocess.run(
            cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"$ {cmd}\n{proc.stdout}\n{proc.stderr}"
        outputs[cmd] = proc.stdout + proc.stderr
    cluster = load_topology(str(tmp_path / "my-cluster.yaml"), 2)
    assert cluster.num_ranks == 16 and len(cluster.nics) == 16
    assert (tmp_path / "my-cluster.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gpu_plan = parse_plan(tmp_path / "gpu-plans" / "allgather-256M.xml")
    assert gpu_plan.ngpus == 16 and verify(gpu_plan)
    box = load_topology(str(tmp_path / "cpu-box.yaml"))
    assert box.num_ranks == 4 and all(lk.bandwidth > 0 for lk in box.links)
    run = next(out for cmd, out in outputs.items() if "taccl run" in cmd)
    assert "check ok" in run
    train = next(out for cmd, out in outputs.items() if "torchrun" in cmd)
    assert "ddp ok" in train
    assert "plan cpu-box-allreduce-milp (plan directory, plans/allreduce.xml)" in train
    assert "fallback" not in train and "Gloo" not in train

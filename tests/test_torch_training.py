"""Real clients of the "taccl" backend: DDP and FSDP2 (``fully_shard``) training on 4 CPU
processes (examples/ddp_train.py, examples/fsdp2_train.py) reach the losses of the same
script on Gloo, and ``TACCL_LOG=1`` shows every collective served by a plan."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with Gloo is needed", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, backend: str, tmp_path: Path, *args: str, n: int = 4):
    """Run ``script`` on ``n`` processes (env:// rendezvous, as torchrun sets it up); the
    exit codes, rank 0's stdout and every rank's stderr."""
    port = _free_port()
    procs = []
    for r in range(n):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(r),
            LOCAL_RANK=str(r),
            WORLD_SIZE=str(n),
            OMP_NUM_THREADS="1",
            TACCL_CACHE_DIR=str(tmp_path / "cache"),
            TACCL_LOG="1",
            TACCL_METHODS="ring,direct",  # a library built in a second or two
            PYTHONWARNINGS="ignore",
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        env.pop("TACCL_PLAN_DIR", None)
        env.pop("TACCL_TOPOLOGY", None)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(EXAMPLES / script), "--backend", backend, "--json", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    try:
        outs = [p.communicate(timeout=170) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [p.returncode for p in procs], outs[0][0], [err for _, err in outs]


def losses(stdout: str) -> list[float]:
    line = next(x for x in stdout.splitlines() if x.startswith("{"))
    return json.loads(line)["losses"]


def served_by_plans(errs: list[str], kinds: set[str]) -> list[str]:
    """TACCL_LOG's lines about calls: each names a plan of the library; none falls back."""
    lines = [x for err in errs for x in err.splitlines() if x.startswith("taccl: ")]
    calls = [x for x in lines if " on 4 ranks: plan " in x]
    assert calls, "\n".join(errs)
    for line in lines:
        text = line.split(" (")[0].lower()
        assert "fallback" not in text and "gloo" not in text and "delegat" not in text, line
    for line in calls:
        assert "(plan library " in line, line
    assert {line.split()[1] for line in calls} == kinds, calls
    # only rank 0 says which plans serve
    assert all(" on 4 ranks: plan " not in x for err in errs[1:] for x in err.splitlines())
    return calls


@pytest.mark.parametrize(
    "script, kinds, steps",
    [
        ("ddp_train.py", {"allreduce", "allgather", "broadcast-root0"}, "8"),
        ("fsdp2_train.py", {"allreduce", "allgather", "reducescatter"}, "5"),
    ],
    ids=["ddp", "fsdp2"],
)
def test_training_matches_gloo(tmp_path, script, kinds, steps):
    codes, out, errs = launch(script, "taccl", tmp_path, "--steps", steps)
    assert codes == [0] * 4, "\n".join(errs)
    served_by_plans(errs, kinds)
    ref_codes, ref_out, ref_errs = launch(script, "gloo", tmp_path, "--steps", steps)
    assert ref_codes == [0] * 4, "\n".join(ref_errs)
    ours, gloo = losses(out), losses(ref_out)
    assert len(ours) == len(gloo) == int(steps)
    # the same training: only the order of floating-point sums differs
    assert ours == pytest.approx(gloo, rel=1e-5, abs=1e-7)
    assert ours[-1] < ours[0]

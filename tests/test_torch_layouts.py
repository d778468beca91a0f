"""The "taccl" torch backend returns Gloo's result for any tensor layout and dtype, every
collective (rooted ones at every root, uneven all-to-all, bitwise reductions) run by plans.

A property test (hypothesis, in tests/torch_layout_worker.py) in 2 and 4 processes: each
rank runs every drawn case on Gloo with contiguous tensors and on taccl with the drawn
layouts (transposed, stepped, offset, channels-last, expanded, parameters, 0-d, empty).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytest.importorskip("hypothesis")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with Gloo is needed", allow_module_level=True)

WORKER = Path(__file__).with_name("torch_layout_worker.py")
ROOT = Path(__file__).resolve().parent.parent
#: cases per world size (hypothesis, derandomized: the same cases on every run)
EXAMPLES = {2: 300, 4: 200}


@pytest.mark.parametrize("n", sorted(EXAMPLES))
def test_any_layout_and_dtype_matches_gloo(tmp_path, n):
    env = dict(
        os.environ,
        TACCL_CACHE_DIR=str(tmp_path / "cache"),
        TACCL_METHODS="ring,direct",  # rooted plans are built per root: keep each build short
        PYTHONWARNINGS="ignore",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(n), str(tmp_path / "init"), str(EXAMPLES[n])],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for r in range(n)
    ]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0] * n, "\n".join(
        f"rank {r} (exit {p.returncode}): {out[-3000:]}"
        for r, (p, out) in enumerate(zip(procs, outs))
        if p.returncode
    )
    ran = re.search(r"rank 0: (\d+) cases", outs[0])
    assert ran and int(ran[1]) > EXAMPLES[n], outs[0][-3000:]

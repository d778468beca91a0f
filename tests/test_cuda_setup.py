"""The CUDA route's setup: a missing piece of the CUDA stack is one line naming what to
install (``taccl cuda-check``, the torch backend), and the GPU smoke script's dry run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: stub ``cupy`` packages: what a broken or partial install looks like to ``import cupy``
STUBS = {
    "no_nccl": {"cupy/cuda/nccl.py": "available = False\n"},
    "no_driver": {
        "cupy/cuda/nccl.py": "available = True\ndef get_version():\n    return 22304\n",
        "cupy/cuda/runtime.py": textwrap.dedent("""\
            class CUDARuntimeError(RuntimeError):
                pass
            def getDeviceCount():
                raise CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                       "insufficient for CUDA runtime version")
            """),
    },
    "no_gpu": {
        "cupy/cuda/nccl.py": "available = True\n",
        "cupy/cuda/runtime.py": "def getDeviceCount():\n    return 0\n",
    },
    "broken": {
        "cupy/__init__.py": "raise OSError('libcudart.so.12: cannot open shared object file')\n"
    },
}


def _stub(tmp_path: Path, files: dict[str, str]) -> Path:
    base = {
        "cupy/__init__.py": "from . import cuda\n__version__ = '14.2.0'\n",
        "cupy/cuda/__init__.py": "from . import runtime\n",
        "cupy/cuda/runtime.py": "def getDeviceCount():\n    return 1\n",
        "cupy/cuda/nvrtc.py": "def getVersion():\n    return (12, 9)\n",
    }
    for rel, text in {**base, **files}.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def _cuda_check(pythonpath: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = f"{pythonpath}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-c", "from taccl_py.cli import main; main()", "cuda-check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "case, says",
    [
        ("no_nccl", "CuPy finds no NCCL library: pip install 'nvidia-nccl-cu12"),
        ("no_driver", "no usable CUDA GPU: cudaErrorInsufficientDriver"),
        ("no_gpu", "no usable CUDA GPU: none is visible"),
        ("broken", "CuPy does not import (OSError: libcudart.so.12"),
    ],
)
def test_a_missing_piece_is_one_line(tmp_path, case, says):
    res = _cuda_check(_stub(tmp_path, STUBS[case]))
    assert res.returncode == 2
    assert res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("taccl: error: ") and says in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_without_cupy_says_what_to_install(tmp_path):
    try:
        import cupy  # noqa: F401

        pytest.skip("CuPy is installed here")
    except ImportError:
        pass
    res = _cuda_check(None)
    assert res.returncode == 2
    assert res.stderr == (
        "taccl: error: the CUDA route needs CuPy and NCCL: pip install 'taccl_py[cuda]'\n"
    )


def test_ready_on_the_stand_in():
    """With the stand-in as ``cupy``, the check passes and names the GPUs and NCCL."""
    from click.testing import CliRunner

    from taccl_py.cli import main
    from taccl_py.testing.fake_cuda import FakeCuda

    with FakeCuda(devices=3).installed():
        res = CliRunner().invoke(main, ["cuda-check"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("CUDA route ready: 3 GPU(s), CuPy ")
    assert "NCCL 2." in res.output


def test_gpu_smoke_dry_run_checks_every_collective():
    """``benchmarks/gpu_smoke.py --dry-run``: both parts on the stand-in, every result
    equal, every collective in the tables."""
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "smoke: PASSED" in out and "WRONG" not in out
    executor = out[out.index("# executor") : out.index("# torch")]
    torch_part = out[out.index("# torch") :]
    for kind in ("allgather", "reducescatter", "allreduce", "alltoall"):
        assert executor.count(f"\n{kind} ") == 2  # two sizes each
    for name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast", "reduce"):
        assert torch_part.count(f"\n{name} ") == 2
    rows = [line for line in out.splitlines() if line.endswith(" ok")]
    assert len(rows) == 8 + 12

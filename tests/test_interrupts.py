"""Ctrl-C / SIGTERM during a solve, the smt/pareto deadline, and a clean stdout."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from taccl_py.cli import main
from taccl_py.plan.verify import verify
from taccl_py.plan.xml import parse_plan
from taccl_py.synth import smt

MAIN = "from taccl_py.cli import main; main()"
TACCL = [sys.executable, "-c", MAIN]


class Taccl:
    """A ``taccl`` process (after Python code ``prelude``) whose stderr lines are read as
    they come."""

    def __init__(self, args: list[str], cwd, prelude: str = ""):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", prelude + MAIN, *args],
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        """Read stderr until a line holds ``text``."""
        end = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, end - time.monotonic()))
            assert line is not None, f"taccl ended before printing {text!r}"
            if text in line:
                return

    def interrupt(self, sig: int) -> tuple[float, str, str]:
        """Send ``sig``; the seconds until the process ended, its stdout, the stderr
        lines printed after the signal (but a solver's live progress lines, which may
        cross the signal in the pipe)."""
        while not self.lines.empty():  # printed before the signal
            assert self.lines.get() is not None, "taccl ended before the signal"
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        finally:
            self.proc.kill()
        took = time.monotonic() - sent
        rest = []
        while (line := self.lines.get(timeout=5)) is not None:
            if ": solving" not in line:
                rest.append(line)
        return took, self.proc.stdout.read(), "".join(rest)


SOLVES = {  # command, a stderr line printed as a long solve starts
    # two DGX-1s: the warm start misses the cut bound by 33 %, so HiGHS runs (ndv2 x2's
    # warm start meets it: no solve at all)
    "milp": (
        [
            "synthesize",
            "-t",
            "dgx1",
            "-n",
            "2",
            "-c",
            "allgather",
            "--method",
            "milp",
            "--time-limit",
            "120",
            "-o",
            "plan.xml",
            "--ir",
            "ir.json",
        ],
        "routing (chunk-up 1): solving  makespan",
    ),  # live progress
    "smt": (
        [
            "synthesize",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "--method",
            "smt",
            "--steps",
            "3",
            "--rounds",
            "7",
            "--chunks",
            "6",
            "--time-limit",
            "120",
            "-o",
            "plan.xml",
        ],
        "smt (S 3, R 7, C 6)",
    ),
    "pareto": (
        ["pareto", "-t", "dgx1", "-c", "allgather", "--max-chunks", "6", "--time-limit", "120"],
        "smt (S 3, R 7, C 6)",
    ),
}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("solve", sorted(SOLVES))
def test_signal_during_solve_exits_130_at_once(tmp_path, solve, sig):
    args, started = SOLVES[solve]
    run = Taccl(args, tmp_path)
    run.wait_for(started)
    time.sleep(0.5)  # into the solver
    took, out, err = run.interrupt(sig)
    assert run.proc.returncode == 130
    assert took < 2.0, f"took {took:.2f} s to stop"
    assert err == "taccl: interrupted\n"
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # no partial outputs


STUCK = """
import time
from taccl_py.synth import smt, solvers
smt._solve = lambda *a: solvers.interruptible(lambda: time.sleep(60), lambda: None)
"""


def test_solver_that_ignores_its_cancel_still_ends_in_2s(tmp_path):
    run = Taccl(["pareto", "-t", "dgx1", "-c", "allgather"], tmp_path, prelude=STUCK)
    run.wait_for("smt (S 2, R 7, C 6)")
    took, out, err = run.interrupt(signal.SIGTERM)
    assert (run.proc.returncode, err, out) == (130, "taccl: interrupted\n", "")
    assert took < 2.0, f"took {took:.2f} s to stop"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(TACCL + list(args), capture_output=True, text=True, timeout=120)


def test_simulate_json_is_json_and_solver_logs_need_verbose(tmp_path):
    plan = tmp_path / "a2a.xml"
    assert (
        _run("synthesize", "-m", "ring", "-t", "dgx1", "-c", "alltoall", "-o", str(plan)).returncode
        == 0
    )
    quiet = _run("simulate", str(plan), "-t", "dgx1", "--json")  # bound: a HiGHS LP
    assert quiet.returncode == 0, quiet.stderr
    assert [row["size"] for row in json.loads(quiet.stdout)] == [
        1 << 10,
        1 << 20,
        64 << 20,
        1 << 30,
    ]
    assert quiet.stderr == ""
    loud = _run("--verbose", "simulate", str(plan), "-t", "dgx1", "--json")
    assert json.loads(loud.stdout) == json.loads(quiet.stdout)
    assert "Running HiGHS" in loud.stderr


def test_pareto_time_limit_bounds_the_whole_search():
    began = time.monotonic()
    res = _run(
        "pareto", "-t", "dgx1", "-c", "allgather", "--max-chunks", "8", "--time-limit", "1"
    )  # the first point takes ~2 s of unsat proofs first
    assert time.monotonic() - began < 10
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.splitlines()[-1] == (
        "taccl: error: no synchronous allgather algorithm "
        "on dgx1 found within the time limit of 1 s"
    )


@pytest.fixture
def slow_three_steps(monkeypatch):
    """Solves of 3+ steps use up the time they are given; of 2 steps only (2, 3, 2) is
    sat (as on DGX-1) and the others are unsat at once."""
    real = smt._solve

    def fake(topology, coll, steps, rounds, time_limit):
        if (steps, rounds, coll.chunkup) == (2, 3, 2):
            return real(topology, coll, steps, rounds, time_limit)
        if steps == 2:
            return "unsat", None
        time.sleep(time_limit)
        return "unknown", None

    monkeypatch.setattr(smt, "_solve", fake)


def test_pareto_deadline_keeps_the_points_found_so_far(slow_three_steps):
    res = CliRunner().invoke(
        main, ["pareto", "-t", "dgx1", "-c", "allgather", "--max-chunks", "6", "--time-limit", "1"]
    )
    assert res.exit_code == 0, res.output
    rows = [line.split()[:3] for line in res.stdout.splitlines()[2:]]
    assert rows == [["2", "3", "2"]]
    assert (
        "taccl: note: time limit of 1 s reached; the frontier below is only the points found so far"
    ) in res.stderr
    assert "smt (S 3, R 7, C 6): unknown in" in res.stderr


def test_smt_deadline_writes_the_best_point_so_far(tmp_path, slow_three_steps):
    out = tmp_path / "smt.xml"
    res = CliRunner().invoke(
        main,
        [
            "synthesize",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "-m",
            "smt",
            "--chunks",
            "6",
            "--time-limit",
            "1",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "time limit of 1 s reached: keeping the best point found so far, S 2, R 3, C 2"
        in res.stderr
    )
    assert "chunk-up 2" in res.stdout and "  2 steps," in res.stdout
    verify(parse_plan(out))


def test_smt_deadline_without_a_point_is_one_line(tmp_path, monkeypatch):
    def slow(topology, coll, steps, rounds, time_limit):
        time.sleep(time_limit)
        return "unknown", None

    monkeypatch.setattr(smt, "_solve", slow)
    res = CliRunner().invoke(
        main,
        [
            "synthesize",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "-m",
            "smt",
            "--time-limit",
            "1",
            "-o",
            str(tmp_path / "x.xml"),
        ],
    )
    assert res.exit_code == 2
    assert res.stderr.splitlines()[-1] == (
        "taccl: error: smt: no synchronous allgather algorithm on dgx1 within the time limit of 1 s"
    )
    assert list(tmp_path.iterdir()) == []

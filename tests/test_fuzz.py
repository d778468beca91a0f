"""Fuzz the `taccl` command line with broken files, extreme numbers and odd paths.

The property, for every case: the command exits 0 with a verified result, or exits 2 (1 for
`topology validate` of a bad file) with one line on stderr and nothing on stdout; never a
traceback, never a hang, never a partial file: after a failure the directories the
command could write to hold exactly what they held before.

How the CLI is driven: each case runs `taccl_py.cli.main` in a forked copy of this process
(the modules are imported once, so a case costs milliseconds, not an interpreter start), with
its file descriptors 0-2 on files (banners written by C code are caught too), a per-case
timeout (a hang is killed and reported), an address-space limit (a memory blow-up is a
MemoryError, not a stalled machine) and Python's default warning filters. Interrupts, the
overall deadline of the SMT methods and writes through the real `taccl` executable run
in subprocesses.

Every hypothesis test runs all its examples and then fails once, listing each distinct
failure with the first input that showed it (no shrinking: the inputs are small already).

Profiles: TACCL_FUZZ=ci (default; deterministic, about a minute on 2 cores) or
TACCL_FUZZ=long (8x to 20x the examples, random unless --hypothesis-seed is given, plus milp
runs of ten fuzzed sketches, plots of fuzzed plans, 20 MPI runs, 10 interrupt points). TACCL_FUZZ_LOG=FILE appends one JSON
line per test (examples, CLI runs, seconds, failures).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import importlib
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import click
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import fuzz_strategies as fz

PROFILE = os.environ.get("TACCL_FUZZ", "ci")
if PROFILE not in ("ci", "long"):
    raise RuntimeError(f"TACCL_FUZZ={PROFILE!r}: use ci or long")
LONG = PROFILE == "long"
#: seconds a case may run before it counts as a hang
CASE_TIMEOUT = 30.0 if LONG else 15.0
#: a test stops running cases after this many hangs (each costs CASE_TIMEOUT)
MAX_HANGS = 3
TACCL = Path(sys.executable).with_name("taccl")
REPO = fz.REPO
NVSMI = REPO / "tests" / "fixtures" / "nvsmi" / "dgx1.txt"

# Every taccl_py module (but the torch backend) is imported here, once: forked cases start
# warm, and never mix the code imported now with files edited since (a long run's cases all
# see one version of the package).
import taccl_py

_PKG = Path(taccl_py.__file__).parent
for _file in sorted(_PKG.rglob("*.py")):
    _name = ".".join(("taccl_py",) + _file.relative_to(_PKG).with_suffix("").parts)
    if not _name.startswith("taccl_py.torch") and not _name.endswith("__main__"):
        try:
            importlib.import_module(_name.removesuffix(".__init__"))
        except Exception:  # a broken module fails the cases that use it, with its traceback
            pass
for _mod in ("matplotlib.pyplot", "z3", "highspy", "pulp"):
    try:
        importlib.import_module(_mod)
    except Exception:
        pass
from taccl_py.cli import main as taccl_main

#: development aid: scale every test's example count (TACCL_FUZZ_SCALE=0.2 for a quick look)
SCALE = float(os.environ.get("TACCL_FUZZ_SCALE", "1"))


def fuzz_settings(n: int, long: int | None = None):
    """``n`` examples in CI, ``long`` (default 8n) in the long profile."""
    examples = (long or 8 * n) if LONG else n
    return settings(
        max_examples=max(1, round(examples * SCALE)),
        derandomize=not LONG,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )


# -- running one case -------------------------------------------------------------------------
def _vm_size() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


#: address space a case may use: what this process holds plus 3 GiB
MEMORY_LIMIT = _vm_size() + (3 << 30)


@dataclasses.dataclass
class Outcome:
    args: list[str]
    code: int | None = None  # exit status; None when killed
    signal: int | None = None
    timed_out: bool = False
    stdout: str = ""
    stderr: str = ""
    traceback: str | None = None
    seconds: float = 0.0
    limit: float = CASE_TIMEOUT

    def show(self) -> str:
        what = (
            "timed out"
            if self.timed_out
            else f"signal {self.signal}"
            if self.signal
            else f"exit {self.code}"
        )
        tb = f"\n{self.traceback.strip()}" if self.traceback else ""
        return (
            f"taccl {' '.join(_short(a) for a in self.args)} -> {what} in "
            f"{self.seconds:.2f} s; stdout {self.stdout[:160]!r}; "
            f"stderr {self.stderr[:300]!r}{tb[-1500:]}"
        )


def _short(arg: str) -> str:
    return arg if len(arg) <= 60 else f"{arg[:40]}...({len(arg)} chars)"


def _showwarning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _child(args, cwd, stdin_path, out_path, err_path, res_path, fsize=None, pipes=None) -> None:
    """In the forked process: set up like a fresh `taccl` run, run main, report, _exit.
    ``fsize``: the most bytes a file may grow to (a full disk: writes fail with EFBIG);
    stdout and stderr then go to ``pipes`` (write ends), which the limit does not touch."""
    code, tb = 1, None
    try:
        os.chdir(cwd)
        os.setsid()  # our own process group, so a kill reaches what the case starts
        os.dup2(os.open(stdin_path or os.devnull, os.O_RDONLY), 0)
        if pipes:
            os.dup2(pipes[0], 1)
            os.dup2(pipes[1], 2)
        else:
            os.dup2(os.open(out_path, os.O_WRONLY), 1)
            os.dup2(os.open(err_path, os.O_WRONLY), 2)
        sys.stdin = open(0, encoding="utf-8", closefd=False)
        # strict, as under a UTF-8 locale such as en_US.UTF-8 (C.UTF-8 and the C locale
        # escape surrogates instead): a name from non-UTF-8 argv bytes must still print
        sys.stdout = open(1, "w", encoding="utf-8", errors="strict", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGALRM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize if fsize is not None else 1 << 30, hard))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        warnings.resetwarnings()  # Python's defaults, as a fresh interpreter has them
        for cat in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", cat)
        warnings.showwarning = _showwarning
        warnings._showwarnmsg_impl = lambda m: _showwarning(
            m.message, m.category, m.filename, m.lineno, m.file, m.line
        )
        try:
            taccl_main.main(args=args, prog_name="taccl", standalone_mode=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            tb = traceback.format_exc()
            sys.stderr.write(tb)
            code = 1
    except BaseException:
        tb = "harness: " + traceback.format_exc()
    finally:
        try:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the report must fit
            with open(res_path, "w") as fh:
                json.dump({"code": code, "traceback": tb}, fh)
        finally:
            os._exit(0)


def _read(fh, limit: int = 2 << 20) -> str:
    fh.seek(0)
    return fh.read(limit).decode("utf-8", errors="replace")


class _Drain:
    """Reads a pipe into memory on a thread (stdout/stderr of a case with a file-size limit)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.data = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while chunk := os.read(self.r, 1 << 16):
            if len(self.data) < 2 << 20:
                self.data += chunk

    def close(self) -> str:
        self.thread.join(timeout=5)
        os.close(self.r)
        return self.data.decode("utf-8", errors="replace")


def invoke(
    args,
    cwd,
    *,
    stdin: bytes | None = None,
    timeout: float = CASE_TIMEOUT,
    stats=None,
    fsize: int | None = None,
) -> Outcome:
    """Run ``taccl ARGS`` in a fork of this process, in ``cwd``; ``fsize``: a full disk
    after that many bytes per file."""
    args = [str(a) for a in args]
    with tempfile.TemporaryDirectory(prefix="taccl-fuzz-io-") as io_dir:
        out_path, err_path = f"{io_dir}/out", f"{io_dir}/err"
        res_path, in_path = f"{io_dir}/result.json", None
        for p in (out_path, err_path):
            open(p, "wb").close()
        if stdin is not None:
            in_path = f"{io_dir}/in"
            Path(in_path).write_bytes(stdin)
        sys.stdout.flush()
        sys.stderr.flush()
        drains = [_Drain(), _Drain()] if fsize is not None else None
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(
                args,
                str(cwd),
                in_path,
                out_path,
                err_path,
                res_path,
                fsize,
                [d.w for d in drains] if drains else None,
            )
        for d in drains or ():
            os.close(d.w)
        outcome = Outcome(args, limit=timeout)
        pidfd = os.pidfd_open(pid)
        try:
            ready, _, _ = select.select([pidfd], [], [], timeout)
            if not ready:
                outcome.timed_out = True
                for target in (-pid, pid):
                    try:
                        os.kill(target, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        finally:
            os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        outcome.seconds = time.monotonic() - start
        if os.WIFSIGNALED(status) and not outcome.timed_out:
            outcome.signal = os.WTERMSIG(status)
        if drains:
            outcome.stdout, outcome.stderr = drains[0].close(), drains[1].close()
        else:
            with open(out_path, "rb") as fo, open(err_path, "rb") as fe:
                outcome.stdout, outcome.stderr = _read(fo), _read(fe)
        try:
            result = json.loads(Path(res_path).read_text())
            outcome.code, outcome.traceback = result["code"], result["traceback"]
        except (OSError, ValueError):
            pass  # killed before it reported
    if stats is not None:
        stats.runs += 1
    return outcome


def shell(args, cwd, *, timeout: float = CASE_TIMEOUT, **kw) -> Outcome:
    """Run the real ``taccl`` executable (for signals, deadlines and the true stdout)."""
    start = time.monotonic()
    outcome = Outcome([str(a) for a in args], limit=timeout)
    try:
        proc = subprocess.run(
            [str(TACCL), *outcome.args],
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **kw,
        )
    except subprocess.TimeoutExpired as exc:
        outcome.timed_out = True
        outcome.stdout = (exc.stdout or b"").decode(errors="replace")
        outcome.stderr = (exc.stderr or b"").decode(errors="replace")
    else:
        outcome.code = proc.returncode if proc.returncode >= 0 else None
        outcome.signal = -proc.returncode if proc.returncode < 0 else None
        outcome.stdout = proc.stdout.decode(errors="replace")
        outcome.stderr = proc.stderr.decode(errors="replace")
    outcome.seconds = time.monotonic() - start
    return outcome


# -- the property -------------------------------------------------------------------------------
PROGRESS = re.compile(r"^\s*\[\s*[\d.,]+\s*s\]")
#: numbers a report should never show (a table cell, a JSON value)
NON_NUMBERS = re.compile(r"(?<![\w.-])-?(?:nan|inf|infinity)(?![\w.-])", re.I)
#: characters a one-line message must show escaped (a tab may stay)
CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")
#: a table cell of 30+ digits: an input the schema should have bounded
HUGE_NUMBERS = re.compile(r"\d{1,3}(?:,\d{3}){10,}")


def stderr_lines(text: str) -> list[str]:
    """stderr without blank lines and live solver progress lines."""
    return [ln for ln in text.split("\n") if ln.strip() and not PROGRESS.match(ln)]


def problems(
    out: Outcome, *, err_codes=(2,), many_lines=False, name: str | None = None
) -> list[str]:
    """What is wrong with ``out`` whatever the command: hangs, signals, tracebacks, exit
    statuses other than 0 and ``err_codes``, stray output, errors of more than one line.
    ``many_lines``: the command may list one error per line (each naming ``name``)."""
    if out.timed_out:
        return [f"hang: still running after {out.limit:g} s"]
    if out.signal:
        return [f"killed by {signal.Signals(out.signal).name}"]
    tb = out.traceback or (out.stderr if "Traceback (most recent call last)" in out.stderr else "")
    if tb:
        last = [ln for ln in tb.strip().splitlines() if ln.strip()][-1]
        return [f"traceback: {last.strip()[:200]}"]
    lines = stderr_lines(out.stderr)
    if out.code == 0:
        stray = [ln for ln in lines if not ln.startswith(("taccl: note", "note:"))]
        bad_numbers = NON_NUMBERS.findall(out.stdout) + HUGE_NUMBERS.findall(out.stdout)[:1]
        return ([f"stray stderr on success: {stray[0][:160]}"] if stray else []) + (
            [f"'{bad_numbers[0][:40]}' in the output"] if bad_numbers else []
        )
    if out.code not in err_codes:
        return [
            f"exit {out.code} (expected 0 or {'/'.join(map(str, err_codes))}): "
            f"{(lines or [''])[0][:160]}"
        ]
    found = []
    if out.stdout.strip():
        found.append(f"stdout on failure: {out.stdout.strip().splitlines()[0][:120]}")
    if not lines:
        found.append(f"exit {out.code} with nothing on stderr")
    elif many_lines:
        if name is not None and not all(name in ln for ln in lines):
            found.append(f"an error line does not name the file: {lines}"[:300])
    elif len(lines) != 1:
        found.append(f"{len(lines)} lines on stderr: {' | '.join(lines)[:300]}")
    if any(len(ln) > 1000 for ln in lines):
        found.append("an error line longer than 1000 characters")
    if any(CONTROL.search(ln) for ln in lines):
        found.append(
            f"a control character in the error line: {next(ln for ln in lines if CONTROL.search(ln))[:160]!r}"
        )
    return found


def _norm(text: str) -> str:
    """A problem's signature: numbers, quoted text and paths blanked, so one bug is one line."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"(/[\w.+-]+)+/?", "PATH", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)[:150]


@dataclasses.dataclass
class Collector:
    """Gathers the distinct failures of one fuzz test; fails the test once, at the end."""

    test: str
    examples: int = 0
    runs: int = 0
    hangs: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    failures: dict = dataclasses.field(default_factory=dict)
    exits: dict = dataclasses.field(default_factory=dict)  # (command, exit) -> count
    slowest: list = dataclasses.field(default_factory=list)  # (seconds, command, case)
    current_input: bytes = b""  # the fuzzed file of the running example, for the log
    mpi_runs: int = 0

    def check(
        self,
        command: str,
        case: str,
        found: list[str],
        out: Outcome | None = None,
        count_hangs: bool = True,
    ):
        if out is not None:
            key = f"{command}: {'hang' if out.timed_out else out.code}"
            self.exits[key] = self.exits.get(key, 0) + 1
            self.slowest = sorted(
                self.slowest + [(round(out.seconds, 2), command, case[:80])], reverse=True
            )[:5]
        for p in found:
            if p.startswith("hang") and count_hangs:
                self.hangs += 1
            key = (command, _norm(p))
            if key not in self.failures:
                self.failures[key] = [
                    0,
                    p,
                    case,
                    out.show() if out else "",
                    self.current_input[:20000].decode("utf-8", "backslashreplace"),
                ]
            self.failures[key][0] += 1

    @property
    def stopped(self) -> bool:
        return self.hangs >= MAX_HANGS

    def finish(self) -> None:
        seconds = time.monotonic() - self.started
        log = os.environ.get("TACCL_FUZZ_LOG")
        if log:
            with open(log, "a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "test": self.test,
                            "profile": PROFILE,
                            "examples": self.examples,
                            "runs": self.runs,
                            "seconds": round(seconds, 1),
                            "exits": self.exits,
                            "slowest": self.slowest,
                            "failures": [
                                {
                                    "command": c,
                                    "problem": v[1],
                                    "count": v[0],
                                    "case": v[2],
                                    "detail": v[3],
                                    "input": v[4],
                                }
                                for (c, _), v in self.failures.items()
                            ],
                        }
                    )
                    + "\n"
                )
        if self.failures:
            lines = [
                f"{len(self.failures)} distinct failure(s) in {self.examples} examples "
                f"({self.runs} CLI runs, {seconds:.0f} s)"
                + (f"; stopped after {self.hangs} hangs" if self.stopped else "")
            ]
            for (command, _), (count, p, case, detail, _) in self.failures.items():
                lines.append(f"- {command}: {p}  [{count}x; first: {case}]\n    {detail}")
            pytest.fail("\n".join(lines), pytrace=False)


# -- file-system snapshots --------------------------------------------------------------------
def snapshot(*dirs: Path) -> dict:
    """Every entry under ``dirs``: kind, permission bits, content digest or link target."""
    snap = {}
    for d in dirs:
        for root, subdirs, files in os.walk(d):
            for name in subdirs + files:
                p = Path(root, name)
                st_ = os.lstat(p)
                if stat.S_ISLNK(st_.st_mode):
                    snap[str(p)] = ("link", os.readlink(p))
                elif stat.S_ISREG(st_.st_mode):
                    digest = (
                        hashlib.sha1(p.read_bytes()).hexdigest()
                        if st_.st_size < 1 << 24
                        else (st_.st_size, st_.st_mtime_ns)
                    )  # the huge sparse input
                    snap[str(p)] = ("file", stat.S_IMODE(st_.st_mode), digest)
                else:
                    snap[str(p)] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode))
    return snap


def diff(before: dict, after: dict) -> list[str]:
    changed = [f"new {Path(p).name}" for p in after if p not in before]
    changed += [f"removed {Path(p).name}" for p in before if p not in after]
    changed += [f"changed {Path(p).name}" for p in before if p in after and before[p] != after[p]]
    return changed


def partial_files(before: dict, after: dict, allowed=()) -> list[str]:
    """After a failure nothing may change; after a success only ``allowed`` paths may."""
    bad = [
        c for c in diff(before, after) if not any(c.endswith(" " + Path(a).name) for a in allowed)
    ]
    return [f"left files behind: {', '.join(sorted(bad))[:200]}"] if bad else []


# -- valid bases, made once ----------------------------------------------------------------------
_CACHE: dict[str, object] = {}
_BASE_DIR = Path(tempfile.mkdtemp(prefix="taccl-fuzz-bases-"))
_OWNER = os.getpid()
# only this process removes it: a forked child (the runner's, or another test module's
# multiprocessing) runs the inherited atexit handlers too
atexit.register(lambda: os.getpid() == _OWNER and shutil.rmtree(_BASE_DIR, True))

#: (label, topology, nodes, synthesize options)
PLAN_BASES = [
    ("dgx1-allgather-ring", "dgx1", 1, ["-c", "allgather"]),
    ("dgx1-allgather-direct", "dgx1", 1, ["-c", "allgather", "-m", "direct"]),
    ("dgx1-allreduce-ring", "dgx1", 1, ["-c", "allreduce"]),
    ("dgx1-allreduce-tree", "dgx1", 1, ["-c", "allreduce", "-m", "tree"]),
    ("dgx1-reducescatter-ring-c2", "dgx1", 1, ["-c", "reducescatter", "--chunkup", "2"]),
    ("dgx1-alltoall-direct", "dgx1", 1, ["-c", "alltoall", "-m", "direct"]),
    (
        "dgx1-allgather-inplace-2inst-LL",
        "dgx1",
        1,
        ["-c", "allgather", "--inplace", "--instances", "2", "--proto", "LL"],
    ),
    ("ndv2x2-allreduce-ring", "ndv2", 2, ["-c", "allreduce"]),
]
EXTERNAL = sorted((REPO / "tests" / "fixtures" / "external").glob("*_8*.xml"))


def plan_bases() -> list[tuple[str, str]]:
    """(label, XML text) of small valid plans written by `taccl synthesize`."""
    if "plans" not in _CACHE:
        bases = []
        for label, topo, nodes, opts in PLAN_BASES:
            path = _BASE_DIR / f"{label}.xml"
            out = invoke(
                ["synthesize", "-m", "ring", "-t", topo, "-n", nodes, *opts, "-o", path], _BASE_DIR
            )
            assert out.code == 0 and path.exists(), out.show()
            bases.append((label, path.read_text()))
        bases += [(f"external {p.stem}", p.read_text()) for p in EXTERNAL]
        _CACHE["plans"] = bases
    return _CACHE["plans"]


def plan_topology(label: str) -> tuple[str, int]:
    for name, topo, nodes, _ in PLAN_BASES:
        if label.startswith(name):
            return topo, nodes
    return "dgx1", 1


#: (topology, nodes) the sketch bases are for
SKETCH_TARGETS = [("ndv2", 2), ("dgx1", 2), ("dgx-a100", 2), ("dgx2", 2)]


def sketch_bases() -> list[tuple[str, str]]:
    """(label 'topology nodes [source]', YAML text): `sketch init` templates and the built-in
    sketches."""
    if "sketches" not in _CACHE:
        bases = []
        for topo, nodes in SKETCH_TARGETS:
            out = invoke(["sketch", "init", "-t", topo, "-n", nodes], _BASE_DIR)
            assert out.code == 0, out.show()
            bases.append((f"{topo} {nodes} init", out.stdout))
            builtin = REPO / "topologies" / "sketches" / f"{topo}.yaml"
            if builtin.exists():
                bases.append((f"{topo} {nodes} builtin", builtin.read_text()))
        _CACHE["sketches"] = bases
    return _CACHE["sketches"]


# sizes of the strategies' sampled lists must be known when the tests are defined
N_PLAN_BASES = len(PLAN_BASES) + len(EXTERNAL)
N_SKETCH_BASES = len(SKETCH_TARGETS) + sum(
    (REPO / "topologies" / "sketches" / f"{t}.yaml").exists() for t, _ in SKETCH_TARGETS
)


MPIEXEC = Path(sys.executable).with_name("mpiexec")
#: plans verify accepts (after a mutation) that also run under MPI, per test
MPI_RUNS = 20 if LONG else 4


def _limit_memory() -> None:
    """In an mpiexec launched by the suite: each process (ranks too) at most 4 GiB of
    address space, so a huge buffer is an allocation error, not a swapped machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def mpi_run(args: list, cwd: Path, timeout: float = 90) -> Outcome:
    """``mpiexec ARGS`` (ranks of the real `taccl`), duplicate stderr lines kept once
    (every rank may report the same error)."""
    out = Outcome([str(a) for a in args], limit=timeout)
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [str(MPIEXEC), *out.args],
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limit_memory,
        )
        out.code = proc.returncode
        out.stdout = proc.stdout.decode(errors="replace")
        out.stderr = "\n".join(dict.fromkeys(proc.stderr.decode(errors="replace").splitlines()))
    except subprocess.TimeoutExpired:
        out.timed_out = True
    out.seconds = time.monotonic() - start
    return out


def mpi_check(plan: Path, ngpus: int, cwd: Path) -> Outcome:
    """``mpiexec -n NGPUS taccl run PLAN --check``: the executor against MPI's collective,
    on about 64K: the least multiple of the plan's float32 chunks per loop from 64K up
    (NCCL-style ring plans have a chunk per rank and channel, e.g. 48 on a DGX-1)."""
    loop = re.search(rb'nchunksperloop="(\d+)"', plan.read_bytes())
    unit = 4 * int(loop[1]) if loop and int(loop[1]) > 0 else 4
    size = -(-(64 << 10) // unit) * unit
    return mpi_run(
        [
            "-n",
            ngpus,
            TACCL,
            "run",
            plan,
            "--size",
            str(size),
            "--check",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--timeout",
            "20",
        ],
        cwd,
    )


def verify_plan(path: Path, cwd: Path, col: Collector, command: str, case: str) -> None:
    """A plan a command wrote must pass `taccl verify`."""
    out = invoke(["verify", path], cwd, stats=col)
    if out.code != 0:
        col.check(
            command,
            case,
            [
                f"wrote a plan that verify rejects: "
                f"{(stderr_lines(out.stderr) or [out.show()])[0][:200]}"
            ],
            out,
        )


def row_problems(stdout: str, nsizes: int | None = None) -> list[str]:
    """`simulate --json` rows must be numbers that make sense: a finite positive time no
    shorter than the lower bound (a plan beating its bound means the bound or the simulator
    is wrong), algbw = size / time."""
    try:
        rows = json.loads(stdout)
    except ValueError:
        return [f"--json output is not JSON: {stdout[:100]!r}"]
    if not isinstance(rows, list) or (nsizes is not None and len(rows) != nsizes):
        return [f"--json output is not {nsizes} rows: {stdout[:100]!r}"]
    for row in rows:
        t, b, size = row.get("time"), row.get("bound_time"), row.get("size")
        if not all(isinstance(v, (int, float)) and 0 < v < float("inf") for v in (t, b, size)):
            return [f"non-positive or non-finite time/bound in {row}"[:200]]
        if t < b * (1 - 1e-9):
            return [
                f"simulated time {t:.4g} s beats the lower bound {b:.4g} s "
                f"({row.get('bound_kind')}) at {size} B"
            ]
        algbw = row.get("algbw")
        if not isinstance(algbw, (int, float)) or abs(algbw * t - size) > 1e-6 * size:
            return [f"algbw {algbw} is not size / time at {size} B"]
    return []


@st.composite
def plan_files(draw):
    bases = plan_bases()
    label, data = draw(fz.xml_files(bases))
    return label, data


def _dirs():
    root = Path(tempfile.mkdtemp(prefix="taccl-fuzz-"))
    work, outd = root / "work", root / "out"
    work.mkdir()
    outd.mkdir()
    return root, work, outd


# -- fuzzed topology files ------------------------------------------------------------------------
def test_fuzzed_topology_files():
    """`topology validate`, `topology show` and `synthesize -t FILE` on broken topologies."""
    col = Collector("topology files")
    bases = fz.topology_bases()

    @fuzz_settings(25, long=480)
    @given(
        case=fz.yaml_files(
            bases,
            fz.TOPOLOGY_VOCAB,
            ("links", "nics", "description", "gpus_per_node", "switches"),
            fz.TOPOLOGY_EXTREMES,
        ),
        nodes=st.sampled_from([1, 2]),
        method=st.sampled_from(
            [
                ("allgather", "ring"),
                ("allgather", "direct"),
                ("allreduce", "ring"),
                ("allreduce", "tree"),
                ("alltoall", "direct"),
                ("reducescatter", "ring"),
            ]
        ),
    )
    def run(case, nodes, method):
        if col.stopped:
            return
        col.examples += 1
        label, data = case
        root, work, outd = _dirs()
        try:
            topo = work / "topo.yaml"
            topo.write_bytes(data)
            col.current_input = data
            before = snapshot(work, outd)
            v = invoke(["topology", "validate", topo], work, stats=col)
            col.check(
                "topology validate",
                label,
                problems(v, err_codes=(1,), many_lines=True, name=str(topo))
                + partial_files(before, snapshot(work, outd)),
                v,
            )
            if v.code == 0 and v.stdout.strip() != f"{topo}: ok":
                col.check("topology validate", label, [f"odd success output {v.stdout[:80]!r}"], v)
            s = invoke(["topology", "show", topo, "-n", nodes], work, stats=col)
            col.check("topology show", label, problems(s), s)
            out_xml = outd / "x.xml"
            before = snapshot(work, outd)
            y = invoke(
                [
                    "synthesize",
                    "-t",
                    topo,
                    "-n",
                    nodes,
                    "-c",
                    method[0],
                    "-m",
                    method[1],
                    "-o",
                    out_xml,
                ],
                work,
                stats=col,
            )
            found = problems(y)
            after = snapshot(work, outd)
            if y.code == 0:
                found += partial_files(before, after, allowed=[out_xml])
                if v.code == 1:
                    found.append("synthesize accepts a topology that validate rejects")
                if s.code == 2:
                    found.append("synthesize accepts a topology that show rejects")
            else:
                found += partial_files(before, after)
            col.check("synthesize -t FILE", label, found, y)
            if y.code == 0 and not found:
                verify_plan(out_xml, work, col, "synthesize -t FILE", label)
                sim = invoke(
                    ["simulate", out_xml, "-t", topo, "-n", nodes, "--json"], work, stats=col
                )
                found = problems(sim)
                if sim.code != 0:
                    found.append("simulate refuses a plan synthesized for the same topology")
                else:
                    found += row_problems(sim.stdout, 4)
                col.check("simulate -t FILE", label, found, sim)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


# -- fuzzed sketches ------------------------------------------------------------------------------
def test_fuzzed_sketches():
    """`sketch validate` (and, in the long profile, milp synthesis) with broken sketches."""
    col = Collector("sketches")
    bases = sketch_bases()

    @fuzz_settings(50)
    @given(
        case=fz.yaml_files(
            bases,
            fz.SKETCH_VOCAB,
            ("inter_node", "chunkup", "symmetry", "name", "size"),
            fz.SKETCH_EXTREMES,
        ),
        solve=st.integers(0, 3),
    )
    def run(case, solve):
        if col.stopped:
            return
        col.examples += 1
        label, data = case
        topo_name, nodes = label.split()[:2]
        root, work, outd = _dirs()
        try:
            sk = work / "sketch.yaml"
            sk.write_bytes(data)
            col.current_input = data
            before = snapshot(work, outd)
            v = invoke(["sketch", "validate", sk, "-t", topo_name, "-n", nodes], work, stats=col)
            found = problems(v, many_lines=True, name=str(sk)) + partial_files(
                before, snapshot(work, outd)
            )
            if v.code == 0 and ": ok:" not in v.stdout:
                found.append(f"odd success output {v.stdout[:80]!r}")
            col.check("sketch validate", label, found, v)
            if LONG and solve == 0 and v.code == 0 and not found and col.mpi_runs < 10:
                col.mpi_runs += 1  # (counts milp runs here) a few: milp is slow
                out_xml = outd / "x.xml"
                y = invoke(
                    [
                        "synthesize",
                        "-t",
                        topo_name,
                        "-n",
                        nodes,
                        "-c",
                        "allgather",
                        "-m",
                        "milp",
                        "--sketch",
                        sk,
                        "--time-limit",
                        "3",
                        "-o",
                        out_xml,
                    ],
                    work,
                    timeout=60,
                    stats=col,
                )
                found = problems(y)
                if y.code != 0:
                    found += partial_files(before, snapshot(work, outd))
                # a hang here stops the milp runs, not the validation of the other sketches
                col.check("synthesize --sketch FILE", label, found, y, count_hangs=False)
                if y.timed_out:
                    col.mpi_runs = 10
                if y.code == 0 and not found:
                    verify_plan(out_xml, work, col, "synthesize --sketch FILE", label)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


# -- fuzzed plans -------------------------------------------------------------------------------------
def test_fuzzed_plans():
    """`verify` and `simulate --json` (and, long profile, `plot`) on broken plans: simulate
    may only accept what verify accepts."""
    col = Collector("plans")

    @fuzz_settings(50, long=960)
    @given(case=plan_files())
    def run(case):
        if col.stopped:
            return
        col.examples += 1
        label, data = case
        topo, nodes = plan_topology(label)
        root, work, outd = _dirs()
        try:
            plan = work / "plan.xml"
            plan.write_bytes(data)
            col.current_input = data
            before = snapshot(work, outd)
            v = invoke(["verify", plan], work, stats=col)
            found = problems(v) + partial_files(before, snapshot(work, outd))
            if v.code == 0 and ": ok:" not in v.stdout:
                found.append(f"odd success output {v.stdout[:80]!r}")
            col.check("verify", label, found, v)
            nr = invoke(["verify", "--no-reference", plan], work, stats=col)
            found = problems(nr)
            if nr.code == 2 and v.code == 0:
                found.append("verify --no-reference rejects a plan verify accepts")
            if nr.code == 0 and v.code == 2:
                found.append(
                    f"the verifier accepts a plan the reference executor rejects: "
                    f"{(stderr_lines(v.stderr) or [''])[0][:160]}"
                )
            col.check("verify --no-reference", label, found, nr)
            s = invoke(["simulate", plan, "-t", topo, "-n", nodes, "--json"], work, stats=col)
            found = problems(s)
            if s.code == 0:
                found += row_problems(s.stdout, 4)
                if v.code != 0:
                    found.append("simulate times a plan that verify rejects")
            col.check("simulate --json", label, found, s)
            ngpus = re.search(rb'ngpus="(\d+)"', data)
            if (
                v.code == 0
                and "unchanged" not in label
                and col.mpi_runs < MPI_RUNS
                and ngpus
                and int(ngpus[1]) <= 16
            ):
                col.mpi_runs += 1
                m = mpi_check(plan, int(ngpus[1]), work)
                found = problems(m)
                if m.code == 0 and "check ok" not in m.stdout:
                    found.append(f"no 'check ok' from the MPI run: {m.stdout[:120]!r}")
                if m.code == 2:
                    found.append(
                        f"verify accepts a plan whose MPI run fails its check: "
                        f"{(stderr_lines(m.stderr) or [''])[0][:160]}"
                    )
                col.check("mpiexec taccl run --check", label, found, m)
            if LONG:
                pngs = [outd / "a.png", outd / "t.png"]
                before = snapshot(work, outd)
                p = invoke(
                    [
                        "plot",
                        plan,
                        "-t",
                        topo,
                        "-n",
                        nodes,
                        "--algbw",
                        pngs[0],
                        "--timeline",
                        pngs[1],
                    ],
                    work,
                    stats=col,
                )
                found = problems(p)
                after = snapshot(work, outd)
                if p.code == 0:
                    found += partial_files(before, after, allowed=pngs)
                    if v.code != 0:
                        found.append("plot draws a plan that verify rejects")
                    if not all(q.read_bytes()[:4] == b"\x89PNG" for q in pngs):
                        found.append("plot exit 0 without both PNGs")
                else:
                    found += partial_files(before, after)
                col.check("plot", label, found, p)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


# -- option values -------------------------------------------------------------------------------------
def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def must_reject_number(text: str, lo: float, hi: float = float("inf")) -> bool:
    """True when ``text`` is no number at all, NaN, infinite or outside [lo, hi]."""
    v = _float(text)
    return v is None or not math.isfinite(v) or not lo <= v <= hi


def must_reject_size(text: str, zero_ok: bool = False) -> bool:
    """True for sizes that are NaN/inf/negative/zero (unless ``zero_ok``) or >= 2^63."""
    total = []
    for part in text.split(",") if "," in text else [text]:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:[iI]?[bB])?\s*", part)
        if not m:
            if "," in text and not part.strip():
                continue
            return True
        scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m[2].lower()]
        from fractions import Fraction

        v = Fraction(m[1]) * scale
        if v.denominator != 1 or v >= 1 << 63 or (v < 1 and not (zero_ok and v == 0)):
            return True
        total.append(v)
    return not total


#: option -> (value strategy, must-reject predicate or None); about half the values are
#: good ones, so the success path (a plan that verifies) is walked as often as the errors
BAD_INTS = st.one_of(
    st.sampled_from(fz.NUMBER_TOKENS),
    st.integers(-3, 0).map(str),
    st.sampled_from(["100000", "1000000", str(2**31), str(2**63)]),
    st.text(max_size=4),
)
INTS = st.one_of(st.sampled_from(["1", "2", "3", "4", " 2", "+2", "02"]), BAD_INTS)
GOOD_SIZES = st.sampled_from(
    ["1", "4", "1K", "1k", "64M", "1G", "4096", "1.5K", "1MB", "1MiB", "2T", "8589934592"]
)
SIZES = st.one_of(GOOD_SIZES, fz.sizes())
SECONDS = st.one_of(st.sampled_from(["1", "2.5", "60", "1e2", "3600"]), fz.numbers())
SIZE_LISTS = st.one_of(st.lists(GOOD_SIZES, min_size=1, max_size=5).map(",".join), fz.sizes())
TEMPLATES = {
    # name: (base args, {option: (values, must_reject(text) -> bool)}, writes plan?)
    "synthesize": (
        ["synthesize", "-m", "ring", "-t", "dgx1", "-c", "allgather", "-o", "OUT/x.xml"],
        {
            "--nodes": (INTS, lambda t: must_reject_number(t, 1)),
            "--chunkup": (INTS, lambda t: must_reject_number(t, 1)),
            "--instances": (INTS, lambda t: must_reject_number(t, 1, 32)),
            "--time-limit": (SECONDS, lambda t: must_reject_number(t, 1, 7 * 24 * 3600)),
            "--size": (SIZES, lambda t: "," in t or must_reject_size(t)),
            "--min-bytes": (SIZES, lambda t: "," in t or must_reject_size(t, zero_ok=True)),
            "--max-bytes": (SIZES, lambda t: "," in t or must_reject_size(t, zero_ok=True)),
            "--order": (
                st.one_of(
                    st.sampled_from(
                        [
                            "0,1,2,3,4,5,6,7",
                            "7,6,5,4,3,2,1,0",
                            "0,1",
                            "0,0,1,2,3,4,5,6",
                            "0,1,2,3,4,5,6,8",
                            ",".join(["0"] * 10000),
                            "-1,0,1,2,3,4,5,6",
                            "",
                            ",",
                            "0,,1",
                        ]
                    ),
                    st.lists(fz.numbers(), max_size=9).map(",".join),
                ),
                None,
            ),
            "--steps": (INTS, lambda t: True),
            "--rounds": (INTS, lambda t: True),
            "--chunks": (INTS, lambda t: True),
        },
        True,
    ),
    "synthesize-direct": (
        ["synthesize", "-t", "dgx1", "-c", "alltoall", "-m", "direct", "-o", "OUT/x.xml"],
        {
            "--nodes": (INTS, lambda t: must_reject_number(t, 1)),
            "--chunkup": (INTS, lambda t: must_reject_number(t, 1)),
            "--instances": (INTS, lambda t: must_reject_number(t, 1, 32)),
            "--size": (SIZES, lambda t: "," in t or must_reject_size(t)),
        },
        True,
    ),
    "synthesize-milp": (
        ["synthesize", "-t", "dgx1", "-c", "allgather", "-m", "milp", "-o", "OUT/x.xml"],
        {
            # bad values only: good ones start a solve
            "--time-limit": (
                st.sampled_from(
                    [
                        "nan",
                        "inf",
                        "-inf",
                        "1e400",
                        "-1",
                        "0",
                        "0.5",
                        fz.HUGE_DIGITS,
                        "",
                        "abc",
                        "1e9",
                        str(2**63),
                    ]
                ),
                lambda t: must_reject_number(t, 1, 7 * 24 * 3600),
            ),
            "--nodes": (
                st.sampled_from(["0", "-1", "nan", "100000", str(2**63), fz.HUGE_DIGITS]),
                lambda t: must_reject_number(t, 1, 1024),
            ),
        },
        True,
    ),
    "synthesize-smt": (
        ["synthesize", "-t", "dgx1", "-c", "allgather", "-m", "smt", "-o", "OUT/x.xml"],
        {
            opt: (
                st.sampled_from(
                    [
                        "0",
                        "-1",
                        "nan",
                        "inf",
                        "1e400",
                        fz.HUGE_DIGITS,
                        str(2**63),
                        "1000000",
                        "",
                        "x",
                    ]
                ),
                lambda t: must_reject_number(t, 1, 256),
            )
            for opt in ("--steps", "--rounds", "--chunks", "--time-limit")
        },
        True,
    ),
    "simulate": (
        ["simulate", "PLAN", "-t", "dgx1", "--json"],
        {
            "--sizes": (SIZE_LISTS, lambda t: all(must_reject_size(p) for p in t.split(","))),
            "--nodes": (INTS, lambda t: _int(t) != 1),
        },
        False,
    ),
    "plot": (
        ["plot", "PLAN", "-t", "dgx1", "--timeline", "OUT/t.png"],
        {
            "--size": (SIZES, lambda t: "," in t or must_reject_size(t)),
        },
        False,
    ),
    "plot-algbw": (
        ["plot", "PLAN", "-t", "dgx1", "--algbw", "OUT/a.png"],
        {
            "--sizes": (SIZE_LISTS, lambda t: all(must_reject_size(p) for p in t.split(","))),
        },
        False,
    ),
    "pareto": (
        ["pareto", "-t", "dgx1", "-c", "allgather"],
        {
            "--max-chunks": (
                st.sampled_from(["0", "-1", "65", "nan", "inf", fz.HUGE_DIGITS, "", str(2**63)]),
                lambda t: True,
            ),
            "--max-steps": (
                st.sampled_from(
                    ["0", "-1", "nan", "inf", fz.HUGE_DIGITS, "1e3", "", str(2**63), "100000"]
                ),
                lambda t: True,
            ),
            "--time-limit": (
                st.sampled_from(
                    ["0", "-1", "nan", "inf", "1e400", fz.HUGE_DIGITS, "", "0.1", str(2**63)]
                ),
                lambda t: True,
            ),
            "--nodes": (st.sampled_from(["0", "-1", "100000", fz.HUGE_DIGITS]), lambda t: True),
        },
        False,
    ),
    "topology show": (
        ["topology", "show", "dgx1"],
        {
            "--nodes": (INTS, lambda t: must_reject_number(t, 1)),
        },
        False,
    ),
    "sketch init": (
        ["sketch", "init", "-t", "ndv2"],
        {
            "--nodes": (INTS, lambda t: must_reject_number(t, 1)),
        },
        False,
    ),
    "sketch validate": (
        ["sketch", "validate", "ndv2", "-t", "ndv2"],
        {
            "--nodes": (INTS, lambda t: must_reject_number(t, 1)),
        },
        False,
    ),
    "topology import": (
        ["topology", "import", "nvidia-smi", str(NVSMI), "-o", "OUT/t.yaml"],
        {
            opt: (
                st.one_of(st.sampled_from(["1", "12.5", "25", "400", "0.001"]), fz.numbers()),
                lambda t: must_reject_number(t, 5e-324, 1e6),
            )
            for opt in ("--nvlink-bw", "--pcie-bw", "--nic-bw")
        },
        False,
    ),
    "run": (
        ["run", "PLAN"],
        {
            "--size": (SIZES, lambda t: "," in t or must_reject_size(t)),
            "--iters": (INTS, None),
            "--warmup": (INTS, None),
            "--timeout": (SECONDS, None),
            "--dtype": (
                st.sampled_from(
                    [
                        "float32",
                        "float16",
                        "bfloat16",
                        "float128",
                        "complex64",
                        "int8",
                        "bool",
                        "object",
                        "U10",
                        "V8",
                        "datetime64",
                        "",
                        "nan",
                        "float32,float32",
                        "f" * 300,
                    ]
                ),
                None,
            ),
        },
        False,
    ),
    "profile": (
        ["profile"],
        {
            "--iters": (INTS, None),
            "--warmup": (INTS, None),
            "--sizes": (fz.sizes(), None),
            "--gpus-per-node": (INTS, None),
        },
        False,
    ),
}


@st.composite
def option_cases(draw):
    name = draw(st.sampled_from(sorted(TEMPLATES)))
    base, opts, writes_plan = TEMPLATES[name]
    chosen = draw(st.lists(st.sampled_from(sorted(opts)), min_size=1, max_size=2, unique=True))
    values = {opt: draw(opts[opt][0]) for opt in chosen}
    return name, values


def test_fuzzed_option_values():
    """Every numeric option with NaN, ±inf, 1e400, 400-digit and 2^63 values, negatives,
    zero, garbage and good values: a good value works (a plan verifies), a bad one is one
    line naming it."""
    col = Collector("option values")

    @fuzz_settings(70, long=1280)
    @given(case=option_cases())
    def run(case):
        if col.stopped:
            return
        col.examples += 1
        name, values = case
        base, opts, writes_plan = TEMPLATES[name]
        root, work, outd = _dirs()
        try:
            plan = work / "plan.xml"
            plan.write_text(plan_bases()[0][1])
            args = [str(a).replace("OUT/", f"{outd}/") if a != "PLAN" else str(plan) for a in base]
            for opt, value in values.items():
                args += [opt, value]
            label = " ".join(f"{o} {v!r}" for o, v in values.items())
            before = snapshot(work, outd)
            out = invoke(args, work, stats=col)
            found = problems(out)
            after = snapshot(work, outd)
            if out.code == 0:
                rejected = [
                    o for o, v in values.items() if opts[o][1] is not None and opts[o][1](v)
                ]
                if rejected:
                    found.append(f"accepted a bad value for {', '.join(rejected)}")
                expected = [a for a in args if a.startswith(str(outd))]
                found += partial_files(before, after, allowed=expected)
                if name == "simulate":
                    try:
                        json.loads(out.stdout)
                    except ValueError:
                        found.append(f"--json output is not JSON: {out.stdout[:80]!r}")
            else:
                found += partial_files(before, after)
                if (
                    out.code == 2
                    and stderr_lines(out.stderr)
                    and not any(
                        _named(o, v, stderr_lines(out.stderr)[0]) for o, v in values.items()
                    )
                ):
                    found.append(
                        f"error names no fuzzed option: {stderr_lines(out.stderr)[0][:160]}"
                    )
            col.check(name, label, found, out)
            if out.code == 0 and writes_plan and not found:
                verify_plan(outd / "x.xml", work, col, name, label)
            if out.code == 0 and name == "topology import" and not found:
                v = invoke(["topology", "validate", outd / "t.yaml"], work, stats=col)
                if v.code != 0:
                    col.check(
                        name,
                        label,
                        [
                            f"wrote a topology that validate rejects: "
                            f"{(stderr_lines(v.stderr) or [''])[0][:160]}"
                        ],
                        v,
                    )
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


def _named(option: str, value: str, line: str) -> bool:
    """Does an error line point at the option (its name, its value, or a consequence of it:
    a rank or node count, a size, an order)?"""
    words = {
        option,
        option.lstrip("-"),
        option.lstrip("-").replace("-", " "),
        option.lstrip("-").replace("-", "_"),
    }
    if value.strip() and len(value) < 60:
        words.add(value.strip())
    words |= {
        "rank",
        "node",
        "size",
        "order",
        "byte",
        "smt",
        "MPI",
        "mpi",
        "mpiexec",
        "torchrun",
        "chunk",
        "instance",
        "sketch",
        "step",
        "round",
        "dtype",
        "limit",
    }
    return any(w in line for w in words)


# -- odd output paths ------------------------------------------------------------------------------------
def _mkdev(path: Path, minor: int, fallback: str) -> None:
    """A private character device (1, minor) when root may make one, else a symlink to a
    system one (which a non-root process cannot replace)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
        with open(path, "rb"):
            pass
    except OSError:
        path.unlink(missing_ok=True)
        os.symlink(fallback, path)


def make_output_path(kind: str, outd: Path, ext: str, other: str | None, i: int = 0):
    """Create what ``kind`` needs under ``outd`` (names end in ``i``, the output's index);
    return (path text, FIFO reader or None)."""
    reader = None
    ext = f"{i}{ext}"
    if kind == "new":
        return str(outd / f"out{ext}"), None
    if kind == "existing":
        p = outd / f"existing{ext}"
        p.write_text("OLD\n")
        p.chmod(0o640)
        return str(p), None
    if kind == "directory":
        (outd / "adir").mkdir(exist_ok=True)
        return str(outd / "adir"), None
    if kind == "missing-dir":
        return str(outd / "missing" / f"out{ext}"), None
    if kind in ("fifo", "fifo-no-reader"):
        p = outd / f"fifo{ext}"
        os.mkfifo(p)
        if kind == "fifo":
            reader = _FifoReader(p)
        return str(p), reader
    if kind == "devnull":
        _mkdev(outd / f"null{i}", 3, "/dev/null")
        return str(outd / f"null{i}"), None
    if kind == "devfull":
        _mkdev(outd / f"full{i}", 7, "/dev/full")
        return str(outd / f"full{i}"), None
    if kind == "stdout-link":
        os.symlink("/proc/self/fd/1", outd / f"stdout{i}")
        return str(outd / f"stdout{i}"), None
    if kind == "link-to-file":
        (outd / f"target{ext}").write_text("OLD\n")
        os.symlink(f"target{ext}", outd / f"link{ext}")
        return str(outd / f"link{ext}"), None
    if kind == "dangling-link":
        os.symlink(f"nowhere{ext}", outd / f"dangling{ext}")
        return str(outd / f"dangling{ext}"), None
    if kind == "link-to-dir":
        (outd / "adir").mkdir(exist_ok=True)
        os.symlink("adir", outd / f"dirlink{i}")
        return str(outd / f"dirlink{i}"), None
    if kind == "link-loop":
        os.symlink(f"loopb{i}", outd / f"loopa{i}")
        os.symlink(f"loopa{i}", outd / f"loopb{i}")
        return str(outd / f"loopa{i}"), None
    if kind == "empty":
        return "", None
    if kind == "long-name":
        return str(outd / ("x" * 300 + ext)), None
    if kind == "trailing-slash":
        return str(outd / f"out{ext}") + "/", None
    if kind == "dash":
        return "-", None
    if kind == "odd-name":
        return str(outd / f"-o \t\n\udcff\u00e9 {ext}"), None
    if kind == "disk-full":  # the case runs with a file-size limit: see test_fuzzed_output_paths
        return str(outd / f"full-disk{ext}"), None
    if kind == "same-as-other":
        return other, None
    if kind == "dot-slash-same":
        return str(Path(other).parent / "." / Path(other).name), None
    raise AssertionError(kind)


class _FifoReader:
    """Drains a FIFO from this process while a case writes into it."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while not self.done.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    chunk = os.read(self.fd, 1 << 16)
                except BlockingIOError:
                    continue
                self.data += chunk
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            self.data += chunk

    def close(self) -> bytes:
        self.done.set()
        self.thread.join()
        os.close(self.fd)
        return bytes(self.data)


#: command -> (args with {P} and {Q} for the output paths, extensions, content check)
WRITERS = {
    "synthesize -o --ir": (
        ["synthesize", "-m", "ring", "-t", "dgx1", "-c", "allgather", "-o", "{P}", "--ir", "{Q}"],
        (".xml", ".json"),
    ),
    "synthesize -o": (
        ["synthesize", "-m", "ring", "-t", "dgx1", "-c", "allreduce", "-o", "{P}"],
        (".xml",),
    ),
    "sketch init -o": (["sketch", "init", "-t", "ndv2", "-n", "2", "-o", "{P}"], (".yaml",)),
    "topology import -o": (
        ["topology", "import", "nvidia-smi", str(NVSMI), "-o", "{P}"],
        (".yaml",),
    ),
    "topology show --png": (["topology", "show", "dgx1", "--png", "{P}"], (".png",)),
    "plot --algbw --timeline": (
        ["plot", "PLAN", "-t", "dgx1", "--algbw", "{P}", "--timeline", "{Q}"],
        (".png", ".png"),
    ),
}
OUTPUT_KINDS = fz.OUTPUT_PATHS + (
    "fifo-no-reader",
    "stdout-link",
    "dot-slash-same",
    "odd-name",
    "disk-full",
)
#: kinds after which the command must fail
MUST_FAIL = {
    "directory",
    "missing-dir",
    "devfull",
    "link-to-dir",
    "link-loop",
    "empty",
    "long-name",
    "trailing-slash",
    "same-as-other",
    "dot-slash-same",
    "disk-full",
}


def _content_ok(ext: str, data: bytes) -> bool:
    if ext == ".xml":
        return data.lstrip().startswith(b"<algo")
    if ext == ".json":
        try:
            json.loads(data)
            return True
        except ValueError:
            return False
    if ext == ".png":
        return data.startswith(b"\x89PNG")
    return bool(data.strip()) and yaml.safe_load(data) is not None


@st.composite
def output_cases(draw):
    command = draw(st.sampled_from(sorted(WRITERS)))
    args, exts = WRITERS[command]
    kinds = [
        draw(
            st.sampled_from(
                [k for k in OUTPUT_KINDS if k not in ("same-as-other", "dot-slash-same")]
            )
        )
    ]
    if len(exts) == 2:
        kinds.append(draw(st.sampled_from(OUTPUT_KINDS)))
        if draw(st.booleans()):
            kinds.reverse()
            if kinds[0] in ("same-as-other", "dot-slash-same"):
                kinds.reverse()
    return command, kinds


def test_fuzzed_output_paths():
    """Outputs to directories, FIFOs, devices, symlinks, missing dirs, one path twice...:
    written as asked (into streams, through links, keeping modes) or nothing at all."""
    col = Collector("output paths")

    @fuzz_settings(35, long=640)
    @given(case=output_cases())
    def run(case):
        if col.stopped:
            return
        col.examples += 1
        command, kinds = case
        args, exts = WRITERS[command]
        root, work, outd = _dirs()
        readers = []
        try:
            plan = work / "plan.xml"
            plan.write_text(plan_bases()[0][1])
            paths = []
            for i, (kind, ext) in enumerate(zip(kinds, exts)):
                p, reader = make_output_path(kind, outd, ext, paths[0] if paths else None, i)
                paths.append(p)
                if reader:
                    readers.append((p, reader))
            full = [
                a.replace("{P}", paths[0]).replace("{Q}", paths[-1]) if a != "PLAN" else str(plan)
                for a in args
            ]
            label = " + ".join(kinds)
            before = snapshot(work, outd)
            out = invoke(full, work, stats=col, fsize=256 if "disk-full" in kinds else None)
            drained = {p: r.close() for p, r in readers}
            readers.clear()
            after = snapshot(work, outd)
            found = problems(out)
            if out.code == 0:
                bad = [k for k in kinds if k in MUST_FAIL]
                if bad:
                    found.append(f"exit 0 writing to {', '.join(bad)}")
                for kind, p, ext in zip(kinds, paths, exts):
                    found += _check_written(kind, p, ext, out, drained, before, after, work)
                changed = {Path(p).name for p in paths} | {
                    f"{w}{i}{e}" for i, e in enumerate(exts) for w in ("target", "nowhere")
                }
                found += partial_files(before, after, allowed=changed)
            else:
                found += partial_files(before, after)
                ok = [
                    k
                    for k in kinds
                    if k
                    in (
                        "new",
                        "existing",
                        "devnull",
                        "fifo",
                        "stdout-link",
                        "link-to-file",
                        "dash",
                        "odd-name",
                    )
                ]
                same_stream = len(kinds) == 2 and kinds[0] == kinds[1] in ("stdout-link", "dash")
                if out.code == 2 and len(ok) == len(kinds) and not same_stream:
                    found.append(f"refused a writable output ({label})")
            col.check(command, label, found, out)
        finally:
            for _, r in readers:
                r.close()
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


def _check_written(kind, p, ext, out, drained, before, after, work) -> list[str]:
    """What a successful write to a path of ``kind`` must have left."""
    path = work / p
    if kind in ("new", "existing", "dash", "odd-name"):
        if kind == "dash" and not path.exists():
            return (
                [] if ("<algo" if ext == ".xml" else "") in out.stdout else ["'-' written nowhere"]
            )
        if not path.is_file() or not _content_ok(ext, path.read_bytes()):
            return [f"{kind}: no valid {ext} written"]
        if kind == "existing" and stat.S_IMODE(path.stat().st_mode) != 0o640:
            return [f"existing file's mode changed to {oct(stat.S_IMODE(path.stat().st_mode))}"]
    elif kind == "fifo":
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            return ["the FIFO was replaced by a file"]
        if not _content_ok(ext, drained.get(p, b"")):
            return [f"nothing valid written into the FIFO ({len(drained.get(p, b''))} bytes)"]
    elif kind in ("devnull", "stdout-link", "link-to-file", "dangling-link"):
        if not path.is_symlink() and before.get(str(path)) != after.get(str(path)):
            return [f"{kind}: the {'device' if kind == 'devnull' else 'link'} was replaced"]
        if kind == "stdout-link" and not (
            _content_ok(ext, out.stdout.encode())
            or (ext.endswith(".png") and "PNG" in out.stdout[:8])
            or (ext.endswith(".json") and out.stdout.lstrip().startswith("{"))
        ):
            return ["nothing valid written to the link to stdout"]
        if kind in ("link-to-file", "dangling-link"):
            target = path.parent / os.readlink(path)
            if not target.is_file() or not _content_ok(ext, target.read_bytes()):
                return [f"{kind}: the link's target was not written"]
    return []


# -- odd input paths ---------------------------------------------------------------------------------------
READERS = {
    "verify": (["verify", "{P}"], "plan", (2,)),
    "simulate": (["simulate", "{P}", "-t", "dgx1", "--json"], "plan", (2,)),
    "topology validate": (["topology", "validate", "{P}"], "topology", (1,)),
    "topology show": (["topology", "show", "{P}"], "topology", (2,)),
    "synthesize -t": (
        ["synthesize", "-m", "ring", "-t", "{P}", "-c", "allgather", "-o", "OUT/x.xml"],
        "topology",
        (2,),
    ),
    "sketch validate": (["sketch", "validate", "{P}", "-t", "ndv2", "-n", "2"], "sketch", (2,)),
    "topology import": (["topology", "import", "nvidia-smi", "{P}"], "nvsmi", (2,)),
    "run": (["run", "{P}", "--iters", "1"], "plan", (2,)),
}
INPUT_KINDS = fz.INPUT_PATHS + ("valid", "odd-name-valid")


def _valid_input(what: str) -> bytes:
    if what == "plan":
        return plan_bases()[0][1].encode()
    if what == "topology":
        return (REPO / "topologies" / "dgx1.yaml").read_bytes()
    if what == "sketch":
        return sketch_bases()[0][1].encode()
    return NVSMI.read_bytes()


def make_input_path(kind: str, work: Path, what: str) -> str:
    if kind == "directory":
        (work / "adir").mkdir()
        return str(work / "adir")
    if kind == "missing":
        return str(work / "missing.in")
    if kind == "fifo":
        os.mkfifo(work / "fifo")
        return str(work / "fifo")
    if kind == "devnull":
        return "/dev/null"
    if kind == "devzero":
        return "/dev/zero"
    if kind.startswith("/"):  # system files and streams: read only, never written
        return kind
    if kind == "dangling-link":
        os.symlink("nowhere", work / "dangling")
        return str(work / "dangling")
    if kind == "link-loop":
        os.symlink("loop2", work / "loop1")
        os.symlink("loop1", work / "loop2")
        return str(work / "loop1")
    if kind == "empty":
        return ""
    if kind == "empty-file":
        (work / "empty.in").write_bytes(b"")
        return str(work / "empty.in")
    if kind == "binary":
        (work / "bin.in").write_bytes(bytes(range(256)) * 64)
        return str(work / "bin.in")
    if kind == "sparse-huge":
        with open(work / "huge.in", "wb") as fh:
            fh.truncate(4 << 30)
        return str(work / "huge.in")
    if kind == "long-name":
        return str(work / ("y" * 300))
    if kind == "odd-name-valid":
        p = work / "-x \t\n\udcff\u00e9.in"
        p.write_bytes(_valid_input(what))
        return str(p)
    if kind in ("valid", "link-to-valid"):
        (work / "valid.in").write_bytes(_valid_input(what))
        if kind == "valid":
            return str(work / "valid.in")
        os.symlink("valid.in", work / "valid-link")
        return str(work / "valid-link")
    raise AssertionError(kind)


def test_fuzzed_input_paths():
    """Inputs that are directories, FIFOs, /dev/zero, huge sparse files, dangling or looping
    links, empty names, system files: refused at once with one line; valid files (and links
    to them, and odd names) work. Every reading command x every kind of path (no sampling:
    the product is small)."""
    col = Collector("input paths")

    def run(command, kind):
        if col.stopped:
            return
        col.examples += 1
        args, what, err_codes = READERS[command]
        root, work, outd = _dirs()
        try:
            p = make_input_path(kind, work, what)
            full = [a.replace("{P}", p).replace("OUT/", f"{outd}/") for a in args]
            before = snapshot(work, outd)
            out = invoke(full, work, stats=col)
            found = problems(out, err_codes=err_codes, many_lines=command.endswith("validate"))
            after = snapshot(work, outd)
            valid = kind in ("valid", "link-to-valid", "odd-name-valid")
            if command == "run":
                valid = False  # without mpiexec: one rank, an 8-rank plan
            if out.code == 0 and not valid:
                found.append(f"exit 0 reading a {kind} input")
            if out.code != 0 and valid:
                found.append(
                    f"refused a valid input: {(stderr_lines(out.stderr) or [''])[0][:120]}"
                )
            found += partial_files(before, after, allowed=[outd / "x.xml"] if out.code == 0 else [])
            if (
                not found
                and out.code != 0
                and kind in ("sparse-huge", "devzero", "fifo")
                and out.seconds > 5
            ):
                found.append(f"took {out.seconds:.1f} s to refuse a {kind} input")
            col.check(command, kind, found, out)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    for command in sorted(READERS):
        for kind in INPUT_KINDS:
            run(command, kind)
    col.finish()


# -- fuzzed nvidia-smi matrices --------------------------------------------------------------------------------
NAMES = st.one_of(
    st.none(),
    st.sampled_from(
        ["x", "", "a/b", "x" * 300, "two\nlines", "name: evil\nlinks: []", "'", "#", "&a", "-"]
    ),
)
NICS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "none",
            "mlx5_0",
            "mlx5_9",
            "NIC0",
            "NIC9",
            "",
            ",",
            "mlx5_0,mlx5_0",
            "mlx5_0,mlx5_1,mlx5_2,mlx5_3",
        ]
    ),
)


def test_fuzzed_nvidia_smi_imports():
    """`topology import nvidia-smi` on broken matrices (and odd --name/--nics): a topology
    that validates and synthesizes, or one line; stdin (-) behaves like a file."""
    col = Collector("nvidia-smi imports")

    @fuzz_settings(60)
    @given(case=fz.nvsmi_files(), name=NAMES, nics=NICS, stdin=st.booleans())
    def run(case, name, nics, stdin):
        if col.stopped:
            return
        col.examples += 1
        label, text = case
        root, work, outd = _dirs()
        try:
            src = work / "topo.txt"
            src.write_text(text, encoding="utf-8", errors="surrogateescape")
            col.current_input = src.read_bytes()
            out_yaml = outd / "t.yaml"
            args = ["topology", "import", "nvidia-smi", "-" if stdin else src, "-o", out_yaml]
            args += ["--name", name] if name is not None else []
            args += ["--nics", nics] if nics is not None else []
            label += f" name={name!r} nics={nics!r}{' stdin' if stdin else ''}"
            before = snapshot(work, outd)
            out = invoke(args, work, stats=col, stdin=src.read_bytes() if stdin else None)
            found = problems(out)
            after = snapshot(work, outd)
            found += partial_files(before, after, allowed=[out_yaml] if out.code == 0 else [])
            col.check("topology import", label, found, out)
            if out.code != 0 or found:
                return
            v = invoke(["topology", "validate", out_yaml], work, stats=col)
            if v.code != 0:
                col.check(
                    "topology import",
                    label,
                    [
                        f"wrote a topology validate rejects: "
                        f"{(stderr_lines(v.stderr) or [''])[0][:160]}"
                    ],
                    v,
                )
                return
            doc = yaml.safe_load(out_yaml.read_text())
            if name is not None and name.strip() and doc.get("name") != name:
                col.check(
                    "topology import",
                    label,
                    [f"--name {name!r} came out as {doc.get('name')!r}"],
                    v,
                )
            x = outd / "x.xml"
            y = invoke(  # up to 300 GPUs: the ring and NCCL's model of it take ~20 s
                ["synthesize", "-m", "ring", "-t", out_yaml, "-c", "allgather", "-o", x],
                work,
                stats=col,
                timeout=4 * CASE_TIMEOUT,
            )
            col.check("synthesize -t imported", label, problems(y), y)
            if y.code == 0:
                verify_plan(x, work, col, "synthesize -t imported", label)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


# -- taccl profile under mpiexec ----------------------------------------------------------------------------------
TWO_GPUS = """name: two
description: two GPUs on one link
gpus_per_node: 2
links:
  - {pairs: [[0, 1]], bandwidth: 25, alpha: 0.7, kind: nvlink}
"""
SMALL_INTS = st.one_of(
    st.sampled_from(["1", "2", "0"]),
    BAD_INTS.filter(lambda t: not (t.strip().isdigit() and int(t) > 4)),
)  # good but large values run for ages
PROFILE_OUTPUTS = (
    "none",
    "new",
    "existing",
    "directory",
    "missing-dir",
    "devfull",
    "link-to-file",
    "trailing-slash",
    "odd-name",
    "fifo-no-reader",
)


def test_fuzzed_profile_runs():
    """`mpiexec -n 2 taccl profile` with fuzzed --sizes/--iters/--warmup/--gpus-per-node, odd
    -o paths and a fuzzed --update topology: a topology that validates, or one line."""
    col = Collector("profile")

    @fuzz_settings(10)
    @given(
        values=st.dictionaries(
            st.sampled_from(["--sizes", "--iters", "--warmup", "--gpus-per-node"]),
            st.just(None),
            max_size=2,
        ),
        sizes=SIZE_LISTS,
        ints=st.lists(SMALL_INTS, min_size=3, max_size=3),
        output=st.sampled_from(PROFILE_OUTPUTS),
        update=st.one_of(
            st.none(), fz.yaml_files([("two", TWO_GPUS)], fz.TOPOLOGY_VOCAB, ("links",))
        ),
    )
    def run(values, sizes, ints, output, update):
        if col.stopped:
            return
        col.examples += 1
        root, work, outd = _dirs()
        try:
            args = ["-n", "2", TACCL, "profile", "--iters", "2", "--warmup", "0"]
            picked = dict(zip(["--iters", "--warmup", "--gpus-per-node"], ints))
            picked["--sizes"] = sizes
            for opt in values:
                args += [opt, picked[opt]]
            if "--sizes" not in values:
                args += ["--sizes", "8,4K"]
            out_path = None
            if output != "none":
                out_path, reader = make_output_path(output, outd, ".yaml", None)
                args += ["-o", out_path]
            if update is not None:
                (work / "two.yaml").write_bytes(update[1])
                col.current_input = update[1]
                args += ["--update", work / "two.yaml"]
            label = (
                " ".join(f"{o} {picked[o]!r}" for o in values)
                + f" -o {output}"
                + (f" --update [{update[0]}]" if update else "")
            )
            before = snapshot(work, outd)
            out = mpi_run(args, work, timeout=60)
            col.runs += 1
            after = snapshot(work, outd)
            found = problems(out)
            if out.code == 0:
                written = out_path or (work / "two.yaml" if update else None)
                found += partial_files(before, after, allowed=[written] if written else [])
                if output in MUST_FAIL:
                    found.append(f"exit 0 writing to {output}")
                elif written is not None and Path(written).is_file():
                    v = invoke(["topology", "validate", written], work, stats=col)
                    if v.code != 0:
                        found.append(
                            f"wrote a topology validate rejects: "
                            f"{(stderr_lines(v.stderr) or [''])[0][:160]}"
                        )
            else:
                found += partial_files(before, after)
            col.check("mpiexec -n 2 taccl profile", label, found, out)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


# -- whole command lines ------------------------------------------------------------------------------------------
def _commands(group=taccl_main, prefix=()):
    """(command path, click command) for every leaf command."""
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


COMMANDS = dict(_commands())
#: commands whose good arguments may legitimately run for minutes
SLOW = {("pareto",), ("profile",), ("run",)}
ARGV_VALUES = (
    "dgx1",
    "ndv2",
    "dgx2",
    "allgather",
    "allreduce",
    "alltoall",
    "ring",
    "direct",
    "tree",
    "1",
    "2",
    "0",
    "-1",
    "nan",
    "inf",
    "1e400",
    fz.HUGE_DIGITS,
    "",
    "-",
    "--",
    "-h",
    "--help",
    "--version",
    "1K",
    "64M",
    "Simple",
    "LL",
    "x",
    "PLAN",
    "TOPO",
    "OUT/o.xml",
    "OUT/o.png",
    "OUT/",
    "/dev/null",
    "--bogus",
    "-Z",
)


@st.composite
def command_lines(draw):
    path = draw(st.sampled_from(sorted(p for p in COMMANDS if p not in SLOW)))
    cmd = COMMANDS[path]
    opts = [
        o
        for prm in cmd.params
        if isinstance(prm, click.Option)
        for o in prm.opts + list(prm.secondary_opts)
    ]
    choices = [
        c
        for prm in cmd.params
        if isinstance(prm.type, click.Choice)
        for c in prm.type.choices
        if c not in ("milp", "smt")
    ]
    pool = st.one_of(
        st.sampled_from(sorted(opts) or ["--help"]),
        st.sampled_from(ARGV_VALUES + tuple(choices)),
        st.text(max_size=4).filter(lambda t: "\x00" not in t),
    )  # argv has no NUL
    tokens = draw(st.lists(pool, max_size=6))
    if ("-m", "milp") in zip(tokens, tokens[1:]) or "smt" in tokens:
        tokens = [t for t in tokens if t not in ("milp", "smt")]
    return list(path), tokens


def test_fuzzed_command_lines():
    """Random command lines built from each command's own options, good and bad values,
    unknown options, missing values, -h and --: help on stdout, or a result, or one line."""
    col = Collector("command lines")

    @fuzz_settings(100)
    @given(case=command_lines())
    def run(case):
        if col.stopped:
            return
        col.examples += 1
        path, tokens = case
        root, work, outd = _dirs()
        try:
            (work / "plan.xml").write_text(plan_bases()[0][1])
            (work / "topo.yaml").write_text((REPO / "topologies" / "dgx1.yaml").read_text())
            subst = {"PLAN": str(work / "plan.xml"), "TOPO": str(work / "topo.yaml")}
            args = path + [subst.get(t, t.replace("OUT/", f"{outd}/")) for t in tokens]
            before = snapshot(work, outd)
            out = invoke(args, work, stats=col)
            validate = path == ["topology", "validate"]  # exit 1 and a line per bad file
            found = problems(out, err_codes=(1, 2) if validate else (2,), many_lines=validate)
            if out.code != 0:
                found += partial_files(before, snapshot(work, outd))
            elif {"-h", "--help"} & set(args) and "Usage:" not in out.stdout:
                found.append("help asked, no usage on stdout")
            col.check(" ".join(path), " ".join(repr(t) for t in tokens), found, out)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    run()
    col.finish()


# -- the issue's examples, one by one ------------------------------------------------------------------------
def _plan_text(cnt0=False, ngpus=None) -> str:
    text = plan_bases()[0][1]
    if cnt0:
        text = text.replace('cnt="1"', 'cnt="0"', 1)
    if ngpus:
        text = re.sub(r'ngpus="\d+"', f'ngpus="{ngpus}"', text, count=1)
    return text


def _two_error_topology() -> str:
    doc = yaml.safe_load((REPO / "topologies" / "dgx1.yaml").read_text())
    doc["links"][0]["bandwidth"] = -5
    doc["nics"][0]["alpha"] = "fast"
    doc["network"] = "mesh"
    return yaml.safe_dump(doc, sort_keys=False)


def _two_error_sketch() -> str:
    doc = yaml.safe_load(sketch_bases()[0][1])
    doc["own_data_first"] = "maybe"
    doc["chunkup"] = [0, -1]
    doc["size"] = "nan"
    return yaml.safe_dump(doc, sort_keys=False)


#: (id, files to create {name: text}, args, expected exit, extra check name, max seconds)
ISSUE_CASES = [
    (
        "simulate-cnt0",
        {"p.xml": lambda: _plan_text(cnt0=True)},
        ["simulate", "p.xml", "-t", "dgx1"],
        2,
        "as verify",
        10,
    ),
    (
        "plot-cnt0",
        {"p.xml": lambda: _plan_text(cnt0=True)},
        ["plot", "p.xml", "-t", "dgx1", "--timeline", "OUT/t.png"],
        2,
        "as verify",
        10,
    ),
    ("run-cnt0", {"p.xml": lambda: _plan_text(cnt0=True)}, ["run", "p.xml"], 2, "as verify", 10),
    (
        "missing-dir-leaves-no-ir",
        {},
        [
            "synthesize",
            "-m",
            "ring",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "-o",
            "OUT/missing/a.xml",
            "--ir",
            "OUT/ir.json",
        ],
        2,
        None,
        10,
    ),
    (
        "same-o-and-ir",
        {},
        ["synthesize", "-t", "dgx1", "-c", "allgather", "-o", "OUT/x", "--ir", "OUT/x"],
        2,
        None,
        10,
    ),
    (
        "time-limit-nan",
        {},
        [
            "synthesize",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "-m",
            "milp",
            "--time-limit",
            "nan",
            "-o",
            "OUT/x.xml",
        ],
        2,
        "names --time-limit",
        10,
    ),
    (
        "size-1e400-digits",
        {},
        [
            "synthesize",
            "-m",
            "ring",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "--size",
            fz.HUGE_DIGITS,
            "-o",
            "OUT/x.xml",
        ],
        2,
        "names --size",
        10,
    ),
    (
        "verify-ngpus-1e9",
        {"p.xml": lambda: _plan_text(ngpus=1000000000)},
        ["verify", "p.xml"],
        2,
        None,
        5,
    ),
    (
        "simulate-ngpus-1e9",
        {"p.xml": lambda: _plan_text(ngpus=1000000000)},
        ["simulate", "p.xml", "-t", "dgx1"],
        2,
        None,
        5,
    ),
    ("verify-dev-zero", {}, ["verify", "/dev/zero"], 2, None, 5),
    (
        "topology-anchor-bomb",
        {
            "t.yaml": lambda: fz.yaml_bomb_in(
                (REPO / "topologies" / "dgx1.yaml").read_text(), "links"
            )
        },
        ["topology", "validate", "t.yaml"],
        1,
        None,
        2,
    ),
    (
        "sketch-anchor-bomb",
        {"s.yaml": lambda: fz.yaml_bomb_in(sketch_bases()[0][1], "chunkup")},
        ["sketch", "validate", "s.yaml", "-t", "ndv2", "-n", "2"],
        2,
        None,
        2,
    ),
    (
        "nodes-100000",
        {},
        [
            "synthesize",
            "-m",
            "ring",
            "-t",
            "dgx1",
            "-n",
            "100000",
            "-c",
            "allgather",
            "-o",
            "OUT/x.xml",
        ],
        2,
        None,
        5,
    ),
    (
        "chunkup-100000",
        {},
        [
            "synthesize",
            "-m",
            "ring",
            "-t",
            "dgx1",
            "--chunkup",
            "100000",
            "-c",
            "allgather",
            "-o",
            "OUT/x.xml",
        ],
        2,
        None,
        5,
    ),
    ("topology-show-nodes-100000", {}, ["topology", "show", "dgx1", "-n", "100000"], 2, None, 5),
    (
        "topology-validate-all-errors",
        {"t.yaml": _two_error_topology},
        ["topology", "validate", "t.yaml"],
        1,
        "3 lines",
        5,
    ),
    (
        "sketch-validate-all-errors",
        {"s.yaml": _two_error_sketch},
        ["sketch", "validate", "s.yaml", "-t", "ndv2", "-n", "2"],
        2,
        "3 lines",
        5,
    ),
    ("topology-validate-fifo", {"FIFO": None}, ["topology", "validate", "fifo"], 1, None, 5),
    ("verify-directory", {}, ["verify", "."], 2, None, 5),
    (
        "import-tiny-pcie-bw",
        {},
        ["topology", "import", "nvidia-smi", str(NVSMI), "--pcie-bw", "1e-9"],
        2,
        "names --pcie-bw",
        5,
    ),
    # (click drops ANSI sequences itself when stderr is no terminal; a bell or SI is kept)
    (
        "usage-error-escapes-control-chars",
        {},
        ["topology", "show", "dgx1", "x\x07y\x0fz"],
        2,
        None,
        5,
    ),
    (
        "bad-value-escapes-control-chars",
        {},
        ["synthesize", "-m", "ring", "-t", "dgx1", "-c", "allgather", "--nodes", "2\x07\x14"],
        2,
        None,
        5,
    ),
    (
        "simulate-json-is-json",
        {"p.xml": lambda: dict(plan_bases())["ndv2x2-allreduce-ring"]},
        ["simulate", "p.xml", "-t", "ndv2", "-n", "2", "--json"],
        0,
        "json",
        15,
    ),
]


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_full_disk_is_one_line(command, tmp_path):
    """Every writer on a full disk (files may not grow past 256 bytes, temporary files
    included): one line, exit 2, nothing left behind."""
    args, exts = WRITERS[command]
    work, outd = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    outd.mkdir()
    (work / "plan.xml").write_text(plan_bases()[0][1])
    full = [
        a.replace("{P}", str(outd / f"a{exts[0]}")).replace("{Q}", str(outd / f"b{exts[-1]}"))
        if a != "PLAN"
        else str(work / "plan.xml")
        for a in args
    ]
    before = snapshot(work, outd)
    out = invoke(full, work, fsize=256)
    found = problems(out) + partial_files(before, snapshot(work, outd))
    if out.code != 2:
        found.append(f"exit {out.code}, expected 2")
    assert not found, f"{found}\n{out.show()}"


@pytest.mark.parametrize("sizes", ["8,1T", "8,8E", "8," + str(2**40)])
def test_profile_refuses_buffers_beyond_memory(sizes, tmp_path):
    """`mpiexec -n 2 taccl profile --sizes 8,1T`: one line (as `taccl run --size` gives), not
    an allocation traceback (each process may map at most 4 GiB here)."""
    out = mpi_run(
        ["-n", "2", TACCL, "profile", "--sizes", sizes, "--iters", "1", "-o", "p.yaml"],
        tmp_path,
        timeout=60,
    )
    found = problems(out) + ([] if out.code == 2 else [f"exit {out.code}, expected 2"])
    assert not found and not list(tmp_path.iterdir()), f"{found}\n{out.show()}"


@pytest.mark.parametrize("case", ISSUE_CASES, ids=[c[0] for c in ISSUE_CASES])
def test_issue_examples(case):
    """The inputs issue 16 lists, each on its own: the exit status, one line, no leftovers,
    and within the time the issue allows."""
    name, files, args, expect, extra, max_s = case
    root, work, outd = _dirs()
    try:
        for fname, make in files.items():
            if make is None:
                os.mkfifo(work / fname.lower())
            else:
                (work / fname).write_text(make())
        full = [a.replace("OUT/", f"{outd}/") for a in args]
        before = snapshot(work, outd)
        out = invoke(full, work)
        found = problems(
            out, err_codes=(expect,) if expect else (2,), many_lines=extra == "3 lines"
        )
        found += partial_files(before, snapshot(work, outd))
        if out.code != expect:
            found.append(f"expected exit {expect}, got {out.code}")
        if out.seconds > max_s:
            found.append(f"took {out.seconds:.1f} s (at most {max_s} s)")
        lines = stderr_lines(out.stderr)
        if extra and extra.startswith("names "):
            opt = extra.split()[1]
            if not lines or opt not in lines[0]:
                found.append(f"the error does not name {opt}: {lines}")
        if extra == "3 lines" and len(lines) < 3:
            found.append(f"{len(lines)} error line(s) for a file with 3 errors: {lines}")
        if extra == "as verify":
            ver = invoke(["verify", "p.xml"], work)
            if stderr_lines(ver.stderr) != lines:
                found.append(f"not the verifier's reason {stderr_lines(ver.stderr)}: {lines}")
        if extra == "json":
            try:
                json.loads(out.stdout)
            except ValueError:
                found.append(f"stdout is not JSON: {out.stdout[:120]!r}")
        assert not found, f"{found}\n{out.show()}"
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- subprocesses: signals, deadlines, the real stdout -------------------------------------------------------
def _wait_for(proc: subprocess.Popen, err: list[bytes], pattern: bytes, seconds: float) -> bool:
    """Read proc's stderr into ``err`` until ``pattern`` shows (True) or time runs out."""
    end = time.monotonic() + seconds
    os.set_blocking(proc.stderr.fileno(), False)
    while time.monotonic() < end and proc.poll() is None:
        r, _, _ = select.select([proc.stderr], [], [], 0.1)
        if r:
            chunk = proc.stderr.read() or b""
            err.append(chunk)
            if pattern in b"".join(err):
                return True
    return False


INTERRUPTS = [
    (
        "milp-sigint",
        [
            "synthesize",
            "-t",
            "dgx1",
            "-n",
            "2",
            "-c",
            "allgather",
            "-m",
            "milp",
            "--time-limit",
            "60",
        ],
        signal.SIGINT,
        b"routing (chunk-up 1)",
    ),
    (
        "milp-sigterm",
        [
            "synthesize",
            "-t",
            "dgx1",
            "-n",
            "2",
            "-c",
            "allgather",
            "-m",
            "milp",
            "--time-limit",
            "60",
        ],
        signal.SIGTERM,
        b"routing (chunk-up 1)",
    ),
    (
        "smt-sigint",
        ["synthesize", "-t", "dgx1", "-c", "allgather", "-m", "smt", "--time-limit", "60"],
        signal.SIGINT,
        None,
    ),
    (
        "pareto-sigterm",
        ["pareto", "-t", "dgx1", "-c", "allgather", "--time-limit", "60"],
        signal.SIGTERM,
        None,
    ),
]


@pytest.mark.parametrize("case", INTERRUPTS, ids=[c[0] for c in INTERRUPTS])
def test_interrupt_during_solve(case, tmp_path):
    """Ctrl-C or SIGTERM mid-solve: exit 130 within 2 s, no traceback, no files."""
    name, args, sig, marker = case
    args = (
        args + ["-o", str(tmp_path / "x.xml"), "--ir", str(tmp_path / "x.json")]
        if args[0] == "synthesize"
        else args
    )
    proc = subprocess.Popen(
        [str(TACCL), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    err: list[bytes] = []
    try:
        if marker is not None:
            assert _wait_for(proc, err, marker, 30), f"no {marker!r} in {b''.join(err)[-500:]!r}"
        else:
            _wait_for(proc, err, b"\x00never", 2.0)
        time.sleep(0.5)
        assert proc.poll() is None, f"finished before the signal: {b''.join(err)[-300:]!r}"
        sent = time.monotonic()
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"{sig.name} ignored for 10 s")
        took = time.monotonic() - sent
        os.set_blocking(proc.stderr.fileno(), True)
        err.append(proc.stderr.read())
        stderr = b"".join(err).decode(errors="replace")
        left = sorted(p.name for p in tmp_path.iterdir())
        problems_ = []
        if proc.returncode != 130:
            problems_.append(f"exit {proc.returncode}, expected 130")
        if took > 2.0:
            problems_.append(f"took {took:.1f} s to stop")
        if "Traceback" in stderr:
            problems_.append("traceback")
        if left:
            problems_.append(f"left {left}")
        lines = stderr_lines(stderr)
        if len(lines) != 1:
            problems_.append(f"{len(lines)} lines on stderr besides progress: {lines[:3]}")
        assert not problems_, f"{problems_}; stderr {stderr[-500:]!r}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


DEADLINES = [
    (
        "smt",
        [
            "synthesize",
            "-t",
            "dgx1",
            "-c",
            "allgather",
            "-m",
            "smt",
            "--time-limit",
            "3",
            "-o",
            "x.xml",
        ],
        3,
    ),
    ("pareto", ["pareto", "-t", "dgx1", "-c", "allgather", "--time-limit", "2"], 2),
]


@pytest.mark.parametrize("case", DEADLINES, ids=[c[0] for c in DEADLINES])
def test_time_limit_bounds_the_command(case, tmp_path):
    """--time-limit bounds the whole smt/pareto command: a verified result (with a note) or
    one line, within the limit plus start-up and lowering slack."""
    name, args, limit = case
    out = shell(args, tmp_path, timeout=limit + 60)
    found = problems(out)
    if out.seconds > limit + 5:
        found.append(f"ran {out.seconds:.1f} s with --time-limit {limit}")
    if out.code == 0 and name == "smt":
        v = shell(["verify", "x.xml"], tmp_path)
        if v.code != 0:
            found.append(f"wrote a plan verify rejects: {v.stderr[:200]}")
    assert not found, f"{found}\n{out.show()}"


def test_milp_stdout_is_only_the_report(tmp_path):
    """A milp run (HiGHS in-process): a verified plan; no solver banner on stdout or stderr."""
    out = shell(
        [
            "synthesize",
            "-t",
            "ndv2",
            "-n",
            "2",
            "-c",
            "allgather",
            "-m",
            "milp",
            "--time-limit",
            "3",
            "-o",
            "x.xml",
        ],
        tmp_path,
        timeout=120,
    )
    found = problems(out)
    for stream in (out.stdout, out.stderr):
        if "HiGHS" in stream or "Running" in stream:
            found.append(f"solver banner in output: {stream[:120]!r}")
    if out.code == 0:
        v = shell(["verify", "x.xml"], tmp_path)
        if v.code != 0:
            found.append(f"wrote a plan verify rejects: {v.stderr[:200]}")
    assert not found, f"{found}\n{out.show()}"


def test_real_stdout_and_fifo_outputs(tmp_path):
    """Through the real executable: -o /dev/stdout's equivalent (a link to
    /proc/self/fd/1) and a FIFO with a reader are written into, and stay what they were."""
    os.symlink("/proc/self/fd/1", tmp_path / "stdout")
    out = shell(
        ["synthesize", "-m", "ring", "-t", "dgx1", "-c", "allgather", "-o", "stdout"], tmp_path
    )
    found = problems(out)
    if out.code == 0 and "<algo" not in out.stdout:
        found.append("the plan did not reach stdout")
    if not (tmp_path / "stdout").is_symlink():
        found.append("the link to stdout was replaced")
    os.mkfifo(tmp_path / "fifo")
    reader = _FifoReader(tmp_path / "fifo")
    out2 = shell(["sketch", "init", "-t", "ndv2", "-n", "2", "-o", "fifo"], tmp_path)
    data = reader.close()
    found += problems(out2)
    if out2.code == 0 and b"inter_node" not in data:
        found.append(f"the sketch did not reach the FIFO ({len(data)} bytes)")
    if not stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode):
        found.append("the FIFO was replaced")
    assert not found, f"{found}\n{out.show()}\n{out2.show()}"


def test_harness_matches_the_real_executable(tmp_path):
    """The forked runner sees what the real `taccl` prints, for a success and an error."""
    for args in (
        ["verify", str(REPO / "tests" / "fixtures" / "external" / "ring_allgather_8.xml")],
        ["topology", "show", "nonexistent-topology"],
    ):
        a, b = invoke(args, tmp_path), shell(args, tmp_path)
        assert (a.code, a.stdout, a.stderr) == (b.code, b.stdout, b.stderr), (a.show(), b.show())


#: seconds after the first progress line of a short milp run (about 4 s in all) to send Ctrl-C
INTERRUPT_DELAYS = [0.1 + 0.45 * i for i in range(10)] if LONG else [0.2, 1.5, 3.0]


@pytest.mark.parametrize("delay", INTERRUPT_DELAYS)
def test_interrupt_anywhere_in_the_pipeline(delay, tmp_path):
    """Ctrl-C at any point of routing, ordering, scheduling, lowering, verifying or writing:
    exit 130 within 2 s, one line, no files; or, if the run had finished, exit 0 with a plan
    and IR that verify."""
    args = [
        "synthesize",
        "-t",
        "ndv2",
        "-n",
        "2",
        "-c",
        "allgather",
        "-m",
        "milp",
        "--time-limit",
        "10",
        "-o",
        "x.xml",
        "--ir",
        "x.json",
    ]
    proc = subprocess.Popen(
        [str(TACCL), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    err: list[bytes] = []
    try:
        assert _wait_for(proc, err, b"s]", 60), f"no progress: {b''.join(err)[-300:]!r}"
        _wait_for(proc, err, b"\x00never", delay)
        sent = time.monotonic()
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            stdout, rest = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail("Ctrl-C ignored for 10 s")
        took = time.monotonic() - sent
        stderr = (b"".join(err) + rest).decode(errors="replace")
        left = sorted(p.name for p in tmp_path.iterdir())
        found = []
        if "Traceback" in stderr:
            found.append("traceback")
        if proc.returncode == 130:
            if took > 2.0:
                found.append(f"took {took:.1f} s to stop")
            if left:
                found.append(f"left {left}")
            if len(stderr_lines(stderr)) != 1:
                found.append(f"stderr besides progress: {stderr_lines(stderr)[:3]}")
        elif proc.returncode == 0:
            if left != ["x.json", "x.xml"]:
                found.append(f"exit 0 but files {left}")
            elif shell(["verify", "x.xml"], tmp_path).code != 0:
                found.append("exit 0 with a plan verify rejects")
        else:
            found.append(f"exit {proc.returncode}")
        assert not found, f"{found}; stderr {stderr[-600:]!r}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    """Two runs writing the same -o at once: both succeed and the file is one whole plan."""
    procs = [
        subprocess.Popen(
            [str(TACCL), "synthesize", "-m", "ring", "-t", "dgx1", "-c", coll, "-o", "same.xml"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for coll in ("allgather", "allreduce", "reducescatter")
    ]
    errs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.xml"]
    out = shell(["verify", "same.xml"], tmp_path)
    assert out.code == 0, out.show()

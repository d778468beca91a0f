"""Outputs are all or nothing; streams are written into; numbers and plans are checked first."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from taccl_py.cli import main
from taccl_py.errors import TacclError
from taccl_py.plan.xml import parse_plan
from taccl_py.util.fileio import check_outputs, write_outputs
from taccl_py.util.units import MAX_SIZE, parse_size

TACCL = Path(sys.executable).with_name("taccl")
SYNTH = ["synthesize", "-m", "ring", "-t", "dgx1", "-c", "allgather"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def one_line_error(result, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taccl: error:"), lines
    assert needle in lines[0], lines[0]


def shell(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(TACCL), *args], capture_output=True, text=True, timeout=120, **kw)


# -- fileio ------------------------------------------------------------------------------
def test_symlink_target_is_updated_not_the_link(tmp_path):
    (tmp_path / "link.xml").symlink_to("real.xml")
    write_outputs([(tmp_path / "link.xml", "new")])
    assert (tmp_path / "link.xml").is_symlink()
    assert (tmp_path / "real.xml").read_text() == "new"


def test_existing_file_keeps_its_mode(tmp_path):
    f = tmp_path / "a.xml"
    f.write_text("old")
    f.chmod(0o640)
    write_outputs([(f, "new")])
    assert f.read_text() == "new" and stat.S_IMODE(f.stat().st_mode) == 0o640


def test_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_outputs([(tmp_path / "a.xml", "x")])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.xml").stat().st_mode) == 0o640


def test_the_same_file_twice_is_an_error(tmp_path):
    (tmp_path / "l").symlink_to("a")
    for second in (tmp_path / "a", tmp_path / "." / "a", tmp_path / "l"):
        with pytest.raises(TacclError, match="same file"):
            check_outputs([tmp_path / "a", second])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l"]


def test_a_failing_output_leaves_none(tmp_path):
    (tmp_path / "keep.xml").write_text("old")
    with pytest.raises(TacclError, match="does not exist"):
        write_outputs([(tmp_path / "keep.xml", "new"), (tmp_path / "no" / "b.json", "{}")])
    assert [p.name for p in tmp_path.iterdir()] == ["keep.xml"]
    assert (tmp_path / "keep.xml").read_text() == "old"


def test_a_failing_stream_leaves_no_file(tmp_path):
    with pytest.raises(TacclError, match="No space left"):
        write_outputs([(tmp_path / "a.xml", "x"), ("/dev/full", "y")])
    assert list(tmp_path.iterdir()) == []


def test_failed_staging_cleans_up(tmp_path, monkeypatch):
    real = os.fdopen
    calls = []

    def flaky(fd, *a, **kw):
        calls.append(fd)
        if len(calls) == 2:
            os.close(fd)
            raise OSError(28, "No space left on device")
        return real(fd, *a, **kw)

    monkeypatch.setattr(os, "fdopen", flaky)
    with pytest.raises(TacclError, match="No space left"):
        write_outputs([(tmp_path / "a.xml", "x"), (tmp_path / "b.json", "y")])
    assert list(tmp_path.iterdir()) == []


def test_character_device_is_written_into():
    assert write_outputs([("/dev/null", "x" * 100)]) == [Path("/dev/null")]
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_fifo_is_written_into_and_one_without_reader_is_an_error(tmp_path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    with pytest.raises(TacclError, match="no process is reading"):
        write_outputs([(fifo, "x")])
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()))
    reader.start()
    for _ in range(200):  # the reader has the FIFO open once writing succeeds
        try:
            write_outputs([(fifo, "hello")])
            break
        except TacclError:
            threading.Event().wait(0.01)
    reader.join(5)
    assert got == ["hello"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_directory_and_missing_device_are_errors(tmp_path):
    with pytest.raises(TacclError, match="is a directory"):
        check_outputs([tmp_path])
    with pytest.raises(TacclError, match="no such device"):
        check_outputs(["/dev/no-such-device"])


# -- the CLI's outputs ---------------------------------------------------------------------
def test_dev_stdout_is_written_into_in_order(tmp_path):
    out = tmp_path / "out.txt"
    with open(out, "w") as fh:
        r = subprocess.run(
            [str(TACCL), *SYNTH, "-o", "/dev/stdout"],
            stdout=fh,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.startswith("<algo ") and "</algo>\n" in text  # the plan, then the summary
    assert "wrote /dev/stdout" in text.split("</algo>\n", 1)[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_dev_stdout_through_a_pipe():
    r = shell(*SYNTH, "-o", "/dev/stdout")
    assert r.returncode == 0 and r.stdout.startswith("<algo ")


def test_same_path_for_plan_and_ir_is_refused_before_synthesis(tmp_path):
    one_line_error(run(*SYNTH, "-o", str(tmp_path / "x"), "--ir", str(tmp_path / "x")), "same file")
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_leaves_no_ir(tmp_path):
    r = run(*SYNTH, "-o", str(tmp_path / "missing" / "a.xml"), "--ir", str(tmp_path / "ir"))
    one_line_error(r, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_plot_outputs_are_all_or_nothing(tmp_path):
    plan = tmp_path / "p.xml"
    assert run(*SYNTH, "-o", str(plan)).exit_code == 0
    r = run(
        "plot",
        str(plan),
        "-t",
        "dgx1",
        "--algbw",
        str(tmp_path / "a.png"),
        "--timeline",
        str(tmp_path / "no" / "t.png"),
    )
    one_line_error(r, "does not exist")
    assert [p.name for p in tmp_path.iterdir()] == ["p.xml"]
    r = run(
        "plot",
        str(plan),
        "-t",
        "dgx1",
        "--algbw",
        str(tmp_path / "a.png"),
        "--timeline",
        str(tmp_path / "a.png"),
    )
    one_line_error(r, "same file")


# -- numbers and limits --------------------------------------------------------------------
@pytest.mark.parametrize(
    "option,value,needle",
    [
        ("--time-limit", "nan", "--time-limit"),
        ("--time-limit", "inf", "--time-limit"),
        ("--time-limit", "-inf", "--time-limit"),
        ("--time-limit", "1e400", "--time-limit"),
        ("--size", "1" + "0" * 400, "2^63"),
        ("--size", "9223372036854775808", "2^63"),
        ("--size", "8E", "--size"),
        ("--nodes", "100000", "--nodes"),
        ("--chunkup", "100000", "--chunkup"),
        ("--instances", "0", "--instances"),
        ("--max-bytes", "nan", "--max-bytes"),
        ("--steps", "99999999999999999999", "--steps"),
    ],
)
def test_bad_numbers_are_one_line(option, value, needle):
    one_line_error(run(*SYNTH, option, value), needle)


def test_too_many_ranks_for_a_file_topology(tmp_path):
    one_line_error(run("topology", "show", "dgx2", "--nodes", "65"), "ranks")


def test_import_bandwidths_must_be_finite(tmp_path):
    for value in ("nan", "inf", "-1", "1e300"):
        one_line_error(run("topology", "import", "nvidia-smi", "-", "--nic-bw", value), "--nic-bw")


@given(st.integers(1, MAX_SIZE))
def test_parse_size_round_trips_every_valid_byte_count(n):
    assert parse_size(str(n)) == n


@given(st.text(max_size=60))
def test_parse_size_returns_a_valid_size_or_a_taccl_error(text):
    try:
        n = parse_size(text)
    except TacclError as exc:
        assert "\n" not in str(exc)
    else:
        assert 1 <= n <= MAX_SIZE


# -- plans are verified before use ---------------------------------------------------------
@pytest.fixture(scope="module")
def broken_plan(tmp_path_factory) -> Path:
    """A well-formed AllGather plan that moves one chunk to the wrong place."""
    d = tmp_path_factory.mktemp("plans")
    assert run(*SYNTH, "-o", str(d / "ok.xml")).exit_code == 0
    text = (d / "ok.xml").read_text()
    i = text.index('type="r"')
    j = text.index('dstoff="', i) + len('dstoff="')
    k = text.index('"', j)
    bad = text[:j] + str((int(text[j:k]) + 1) % 8) + text[k:]
    (d / "bad.xml").write_text(bad)
    parse_plan(d / "bad.xml")  # it parses: only the verifier can refuse it
    return d / "bad.xml"


@pytest.mark.parametrize(
    "args",
    [
        ["simulate", "{plan}", "-t", "dgx1"],
        ["simulate", "{plan}", "-t", "dgx1", "--json"],
        ["plot", "{plan}", "-t", "dgx1", "--algbw", "{dir}/a.png"],
    ],
)
def test_simulate_and_plot_refuse_a_plan_verify_rejects(broken_plan, args, tmp_path):
    r = run(*[a.format(plan=broken_plan, dir=tmp_path) for a in args])
    verify = run("verify", str(broken_plan))
    assert verify.exit_code == 2
    one_line_error(r, verify.stderr.strip().split("taccl: error: ", 1)[1])
    assert r.stdout == "" and list(tmp_path.iterdir()) == []


def test_run_refuses_a_plan_verify_rejects(broken_plan):
    r = shell("run", str(broken_plan))  # one process: the verifier speaks before the count
    assert r.returncode == 2 and r.stderr == run("verify", str(broken_plan)).stderr


def test_trailing_slash_names_a_directory(tmp_path):
    (tmp_path / "out").mkdir()
    one_line_error(run(*SYNTH, "-o", f"{tmp_path}/out/x.xml/"), "names a directory")
    assert list((tmp_path / "out").iterdir()) == []


def test_undecodable_file_name_is_shown_escaped(tmp_path):
    name = os.fsdecode(b"\xff.xml")
    strict = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    r = shell(*SYNTH, "-o", name, cwd=tmp_path, env=strict)
    assert r.returncode == 0, r.stderr
    assert "wrote \\udcff.xml" in r.stdout and (tmp_path / name).is_file()


def test_usage_error_under_mpiexec_is_said_once(tmp_path):
    mpiexec = Path(sys.executable).with_name("mpiexec")
    r = subprocess.run(
        [str(mpiexec), "-n", "3", str(TACCL), "run", "p.xml", "--iters", "nan"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "taccl: error: Invalid value for '--iters': 'nan' is not a valid integer range. "
        "(see 'taccl run -h')"
    ]

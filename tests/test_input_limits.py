"""Input files under hostile input: special files, oversize files, YAML alias bombs, extreme
numbers and sizes, every problem listed at once (issue 16, items 4, 5 and 9).

Each bad input gives one line (a TacclError subclass) naming the file, and the field or
limit, and never waits on a FIFO or reads a device or an oversize file whole.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.cli import main
from taccl_py.errors import PlanError, SketchError, TacclError, TopologyError
from taccl_py.plan import xml as plan_xml
from taccl_py.plan.verify import verify
from taccl_py.plan.xml import MAX_CHUNKS, MAX_GPUS, MAX_TOTAL_CHUNKS, parse_plan, plan_to_xml
from taccl_py.synth.milp.sketch import MAX_ROTATIONS, load_sketch, parse_sketch
from taccl_py.topology import loader
from taccl_py.topology.loader import MAX_FILE_BYTES, MAX_YAML_NODES, load_topology, validate_file
from taccl_py.topology.profile import _prepare
from taccl_py.topology.schema import MAX_LISTED
from taccl_py.util import fileio
from taccl_py.util.fileio import read_input
from taccl_py.util.units import MAX_SIZE

from .test_xml import two_rank_allgather

REPO = Path(__file__).resolve().parents[1]
SMALL = "gpus_per_node: 2\nlinks: [{pairs: [[0, 1]], bandwidth: 25, alpha: 0.7}]\n"
#: the largest valid attribute values of a plan, and one past them
NUMBER_TOKENS = (
    ".nan",
    ".NaN",
    "-.nan",
    ".inf",
    "-.inf",
    "+.inf",
    "1e400",
    "-1e400",
    "true",
    "false",
    "1" + "0" * 400,
    "1" + "0" * 5000,
    "-1",
    "0",
    str(2**63),
    "~",
    "0x7fffffff",
    "0o17",
    "1_000",
    "1:20:30",
    "'3'",
    "2.5",
)


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def within(seconds: float, fn, *args):
    """``fn(*args)``'s result or exception, failing the test if it takes longer."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            out["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"{fn.__name__} still running after {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"], time.monotonic() - start


# -- reading input files --------------------------------------------------------------------
@pytest.fixture
def specials(tmp_path):
    """A FIFO, a socket and a directory, each with the kind read_input reports."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.yaml"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    (tmp_path / "dir.yaml").mkdir()
    yield [
        (fifo, "a FIFO"),
        (sock_path, "a socket"),
        (tmp_path / "dir.yaml", "a directory"),
        (Path("/dev/zero"), "a character device"),
        (Path("/dev/urandom"), "a character device"),
        (Path("/dev/null"), "a character device"),
    ]
    sock.close()


def test_read_input_refuses_special_files_without_waiting(specials):
    for path, kind in specials:
        with pytest.raises(TacclError) as exc:
            within(5, read_input, path, 100, "test file")
        assert str(exc.value) == f"{path}: is {kind}, not a test file"


def test_read_input_limit_and_errors(tmp_path):
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * 100)
    assert read_input(exact, 100, "test file") == b"x" * 100
    over = tmp_path / "over"
    over.write_bytes(b"x" * 101)
    with pytest.raises(TacclError) as exc:
        read_input(over, 100, "test file")
    assert str(exc.value) == f"{over}: too large for a test file: 101 bytes, the limit is 100"
    with pytest.raises(TacclError, match="nope: cannot read: no such file"):
        read_input(tmp_path / "nope", 100, "test file")
    with pytest.raises(TacclError, match="cannot read: Not a directory"):
        read_input(exact / "below", 100, "test file")
    with pytest.raises(TacclError, match="cannot read: embedded null byte"):
        read_input("a\0b", 100, "test file")


class _ReadSpy:
    """A file object that records the sizes asked of ``read``."""

    def __init__(self, fh, asked: list) -> None:
        self.fh, self.asked = fh, asked

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def fileno(self) -> int:
        return self.fh.fileno()

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        return self.fh.read(size)


def test_read_input_never_reads_more_than_limit_plus_one(tmp_path, monkeypatch):
    asked: list[int] = []
    monkeypatch.setattr(fileio, "open", lambda *a: _ReadSpy(open(*a), asked), raising=False)
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 30)
    with pytest.raises(TacclError, match=f"{1 << 30} bytes, the limit is 100"):
        read_input(sparse, 100, "test file")
    assert asked == []  # refused by its size, never read
    # /proc files report size 0: the limit is found by reading limit + 1 bytes
    with pytest.raises(TacclError, match="over the limit of 10 bytes"):
        read_input("/proc/self/status", 10, "test file")
    assert asked == [11]


@pytest.mark.parametrize(
    "read, error",
    [
        (lambda p: load_topology(str(p)), TopologyError),
        (validate_file, TopologyError),
        (lambda p: load_sketch(p, load_topology("dgx1")), SketchError),
        (parse_plan, PlanError),
        (lambda p: _prepare(["h"] * 2, 2, [1, 2], None, p), TopologyError),
    ],
    ids=["load_topology", "validate_file", "load_sketch", "parse_plan", "profile_update"],
)
def test_every_reader_refuses_special_files(specials, read, error):
    for path, kind in specials:
        with pytest.raises(error) as exc:
            within(5, read, path)
        one_line(exc, f"{path}: is {kind}, not a ")


@pytest.mark.parametrize("path, kind", [("/dev/zero", "a character device"), (".", "a directory")])
def test_topology_import_refuses_special_files(path, kind):
    res = CliRunner().invoke(main, ["topology", "import", "nvidia-smi", path])
    assert res.exit_code == 2
    assert res.output.strip() == (
        f"taccl: error: {path}: is {kind}, not a topology matrix (nvidia-smi topo -m)"
    )


def test_topology_import_reads_at_most_limit_of_stdin():
    from taccl_py.topology.nvsmi import MAX_INPUT_BYTES

    res = CliRunner().invoke(
        main, ["topology", "import", "nvidia-smi", "-"], input=b"GPU0 " * (MAX_INPUT_BYTES // 4)
    )
    assert res.exit_code == 2
    assert (
        f"<stdin>: too large for a topology matrix (nvidia-smi topo -m): over the limit "
        f"of {MAX_INPUT_BYTES} bytes" in res.output
    )


def test_oversize_files_are_refused(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    big.write_text(SMALL + "#" * MAX_FILE_BYTES)
    with pytest.raises(TopologyError) as exc:
        validate_file(big)
    one_line(exc, f"{big}: too large for a topology file", f"the limit is {MAX_FILE_BYTES}")
    with pytest.raises(SketchError) as exc:
        load_sketch(big, load_topology("dgx1"))
    one_line(exc, f"{big}: too large for a sketch file")
    monkeypatch.setattr(plan_xml, "MAX_PLAN_BYTES", 1000)
    plan = tmp_path / "plan.xml"
    plan.write_text(plan_to_xml(two_rank_allgather()))
    with pytest.raises(PlanError) as exc:
        parse_plan(plan)
    one_line(exc, f"{plan}: too large for a plan file", "the limit is 1000")
    with pytest.raises(PlanError, match="too large for a plan: .* the limit is 1000"):
        parse_plan(plan.read_text())


# -- YAML alias bombs -----------------------------------------------------------------------
def laughs(levels: int = 9, width: int = 9, field: str = "network") -> str:
    """A ~400-byte billion-laughs bomb in ``field`` of a topology (width**levels leaves)."""
    anchors = [f"&a0 [{', '.join(['lol'] * width)}]"]
    anchors += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return f"gpus_per_node: 2\n{field}: [{', '.join(anchors)}]\n"


def merge_bomb(levels: int = 8) -> str:
    """Nested merge keys: each level merges nine copies of the one below."""
    lines = ["gpus_per_node: 2", "description: &m0 {a: 1, b: 2, c: 3, d: 4}"]
    for i in range(1, levels):
        lines.append(f"x{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}], k{i}: 1}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        laughs(),
        laughs(field="links"),
        laughs(field="description"),
        laughs(6, 30, "measured"),
        merge_bomb(),
        "gpus_per_node: 2\nx: &a [*a, *a]\n" + laughs(field="name")[17:],
    ],
    ids=["network", "links", "description", "wide", "merge", "mixed"],
)
def test_alias_bomb_refused_fast(tmp_path, text):
    assert len(text) < 1500
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as exc:
        within(1, validate_file, path)
    message = one_line(exc, str(path))
    assert (
        f"YAML nodes once aliases are expanded, more than the limit of {MAX_YAML_NODES}" in message
        or "a YAML alias refers to a node that contains it" in message
    )
    with pytest.raises(SketchError, match="aliases are expanded|contains it"):
        within(1, parse_sketch, text.replace("gpus_per_node: 2\n", ""), load_topology("dgx1"))
    res = within(5, CliRunner().invoke, main, ["topology", "validate", str(path)])[0]
    assert res.exit_code == 1 and res.output.count("\n") == 1


@pytest.mark.parametrize(
    "text",
    [
        "gpus_per_node: 2\ndescription: &a [*a]\n",
        "gpus_per_node: 2\nmeasured: &m {date: '1', x: *m}\n",
    ],
)
def test_recursive_alias_refused(tmp_path, text):
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(TopologyError) as exc:
        validate_file(path)
    assert str(exc.value) == f"{path}: a YAML alias refers to a node that contains it"


def test_modest_aliases_still_load(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "gpus_per_node: 3\nlinks:\n"
        "- {pairs: [[0, 1]], bandwidth: &bw 25, alpha: &a 0.7}\n"
        "- {pairs: [[1, 2]], bandwidth: *bw, alpha: *a}\n"
    )
    topo = load_topology(str(path))
    assert {lk.bandwidth for lk in topo.links} == {25e9}


def test_alias_limit_counts_expanded_nodes(tmp_path, monkeypatch):
    path = tmp_path / "fan.yaml"
    path.write_text(
        "gpus_per_node: 2\ndescription: &d x\nmeasured: {date: '1', hosts: ["
        + ", ".join(["*d"] * 50)
        + "]}\n"
    )
    validate_file(path)  # 61 nodes once expanded: 11 written, 50 aliases
    monkeypatch.setattr(loader, "MAX_YAML_NODES", 61)
    validate_file(path)
    monkeypatch.setattr(loader, "MAX_YAML_NODES", 60)
    with pytest.raises(
        TopologyError, match="61 YAML nodes once aliases are expanded, more than the limit of 60"
    ):
        validate_file(path)


@pytest.mark.parametrize("literal", ["1" + "0" * 5000, "1:" * 2000 + "1", "-" + "9" * 70])
def test_overlong_integer_literal(tmp_path, literal):
    path = tmp_path / "long.yaml"
    path.write_text(f"gpus_per_node: {literal}\n")
    with pytest.raises(TopologyError) as exc:
        within(1, validate_file, path)
    one_line(exc, f"{path}: line 1, column 16: invalid YAML: integer longer than 64 characters")


# -- numbers in topology and sketch files ---------------------------------------------------
def topology_doc() -> dict:
    return {
        "gpus_per_node": 4,
        "max_nodes": 8,
        "links": [{"pairs": [[0, 1], [2, 3]], "count": 2, "bandwidth": 25, "alpha": 0.7}],
        "switches": [{"gpus": [0, 1, 2, 3], "bandwidth": 100, "alpha": 0.3}],
        "nics": [{"gpus": "all", "bandwidth": 12.5, "alpha": 2.6}],
        "measured": {
            "date": "2025-01-31",
            "ranks": 8,
            "sizes": [1024, 2048],
            "iters": 5,
            "fits": [{"pair": [0, 4], "alpha": 2.6, "bandwidth": 12, "r2": 0.9}],
        },
    }


def _set(doc: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


TOPOLOGY_NUMBERS = [
    (("gpus_per_node",), [float("nan"), float("inf"), True, 0, 1025, 2.0, 10**30]),
    (("max_nodes",), [float("-inf"), False, 0, 1025]),
    (("links", 0, "bandwidth"), [float("nan"), float("inf"), -float("inf"), True, 0, 1e7]),
    (("links", 0, "alpha"), [float("nan"), float("inf"), False, -1, 1e7]),
    (("links", 0, "count"), [float("nan"), True, 0, 65, 1.5]),
    (("links", 0, "pairs", 0, 1), [float("nan"), True, -1, 4, 1024, 10**20]),
    (("switches", 0, "bandwidth"), [float("nan"), float("inf"), True, 0]),
    (("switches", 0, "gpus", 0), [float("nan"), True, -1, 4, 10**20]),
    (("nics", 0, "alpha"), [float("nan"), float("-inf"), True, -0.5]),
    (("measured", "ranks"), [float("nan"), True, 1, 1025]),
    (("measured", "sizes", 0), [float("inf"), True, 0, MAX_SIZE + 1]),
    (("measured", "iters"), [float("nan"), True, 0, 2**31]),
    (("measured", "fits", 0, "r2"), [float("nan"), float("inf"), True, 1.5]),
    (("measured", "fits", 0, "alpha"), [float("nan"), -1]),
    (("measured", "fits", 0, "pair", 1), [float("nan"), True, -1, 1024]),
]


def _field(path: tuple) -> str:
    from taccl_py.topology.schema import field_path

    return field_path(path)


@pytest.mark.parametrize(
    "path, bad", [(p, v) for p, values in TOPOLOGY_NUMBERS for v in values], ids=str
)
def test_topology_numbers_rejected_naming_the_field(tmp_path, path, bad):
    doc = topology_doc()
    load = tmp_path / "ok.yaml"
    load.write_text(yaml.safe_dump(doc))
    assert load_topology(str(load), 2).num_ranks == 8
    _set(doc, path, bad)
    target = tmp_path / "bad.yaml"
    target.write_text(yaml.safe_dump(doc))
    with pytest.raises(TopologyError) as exc:
        load_topology(str(target))
    message = one_line(exc)
    assert message.startswith(f"{target}: {_field(path)}: "), message


@pytest.mark.parametrize("token", NUMBER_TOKENS)
def test_topology_number_tokens_one_line(tmp_path, token):
    """Raw YAML tokens for a bandwidth: a valid number loads, anything else is one line."""
    path = tmp_path / "t.yaml"
    path.write_text(SMALL.replace("bandwidth: 25", f"bandwidth: {token}"))
    try:
        topo = load_topology(str(path))
    except TopologyError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"{path}: ")
    else:
        assert 0 < topo.links[0].bandwidth <= 1e15


SKETCH_NUMBERS = [
    (
        "size",
        [
            ".nan",
            ".inf",
            "-.inf",
            "true",
            "0",
            "-1",
            str(2**63),
            "2.5",
            "'9223372036854775808'",
            "'1e400'",
        ],
    ),
    ("chunkup", [".nan", ".inf", "true", "0", "65", "[1, .nan]", "[1, true]", "[2, 2]"]),
    (
        "inter_node",
        [
            "{connections: [[true, 0]]}",
            "{connections: [[.nan, 0]]}",
            "{connections: [[-1, 0]]}",
            "{connections: [[0, 1024]]}",
            "{connections: rail, relays: {true: [0]}}",
            "{connections: rail, relays: {0: [.inf]}}",
        ],
    ),
    (
        "symmetry",
        [
            "{rotations: [[.nan]]}",
            "{rotations: [[true, 0]]}",
            "{rotations: [" + ", ".join(["[0, 1, 2, 3, 4, 5, 6, 7]"] * 17) + "]}",
            "{node_swaps: 1}",
        ],
    ),
]


@pytest.mark.parametrize(
    "field, value", [(f, v) for f, values in SKETCH_NUMBERS for v in values], ids=str
)
def test_sketch_numbers_rejected_naming_the_field(field, value):
    with pytest.raises(SketchError) as exc:
        parse_sketch(f"{field}: {value}\n", load_topology("dgx1", 2), "sk.yaml")
    assert one_line(exc).startswith(f"sk.yaml: {field}"), str(exc.value)


def test_sketch_limits():
    topo = load_topology("dgx1", 2)
    assert parse_sketch(f"size: {MAX_SIZE}\n", topo).size == MAX_SIZE
    many = ", ".join(["[0, 1, 2, 3, 4, 5, 6, 7]"] * (MAX_ROTATIONS + 1))
    with pytest.raises(SketchError, match=f"at most {MAX_ROTATIONS}"):
        parse_sketch(f"symmetry: {{rotations: [{many}]}}\n", topo)


# -- limits and numbers in plan XML ---------------------------------------------------------
def _plan(algo: dict) -> str:
    """The 2-rank AllGather plan's text with ``algo``'s attribute values."""
    text = plan_to_xml(two_rank_allgather())
    for name, value in algo.items():
        text = text.replace(f' {name}="', f' {name}="{value}" old{name}="', 1)
    return text


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (
            {"ngpus": "1000000000"},
            [f"algo: attribute 'ngpus' is '1000000000', over the limit of {MAX_GPUS}"],
        ),
        ({"nchunksperloop": str(MAX_CHUNKS + 1)}, ["'nchunksperloop'", f"limit of {MAX_CHUNKS}"]),
        (
            {"ngpus": "1024", "nchunksperloop": "65536"},
            [f"ngpus x nchunksperloop = 67108864 chunks, over the limit of {MAX_TOTAL_CHUNKS}"],
        ),
        ({"nchannels": str(2**31)}, ["'nchannels' is '2147483648', over the limit of 2147483647"]),
        ({"minBytes": str(2**63)}, ["'minBytes'", "over the limit of 9223372036854775807"]),
        ({"maxBytes": "-" + "9" * 400}, ["'maxBytes' is '-99999999999999999999999...', under"]),
        ({"ngpus": "nan"}, ["attribute 'ngpus' must be an integer, got 'nan'"]),
        ({"ngpus": "inf"}, ["must be an integer, got 'inf'"]),
        ({"ngpus": "1e3"}, ["must be an integer, got '1e3'"]),
        ({"ngpus": "true"}, ["must be an integer, got 'true'"]),
        ({"ngpus": "0x10"}, ["must be an integer, got '0x10'"]),
        ({"ngpus": "1_0"}, ["must be an integer, got '1_0'"]),
        ({"ngpus": "\u0663"}, ["must be an integer, got '\u0663'"]),
        ({"ngpus": "2.0"}, ["must be an integer, got '2.0'"]),
    ],
    ids=str,
)
def test_plan_attribute_limits(edit, fragments):
    with pytest.raises(PlanError) as exc:
        parse_plan(_plan(edit))
    one_line(exc, "<xml text>: ", *fragments)


@pytest.mark.parametrize(
    "old, new, fragment",
    [
        ('cnt="1"', f'cnt="{MAX_CHUNKS + 1}"', f"'cnt' is '65537', over the limit of {MAX_CHUNKS}"),
        ('o_chunks="2"', 'o_chunks="99999999999999999999"', "'o_chunks'"),
        ('i_chunks="1"', 'i_chunks="-2147483649"', "under the limit of -2147483648"),
        ('srcoff="0"', 'srcoff="4294967296"', "'srcoff' is '4294967296', over the limit"),
        ('chan="0"', 'chan="nan"', "'chan' must be an integer, got 'nan'"),
        ('depid="-1"', 'depid="-inf"', "'depid' must be an integer, got '-inf'"),
    ],
)
def test_plan_element_attribute_limits(old, new, fragment):
    with pytest.raises(PlanError) as exc:
        parse_plan(plan_to_xml(two_rank_allgather()).replace(old, new, 1))
    one_line(exc, fragment)


def test_plan_element_count_limit(monkeypatch):
    text = plan_to_xml(two_rank_allgather())
    count = text.count("<")  # every element has one start or empty tag, closing tags aside
    elements = count - text.count("</")
    monkeypatch.setattr(plan_xml, "MAX_ELEMENTS", elements)
    assert parse_plan(text).ngpus == 2
    monkeypatch.setattr(plan_xml, "MAX_ELEMENTS", elements - 1)
    with pytest.raises(PlanError, match=f"more than {elements - 1} elements, the limit"):
        parse_plan(text)


def test_plan_with_millions_of_elements_is_stopped_early():
    text = _plan({}).replace("</algo>", "<gpu/>" * (plan_xml.MAX_ELEMENTS + 10) + "</algo>")
    with pytest.raises(PlanError, match="elements, the limit for a plan"):
        within(30, parse_plan, text)


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            '<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            + "".join(
                f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)
            )
            + ']><algo name="&i;"/>',
            "amplification",
        ),
        (
            '<!DOCTYPE x [<!ENTITY z SYSTEM "file:///dev/zero">]><algo name="&z;"/>',
            "external entity",
        ),
    ],
)
def test_xml_entity_bombs(text, fragment):
    with pytest.raises(PlanError) as exc:
        within(2, parse_plan, text)
    one_line(exc, "malformed XML", fragment)


def test_plan_file_not_utf8(tmp_path):
    path = tmp_path / "bin.xml"
    path.write_bytes(b"<algo name='\xff'/>")
    with pytest.raises(
        PlanError,
        match=r"bin.xml: not a UTF-8 text file \(bad byte at offset "
        r"12\)",
    ):
        parse_plan(path)


# -- every problem at once ------------------------------------------------------------------
MANY_PROBLEMS = """\
gpus_per_node: 4
name: 'bad name'
links:
- {pairs: [[0, 1], [1, 0], [2, 9]], bandwidth: .nan, alpha: 0.7}
- {pairs: [[3, 3]], bandwidth: 10, alpha: -1, colour: red}
switches:
- {gpus: [0, 0], bandwidth: 100, alpha: 0.3}
nics:
- {name: n, gpus: [0], bandwidth: 12.5, alpha: 2}
- {name: n, gpus: all, bandwidth: .inf}
"""
MANY_EXPECTED = [
    "links[0].bandwidth: must be a finite number, got nan",
    "links[0].pairs[1]: duplicate link 1->0 (also at links[0].pairs[0])",
    "links[0].pairs[2][1]: GPU 9 out of range 0..3",
    "links[1].alpha: must be >= 0, got -1",
    "links[1].colour: unknown field 'colour' (allowed: alpha, bandwidth, count, directed, "
    "kind, pairs)",
    "links[1].pairs[0]: self-link 3-3",
    "name: must be a name of letters, digits, '.', '_' or '-'",
    "nics[1].alpha: required",
    "nics[1].bandwidth: must be a finite number, got inf",
    "nics[1].gpus: GPU 0 is already on nics[0]",
    "nics[1].name: duplicate name 'n'",
    "switches[0].gpus[1]: GPU 0 listed twice",
]


def test_topology_validate_lists_every_problem(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text(MANY_PROBLEMS)
    good = tmp_path / "good.yaml"
    good.write_text(SMALL)
    res = CliRunner().invoke(main, ["topology", "validate", str(path), str(good)])
    assert res.exit_code == 1
    assert res.stdout == f"{good}: ok\n"
    assert res.stderr.splitlines() == [f"{path}: {line}" for line in MANY_EXPECTED]
    with pytest.raises(TopologyError) as exc:
        load_topology(str(path))
    assert str(exc.value) == f"{path}: {MANY_EXPECTED[0]}"


def test_problem_list_is_capped(tmp_path):
    path = tmp_path / "dups.yaml"
    pairs = ", ".join(["[0, 1]"] * (MAX_LISTED + 30))
    path.write_text(f"gpus_per_node: 2\nlinks: [{{pairs: [{pairs}], bandwidth: 1, alpha: 1}}]\n")
    with pytest.raises(TopologyError) as exc:
        validate_file(path)
    lines = str(exc.value).splitlines()
    assert len(lines) == MAX_LISTED + 1
    assert lines[0] == f"{path}: links[0].pairs[1]: duplicate link 0->1 (also at links[0].pairs[0])"
    assert lines[-1] == f"{path}: and 29 more problems"


SKETCH_PROBLEMS = """\
chunkup: [1, 100]
size: lots
inter_node:
  connections: [[0, 9], [0, 0], [0, 0], [1, true]]
symmetry: {rotations: [[0, 1], [1, 0, 2, 3, 4, 5, 6, 7]]}
"""
SKETCH_EXPECTED = [
    "chunkup[1]: must be <= 64, got 100",
    "inter_node.connections[0][1]: GPU 9 out of range 0..7",
    "inter_node.connections[2]: duplicate connection 0 -> 0",
    "inter_node.connections[3][1]: must be an integer, got true",
    "size: bad size 'lots': use a number with an optional K, M, G or T suffix",
    "symmetry.rotations[0]: must be a permutation of 0..7",
    "symmetry.rotations[1]: not a symmetry of dgx1x2: maps connection 0->3 to 1->3, whose "
    "bandwidth differs (25 vs 50 GB/s)",
]


def test_sketch_every_problem(tmp_path):
    topo = load_topology("dgx1", 2)
    with pytest.raises(SketchError) as exc:
        parse_sketch(SKETCH_PROBLEMS, topo, "sk.yaml", every=True)
    assert str(exc.value).splitlines() == [f"sk.yaml: {line}" for line in SKETCH_EXPECTED]
    with pytest.raises(SketchError) as exc:
        parse_sketch(SKETCH_PROBLEMS, topo, "sk.yaml")
    assert str(exc.value) == f"sk.yaml: {SKETCH_EXPECTED[0]}"
    path = tmp_path / "sk.yaml"
    path.write_text(SKETCH_PROBLEMS)
    with pytest.raises(SketchError) as exc:
        load_sketch(path, topo, every=True)
    assert len(str(exc.value).splitlines()) == len(SKETCH_EXPECTED)


def test_sketch_relay_problems_listed_together():
    text = "inter_node: {connections: [[0, 0]], relays: {1: [1], 9: [0], 0: [0, 0]}}\n"
    with pytest.raises(SketchError) as exc:
        parse_sketch(text, load_topology("dgx1", 2), "sk.yaml", every=True)
    assert str(exc.value).splitlines() == [
        "sk.yaml: inter_node.relays[0]: a GPU listed twice",
        "sk.yaml: inter_node.relays[1]: GPU 1 relays data but sends nothing across nodes "
        "(not a sender in inter_node.connections)",
        "sk.yaml: inter_node.relays[9]: GPU 9 out of range 0..7",
    ]


# -- property tests: mutated files give a result or one TacclError line ----------------------
def _number_spans(text: str) -> list[tuple[int, int]]:
    import re

    return [m.span() for m in re.finditer(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", text)]


@st.composite
def mutated_text(draw, bases: list[str], tokens: tuple[str, ...]):
    """A base text with 1-3 edits: a number replaced by a token, a slice deleted, a
    token or a copied slice inserted."""
    text = draw(st.sampled_from(bases))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["number", "delete", "insert", "copy"]))
        spans = _number_spans(text)
        if kind == "number" and spans:
            a, b = draw(st.sampled_from(spans))
            text = text[:a] + draw(st.sampled_from(tokens)) + text[b:]
            continue
        a = draw(st.integers(0, len(text)))
        b = draw(st.integers(a, min(len(text), a + 40)))
        if kind == "delete":
            text = text[:a] + text[b:]
        elif kind == "insert":
            extra = draw(st.sampled_from(tokens + ("\n", ": ", "- ", "[", "}")))
            text = text[:a] + extra + text[a:]
        else:
            at = draw(st.integers(0, len(text)))
            text = text[:at] + text[a:b] + text[at:]
    return text


def assert_result_or_one_line(fn, *args):
    try:
        return fn(*args)
    except TacclError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return None


TOPOLOGY_TEXTS = [p.read_text() for p in sorted((REPO / "topologies").glob("*.yaml"))]
SKETCH_TEXTS = [
    (REPO / "topologies" / "sketches" / "dgx1.yaml").read_text(),
    "inter_node: {connections: [[0, 0], [1, 1]], relays: {0: [0, 2], 1: [1, 3]}}\n"
    "symmetry: {rotations: [[1, 0, 3, 2, 5, 4, 7, 6]]}\nchunkup: [1, 2]\n"
    "size: 64M\n",
]
YAML_TOKENS = NUMBER_TOKENS + (
    "*x",
    "&x 1",
    "!!binary AAAA",
    "!!python/object:os.system",
    "[]",
    "{}",
    "null",
    "all",
    "rail",
    "2001-12-14",
    "'\\x00'",
)
XML_TOKENS = (
    "-1",
    "0",
    "1",
    "2",
    "3",
    "71",
    "72",
    "1000000000",
    str(2**31),
    str(2**63),
    "1" + "0" * 400,
    "nan",
    "inf",
    "1e3",
    "0x10",
    "+3",
    " 3 ",
    "\u0663",
    "1_0",
    "",
    '"',
    "<",
    "&amp;",
    "i",
    "o",
    "s",
    "x",
    "nop",
    "r",
    "rrc",
    "allreduce",
)


@settings(max_examples=150)
@given(mutated_text(TOPOLOGY_TEXTS, YAML_TOKENS))
def test_mutated_topology_yaml(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("t") / "t.yaml"
    path.write_text(text)
    topo = assert_result_or_one_line(load_topology, str(path))
    if topo is not None:
        validate_file(path)
        assert 0 < topo.num_ranks <= 1024


@settings(max_examples=150)
@given(mutated_text(SKETCH_TEXTS, YAML_TOKENS))
def test_mutated_sketch_yaml(text):
    topo = load_topology("dgx1", 2)
    sketch = assert_result_or_one_line(parse_sketch, text, topo, "sk.yaml")
    if sketch is not None:
        assert 1 <= sketch.size <= MAX_SIZE and all(1 <= c <= 64 for c in sketch.chunkup)
    try:
        parse_sketch(text, topo, "sk.yaml", every=True)
    except SketchError as exc:
        lines = str(exc).splitlines()
        assert all(line.startswith("sk.yaml: ") for line in lines)
        assert len(lines) == len(set(lines)) <= MAX_LISTED + 1


PLAN_TEXT = plan_to_xml(two_rank_allgather())


@settings(max_examples=200)
@given(mutated_text([PLAN_TEXT], XML_TOKENS))
def test_mutated_plan_xml(text):
    plan = assert_result_or_one_line(parse_plan, text)
    if plan is not None:
        assert plan.ngpus <= MAX_GPUS and plan.nchunksperloop <= MAX_CHUNKS
        assert_result_or_one_line(verify, plan)


def test_odd_file_names_stay_on_one_line(tmp_path):
    path = tmp_path / "a\nb\x1b[2J.yaml"
    path.write_text("gpus_per_node: 0\n")
    shown = str(path).replace("\n", "\\n").replace("\x1b", "\\x1b")
    for read, error in [
        (validate_file, TopologyError),
        (parse_plan, PlanError),
        (lambda p: load_sketch(p, load_topology("dgx1")), SketchError),
    ]:
        with pytest.raises(error) as exc:
            read(path)
        assert one_line(exc).startswith(f"{shown}: ")
    with pytest.raises(TacclError) as exc:
        read_input(tmp_path / "no\nsuch", 10, "test file")
    assert str(exc.value) == f"{tmp_path}/no\\nsuch: cannot read: no such file"

"""MSCCL XML writer and parser: exact text, round trips, tolerance, and error messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from taccl_py.errors import PlanError
from taccl_py.plan.model import GpuPlan, Plan, Step, Threadblock
from taccl_py.plan.xml import parse_plan, plan_to_xml, write_plan

EXTERNAL = Path(__file__).parent / "fixtures" / "external"
FIXTURES = sorted(EXTERNAL.glob("*.xml"))


def two_rank_allgather(**kw) -> Plan:
    """A minimal hand-written 2-rank AllGather plan."""
    gpus = []
    for r in range(2):
        gpus.append(
            GpuPlan(
                r,
                1,
                2,
                0,
                [
                    Threadblock(0, steps=[Step(0, "cpy", "i", 0, "o", r)]),
                    Threadblock(
                        1,
                        send=1 - r,
                        recv=1 - r,
                        steps=[Step(0, "s", "i", 0, "o", r), Step(1, "r", None, -1, "o", 1 - r)],
                    ),
                ],
            )
        )
    return Plan(
        name=kw.pop("name", "ag2"), coll="allgather", ngpus=2, nchunksperloop=2, gpus=gpus, **kw
    )


EXPECTED_AG2 = """\
<algo name="ag2" proto="Simple" nchannels="1" nchunksperloop="2" ngpus="2" coll="allgather" inplace="0" outofplace="1" minBytes="0" maxBytes="0" redop="nop">
  <gpu id="0" i_chunks="1" o_chunks="2" s_chunks="0">
    <tb id="0" send="-1" recv="-1" chan="0">
      <step s="0" type="cpy" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
    </tb>
    <tb id="1" send="1" recv="1" chan="0">
      <step s="0" type="s" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="1" depid="-1" deps="-1" hasdep="0"/>
      <step s="1" type="r" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="1" cnt="1" depid="-1" deps="-1" hasdep="0"/>
    </tb>
  </gpu>
"""


def test_plan_to_xml_exact_text_and_attribute_order():
    text = plan_to_xml(two_rank_allgather())
    assert text.startswith(EXPECTED_AG2)
    assert text.endswith("</algo>\n")
    assert text == plan_to_xml(two_rank_allgather())


def test_plan_to_xml_uses_runtime_collective_names_and_escapes_name():
    plan = two_rank_allgather(name='a "b" & <c>')
    plan.coll = "reducescatter"
    text = plan_to_xml(plan)
    assert 'coll="reducescatter"' in text  # the default runtime, msccl-executor
    assert 'coll="reduce_scatter"' in plan_to_xml(plan, "msccl")
    assert parse_plan(text).name == 'a "b" & <c>'


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_external_fixture_round_trips(path: Path):
    plan = parse_plan(path)
    assert parse_plan(plan_to_xml(plan)) == plan
    assert plan_to_xml(parse_plan(plan_to_xml(plan))) == plan_to_xml(plan)


def test_round_trip_of_built_plan():
    plan = two_rank_allgather(min_bytes=1024, max_bytes=1 << 30, proto="LL", nchannels=2)
    plan.gpus[1].tbs[1].chan = 1
    plan.gpus[0].tbs[1].steps[1].hasdep = 1
    assert parse_plan(plan_to_xml(plan)) == plan


def test_parse_accepts_path_str_path_and_text(tmp_path: Path):
    text = plan_to_xml(two_rank_allgather())
    target = tmp_path / "ag2.xml"
    target.write_text(text)
    assert parse_plan(target) == parse_plan(str(target)) == parse_plan(text)


def test_parse_older_format_defaults():
    text = """<algo name="old" nchunksperloop="4" ngpus="2" coll="reducescatter" inplace="0">
      <gpu id="0" i_chunks="4" o_chunks="2">
        <tb id="0" send="1" recv="1" chan="1">
          <step s="0" type="s" srcbuf="i" srcoff="2" cnt="2"/>
          <step s="1" type="rrc" srcbuf="i" srcoff="0" dstbuf="o" dstoff="0" cnt="2"/>
          <step s="2" type="nop" srcbuf="i" srcoff="-1" dstbuf="o" dstoff="-1" cnt="0"/>
        </tb>
      </gpu>
      <gpu id="1" i_chunks="4" o_chunks="2"/>
    </algo>"""
    plan = parse_plan(text)
    assert (plan.coll, plan.proto, plan.nchannels, plan.inplace, plan.outofplace) == (
        "reducescatter",
        "Simple",
        2,
        False,
        True,
    )
    assert (plan.min_bytes, plan.max_bytes, plan.redop) == (0, 0, "sum")
    assert plan.gpus[0].s_chunks == 0
    send, rrc, nop = plan.gpus[0].tbs[0].steps
    assert (send.dstbuf, send.dstoff, send.depid, send.deps, send.hasdep) == (None, -1, -1, -1, 0)
    assert (rrc.srcbuf, rrc.dstbuf, rrc.cnt) == ("i", "o", 2)
    assert (nop.srcbuf, nop.dstbuf, nop.cnt) == (None, None, 0)


@pytest.mark.parametrize(
    "coll, kind",
    [
        ("allgather", "allgather"),
        ("allreduce", "allreduce"),
        ("alltoall", "alltoall"),
        ("reduce_scatter", "reducescatter"),
        ("reducescatter", "reducescatter"),
    ],
)
def test_parse_collective_names(coll: str, kind: str):
    text = plan_to_xml(two_rank_allgather()).replace('coll="allgather"', f'coll="{coll}"')
    assert parse_plan(text).coll == kind


def test_inplace_defaults_outofplace():
    text = plan_to_xml(two_rank_allgather()).replace(' inplace="0" outofplace="1"', ' inplace="1"')
    plan = parse_plan(text)
    assert plan.inplace and not plan.outofplace


@pytest.mark.parametrize(
    "edit, fragments",
    [
        (lambda t: t.replace("</algo>", "</alg>"), ["malformed XML"]),
        (lambda t: t.replace(' ngpus="2"', ""), ["algo", "'ngpus'"]),
        (
            lambda t: t.replace('coll="allgather"', 'coll="multicast"'),
            ["algo", "'coll'", "multicast"],
        ),
        (lambda t: t.replace('inplace="0"', 'inplace="no"'), ["algo", "'inplace'", "'no'"]),
        (lambda t: t.replace('<gpu id="1" i_chunks="1"', '<gpu id="1"'), ["gpu 1", "'i_chunks'"]),
        (
            lambda t: t.replace('<tb id="1" send="0" recv="0"', '<tb id="1" recv="0"'),
            ["gpu 1 tb 1", "'send'"],
        ),
        (
            lambda t: t.replace(
                'cnt="1" depid="-1" deps="-1" hasdep="0"/>\n    </tb>\n  </gpu>\n</algo>',
                'cnt="x" depid="-1" deps="-1" hasdep="0"/>\n    </tb>\n  </gpu>\n</algo>',
            ),
            ["gpu 1 tb 1 step 1", "'cnt'", "'x'"],
        ),
        (
            lambda t: t.replace(
                'srcbuf="i" srcoff="0" dstbuf="o" dstoff="0"',
                'srcbuf="q" srcoff="0" dstbuf="o" dstoff="0"',
                1,
            ),
            ["gpu 0 tb 0 step 0", "'srcbuf'", "'q'"],
        ),
        (
            lambda t: t.replace('<step s="1" type="r"', '<step type="r"', 1),
            ["gpu 0 tb 1 step #1", "'s'"],
        ),
        (
            lambda t: t.replace("<step ", "<op ", 1).replace("/>", "></op>", 1),
            ["<op>", "gpu 0 tb 0"],
        ),
        (
            lambda t: t.replace(' ngpus="2"', ' ngpus="1000000000"'),
            ["algo", "'ngpus' is '1000000000', over the limit of 1024"],
        ),
        (lambda t: t.replace('cnt="1"', 'cnt="nan"', 1), ["gpu 0 tb 0 step 0", "'cnt'", "'nan'"]),
    ],
)
def test_parse_errors_name_file_element_and_attribute(tmp_path: Path, edit, fragments):
    bad = tmp_path / "bad.xml"
    bad.write_text(edit(plan_to_xml(two_rank_allgather())))
    with pytest.raises(PlanError) as info:
        parse_plan(bad)
    message = str(info.value)
    assert "\n" not in message
    assert str(bad) in message
    for fragment in fragments:
        assert fragment in message


def test_parse_missing_file_is_plan_error(tmp_path: Path):
    with pytest.raises(PlanError, match="cannot read"):
        parse_plan(tmp_path / "nope.xml")


def test_write_plan_is_atomic_and_replaces(tmp_path: Path):
    target = tmp_path / "plan.xml"
    target.write_text("old")
    plan = two_rank_allgather()
    assert write_plan(plan, target) == target
    assert target.read_text() == plan_to_xml(plan)
    assert [p.name for p in tmp_path.iterdir()] == ["plan.xml"]
    assert parse_plan(target) == plan


def test_committed_fixtures_match_their_generator(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("make_external", EXTERNAL / "make_external.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    generated = sorted(tmp_path.glob("*.xml"))
    assert [p.name for p in generated] == [p.name for p in FIXTURES]
    for path in generated:
        assert path.read_text() == (EXTERNAL / path.name).read_text(), path.name

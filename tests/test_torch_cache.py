"""The torch backend's plan library on disk: built once by one of several processes, loaded
(hashes checked, plans verified) by later ones, rebuilt when damaged; the cluster it is
built for comes from ``topology=`` / ``$TACCL_TOPOLOGY``, and a bad one is one clear line."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from taccl_py.errors import TacclError, TopologyError  # noqa: E402
from taccl_py.plan.xml import plan_to_xml  # noqa: E402
from taccl_py.torch import library  # noqa: E402
from taccl_py.torch.backend import TacclProcessGroup  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: one process building (or loading) the 4-rank library of the host model
BUILD = (
    "import sys; from taccl_py.torch.library import PlanLibrary; "
    "lib = PlanLibrary(None, sys.argv[1], nranks=4, methods=('ring', 'direct'), timeout=60); "
    "lib.prepare(); print(lib.directory)"
)


def start(cache: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TACCL_TOPOLOGY", None)
    return subprocess.Popen(
        [sys.executable, "-c", BUILD, str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(procs: list[subprocess.Popen]) -> list[tuple[str, str]]:
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), outs
    return outs


def test_one_builder_then_loads_then_rebuilds_damaged(tmp_path):
    cache = tmp_path / "cache"
    outs = finish([start(cache) for _ in range(4)])  # four processes at once
    errs = "".join(err for _, err in outs)
    for kind in ("allgather", "alltoall", "reducescatter", "allreduce"):
        assert errs.count(f"building {kind} plans") == 1, errs  # one process built each
    (directory,) = {out.strip() for out, _ in outs}
    index = Path(directory) / "allreduce.json"
    stamp = index.stat().st_mtime_ns

    ((out, err),) = finish([start(cache)])  # a later process loads
    assert "building" not in err and out.strip() == directory
    assert index.stat().st_mtime_ns == stamp

    plan = sorted(Path(directory).glob("allgather-*.xml"))[0]
    good = plan.read_text()
    plan.write_text(good.replace('cnt="1"', 'cnt="2"', 1))  # damaged: the hash differs
    ((_, err),) = finish([start(cache)])
    assert "damaged" in err and "building allgather plans" in err
    assert "building allreduce plans" not in err  # the intact tables are kept
    assert plan.read_text() == good  # the same plans, rebuilt


def test_cluster_from_option_or_environment(monkeypatch):
    two = library.resolve_topology("ndv2:2", 16)
    assert (two.nodes, two.num_ranks) == (2, 16)
    monkeypatch.setenv(library.TOPOLOGY_ENV, "dgx1")
    assert library.resolve_topology(None, 8).name == "dgx1"
    monkeypatch.delenv(library.TOPOLOGY_ENV)
    host = library.resolve_topology(None, 3, gpu=False)
    assert (host.label, len(host.switches)) == ("host3", 1)


@pytest.mark.parametrize(
    "spec, n, message",
    [
        ("no-such-cluster", 4, "unknown topology 'no-such-cluster'"),
        ("dgx1", 4, "topology dgx1 (TACCL_TOPOLOGY / topology=) has 8 ranks, the group has 4"),
        ("dgx1:0", 4, "the node count must be at least 1"),
    ],
)
def test_bad_topology_is_one_clear_line(tmp_path, monkeypatch, spec, n, message):
    monkeypatch.setenv(library.TOPOLOGY_ENV, spec)
    with pytest.raises(TopologyError) as err:
        TacclProcessGroup(
            dist.HashStore(), 0, n, datetime.timedelta(seconds=5), cache_dir=tmp_path / "cache"
        )
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_methods_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv(library.METHODS_ENV, "ring,bogus")
    with pytest.raises(TacclError, match="unknown method 'bogus'"):
        library.PlanLibrary(None, tmp_path, nranks=2)


def test_in_place_twins_survive_the_cache(tmp_path, monkeypatch):
    """A later process loads each range's in-place plan as built (none for AllGather)."""
    built = {
        kind: library.PlanLibrary(None, tmp_path, nranks=4, methods=("ring", "direct")).table(kind)
        for kind in ("allreduce", "allgather")
    }
    monkeypatch.setattr(library, "_TABLES", {})  # as in a new process: read from disk
    later = library.PlanLibrary(None, tmp_path, nranks=4, methods=("ring", "direct"))
    loaded = later.table("allreduce")
    assert loaded is not built["allreduce"] and len(loaded.ranges) == len(built["allreduce"].ranges)
    for old, new in zip(built["allreduce"].ranges, loaded.ranges, strict=True):
        assert old.inplace is not None and new.inplace is not None and new.inplace.inplace
        assert plan_to_xml(new.inplace) == plan_to_xml(old.inplace)
        assert plan_to_xml(new.plan) == plan_to_xml(old.plan) and not new.plan.inplace
    assert all(r.inplace is None for r in later.table("allgather").ranges)

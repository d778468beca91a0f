"""``taccl profile``: the α-β fit, node grouping, YAML building and updating, end to end."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from taccl_py.cli import main
from taccl_py.errors import TacclError
from taccl_py.topology.loader import load_topology, validate_file
from taccl_py.topology.profile import (
    NEED_RANKS,
    Fit,
    PairResult,
    build_topology,
    detect_transport,
    fit_alpha_bandwidth,
    group_nodes,
    to_yaml,
    update_topology,
)

BIN = Path(sys.executable).parent
SIZES = [8, 64, 512, 4096, 32768, 262144, 2097152, 16777216]
META = {
    "date": "2025-01-31T12:00:00+00:00",
    "launcher": "mpiexec",
    "transport": "mpi",
    "device": "cpu",
    "hosts": ["h0"],
    "ranks": 4,
    "sizes": SIZES,
    "iters": 3,
}
_LAUNCH_ENV = (
    "RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_RANK",
    "PMI_SIZE",
    "PMI_RANK",
    "PMI_FD",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_RANK",
    "MV2_COMM_WORLD_SIZE",
)


def _times(alpha, bw, sizes=SIZES):
    return [alpha + s / bw for s in sizes]


def _result(a, b, alpha, bw):
    return PairResult(a, b, tuple(_times(alpha, bw)), Fit(alpha, bw, 1.0))


def _clean_env():
    return {k: v for k, v in os.environ.items() if k not in _LAUNCH_ENV}


# -- fitting -------------------------------------------------------------------------------
def test_fit_recovers_exact_alpha_and_bandwidth():
    fit = fit_alpha_bandwidth(SIZES, _times(5e-6, 3e9))
    assert fit.alpha == pytest.approx(5e-6, rel=1e-9)
    assert fit.bandwidth == pytest.approx(3e9, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)


def test_fit_of_noisy_times_is_close():
    rng = np.random.default_rng(1)
    t = np.array(_times(20e-6, 2e9)) * rng.uniform(0.97, 1.03, len(SIZES))
    fit = fit_alpha_bandwidth(SIZES, t)
    assert fit.alpha == pytest.approx(20e-6, rel=0.1)
    assert fit.bandwidth == pytest.approx(2e9, rel=0.1)
    assert 0.99 < fit.r2 <= 1.0


def test_fit_clamps_a_negative_alpha_to_zero():
    t = [s / 1e9 for s in SIZES]
    t[0] *= 0.2  # a small message "faster than the wire": the free fit's α < 0
    fit = fit_alpha_bandwidth(SIZES, t)
    assert fit.alpha == 0.0 and fit.bandwidth > 0


def test_fit_survives_times_that_shrink_with_size():
    fit = fit_alpha_bandwidth([1024, 65536], [1e-3, 3e-5])  # a stall at 1K
    assert fit.alpha == 0.0 and fit.bandwidth > 0


@pytest.mark.parametrize("sizes,times", [([1024, 1024], [1e-5, 1e-5]), ([1, 2], [1e-5, 0.0])])
def test_fit_rejects_bad_input(sizes, times):
    with pytest.raises(TacclError):
        fit_alpha_bandwidth(sizes, times)


# -- launchers and nodes ---------------------------------------------------------------------
def test_detect_transport():
    assert detect_transport({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x"}) == "torch"
    assert detect_transport({"PMI_RANK": "0", "PMI_SIZE": "4"}) == "mpi"
    assert detect_transport({"OMPI_COMM_WORLD_SIZE": "4"}) == "mpi"
    assert detect_transport({}) is None


def test_group_nodes():
    assert group_nodes(["a", "a", "b", "b"], None) == [[0, 1], [2, 3]]
    assert group_nodes(["a"] * 4, None) == [[0, 1, 2, 3]]
    assert group_nodes(["a"] * 4, 2) == [[0, 1], [2, 3]]
    with pytest.raises(TacclError, match="uneven ranks per host"):
        group_nodes(["a", "a", "b"], None)
    with pytest.raises(TacclError, match="does not divide"):
        group_nodes(["a"] * 4, 3)


def test_profile_without_a_launcher_is_a_one_line_error(monkeypatch):
    for key in _LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    res = CliRunner().invoke(main, ["profile", "-o", "x.yaml"])
    assert res.exit_code == 2
    assert res.output.strip() == f"taccl: error: {NEED_RANKS}"


# -- YAML ------------------------------------------------------------------------------------
def test_build_topology_loads_with_the_given_values(tmp_path):
    results = [
        _result(a, b, (1 + a + b) * 1e-6, (a + b + 1) * 1e9)
        for a in range(4)
        for b in range(a + 1, 4)
    ]
    doc = build_topology(results, [[0, 1, 2, 3]], META)
    path = tmp_path / "m.yaml"
    path.write_text(to_yaml(doc))
    validate_file(path)
    topo = load_topology(path)
    assert topo.num_ranks == 4 and len(topo.connections) == 12
    for r in results:
        for s, d in ((r.a, r.b), (r.b, r.a)):
            conn = topo.connection(s, d)
            assert topo.bandwidth(conn) == pytest.approx(r.fit.bandwidth, rel=1e-3)
            assert conn.alpha == pytest.approx(r.fit.alpha, rel=1e-3)
    saved = yaml.safe_load(path.read_text())["measured"]
    assert saved["date"] == META["date"] and len(saved["fits"]) == 6
    assert saved["fits"][0] == {"pair": [0, 1], "alpha": 2.0, "bandwidth": 2.0, "r2": 1.0}


def test_build_topology_over_two_hosts_has_one_nic_per_node(tmp_path):
    fast, slow = (1e-6, 20e9), (10e-6, 1e9)
    results = [
        _result(a, b, *(fast if a // 2 == b // 2 else slow))
        for a in range(4)
        for b in range(a + 1, 4)
    ]
    doc = build_topology(results, [[0, 1], [2, 3]], {**META, "hosts": ["h0", "h1"]})
    assert doc["gpus_per_node"] == 2 and len(doc["links"]) == 1
    assert doc["nics"] == [{"name": "nic0", "gpus": "all", "bandwidth": 1.0, "alpha": 10.0}]
    path = tmp_path / "two.yaml"
    path.write_text(to_yaml(doc))
    topo = load_topology(path, nodes=2)
    assert topo.connection(0, 2).kind == "network"
    assert topo.bandwidth(topo.connection(0, 1)) == pytest.approx(20e9)


def test_update_changes_only_the_measured_pairs(tmp_path):
    original = {
        "name": "box",
        "description": "my box",
        "gpus_per_node": 4,
        "max_nodes": 4,
        "links": [
            {"pairs": [[0, 1], [2, 3]], "count": 2, "bandwidth": 25, "alpha": 0.7, "kind": "nvlink"}
        ],
        "switches": [{"name": "sw", "gpus": [0, 2], "bandwidth": 10, "alpha": 1}],
        "nics": [{"name": "nic0", "gpus": "all", "bandwidth": 12.5, "alpha": 2}],
    }
    results = [_result(0, 1, 2e-6, 40e9), _result(0, 2, 3e-6, 8e9), _result(1, 3, 9e-6, 1e9)]
    doc, notes = update_topology(
        yaml.safe_load(yaml.safe_dump(original)), results, [[0, 1, 2, 3]], META
    )
    assert {k: doc[k] for k in ("name", "description", "max_nodes", "nics")} == {
        k: original[k] for k in ("name", "description", "max_nodes", "nics")
    }
    assert doc["links"] == [
        {"pairs": [[2, 3]], "count": 2, "bandwidth": 25, "alpha": 0.7, "kind": "nvlink"},
        {"pairs": [[0, 1]], "count": 2, "bandwidth": 20.0, "alpha": 2.0, "kind": "nvlink"},
    ]
    assert doc["switches"] == [{"name": "sw", "gpus": [0, 2], "bandwidth": 8.0, "alpha": 3.0}]
    assert notes == [
        "pair 1-3 has no link or switch in the topology; its numbers are only in measured.fits"
    ]
    assert doc["measured"]["date"] == META["date"]
    path = tmp_path / "box.yaml"
    path.write_text(to_yaml(doc))
    topo = load_topology(path)
    assert topo.bandwidth(topo.connection(1, 0)) == pytest.approx(40e9)
    with pytest.raises(TacclError, match="4 GPUs per node"):
        update_topology(dict(original), results, [[0, 1], [2, 3]], META)


class _FakeComm:
    """One rank that stands for a 2-rank run (enough to reach the pre-measure checks)."""

    launcher, transport, rank, size = "test", "test", 0, 2

    def allgather(self, obj):
        return [obj, obj]

    def bcast(self, obj):
        return obj

    def close(self):
        pass


def test_update_on_the_command_line_checks_the_file_first(monkeypatch, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gpus_per_node: 0\n")
    monkeypatch.setattr(
        "taccl_py.topology.profile.open_comm", lambda transport, device: _FakeComm()
    )
    res = CliRunner().invoke(main, ["profile", "--update", str(bad)])
    assert res.exit_code == 2
    assert res.output.strip().startswith(f"taccl: error: {bad}: gpus_per_node")


# -- end to end -----------------------------------------------------------------------------
def _check_measured(path: Path, ranks: int) -> None:
    validate_file(path)
    topo = load_topology(path)
    assert topo.num_ranks == ranks
    assert len(topo.connections) == ranks * (ranks - 1)
    assert all(c.alpha >= 0 and topo.bandwidth(c) > 0 for c in topo.connections.values())
    fits = yaml.safe_load(path.read_text())["measured"]["fits"]
    assert len(fits) == ranks * (ranks - 1) // 2
    assert all(f["alpha"] >= 0 and f["bandwidth"] > 0 for f in fits)


@pytest.mark.skipif(not (BIN / "mpiexec").exists(), reason="no mpiexec in the venv")
def test_profile_under_mpiexec_writes_a_topology_that_loads(tmp_path):
    out = tmp_path / "measured.yaml"
    proc = subprocess.run(
        [
            str(BIN / "mpiexec"),
            "-n",
            "4",
            str(BIN / "taccl"),
            "profile",
            "-o",
            str(out),
            "--sizes",
            "1K,64K,1M",
            "--iters",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "alpha(us)" in proc.stdout and proc.stdout.count(f"wrote {out}") == 1
    _check_measured(out, 4)
    assert yaml.safe_load(out.read_text())["measured"]["launcher"] == "mpiexec"
    res = CliRunner().invoke(
        main,
        [
            "synthesize",
            "-m",
            "ring",
            "-t",
            str(out),
            "-c",
            "allgather",
            "-o",
            str(tmp_path / "ag.xml"),
        ],
    )
    assert res.exit_code == 0, res.output


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_profile_under_torchrun_writes_a_topology_that_loads(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "torch.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            str(BIN / "taccl"),
            "profile",
            "-o",
            str(out),
            "--sizes",
            "1K,64K,1M",
            "--iters",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=_clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    _check_measured(out, 2)
    assert yaml.safe_load(out.read_text())["measured"]["transport"] == "torch-gloo"

"""Malformed topology files: always a one-line TopologyError naming the file.

200 inputs are derived deterministically (a seeded random.Random) from valid documents:
removed required keys, wrong types, bad numbers, out-of-range GPU ids, unknown keys,
truncated text, syntax garbage and random bytes.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml

from taccl_py.errors import TopologyError
from taccl_py.topology.loader import load_topology

REPO_TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
CASES = 200

SMALL = {
    "name": "small",
    "description": "four GPUs, two link kinds, a switch and two NICs",
    "gpus_per_node": 4,
    "links": [
        {"pairs": [[0, 1], [2, 3]], "count": 2, "bandwidth": 25, "alpha": 0.7, "kind": "nvlink"},
        {"pairs": [[1, 2]], "directed": True, "bandwidth": 10, "alpha": 1.5, "kind": "pcie"},
    ],
    "switches": [{"name": "sw", "gpus": "all", "bandwidth": 100, "alpha": 0.3}],
    "nics": [
        {"name": "nicA", "gpus": [0, 1], "bandwidth": 12.5, "alpha": 2.6},
        {"name": "nicB", "gpus": [2, 3], "bandwidth": 12.5, "alpha": 2.6},
    ],
    "network": "rail-only",
    "max_nodes": 4,
}
BASES = [SMALL] + [yaml.safe_load(p.read_text()) for p in sorted(REPO_TOPOLOGIES.glob("*.yaml"))]

REQUIRED = {
    "links": ["pairs", "bandwidth", "alpha"],
    "switches": ["gpus", "bandwidth", "alpha"],
    "nics": ["gpus", "bandwidth", "alpha"],
}
# field -> values of a wrong type for it
WRONG = {
    "name": [5, [], {"a": 1}, True],
    "description": [3.5, ["x"], {"k": "v"}, False],
    "gpus_per_node": ["8", 8.5, [8], None, True],
    "network": [1, "mesh", "", None, ["rail-only"]],
    "max_nodes": ["two", 1.5, [], False],
    "links": [3, "links", {"pairs": []}, None],
    "switches": [3, "all", {"gpus": "all"}],
    "nics": [1.5, "nic0", {"name": "x"}],
    "pairs": [[0, 1], 7, "0-1", [[0]], [[0, 1, 2]], [["a", "b"]], [], [[0.5, 1]]],
    "count": ["2", 1.5, [2], None, True],
    "bandwidth": ["fast", [25], None, {"v": 25}, True],
    "alpha": ["0.7", [0.7], None, False],
    "kind": [1, [], "", "nv link", None],
    "directed": ["yes", 1, None, []],
    "gpus": [0, "some", [], [0, "1"], {"0": 1}, None, [[0]]],
}
BAD_NUMBERS = {
    "bandwidth": [0, -1, -12.5, 0.0, 1e9, float("inf"), float("nan")],
    "alpha": [-0.1, -5, 1e12, float("-inf"), float("nan")],
    "count": [0, -2, 1000],
    "gpus_per_node": [0, -8, 100000],
    "max_nodes": [0, -1],
}
GARBAGE = [
    "{{",
    "]]",
    ": : :",
    "\t- x",
    "'unterminated",
    '"bad \\q escape"',
    "*undefined_alias",
    "!!python/object:os.system ls",
    "? [a]: b",
    "key: [1, 2",
    "@reserved",
    "%TAG ! !x",
]


def _sections(doc: dict) -> list[tuple[str, dict]]:
    return [(s, e) for s in ("links", "switches", "nics") for e in doc.get(s, [])]


def _objects(doc: dict) -> list[dict]:
    return [doc] + [e for _, e in _sections(doc)]


def _delete_required(rng, doc):
    choices = [(doc, "gpus_per_node")] + [(e, k) for s, e in _sections(doc) for k in REQUIRED[s]]
    obj, key = rng.choice(choices)
    del obj[key]


def _wrong_type(rng, doc):
    obj = rng.choice(_objects(doc))
    key = rng.choice([k for k in obj if k in WRONG])
    obj[key] = copy.deepcopy(rng.choice(WRONG[key]))


def _bad_number(rng, doc):
    obj = rng.choice(_objects(doc))
    key = rng.choice([k for k in obj if k in BAD_NUMBERS] or ["gpus_per_node"])
    obj = doc if key not in obj else obj
    obj[key] = rng.choice(BAD_NUMBERS[key])


def _bad_gpu(rng, doc):
    n = doc["gpus_per_node"]
    bad = rng.choice([n, n + rng.randrange(1, 100), -1, -rng.randrange(2, 50)])
    targets = [
        (e["pairs"][j], rng.randrange(2))
        for _, e in _sections(doc)
        if "pairs" in e
        for j in range(len(e["pairs"]))
    ]
    targets += [
        (e["gpus"], rng.randrange(len(e["gpus"])))
        for _, e in _sections(doc)
        if isinstance(e.get("gpus"), list)
    ]
    if not targets:
        doc["nics"] = [{"gpus": [bad], "bandwidth": 1, "alpha": 1}]
        return
    lst, idx = rng.choice(targets)
    lst[idx] = bad


def _unknown_key(rng, doc):
    obj = rng.choice(_objects(doc))
    obj[rng.choice(["bandwith", "Alpha", "gpu", "extra", "nodes", "latency", "x-y"])] = 1


def _semantic(rng, doc):
    n = doc["gpus_per_node"]
    g = rng.randrange(n)
    h = (g + 1) % n
    choice = rng.randrange(4)
    if choice == 0:
        doc.setdefault("links", []).append({"pairs": [[g, g]], "bandwidth": 1, "alpha": 0})
    elif choice == 1:
        doc.setdefault("links", []).append({"pairs": [[g, h], [h, g]], "bandwidth": 1, "alpha": 0})
    elif choice == 2:
        doc.setdefault("nics", []).extend(
            [
                {"name": "dup", "gpus": [g], "bandwidth": 1, "alpha": 0},
                {"name": "dup", "gpus": [h], "bandwidth": 1, "alpha": 0},
            ]
        )
    else:
        doc.setdefault("switches", []).extend(
            [
                {"gpus": [g, h], "bandwidth": 1, "alpha": 0},
                {"gpus": [h], "bandwidth": 1, "alpha": 0},
            ]
        )


STRUCTURAL = [_delete_required, _wrong_type, _bad_number, _bad_gpu, _unknown_key, _semantic]


def _flow_text(doc: dict) -> str:
    return yaml.safe_dump(doc, default_flow_style=True, sort_keys=False, width=10**6)


def _truncated(rng, doc) -> bytes:
    """Cut inside the flow mapping, leaving an unclosed bracket."""
    text = _flow_text(doc)
    return text[: rng.randrange(1, len(text) - 2)].encode()


def _garbage(rng, doc) -> bytes:
    lines = yaml.safe_dump(doc, sort_keys=False).splitlines()
    at = rng.randrange(len(lines) + 1)
    lines.insert(at, rng.choice(GARBAGE))
    return "\n".join(lines).encode()


def _random_bytes(rng, doc) -> bytes:
    """Arbitrary bytes, or printable text rich in YAML indicators."""
    size = rng.randrange(1, 300)
    if rng.random() < 0.5:
        return bytes(rng.randrange(256) for _ in range(size))
    alphabet = "abc019 -:[]{},'\"#&*!|>%@`?\n\t"
    return "".join(rng.choice(alphabet) for _ in range(size)).encode()


def _not_a_mapping(rng, doc) -> bytes:
    return rng.choice(
        [
            b"",
            b"   \n",
            b"# only a comment\n",
            b"- a\n- b\n",
            b"42\n",
            b"~\n",
            b"just text\n",
            b"[1, 2, 3]\n",
            b"\xef\xbb\xbf",
            b"'quoted'\n",
        ]
    )


TEXTUAL = [_truncated, _garbage, _random_bytes, _not_a_mapping]


def make_case(i: int) -> bytes:
    rng = random.Random(1000 + i)
    doc = copy.deepcopy(rng.choice(BASES))
    mutations = STRUCTURAL + TEXTUAL
    mutate = mutations[i % len(mutations)]
    if mutate in TEXTUAL:
        return mutate(rng, doc)
    mutate(rng, doc)
    return yaml.safe_dump(doc, sort_keys=rng.random() < 0.5, allow_unicode=True).encode()


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def test_bases_are_valid(tmp_path):
    for j, doc in enumerate(BASES):
        path = tmp_path / f"base{j}.yaml"
        path.write_text(yaml.safe_dump(doc))
        assert load_topology(str(path), 2).nodes == 2


@pytest.mark.parametrize("i", range(CASES))
def test_malformed_file(case_dir, i):
    path = case_dir / f"case{i:03d}.yaml"
    path.write_bytes(make_case(i))
    with pytest.raises(TopologyError) as exc:
        load_topology(str(path), 2)
    message = str(exc.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(f"{path}: ")
    assert len(message) < 400

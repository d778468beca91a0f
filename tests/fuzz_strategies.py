"""Hypothesis strategies for the CLI fuzz suite (tests/test_fuzz.py).

Every strategy starts from something valid (a built-in topology, a `taccl sketch init`
template, a plan `taccl synthesize` wrote, a good option value) and breaks it the way a
careless or hostile user would: structural edits of the parsed document, text edits of
the file (truncation, garbage, number tokens), whole-file specials (YAML anchor bombs,
XML entity bombs, deep nesting, binary), extreme numbers and odd paths.
"""

from __future__ import annotations

import copy
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY_FILES = sorted((REPO / "topologies").glob("*.yaml"))

# -- values ---------------------------------------------------------------------------
HUGE_DIGITS = "1" + "0" * 400
#: tokens a user could type for a number (as option values and as file text)
NUMBER_TOKENS = (
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "+inf",
    "Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "1.0e+400",
    HUGE_DIGITS,
    "-" + HUGE_DIGITS,
    HUGE_DIGITS + ".5",
    str(2**31),
    str(2**63 - 1),
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "1000000000",
    "100000",
    "-1",
    "0",
    "-0",
    "0.0",
    "1",
    "2",
    "3",
    "0.5",
    "1.5",
    "1e3",
    "0x10",
    "0o17",
    "1_000",
    "+3",
    " 3 ",
    "\u0663",
    "\uff11",
    "",
    " ",
    "abc",
    "1,2",
    "--",
    "-",
    "1K",
    "1M",
    "64M",
    "1G",
    "1T",
    "1P",
    "0K",
    "-1K",
    "1.5K",
    "1.0001K",
    "nanK",
    "infM",
    "1e400K",
    "1KB",
    "1KiB",
    "1 K",
    "K",
    "8E",
    "9223372036854775807",
    "9223372036854775808K",
)
SIZE_TOKENS = NUMBER_TOKENS + ("1K,1M", "1K,,2K", ",", "1K," * 50, "0,1K", "nan,1K")
#: scalar values for YAML fields
YAML_SCALARS = (
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    0,
    1,
    2,
    -0.0,
    0.5,
    1e-300,
    1e308,
    10**400,
    2**63,
    2**64,
    -(2**63) - 1,
    2**31,
    10**6,
    10**9,
    100000,
    "",
    " ",
    "all",
    "none",
    "rail",
    "0",
    "1e400",
    HUGE_DIGITS,
    "nan",
    "\u00e9\u00e8",
    "x" * 300,
    True,
    False,
    None,
)
YAML_CONTAINERS = (
    [],
    {},
    [[]],
    [None],
    {"": None},
    [0, 0],
    [[0, 1]],
    [[0, 0]],
    [[-1, 0]],
    [[0, 10**6]],
    list(range(40)),
    {"0": "all"},
    {0: [0]},
    [[0, 1, 2]],
)
#: raw YAML tokens substituted for numbers in the file text
YAML_TOKENS = (
    ".nan",
    ".inf",
    "-.inf",
    "1e400",
    "1.0e+400",
    "-1",
    "0",
    HUGE_DIGITS,
    "0x7fffffffffffffff",
    "0o777",
    "1_000",
    "+12",
    ".5",
    "1e-400",
    "18446744073709551616",
    "~",
    "null",
    "''",
    "[]",
    "{}",
    "*nope",
    "!!binary AAAA",
    "!!python/object/apply:os.getpid []",
    "!!float 1",
    "2001-12-14",
    "yes",
    "no",
    "on",
    "1:20",
    "!!str 3",
    "&x 1",
    "'\\x00'",
    '"\\0"',
)


def yaml_bomb(levels: int = 9, width: int = 9) -> str:
    """A 'billion laughs' YAML alias bomb: a few hundred bytes, width**levels leaves."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def yaml_bomb_in(doc_text: str, key: str) -> str:
    """The bomb's anchors first, then the document with ``key`` bound to the last alias."""
    bomb = yaml_bomb()
    return (
        bomb + re.sub(rf"^{key}:.*$", f"{key}: *l8", doc_text, count=1, flags=re.M)
        if re.search(rf"^{key}:", doc_text, re.M)
        else bomb + doc_text + f"{key}: *l8\n"
    )


YAML_SPECIALS = (
    "",
    "\n",
    "# only a comment\n",
    "---\n",
    "--- 1\n--- 2\n",
    "null\n",
    "[]\n",
    "{}\n",
    "42\n",
    "'just a string'\n",
    "[" * 5000 + "]" * 5000,
    "{a: " * 3000 + "1" + "}" * 3000,
    "- " * 3000 + "x\n",
    "a: &a [*a]\n",
    "!!python/object/apply:os.system ['true']\n",
    "\x00\x01\x02",
    "\t- tab\n",
    "a: b\na: c\n",
    "\ufeffname: bom\n",
    "key: [1, 2\n",
)
BINARY_SPECIALS = (
    b"\xff\xfe\x00garbage",
    b"\x89PNG\r\n\x1a\n\x00\x00",
    bytes(range(256)),
    b"name: \xe9\xe8\n",
    b"\x00" * 4096,
)


def numbers() -> st.SearchStrategy[str]:
    """Option-value text: the curated tokens, random ints and floats, random short text."""
    return st.one_of(
        st.sampled_from(NUMBER_TOKENS),
        st.integers(-(2**70), 2**70).map(str),
        st.integers(-3, 40).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=6),
    )


def sizes() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(SIZE_TOKENS),
        numbers(),
        st.lists(st.sampled_from(SIZE_TOKENS), min_size=1, max_size=4).map(",".join),
    )


# -- YAML documents -----------------------------------------------------------------------
def _paths(node, prefix=()):
    """Every path (tuple of keys/indices) into a parsed YAML document, the root included."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _yaml_values(doc, vocabulary):
    return st.one_of(
        st.sampled_from(YAML_SCALARS),
        st.sampled_from(YAML_CONTAINERS).map(copy.deepcopy),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=10),
        st.sampled_from(vocabulary),
        st.sampled_from([copy.deepcopy(_get(doc, p)) for p in _paths(doc)]),  # type confusion
    )


@st.composite
def mutate_tree(draw, doc, vocabulary):
    """1-3 structural edits of a parsed document: replace, delete, add a key, duplicate
    or empty a list, or blow a list up to many copies of one element."""
    doc = copy.deepcopy(doc)
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(
            st.sampled_from(
                [
                    "replace",
                    "replace",
                    "replace",
                    "scale",
                    "scale",
                    "delete",
                    "add",
                    "dup",
                    "empty",
                    "explode",
                ]
            )
        )
        if op == "scale":  # a near-valid document: one number pushed to an extreme
            nums = [
                p
                for p in paths
                if p
                and isinstance(_get(doc, p), (int, float))
                and not isinstance(_get(doc, p), bool)
            ]
            if not nums:
                op = "replace"
            else:
                path = draw(st.sampled_from(nums))
                old = _get(doc, path)
                factor = draw(st.sampled_from([0, 1e-300, 1e-9, 1e-3, 0.5, 2, 3, 1e3, 1e9, 1e300]))
                new = old * factor
                if isinstance(old, int) and draw(st.booleans()):
                    new = draw(st.sampled_from([old + 1, old - 1, old * 2, old * 64, 1, 2]))
                _get(doc, path[:-1])[path[-1]] = new
                ops.append(f"scale {'/'.join(map(str, path))}={new!r}")
                continue
        if not path:  # the root: replace the whole document or add a key
            op = "add" if isinstance(doc, dict) and op != "replace" else "replace"
        target = _get(doc, path[:-1]) if path else None
        if op == "replace":
            value = draw(_yaml_values(doc, vocabulary))
            if path:
                target[path[-1]] = value
            else:
                doc = value
        elif op == "delete":
            del target[path[-1]]
        elif op == "add":
            node = _get(doc, path)
            if isinstance(node, dict):
                node[draw(st.sampled_from(vocabulary + ("unknown_key", "", 0, None)))] = draw(
                    _yaml_values(doc, vocabulary)
                )
            elif isinstance(node, list):
                node.append(draw(_yaml_values(doc, vocabulary)))
            else:
                target[path[-1]] = [node, draw(_yaml_values(doc, vocabulary))]
        else:
            node = _get(doc, path)
            if not isinstance(node, list):
                target[path[-1]] = [node]
            elif op == "dup" and node:
                node.append(copy.deepcopy(node[draw(st.integers(0, len(node) - 1))]))
            elif op == "empty":
                node.clear()
            elif node:
                node[:] = [copy.deepcopy(node[0]) for _ in range(draw(st.sampled_from([50, 2000])))]
        ops.append(f"{op} {'/'.join(map(str, path)) or '<root>'}")
    return doc, ops


def _dump(doc) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False, width=200)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return yaml.dump(doc, width=200)


@st.composite
def mutate_text(draw, text: str, tokens=YAML_TOKENS, garbage=()):
    """1-3 text edits: truncate, insert garbage, swap a number token, delete/duplicate a
    line, or drop a tab or a CR LF in."""
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(
            st.sampled_from(
                ["number", "number", "truncate", "insert", "delline", "dupline", "crlf", "indent"]
            )
        )
        lines = text.splitlines(keepends=True)
        if op == "number" and re.search(r"\d+(\.\d+)?", text):
            spans = [m.span() for m in re.finditer(r"-?\d+(\.\d+)?", text)]
            a, b = spans[draw(st.integers(0, len(spans) - 1))]
            tok = draw(st.one_of(st.sampled_from(tokens), st.sampled_from(NUMBER_TOKENS)))
            text = text[:a] + tok + text[b:]
        elif op == "truncate":
            text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
        elif op == "insert":
            at = draw(st.integers(0, len(text)))
            junk = draw(
                st.one_of(
                    st.sampled_from(
                        garbage
                        or (
                            "{{",
                            "]]",
                            ": :",
                            "\t",
                            "&a",
                            "*a",
                            "'",
                            '"',
                            "!!",
                            "%",
                            "@",
                            "`",
                            "\x00",
                            "\ud7ff",
                            "<",
                            "&",
                        )
                    ),
                    st.text(max_size=8),
                )
            )
            text = text[:at] + junk + text[at:]
        elif op in ("delline", "dupline") and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i : i + 1] = [] if op == "delline" else [lines[i], lines[i]]
            text = "".join(lines)
        elif op == "crlf":
            text = text.replace("\n", "\r\n")
        elif op == "indent" and lines:
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = draw(st.sampled_from(["\t", " ", "   "])) + lines[i]
            text = "".join(lines)
        ops.append(op)
    return text, ops


#: extreme values a schema may still allow, set on every field of that name at once
TOPOLOGY_EXTREMES = {
    "bandwidth": (5e-324, 1e-300, 1e-12, 1e-3, 999999.0, 1e6),
    "alpha": (0, 0.0, 1e-300, 1e-9, 999999.0, 1e6),
    "count": (1, 64),
}
SKETCH_EXTREMES = {
    "size": ("1", "8", "1T", "8E", "9223372036854775807", 1),
    "chunkup": ([64], [1, 64]),
}


def _set_all(node, key, value):
    if isinstance(node, dict):
        for k in node:
            if k == key:
                node[k] = copy.deepcopy(value)
            else:
                _set_all(node[k], key, value)
    elif isinstance(node, list):
        for v in node:
            _set_all(v, key, value)


@st.composite
def yaml_files(draw, bases: list[tuple[str, str]], vocabulary, bomb_keys, extremes=None):
    """(label, file bytes) from one of ``bases`` (name, valid YAML text), broken one of
    four ways: a structural edit, a text edit, a whole-file special, or (``extremes``)
    every field of a name set to one extreme value the schema may still allow."""
    name, text = draw(st.sampled_from(bases))
    how = draw(
        st.sampled_from(
            ["tree", "tree", "tree", "text", "text", "special", "valid"]
            + (["extreme", "extreme"] if extremes else [])
        )
    )
    if how == "valid":
        return f"{name} unchanged", text.encode()
    if how == "extreme":
        doc = yaml.safe_load(text)
        ops = []
        for key in draw(st.lists(st.sampled_from(sorted(extremes)), min_size=1, unique=True)):
            value = draw(st.sampled_from(extremes[key]))
            _set_all(doc, key, value)
            ops.append(f"every {key} = {value!r}")
        return f"{name}: {'; '.join(ops)}", _dump(doc).encode()
    if how == "tree":
        doc, ops = draw(mutate_tree(yaml.safe_load(text), vocabulary))
        return f"{name}: {'; '.join(ops)}", _dump(doc).encode("utf-8", "surrogatepass")
    if how == "text":
        new, ops = draw(mutate_text(text))
        return f"{name}: text {', '.join(ops)}", new.encode("utf-8", "surrogatepass")
    kind = draw(st.sampled_from(["bomb", "special", "binary", "huge"]))
    if kind == "bomb":
        key = draw(st.sampled_from(bomb_keys))
        return f"{name}: anchor bomb at {key}", yaml_bomb_in(text, key).encode()
    if kind == "special":
        s = draw(st.sampled_from(YAML_SPECIALS))
        return f"{name}: special {s[:20]!r}", s.encode("utf-8", "surrogatepass")
    if kind == "binary":
        return f"{name}: binary", draw(st.sampled_from(BINARY_SPECIALS))
    # a long but valid-looking document: many copies of a list entry
    doc = yaml.safe_load(text)
    key = draw(st.sampled_from([k for k, v in doc.items() if isinstance(v, list)] or ["x"]))
    doc[key] = (doc.get(key) or [None]) * 20000
    return f"{name}: {key} x 20000", _dump(doc).encode()


TOPOLOGY_VOCAB = (
    "name",
    "description",
    "gpus_per_node",
    "links",
    "switches",
    "nics",
    "network",
    "max_nodes",
    "pairs",
    "count",
    "bandwidth",
    "alpha",
    "kind",
    "directed",
    "gpus",
    "full-bisection",
    "rail-only",
    "nvlink",
    "pcie",
    "all",
)
SKETCH_VOCAB = (
    "name",
    "inter_node",
    "connections",
    "relays",
    "own_data_first",
    "switch_policy",
    "symmetry",
    "rotations",
    "node_swaps",
    "chunkup",
    "size",
    "uc-min",
    "uc-max",
    "auto",
    "none",
    "rail",
    "all",
    "1G",
    "1K",
)


def topology_bases() -> list[tuple[str, str]]:
    return [(p.stem, p.read_text()) for p in TOPOLOGY_FILES]


# -- plan XML ---------------------------------------------------------------------------------
XML_ATTRS = {
    "algo": (
        "name",
        "proto",
        "nchannels",
        "nchunksperloop",
        "ngpus",
        "coll",
        "inplace",
        "outofplace",
        "minBytes",
        "maxBytes",
        "redop",
    ),
    "gpu": ("id", "i_chunks", "o_chunks", "s_chunks"),
    "tb": ("id", "send", "recv", "chan"),
    "step": ("s", "type", "srcbuf", "srcoff", "dstbuf", "dstoff", "cnt", "depid", "deps", "hasdep"),
}
XML_VALUES = (
    "-1",
    "0",
    "1",
    "2",
    "3",
    "7",
    "8",
    "9",
    "-2",
    "1000000000",
    str(2**31),
    str(2**63),
    HUGE_DIGITS,
    "",
    " ",
    "nan",
    "inf",
    "1e3",
    "0x10",
    "1.5",
    "abc",
    "+3",
    " 3 ",
    "\u0663",
    "1_0",
    "i",
    "o",
    "s",
    "x",
    "r",
    "rcs",
    "cpy",
    "re",
    "rrc",
    "rrs",
    "rrcs",
    "nop",
    "allgather",
    "allreduce",
    "alltoall",
    "reduce_scatter",
    "reducescatter",
    "Simple",
    "LL",
    "LL128",
    "sum",
    "prod",
    "max",
    "min",
    "\x01",
)
XML_SPECIALS = (
    "",
    "<",
    "<algo/>",
    "<algo>",
    "<notalgo/>",
    "<?xml version='1.0'?>",
    "<algo ngpus='1000000000' coll='allgather' nchunksperloop='1000000000' nchannels='1'"
    " proto='Simple' name='big'/>",
    "<algo ngpus='2' coll='allgather' nchannels='1000000000' proto='Simple' name='c'/>",
    '<!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    + ']><algo name="&i;"/>',
    '<!DOCTYPE x [<!ENTITY z SYSTEM "file:///dev/zero">]><algo name="&z;"/>',
    '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/hostname">]><algo name="&e;"/>',
    "<algo>" + "<gpu>" * 5000 + "</gpu>" * 5000 + "</algo>",
    "<algo " + " ".join(f"a{i}='1'" for i in range(5000)) + "/>",
)


def _elements(root):
    return [(el, parent) for parent in [None] for el in [root]] + [
        (child, parent) for parent in root.iter() for child in parent
    ]


@st.composite
def mutate_xml_tree(draw, text: str):
    """1-3 edits of a plan's element tree: an attribute set to an extreme, wrong-typed or
    neighbouring valid value, removed or added; an element deleted, duplicated, moved or
    swapped with a sibling; an unknown element added."""
    root = ET.fromstring(text)
    ops = []
    for _ in range(draw(st.integers(1, 3))):
        els = _elements(root)
        el, parent = els[draw(st.integers(0, len(els) - 1))]
        op = draw(
            st.sampled_from(
                [
                    "set",
                    "set",
                    "set",
                    "near",
                    "near",
                    "delattr",
                    "newattr",
                    "del",
                    "dup",
                    "swap",
                    "move",
                    "child",
                ]
            )
        )
        names = XML_ATTRS.get(el.tag, tuple(el.attrib)) or ("x",)
        if op in ("del", "dup", "swap", "move") and parent is None:
            op = "set"
        if op == "set":
            name = draw(st.sampled_from(names))
            el.set(
                name,
                draw(
                    st.one_of(
                        st.sampled_from(XML_VALUES),
                        st.integers(-5, 70).map(str),
                        st.text(max_size=5),
                    )
                ),
            )
            ops.append(f"set {el.tag}.{name}={el.get(name)!r}")
        elif op == "near":  # a plausible value: another element's, or off by one
            name = draw(st.sampled_from(names))
            same = [e.get(name) for e, _ in els if e.tag == el.tag and e.get(name) is not None]
            cur = el.get(name)
            choices = same + (
                [str(int(cur) + 1), str(int(cur) - 1)]
                if cur is not None and re.fullmatch(r"-?\d+", cur)
                else []
            )
            if choices:
                el.set(name, draw(st.sampled_from(choices)))
            ops.append(f"near {el.tag}.{name}={el.get(name)!r}")
        elif op == "delattr" and el.attrib:
            name = draw(st.sampled_from(sorted(el.attrib)))
            del el.attrib[name]
            ops.append(f"delattr {el.tag}.{name}")
        elif op == "newattr":
            el.set(draw(st.sampled_from(("extra", "ngpus", "id", "chan", "cnt", "xmlns"))), "1")
            ops.append(f"newattr {el.tag}")
        elif op == "del":
            parent.remove(el)
            ops.append(f"del {el.tag}")
        elif op == "dup":
            parent.insert(list(parent).index(el) + 1, copy.deepcopy(el))
            ops.append(f"dup {el.tag}")
        elif op == "swap":
            kids = list(parent)
            j = draw(st.integers(0, len(kids) - 1))
            i = kids.index(el)
            kids[i], kids[j] = kids[j], kids[i]
            parent[:] = kids
            ops.append(f"swap {el.tag}")
        elif op == "move":
            others = [e for e, _ in els if e.tag == parent.tag and e is not parent]
            if others:
                parent.remove(el)
                draw(st.sampled_from(others)).append(el)
            ops.append(f"move {el.tag}")
        elif op == "child":
            ET.SubElement(el, draw(st.sampled_from(("step", "tb", "gpu", "algo", "junk"))))
            ops.append(f"child {el.tag}")
    return ET.tostring(root, encoding="unicode"), ops


@st.composite
def xml_files(draw, bases: list[tuple[str, str]]):
    """(label, file bytes): a valid plan from ``bases`` broken by tree edits, text edits,
    an entity bomb or another whole-file special."""
    name, text = draw(st.sampled_from(bases))
    how = draw(st.sampled_from(["tree", "tree", "tree", "tree", "text", "special", "valid"]))
    if how == "valid":
        return f"{name} unchanged", text.encode()
    if how == "tree":
        new, ops = draw(mutate_xml_tree(text))
        return f"{name}: {'; '.join(ops)}", new.encode("utf-8", "surrogatepass")
    if how == "text":
        new, ops = draw(
            mutate_text(
                text,
                tokens=XML_VALUES,
                garbage=(
                    "<",
                    ">",
                    "&",
                    "&amp",
                    "<!--",
                    "]]>",
                    "'",
                    '"',
                    "<step/>",
                    "\x00",
                    "<!DOCTYPE x>",
                ),
            )
        )
        return f"{name}: text {', '.join(ops)}", new.encode("utf-8", "surrogatepass")
    kind = draw(st.sampled_from(["special", "special", "binary", "encoding"]))
    if kind == "special":
        s = draw(st.sampled_from(XML_SPECIALS))
        return f"special {s[:30]!r}", s.encode()
    if kind == "binary":
        return "binary", draw(st.sampled_from(BINARY_SPECIALS))
    enc = draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "bogus-enc", "ascii"]))
    return f"{name} declared {enc}", (f"<?xml version='1.0' encoding='{enc}'?>\n" + text).encode()


# -- odd paths --------------------------------------------------------------------------------
#: kinds of path given where a command writes a file
OUTPUT_PATHS = (
    "new",
    "new",
    "existing",
    "directory",
    "missing-dir",
    "fifo",
    "devnull",
    "devfull",
    "link-to-file",
    "dangling-link",
    "link-to-dir",
    "link-loop",
    "empty",
    "long-name",
    "trailing-slash",
    "dash",
    "same-as-other",
)
#: kinds of path given where a command reads a file
INPUT_PATHS = (
    "directory",
    "missing",
    "fifo",
    "devnull",
    "devzero",
    "dangling-link",
    "link-loop",
    "empty",
    "empty-file",
    "binary",
    "link-to-valid",
    "sparse-huge",
    "long-name",
    "/etc/passwd",
    "/proc/self/status",
    "/proc/self/mem",
    "/dev/urandom",
    "/dev/stdin",
    "/proc/self/fd/0",
)


def is_finite_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# -- nvidia-smi topo -m matrices ---------------------------------------------------------------------
NVSMI_FILES = sorted((REPO / "tests" / "fixtures" / "nvsmi").glob("*.txt"))
NVSMI_CELLS = (
    "X",
    " X ",
    "NV1",
    "NV2",
    "NV0",
    "NV-1",
    "NV99",
    "NV100000",
    "NV",
    "NVnan",
    "NV1.5",
    "SYS",
    "PIX",
    "PXB",
    "PHB",
    "NODE",
    "SOC",
    "??",
    "",
    "N/A",
    "nv2",
    "NV" + HUGE_DIGITS,
)
NVSMI_NAMES = (
    "GPU0",
    "GPU9",
    "GPU-1",
    "GPU",
    "GPU" + HUGE_DIGITS,
    "NIC0",
    "mlx5_0",
    "mlx5_0",
    "CPU Affinity",
    "",
    "gpu1",
)


def nvsmi_matrix(n: int, cell: str = "NV1") -> str:
    names = [f"GPU{i}" for i in range(n)]
    rows = ["\t" + "\t".join(names + ["CPU Affinity"])]
    for i in range(n):
        rows.append("\t".join([names[i]] + [" X " if i == j else cell for j in range(n)] + ["0-1"]))
    return "\n".join(rows) + "\n"


@st.composite
def nvsmi_files(draw):
    """(label, text): an `nvidia-smi topo -m` matrix with cells, rows, columns or names
    changed, or a whole-file special (huge matrices, empty, binary)."""
    path = draw(st.sampled_from(NVSMI_FILES))
    text = path.read_text()
    how = draw(
        st.sampled_from(
            ["cell", "cell", "cell", "row", "column", "name", "text", "special", "valid"]
        )
    )
    lines = text.split("\n")
    table = [i for i, ln in enumerate(lines) if "\t" in ln or re.match(r"^(GPU|NIC|mlx)", ln)]
    label = f"{path.stem}: {how}"
    if how == "valid" or not table:
        return f"{path.stem} unchanged", text
    if how in ("cell", "name"):
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.sampled_from(table))
            cells = re.split(r"(\t|\s{2,})", lines[i])
            fields = [k for k in range(0, len(cells), 2)]
            k = draw(st.sampled_from(fields if how == "cell" else fields[:1]))
            cells[k] = draw(st.sampled_from(NVSMI_CELLS if how == "cell" else NVSMI_NAMES))
            lines[i] = "".join(cells)
            label += f" {i}:{k}={cells[k][:12]!r}"
        return label, "\n".join(lines)
    if how == "row":
        i = draw(st.sampled_from(table))
        op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        else:
            j = draw(st.sampled_from(table))
            lines[i], lines[j] = lines[j], lines[i]
        return f"{label} {op} {i}", "\n".join(lines)
    if how == "column":
        k = draw(st.integers(0, 12))
        for i in table:
            cells = lines[i].split("\t")
            if k < len(cells):
                del cells[k]
            lines[i] = "\t".join(cells)
        return f"{label} delete {k}", "\n".join(lines)
    if how == "text":
        new, ops = draw(mutate_text(text, tokens=NVSMI_CELLS))
        return f"{label} {', '.join(ops)}", new
    s = draw(st.sampled_from(["big", "huge", "empty", "legend", "binary", "switch"]))
    if s == "big":
        return "matrix of 300 GPUs, NV1", nvsmi_matrix(300)
    if s == "huge":
        return "matrix of 1100 GPUs, PIX", nvsmi_matrix(1100, "PIX")
    if s == "switch":
        return "matrix of 64 GPUs, NV18", nvsmi_matrix(64, "NV18")
    if s == "legend":
        return "legend only", text[text.find("Legend") :] if "Legend" in text else "Legend:\n"
    if s == "binary":
        return "binary", bytes(range(256)).decode("latin-1")
    return "empty", ""

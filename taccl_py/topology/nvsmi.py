"""Convert ``nvidia-smi topo -m`` output into a topology YAML file (one node).

The input is the matrix ``nvidia-smi topo -m`` prints: a header row of device columns
(``GPU0 .. GPUn-1``, then NICs as ``NIC0..`` or ``mlx5_0..``, then affinity columns), one
row per device, the legend, and an optional ``NIC Legend`` (``NIC0: mlx5_0``). Cells may be
separated by tabs or runs of spaces; ANSI colour codes and ``\\r`` are ignored.

Mapping (bandwidth per direction in GB/s, α in µs):

* ``NV#`` between two GPUs: an NVLink bundle, ``count: #``, at the per-link bandwidth of
  the NVLink generation. The generation is guessed from the NVLinks per GPU (``#`` on a
  switch, else the largest row sum of ``#``): <= 4 NVLink1 (P100, 20 GB/s), <= 6 NVLink2
  (V100, 25), <= 12 NVLink3 (A100, 25), more NVLink4 (H100, 25; α 0.5, else 0.7).
  ``nvlink_bw`` overrides the per-link bandwidth (e.g. 50 for NVLink5).
* NVSwitch: with 3 or more GPUs, when every GPU pair shows the same ``NV#`` and
  ``# x (GPUs - 1)`` exceeds 18 (no GPU has more NVLinks; covers NV12 with 8 GPUs, NV18,
  DGX-2's NV6 with 16), one switch ``nvswitch`` with per-port bandwidth ``# x`` per-link.
* GPU pairs without NVLink: a PCIe link (``kind: pcie``) whose class sets its numbers,
  relative to the PCIe bandwidth (``pcie_bw``; default x16 of the generation's PCIe:
  Gen3 16 GB/s with NVLink1/2, Gen4 32 with NVLink3 or no NVLink, Gen5 64 with NVLink4):
  PIX/PXB 1x, α 1.0; PHB/NODE 0.75x, α 1.5; SYS/SOC 0.5x, α 2.5. ``pcie=False`` omits
  them. Per-pair links do not model a GPU's shared x16 port.
* NICs: a NIC serves the GPUs it is closest to (PIX, then PXB, PHB, NODE, SYS). By default
  only NICs with a GPU at PIX or PXB are compute NICs; ``nics`` (names from the NIC
  Legend, or column labels such as ``NIC0``) picks them instead, ``none`` for no NICs.
  NICs closest to the same GPUs split them in order (two NICs, two GPUs: one each); a GPU
  already taken by an earlier NIC is not shared, and a NIC left without GPUs is dropped.
  Each NIC gets ``nic_bw`` (default: the InfiniBand of the generation's DGX, 12.5 GB/s =
  100 Gb/s with NVLink1/2, 25 with NVLink3 or no NVLink, 50 with NVLink4), α 2.0, on a
  full-bisection network.

The YAML starts with a comment header naming the source and every assumption made.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TopologyError
from ..util.fileio import display_path, read_input
from .model import Topology

NIC_BW = 25.0  # GB/s: 200 Gb/s, when there is no NVLink generation to go by
NIC_ALPHA = 2.0
MAX_NVLINKS_PER_GPU = 18
#: the most bytes of ``nvidia-smi topo -m`` output read (8 GPUs and 8 NICs: about 3 KB)
MAX_INPUT_BYTES = 1 << 20
_WHAT = "topology matrix (nvidia-smi topo -m)"

#: (name, most NVLinks per GPU, per-link GB/s, α µs, default PCIe x16 GB/s, default NIC GB/s:
#: the InfiniBand of that generation's DGX, EDR 100 / HDR 200 / NDR 400 Gb/s)
GENERATIONS = (
    ("NVLink1 (P100 class)", 4, 20.0, 0.7, 16.0, 12.5),
    ("NVLink2 (V100 class)", 6, 25.0, 0.7, 16.0, 12.5),
    ("NVLink3 (A100 class)", 12, 25.0, 0.7, 32.0, 25.0),
    ("NVLink4 (H100 class)", MAX_NVLINKS_PER_GPU, 25.0, 0.5, 64.0, 50.0),
)
PCIE_ONLY_BW = 32.0  # GB/s: Gen4 x16 when there is no NVLink to guess a generation from

#: PCIe path class -> (label, fraction of the PCIe bandwidth, α µs)
PCIE_CLASSES = {
    "PIX": ("PIX/PXB", 1.0, 1.0),
    "PXB": ("PIX/PXB", 1.0, 1.0),
    "PHB": ("PHB/NODE", 0.75, 1.5),
    "NODE": ("PHB/NODE", 0.75, 1.5),
    "SYS": ("SYS", 0.5, 2.5),
    "SOC": ("SYS", 0.5, 2.5),
}
#: PCIe path classes from nearest to farthest (SOC is SYS's old name)
DISTANCE = {"PIX": 0, "PXB": 1, "PHB": 2, "NODE": 3, "SYS": 4, "SOC": 4}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_GPU_LABEL = re.compile(r"^GPU(\d+)$")
_NV = re.compile(r"^NV(\d+)$")
_AFFINITY = re.compile(r"^([\d,\-]+|N/A)$")
_LEGEND_NIC = re.compile(r"^\s*(NIC\d+)\s*:\s*(\S+)\s*$")
_YAML_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Matrix:
    """A parsed ``nvidia-smi topo -m`` matrix: GPU-GPU and GPU-NIC cells."""

    gpus: int
    nic_labels: tuple[str, ...]  # column labels (NIC0 or mlx5_0)
    nic_names: tuple[str, ...]  # NIC Legend names where given, else the labels
    gpu_cells: tuple[tuple[str, ...], ...]  # [gpu][gpu]
    nic_cells: tuple[tuple[str, ...], ...]  # [gpu][nic]


@dataclass
class Imported:
    """A converted topology: the YAML document and the assumptions behind it."""

    doc: dict
    notes: list[str] = field(default_factory=list)


def read_matrix(file: str | Path) -> tuple[bytes, str]:
    """The ``nvidia-smi topo -m`` output in ``file`` (``-``: standard input) and its name
    for messages; at most :data:`MAX_INPUT_BYTES` (one more is read to tell)."""
    if str(file) != "-":
        return read_input(file, MAX_INPUT_BYTES, _WHAT, TopologyError), display_path(file)
    data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise TopologyError(
            f"<stdin>: too large for a {_WHAT}: over the limit of {MAX_INPUT_BYTES} bytes"
        )
    return data, "<stdin>"


def _lines(text: str) -> list[str]:
    return _ANSI.sub("", text).replace("\r", "").split("\n")


def parse(text: str, where: str = "<input>") -> Matrix:
    """Parse ``nvidia-smi topo -m`` output; a one-line TopologyError names a bad line."""
    lines = _lines(text)
    head = next((i for i, line in enumerate(lines) if "GPU0" in line.split()), None)
    if head is None:
        raise TopologyError(
            f"{where}: no header row with GPU0, GPU1, ... "
            f"(expected the output of `nvidia-smi topo -m`)"
        )
    labels = []
    for token in lines[head].split():
        if token in ("CPU", "NUMA", "GPU"):  # "CPU Affinity", "NUMA Affinity", "GPU NUMA ID"
            break
        labels.append(token)
    gpus = 0
    while gpus < len(labels) and labels[gpus] == f"GPU{gpus}":
        gpus += 1
    stray = next((lab for lab in labels[gpus:] if _GPU_LABEL.match(lab)), None)
    if stray is not None or len(set(labels)) != len(labels):
        raise TopologyError(
            f"{where}: line {head + 1}: header columns must be GPU0..GPUn "
            f"in order, then NICs, each once; got {' '.join(labels)}"
        )
    column = {lab: j for j, lab in enumerate(labels)}
    rows: dict[str, tuple[int, list[str]]] = {}
    legend = len(lines)
    for i in range(head + 1, len(lines)):
        tokens = lines[i].split()
        if not tokens:
            continue
        if tokens[0].rstrip(":") == "Legend":
            legend = i
            break
        if tokens[0] not in column:
            raise TopologyError(
                f"{where}: line {i + 1}: row {tokens[0]!r} is not a column "
                f"of the header (line {head + 1})"
            )
        if tokens[0] in rows:
            raise TopologyError(f"{where}: line {i + 1}: second row for {tokens[0]}")
        rows[tokens[0]] = (i, _cells(tokens, len(labels), labels, where, i))
    for lab in labels[:gpus]:
        if lab not in rows:
            raise TopologyError(f"{where}: no row for {lab}")
    _check_symmetric(rows, labels, where)
    names = {m.group(1): m.group(2) for line in lines[legend:] if (m := _LEGEND_NIC.match(line))}
    nic_labels = tuple(labels[gpus:])
    return Matrix(
        gpus=gpus,
        nic_labels=nic_labels,
        nic_names=tuple(names.get(lab, lab) for lab in nic_labels),
        gpu_cells=tuple(tuple(rows[f"GPU{g}"][1][:gpus]) for g in range(gpus)),
        nic_cells=tuple(tuple(rows[f"GPU{g}"][1][gpus:]) for g in range(gpus)),
    )


def _cells(tokens: list[str], width: int, labels: list[str], where: str, i: int) -> list[str]:
    """The ``width`` matrix cells of one row (affinity columns dropped), checked."""
    row, cells = tokens[0], tokens[1 : 1 + width]
    for j, cell in enumerate(cells):
        if _AFFINITY.match(cell):
            cells = cells[:j]
            break
        if cell != "X" and cell not in DISTANCE and not _NV.match(cell):
            raise TopologyError(
                f"{where}: line {i + 1}: row {row}, column {labels[j]}: "
                f"unknown cell {cell!r} (expected X, NV#, PIX, PXB, PHB, "
                f"NODE, SYS or SOC)"
            )
    if len(cells) != width:
        raise TopologyError(
            f"{where}: line {i + 1}: row {row} has {len(cells)} cells, "
            f"the header has {width} columns"
        )
    for j, cell in enumerate(cells):
        if (cell == "X") != (labels[j] == row):
            raise TopologyError(
                f"{where}: line {i + 1}: row {row}, column {labels[j]}: "
                f"{cell!r} "
                + ("off the diagonal" if cell == "X" else "on the diagonal (expected X)")
            )
        m = _NV.match(cell)
        if m and (
            int(m.group(1)) < 1 or not (_GPU_LABEL.match(row) and _GPU_LABEL.match(labels[j]))
        ):
            raise TopologyError(
                f"{where}: line {i + 1}: row {row}, column {labels[j]}: "
                f"{cell!r} is not an NVLink between two GPUs"
            )
    return cells


def _check_symmetric(rows: dict[str, tuple[int, list[str]]], labels: list[str], where: str) -> None:
    for a, (i, cells) in rows.items():
        for j, b in enumerate(labels):
            if b in rows and rows[b][1][labels.index(a)] != cells[j]:
                raise TopologyError(
                    f"{where}: line {i + 1}: asymmetric matrix: {a}-{b} is {cells[j]!r} "
                    f"but {b}-{a} (line {rows[b][0] + 1}) is {rows[b][1][labels.index(a)]!r}"
                )


def _nv(cell: str) -> int:
    m = _NV.match(cell)
    return int(m.group(1)) if m else 0


def _gbs(x: float) -> str:
    return f"{x:g} GB/s"


def _split(gpus: list[int], parts: int) -> list[list[int]]:
    """``gpus`` in ``parts`` contiguous, balanced chunks (empty ones at the end)."""
    size, extra = divmod(len(gpus), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(gpus[start:end])
        start = end
    return out


def _select_nics(m: Matrix, nics: list[str] | None) -> list[int]:
    """Indices of the compute NICs: named ones, or those with a GPU at PIX/PXB."""
    if nics is None:
        return [
            k
            for k in range(len(m.nic_labels))
            if min(DISTANCE[m.nic_cells[g][k]] for g in range(m.gpus)) <= DISTANCE["PXB"]
        ]
    if nics == ["none"]:
        return []
    known = {name: k for k, name in enumerate(m.nic_labels)}
    known.update({name: k for k, name in enumerate(m.nic_names)})
    picked = []
    for name in nics:
        if name not in known:
            raise TopologyError(
                f"--nics: no NIC {name!r} in the input (NICs: {', '.join(m.nic_names) or 'none'})"
            )
        if known[name] not in picked:
            picked.append(known[name])
    return sorted(picked)


def _assign_nics(m: Matrix, picked: list[int], notes: list[str]) -> list[tuple[int, list[int]]]:
    """(NIC index, its GPUs): each picked NIC with the GPUs it is closest to."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k in picked:
        best = min(DISTANCE[m.nic_cells[g][k]] for g in range(m.gpus))
        near = tuple(g for g in range(m.gpus) if DISTANCE[m.nic_cells[g][k]] == best)
        groups.setdefault(near, []).append(k)
    taken: set[int] = set()
    out = []
    for near, ks in groups.items():
        free = [g for g in near if g not in taken]
        for k, share in zip(ks, _split(free, len(ks))):
            if share:
                out.append((k, share))
                taken.update(share)
            else:
                notes.append(
                    f"NIC {m.nic_names[k]} dropped: its nearest GPUs "
                    f"{list(near)} are already served by other NICs"
                )
    return sorted(out)


def _nvlink_generation(m: Matrix, switch_links: int | None) -> tuple:
    per_gpu = switch_links or max(sum(_nv(c) for c in row) for row in m.gpu_cells)
    return next((gen for gen in GENERATIONS if per_gpu <= gen[1]), GENERATIONS[-1]), per_gpu


def convert(
    m: Matrix,
    *,
    name: str,
    source: str = "nvidia-smi topo -m",
    nics: list[str] | None = None,
    nvlink_bw: float | None = None,
    pcie_bw: float | None = None,
    nic_bw: float | None = None,
    pcie: bool = True,
) -> Imported:
    """The topology document for ``m`` (see the module docstring for the mapping)."""
    n = m.gpus
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    counts = {p: _nv(m.gpu_cells[p[0]][p[1]]) for p in pairs}
    notes: list[str] = []
    summary: list[str] = []
    links: list[dict] = []
    switches: list[dict] = []
    uniform = {counts[p] for p in pairs}
    k = min(uniform, default=0)
    has_nvlink = any(counts.values())
    if has_nvlink:
        switch = n >= 3 and len(uniform) == 1 and k * (n - 1) > MAX_NVLINKS_PER_GPU
        (gen, _, per_link, alpha, pcie_default, nic_default), per_gpu = _nvlink_generation(
            m, k if switch else None
        )
        nic_bw = nic_default if nic_bw is None else nic_bw
        if nvlink_bw is None:
            notes.append(
                f"NVLink generation guessed from {per_gpu} NVLinks per GPU: {gen}, "
                f"{_gbs(per_link)} per link, alpha {alpha:g} us"
            )
        else:
            per_link = nvlink_bw
            notes.append(
                f"NVLink: {_gbs(per_link)} per link (--nvlink-bw), alpha {alpha:g} us "
                f"({gen}, guessed from {per_gpu} NVLinks per GPU)"
            )
        if switch:
            switches.append(
                {"name": "nvswitch", "gpus": "all", "bandwidth": k * per_link, "alpha": alpha}
            )
            notes.append(
                f"every GPU pair shows NV{k}: NVSwitch, {k} x {_gbs(per_link)} = "
                f"{_gbs(k * per_link)} per GPU port"
            )
            summary.append(f"NVSwitch {_gbs(k * per_link)} per GPU")
        else:
            for c in sorted({c for c in counts.values() if c}, reverse=True):
                links.append(
                    {
                        "pairs": [list(p) for p in pairs if counts[p] == c],
                        "count": c,
                        "bandwidth": per_link,
                        "alpha": alpha,
                        "kind": "nvlink",
                    }
                )
            summary.append("NVLink " + "/".join(f"NV{lk['count']}" for lk in links))
    nic_bw = NIC_BW if nic_bw is None else nic_bw
    pcie_pairs = [p for p in pairs if not counts[p]]
    if pcie_pairs and pcie:
        how = "--pcie-bw"
        if pcie_bw is None:
            pcie_bw = pcie_default if has_nvlink else PCIE_ONLY_BW
            how = "default for the NVLink generation" if has_nvlink else "default, Gen4"
        for label in dict.fromkeys(v[0] for v in PCIE_CLASSES.values()):
            cls = [p for p in pcie_pairs if PCIE_CLASSES[m.gpu_cells[p[0]][p[1]]][0] == label]
            if cls:
                frac, alpha = next(v[1:] for v in PCIE_CLASSES.values() if v[0] == label)
                links.append(
                    {
                        "pairs": [list(p) for p in cls],
                        "bandwidth": pcie_bw * frac,
                        "alpha": alpha,
                        "kind": "pcie",
                    }
                )
        notes.append(
            f"GPU pairs without NVLink: PCIe links, x16 at {_gbs(pcie_bw)} ({how}); "
            f"PIX/PXB 1x alpha 1 us, PHB/NODE 0.75x alpha 1.5 us, "
            f"SYS 0.5x alpha 2.5 us"
        )
        summary.append(f"PCIe for {len(pcie_pairs)} GPU pair(s)")
    elif pcie_pairs:
        notes.append(f"--no-pcie: {len(pcie_pairs)} GPU pair(s) without NVLink left unconnected")
    assigned = _assign_nics(m, _select_nics(m, nics), notes)
    if assigned:
        how = "--nics" if nics is not None else "NICs with a GPU at PIX/PXB"
        notes.append(
            f"compute NICs ({how}), each serving its nearest GPUs: "
            + ", ".join(f"{m.nic_names[i]} -> GPU {','.join(map(str, g))}" for i, g in assigned)
            + f"; {_gbs(nic_bw)}, alpha {NIC_ALPHA:g} us, full-bisection network"
        )
        used = {i for i, _ in assigned}
        skipped = [name for i, name in enumerate(m.nic_names) if i not in used]
        if skipped:
            notes.append(f"NICs not used: {', '.join(skipped)}")
        lonely = sorted(set(range(n)) - {g for _, gs in assigned for g in gs})
        if lonely:
            notes.append(
                f"GPUs without a NIC (inter-node traffic relays through others): "
                f"{', '.join(map(str, lonely))}"
            )
        summary.append(f"{len(assigned)} NIC(s)")
    else:
        notes.append("no compute NICs: single node only (--nics NAME,... to add some)")
    doc: dict = {
        "name": name,
        "description": f"{n} GPUs from {source}: " + ", ".join(summary or ["no GPU links"]),
        "gpus_per_node": n,
    }
    if links:
        doc["links"] = links
    if switches:
        doc["switches"] = switches
    if assigned:
        doc["nics"] = [
            {
                "name": _YAML_NAME.sub("_", m.nic_names[i]),
                "gpus": gpus,
                "bandwidth": nic_bw,
                "alpha": NIC_ALPHA,
            }
            for i, gpus in assigned
        ]
        doc["network"] = "full-bisection"
    return Imported(doc, notes)


def _value(x: object) -> str:
    if isinstance(x, float):
        return f"{x:g}"
    if isinstance(x, str):
        return x if re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", x) else json.dumps(x)
    if isinstance(x, list):
        return "[" + ", ".join(_value(v) for v in x) + "]"
    return str(x)


def _entry(d: dict, indent: str) -> str:
    """One list entry in flow style; long pair lists wrap, eight pairs a line."""
    head = f"{indent}- {{"
    parts = []
    for key, val in d.items():
        if key == "pairs" and len(val) > 8:
            rows = [", ".join(_value(p) for p in val[i : i + 8]) for i in range(0, len(val), 8)]
            pad = " " * (len(head) + len("pairs: ["))
            parts.append("pairs: [" + f",\n{pad}".join(rows) + "]")
        else:
            parts.append(f"{key}: {_value(val)}")
    return head + ", ".join(parts) + "}"


def to_yaml(imported: Imported, source: str) -> str:
    """The YAML text: a comment header of assumptions, then the document."""
    out = [
        f"# Imported by `taccl topology import nvidia-smi` from {source}.",
        "# Assumptions (bandwidth per direction, alpha = latency; edit to taste):",
    ]
    for note in imported.notes:
        out += textwrap.wrap(
            note, 88, initial_indent="#   - ", subsequent_indent="#     ", break_on_hyphens=False
        )
    for key, val in imported.doc.items():
        if isinstance(val, list):
            out.append(f"{key}:")
            for entry in val:
                out.append(_entry(entry, "  "))
        else:
            out.append(f"{key}: {_value(val)}")
    return "\n".join(out) + "\n"


def default_name(path: str) -> str:
    """A topology name from an input file name: its stem, cleaned up."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", Path(path).stem).strip("._-")
    return stem or "imported"


def check(text: str) -> Topology:
    """Load ``text`` with the project's loader (raises a TopologyError if invalid)."""
    from .loader import parse_topology

    try:
        return parse_topology(text.encode("utf-8"), "imported.yaml", "imported")
    except TopologyError as exc:
        raise TopologyError(f"generated topology is invalid (a bug): {exc}") from None


def import_nvidia_smi(
    text: str, source: str, *, name: str | None = None, **options
) -> tuple[str, Topology]:
    """``nvidia-smi topo -m`` text -> (checked YAML text, its topology)."""
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise TopologyError(f"--name {name!r}: use letters, digits, '.', '_' or '-'")
    imported = convert(
        parse(text, source),
        name=name or default_name(source),
        source=f"nvidia-smi topo -m ({Path(source).name})",
        **options,
    )
    yaml_text = to_yaml(imported, source)
    return yaml_text, check(yaml_text)

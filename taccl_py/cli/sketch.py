"""``taccl sketch``: validate and start sketches that narrow the milp search."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..util.fileio import display_path
from ..util.units import format_size

if TYPE_CHECKING:
    pass


from .app import _NODES, _OUTPUT, _Group, main


# -- sketch ------------------------------------------------------------------------
@main.group(cls=_Group)
def sketch() -> None:
    """Write and check communication sketches (hints for --method milp)."""


_SKETCH_TOPOLOGY = [
    click.option(
        "--topology",
        "-t",
        "topology_name",
        required=True,
        help="built-in name or YAML file the sketch is for",
    ),
    click.option("--nodes", "-n", default=1, show_default=True, type=_NODES),
]


def _sketch_topology(fn):
    for opt in reversed(_SKETCH_TOPOLOGY):
        fn = opt(fn)
    return fn


@sketch.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@_sketch_topology
def sketch_validate(file: Path, topology_name: str, nodes: int) -> None:
    """Check a sketch file (or built-in sketch name) against a topology; list every problem."""
    from ..errors import SketchError
    from ..synth.milp.sketch import default_sketch, load_sketch
    from ..topology.loader import load_topology

    topo = load_topology(topology_name, nodes)
    try:
        s = default_sketch(topo) if str(file) == "default" else load_sketch(file, topo, every=True)
    except SketchError as exc:
        for line in str(exc).splitlines():
            click.echo(f"taccl: error: {line}", err=True)
        sys.exit(2)
    gens = len(s.symmetry)
    click.echo(
        f"{display_path(file)}: ok: sketch {s.name} for {topo.label}: "
        f"{len(s.connections)} inter-node connection(s) per node pair, "
        f"{len(s.relays)} relay rank(s), {gens} symmetry generator(s), "
        f"switch policy {s.switch_policy or 'none'}, "
        f"own data first {'yes' if s.own_data_first else 'no'}, "
        f"chunk-up {','.join(map(str, s.chunkup))}, size {format_size(s.size)}"
    )


@sketch.command("init")
@_sketch_topology
@click.option("--output", "-o", type=_OUTPUT, help="write the template here instead of printing it")
def sketch_init(topology_name: str, nodes: int, output: Path | None) -> None:
    """Write a commented sketch template holding the topology's default hints."""
    from ..synth.milp.sketch import sketch_template
    from ..topology.loader import load_topology
    from ..util.fileio import atomic_write_text

    text = sketch_template(load_topology(topology_name, nodes))
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        click.echo(f"wrote {display_path(output)}")

"""``taccl topology``: list, show, validate and import cluster topologies."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import TacclError
from ..util.fileio import display_path

if TYPE_CHECKING:
    pass


from .app import (
    _NODES,
    _OUTPUT,
    MAX_BANDWIDTH_GBS,
    MIN_IMPORT_GBS,
    _Finite,
    _Group,
    fault_options,
    load_cluster,
    main,
)


# -- topology -----------------------------------------------------------------
@main.group(cls=_Group)
def topology() -> None:
    """List, show and validate topologies."""


@topology.command("list")
def topology_list() -> None:
    """List the built-in topologies: node types, then example clusters."""
    from ..topology.loader import builtin_names, cluster_names, load_topology

    width = max(map(len, [*builtin_names(), *cluster_names()]), default=10)
    for name in builtin_names():
        topo = load_topology(name)
        click.echo(f"{name:<{width}} {topo.gpus_per_node:>4} GPUs/node  {topo.description}")
    for name in cluster_names():
        topo = load_topology(name)
        click.echo(
            f"{name:<{width}} {topo.num_ranks:>4} GPUs on {topo.nodes} nodes  {topo.description}"
        )


@topology.command("show")
@click.argument("name")
@click.option("--nodes", "-n", default=1, show_default=True, type=_NODES)
@click.option("--png", "png", type=_OUTPUT, help="Also draw the topology to this PNG file.")
@fault_options
def topology_show(
    name: str, nodes: int, png: Path | None, exclude: tuple[str, ...], derate: tuple[str, ...]
) -> None:
    """Describe a built-in topology or a YAML file (with --exclude/--derate: as it is
    with those parts failed or slowed, as ``taccl synthesize`` takes them)."""
    from ..topology.loader import describe
    from ..util.fileio import check_outputs, write_outputs

    check_outputs([png])
    topo = load_cluster(name, nodes, exclude, derate)
    if png:  # drawn and written first: a failure prints nothing on stdout
        from ..viz.topology import topology_png

        write_outputs([(png, topology_png(topo))])
    click.echo(describe(topo))
    if png:
        click.echo(f"wrote {display_path(png)}")


@topology.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def topology_validate(files: tuple[Path, ...]) -> None:
    """Check topology YAML files; print one line per file."""
    from ..topology.loader import validate_file

    bad = 0
    for path in files:
        try:
            validate_file(path)
            click.echo(f"{display_path(path)}: ok")
        except TacclError as exc:
            bad += 1
            click.echo(str(exc), err=True)
    if bad:
        sys.exit(1)


@topology.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(["nvidia-smi"]))
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--nics",
    "nics_spec",
    metavar="SPEC",
    help="compute NICs: comma-separated names from the NIC Legend (mlx5_0) or "
    "columns (NIC0), or 'none'  [default: NICs with a GPU at PIX/PXB]",
)
@click.option("--name", help="topology name  [default: the input file's stem]")
@click.option(
    "--nvlink-bw",
    type=_Finite(MIN_IMPORT_GBS, MAX_BANDWIDTH_GBS),
    metavar="GB/S",
    help="per-NVLink bandwidth  [default: guessed generation's, 20 or 25]",
)
@click.option(
    "--pcie-bw",
    type=_Finite(MIN_IMPORT_GBS, MAX_BANDWIDTH_GBS),
    metavar="GB/S",
    help="PCIe x16 bandwidth for PIX/PXB pairs  [default: 16 (Gen3) with "
    "P100/V100, 32 (Gen4) with A100 or no NVLink, 64 (Gen5) with H100]",
)
@click.option(
    "--nic-bw",
    metavar="GB/S",
    type=_Finite(MIN_IMPORT_GBS, MAX_BANDWIDTH_GBS),
    help="bandwidth of each NIC  [default: 12.5 with P100/V100, 25 with A100 or "
    "no NVLink, 50 with H100]",
)
@click.option(
    "--pcie/--no-pcie",
    default=True,
    show_default=True,
    help="link GPU pairs without NVLink over PCIe",
)
@click.option("--output", "-o", type=_OUTPUT, help="write the YAML here instead of printing it")
def topology_import(fmt, file, nics_spec, name, nvlink_bw, pcie_bw, nic_bw, pcie, output) -> None:
    """Convert `nvidia-smi topo -m` output (FILE, or - for stdin) to a topology YAML.

    \b
    Mapping (per direction; the YAML's header lists every assumption):
    - NV# pair: NVLink link, count #, per-link bandwidth of the generation guessed
      from the NVLinks per GPU (<=4 P100 20 GB/s; <=6 V100, <=12 A100 25 GB/s;
      more H100 25 GB/s, alpha 0.5 us, else 0.7 us)
    - every pair the same NV#, 3+ GPUs, # x (GPUs-1) > 18 (e.g. NV12 or NV18 with
      8 GPUs): one NVSwitch, # x per-link bandwidth per GPU port
    - pairs without NVLink: PCIe links; PIX/PXB 1x --pcie-bw, alpha 1 us;
      PHB/NODE 0.75x, alpha 1.5 us; SYS/SOC 0.5x, alpha 2.5 us
    - NICs serve their nearest GPUs (PIX, PXB, PHB, NODE, SYS); NICs sharing
      the same nearest GPUs split them; --nic-bw each, alpha 2 us, full-bisection
      network
    """
    from ..topology.nvsmi import import_nvidia_smi, read_matrix
    from ..util.fileio import atomic_write_text

    data, source = read_matrix(file)
    nics = None if nics_spec is None else [n.strip() for n in nics_spec.split(",") if n.strip()]
    text, topo = import_nvidia_smi(
        data.decode("utf-8", errors="replace"),
        source,
        name=name,
        nics=nics,
        nvlink_bw=nvlink_bw,
        pcie_bw=pcie_bw,
        nic_bw=nic_bw,
        pcie=pcie,
    )
    if output is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        click.echo(f"wrote {display_path(output)}: {topo.description}")

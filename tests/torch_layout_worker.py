"""One rank of tests/test_torch_layouts.py: RANK WORLD INITFILE EXAMPLES.

Hypothesis runs in rank 0. Each case it draws (a collective, dtype, shape, tensor layouts,
reduce op, root, splits, async or not) goes to every rank, which runs it twice: on the
default Gloo group with contiguous tensors (the reference: Gloo itself mishandles some
layouts, e.g. stepped slices) and on a "taccl" group with the drawn layouts. Every output is
a view into a larger buffer, so the check "the buffer equals its old contents with the view
set to the reference" also catches writes outside the view. Where the reference raises,
taccl must raise too; outputs whose elements share memory must be refused. Rank 0 ends with
``rank 0: K cases``.
"""

import contextlib
import datetime
import math
import sys

import torch
import torch.distributed as dist
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import taccl_py.torch  # noqa: F401 - registers "taccl"
from taccl_py.errors import TacclError

SUPPORTED = (
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "int8",
    "uint8",
    "int32",
    "int64",
    "bool",
    "complex64",
)
REFUSED = ("int16", "uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2")
LAYOUTS = (
    "contiguous",
    "offset",
    "transposed",
    "narrowed",
    "stepped",
    "channels_last",
    "expanded",
    "parameter",
)
OPS = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR")
REDUCING = ("all_reduce", "reduce_scatter_tensor", "reduce_scatter", "reduce")
VARIANTS = {
    "all_reduce": ("plain", "coalesced"),
    "all_gather_into_tensor": ("plain", "inplace", "stacked", "coalesced"),
    "reduce_scatter_tensor": ("plain", "inplace", "stacked", "coalesced"),
    "all_to_all_single": ("even", "uneven"),
    "all_to_all": ("even", "uneven"),
}
COLLECTIVES = (
    "all_reduce",
    "all_gather_into_tensor",
    "all_gather",
    "reduce_scatter_tensor",
    "reduce_scatter",
    "all_to_all_single",
    "all_to_all",
    "broadcast",
    "reduce",
    "gather",
    "scatter",
    "barrier",
)


@st.composite
def cases(draw, n: int) -> dict:
    coll = draw(st.sampled_from(COLLECTIVES))
    dims = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(1, 3), min_size=dims, max_size=dims))
    if dims and draw(st.integers(0, 7)) == 7:  # an empty tensor
        shape[draw(st.integers(0, dims - 1))] = 0
    variant = draw(st.sampled_from(VARIANTS.get(coll, ("plain",))))
    # expanded outputs are refused; where only some ranks have one (gather: the root;
    # uneven all-to-all: where blocks have 2 rows or more) the others would wait in vain
    one_sided = coll == "gather" or variant == "uneven"
    outs = tuple(x for x in LAYOUTS if x != "expanded" or not one_sided)
    return {
        "coll": coll,
        # refused dtypes drawn about one time in six
        "dtype": draw(st.sampled_from(SUPPORTED * 3 + REFUSED)),
        "shape": tuple(shape),
        "out": draw(st.sampled_from(outs)),
        "in": draw(st.sampled_from(LAYOUTS)),
        "op": draw(st.sampled_from(OPS)) if coll in REDUCING else "SUM",
        "variant": variant,
        "rows": draw(st.lists(st.integers(0, 2), min_size=n * n, max_size=n * n)),
        "root": draw(st.integers(0, n - 1)),
        "async": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def layout(name: str, shape: tuple) -> tuple:
    """(shape of a base buffer, base -> view of ``shape`` in layout ``name``)."""
    d = len(shape)
    if name == "offset":
        return (math.prod(shape) + 3,), lambda b: b[3:].view(shape)
    if name == "transposed" and d >= 2:
        return shape[::-1], lambda b: b.permute(*reversed(range(d)))
    if name == "narrowed" and d >= 1:  # columns of a wider tensor
        return (*shape[:-1], shape[-1] + 2), lambda b: b[..., 1 : shape[-1] + 1]
    if name == "stepped":
        if d == 0:
            return (3,), lambda b: b[1]
        return (*shape[:-1], 2 * shape[-1] + 1), lambda b: b[..., 1::2]
    if name == "channels_last" and d == 4:
        return (shape[0], *shape[2:], shape[1]), lambda b: b.permute(0, 3, 1, 2)
    if name == "expanded" and d >= 1:
        return (*shape[:-1], 1), lambda b: b.expand(shape)
    return shape, lambda b: b


class Placed:
    """A tensor in a given layout inside a base buffer filled with a sentinel; ``values``
    (expanded layouts: their first column) are written into it."""

    def __init__(self, name: str, shape: tuple, dtype: torch.dtype, values=None) -> None:
        base_shape, self.view = layout(name, shape)
        base = torch.full(base_shape, 7, dtype=dtype)
        expanded = name == "expanded" and len(shape) > 0
        if values is not None and expanded and shape[-1]:
            base.copy_(values[..., :1])
        elif values is not None and not expanded:
            self.view(base).copy_(values)
        self.before = base.clone()
        self.base = (
            torch.nn.Parameter(base, requires_grad=dtype.is_floating_point)
            if name == "parameter"
            else base
        )
        self.tensor = self.view(self.base)
        self.part = lambda t: t  # the part of the tensor an operation writes

    def mismatch(self, want: torch.Tensor) -> str | None:
        """Where the buffer differs from its old contents with the part set to ``want``."""
        expect = self.before.clone()
        target = self.part(self.view(expect))
        target.copy_(want.reshape(target.shape))
        got = self.base.detach()
        if torch.equal(got, expect):
            return None
        return f"buffer {got.tolist()} != expected {expect.tolist()}"


class Run:
    """One side of a case: the reference (contiguous tensors on Gloo) or taccl (layouts)."""

    def __init__(self, case: dict, rank: int, n: int, group, layouts: bool) -> None:
        self.case, self.rank, self.n, self.group, self.layouts = case, rank, n, group, layouts
        self.dtype = getattr(torch, case["dtype"])
        self.op = getattr(dist.ReduceOp, case["op"])
        self.salt = 0
        self.written: list = []  # every tensor written to

    def values(self, shape: tuple) -> torch.Tensor:
        """This rank's next values: small integers, exact under any order of reduction."""
        self.salt += 1
        g = torch.Generator().manual_seed(self.case["seed"] * 7919 + self.rank * 131 + self.salt)
        unsigned = self.dtype in (torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.uint64)
        hi = 2 if self.case["op"] == "PRODUCT" else 8 if self.case["coll"] in REDUCING else 100
        lo = 0 if unsigned else -hi

        def draw():  # the same values for any shape of as many elements
            return torch.randint(lo, hi + 1, (math.prod(shape),), generator=g).view(shape)

        if self.dtype.is_complex:
            return torch.complex(draw().float(), draw().float()).to(self.dtype)
        return draw().to(self.dtype)

    def logical(self, side: str, values: torch.Tensor) -> torch.Tensor:
        """What a tensor in the layout of ``side`` holds once ``values`` are written."""
        if self.case[side] == "expanded" and values.dim() and values.shape[-1]:
            return values[..., :1].expand(values.shape)
        return values

    def place(self, side: str, shape: tuple, values=None) -> Placed:
        values = None if values is None else self.logical(side, values)
        name = self.case[side] if self.layouts else "contiguous"
        return Placed(name, shape, self.dtype, values)

    def out(self, shape: tuple, values=None) -> Placed:
        placed = self.place("out", shape, values)
        self.written.append(placed.tensor)
        return placed

    def inp(self, shape: tuple) -> Placed:
        return self.place("in", shape, self.values(shape))

    def call(self, fn, *args, **kw) -> None:
        if self.case["async"]:
            fn(*args, group=self.group, async_op=True, **kw).wait()
        else:
            fn(*args, group=self.group, **kw)

    def cat_shape(self, block: tuple, stacked: bool) -> tuple:
        """n blocks concatenated on dim 0 (or stacked; 0-d blocks always are)."""
        if stacked or not block:
            return (self.n, *block)
        return (self.n * block[0], *block[1:])

    def outputs(self) -> list:
        """Run the case; the Placed outputs this rank holds a defined result in."""
        c = self.case
        coll, shape, variant, root = c["coll"], c["shape"], c["variant"], c["root"]
        if not self.layouts and variant == "inplace":
            variant = "plain"  # the reference: separate tensors
        if variant == "coalesced":
            outs = []
            manager = (
                dist._coalescing_manager(group=self.group)
                if self.layouts
                else contextlib.nullcontext()
            )
            try:
                with manager:
                    for _ in range(2):
                        outs += self.one(coll, shape, "plain", root, call=self.plain_call)
            finally:  # torch leaves the group coalescing when an error leaves the block
                dist.distributed_c10d._world.pg_coalesce_state.pop(self.group, None)
            return outs
        return self.one(coll, shape, variant, root)

    def plain_call(self, fn, *args, **kw) -> None:
        fn(*args, group=self.group, **kw)

    def one(self, coll, shape, variant, root, call=None) -> list:
        call, n, r, op = call or self.call, self.n, self.rank, self.op
        a2a_block = shape or (1,)
        rows = [self.case["rows"][q * n : (q + 1) * n] for q in range(n)]  # rows[q][p]: q to p
        if coll == "all_reduce":
            t = self.out(shape, self.values(shape))
            call(dist.all_reduce, t.tensor, op=op)
            return [t]
        if coll in ("all_gather_into_tensor", "reduce_scatter_tensor"):
            gather = coll == "all_gather_into_tensor"
            big = self.cat_shape(shape, variant == "stacked")
            if variant == "inplace":  # this rank's block of the big tensor is the small one

                def block(t):
                    return t.narrow(0, r * shape[0], shape[0]) if shape else t[r]

                if gather:
                    whole = self.out(big)
                    with torch.no_grad(), contextlib.suppress(RuntimeError):  # expanded
                        block(whole.tensor).copy_(self.logical("in", self.values(shape)))
                    whole.before = whole.base.detach().clone()
                    call(dist.all_gather_into_tensor, whole.tensor, block(whole.tensor))
                else:
                    whole = self.place("in", big, self.values(big))
                    whole.part = block
                    self.written.append(block(whole.tensor))
                    call(dist.reduce_scatter_tensor, block(whole.tensor), whole.tensor, op=op)
                return [whole]
            o, i = (self.out(big), self.inp(shape)) if gather else (self.out(shape), self.inp(big))
            ot, it = o.tensor, i.tensor
            if not self.layouts:  # Gloo takes blocks of 1 dimension at least, concatenated
                one = shape or (1,)
                cat = (n * one[0], *one[1:])
                ot, it = (ot.view(cat), it.view(one)) if gather else (ot.view(one), it.view(cat))
            if gather:
                call(dist.all_gather_into_tensor, ot, it)
            else:
                call(dist.reduce_scatter_tensor, ot, it, op=op)
            return [o]
        if coll == "all_gather":
            outs, i = [self.out(shape) for _ in range(n)], self.inp(shape)
            call(dist.all_gather, [o.tensor for o in outs], i.tensor)
            return outs
        if coll == "reduce_scatter":
            o, ins = self.out(shape), [self.inp(shape) for _ in range(n)]
            call(dist.reduce_scatter, o.tensor, [i.tensor for i in ins], op=op)
            return [o]
        if coll == "all_to_all_single":
            rest = a2a_block[1:]
            if variant == "even":
                big = (n * a2a_block[0], *rest)
                o, i = self.out(big), self.inp(big)
                call(dist.all_to_all_single, o.tensor, i.tensor)
            else:
                send, recv = rows[r], [rows[q][r] for q in range(n)]
                o, i = self.out((sum(recv), *rest)), self.inp((sum(send), *rest))
                call(dist.all_to_all_single, o.tensor, i.tensor, recv, send)
            return [o]
        if coll == "all_to_all":
            rest = a2a_block[1:]
            even = variant == "even"
            outs = [self.out(a2a_block if even else (rows[q][r], *rest)) for q in range(n)]
            ins = [self.inp(a2a_block if even else (rows[r][q], *rest)) for q in range(n)]
            if even or self.layouts:
                call(dist.all_to_all, [o.tensor for o in outs], [i.tensor for i in ins])
            else:  # Gloo's all_to_all refuses uneven lists: its all_to_all_single serves
                recv = torch.empty(sum(o.tensor.shape[0] for o in outs), *rest, dtype=self.dtype)
                call(
                    dist.all_to_all_single,
                    recv,
                    torch.cat([i.tensor for i in ins]),
                    [rows[q][r] for q in range(n)],
                    rows[r],
                )
                for o, part in zip(outs, recv.split([rows[q][r] for q in range(n)])):
                    o.tensor.copy_(part)
            return outs
        if coll == "broadcast":
            t = self.out(shape, self.values(shape))
            call(dist.broadcast, t.tensor, src=root)
            return [t]
        if coll == "reduce":
            t = self.out(shape, self.values(shape))
            call(dist.reduce, t.tensor, dst=root, op=op)
            return [t] if r == root else []  # other ranks' tensors are undefined
        if coll == "gather":
            outs = [self.out(shape) for _ in range(n)] if r == root else []
            i = self.inp(shape)
            call(dist.gather, i.tensor, [o.tensor for o in outs] if outs else None, dst=root)
            return outs
        if coll == "scatter":
            o = self.out(shape)
            ins = [self.inp(shape) for _ in range(n)] if r == root else []
            call(dist.scatter, o.tensor, [i.tensor for i in ins] if ins else None, src=root)
            return [o]
        call(dist.barrier)
        return []


def attempt(run: Run):
    """(outputs, None) or (None, the error it raised)."""
    try:
        return run.outputs(), None
    except Exception as exc:  # noqa: BLE001 - compared between the two sides
        return None, exc


def overlapping(t: torch.Tensor) -> bool:
    """Whether writing ``t`` writes some element twice (an expanded view)."""
    return t.numel() > 0 and any(s == 0 and k > 1 for s, k in zip(t.stride(), t.shape))


def check(case: dict, rank: int, n: int, taccl) -> str | None:
    """Run ``case`` on both sides; what differs, or None."""
    try:
        return compare(case, rank, n, taccl)
    except Exception as exc:  # noqa: BLE001 - a verdict, not a crash of this rank
        return f"checking failed: {exc!r}"


def compare(case: dict, rank: int, n: int, taccl) -> str | None:
    ref, ref_err = attempt(Run(case, rank, n, None, False))
    run = Run(case, rank, n, taccl, True)
    got, err = attempt(run)
    if any(map(overlapping, run.written)):  # torch refuses to write such tensors: so must we
        refused = isinstance(err, TacclError) and "share memory" in str(err)
        if refused or err is not None and ref_err is not None:
            return None
        return f"an output shares memory, not refused: {err!r}"
    if ref_err is not None:
        return None if err is not None else f"Gloo raised {ref_err!r}, taccl did not"
    if err is not None:
        return f"taccl raised {err!r}"
    if len(got) != len(ref):
        return f"{len(got)} outputs, {len(ref)} in the reference"
    for k, (g, want) in enumerate(zip(got, ref)):
        bad = g.mismatch(want.tensor.detach())
        if bad:
            return f"output {k}: {bad}"
    return None


def follow(rank: int, n: int, taccl) -> None:
    """Run the cases rank 0 sends until it sends None; return each verdict to it."""
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        if box[0] is None:
            dist.gather_object(None, None, dst=0)
            return
        dist.gather_object(check(box[0], rank, n, taccl), None, dst=0)


def main() -> None:
    rank, n, initfile, examples = (
        int(sys.argv[1]),
        int(sys.argv[2]),
        sys.argv[3],
        int(sys.argv[4]),
    )
    timeout = datetime.timedelta(seconds=20)
    dist.init_process_group(
        "gloo", init_method=f"file://{initfile}", rank=rank, world_size=n, timeout=timeout
    )
    taccl = dist.new_group(backend="taccl", timeout=timeout)

    if rank != 0:
        follow(rank, n, taccl)
        dist.destroy_process_group()
        return

    def everywhere(case) -> list:
        """Send ``case`` to every rank (None: stop); every rank's verdict."""
        dist.broadcast_object_list([case], src=0)
        verdicts = [None] * n
        dist.gather_object(None if case is None else check(case, 0, n, taccl), verdicts, dst=0)
        if any(verdicts):  # the first failure, before hypothesis shrinks it
            print(f"case {case}: {verdicts}", file=sys.stderr, flush=True)
        return verdicts

    count = 0

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
    )
    @given(cases(n))
    @example(
        {
            "coll": "all_reduce",
            "dtype": "float32",
            "shape": (6, 4),  # issue 16's case
            "out": "transposed",
            "in": "contiguous",
            "op": "SUM",
            "variant": "plain",
            "rows": [0] * (n * n),
            "root": 0,
            "async": False,
            "seed": 1,
        }
    )
    def matches_gloo(case):
        nonlocal count
        count += 1
        verdicts = everywhere(case)
        assert verdicts == [None] * n, f"{case}: " + "; ".join(
            f"rank {q}: {v}" for q, v in enumerate(verdicts) if v
        )

    try:
        matches_gloo()
    finally:
        everywhere(None)
    print(f"rank 0: {count} cases", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

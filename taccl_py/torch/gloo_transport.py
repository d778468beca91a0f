"""Plan messages over an inner Gloo process group (the CPU transport of the torch backend).

Gloo's send/recv ``Work`` objects neither report completion by themselves nor offer futures,
so each posted request is waited on by a thread of a pool. The pool may grow to more threads
than any plan has requests in flight on one rank (threads start lazily and are reused): a
smaller pool could park every thread on late messages while a needed one has already arrived.
``progress`` then waits on those threads' futures.
"""

from __future__ import annotations

import concurrent.futures as cf
import re

import numpy as np
import torch

from ..errors import TacclError

#: threads the pool may grow to: one per request in flight (plans post far fewer per rank)
MAX_IN_FLIGHT = 4096


class GlooTransport:
    """:class:`~taccl_py.runtime.executor.Transport` over ``torch`` Gloo point-to-point."""

    tag_ub = 2**31 - 1

    def __init__(self, pg) -> None:
        self.pg = pg
        self.pool = cf.ThreadPoolExecutor(
            max_workers=MAX_IN_FLIGHT, thread_name_prefix="taccl-gloo"
        )

    def _wait(self, work, what: str):
        return self.pool.submit(_finish, work, what)

    def irecv(self, target: np.ndarray, peer: int, tag: int):
        what = f"receive from rank {peer}"
        return self._wait(_post(self.pg.recv, target, peer, tag, what), what)

    def isend(self, data: np.ndarray, peer: int, tag: int):
        what = f"send to rank {peer}"
        return self._wait(_post(self.pg.send, np.ascontiguousarray(data), peer, tag, what), what)

    def progress(self, reqs: list, block: float) -> list[int]:
        if block > 0 and not any(f.done() for f in reqs):
            cf.wait(reqs, timeout=block, return_when=cf.FIRST_COMPLETED)
        done = [i for i, f in enumerate(reqs) if f.done()]
        for i in done:
            error = reqs[i].exception()
            if error is not None:
                raise TacclError(str(error))
        return done

    def close(self) -> None:
        """Stop the waiting threads once the requests they wait on end."""
        self.pool.shutdown(wait=True)

    def cancel(self, reqs: list) -> None:
        """Gloo cannot withdraw a posted receive; its own timeout ends the waiting threads."""


def _post(op, array: np.ndarray, peer: int, tag: int, what: str):
    try:
        return op([torch.from_numpy(array.view(np.uint8))], peer, tag)
    except RuntimeError as exc:  # the connection is already gone
        raise TacclError(f"{what} failed: {_gist(str(exc))}") from None


def _finish(work, what: str) -> None:
    try:
        work.wait()
    except RuntimeError as exc:
        raise TacclError(f"{what} failed: {_gist(str(exc))}") from None


def _gist(message: str) -> str:
    """Gloo's error without its source location and its generic advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", message.strip())
    return text.split(". ", 1)[0].splitlines()[0] if text else "unknown error"

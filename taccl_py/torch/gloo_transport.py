"""Plan messages over an inner Gloo process group (the CPU transport of the torch backend).

Gloo's send/recv ``Work`` objects report completion only to ``wait``, so the executor waits
on them directly (:meth:`GlooTransport.wait`, GIL released): no thread hand-off per message.
A wait that times out makes Gloo close the connection, so it is only ever the executor's
final "no progress" verdict. Requests not yet waited on are remembered, and
:meth:`GlooTransport.close` waits for them, so that no Gloo thread still writes into (or
reads) a buffer after the group is gone.
"""

from __future__ import annotations

import datetime
import re

import numpy as np
import torch

from ..errors import TacclError


class GlooTransport:
    """:class:`~taccl_py.runtime.executor.Transport` over ``torch`` Gloo point-to-point."""

    tag_ub = 2**31 - 1

    def __init__(self, pg) -> None:
        self.pg = pg
        self._pending: dict[int, tuple] = {}  # id(request) -> request, until waited on

    def irecv(self, target: np.ndarray, peer: int, tag: int):
        return self._post(self.pg.recv, target, peer, tag, f"receive from rank {peer}")

    def isend(self, data: np.ndarray, peer: int, tag: int):
        return self._post(self.pg.send, data, peer, tag, f"send to rank {peer}")

    def _post(self, op, array: np.ndarray, peer: int, tag: int, what: str):
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.uint8))
        try:
            work = op([tensor], peer, tag)
        except RuntimeError as exc:  # the connection is already gone
            raise TacclError(f"{what} failed: {_gist(str(exc))}") from None
        req = (work, what, tensor)  # the tensor stays referenced until the request ends
        self._pending[id(req)] = req
        return req

    def wait(self, req, timeout: float | None) -> bool:
        """Block until ``req`` completes (True) or ``timeout`` seconds pass (False; None:
        the inner group's own timeout, then an error)."""
        work, what, _ = req
        try:
            work.wait() if timeout is None else work.wait(datetime.timedelta(seconds=timeout))
        except RuntimeError as exc:
            self._pending.pop(id(req), None)
            if "Timed out" in str(exc):
                return False
            raise TacclError(f"{what} failed: {_gist(str(exc))}") from None
        self._pending.pop(id(req), None)
        return True

    def progress(self, reqs: list, block: float) -> list[int]:
        """Gloo requests cannot be polled: waits for the first one (up to Gloo's timeout)."""
        if reqs and not self.wait(reqs[0], None):
            raise TacclError(f"{reqs[0][1]} timed out")
        return [0] if reqs else []

    def cancel(self, reqs: list) -> None:
        """Gloo cannot withdraw a posted receive; its timeout ends it (see :meth:`close`)."""

    def close(self) -> None:
        """Wait for every request not yet waited on (each ends by completing, failing or
        Gloo's own timeout)."""
        for work, _, _ in list(self._pending.values()):
            try:
                work.wait()
            except RuntimeError:
                pass
        self._pending.clear()


def _gist(message: str) -> str:
    """Gloo's error without its source location and its generic advice."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", message.strip())
    return text.split(". ", 1)[0].splitlines()[0] if text else "unknown error"

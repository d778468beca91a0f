"""User-facing errors. The CLI prints their message on one line, never a traceback."""


class TacclError(Exception):
    """Base class for every error caused by the user's input or environment."""


class TopologyError(TacclError):
    """A topology file or name is invalid, or a topology cannot support a request."""


class CollectiveError(TacclError):
    """An unknown collective or an invalid chunk-up / rank count."""


class AlgorithmError(TacclError):
    """An algorithm (IR) is inconsistent: a send of data the sender does not hold, etc."""


class PlanError(TacclError):
    """A plan violates the MSCCL XML format or the MSCCL runtime's limits."""


class VerificationError(TacclError):
    """A plan does not implement its collective (wrong data, race, deadlock, ...)."""


class SketchError(TacclError):
    """A communication sketch file or name is invalid, or does not fit its topology."""

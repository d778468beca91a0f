"""File output, all or nothing: regular files are replaced atomically, streams written into.

A command's outputs are written together by :func:`write_outputs`: every regular file is
staged in a temporary file beside its target and renamed over it only once all of them are
staged and every stream (a character device, FIFO, ``/dev/stdout``) is written, so a
failure leaves no output behind. A symlink's target is replaced, not the link; an existing
file keeps its mode.

>>> from tempfile import TemporaryDirectory
>>> with TemporaryDirectory() as d:
...     [p.name for p in write_outputs([(f"{d}/a.xml", "<algo/>"), (f"{d}/a.json", "{}")])]
['a.xml', 'a.json']
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TacclError

_FD_PATH = re.compile(r"/dev/(stdin|stdout|stderr)|/(?:dev|proc/self)/fd/(\d+)")
#: paths under these are streams (``/dev/stdout``, ``/proc/self/fd/1``): written into
_STREAM_ROOTS = ("/dev/", "/proc/")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fail(path: Path, exc: OSError) -> TacclError:
    return TacclError(f"{display_path(path)}: cannot write: {exc.strerror or exc}")


@dataclass(frozen=True)
class _Target:
    """Where one output goes: a stream written in place, or a regular file replaced."""

    given: Path
    path: Path  # the symlink-resolved target (the stream itself for a stream)
    stream: bool
    mode: int  # permission bits the replaced file gets

    @property
    def key(self) -> object:
        """Identity of the file: two outputs with the same key collide."""
        try:
            st = os.stat(self.path)
            return (st.st_dev, st.st_ino)
        except OSError:
            return str(self.path)


def _target(given: str | Path) -> _Target:
    """Classify an output path and check, before any work, that it can be written."""
    if not str(given):
        raise TacclError("an output path is empty")
    if str(given).endswith(os.sep):
        raise TacclError(f"{display_path(given)}: names a directory; give a file name")
    given = Path(given)
    absolute = os.path.abspath(given)
    try:
        st = os.stat(given)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _fail(given, exc) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise TacclError(f"{display_path(given)}: cannot write: is a directory")
    if absolute.startswith(_STREAM_ROOTS) or (st is not None and not stat.S_ISREG(st.st_mode)):
        if st is None:
            raise TacclError(f"{display_path(given)}: no such device or stream")
        return _Target(given, given, True, 0)
    path = Path(os.path.realpath(given))
    if not path.parent.is_dir():
        raise TacclError(
            f"{display_path(given)}: directory {display_path(path.parent)} does not exist"
        )
    if st is not None and not os.access(path, os.W_OK):
        raise TacclError(f"{display_path(given)}: cannot write: permission denied")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise TacclError(
            f"{display_path(given)}: cannot write in {display_path(path.parent)}: permission denied"
        )
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~_umask()
    return _Target(given, path, False, mode)


def check_outputs(paths: Sequence[str | Path | None]) -> None:
    """Fail now, before long work, if the outputs cannot all be written (``None``: absent).

    Two outputs naming the same file (through a symlink or ``./``, too) are an error.

    >>> from tempfile import TemporaryDirectory
    >>> with TemporaryDirectory() as d:
    ...     check_outputs([f"{d}/a.xml", None, f"{d}/./a.xml"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    taccl_py.errors.TacclError: .../a.xml and .../a.xml are the same file: give each ...
    """
    seen: dict[object, Path] = {}
    for given in paths:
        if given is None:
            continue
        t = _target(given)
        if t.key in seen:
            raise TacclError(
                f"{display_path(seen[t.key])} and {display_path(t.given)} are "
                f"the same file: give each "
                f"output its own path"
            )
        seen[t.key] = t.given


def _own_fd(path: Path) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout``, ``/dev/fd/3``,
    or the very file standard output goes to), else None."""
    m = _FD_PATH.fullmatch(os.path.abspath(path))
    if m:
        return ("stdin", "stdout", "stderr").index(m[1]) if m[1] else int(m[2])
    try:
        st = os.stat(path)
        for fd in (1, 2):
            own = os.fstat(fd)
            if (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino):
                return fd
    except OSError:
        pass
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_stream(t: _Target, data: bytes) -> None:
    """Write ``data`` into a device, FIFO or ``/dev/stdout``; a FIFO nobody reads is an error.

    A stream this process already holds (its standard output, say) is written through that
    descriptor, so the output lands where the process's other output goes."""
    fd = _own_fd(t.path)
    try:
        if fd is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            _write_all(fd, data)
            return
        fd = os.open(t.path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise TacclError(f"{display_path(t.given)}: no process is reading it") from None
        raise _fail(t.given, exc) from None
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        _write_all(fd, data)
    except OSError as exc:
        raise _fail(t.given, exc) from None
    finally:
        os.close(fd)


def _stage(t: _Target, data: bytes, suffix: str) -> str:
    """Write ``data`` to a temporary file beside the target; return its path."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{t.path.name}.", suffix=suffix, dir=t.path.parent)
    except OSError as exc:
        raise _fail(t.given, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), t.mode)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _fail(t.given, exc) from None
    return tmp


def write_outputs(outputs: Sequence[tuple[str | Path, bytes | str]]) -> list[Path]:
    """Write every ``(path, data)`` (str is written as UTF-8), or none of the regular files.

    Returns the paths as given. Streams are written before any file is renamed into
    place, so a failing stream (``/dev/full``) leaves no regular output either.
    """
    check_outputs([p for p, _ in outputs])
    targets = [(_target(p), d.encode("utf-8") if isinstance(d, str) else d) for p, d in outputs]
    staged: list[tuple[str, _Target]] = []
    try:
        for t, data in targets:
            if not t.stream:
                staged.append((_stage(t, data, t.path.suffix or ".tmp"), t))
        for t, data in targets:
            if t.stream:
                _write_stream(t, data)
        for tmp, t in staged:
            try:
                os.replace(tmp, t.path)
            except OSError as exc:
                raise _fail(t.given, exc) from None
    finally:
        for tmp, _ in staged:
            Path(tmp).unlink(missing_ok=True)
    return [t.given for t, _ in targets]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, ``\\n`` line ends) to ``path``, all or nothing.

    >>> from tempfile import TemporaryDirectory
    >>> with TemporaryDirectory() as d:
    ...     atomic_write_text(f"{d}/a.txt", "one\\n").read_text()
    'one\\n'
    """
    return write_outputs([(path, text)])[0]


#: what :func:`read_input` calls a file that is not a regular one
_SPECIAL_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _not_regular(path: str, mode: int, what: str) -> str:
    kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "a special file")
    return f"{path}: is {kind}, not a {what}"


def read_input(
    path: str | Path, limit: int, what: str, error: type[TacclError] = TacclError
) -> bytes:
    """The bytes of the input file ``path``, refused with a one-line ``error`` if it is not
    a regular file (a directory, FIFO, socket or device: found by a stat, never opened or
    waited on) or holds more than ``limit`` bytes (never more than ``limit + 1`` are read).
    ``what`` names the file's role in messages, e.g. "topology file".

    >>> read_input("/", 1024, "plan file")
    Traceback (most recent call last):
    taccl_py.errors.TacclError: /: is a directory, not a plan file
    """
    shown = display_path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise error(_not_regular(shown, info.st_mode, what))
        if info.st_size > limit:
            raise error(
                f"{shown}: too large for a {what}: {info.st_size} bytes, the limit is {limit}"
            )
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if not stat.S_ISREG(mode):  # replaced since the stat
                raise error(_not_regular(shown, mode, what))
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{shown}: cannot read: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise error(f"{shown}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if len(data) > limit:
        raise error(f"{shown}: too large for a {what}: over the limit of {limit} bytes")
    return data


#: characters a path may hold that would break a one-line message or the terminal:
#: controls (a newline, say) and the surrogates of undecodable file names
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def display_path(path: str | Path) -> str:
    """``path`` for a one-line message, unprintable characters escaped as Python does
    (``a\\nb`` for a newline).

    >>> print(display_path("plans/a\\nb.xml"))
    plans/a\\nb.xml
    """
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], os.fspath(path))

"""Parsing and printing of byte sizes (nccl-tests convention: 1K = 1024 bytes)."""

from __future__ import annotations

import os
import re
from fractions import Fraction

from ..errors import TacclError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
#: largest size in bytes (NCCL's counts are 64-bit signed)
MAX_SIZE = (1 << 63) - 1
_MAX_DIGITS = 40
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'64M' -> 67108864; accepts K/M/G/T with optional B/iB suffix, below 2^63 bytes.

    >>> parse_size("1.5K"), parse_size("64MiB"), parse_size("1g")
    (1536, 67108864, 1073741824)
    >>> parse_size("0.5")
    Traceback (most recent call last):
    taccl_py.errors.TacclError: bad size '0.5': must be a whole number of bytes >= 1
    """
    m = _SIZE.match(str(text))
    if not m:
        raise TacclError(f"bad size {text!r}: use a number with an optional K, M, G or T suffix")
    if len(m.group(1)) > _MAX_DIGITS:
        raise TacclError(f"bad size {str(text)[:24]!r}...: must be below 2^63 bytes")
    value = Fraction(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 1 or value.denominator != 1:
        raise TacclError(f"bad size {text!r}: must be a whole number of bytes >= 1")
    if value > MAX_SIZE:
        raise TacclError(f"bad size {text!r}: must be below 2^63 bytes")
    return int(value)


def format_size(nbytes: float) -> str:
    """67108864 -> '64M' (largest unit that divides evenly, else one decimal).

    >>> format_size(67108864), format_size(1536), format_size(1000)
    ('64M', '1.5K', '1000')
    >>> parse_size(format_size(3 << 40)) == 3 << 40
    True
    """
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if nbytes >= scale:
            q = nbytes / scale
            return f"{q:.0f}{unit}" if q == int(q) else f"{q:.1f}{unit}"
    return f"{nbytes:.0f}"


def host_memory() -> int:
    """Bytes of physical memory on this host.

    >>> host_memory() > 0
    True
    """
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

"""Parsing and printing of byte sizes (nccl-tests convention: 1K = 1024 bytes)."""

from __future__ import annotations

import re

from .errors import TacclError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'64M' -> 67108864; accepts K/M/G/T with optional B/iB suffix."""
    m = _SIZE.match(str(text))
    if not m:
        raise TacclError(f"bad size {text!r}: use a number with an optional K, M, G or T suffix")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value < 1 or value != int(value):
        raise TacclError(f"bad size {text!r}: must be a whole number of bytes >= 1")
    return int(value)


def format_size(nbytes: float) -> str:
    """67108864 -> '64M' (largest unit that divides evenly, else one decimal)."""
    for unit in ("T", "G", "M", "K"):
        scale = _UNITS[unit]
        if nbytes >= scale:
            q = nbytes / scale
            return f"{q:.0f}{unit}" if q == int(q) else f"{q:.1f}{unit}"
    return f"{nbytes:.0f}"

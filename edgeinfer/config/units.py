"""Byte sizes as people write them in models.toml (``"8GiB"``, ``"512 MB"``, ``1073741824``)."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_bytes(value: object) -> int:
    """An int of bytes from an int or a string with an optional SI (kB, GB) or IEC (KiB, GiB)
    suffix; raises ValueError naming the accepted forms (pydantic turns it into a config error)."""
    if isinstance(value, bool):
        raise ValueError("must be a number of bytes or a size like '8GiB'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("must be positive")
        return value
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be a number of bytes or a size like '8GiB', got {value!r}")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0])
    scale = (1024 if "I" in unit else 1000) ** power
    size = int(number * scale)
    if size <= 0:
        raise ValueError("must be positive")
    return size

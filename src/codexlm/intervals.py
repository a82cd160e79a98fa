"""Time intervals in params (`train.checkpoint_every: 30m`): one parser for the schema that
validates them and the loop that uses them (which must not need pydantic)."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600}


def interval_seconds(value: int | str) -> float | None:
    """Seconds of a `train.checkpoint_every` time interval ("30m": 1800.0); None for a
    number of steps or a string that is no positive interval."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh])", value) if isinstance(value, str) else None
    seconds = float(m[1]) * _UNITS[m[2]] if m else 0.0
    return seconds if seconds > 0 else None

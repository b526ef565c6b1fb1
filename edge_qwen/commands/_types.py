"""argparse types for numbers with a valid range, so a bad value is a usage error (exit 2, one line,
JSON under ``--json``) at parse time instead of a traceback or a silent clamp later."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_in_range(low: int, high: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An argparse ``type`` accepting integers in ``[low, high]`` (no upper bound when ``high`` is None)."""
    bounds = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {value}")
        return value

    parse.__name__ = what
    return parse


positive_int = int_in_range(1)
non_negative_int = int_in_range(0)
tcp_port = int_in_range(1, 65535, "a TCP port")


def positive_float(text: str) -> float:
    """An argparse ``type`` for a number > 0 (a rate, a speed)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value

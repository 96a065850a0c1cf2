"""Argument types for the command line: whole numbers with a clear one-line refusal."""

from __future__ import annotations

import argparse
import math
import re

#: Upper bound on counts a user may ask for (steps, seeds, repeats).
MAX_COUNT = 10_000_000


def nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def pos_int(text: str) -> int:
    value = nonneg_int(text)
    if value < 1 or value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a number in [1, {MAX_COUNT}], got {value}")
    return value


def pos_float(text: str) -> float:
    """A finite number > 0 (seconds, intervals)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


#: What ``kasmina db upgrade --revision`` / ``downgrade`` take: ``head``, ``heads``, ``base``,
#: a revision id (or its prefix), or a relative step such as ``-1``. Alembic asserts, rather
#: than raising its CommandError, on other shapes ('', '@', 'head-1', 'x@', 'base+0').
_REVISION = re.compile(r"[A-Za-z0-9_]+|[+-][0-9]{1,6}")


def revision(text: str) -> str:
    if not _REVISION.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"expected head, base, a revision id or a relative step such as -1, got {text!r}")
    return text


def run_name(text: str) -> str:
    """A run name as :func:`kasmina.events.runs.check_name` accepts it."""
    from kasmina.errors import KasminaError
    from kasmina.events.runs import check_name

    try:
        return check_name(text)
    except KasminaError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

"""Enums named on the wire: annotations and events carry the name, users type any case."""

from __future__ import annotations

import re
from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound="NamedEnum")


class NamedEnum(str, Enum):
    """A str enum whose value is its name; :meth:`parse` accepts a member or a name in any case."""

    @classmethod
    def parse(cls: type[E], value: E | str) -> E:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls.__members__.get(value.strip().upper())
            if member is not None:
                return member
        what = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()  # BlendMode -> "blend mode"
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(cls.__members__)}")

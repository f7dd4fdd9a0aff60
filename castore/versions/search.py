"""Search versions by metadata: ``auc>0.9``, ``stage==prod``, ``params.depth<=8``.

A condition is KEY OP VALUE. KEY names a metadata key, dotted for nested maps; OP is one
of == != > >= < <=; VALUE is read as JSON when it parses (0.9, true, "x", null) and as
text otherwise. A version matches when it matches every condition. A version whose
metadata lacks the key, or holds a value that does not compare with VALUE (text against
a number), does not match: search never guesses an order between kinds of values.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from castore.errors import InvalidInputError

_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"\s*([A-Za-z0-9_.\-/]+)\s*(==|!=|>=|<=|>|<)\s*(.*?)\s*")
_MISSING = object()


@dataclass(frozen=True)
class Condition:
    """One KEY OP VALUE test on a version's metadata."""

    path: tuple[str, ...]
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Condition:
        """Read 'KEY OP VALUE'; InvalidInputError says what a condition looks like."""
        match = _CONDITION.fullmatch(text)
        if match is None or not match.group(3):
            raise InvalidInputError(
                f"cannot read the condition {text!r}: write KEY OP VALUE, with OP one of "
                "== != > >= < <= (such as 'auc>0.9' or 'params.depth<=8')"
            )
        key, op, raw = match.groups()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        return cls(tuple(key.split(".")), op, value)

    def matches(self, metadata: Mapping[str, Any]) -> bool:
        """Whether `metadata` holds the key and its value compares as asked."""
        found: Any = metadata
        for part in self.path:
            found = found.get(part, _MISSING) if isinstance(found, Mapping) else _MISSING
        if found is _MISSING or not _comparable(found, self.value, self.op):
            return False
        return _OPERATORS[self.op](found, self.value)


def _comparable(found: Any, wanted: Any, op: str) -> bool:
    """Numbers compare with numbers, text with text; == and != take any JSON value.
    Booleans are not numbers here, whatever Python says."""
    if op in ("==", "!="):
        return isinstance(found, bool) == isinstance(wanted, bool)
    number = (int, float)
    if isinstance(found, bool) or isinstance(wanted, bool):
        return False
    if isinstance(found, number) and isinstance(wanted, number):
        return True
    return isinstance(found, str) and isinstance(wanted, str)


def parse_conditions(where: str | Iterable[str]) -> list[Condition]:
    """Conditions from one text (joined by ' and ') or several; at least one."""
    texts = [where] if isinstance(where, str) else list(where)
    parts = [part for text in texts for part in re.split(r"\s+and\s+", text.strip())]
    if not parts or not all(parts):
        raise InvalidInputError("no condition given: write KEY OP VALUE, such as 'auc>0.9'")
    return [Condition.parse(part) for part in parts]


def matches_all(metadata: Mapping[str, Any], conditions: Iterable[Condition]) -> bool:
    """Whether `metadata` satisfies every condition."""
    return all(condition.matches(metadata) for condition in conditions)

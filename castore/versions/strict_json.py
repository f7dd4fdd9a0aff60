"""JSON as the data-only readers accept it: one meaning for every document.

Python's ``json`` keeps the last of duplicate keys (other readers keep the first, so a
checker and a library could see different documents), accepts NaN and Infinity, and
raises RecursionError on deep nesting. ``parse`` refuses all three with one ValueError.
"""

from __future__ import annotations

import json
from typing import Any


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("a key appears twice")
    return found


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"it holds {name}")


def parse(data: bytes | bytearray | str) -> Any:
    """The JSON value in `data` (UTF-8 when bytes); ValueError says why it is refused."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("it nests too deeply") from None

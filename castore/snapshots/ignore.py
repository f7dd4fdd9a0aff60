"""gitignore-style exclude patterns for backups.

The rules are git's (``gitignore(5)``), applied to paths relative to the backed-up
directory, written with ``/`` separators:

- blank lines and lines starting with ``#`` are ignored (``\\#`` is a literal ``#``);
  trailing spaces are dropped unless escaped with a backslash;
- ``!`` negates a pattern: a path it matches is included again (``\\!`` is a literal ``!``);
  a path inside an excluded directory cannot be included again, because excluded
  directories are not entered;
- a trailing ``/`` makes the pattern match directories only;
- a pattern with a ``/`` at its start or in its middle is anchored at the backed-up
  directory; one without matches at any depth;
- ``*`` matches anything but ``/``, ``?`` one character but ``/``, ``[...]`` one character
  of a set (``[!...]`` or ``[^...]`` negated, ranges, ``[:alpha:]``-style classes);
  ``\\`` escapes the next character;
- ``**/`` at the start matches in every directory, ``/**`` at the end everything inside,
  ``/**/`` zero or more directories; other ``**`` are plain ``*``.

The last pattern that matches a path decides whether it is excluded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from castore.errors import InvalidInputError

_CLASSES = {
    "alnum": "a-zA-Z0-9",
    "alpha": "a-zA-Z",
    "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "\\x21-\\x7e",
    "lower": "a-z",
    "print": "\\x20-\\x7e",
    "punct": "!-/:-@\\[-`{-~",
    "space": " \\t\\n\\r\\f\\v",
    "upper": "A-Z",
    "xdigit": "0-9a-fA-F",
}
"""POSIX character classes inside brackets, as regular expression set contents."""


@dataclass(frozen=True)
class Rule:
    """One compiled pattern."""

    pattern: str
    """The pattern as given."""
    regex: re.Pattern[str]
    negated: bool
    directories_only: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        """Whether the pattern matches a relative path (``a/b/c``)."""
        if self.directories_only and not is_dir:
            return False
        return self.regex.fullmatch(path) is not None


class IgnoreRules:
    """A list of gitignore-style patterns; `excluded` applies them to a path."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [p for p in patterns]
        """The patterns as given (comments and blank lines included)."""
        self.rules = [rule for p in self.patterns if (rule := compile_pattern(p)) is not None]
        """The compiled patterns, in order."""

    def __bool__(self) -> bool:
        return bool(self.rules)

    def excluded(self, path: str, is_dir: bool) -> bool:
        """Whether the last pattern matching `path` (relative, ``/``-separated) excludes it."""
        for rule in reversed(self.rules):
            if rule.matches(path, is_dir):
                return not rule.negated
        return False


def compile_pattern(line: str) -> Rule | None:
    """Compile one gitignore line; None for blank lines and comments.

    Raises InvalidInputError for a pattern git would never match (an unterminated
    ``[`` or a trailing backslash), so that a typo does not silently exclude nothing.
    """
    if not isinstance(line, str):
        raise InvalidInputError(f"exclude patterns must be strings, not {type(line).__name__}")
    body = _strip_trailing_spaces(line.rstrip("\n\r"))
    if not body or body.startswith("#"):
        return None
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    directories_only = body.endswith("/") and not body.endswith("\\/")
    body = body.rstrip("/") if directories_only else body
    if not body:
        return None
    anchored = "/" in body
    body = body.lstrip("/")
    prefix = "" if anchored else "(?:.*/)?"
    try:
        regex = re.compile(prefix + _translate_path(body), re.DOTALL)
    except (ValueError, re.error) as exc:
        raise InvalidInputError(f"invalid exclude pattern {line!r}: {exc}") from exc
    return Rule(line, regex, negated, directories_only)


def _strip_trailing_spaces(line: str) -> str:
    """Drop trailing spaces, except one escaped by a backslash."""
    stripped = line.rstrip(" ")
    if stripped != line and stripped.endswith("\\") and not _escaped_backslash_end(stripped):
        return stripped + " "
    return stripped


def _escaped_backslash_end(text: str) -> bool:
    """Whether `text` ends with an even number of backslashes (none escapes what follows)."""
    count = len(text) - len(text.rstrip("\\"))
    return count % 2 == 0


def _translate_path(body: str) -> str:
    """A regular expression for a pattern's ``/``-separated segments, ``**`` included."""
    segments = body.split("/")
    parts = []
    for number, segment in enumerate(segments):
        last = number == len(segments) - 1
        if segment == "**":
            parts.append(".*" if last else "(?:.*/)?")
        else:
            parts.append(_translate_segment(segment) + ("" if last else "/"))
    return "".join(parts)


def _translate_segment(segment: str) -> str:
    """A regular expression for one path segment: ``*``, ``?``, ``[...]`` and escapes."""
    out = []
    position = 0
    while position < len(segment):
        char = segment[position]
        position += 1
        if char == "*":
            while position < len(segment) and segment[position] == "*":
                position += 1
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            expression, position = _translate_bracket(segment, position)
            out.append(expression)
        elif char == "\\":
            if position >= len(segment):
                raise ValueError("it ends with an unescaped backslash")
            out.append(re.escape(segment[position]))
            position += 1
        else:
            out.append(re.escape(char))
    return "".join(out)


def _translate_bracket(segment: str, position: int) -> tuple[str, int]:
    """Translate ``[...]`` starting after its ``[``; return the set and where it ends."""
    negated = position < len(segment) and segment[position] in "!^"
    if negated:
        position += 1
    items = []
    first = True
    while True:
        if position >= len(segment):
            raise ValueError("a '[' has no closing ']'")
        char = segment[position]
        if char == "]" and not first:
            position += 1
            break
        first = False
        if char == "[" and segment.startswith("[:", position):
            end = segment.find(":]", position + 2)
            name = segment[position + 2 : end] if end != -1 else ""
            if name in _CLASSES:
                items.append(_CLASSES[name])
                position = end + 2
                continue
        if char == "\\" and position + 1 < len(segment):
            position += 1
            char = segment[position]
        position += 1
        if char == "-" and items and position < len(segment) and segment[position] != "]":
            end_char = segment[position]
            if end_char == "\\" and position + 1 < len(segment):
                position += 1
                end_char = segment[position]
            position += 1
            items.append("-" + re.escape(end_char))
        else:
            items.append(re.escape(char))
    body = "".join(items)
    # Segments hold no "/", so only a negated set could match one; git's never does.
    return (f"[^/{body}]" if negated else f"[{body}]"), position

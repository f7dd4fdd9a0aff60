"""The user's castore configuration folder and its line-based files."""

from __future__ import annotations

import os
from pathlib import Path

from castore.errors import InvalidInputError

CONFIG_DIR_VARIABLE = "CASTORE_CONFIG_DIR"


def config_dir() -> Path:
    """The user's castore configuration folder: $CASTORE_CONFIG_DIR, else XDG's castore/."""
    explicit = os.environ.get(CONFIG_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "castore"


def read_config_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of a user config file's meaningful lines; none if it is missing."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        if stripped:
            lines.append((number, stripped))
    return lines

"""mkdocs hooks: let docs/FORMAT.md's labelled fences render as titled code blocks.

FORMAT.md labels its worked examples ```` ```hex pack-entry ```` (its section 1.6;
tests/test_format_doc.py finds them by label). pymdownx.superfences reads a bare word after
the language as an option, and a label with a hyphen ends the fence there; this turns each
label into superfences' ``title="..."``, which shows it above the block.
"""

from __future__ import annotations

import re
from typing import Any

LABELLED_FENCE = re.compile(r"^(```[\w-]+) ([a-z0-9-]+)$", re.M)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """The page's Markdown with every labelled fence given its label as a title."""
    return LABELLED_FENCE.sub(r'\1 title="\2"', markdown)

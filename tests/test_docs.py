"""The documentation site builds without a warning, and its API reference documents every
public name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import castore
from tests.helpers import ROOT

DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
MKDOCS = Path(sys.executable).with_name("mkdocs")


def test_the_reference_documents_every_public_name() -> None:
    documented = set(re.findall(r"^::: castore\.(\w+)$", _reference_text(), re.M))
    assert documented == set(castore.__all__), (
        f"missing: {sorted(set(castore.__all__) - documented)}; "
        f"not public: {sorted(documented - set(castore.__all__))}"
    )


def _reference_text() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in sorted(REFERENCE.glob("*.md")))


def test_the_site_builds_strictly_without_warnings(tmp_path: Path) -> None:
    if not MKDOCS.exists():
        pytest.fail("mkdocs is not installed: pip install -e '.[test]'")
    result = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()

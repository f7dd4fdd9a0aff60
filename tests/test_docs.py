"""The documentation site builds without a warning, and every example in its guide runs.

Each guide page (docs/guide/*.md) runs in a fresh temporary working directory, its
blocks in document order: ```` ```python ```` blocks share one namespace per page, and
```` ```console ```` blocks run each ``$ command`` line in bash (``castore`` is this
tree's), their other lines being the expected output, where ``...`` stands for anything.
A block right after an ``<!-- not run: REASON -->`` line is not run; the test reports each.
A CastoreWarning is an error there: an example that warns shows the warning it expects.
S3 examples reach the suite's moto server through the environment variables a user's
shell would hold: S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import s3fs

import castore
from tests.helpers import ROOT
from tests.servers.radosgw import S3Server

DOCS = ROOT / "docs"
GUIDE = DOCS / "guide"
REFERENCE = DOCS / "reference"
BIN = Path(sys.executable).parent
"""The venv's scripts: mkdocs, and the castore command the console examples run."""
MKDOCS = BIN / "mkdocs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```$", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")
DOCS_BUCKET = "ml-artifacts"
"""The bucket the S3 examples use."""


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, in order, with the reason it is not run, if any."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = NOT_RUN.search(before)
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                language=match.group(1),
                code=match.group(2),
                not_run=marked.group(1) if marked else None,
            )
        )
    return found


PAGES = sorted(GUIDE.glob("*.md"))


def _expected(output: list[str]) -> re.Pattern[str]:
    """The pattern a console command's shown output stands for: ``...`` matches anything."""
    text = "\n".join(line.rstrip() for line in output).strip()
    return re.compile(".*?".join(re.escape(part) for part in text.split("...")), re.S)


def _run_console(block: Block, cwd: Path, env: dict[str, str]) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
        else:
            pytest.fail(f"{block.where}: a console block starts with a '$ ' command")
    for command, output in commands:
        result = subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{block.where}: {command}\n{result.stdout}{result.stderr}"
        printed = "\n".join(line.rstrip() for line in result.stdout.splitlines()).strip()
        assert _expected(output).fullmatch(printed), (
            f"{block.where}: {command} printed\n{printed}\nnot what the page shows:\n"
            + "\n".join(output)
        )


@pytest.fixture
def docs_environment(
    moto_s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """A working directory, a private configuration folder, and the S3 variables."""
    fs = s3fs.S3FileSystem(
        endpoint_url=moto_s3.endpoint_url,
        key=moto_s3.key,
        secret=moto_s3.secret,
        skip_instance_cache=True,
    )
    if not fs.exists(DOCS_BUCKET):
        fs.mkdir(DOCS_BUCKET)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    variables = {
        "CASTORE_CONFIG_DIR": str(tmp_path / "config"),
        "CASTORE_STORE": "",
        "S3_ENDPOINT_URL": moto_s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": moto_s3.key,
        "AWS_SECRET_ACCESS_KEY": moto_s3.secret,
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    monkeypatch.setenv("PATH", os.pathsep.join([str(BIN), os.environ["PATH"]]))
    return dict(os.environ)


@pytest.mark.parametrize("page", PAGES, ids=[page.stem for page in PAGES])
def test_every_example_of_the_guide_runs(
    page: Path, docs_environment: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    ran, not_run = 0, []
    for block in blocks(page):
        if block.not_run is not None:
            not_run.append(f"{block.where} ({block.not_run})")
        elif block.language == "python":
            with warnings.catch_warnings():
                warnings.simplefilter("error", castore.CastoreWarning)
                exec(compile("\n" * block.line + block.code, str(block.page), "exec"), namespace)
            ran += 1
        elif block.language == "console":
            _run_console(block, Path.cwd(), docs_environment)
            ran += 1
    assert ran, f"{page.relative_to(ROOT)} has no example that runs"
    with capsys.disabled():
        for skipped in not_run:
            print(f"\nnot run: {skipped}")


def test_every_guide_block_runs_or_says_why_not() -> None:
    """A block in another language, or an indented fence (which `blocks` does not see),
    would silently never run: each guide block is python or console at the left margin,
    or carries a not-run mark."""
    unrunnable = [
        f"{block.where} (```{block.language})"
        for page in PAGES
        for block in blocks(page)
        if block.language not in ("python", "console") and block.not_run is None
    ]
    indented = [
        f"{page.relative_to(ROOT)}:{number}"
        for page in PAGES
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1)
        if re.match(r"\s+```", line)
    ]
    assert not unrunnable and not indented, unrunnable + indented


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

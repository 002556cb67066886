"""The documentation stays true: the site builds with --strict (a broken link, anchor or API
reference fails), and every Python example of the docs and the README runs and prints what its
comments say it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"(<!-- not run: [^>]*-->\n)?```python\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    """(page:line, code) of every Python example not marked `<!-- not run: why -->`."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) is None:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", match.group(2)))
    return found


def printed(code: str) -> list[str]:
    """What the example's comment lines say it prints, up to each '...'."""
    return [
        line[2:].split("...")[0]
        for line in code.splitlines()
        if line.startswith("# ") and not line.startswith("# a ")
    ]


@pytest.mark.parametrize(("where", "code"), examples(), ids=[w for w, _ in examples()])
def test_the_example_runs_and_prints_what_it_says(where: str, code: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"{where}:\n{run.stderr[-3000:]}"
    for expected in printed(code):
        assert expected in run.stdout, f"{where}: {expected!r} not in:\n{run.stdout}"


def test_there_are_examples_to_run() -> None:
    assert {w.split(":")[0] for w, _ in examples()} >= {"docs/python.md", "docs/beam.md"}


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    api = (tmp_path / "api" / "index.html").read_text()
    for name in ("ImageClassifierHandler", "ImageClassifier", "ReadShards", "LocalFlinkCluster"):
        assert name in api


def test_the_readmes_links_lead_somewhere() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert len(local) >= 10
    for target in local:
        assert (ROOT / target).exists(), f"README links {target}, which does not exist"

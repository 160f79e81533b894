"""The documentation site builds with ``mkdocs build --strict`` (issue 25).

A broken link, a page missing from the navigation, a bad ``:::`` API
reference or a hook that fails makes the build fail, and so this test. It
also checks what the build cannot: every picture a page shows carries its
figure marker (command and code version, ``docs/_hooks/figures.py``), and the
command-line reference is generated from the app (every command appears).
Skipped, saying why, where mkdocs is not installed (``pip install -e ".[docs]"``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXCLUDED = ("incoming", "_hooks", "_tools")


def _site_pages() -> list[Path]:
    return [p for p in sorted(DOCS.rglob("*.md")) if p.relative_to(DOCS).parts[0] not in EXCLUDED]


def test_every_picture_names_its_command():
    image = re.compile(r"!\[[^\]]*\]\((?P<src>[^)\s]+\.png)\)")
    missing = []
    for page in _site_pages():
        text = page.read_text()
        for m in image.finditer(text):
            name = Path(m.group("src")).name
            if not re.search(rf"<!--\s*figure:\s*{re.escape(name)}\s*\|\s*\S", text):
                missing.append(f"{page.relative_to(ROOT)}: {name}")
    assert not missing, "pictures without <!-- figure: FILE | COMMAND -->:\n" + "\n".join(missing)


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    for plugin in ("material", "mkdocstrings", "mkdocs_jupyter"):
        pytest.importorskip(plugin, reason=f"{plugin} is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # the command-line reference is generated from the app: every command is on it
    from culture_cli.main import iter_commands

    cli = (site / "reference" / "cli" / "index.html").read_text()
    for path, _ in iter_commands():
        assert "culture-interp " + " ".join(path) in cli, path
    # the notebooks and the API pages are rendered
    for page in ("notebooks/01_quickstart/index.html", "api/core/index.html"):
        assert (site / page).stat().st_size > 10_000, page
    assert "make_test_set" in (site / "api" / "core" / "index.html").read_text()
    # drafts stay out of the site
    assert not (site / "incoming").exists()

"""mkdocs hook: the command and the code version behind every figure.

A page names each of its figures with a marker after the image::

    ![logit lens](../circuits-logit-lens.png)
    <!-- figure: circuits-logit-lens.png | culture-interp logit-lens --model 0 ... -->

At build time the marker becomes a caption giving the command that wrote the
file and the code version that produced it: the last commit that changed
``docs/<file>`` (short hash and date, from git; ``uncommitted`` when the file
has changes not yet committed) and the package version. The marker
``<!-- figure-index -->`` (on ``results/index.md``) becomes the table of every
figure of the site. tests/test_docs_site.py checks that every picture a page
shows has its marker.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FIGURE = re.compile(r"<!--\s*figure:\s*(?P<file>[^|\s]+)\s*\|\s*(?P<command>.+?)\s*-->", re.S)
INDEX = "<!-- figure-index -->"
EXCLUDED = ("incoming", "_hooks", "_tools")


@lru_cache(maxsize=None)
def package_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@lru_cache(maxsize=None)
def code_version(file: str) -> str:
    """``abc1234 (2026-12-06)``: the last commit that changed docs/FILE."""
    rel = f"docs/{file}"
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", rel], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
        log = subprocess.run(["git", "log", "-1", "--format=%h (%cs)", "--", rel], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    if dirty or not log:
        return "uncommitted"
    return f"commit {log}"


def _command(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def caption(file: str, command: str) -> str:
    return (f'<p class="figure-source"><small>Figure <code>docs/{file}</code> &mdash; command: '
            f"<code>{_command(command)}</code>; code version: {code_version(file)}, "
            f"culture-interp {package_version()}.</small></p>")


def figures_of_site() -> list[tuple[str, str, str]]:
    """(page, file, command) of every figure marker of the site's pages."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS)
        if rel.parts[0] in EXCLUDED:
            continue
        for m in FIGURE.finditer(page.read_text()):
            found.append((rel.as_posix(), m.group("file"), _command(m.group("command"))))
    return found


def figure_index(page_path: str) -> str:
    depth = page_path.count("/")
    rows = ["| figure | command | code version | shown on |", "|---|---|---|---|"]
    for page, file, command in figures_of_site():
        link = "../" * depth + page
        rows.append(f"| `docs/{file}` | `{command}` | {code_version(file)} | [{page}]({link}) |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown, page, config, files):  # mkdocs hook
    if INDEX in markdown:
        markdown = markdown.replace(INDEX, figure_index(page.file.src_uri))
    return FIGURE.sub(lambda m: caption(m.group("file"), m.group("command")), markdown)

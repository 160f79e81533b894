"""Every ``culture-interp`` command of README.md and of the documentation
runs as written (issues 17 and 25).

The commands are read from the ```bash blocks of README.md, then of the
site's pages in the order of ``mkdocs.yml``'s navigation, then of the drafts
in ``docs/incoming/`` (:func:`documentation_pages`), so a command added to
any of them later is run here too. Each block runs in order, in one
temporary working directory (later blocks use what earlier ones wrote:
``runs/demo``, ``runs/sae-gpt0``...), in process (``culture_cli.main.main``),
offline. What the test changes, and only that:

* ``[...]`` (optional options), ``...`` and ``# comments`` are dropped;
* the test is offline: a command that reads models and names no
  ``--source`` (the README says it uses the published models on the Hub)
  gets ``--source bundled``;
* sizes shrink (:data:`SMALL`): each size option the command has is capped
  (when given) or set (when not) to a small value; ``train`` trains the
  smallest preset, and without a stopping rule gets ``--max-rounds 1`` (it
  would train to the 95% threshold); ``universality compare`` compares the
  first :data:`COMPARED_MODELS` of its ``--models`` (the pairs grow as the
  square of the models; four models run in notebook 04);
* the working directory holds ``c_quizzes.pth`` (random valid quizzes, the
  reference layout) for the ``show-quiz --file`` example.

A block preceded by ``<!-- readme-test: skip (REASON) -->`` is not run (the
reason is required: network, tokens...). Run only this test: ``pytest -m readme``;
leave it out: ``pytest -m "not readme"``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: size option -> small value: capped when the README gives more, set when it gives none
SMALL = {
    "--num-samples": 12, "--tokens": 3232, "--steps": 3, "--train-samples": 16, "--test-samples": 8,
    "--train-batch-size-tokens": 1024, "--n-batches-in-buffer": 3, "--store-batch-size-prompts": 3,
    "--n-batches-for-norm-estimate": 2, "--expansion-factor": 2, "--resamples": 50, "--cka-permutations": 2,
    "--rotation-draws": 1, "--num-pairs": 4, "--control-pairs": 2, "--random-circuits": 1, "--ig-steps": 1,
    # only capped: the default is small already, or the option is required
    "--n": 24, "--training-tokens": 3072, "--nb-models": 2, "--n-quizzes": 2, "--top": 2, "--examples": 2,
    "--culture-batch": 8, "--candidates": 4, "--num-world": 4,
}
#: models ``universality compare`` keeps of its ``--models`` list
COMPARED_MODELS = 2
CAP_ONLY = {"--n", "--training-tokens", "--nb-models", "--top", "--examples", "--culture-batch"}
#: model size presets of ``train``: the smallest stands in for each (the same everywhere, so
#: ``--init-from`` and ``zoo pack`` of a README run still fit)
SMALL_PRESET = "17K"
TRAIN_STOPS = ("--max-rounds", "--target-accuracy", "--target-greedy-accuracy")

_SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")


def readme_blocks(text: str) -> list[tuple[int, list[str], str | None]]:
    """(line number, commands, skip reason) of each ```bash block."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i + 1
            before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            m = _SKIP.search(before)
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            joined = "\n".join(body).replace("\\\n", " ")
            commands = [c.strip() for c in joined.splitlines() if c.strip().startswith("culture-interp")]
            blocks.append((start, commands, m.group("reason") if m else None))
        i += 1
    return blocks


def documentation_pages() -> list[Path]:
    """README.md, the site's pages in navigation order (``mkdocs.yml``; pages
    left out of the navigation follow, sorted), then ``docs/incoming/*.md``."""
    nav = re.findall(r"^\s*-\s.*?([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    pages = [README] + [DOCS / n for n in nav if (DOCS / n).is_file()]
    excluded = ("incoming", "_hooks", "_tools")
    rest = [p for p in sorted(DOCS.rglob("*.md")) if p not in pages and p.relative_to(DOCS).parts[0] not in excluded]
    return pages + rest + sorted((DOCS / "incoming").glob("*.md"))


def as_run(command: str) -> list[str]:
    """The arguments (after ``culture-interp``) the test runs for a README command."""
    text = re.sub(r"\s#.*$", "", command)                 # comment
    while re.search(r"\[[^\[\]]*\]", text):
        text = re.sub(r"\[[^\[\]]*\]", " ", text)           # [optional] parts, nested ones too
    args = [a for a in shlex.split(text)[1:] if a != "..."]
    return args


def _command_of(argv: list[str]):
    """(command path, click command) that ``argv`` runs (from the registered app)."""
    from culture_cli.main import iter_commands

    words = [a for a in argv if not a.startswith("-")]
    best = None
    for path, command in iter_commands():
        if tuple(words[:len(path)]) == path and (best is None or len(path) > len(best[0])):
            best = (path, command)
    if best is None and words:  # a group run without its subcommand: its default one (``circuit`` = ``circuit find``)
        from culture_cli.main import cli_command

        group = cli_command().commands.get(words[0])
        default = getattr(group, "default_command", None)
        if default is not None:
            best = ((words[0], default), group.commands[default])
    assert best is not None, f"no such command: {argv}"
    return best


def shrink(argv: list[str]) -> list[str]:
    """``argv`` offline and small (see the module docstring); ``--help`` as written."""
    if "--help" in argv:
        return list(argv)
    path, command = _command_of(argv)
    params = {o: p for p in command.params for o in getattr(p, "opts", [])}
    out = list(argv)
    given = {params[a.split("=")[0]].name for a in out if a.split("=")[0] in params}
    resume = "resume" in given
    for i, a in enumerate(out[:-1]):  # caps
        name = max(params[a].opts, key=len) if a in params else None
        if path == ("train",) and name == "--model":
            out[i + 1] = SMALL_PRESET
        if name in SMALL:
            try:
                out[i + 1] = str(min(float(out[i + 1]), SMALL[name])).removesuffix(".0")
            except ValueError:
                pass
    if not resume:  # small values for the sizes left at their (large) defaults
        for param in command.params:
            name = max(getattr(param, "opts", [""]), key=len)
            if name in SMALL and name not in CAP_ONLY and param.name not in given:
                if name == "--steps" and "training_tokens" in given:
                    continue
                out += [name, str(SMALL[name])]
        if path == ("train",) and not any(s.lstrip("-").replace("-", "_") in given for s in TRAIN_STOPS):
            out += ["--max-rounds", "1"]
        if "--source" in params and "source" not in given and path != ("dataset", "build"):
            out += ["--source", "bundled"]
    if path == ("universality", "compare") and "--models" in out:
        start = out.index("--models") + 1
        stop = next((k for k in range(start, len(out)) if out[k].startswith("-")), len(out))
        del out[start + COMPARED_MODELS:stop]
    return out


def _c_quizzes(path: Path) -> None:
    import torch

    from culture.quiz import grids_to_quizzes

    g = torch.Generator().manual_seed(0)
    q = grids_to_quizzes(torch.randint(0, 11, (16, 4, 10, 10), generator=g))
    torch.save(([q[:8]], [q[8:]]), path)


def test_readme_parsing_keeps_what_matters():
    blocks = readme_blocks(README.read_text())
    commands = [c for _, cs, _ in blocks for c in cs]
    assert any(c.startswith("culture-interp eval") for c in commands)
    pages = documentation_pages()
    assert pages[0] == README and DOCS / "guides" / "saes.md" in pages
    # the site's pages keep the guides' examples, in an order where each finds what an earlier one wrote
    docs = [c for p in pages for _, cs, _ in readme_blocks(p.read_text()) for c in cs]
    first = {word: next(i for i, c in enumerate(docs) if c.startswith(word))
             for word in ("culture-interp train --out runs/demo", "culture-interp zoo pack --run runs/demo",
                          "culture-interp sae train", "culture-interp sae eval --model 0 --sae runs/sae-gpt0")}
    assert first["culture-interp train --out runs/demo"] < first["culture-interp zoo pack --run runs/demo"]
    assert first["culture-interp sae train"] < first["culture-interp sae eval --model 0 --sae runs/sae-gpt0"]
    assert len(docs) >= 40, len(docs)
    assert as_run("culture-interp eval --models 0 1 [--source S] [--tasks a b]   # x") == ["eval", "--models", "0", "1"]
    assert as_run("culture-interp train --out r [--max-rounds N | --target-accuracy 0.9] --lr 1e-4 ...") == \
        ["train", "--out", "r", "--lr", "1e-4"]
    small = shrink(["eval", "--models", "0", "--num-samples", "2000"])
    assert small[small.index("--num-samples") + 1] == "12" and small[-2:] == ["--source", "bundled"]
    assert "--max-rounds" in shrink(["train", "--out", "r"])
    assert shrink(["train", "--out", "r", "--resume"]) == ["train", "--out", "r", "--resume"]
    compared = shrink(["universality", "compare", "--models", "0", "1", "2", "3", "--source", "bundled"])
    assert compared[:6] == ["universality", "compare", "--models", "0", "1", "--source"]
    assert shrink(["universality", "compare", "--models", "2", "3", "1"])[2:5] == ["--models", "2", "3"]
    assert shrink(["eval", "--models", "0", "1", "2"])[:5] == ["eval", "--models", "0", "1", "2"]
    # every skipped block says why
    assert all(reason.strip() for _, _, reason in blocks if reason is not None)


#: the package's own zoo: no README command run by the test may change it
ZOO_FILES = Path(__file__).resolve().parents[1] / "culture" / "zoo"


def _digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.readme
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    from tests.cli import exit_code

    monkeypatch.chdir(tmp_path)
    _c_quizzes(tmp_path / "c_quizzes.pth")
    package_zoo = _digest(ZOO_FILES)
    ran = []
    for page in documentation_pages():
        where = page.relative_to(ROOT)
        for line, commands, skip in readme_blocks(page.read_text()):
            if skip is not None:
                continue
            for command in commands:
                argv = shrink(as_run(command))
                code = exit_code(argv)
                out, err = capsys.readouterr()
                assert code == 0, f"{where} line {line}: culture-interp {shlex.join(argv)}\n{err[-1500:]}"
                assert "Traceback" not in err
                ran.append(argv)
                assert _digest(ZOO_FILES) == package_zoo, f"{where} line {line} changed the package's zoo: {argv}"
    assert len(ran) >= 20, ran

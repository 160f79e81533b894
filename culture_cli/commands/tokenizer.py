"""``culture-interp tokenizer build|push``: the Hugging Face tokenizer of the
culture quizzes (see :mod:`culture.tokenizer`). transformers is imported
inside the commands only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from culture_cli.common import command_group, console

tokenizer_app = command_group(
    "tokenizer", "The quiz tokenizer (word level: 0..9 a X f_X Y f_Y; BOS \"0\", PAD [PAD]=16): build or push it.")


@tokenizer_app.command("build")
def build(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (save_pretrained), atomically.")],
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --out.")] = False,
) -> None:
    """Write the tokenizer with save_pretrained (load it with AutoTokenizer.from_pretrained(DIR))."""
    from culture.tokenizer import save_tokenizer

    path = save_tokenizer(out, overwrite=overwrite)
    console.print(f"wrote tokenizer to {path}")


@tokenizer_app.command("push")
def push(
    repo: Annotated[str, typer.Option("--repo", help="Hub repo id, e.g. you/culture-tokenizer.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    token: Annotated[Optional[str], typer.Option("--token", help="Hub token (default: the logged-in one).",
                                                 show_default=False)] = None,
) -> None:
    """Push the tokenizer to the Hugging Face Hub (push_to_hub)."""
    from culture.tokenizer import push_tokenizer

    url = push_tokenizer(repo, private=private, token=token)
    console.print(f"pushed tokenizer to {repo}{' (private)' if private else ''}: {url}")


def register(app: typer.Typer) -> None:
    app.add_typer(tokenizer_app, name="tokenizer")

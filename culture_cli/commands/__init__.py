"""One module per command (or command group). Each module defines
``register(app: typer.Typer) -> None`` and is discovered automatically.

Command modules import only typer/rich (and light ``culture`` modules) at the
top; TransformerLens, SAELens, datasets... are imported inside the command
functions, so ``culture-interp --help`` starts fast.
"""

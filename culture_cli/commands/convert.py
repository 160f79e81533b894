"""``culture-interp convert``: culture GPT checkpoints -> TransformerLens files.

For each model k writes ``OUT/gpt-{k}/model.safetensors`` (HookedTransformer
parameters) and ``OUT/gpt-{k}/config.json`` (HookedTransformerConfig fields and
a ``culture`` section), checks the conversion on world quizzes in random
structures, and prints a table. ``culture.hooked.load_converted(OUT/gpt-k)``
reads a converted model back.
"""

from __future__ import annotations

from pathlib import Path

import typer

from culture.sources import DEFAULT_SOURCE

HELP = "Convert culture GPTs to TransformerLens HookedTransformer files (safetensors + config.json)."


def check_quizzes(n: int, seed: int):
    """(quizzes (n, 404) in random evaluation structures, description).

    World quizzes from ``culture.world`` when available, else random valid
    quizzes (random cells: a weaker but still exact check of the conversion)."""
    import torch

    from culture.quiz import grids_to_quizzes, random_structures

    g = torch.Generator().manual_seed(seed)
    try:
        from culture.world import generate_quizzes

        quizzes, kind = generate_quizzes(n, seed=seed), "world"
    except (ImportError, AttributeError):
        quizzes, kind = grids_to_quizzes(torch.randint(0, 11, (n, 4, 10, 10), generator=g)), "random"
    quizzes, _ = random_structures(quizzes, generator=g)
    return quizzes, f"{n} {kind} quizzes, random structures, seed {seed}"


def run_convert(models: list[int] | None, source: str, out: Path, device: str = "cpu",
                n_quizzes: int = 16, seed: int = 0, tolerance: float = 1e-3) -> tuple[list[dict], str]:
    """Convert and save; returns (one row per model, description of the check quizzes)."""
    import torch

    from culture.hooked import HookedConversionError, max_logit_diff, mygpt_to_hooked, save_converted
    from culture.io import check_output
    from culture.sources import open_source
    from culture_cli.common import err_console, outputs

    if n_quizzes < 1:
        raise HookedConversionError("--n-quizzes must be at least 1")
    run = open_source(source, list(models) if models else None, device=device, with_tasks=False)
    src, dev, ids = run.source, run.device, run.ids  # ids checked: fail early, before any conversion
    for k in ids:  # ... and on a broken checkpoint (each one read once here, then one at a time below)
        src.load_model(k)
    check_output(out, "merge", what="--out")
    quizzes, check = check_quizzes(n_quizzes, seed)
    rows = []
    # every model is written into a staging folder; OUT/gpt-k appear only when all succeeded
    with outputs(announce=False) as staged:
        root = staged.dir(out, merge=True)
        for k in ids:
            with err_console.status(f"converting model {k} of {src.name}"):
                model, accuracy = src.load_model(k, device=dev)
                hooked = mygpt_to_hooked(model)
                diff, scale = max_logit_diff(model, hooked, quizzes.to(dev), with_scale=True)
                if not diff <= tolerance:
                    raise HookedConversionError(
                        f"conversion check failed for model {k}: max |logit difference| {diff:.3g} > {tolerance:g}")
                cfg = model.config
                save_converted(hooked, root / f"gpt-{k}", extra={
                    "model_id": k,
                    "source": src.name,
                    "source_kind": src.kind,
                    "accuracy": accuracy,
                    "max_abs_logit_diff": diff,
                    "max_abs_logit": scale,
                    "check": check,
                })
            rows.append({"model": k, "params": model.num_parameters, "config": cfg, "d_head": hooked.cfg.d_head,
                         "accuracy": accuracy, "max_abs_logit_diff": diff, "max_abs_logit": scale,
                         "dir": out / f"gpt-{k}"})
            del model, hooked
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return rows, check


def _params(n: int) -> str:
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def print_table(rows: list[dict], source: str, check: str) -> None:
    from rich.table import Table

    from culture_cli.common import print_table as print_rich_table

    table = Table(title=f"TransformerLens conversion of {source}",
                  caption=f"check: {check}; both in float32: |Δlogit| is float32 rounding, relative to max |logit|")
    for col, justify in (("model", "right"), ("params", "right"), ("config (D, dk, dv, H, heads, blocks)", "left"),
                         ("d_head", "right"), ("accuracy", "right"), ("max |Δlogit|", "right"), ("max |logit|", "right"),
                         ("written to", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        c = r["config"]
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        table.add_row(str(r["model"]), _params(r["params"]),
                      f"{c.dim_model}, {c.dim_keys}, {c.dim_value}, {c.dim_hidden}, {c.nb_heads}, {c.nb_blocks}",
                      str(r["d_head"]), acc, f"{r['max_abs_logit_diff']:.2e}", f"{r['max_abs_logit']:.3g}",
                      str(r["dir"]))
    print_rich_table(table)


def register(app: typer.Typer) -> None:
    @app.command("convert", help=HELP)
    def convert(
        models: list[int] = typer.Option(None, "--models",
                                         help="Model ids, e.g. --models 0 1 (default: every model of the source)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output directory; model k goes to OUT/gpt-k/."),
        source: str = typer.Option(DEFAULT_SOURCE, "--source", "-s",
                                   help="Hugging Face repo id, local directory, or 'bundled'."),
        device: str = typer.Option("cpu", "--device", help="Device for the conversion check (cpu, cuda...)."),
        n_quizzes: int = typer.Option(16, "--n-quizzes", help="Quizzes used to check the logits."),
        seed: int = typer.Option(0, "--seed", help="Seed of the check quizzes."),
        tolerance: float = typer.Option(1e-3, "--tolerance", min=0.0,
                                        help="Largest accepted |logit difference| vs MyGPT."),
    ) -> None:
        rows, check = run_convert(models, source, out, device=device, n_quizzes=n_quizzes, seed=seed,
                                  tolerance=tolerance)
        print_table(rows, source, check)

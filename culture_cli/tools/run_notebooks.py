"""Execute the tutorial notebooks in ``docs/notebooks/`` and store their outputs.

    python -m culture_cli.tools.run_notebooks            # execute all, write them back with outputs
    python -m culture_cli.tools.run_notebooks 01_quickstart.ipynb
    python -m culture_cli.tools.run_notebooks --check    # only check that the outputs are fresh

Run it before committing a change to a notebook (or to code its outputs show).
Each notebook runs offline (``HF_HUB_OFFLINE=1``) on CPU with the current
Python's kernel (nbclient), from its own folder. After a run the notebook's
metadata records the SHA-256 of its code cells (``culture_interp.code_sha256``);
``--check`` (and the test suite) fails when the code cells no longer match
what was executed, i.e. when the committed outputs are stale.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "docs" / "notebooks"
META_KEY = "culture_interp"
TIMEOUT_S = 600


def code_digest(nb) -> str:
    """SHA-256 of the notebook's code cells (sources, in order)."""
    h = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            h.update(cell.source.encode())
            h.update(b"\0")
    return h.hexdigest()


def stale_reason(nb) -> str | None:
    """Why the notebook's stored outputs do not belong to its code (None: fresh)."""
    meta = nb.metadata.get(META_KEY, {})
    if meta.get("code_sha256") != code_digest(nb):
        return "its code cells changed since it was last executed"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.source.strip() and cell.get("execution_count") is None:
            return f"code cell {i} was never executed"
    return None


def execute(path: Path, *, timeout: int = TIMEOUT_S, write: bool = True):
    """Execute one notebook in its folder; with ``write``, store it back
    (atomically) with outputs and the code digest. Returns (notebook, seconds).
    A cell that raises raises ``nbclient.exceptions.CellExecutionError``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "MPLBACKEND")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"})
    start = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - start
    nb.metadata[META_KEY] = {"code_sha256": code_digest(nb)}
    if write:
        from culture.io import atomic_path

        with atomic_path(path) as tmp:
            nbformat.write(nb, tmp)
    return nb, seconds


def notebooks(names=()) -> list[Path]:
    found = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not names:
        return found
    by_name = {p.name: p for p in found}
    missing = [n for n in names if Path(n).name not in by_name]
    if missing:
        raise SystemExit(f"error: no notebook {missing[0]!r} in {NOTEBOOK_DIR}")
    return [by_name[Path(n).name] for n in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    parser.add_argument("--check", action="store_true", help="only check that stored outputs are fresh")
    args = parser.parse_args(argv)
    import nbformat

    status = 0
    for path in notebooks(args.names):
        if args.check:
            reason = stale_reason(nbformat.read(path, as_version=4))
            print(f"{path.name}: {'stale: ' + reason if reason else 'fresh'}")
            status |= reason is not None
            continue
        _, seconds = execute(path)
        print(f"{path.name}: executed in {seconds:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())

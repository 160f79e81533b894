"""The tutorial notebooks in docs/notebooks/: outputs fresh, and every cell runs.

Marked ``notebooks`` (skip with ``python -m pytest -m "not notebooks"``). Re-execute them with
``python -m culture_cli.tools.run_notebooks`` before committing a change to a notebook.
"""

import nbformat
import pytest

from culture_cli.tools.run_notebooks import NOTEBOOK_DIR, code_digest, execute, stale_reason

NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
pytestmark = pytest.mark.notebooks


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_fresh(path):
    nb = nbformat.read(path, as_version=4)
    assert stale_reason(nb) is None, f"{path.name}: {stale_reason(nb)}; run python -m culture_cli.tools.run_notebooks"


def test_an_edited_code_cell_makes_the_outputs_stale(tmp_path):
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    digest = code_digest(nb)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.source += "\n# edited"
    assert code_digest(nb) != digest and "changed" in stale_reason(nb)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_without_error(path, tmp_path):
    copy = tmp_path / path.name
    copy.write_bytes(path.read_bytes())
    execute(copy, write=False)  # raises CellExecutionError when a cell raises

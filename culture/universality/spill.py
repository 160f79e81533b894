"""Co-moment rows kept on disk: pass 1 of a comparison too large for memory.

When the neuron co-moments of every model pair (pairs x (layers x d_mlp)^2
float64 numbers, 4.5 GiB per pair and half at the 37M shape) do not fit the
memory plan, pass 1 streams the quizzes once per **row block** (a few of
model i's layers against all of model j's neurons, :class:`RowBlocks`), and
writes each finished block's rows to a :class:`SpilledRows` file. The
analysis already reads the co-moments a block of rows at a time
(:class:`~culture.universality.stats.CrossTiles`), so it reads them from the
file instead, with the same bits: a row block's products are the same
operations as the same rows of the whole product.

Written here rather than with ``numpy.memmap``: the pages of a mapped file
count in the process's resident set, which is what the memory plan bounds;
explicit reads keep only the rows asked for in memory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import torch


class SpilledRows:
    """A (rows, cols) float64 matrix in a file, written a block of rows at a
    time (:meth:`write`) and read back by row slices (``m[a:b]``: a new
    tensor on ``device``), the way the analysis reads a co-moment."""

    def __init__(self, path: str, shape: tuple[int, int], device, dtype: torch.dtype = torch.float64):
        self.path = path
        self.shape = (int(shape[0]), int(shape[1]))
        self.device = torch.device(device)
        self.dtype = dtype
        self._np = np.dtype(str(dtype).removeprefix("torch."))
        with open(path, "wb") as f:
            f.truncate(self.shape[0] * self.shape[1] * self._np.itemsize)

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Store rows start..start+len(rows)-1."""
        if rows.dtype != self.dtype or rows.shape[1] != self.shape[1] or start + rows.shape[0] > self.shape[0]:
            raise ValueError(f"rows {tuple(rows.shape)} {rows.dtype} do not fit at {start} of {self.shape}")
        with open(self.path, "r+b") as f:
            f.seek(start * self.shape[1] * self._np.itemsize)
            f.write(rows.detach().cpu().contiguous().numpy().tobytes())

    def __getitem__(self, rows: slice) -> torch.Tensor:
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("SpilledRows: contiguous row slices only")
        n = max(stop - start, 0)
        with open(self.path, "rb") as f:
            f.seek(start * self.shape[1] * self._np.itemsize)
            data = np.fromfile(f, dtype=self._np, count=n * self.shape[1])
        return torch.from_numpy(data.reshape(n, self.shape[1])).to(self.device)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self._np.itemsize


@dataclass
class RowBlocks:
    """Pass 1 in row blocks: ``blocks`` ranges (k0, k1) of the compared layers
    (the same for every model), a sweep over the quizzes each, and the folder
    that holds the spilled rows (removed by :meth:`close`)."""

    blocks: list[tuple[int, int]]
    folder: str

    @classmethod
    def make(cls, n_layers: int, block_layers: int, parent: str | None = None) -> "RowBlocks":
        """``block_layers`` layers per block (the last may hold fewer), files in a
        new folder under ``parent`` (default: the system's temporary folder, ``TMPDIR``)."""
        step = max(1, int(block_layers))
        blocks = [(k, min(k + step, n_layers)) for k in range(0, n_layers, step)]
        return cls(blocks, tempfile.mkdtemp(prefix="culture-universality-", dir=parent))

    def new_path(self, name: str) -> str:
        """A new file in the folder, its name starting with ``name`` (unique)."""
        fd, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".bin", dir=self.folder)
        os.close(fd)
        return path

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def disk_free(parent: str | None = None) -> int:
    """Bytes free where :meth:`RowBlocks.make` puts its files."""
    return shutil.disk_usage(parent or tempfile.gettempdir()).free


__all__ = ["SpilledRows", "RowBlocks", "disk_free"]

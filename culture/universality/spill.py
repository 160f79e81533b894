"""Co-moment rows kept on disk: pass 1 of a comparison too large for memory.

When the neuron co-moments of every model pair (pairs x (layers x d_mlp)^2
float64 numbers, 4.5 GiB per pair and half at the 37M shape) do not fit the
memory plan, pass 1 streams the quizzes once per **row block** (a few of
model i's layers against all of model j's neurons, :class:`RowBlocks`), and
writes each finished block's rows to a :class:`SpilledRows` file (and the
group sums of its layers' neurons to a :class:`SpilledColumns` file). The
analysis already reads the co-moments a block of rows at a time
(:class:`~culture.universality.stats.CrossTiles`), so it reads them from the
file instead, with the same bits: a row block's products are the same
operations as the same rows of the whole product.

Written here rather than as one ``numpy.memmap``: the pages of a mapped file
count in the process's resident set, which is what the memory plan bounds;
rows and blocks are read explicitly into new arrays.
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
            f.write(memoryview(rows.detach().cpu().contiguous().numpy()).cast("B"))  # no copy of a contiguous block

    def __getitem__(self, key) -> torch.Tensor:
        """``m[a:b]`` (rows) or ``m[a:b, c:d]`` (a block): a new tensor on ``device``."""
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        r0, r1, rs = rows.indices(self.shape[0])
        c0, c1, cs = cols.indices(self.shape[1])
        if rs != 1 or cs != 1:
            raise IndexError("SpilledRows: contiguous slices only")
        n, w = max(r1 - r0, 0), max(c1 - c0, 0)
        if w == self.shape[1]:
            with open(self.path, "rb") as f:
                f.seek(r0 * self.shape[1] * self._np.itemsize)
                data = np.fromfile(f, dtype=self._np, count=n * w).reshape(n, w)
        else:
            data = self.read_rows(np.arange(r0, r1), c0, w)
        return torch.from_numpy(data).to(self.device)

    def read_rows(self, rows, start: int, width: int) -> np.ndarray:
        """Columns start..start+width-1 of the given rows, one ``pread`` per row
        into the result. Not a mapping: the kernel maps pages around each
        fault (64 KiB), which would put several times the block in the
        resident set while it is copied. Written by hand: numpy reads whole
        records only."""
        item = self._np.itemsize
        out = np.empty((len(rows), width), dtype=self._np)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for k, r in enumerate(rows):
                want = width * item
                if os.preadv(fd, [memoryview(out[k]).cast("B")], (int(r) * self.shape[1] + start) * item) != want:
                    raise OSError(f"{self.path}: short read at row {int(r)}")
        finally:
            os.close(fd)
        return out

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self._np.itemsize


class SpilledColumns:
    """A (rows, cols) float64 matrix in a file, written a block of columns at
    a time (:meth:`write`) and read back by column slices (``m[:, a:b]``) or
    picked columns (:meth:`index_select`): the group sums of pass 1 in row
    blocks. Stored transposed, so that a block of columns is one contiguous
    read; what it returns is row-major, as the in-memory group sums were (a
    reduction over its rows then adds in the same order)."""

    def __init__(self, path: str, shape: tuple[int, int], device, dtype: torch.dtype = torch.float64):
        self._t = SpilledRows(path, (shape[1], shape[0]), device, dtype)
        self.shape = (int(shape[0]), int(shape[1]))
        self.device, self.dtype = self._t.device, dtype

    def write(self, start: int, cols: torch.Tensor) -> None:
        """Store columns start..start+cols.shape[1]-1 of a (rows, k) block."""
        self._t.write(start, cols.t())

    def __getitem__(self, key) -> torch.Tensor:
        """``m[:, a:b]``: a new (rows, b - a) row-major tensor on ``device``."""
        rows, cols = key
        if rows != slice(None):
            raise IndexError("SpilledColumns: m[:, a:b] only")
        return self._t[cols].t().contiguous()

    def index_select(self, dim: int, cols: torch.Tensor) -> torch.Tensor:
        """The columns ``cols`` (dim -1 or 1): a new (rows, len(cols)) tensor."""
        if dim not in (-1, 1):
            raise IndexError("SpilledColumns: columns only")
        data = self._t.read_rows(np.asarray(cols.cpu(), dtype=np.int64), 0, self.shape[0])
        return torch.from_numpy(data).to(self.device).t().contiguous()

    @property
    def nbytes(self) -> int:
        return self._t.nbytes


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


__all__ = ["SpilledRows", "SpilledColumns", "RowBlocks", "disk_free"]

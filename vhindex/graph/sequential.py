"""In-process :class:`~vhindex.graph.interfaces.GraphExecutor` and an in-memory chunk source.

:class:`SequentialExecutor` is the reference executor: it maps over the chunks one after the
other in this process and reduces **in chunk order**, which is the order a distributed executor
(Dask, Ray) must also reduce in to give bit-identical results. :class:`ArrayChunkSource` splits an
in-memory matrix into fixed row ranges (tests, benchmarks, small datasets).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from vhindex.graph.interfaces import AssignStats, ChunkSource
from vhindex.graph.kmeans import assign_stats, nearest_k

logger = logging.getLogger(__name__)

__all__ = ["ArrayChunkSource", "SequentialExecutor", "chunk_offsets"]


class ArrayChunkSource:
    """An in-memory ``(N, d)`` float32 matrix cut into fixed row ranges of ``chunk_rows`` rows.

    Chunk ``i`` holds rows ``[i * chunk_rows, min((i + 1) * chunk_rows, N))``; the last chunk may be
    shorter. ``load_chunk`` returns a view (no copy) when the matrix is float32 and C-contiguous.

    Args:
        x: ``(N, d)`` matrix; converted to C-contiguous float32 once.
        chunk_rows: rows per chunk, at least 1.

    Raises:
        ValueError: ``x`` is not 2-D or ``chunk_rows < 1``.
    """

    def __init__(self, x: np.ndarray, chunk_rows: int) -> None:
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"ArrayChunkSource needs a 2-D (N, d) matrix, got shape {x.shape}; reshape it first")
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows={chunk_rows} must be at least 1")
        self._x = np.ascontiguousarray(x, dtype=np.float32)
        self.chunk_size = int(chunk_rows)
        self.num_rows = int(self._x.shape[0])
        self.dim = int(self._x.shape[1])

    def num_chunks(self) -> int:
        """Number of chunks (0 for an empty matrix)."""
        return -(-self.num_rows // self.chunk_size)

    def chunk_rows(self, i: int) -> int:
        """Rows in chunk ``i``."""
        self._check(i)
        return min(self.chunk_size, self.num_rows - i * self.chunk_size)

    def load_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as a C-contiguous ``(rows, d)`` float32 array (a view of the matrix)."""
        self._check(i)
        return self._x[i * self.chunk_size:(i + 1) * self.chunk_size]

    def _check(self, i: int) -> None:
        if not 0 <= i < self.num_chunks():
            raise IndexError(f"chunk index {i} out of range [0, {self.num_chunks()})")

    def __repr__(self) -> str:
        return f"ArrayChunkSource(num_rows={self.num_rows}, dim={self.dim}, chunk_rows={self.chunk_size})"


def chunk_offsets(source: ChunkSource) -> np.ndarray:
    """Global index of each chunk's first row, plus ``num_rows`` at the end: ``(num_chunks + 1,)`` int64.

    Raises:
        ValueError: the chunk sizes do not add up to ``source.num_rows``.
    """
    sizes = np.fromiter((source.chunk_rows(i) for i in range(source.num_chunks())), np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if offsets[-1] != source.num_rows:
        raise ValueError(f"chunk sizes of {source!r} add up to {offsets[-1]} rows but num_rows={source.num_rows}")
    return offsets


class SequentialExecutor:
    """Runs the k-means / nearest-anchor maps chunk after chunk in this process.

    Results are reduced in chunk order (``AssignStats.zeros() + s_0 + s_1 + ...``); a distributed
    executor that reduces in the same order gives bit-identical results for the same chunking.

    Args:
        source: where the chunks are.
        num_threads: faiss threads for each chunk's search (None: leave faiss's setting alone).
    """

    def __init__(self, source: ChunkSource, num_threads: int | None = None) -> None:
        self.source = source
        self.num_threads = num_threads
        self._offsets: np.ndarray | None = None

    @property
    def offsets(self) -> np.ndarray:
        """See :func:`chunk_offsets` (computed once)."""
        if self._offsets is None:
            self._offsets = chunk_offsets(self.source)
        return self._offsets

    def assign_reduce(self, centroids: np.ndarray, chunk_ids: Sequence[int] | None = None) -> AssignStats:
        """Assign the rows of the given chunks (all when None) to their nearest centroid; stats summed in
        the order of ``chunk_ids`` (ascending when None).

        Raises:
            NonFiniteDataError: a chunk holds NaN/Inf (the message names the chunk and a row).
        """
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        ids = range(self.source.num_chunks()) if chunk_ids is None else chunk_ids
        total = AssignStats.zeros(centroids.shape[0], centroids.shape[1])
        for i in ids:
            i = int(i)
            total = total + assign_stats(self.source.load_chunk(i), centroids, self.num_threads, chunk=i,
                                         row_offset=int(self.offsets[i]))
        return total

    def take_rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows with these global indices (sorted, unique), loading only the chunks that hold them.

        Raises:
            ValueError: ``rows`` is not 1-D, not sorted and unique, or out of ``[0, num_rows)``.
        """
        rows = np.asarray(rows, dtype=np.int64)
        check_rows(rows, self.source.num_rows)
        out = np.empty((rows.size, self.source.dim), np.float32)
        if rows.size == 0:
            return out
        offsets = self.offsets
        chunk_of = np.searchsorted(offsets, rows, side="right") - 1
        bounds = np.flatnonzero(np.diff(chunk_of)) + 1
        for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [rows.size]]), strict=True):
            c = int(chunk_of[lo])
            out[lo:hi] = self.source.load_chunk(c)[rows[lo:hi] - offsets[c]]
        return out

    def nearest(self, centroids: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's ``a`` nearest centroids (nearest first, ties to the lower index), rows in global order.

        Returns:
            ``(ids (N, a) int32, squared distances (N, a) float32)``.
        """
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        ids, dists = [], []
        for i in range(self.source.num_chunks()):
            ci, cd = nearest_k(self.source.load_chunk(i), centroids, a, self.num_threads)
            ids.append(ci)
            dists.append(cd)
        if not ids:
            return np.empty((0, a), np.int32), np.empty((0, a), np.float32)
        return np.concatenate(ids), np.concatenate(dists)


def check_rows(rows: np.ndarray, num_rows: int) -> None:
    """Validate the ``rows`` argument of ``take_rows``: 1-D, sorted, unique, within ``[0, num_rows)``."""
    if rows.ndim != 1:
        raise ValueError(f"take_rows needs a 1-D array of row indices, got shape {rows.shape}")
    if rows.size == 0:
        return
    if rows[0] < 0 or rows[-1] >= num_rows:
        raise ValueError(f"row indices must lie in [0, {num_rows}), got min {rows.min()} and max {rows.max()}")
    if rows.size > 1 and not np.all(rows[1:] > rows[:-1]):
        raise ValueError("take_rows needs sorted unique row indices; pass np.unique(rows)")

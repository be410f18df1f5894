"""The seams between the graph math (pure) and whoever executes it (sequential, Dask, Ray).

K-means and nearest-anchor search only need to *map* a function over chunks of an ``N x d``
embedding matrix and *reduce* small results (per-centroid sums and counts, per-video anchor
lists). :class:`ChunkSource` says where the chunks are; a :class:`GraphExecutor` runs the map
(in-process, on a Dask cluster, on Ray) and returns the reduced results **in chunk order**, so
every executor gives bit-identical answers for the same chunking and seed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass
class AssignStats:
    """Sufficient statistics of assigning points to centroids (the k-means map output).

    Attributes:
        sums: ``(k, d)`` float64, per-centroid sum of the points assigned to it.
        counts: ``(k,)`` int64, points assigned to each centroid.
        inertia: sum of squared distances of the points to their assigned centroid.
        num_points: points seen.
    """

    sums: np.ndarray
    counts: np.ndarray
    inertia: float
    num_points: int

    @classmethod
    def zeros(cls, k: int, d: int) -> AssignStats:
        """The neutral element of :meth:`__add__`."""
        return cls(np.zeros((k, d), np.float64), np.zeros(k, np.int64), 0.0, 0)

    def __add__(self, other: AssignStats) -> AssignStats:
        return AssignStats(self.sums + other.sums, self.counts + other.counts, self.inertia + other.inertia,
                           self.num_points + other.num_points)


@runtime_checkable
class ChunkSource(Protocol):
    """A fixed partition of an ``N x d`` float32 matrix into chunks (row ranges, in order).

    ``load_chunk`` must be a pure function of the chunk index, callable in any process (a Dask
    or Ray worker reads its chunk where it lies, e.g. Parquet row groups through fsspec).
    """

    num_rows: int
    dim: int

    def num_chunks(self) -> int:
        """Number of chunks."""
        ...

    def chunk_rows(self, i: int) -> int:
        """Rows in chunk ``i`` (without loading it)."""
        ...

    def load_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as a C-contiguous ``(rows, d)`` float32 array."""
        ...


@runtime_checkable
class GraphExecutor(Protocol):
    """Runs the per-chunk maps of k-means and nearest-anchor search; results reduced in chunk order."""

    source: ChunkSource

    def assign_reduce(self, centroids: np.ndarray, chunk_ids: Sequence[int] | None = None) -> AssignStats:
        """Assign the rows of the given chunks (all when None) to their nearest centroid; summed stats."""
        ...

    def take_rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows with these global indices (sorted, unique int64), as ``(len(rows), d)`` float32."""
        ...

    def nearest(self, centroids: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's ``a`` nearest centroids: ``(ids (N, a) int32, squared distances (N, a) float32)``,
        nearest first, ties broken by the lower centroid index; rows in global order."""
        ...

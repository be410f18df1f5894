"""The anchor graph's input: an embeddings dataset split into chunks (:class:`ParquetChunkSource`).

A :class:`~vhindex.graph.interfaces.ChunkSource` that holds only URLs and a plan, so it pickles
cheaply to Dask / Ray workers; :meth:`ParquetChunkSource.load_chunk` reads exactly that chunk's row
groups where it runs. Executors (:class:`~vhindex.graph.sequential.SequentialExecutor` here, the
Dask ones in ``cluster.graph``) map over its chunks.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from vhindex import fs as vfs
from vhindex.data import EmbeddingDataset, EmbeddingDatasetMeta, ReadTask
from vhindex.data.writer import DatasetManifest

__all__ = ["ParquetChunkSource", "sha256_json"]


class ParquetChunkSource:
    """A :class:`~vhindex.graph.interfaces.ChunkSource` over an embeddings dataset.

    The chunks are the dataset's read tasks (contiguous row-group ranges, planned with
    :func:`vhindex.data.planner.plan_tasks` so that no chunk exceeds ``rows_per_chunk`` rows
    unless a single row group does). The object holds only the URL, the storage options, the
    manifest and the plan -- no open files -- so it pickles cheaply to Dask / Ray workers, and
    :meth:`load_chunk` reads exactly that chunk's row groups where the worker runs.

    Args:
        url: fsspec URL of the embeddings dataset.
        storage_options: fsspec options (credentials, endpoint) for ``url``.
        rows_per_chunk: upper bound on rows per chunk (row groups are never split).
        check_finite: make :meth:`load_chunk` refuse NaN / Inf values (naming chunk, file, row).

    Raises:
        vhindex.data.IncompleteDatasetError: when the dataset has no manifest.
        ValueError: when it is not an embeddings dataset or has no rows.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        rows_per_chunk: int = 50_000,
        *,
        check_finite: bool = True,
    ) -> None:
        if isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, int) or rows_per_chunk <= 0:
            raise ValueError(f"rows_per_chunk must be a positive int, got {rows_per_chunk!r}")
        ds = EmbeddingDataset.open(url, storage_options)
        if ds.num_videos == 0:
            raise ValueError(f"embeddings dataset {url} is empty (0 videos); nothing to build a graph from")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.rows_per_chunk = rows_per_chunk
        self.check_finite = check_finite
        self.manifest: dict[str, Any] = ds.manifest.to_dict()
        self.meta: EmbeddingDatasetMeta = ds.meta
        self.num_rows: int = ds.num_videos
        self.dim: int = ds.meta.dim
        self.tasks: list[ReadTask] = ds.plan(max_rows_per_task=rows_per_chunk)
        self._dataset: EmbeddingDataset | None = None  # per-process cache, never pickled

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_dataset"] = None
        return state

    def _open(self) -> EmbeddingDataset:
        if self._dataset is None:
            fs, root = vfs.url_to_fs(self.url, self.storage_options or None)
            manifest = DatasetManifest.from_dict(self.manifest, source=f"{self.url} (planned manifest)")
            self._dataset = EmbeddingDataset(self.url, fs, root, manifest)
        return self._dataset

    def num_chunks(self) -> int:
        """Number of chunks (read tasks)."""
        return len(self.tasks)

    def chunk_rows(self, i: int) -> int:
        """Rows of chunk ``i`` (from the manifest, no IO)."""
        return self.tasks[self._check_index(i)].num_rows

    def chunk_offsets(self) -> np.ndarray:
        """``(num_chunks + 1,)`` int64 global row offsets of the chunks."""
        return np.concatenate([[0], np.cumsum([t.num_rows for t in self.tasks])]).astype(np.int64)

    def load_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as a C-contiguous ``(rows, dim)`` float32 array, read from its row groups only.

        Raises:
            ValueError: naming the chunk, the file and the row on NaN / Inf (with
                ``check_finite``), a null or malformed embedding, or files changed since planning.
        """
        task = self.tasks[self._check_index(i)]
        try:
            batch = self._open().read_rows(task, with_ids=False, check_finite=self.check_finite)
        except ValueError as err:
            raise ValueError(f"chunk {i} of {self.url}: {err}") from err
        return batch.embeddings

    def read_video_ids(self) -> list[str]:
        """All video ids in dataset (= row) order; read on the caller (ids only)."""
        ids = self._open().read_video_ids()
        if len(ids) != self.num_rows:
            raise ValueError(f"{self.url}: read {len(ids)} video ids but the manifest lists {self.num_rows}")
        return ids

    def manifest_hash(self) -> str:
        """SHA-256 of the dataset manifest (canonical JSON)."""
        return sha256_json(self.manifest)

    def content_signature(self) -> str:
        """Manifest hash plus each part file's size and ETag / modification time.

        Two reads of an unchanged dataset give the same signature; re-writing the files changes
        it even when the manifest comes out identical.
        """
        ds = self._open()
        stats = []
        for i in range(len(ds.manifest.files)):
            url = ds.file_url(i)
            fs, path = vfs.url_to_fs(url, self.storage_options or None)
            info = fs.info(path)
            stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") \
                or info.get("created")
            stats.append([info.get("size"), str(stamp)])
        return sha256_json({"manifest": self.manifest, "files": stats})

    def _check_index(self, i: int) -> int:
        if not 0 <= int(i) < len(self.tasks):
            raise IndexError(f"chunk index {i} out of range [0, {len(self.tasks)}) for {self.url}")
        return int(i)

    def __repr__(self) -> str:
        return f"ParquetChunkSource({self.url!r}, rows={self.num_rows}, dim={self.dim}, chunks={len(self.tasks)})"


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

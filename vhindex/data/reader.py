"""Streaming readers for frame-feature and codes datasets (layout: :mod:`vhindex.data.schema`).

Readers open a dataset through its ``_manifest.json`` (a folder without it is incomplete and is
refused) and stream it row group by row group: memory stays bounded by one row group plus one
batch, whatever the dataset size. Features come out as numpy arrays of shape (B, M, D) built from
the Arrow buffers without copying when the stored dtype is the requested one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vhindex import fs as vfs
from vhindex.data.planner import Piece, ReadTask, plan_tasks
from vhindex.data.schema import (
    COL_CODE,
    COL_EMBEDDING,
    COL_FEATURES,
    COL_LABELS,
    COL_VIDEO_ID,
    MANIFEST_NAME,
    CodesDatasetMeta,
    EmbeddingDatasetMeta,
    FrameDatasetMeta,
)
from vhindex.data.writer import DatasetManifest

__all__ = [
    "CodesBatch",
    "CodesDataset",
    "EmbeddingBatch",
    "EmbeddingDataset",
    "FrameBatch",
    "FrameDataset",
    "IncompleteDatasetError",
    "embeddings_to_numpy",
    "features_to_numpy",
]

logger = logging.getLogger(__name__)

_FRAME_COLUMNS = (COL_VIDEO_ID, COL_FEATURES, COL_LABELS)


class IncompleteDatasetError(FileNotFoundError):
    """The dataset folder has no ``_manifest.json`` (its writer never finished)."""


@dataclasses.dataclass
class FrameBatch:
    """A batch of videos of a frame-feature dataset.

    Attributes:
        video_ids: B ids.
        features: (B, M, D) array, or ``None`` when the column was not requested.
        labels: B lists of class ids (a null label cell reads as ``[]``), or ``None`` when the
            column was not requested or the dataset has no labels.
    """

    video_ids: list[str]
    features: np.ndarray | None
    labels: list[list[int]] | None

    def __len__(self) -> int:
        return len(self.video_ids)


@dataclasses.dataclass
class CodesBatch:
    """A batch of a codes dataset: B ids and a ``uint8`` (B, bits // 8) array of packed codes."""

    video_ids: list[str]
    codes: np.ndarray

    def __len__(self) -> int:
        return len(self.video_ids)


@dataclasses.dataclass
class EmbeddingBatch:
    """A batch of an embeddings dataset.

    Attributes:
        video_ids: B ids, or ``None`` when the column was not requested.
        embeddings: ``(B, dim)`` float32 array (C-contiguous).
    """

    video_ids: list[str] | None
    embeddings: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)


def features_to_numpy(
    array: pa.Array | pa.ChunkedArray,
    num_frames: int | None = None,
    feature_dim: int | None = None,
    *,
    where: str = "features",
    row_offset: int = 0,
) -> np.ndarray:
    """Convert a ``features`` column to a (B, M, D) numpy array.

    Accepts the fixed-size form vhindex writes and variable ``list<list<T>>`` /
    ``large_list`` columns written by other tools, checking every row has M frames of D values.
    For a fixed-size array without nulls the result views the Arrow buffer (no copy).

    Args:
        array: the column (one chunk or several).
        num_frames: expected M (taken from the data when ``None``).
        feature_dim: expected D (taken from the data when ``None``).
        where: file or dataset named in errors.
        row_offset: row number of ``array[0]`` in ``where`` (for errors).

    Raises:
        ValueError: naming ``where`` and the row when a row is null or has the wrong shape.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    n = len(array)
    if array.null_count:
        row = int(np.flatnonzero(~np.asarray(array.is_valid()))[0])
        raise ValueError(f"{where}: row {row_offset + row}: features are null")
    m = _list_len(array, num_frames, where, row_offset, per=1, axis="num_frames (M)")
    inner = array.flatten()  # respects slicing, unlike .values
    if inner.null_count:
        row = int(np.flatnonzero(~np.asarray(inner.is_valid()))[0]) // max(m, 1)
        raise ValueError(f"{where}: row {row_offset + row}: a frame of the features is null")
    d = _list_len(inner, feature_dim, where, row_offset, per=m, axis="feature_dim (D)")
    values = inner.flatten()
    if num_frames is not None and m != num_frames:
        raise ValueError(f"{where}: features have M={m} frames per video, expected num_frames={num_frames}")
    if feature_dim is not None and d != feature_dim:
        raise ValueError(f"{where}: features have D={d} dims per frame, expected feature_dim={feature_dim}")
    if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
        raise ValueError(f"{where}: feature values have type {values.type}, expected float16/float32")
    if values.null_count:
        row = int(np.flatnonzero(~np.asarray(values.is_valid()))[0]) // max(m * d, 1)
        raise ValueError(f"{where}: row {row_offset + row}: features contain null values")
    flat = values.to_numpy(zero_copy_only=False)
    assert flat.size == n * m * d, (flat.size, n, m, d)
    return flat.reshape(n, m, d)


def _list_len(array: pa.Array, expected: int | None, where: str, row_offset: int, per: int, axis: str) -> int:
    """The common length of the lists in ``array`` (checked row by row for variable lists)."""
    t = array.type
    if pa.types.is_fixed_size_list(t):
        return t.list_size
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        raise ValueError(
            f"{where}: column 'features' has type {t} at the {axis} level, expected a (fixed-size) list; "
            "features must be list<list<float>> of M frames x D dims"
        )
    lengths = np.diff(np.asarray(array.offsets))
    if lengths.size == 0:
        return expected if expected is not None else 0
    ref = expected if expected is not None else int(lengths[0])
    bad = np.flatnonzero(lengths != ref)
    if bad.size:
        i = int(bad[0])
        what = "frames" if per == 1 else f"dims in frame {i % per}"
        expect = f"expected {axis}={ref}" if expected is not None else f"but the first row has {ref} (ragged)"
        more = f" ({bad.size} bad entries in this batch)" if bad.size > 1 else ""
        raise ValueError(f"{where}: row {row_offset + i // per}: features have {int(lengths[i])} {what}, {expect}{more}")
    return ref


def _labels_to_lists(array: pa.Array | pa.ChunkedArray) -> list[list[int]]:
    return [row if row is not None else [] for row in array.to_pylist()]


def _open_manifest(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str, DatasetManifest]:
    fs, root = vfs.url_to_fs(url, storage_options)
    path = vfs.join(fs, root, MANIFEST_NAME)
    if not fs.exists(path):
        raise IncompleteDatasetError(
            f"incomplete dataset at {url}: no {MANIFEST_NAME} (was the writer closed?). "
            "Re-run the stage that writes it, or run vhindex.data.validate_dataset to inspect the parts"
        )
    manifest = DatasetManifest.from_dict(vfs.read_json(fs, path), source=vfs.unstrip(fs, path))
    return fs, root, manifest


def _resolve(fs: Any, root: str, relpath: str) -> str:
    """Path of a manifest entry; entries may point into a sibling dataset (``../database/...``)."""
    joined = vfs.join(fs, root, relpath)
    if ".." not in relpath:
        return joined
    return os.path.normpath(joined) if os.path.isabs(root) and not _is_remote(fs) else posixpath.normpath(joined)


def _is_remote(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol not in ("file", "local")


_D = TypeVar("_D", bound="_BaseDataset")


class _BaseDataset:
    def __init__(self, url: str, fs: Any, root: str, manifest: DatasetManifest) -> None:
        self.url = url
        self.manifest = manifest
        self._fs = fs
        self._root = root

    @classmethod
    def _open(cls: type[_D], url: str, storage_options: dict | None) -> _D:
        """Read the manifest at ``url`` and build the dataset; errors are prefixed with the URL."""
        fs, root, manifest = _open_manifest(url, storage_options)
        try:
            return cls(url, fs, root, manifest)
        except ValueError as err:
            raise ValueError(f"{url}: {err}") from err

    @property
    def num_videos(self) -> int:
        """Number of rows (videos) of the dataset, from the manifest."""
        return self.manifest.num_rows

    def __len__(self) -> int:
        return self.manifest.num_rows

    def file_url(self, file_index: int) -> str:
        """Full URL of part file ``file_index``."""
        return vfs.unstrip(self._fs, _resolve(self._fs, self._root, self.manifest.files[file_index].path))

    def plan(self, num_tasks: int | None = None, max_rows_per_task: int | None = None) -> list[ReadTask]:
        """Split the dataset into read tasks (see :func:`vhindex.data.planner.plan_tasks`)."""
        return plan_tasks([f.row_group_rows for f in self.manifest.files], num_tasks, max_rows_per_task)

    def _pieces(self, tasks: Iterable[ReadTask] | None) -> list[Piece]:
        if tasks is None:
            return [
                Piece(i, 0, len(f.row_group_rows)) for i, f in enumerate(self.manifest.files) if f.row_group_rows
            ]
        pieces = []
        nfiles = len(self.manifest.files)
        for task in tasks:
            for p in task.pieces:
                if not 0 <= p.file_index < nfiles or not (
                    0 <= p.row_group_start <= p.row_group_stop <= len(self.manifest.files[p.file_index].row_group_rows)
                ):
                    raise ValueError(f"read task {task.task_id} has piece {p} outside the dataset {self.url}; "
                                     "plan tasks with this dataset's plan()")
                pieces.append(p)
        return pieces

    def _iter_record_batches(
        self, pieces: list[Piece], columns: list[str], batch_size: int
    ) -> Iterator[tuple[pa.RecordBatch, str, int]]:
        """Yield ``(record batch, file URL, row offset in the file)`` reading one row group at a time."""
        for piece in pieces:
            info = self.manifest.files[piece.file_index]
            path = _resolve(self._fs, self._root, info.path)
            where = vfs.unstrip(self._fs, path)
            row = sum(info.row_group_rows[: piece.row_group_start])
            with self._fs.open(path, "rb") as fh:
                pf = pq.ParquetFile(fh)
                if pf.metadata.num_row_groups != len(info.row_group_rows):
                    raise ValueError(
                        f"{where} has {pf.metadata.num_row_groups} row groups but the manifest lists "
                        f"{len(info.row_group_rows)}; the dataset was modified after writing -- re-write it"
                    )
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise ValueError(f"{where} has no column(s) {missing}; columns are {pf.schema_arrow.names}")
                for rg in range(piece.row_group_start, piece.row_group_stop):
                    for batch in pf.iter_batches(batch_size=batch_size, row_groups=[rg], columns=columns,
                                                 use_threads=False):
                        yield batch, where, row
                        row += batch.num_rows


def _rebatch(
    source: Iterator[tuple[pa.RecordBatch, str, int]], batch_size: int, convert
) -> Iterator[Any]:
    """Convert every source batch (where file/row are known), then regroup into ``batch_size`` rows."""
    pending: list[Any] = []
    count = 0
    for batch, where, row in source:
        part = convert(batch, where, row)
        n = len(part[0])
        start = 0
        while start < n:
            take = min(batch_size - count, n - start)
            pending.append(tuple(None if col is None else col[start:start + take] for col in part))
            count += take
            start += take
            if count == batch_size:
                yield _concat(pending)
                pending, count = [], 0
    if count:
        yield _concat(pending)


def _concat(parts: list[tuple]) -> tuple:
    if len(parts) == 1:
        return parts[0]
    out = []
    for i, first in enumerate(parts[0]):
        if first is None:
            out.append(None)
        elif isinstance(first, np.ndarray):
            out.append(np.concatenate([p[i] for p in parts]))
        else:
            out.append([x for p in parts for x in p[i]])
    return tuple(out)


class FrameDataset(_BaseDataset):
    """A frame-feature dataset opened for streaming reads.

    Attributes:
        url: the dataset folder.
        meta: its :class:`FrameDatasetMeta`.
        manifest: its :class:`DatasetManifest`.
        num_videos: number of videos.
    """

    def __init__(self, url: str, fs: Any, root: str, manifest: DatasetManifest) -> None:
        super().__init__(url, fs, root, manifest)
        self.meta = FrameDatasetMeta.from_dict(manifest.meta)
        self._has_labels: bool | None = None

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None) -> FrameDataset:
        """Open the dataset at ``url`` through its manifest.

        Raises:
            IncompleteDatasetError: when there is no ``_manifest.json``.
            ValueError: when the manifest is not a frame-feature dataset's.
        """
        return cls._open(url, storage_options)

    @property
    def has_labels(self) -> bool:
        """Whether the part files carry a ``labels`` column (read from the first file)."""
        if self._has_labels is None:
            if not self.manifest.files:
                self._has_labels = False
            else:
                path = _resolve(self._fs, self._root, self.manifest.files[0].path)
                with self._fs.open(path, "rb") as fh:
                    self._has_labels = COL_LABELS in pq.ParquetFile(fh).schema_arrow.names
        return self._has_labels

    def iter_batches(
        self,
        batch_size: int = 1024,
        *,
        columns: Sequence[str] = _FRAME_COLUMNS,
        dtype: str | np.dtype | None = None,
        tasks: Iterable[ReadTask] | None = None,
    ) -> Iterator[FrameBatch]:
        """Stream the dataset (or the given read tasks) in dataset order.

        Args:
            batch_size: rows per batch (the last batch may be smaller).
            columns: which of ``video_id``, ``features``, ``labels`` to read (``video_id`` is
                always read). ``labels`` is skipped when the dataset has none.
            dtype: convert features to this numpy dtype (default: the stored dtype, no copy).
            tasks: read only these tasks (from :meth:`plan`), in the given order.

        Yields:
            :class:`FrameBatch` es of ``batch_size`` rows (the last one may be smaller). Only one
            row group plus one batch is held in memory at a time.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        unknown = [c for c in columns if c not in _FRAME_COLUMNS]
        if unknown:
            raise ValueError(f"unknown column(s) {unknown}; choose from {list(_FRAME_COLUMNS)}")
        cols = [COL_VIDEO_ID] + [c for c in (COL_FEATURES, COL_LABELS) if c in columns]
        if COL_LABELS in cols and not self.has_labels:
            cols.remove(COL_LABELS)
        np_dtype = np.dtype(dtype) if dtype is not None else None
        m, d = self.meta.num_frames, self.meta.feature_dim

        def convert(batch: pa.RecordBatch, where: str, row: int) -> tuple:
            ids = batch.column(COL_VIDEO_ID).to_pylist()
            feats = labels = None
            if COL_FEATURES in cols:
                feats = features_to_numpy(batch.column(COL_FEATURES), m, d, where=where, row_offset=row)
                if np_dtype is not None and feats.dtype != np_dtype:
                    feats = feats.astype(np_dtype)
            if COL_LABELS in cols:
                labels = _labels_to_lists(batch.column(COL_LABELS))
            return ids, feats, labels

        source = self._iter_record_batches(self._pieces(tasks), cols, batch_size)
        for ids, feats, labels in _rebatch(source, batch_size, convert):
            yield FrameBatch(video_ids=ids, features=feats, labels=labels)

    def read_video_ids(self) -> list[str]:
        """All video ids in dataset order."""
        out: list[str] = []
        for batch in self.iter_batches(8192, columns=(COL_VIDEO_ID,)):
            out.extend(batch.video_ids)
        return out

    def read_labels_multi_hot(self, num_classes: int | None = None) -> np.ndarray:
        """The labels as a boolean (N, C) multi-hot matrix, rows in dataset order.

        Args:
            num_classes: C; defaults to ``meta.num_classes``.

        Raises:
            ValueError: when the dataset has no labels, C is unknown, or a label is out of range.
        """
        c = num_classes if num_classes is not None else self.meta.num_classes
        if c is None:
            raise ValueError(f"{self.url}: meta.num_classes is not set; pass num_classes=")
        if not self.has_labels:
            raise ValueError(f"{self.url} has no labels column; it was written without labels")
        out = np.zeros((self.num_videos, c), dtype=bool)
        row = 0
        for batch in self.iter_batches(8192, columns=(COL_VIDEO_ID, COL_LABELS)):
            for i, labels in enumerate(batch.labels or []):
                if labels:
                    arr = np.asarray(labels, dtype=np.int64)
                    if arr.min() < 0 or arr.max() >= c:
                        raise ValueError(
                            f"{self.url}: video {batch.video_ids[i]!r} (row {row + i}) has label(s) "
                            f"{arr[(arr < 0) | (arr >= c)].tolist()} outside [0, {c})"
                        )
                    out[row + i, arr] = True
            row += len(batch)
        if row != self.num_videos:
            raise ValueError(f"{self.url}: read {row} rows but the manifest lists {self.num_videos}")
        return out


class CodesDataset(_BaseDataset):
    """A codes dataset opened for reading.

    Attributes:
        url: the dataset folder.
        meta: its :class:`CodesDatasetMeta`.
        manifest: its :class:`DatasetManifest`.
        num_videos: number of codes.
    """

    def __init__(self, url: str, fs: Any, root: str, manifest: DatasetManifest) -> None:
        super().__init__(url, fs, root, manifest)
        self.meta = CodesDatasetMeta.from_dict(manifest.meta)

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None) -> CodesDataset:
        """Open the codes dataset at ``url`` through its manifest (see :meth:`FrameDataset.open`)."""
        return cls._open(url, storage_options)

    def iter_batches(self, batch_size: int = 65536, *, tasks: Iterable[ReadTask] | None = None) -> Iterator[CodesBatch]:
        """Stream ``(video_ids, codes)`` batches in dataset order (see :meth:`FrameDataset.iter_batches`)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        width = self.meta.bits // 8

        def convert(batch: pa.RecordBatch, where: str, row: int) -> tuple:
            return batch.column(COL_VIDEO_ID).to_pylist(), _codes_to_numpy(batch.column(COL_CODE), width, where)

        source = self._iter_record_batches(self._pieces(tasks), [COL_VIDEO_ID, COL_CODE], batch_size)
        for ids, codes in _rebatch(source, batch_size, convert):
            yield CodesBatch(video_ids=ids, codes=codes)

    def read_all(self) -> tuple[list[str], np.ndarray]:
        """All ids and codes: ``(ids, uint8 array (N, bits // 8))``."""
        ids: list[str] = []
        codes = np.empty((self.num_videos, self.meta.bits // 8), dtype=np.uint8)
        row = 0
        for batch in self.iter_batches():
            if row + len(batch) > len(codes):
                raise ValueError(f"{self.url}: files hold more rows than the manifest's {self.num_videos}")
            ids.extend(batch.video_ids)
            codes[row:row + len(batch)] = batch.codes
            row += len(batch)
        if row != len(codes):
            raise ValueError(f"{self.url}: read {row} rows but the manifest lists {self.num_videos}")
        return ids, codes


def _codes_to_numpy(array: pa.Array, width: int, where: str) -> np.ndarray:
    if not pa.types.is_fixed_size_binary(array.type) or array.type.byte_width != width:
        raise ValueError(f"{where}: column 'code' has type {array.type}, expected fixed_size_binary({width})")
    if array.null_count:
        raise ValueError(f"{where}: column 'code' has {array.null_count} null values")
    n = len(array)
    buf = array.buffers()[1]
    return np.frombuffer(buf, dtype=np.uint8, count=n * width, offset=array.offset * width).reshape(n, width)


def embeddings_to_numpy(
    array: pa.Array | pa.ChunkedArray,
    dim: int,
    *,
    where: str = "embedding",
    row_offset: int = 0,
    check_finite: bool = False,
) -> np.ndarray:
    """Convert an ``embedding`` column to a ``(B, dim)`` float32 array.

    Accepts the fixed-size form vhindex writes and variable ``list<T>`` / ``large_list<T>``
    columns (each row checked to have ``dim`` values).

    Args:
        array: the column (one chunk or several).
        dim: expected number of values per row.
        where: file or dataset named in errors.
        row_offset: row number of ``array[0]`` in ``where`` (for errors).
        check_finite: raise on NaN / Inf values (naming the first bad row).

    Raises:
        ValueError: naming ``where`` and the row when a row is null, has the wrong length, holds
            nulls, or (with ``check_finite``) non-finite values.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    n = len(array)
    if array.null_count:
        row = int(np.flatnonzero(~np.asarray(array.is_valid()))[0])
        raise ValueError(f"{where}: row {row_offset + row}: embedding is null")
    got = _list_len(array, dim, where, row_offset, per=1, axis="dim")
    if got != dim:
        raise ValueError(f"{where}: embeddings have {got} dims, expected dim={dim} (from the dataset metadata)")
    values = array.flatten()  # respects slicing, unlike .values
    if not pa.types.is_floating(values.type) and not pa.types.is_integer(values.type):
        raise ValueError(f"{where}: embedding values have type {values.type}, expected float16/float32")
    if values.null_count:
        row = int(np.flatnonzero(~np.asarray(values.is_valid()))[0]) // max(dim, 1)
        raise ValueError(f"{where}: row {row_offset + row}: embedding contains null values")
    flat = values.to_numpy(zero_copy_only=False)
    assert flat.size == n * dim, (flat.size, n, dim)
    out = flat.reshape(n, dim)
    if out.dtype != np.float32:
        out = out.astype(np.float32)
    if check_finite and n:
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ValueError(
                f"{where}: row {row_offset + int(rows[0])}: embedding has NaN/Inf values "
                f"({rows.size} bad row(s) in this batch); fix or drop these videos before building the graph"
            )
    return out


class EmbeddingDataset(_BaseDataset):
    """An embeddings dataset (one vector per video) opened for streaming reads.

    Attributes:
        url: the dataset folder.
        meta: its :class:`EmbeddingDatasetMeta`.
        manifest: its :class:`DatasetManifest`.
        num_videos: number of videos.
    """

    def __init__(self, url: str, fs: Any, root: str, manifest: DatasetManifest) -> None:
        super().__init__(url, fs, root, manifest)
        self.meta = EmbeddingDatasetMeta.from_dict(manifest.meta)

    @classmethod
    def open(cls, url: str, storage_options: dict | None = None) -> EmbeddingDataset:
        """Open the embeddings dataset at ``url`` through its manifest.

        Raises:
            IncompleteDatasetError: when there is no ``_manifest.json``.
            ValueError: when the manifest is not an embeddings dataset's.
        """
        return cls._open(url, storage_options)

    @property
    def dim(self) -> int:
        """d, dimensions of one embedding."""
        return self.meta.dim

    def iter_batches(
        self,
        batch_size: int = 65536,
        *,
        with_ids: bool = True,
        tasks: Iterable[ReadTask] | None = None,
        check_finite: bool = False,
    ) -> Iterator[EmbeddingBatch]:
        """Stream ``(video_ids, embeddings)`` batches in dataset order.

        Args:
            batch_size: rows per batch (the last batch may be smaller).
            with_ids: read the ``video_id`` column (else ``video_ids`` is ``None``).
            tasks: read only these tasks (from :meth:`plan`), in the given order.
            check_finite: raise a ValueError naming the file and row on NaN / Inf values.

        Yields:
            :class:`EmbeddingBatch` es with ``(B, dim)`` float32 embeddings; one row group plus
            one batch is held in memory at a time.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        cols = ([COL_VIDEO_ID] if with_ids else []) + [COL_EMBEDDING]
        dim = self.meta.dim

        def convert(batch: pa.RecordBatch, where: str, row: int) -> tuple:
            ids = batch.column(COL_VIDEO_ID).to_pylist() if with_ids else None
            emb = embeddings_to_numpy(batch.column(COL_EMBEDDING), dim, where=where, row_offset=row,
                                      check_finite=check_finite)
            return emb, ids  # the first entry must be an array (its length drives re-batching)

        source = self._iter_record_batches(self._pieces(tasks), cols, batch_size)
        for emb, ids in _rebatch(source, batch_size, convert):
            yield EmbeddingBatch(video_ids=ids, embeddings=emb)

    def read_rows(
        self, task: ReadTask | None = None, *, with_ids: bool = True, check_finite: bool = False
    ) -> EmbeddingBatch:
        """All rows of one read task (from :meth:`plan`), or of the whole dataset when ``None``.

        Returns:
            One :class:`EmbeddingBatch` with a C-contiguous ``(rows, dim)`` float32 array.

        Raises:
            ValueError: when the files hold a different number of rows than the plan / manifest
                says, or on a value problem (see :meth:`iter_batches`).
        """
        expected = self.num_videos if task is None else task.num_rows
        tasks = None if task is None else [task]
        out = np.empty((expected, self.meta.dim), dtype=np.float32)
        ids: list[str] | None = [] if with_ids else None
        row = 0
        for batch in self.iter_batches(max(min(expected, 65536), 1), with_ids=with_ids, tasks=tasks,
                                       check_finite=check_finite):
            n = len(batch)
            if row + n > expected:
                raise ValueError(f"{self.url}: files hold more rows than the manifest lists ({expected} "
                                 f"for {'the dataset' if task is None else f'read task {task.task_id}'})")
            out[row:row + n] = batch.embeddings
            if ids is not None:
                ids.extend(batch.video_ids or [])
            row += n
        if row != expected:
            raise ValueError(f"{self.url}: read {row} rows but the manifest lists {expected}; the dataset was "
                             "modified after writing -- re-write it")
        return EmbeddingBatch(video_ids=ids, embeddings=out)

    def read_video_ids(self) -> list[str]:
        """All video ids in dataset order."""
        out: list[str] = []
        for piece_batch, _, _ in self._iter_record_batches(self._pieces(None), [COL_VIDEO_ID], 65536):
            out.extend(piece_batch.column(0).to_pylist())
        return out

"""Streaming writers for frame-feature and codes datasets (layout: :mod:`vhindex.data.schema`).

A writer buffers at most one row group, writes Parquet part files ``part-00000.parquet``, ...
with :class:`pyarrow.parquet.ParquetWriter` (a new part every ``rows_per_file`` rows) and, on
:meth:`close`, writes ``_manifest.json`` **last**. A folder without the manifest is an incomplete
dataset (the writer crashed or was not closed), which readers refuse to open.

Example::

    meta = FrameDatasetMeta(num_frames=25, feature_dim=4096, dtype="float16", extractor="vgg16")
    with FrameDatasetWriter("s3://bucket/fcvid/train", meta, storage_options=opts) as writer:
        for ids, feats in batches:
            writer.write(ids, feats)        # feats: (B, 25, 4096)
    manifest = writer.manifest
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vhindex import fs as vfs
from vhindex.data.schema import (
    COL_VIDEO_ID,
    MANIFEST_NAME,
    PART_NAME,
    CodesDatasetMeta,
    EmbeddingDatasetMeta,
    FrameDatasetMeta,
    codes_schema,
    embedding_schema,
    frame_schema,
)

__all__ = ["CodesDatasetWriter", "DatasetManifest", "EmbeddingDatasetWriter", "FileInfo", "FrameDatasetWriter"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FileInfo:
    """One part file of a dataset.

    Attributes:
        path: file name relative to the dataset folder (``part-00000.parquet``; may be
            ``../other/part-00000.parquet`` for a dataset that shares another's files).
        num_rows: rows in the file.
        row_group_rows: rows of each row group, in order (sums to ``num_rows``).
    """

    path: str
    num_rows: int
    row_group_rows: list[int]


@dataclasses.dataclass
class DatasetManifest:
    """Contents of ``_manifest.json``: the dataset metadata and its files.

    Attributes:
        meta: the dataset metadata as a dict (``json.loads(meta.to_json())``, with the format tag).
        files: the part files in dataset order.
        num_rows: total rows (videos) of the dataset.
    """

    meta: dict[str, Any]
    files: list[FileInfo]
    num_rows: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: Any, source: str = "manifest") -> DatasetManifest:
        """Parse :meth:`to_dict` output; ``source`` names the file in error messages."""
        try:
            files = [
                FileInfo(path=str(f["path"]), num_rows=int(f["num_rows"]), row_group_rows=[int(r) for r in f["row_group_rows"]])
                for f in obj["files"]
            ]
            manifest = cls(meta=dict(obj["meta"]), files=files, num_rows=int(obj["num_rows"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{source} is not a valid vhindex manifest ({type(err).__name__}: {err}); "
                "expected keys 'meta', 'files' [{path, num_rows, row_group_rows}], 'num_rows'"
            ) from err
        return manifest


def _check_ids(video_ids: Sequence[str], batch_rows: int, seen: set[str]) -> list[str]:
    ids = list(video_ids)
    if len(ids) != batch_rows:
        raise ValueError(f"got {len(ids)} video ids for {batch_rows} rows; pass one id per row")
    for i, vid in enumerate(ids):
        if not isinstance(vid, str) or not vid:
            raise ValueError(f"video id at batch position {i} must be a non-empty str, got {vid!r}")
        if vid in seen:
            raise ValueError(f"duplicate video id {vid!r} (batch position {i}); video ids must be unique in a dataset")
        seen.add(vid)
    return ids


def _cast_checked(values: np.ndarray, dtype: np.dtype, ids: Sequence[str], url: str, what: str) -> np.ndarray:
    """Cast a batch ``(B, ...)`` to the storage dtype, C-contiguous.

    Casting to float16 turns finite values above 65504 into Inf: such a batch is refused (naming
    the first video) rather than stored with its values lost.
    """
    with np.errstate(over="ignore"):  # overflow is detected and reported just below
        flat = np.ascontiguousarray(values, dtype=dtype)
    if flat.dtype == np.float16 and values.dtype != np.float16:
        rows = values.shape[0]
        overflow = ~np.isfinite(flat).reshape(rows, -1).all(axis=1) & np.isfinite(values).reshape(rows, -1).all(axis=1)
        if overflow.any():
            row = int(np.flatnonzero(overflow)[0])
            raise ValueError(
                f"video {ids[row]!r} has {what} values beyond float16's range (max 65504) for {url}; "
                f"scale the {what}s or write the dataset with dtype='float32'"
            )
    return flat


class _PartWriter:
    """Shared machinery: folder preparation, row-group buffering, part rolling, manifest."""

    def __init__(
        self,
        url: str,
        schema: pa.Schema,
        meta_json: str,
        *,
        rows_per_file: int,
        row_group_size: int,
        storage_options: dict[str, Any] | None,
        overwrite: bool,
    ) -> None:
        for name, value in (("rows_per_file", rows_per_file), ("row_group_size", row_group_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.url = url
        self._fs, self._root = vfs.url_to_fs(url, storage_options)
        self._schema = schema
        self._meta_json = meta_json
        self._rows_per_file = rows_per_file
        self._row_group_size = row_group_size
        self._seen: set[str] = set()
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0
        self._files: list[FileInfo] = []
        self._pq_writer: pq.ParquetWriter | None = None
        self._fh: Any = None
        self._part_rows = 0
        self._manifest: DatasetManifest | None = None
        self._closed = False
        self._prepare_folder(overwrite)

    def _new_ids(self, video_ids: Sequence[str], batch_rows: int) -> list[str]:
        """Check a batch's ids (one per row, non-empty, unique in the batch and never written before).

        The ids are not recorded here: a writer records them once the whole batch is accepted.
        """
        ids = _check_ids(video_ids, batch_rows, set())
        dup = next((v for v in ids if v in self._seen), None)
        if dup is not None:
            raise ValueError(f"duplicate video id {dup!r}: already written to {self.url}; video ids must be unique")
        return ids

    # -- folder -------------------------------------------------------------------------------
    def _prepare_folder(self, overwrite: bool) -> None:
        vfs.prepare_dataset_folder(self._fs, self._root, self.url, overwrite, MANIFEST_NAME)
        if overwrite:
            logger.info("overwrite=True: cleared the old dataset files in %s", self.url)

    # -- buffering ----------------------------------------------------------------------------
    def _append(self, num_rows: int, make_batch: Callable[[int, int, bool], pa.RecordBatch]) -> None:
        """Queue rows ``[0, num_rows)`` of the caller's batch; write every row group that fills up.

        ``make_batch(start, stop, copy)`` builds the Arrow batch of rows ``[start, stop)``; with
        ``copy=True`` it must not share memory with the caller's arrays (rows kept in the buffer
        after :meth:`write` returns must not change when the caller reuses its arrays).
        """
        if self._closed:
            raise RuntimeError(f"writer for {self.url} is closed; open a new writer to write more rows")
        offset = 0
        while offset < num_rows:
            room = min(self._row_group_size, self._rows_per_file - self._part_rows) - self._buffered
            take = min(room, num_rows - offset)
            if take == room and not self._buffer:
                piece = make_batch(offset, offset + take, False)
                self._write_row_group(pa.Table.from_batches([piece], schema=self._schema))
            else:
                self._buffer.append(make_batch(offset, offset + take, True))
                self._buffered += take
                if take == room:
                    self._flush()
            offset += take

    def _flush(self) -> None:
        if not self._buffered:
            return
        table = pa.Table.from_batches(self._buffer, schema=self._schema)
        self._buffer = []
        self._buffered = 0
        self._write_row_group(table)

    def _write_row_group(self, table: pa.Table) -> None:
        if self._pq_writer is None:
            name = PART_NAME.format(index=len(self._files))
            self._fh = self._fs.open(vfs.join(self._fs, self._root, name), "wb")
            # Dictionary encoding and min/max statistics only pay off for the id column; on the
            # feature values they cost ~45% of write time and slow reads ~5x for no gain.
            self._pq_writer = pq.ParquetWriter(
                self._fh,
                self._schema,
                compression="zstd",
                use_dictionary=[COL_VIDEO_ID],
                write_statistics=[COL_VIDEO_ID],
            )
            self._files.append(FileInfo(path=name, num_rows=0, row_group_rows=[]))
        self._pq_writer.write_table(table, row_group_size=max(table.num_rows, 1))
        info = self._files[-1]
        info.num_rows += table.num_rows
        info.row_group_rows.append(table.num_rows)
        self._part_rows += table.num_rows
        if self._part_rows >= self._rows_per_file:
            self._close_part()

    def _close_part(self) -> None:
        if self._pq_writer is not None:
            try:
                self._pq_writer.close()
            finally:
                self._fh.close()
            self._pq_writer = None
            self._fh = None
            self._part_rows = 0

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def manifest(self) -> DatasetManifest | None:
        """The manifest written by :meth:`close` (``None`` before)."""
        return self._manifest

    @property
    def num_rows(self) -> int:
        """Rows accepted so far (written or buffered)."""
        return len(self._seen)

    def close(self) -> DatasetManifest:
        """Flush, close the last part file and write ``_manifest.json`` (last).

        Returns:
            The manifest. Calling ``close`` again returns the same manifest.
        """
        if self._manifest is not None:
            return self._manifest
        if self._closed:
            raise RuntimeError(f"writer for {self.url} was aborted; its dataset is incomplete (no manifest)")
        self._flush()
        self._close_part()
        self._closed = True
        manifest = DatasetManifest(
            meta=json.loads(self._meta_json),
            files=self._files,
            num_rows=sum(f.num_rows for f in self._files),
        )
        assert manifest.num_rows == len(self._seen)
        vfs.write_json_atomic(self._fs, vfs.join(self._fs, self._root, MANIFEST_NAME), manifest.to_dict())
        self._manifest = manifest
        logger.info("wrote %d rows in %d files to %s", manifest.num_rows, len(manifest.files), self.url)
        return manifest

    def abort(self) -> None:
        """Close open files without writing the manifest (the dataset stays incomplete)."""
        self._buffer = []
        self._buffered = 0
        self._closed = True
        self._close_part()

    def __enter__(self):  # noqa: D105
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: D105
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FrameDatasetWriter(_PartWriter):
    """Write a frame-feature dataset (``video_id``, ``features`` (M x D), optional ``labels``).

    Args:
        url: dataset folder (fsspec URL).
        meta: dataset metadata; features are cast to ``meta.dtype``.
        with_labels: write the ``labels`` column (then every :meth:`write` must pass labels).
        rows_per_file: rows per part file before rolling to the next.
        row_group_size: rows per Parquet row group (the unit of streaming reads).
        storage_options: fsspec filesystem options (credentials, endpoint).
        overwrite: replace an existing dataset at ``url`` (removes its parts and manifest first);
            otherwise a non-empty folder is an error.

    Use as a context manager: leaving the block normally closes the writer (writes the
    manifest); leaving it with an exception closes the files but writes no manifest.
    """

    def __init__(
        self,
        url: str,
        meta: FrameDatasetMeta,
        *,
        with_labels: bool = False,
        rows_per_file: int = 50_000,
        row_group_size: int = 1_000,
        storage_options: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(meta, FrameDatasetMeta):
            raise TypeError(f"meta must be a FrameDatasetMeta, got {type(meta).__name__}")
        self.meta = meta
        self.with_labels = bool(with_labels)
        self._np_dtype = np.dtype(meta.dtype)
        self._value_type = pa.from_numpy_dtype(self._np_dtype)
        super().__init__(
            url,
            frame_schema(meta, self.with_labels),
            meta.to_json(),
            rows_per_file=rows_per_file,
            row_group_size=row_group_size,
            storage_options=storage_options,
            overwrite=overwrite,
        )

    def write(
        self,
        video_ids: Sequence[str],
        features: np.ndarray,
        labels: Sequence[Sequence[int]] | None = None,
    ) -> None:
        """Append a batch of videos.

        Args:
            video_ids: B unique, non-empty ids (unique across everything this writer wrote).
            features: array of shape (B, M, D); cast to ``meta.dtype``.
            labels: B lists of class ids (required iff ``with_labels``); each id in
                ``[0, meta.num_classes)`` when ``num_classes`` is set. ``None`` entries are
                stored as null (unknown labels).

        Raises:
            ValueError: on a shape, id or label problem (nothing of the batch is written).
        """
        m, d = self.meta.num_frames, self.meta.feature_dim
        feats = np.asarray(features)
        if feats.ndim != 3 or feats.shape[1:] != (m, d):
            raise ValueError(
                f"features must have shape (B, M={m}, D={d}) for {self.url}, got {feats.shape}; "
                "reshape the batch or create the writer with matching FrameDatasetMeta"
            )
        if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
            raise ValueError(f"features must be a numeric array, got dtype {feats.dtype}")
        b = feats.shape[0]
        if self.with_labels and labels is None:
            raise ValueError(f"writer for {self.url} was created with with_labels=True: pass labels for every batch")
        if not self.with_labels and labels is not None:
            raise ValueError(
                f"labels given but the writer for {self.url} was created with with_labels=False; "
                "create it with with_labels=True to store labels"
            )
        label_array = self._label_array(labels, b) if self.with_labels else None
        # Check ids last: they are recorded as seen only when the whole batch is valid.
        ids = self._new_ids(video_ids, b)
        if b == 0:
            self._seen.update(ids)
            return
        flat = _cast_checked(feats, self._np_dtype, ids, self.url, "feature")
        self._seen.update(ids)
        id_array = pa.array(ids, type=pa.string())

        def make_batch(start: int, stop: int, copy: bool) -> pa.RecordBatch:
            part = flat[start:stop]
            if copy and np.shares_memory(part, feats):
                part = part.copy()
            values = pa.array(part.reshape(-1), type=self._value_type)  # zero-copy from numpy
            outer = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(values, d), m)
            # ids and labels are Arrow-owned already; slicing them shares no caller memory
            columns = [id_array.slice(start, stop - start), outer]
            if label_array is not None:
                columns.append(label_array.slice(start, stop - start))
            return pa.RecordBatch.from_arrays(columns, schema=self._schema)

        self._append(b, make_batch)

    def _label_array(self, labels: Sequence[Sequence[int]] | None, b: int) -> pa.Array:
        assert labels is not None
        labels = list(labels)
        if len(labels) != b:
            raise ValueError(f"got {len(labels)} label lists for {b} rows; pass one list of class ids per row")
        c = self.meta.num_classes
        lengths = np.zeros(b, dtype=np.int64)
        valid = np.ones(b, dtype=bool)
        parts = []
        for i, row in enumerate(labels):
            if row is None:
                valid[i] = False
                continue
            arr = np.asarray(row)
            if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"labels at batch position {i} must be a 1-D list of ints, got {row!r}")
            if arr.size and (arr.min() < 0 or (c is not None and arr.max() >= c)):
                bad = arr[(arr < 0) | ((arr >= c) if c is not None else False)]
                raise ValueError(
                    f"label {int(bad[0])} at batch position {i} is out of range [0, "
                    f"{c if c is not None else 'inf'}); fix the labels or meta.num_classes"
                )
            lengths[i] = arr.size
            parts.append(arr.astype(np.int32))
        offsets = np.zeros(b + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
        mask = None if valid.all() else pa.array(~valid)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()), mask=mask)


class CodesDatasetWriter(_PartWriter):
    """Write a codes dataset (``video_id``, ``code`` = packed bits, ``bits // 8`` bytes).

    Args are as for :class:`FrameDatasetWriter`, with ``meta`` a :class:`CodesDatasetMeta`.
    """

    def __init__(
        self,
        url: str,
        meta: CodesDatasetMeta,
        *,
        rows_per_file: int = 50_000,
        row_group_size: int = 1_000,
        storage_options: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(meta, CodesDatasetMeta):
            raise TypeError(f"meta must be a CodesDatasetMeta, got {type(meta).__name__}")
        self.meta = meta
        super().__init__(
            url,
            codes_schema(meta),
            meta.to_json(),
            rows_per_file=rows_per_file,
            row_group_size=row_group_size,
            storage_options=storage_options,
            overwrite=overwrite,
        )

    def write(self, video_ids: Sequence[str], codes: np.ndarray) -> None:
        """Append a batch of packed codes.

        Args:
            video_ids: B unique, non-empty ids.
            codes: ``uint8`` array of shape (B, bits // 8) (see :mod:`vhindex.index.codes`).
        """
        nbytes = self.meta.bits // 8
        arr = np.asarray(codes)
        if arr.dtype != np.uint8:
            raise ValueError(
                f"codes must be packed uint8 bytes, got dtype {arr.dtype}; pack {{-1,+1}} codes with "
                "vhindex.index.codes first"
            )
        if arr.ndim != 2 or arr.shape[1] != nbytes:
            raise ValueError(f"codes must have shape (B, bits/8={nbytes}) for {self.meta.bits} bits, got {arr.shape}")
        b = arr.shape[0]
        ids = self._new_ids(video_ids, b)
        self._seen.update(ids)
        if b == 0:
            return
        contiguous = np.ascontiguousarray(arr)
        id_array = pa.array(ids, type=pa.string())

        def make_batch(start: int, stop: int, copy: bool) -> pa.RecordBatch:
            part = contiguous[start:stop]
            if copy and np.shares_memory(part, arr):
                part = part.copy()
            code_array = pa.Array.from_buffers(pa.binary(nbytes), stop - start, [None, pa.py_buffer(part)])
            return pa.RecordBatch.from_arrays([id_array.slice(start, stop - start), code_array], schema=self._schema)

        self._append(b, make_batch)


class EmbeddingDatasetWriter(_PartWriter):
    """Write an embeddings dataset (``video_id``, ``embedding`` = one ``dim``-vector per video).

    Args are as for :class:`FrameDatasetWriter`, with ``meta`` an :class:`EmbeddingDatasetMeta`;
    embeddings are cast to ``meta.dtype``. Non-finite values are stored as given (the graph stage
    refuses them, naming the file); finite values beyond float16's range are refused.
    """

    def __init__(
        self,
        url: str,
        meta: EmbeddingDatasetMeta,
        *,
        rows_per_file: int = 100_000,
        row_group_size: int = 10_000,
        storage_options: dict | None = None,
        overwrite: bool = False,
    ) -> None:
        if not isinstance(meta, EmbeddingDatasetMeta):
            raise TypeError(f"meta must be an EmbeddingDatasetMeta, got {type(meta).__name__}")
        self.meta = meta
        self._np_dtype = np.dtype(meta.dtype)
        self._value_type = pa.from_numpy_dtype(self._np_dtype)
        super().__init__(
            url,
            embedding_schema(meta),
            meta.to_json(),
            rows_per_file=rows_per_file,
            row_group_size=row_group_size,
            storage_options=storage_options,
            overwrite=overwrite,
        )

    def write(self, video_ids: Sequence[str], embeddings: np.ndarray) -> None:
        """Append a batch of videos.

        Args:
            video_ids: B unique, non-empty ids (unique across everything this writer wrote).
            embeddings: array of shape (B, dim); cast to ``meta.dtype``.

        Raises:
            ValueError: on a shape, dtype or id problem (nothing of the batch is written).
        """
        d = self.meta.dim
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[1] != d:
            raise ValueError(
                f"embeddings must have shape (B, dim={d}) for {self.url}, got {emb.shape}; "
                "reshape the batch or create the writer with a matching EmbeddingDatasetMeta"
            )
        if not (np.issubdtype(emb.dtype, np.floating) or np.issubdtype(emb.dtype, np.integer)):
            raise ValueError(f"embeddings must be a numeric array, got dtype {emb.dtype}")
        b = emb.shape[0]
        ids = self._new_ids(video_ids, b)
        if b == 0:
            self._seen.update(ids)
            return
        flat = _cast_checked(emb, self._np_dtype, ids, self.url, "embedding")
        self._seen.update(ids)
        id_array = pa.array(ids, type=pa.string())

        def make_batch(start: int, stop: int, copy: bool) -> pa.RecordBatch:
            part = flat[start:stop]
            if copy and np.shares_memory(part, emb):
                part = part.copy()
            values = pa.array(part.reshape(-1), type=self._value_type)  # zero-copy from numpy
            column = pa.FixedSizeListArray.from_arrays(values, d)
            return pa.RecordBatch.from_arrays([id_array.slice(start, stop - start), column], schema=self._schema)

        self._append(b, make_batch)

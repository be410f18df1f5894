"""Stable mapping between video ids (strings) and the int64 positions used inside faiss indexes.

faiss stores vectors by position (0, 1, 2, ... in insertion order); vhindex talks in ``video_id``
strings. :class:`IdMap` keeps the two in step: the ``i``-th id added gets position ``i``, forever
(there is no removal, so positions never shift).

On disk an id map is one Parquet file with a single non-null ``string`` column ``video_id``; the
row number is the position.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vhindex.fs import url_to_fs, write_bytes_atomic

COL_VIDEO_ID = "video_id"


class IdMap:
    """Bidirectional ``video_id`` <-> int64 position map, positions in insertion order.

    Example:
        >>> m = IdMap()
        >>> m.add(["a", "b"])
        array([0, 1])
        >>> m.to_ints(["b"]).tolist(), m.to_ids([1, -1]).tolist()
        ([1], ['b', None])
    """

    def __init__(self, ids: Iterable[str] = ()) -> None:
        """Create a map, optionally pre-filled with ``ids`` (positions 0..len-1)."""
        self._ids: list[str] = []
        self._pos: dict[str, int] = {}
        self._array: np.ndarray | None = None  # cached object array of ids for to_ids
        ids = list(ids)
        if ids:
            self.add(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._pos

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._ids == other._ids

    def __repr__(self) -> str:
        return f"IdMap(n={len(self)})"

    @property
    def ids(self) -> list[str]:
        """A copy of all ids in position order."""
        return list(self._ids)

    def add(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Append ids; return their new positions (``int64``).

        Either all ids are added or none: the batch is validated first.

        Raises:
            TypeError: an id is not a ``str``.
            ValueError: an id is already in the map or repeats within ``ids`` (named in the error).
        """
        ids = [ids] if isinstance(ids, str) else list(ids)
        seen: set[str] = set()
        for video_id in ids:
            if not isinstance(video_id, str):
                raise TypeError(f"video ids must be str, got {video_id!r} ({type(video_id).__name__})")
            if video_id in self._pos:
                raise ValueError(
                    f"duplicate video id {video_id!r}: already at position {self._pos[video_id]}; "
                    "video ids must be unique across the index"
                )
            if video_id in seen:
                raise ValueError(f"duplicate video id {video_id!r} within the batch being added; ids must be unique")
            seen.add(video_id)
        start = len(self._ids)
        for offset, video_id in enumerate(ids):
            self._pos[video_id] = start + offset
        self._ids.extend(ids)
        self._array = None
        return np.arange(start, start + len(ids), dtype=np.int64)

    def to_ints(self, ids: Iterable[str]) -> np.ndarray:
        """Positions (``int64``) of ``ids``.

        Raises:
            KeyError: an id is not in the map (named in the error).
        """
        ids = [ids] if isinstance(ids, str) else ids
        out = []
        for video_id in ids:
            try:
                out.append(self._pos[video_id])
            except (KeyError, TypeError):
                raise KeyError(f"unknown video id {video_id!r}: not in this index ({len(self)} ids)") from None
        return np.asarray(out, dtype=np.int64)

    def to_ids(self, ints: np.ndarray | Sequence[int]) -> np.ndarray:
        """Video ids at positions ``ints`` (any shape), as an object array; ``-1`` gives ``None``.

        Raises:
            IndexError: a position is out of range (other than ``-1``).
        """
        ints = np.asarray(ints)
        if ints.size and not np.issubdtype(ints.dtype, np.integer):
            raise TypeError(f"positions must be integers, got dtype {ints.dtype}")
        ints = ints.astype(np.int64, copy=False)
        bad = (ints < -1) | (ints >= len(self))
        if bad.any():
            raise IndexError(
                f"position {int(ints[bad].flat[0])} out of range for an id map of {len(self)} ids (-1 means 'none')"
            )
        if self._array is None:
            # one trailing None so that position -1 maps to None by plain fancy indexing
            self._array = np.empty(len(self._ids) + 1, dtype=object)
            self._array[:-1] = self._ids
        return self._array[ints]

    # ---------------------------------------------------------------- persistence

    def to_parquet_bytes(self) -> bytes:
        """Serialise to Parquet bytes (one ``video_id`` column, row number = position)."""
        table = pa.table({COL_VIDEO_ID: pa.array(self._ids, type=pa.string())})
        table = table.cast(pa.schema([pa.field(COL_VIDEO_ID, pa.string(), nullable=False)]))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    @classmethod
    def from_parquet_bytes(cls, data: bytes, *, source: str = "<bytes>") -> IdMap:
        """Parse bytes written by :meth:`to_parquet_bytes`; ``source`` names them in errors."""
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowInvalid, OSError) as err:
            raise ValueError(f"{source} is not a readable Parquet id map: {err}") from err
        if COL_VIDEO_ID not in table.column_names:
            raise ValueError(f"{source} has no {COL_VIDEO_ID!r} column (columns: {table.column_names})")
        column = table.column(COL_VIDEO_ID)
        if column.null_count:
            raise ValueError(f"{source}: column {COL_VIDEO_ID!r} holds {column.null_count} nulls")
        return cls(column.to_pylist())

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        """Write the map as a Parquet file at ``url`` (atomically where the filesystem allows)."""
        fs, path = url_to_fs(url, storage_options)
        write_bytes_atomic(fs, path, self.to_parquet_bytes())

    @classmethod
    def load(cls, url: str, storage_options: dict[str, Any] | None = None) -> IdMap:
        """Read a map written by :meth:`save`."""
        fs, path = url_to_fs(url, storage_options)
        try:
            with fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"id map {url} does not exist") from None
        return cls.from_parquet_bytes(data, source=url)

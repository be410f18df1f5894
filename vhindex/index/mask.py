"""Category-mask Hamming distance (DVHCM, "Deep Hashing with Category Mask for Fast Video Retrieval").

The query's category ``c`` (a classifier output) selects a row ``M[c]`` of a per-category bit-mask
table, and only the bits set in that row count:

    d(q, x) = popcount((b_q XOR b_x) AND M[c])            (paper, Eq. 8)

``M[c]`` all ones gives the plain Hamming distance. The table is built after training from the
classifier's weights: row ``c`` keeps the ``ratio * L`` bits with the largest absolute weight of
class ``c`` (Eq. 5; see :meth:`MaskTable.from_classifier_weights`).

Exact search: ``(b_q XOR b_x) AND M = (b_q AND M) XOR (b_x AND M)``, so for each distinct category
among the queries, :func:`masked_search` masks the database codes once (one vectorised ``&``),
puts them in a temporary faiss ``IndexBinaryFlat`` (an ``add`` there is a memcpy) and searches the
masked queries with faiss's popcount scan. The masked indexes are kept in a small LRU
(:class:`MaskedIndexCache`), so a stream of queries from a few popular categories pays the
masking once. Masked distances are never larger than ``popcount(M[c]) <= bits``, so the padding
contract of :mod:`vhindex.index.flat` (``bits + 1``, position ``-1``) still holds and masked
results of several shards merge with :func:`vhindex.index.sharded.merge_topk`.

Saved form of a :class:`MaskTable` (any fsspec URL)::

    masks.npy | masks.parquet       the table (npy: uint8 (C, bits/8); parquet: one row per
                                    category, columns ``category`` int32, ``mask`` fixed_size_binary)
    masks.npy.manifest.json         {"format": "vhindex.mask_table", "bits", "num_categories",
                                     "bit_order", "version", "files": {name: {"sha256", "bytes"}}}
                                     -- written LAST; :meth:`MaskTable.load` verifies the checksum

A table without its manifest is refused unless ``verify=False`` is passed (e.g. a bare ``.npy``
written by hand with ``np.save``).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import threading
from collections.abc import Hashable
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vhindex.fs import read_json, sha256_hex, unstrip, url_to_fs, write_bytes_atomic, write_json_atomic
from vhindex.index.codes import BIT_ORDER, as_packed, popcount8
from vhindex.index.flat import faiss_threads, pad_distance

__all__ = [
    "ATTACHED_MASK_TABLE",
    "FORMAT_MASK_TABLE",
    "MaskTable",
    "MaskedIndexCache",
    "attach_mask_table",
    "attached_mask_table",
    "masked_distances",
    "masked_search",
]

FORMAT_MASK_TABLE = "vhindex.mask_table"
#: where ``vhindex build-index --model`` puts a classifying model's table inside the index folder
ATTACHED_MASK_TABLE = "masks.npy"
FORMAT_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
_COL_CATEGORY = "category"
_COL_MASK = "mask"


class MaskTable:
    """Per-category bit masks: packed ``uint8`` ``(C, bits/8)``, row ``c`` = mask of category ``c``.

    Args:
        masks: packed ``uint8`` ``(C, bits/8)`` (msb0, as :mod:`vhindex.index.codes`), or a ``bool``
            ``(C, bits)`` matrix of bits (packed here).
        source: names the table in error messages.

    Example:
        >>> t = MaskTable.from_bits(np.array([[1] * 8 + [0] * 8, [1] * 16], dtype=bool))
        >>> t.num_categories, t.bits, t.masks.tolist()
        (2, 16, [[255, 0], [255, 255]])
    """

    def __init__(self, masks: np.ndarray, *, source: str = "<array>") -> None:
        arr = np.asarray(masks)
        if arr.dtype == bool:
            if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[1] % 8:
                raise ValueError(f"{source}: a bool mask matrix must be (C, bits) with bits a multiple of 8, "
                                 f"got {arr.shape}")
            arr = np.packbits(arr, axis=1, bitorder="big")
        if arr.dtype != np.uint8 or arr.ndim != 2:
            raise ValueError(f"{source}: masks must be packed uint8 (C, bits/8) or bool (C, bits), "
                             f"got {arr.dtype} {arr.shape}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"{source}: mask table is empty ({arr.shape}); it needs at least one category")
        self._masks = np.ascontiguousarray(arr).copy()
        self._masks.setflags(write=False)
        self.source = source
        self.version = hashlib.sha256(
            f"{self._masks.shape}".encode() + self._masks.tobytes()
        ).hexdigest()[:16]

    # ---------------------------------------------------------------- construction helpers

    @classmethod
    def from_bits(cls, bits_matrix: np.ndarray) -> MaskTable:
        """Build from a ``(C, bits)`` matrix of 0/1 (or bool) entries, bit ``i`` = model output ``i``."""
        m = np.asarray(bits_matrix)
        if m.ndim != 2:
            raise ValueError(f"expected a (C, bits) matrix, got shape {m.shape}")
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask bits must be 0/1 (or bool)")
        return cls(m.astype(bool))

    @classmethod
    def from_classifier_weights(cls, weights: np.ndarray, ratio: float) -> MaskTable:
        """DVHCM Eq. 5: row ``c`` keeps the ``round(ratio * bits)`` bits of largest ``|weights[c, i]|``.

        Args:
            weights: ``(C, bits)`` weights of the classification (softmax) layer on top of the codes.
            ratio: fraction of bits kept per category, in ``(0, 1]`` (1.0: plain Hamming distance).
                Ties in ``|weight|`` are broken towards the lower bit index; at least one bit is kept.
        """
        w = np.abs(np.asarray(weights, dtype=np.float64))
        if w.ndim != 2 or w.shape[1] == 0 or w.shape[1] % 8:
            raise ValueError(f"weights must be (C, bits) with bits a multiple of 8, got {w.shape}")
        if not np.isfinite(w).all():
            raise ValueError("weights contain NaN/Inf")
        if not (isinstance(ratio, (int, float)) and 0.0 < ratio <= 1.0):
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        bits = w.shape[1]
        keep = max(1, int(round(ratio * bits)))
        order = np.argsort(-w, axis=1, kind="stable")[:, :keep]
        m = np.zeros(w.shape, dtype=bool)
        np.put_along_axis(m, order, True, axis=1)
        return cls(m)

    # ---------------------------------------------------------------- properties

    @property
    def masks(self) -> np.ndarray:
        """The packed table, read-only ``uint8`` ``(C, bits/8)``."""
        return self._masks

    @property
    def bits(self) -> int:
        """Code length the table applies to."""
        return int(self._masks.shape[1] * 8)

    @property
    def num_categories(self) -> int:
        """C, the number of categories (rows)."""
        return int(self._masks.shape[0])

    def __len__(self) -> int:
        return self.num_categories

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MaskTable) and np.array_equal(self._masks, other._masks)

    def __hash__(self) -> int:
        return hash(self.version)

    def __repr__(self) -> str:
        return f"MaskTable(num_categories={self.num_categories}, bits={self.bits}, version={self.version!r})"

    def kept_bits(self) -> np.ndarray:
        """Bits kept per category (``popcount`` of each row), ``int32`` ``(C,)``."""
        return popcount8(self._masks).sum(axis=1, dtype=np.int32)

    # ---------------------------------------------------------------- validation

    def check_bits(self, bits: int, what: str = "the index") -> None:
        """Raise ``ValueError`` unless the table is for ``bits``-bit codes."""
        if int(bits) != self.bits:
            raise ValueError(
                f"mask table {self.source} is for {self.bits}-bit codes ({self.masks.shape[1]} bytes per row) but "
                f"{what} holds {int(bits)}-bit codes; use the mask table of the model that produced the codes"
            )

    def check_categories(self, categories: Any, nq: int) -> np.ndarray:
        """Validate one category per query; return them as ``int64`` ``(nq,)``.

        Raises:
            ValueError: wrong count, non-integer values, or a category outside ``[0, C)`` (naming the
                first offending query row and value).
        """
        cats = np.asarray(categories)
        if cats.ndim == 0:
            cats = cats.reshape(1)
        if cats.ndim != 1 or cats.shape[0] != nq:
            raise ValueError(f"expected one category per query ({nq}), got shape {cats.shape}")
        if cats.size and (cats.dtype == bool or not np.issubdtype(cats.dtype, np.integer)):
            raise ValueError(f"categories must be integers (class ids), got dtype {cats.dtype}")
        cats = cats.astype(np.int64, copy=False)
        bad = (cats < 0) | (cats >= self.num_categories)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"category {int(cats[row])} of query {row} is out of range: the mask table {self.source} has "
                f"{self.num_categories} categories (0..{self.num_categories - 1})"
            )
        return cats

    # ---------------------------------------------------------------- persistence

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        """Write the table at ``url`` (ending ``.npy`` or ``.parquet``) and its checksum manifest last."""
        fs, path = url_to_fs(url, storage_options)
        kind = _kind(url)
        if kind == "npy":
            buf = io.BytesIO()
            np.save(buf, self._masks, allow_pickle=False)
            data = buf.getvalue()
        else:
            width = self._masks.shape[1]
            mask_col = pa.Array.from_buffers(pa.binary(width), self.num_categories,
                                             [None, pa.py_buffer(self._masks.tobytes())])
            table = pa.table({_COL_CATEGORY: pa.array(np.arange(self.num_categories, dtype=np.int32)),
                              _COL_MASK: mask_col})
            table = table.replace_schema_metadata({"vhindex": json.dumps(self._manifest_body())})
            buf = io.BytesIO()
            pq.write_table(table, buf)
            data = buf.getvalue()
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        write_bytes_atomic(fs, path, data)
        manifest = {**self._manifest_body(), "files": {name: {"sha256": sha256_hex(data), "bytes": len(data)}}}
        write_json_atomic(fs, path + MANIFEST_SUFFIX, manifest)

    def _manifest_body(self) -> dict[str, Any]:
        return {
            "format": FORMAT_MASK_TABLE,
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "num_categories": self.num_categories,
            "bit_order": BIT_ORDER,
            "version": self.version,
        }

    @classmethod
    def load(
        cls, url: str, storage_options: dict[str, Any] | None = None, *, bits: int | None = None, verify: bool = True
    ) -> MaskTable:
        """Read a table written by :meth:`save` (``.npy`` or ``.parquet``), verifying its checksum.

        Args:
            url: the table file.
            storage_options: fsspec options.
            bits: expected code length; a table of another width is refused.
            verify: require and check ``<url>.manifest.json``. ``False`` reads a bare file (a
                ``.npy`` of packed ``uint8`` (C, bits/8) or ``bool`` (C, bits)) unchecked.

        Raises:
            FileNotFoundError: the file, or (with ``verify``) its manifest, is missing.
            ValueError: checksum mismatch, malformed table, or a width other than ``bits``.
        """
        fs, path = url_to_fs(url, storage_options)
        kind = _kind(url)
        where = unstrip(fs, path)
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        try:
            with fs.open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"mask table {where} does not exist") from None
        manifest = None
        if verify:
            mpath = path + MANIFEST_SUFFIX
            if not fs.exists(mpath):
                raise FileNotFoundError(
                    f"mask table {where} has no {name}{MANIFEST_SUFFIX} (checksum manifest); write it with "
                    "MaskTable.save, or pass verify=False to read the bare file unchecked"
                )
            manifest = read_json(fs, mpath)
            if manifest.get("format") != FORMAT_MASK_TABLE:
                raise ValueError(f"{where}{MANIFEST_SUFFIX} holds format {manifest.get('format')!r}, "
                                 f"expected {FORMAT_MASK_TABLE!r}")
            if manifest.get("bit_order", BIT_ORDER) != BIT_ORDER:
                raise ValueError(f"{where} uses bit order {manifest['bit_order']!r}, expected {BIT_ORDER!r}")
            want = manifest.get("files", {}).get(name, {}).get("sha256")
            got = sha256_hex(data)
            if want != got:
                raise ValueError(
                    f"checksum mismatch for {name} ({where}): sha256 {got[:16]}... but the manifest says "
                    f"{str(want)[:16]}...; the file is corrupt or changed after saving -- save it again"
                )
        try:
            if kind == "npy":
                masks = np.load(io.BytesIO(data), allow_pickle=False)
            else:
                masks = _masks_from_parquet(data, where)
        except (ValueError, OSError, pa.ArrowInvalid) as err:
            raise ValueError(f"{where} is not a readable mask table: {err}") from err
        table = cls(masks, source=where)
        if manifest is not None and (manifest.get("bits") != table.bits
                                     or manifest.get("num_categories") != table.num_categories):
            raise ValueError(f"{where}: manifest says {manifest.get('num_categories')} x {manifest.get('bits')} bits, "
                             f"the file holds {table.num_categories} x {table.bits}")
        if bits is not None:
            table.check_bits(bits, what="the caller")
        return table


def _kind(url: str) -> str:
    low = url.lower()
    if low.endswith(".npy"):
        return "npy"
    if low.endswith(".parquet"):
        return "parquet"
    raise ValueError(f"mask table URL must end in .npy or .parquet, got {url!r}")


def _masks_from_parquet(data: bytes, where: str) -> np.ndarray:
    table = pq.read_table(io.BytesIO(data))
    for col in (_COL_CATEGORY, _COL_MASK):
        if col not in table.column_names:
            raise ValueError(f"no {col!r} column (columns: {table.column_names})")
    cats = table.column(_COL_CATEGORY).to_numpy()
    if not np.array_equal(cats, np.arange(len(cats))):
        raise ValueError(f"{_COL_CATEGORY!r} must list 0..C-1 in order")
    col = table.column(_COL_MASK).combine_chunks()
    if not pa.types.is_fixed_size_binary(col.type) or col.null_count:
        raise ValueError(f"{_COL_MASK!r} must be non-null fixed_size_binary, got {col.type}")
    width = col.type.byte_width
    buf = col.buffers()[1]
    return np.frombuffer(buf, dtype=np.uint8, count=len(col) * width, offset=col.offset * width).reshape(
        len(col), width).copy()


class MaskedIndexCache:
    """A small thread-safe LRU of masked faiss indexes, keyed by the caller.

    Args:
        max_size: entries kept (0 disables caching). Each entry holds one masked copy of the
            database codes (``ntotal * bits / 8`` bytes).
    """

    def __init__(self, max_size: int = 4) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            raise ValueError(f"mask cache size must be a non-negative int, got {max_size!r}")
        self.max_size = max_size
        self._entries: collections.OrderedDict[Hashable, faiss.IndexBinaryFlat] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> faiss.IndexBinaryFlat | None:
        with self._lock:
            index = self._entries.get(key)
            if index is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return index

    def put(self, key: Hashable, index: faiss.IndexBinaryFlat) -> None:
        if self.max_size == 0:
            return
        with self._lock:
            self._entries[key] = index
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def masked_distances(queries: np.ndarray, database: np.ndarray, categories: Any, table: MaskTable) -> np.ndarray:
    """Brute-force masked distances ``(nq, nd)`` by numpy (an oracle for tests, small inputs only)."""
    q, db = as_packed(queries), as_packed(database)
    table.check_bits(q.shape[1] * 8, what="the queries")
    table.check_bits(db.shape[1] * 8, what="the database")
    cats = table.check_categories(categories, q.shape[0])
    m = table.masks[cats]  # (nq, bytes)
    return popcount8((q[:, None, :] ^ db[None, :, :]) & m[:, None, :]).sum(axis=2, dtype=np.int32)


def _codes_of(index: Any) -> np.ndarray:
    if isinstance(index, np.ndarray):
        return as_packed(index)
    for name in ("codes_view", "reconstruct_codes", "codes"):
        fn = getattr(index, name, None)
        if fn is not None:
            return fn()
    raise TypeError(f"cannot read the codes of {type(index).__name__}: expected a packed uint8 array or an index "
                    "with codes_view() / reconstruct_codes()")


def masked_search(
    index: Any,
    q_packed: np.ndarray,
    categories: Any,
    k: int,
    table: MaskTable,
    *,
    cache: MaskedIndexCache | None = None,
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` under the category-mask distance (module docs), brute force on every index type.

    Args:
        index: a :class:`~vhindex.index.sharded.ShardIndex`, a
            :class:`~vhindex.index.flat.BinaryFlatIndex`, or packed database codes ``(n, bits/8)``.
        q_packed: queries, packed ``uint8`` ``(nq, bits/8)`` (or {-1,+1}).
        categories: one category per query (``int`` array ``(nq,)``).
        k: neighbours per query (>= 1); slots beyond the database size are padded as in
            :mod:`vhindex.index.flat`.
        table: the mask table (its width must equal the codes').
        cache: LRU of masked indexes; default ``index.mask_cache`` when the index has one.
        num_threads: faiss threads for the scan (``None``: ``index.num_threads`` or faiss's setting).

    Returns:
        ``(distances int32 (nq, k), positions int64 (nq, k))``, ascending distance per row.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = int(k)
    if not isinstance(table, MaskTable):
        raise TypeError(f"table must be a MaskTable, got {type(table).__name__}")
    if isinstance(index, np.ndarray):
        db_bits, ntotal = index.shape[1] * 8 if index.ndim == 2 else -1, index.shape[0]
    else:
        db_bits, ntotal = int(index.bits), int(len(index))
    table.check_bits(db_bits)
    q = as_packed(q_packed)
    if q.ndim != 2 or q.shape[1] * 8 != db_bits:
        raise ValueError(f"query codes must be packed uint8 (nq, {db_bits // 8}) for {db_bits}-bit codes, "
                         f"got {q.dtype} {q.shape}")
    nq = q.shape[0]
    cats = table.check_categories(categories, nq)
    if cache is None:
        cache = getattr(index, "mask_cache", None)
    if num_threads is None:
        num_threads = getattr(index, "num_threads", None)
    distances = np.full((nq, k), pad_distance(db_bits), dtype=np.int32)
    positions = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, ntotal)
    if not nq or not kk:
        return distances, positions
    codes = None
    for c in np.unique(cats):
        rows = np.flatnonzero(cats == c)
        mask = table.masks[c]
        key = (table.version, int(c), ntotal)
        flat = cache.get(key) if cache is not None else None
        if flat is None:
            if codes is None:
                codes = _codes_of(index)
                if codes.shape != (ntotal, db_bits // 8):
                    raise ValueError(f"index codes have shape {codes.shape}, expected {(ntotal, db_bits // 8)}")
            flat = faiss.IndexBinaryFlat(db_bits)
            flat.add(np.bitwise_and(codes, mask))
            if cache is not None:
                cache.put(key, flat)
        with faiss_threads(num_threads):
            d, i = flat.search(np.ascontiguousarray(q[rows] & mask), kk)
        distances[rows, :kk] = d
        positions[rows, :kk] = i
    missing = positions < 0
    if missing.any():
        distances[missing] = pad_distance(db_bits)
    return distances, positions


def attach_mask_table(index_url: str, table: MaskTable, bits: int,
                      storage_options: dict[str, Any] | None = None) -> str:
    """Save ``table`` as the index's attached table (``<index>/masks.npy``); returns its URL.

    Raises:
        ValueError: the table is not for the index's ``bits``-bit codes.
    """
    table.check_bits(bits, what=f"the index at {index_url}")
    url = f"{index_url.rstrip('/')}/{ATTACHED_MASK_TABLE}"
    table.save(url, storage_options)
    return url


def attached_mask_table(index_url: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """The URL of the table attached to the index at ``index_url`` (its manifest written), or None."""
    fs, root = url_to_fs(index_url, storage_options)
    path = f"{root.rstrip('/')}/{ATTACHED_MASK_TABLE}.manifest.json"
    return f"{index_url.rstrip('/')}/{ATTACHED_MASK_TABLE}" if fs.exists(path) else None

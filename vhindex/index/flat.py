"""Exact Hamming search over packed binary codes: a faiss ``IndexBinaryFlat`` plus an :class:`IdMap`.

Padding: when ``k`` exceeds the number of indexed codes, the missing slots of a result row hold
position ``-1`` (video id ``None``) and distance :func:`pad_distance` ``(bits) = bits + 1`` -- one
more than any real Hamming distance, so padded slots sort after every real hit and merging
results from several shards by distance needs no special case. (faiss itself pads with
``INT32_MAX``; :class:`BinaryFlatIndex` rewrites that.)

Saved layout (a folder at any fsspec URL)::

    index.faiss       faiss.serialize_index_binary bytes
    ids.parquet       the IdMap (row number = position)
    _manifest.json    {"format": "vhindex.binary_flat", "bits", "count", "bit_order",
                       "model_version", "files": {name: {"sha256", "bytes"}}}  -- written LAST

A folder without ``_manifest.json`` is an incomplete write; :meth:`BinaryFlatIndex.load` refuses
it, and refuses files whose checksum differs from the manifest.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import faiss
import numpy as np

from vhindex.fs import join, read_json, read_verified_files, url_to_fs, write_files_then_manifest
from vhindex.index.codes import BIT_ORDER, check_manifest_header, check_packed, ids_and_codes
from vhindex.index.idmap import IdMap

logger = logging.getLogger(__name__)

FORMAT_BINARY_FLAT = "vhindex.binary_flat"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
MANIFEST_FILE = "_manifest.json"

_FAISS_PAD = np.iinfo(np.int32).max


def pad_distance(bits: int) -> int:
    """Distance reported for padded result slots (position ``-1``): ``bits + 1``."""
    return bits + 1


@contextlib.contextmanager
def faiss_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with faiss's OpenMP thread count set to ``num_threads`` (``None``: unchanged).

    The previous setting is restored afterwards, so nothing changes process-wide.
    """
    if num_threads is None:
        yield
        return
    if not isinstance(num_threads, int) or num_threads <= 0:
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(num_threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class BinaryFlatIndex:
    """Exact (brute-force) Hamming top-k over packed codes, addressed by video id.

    Args:
        bits: code length (a positive multiple of 8).
        num_threads: faiss OpenMP threads used by :meth:`add` and :meth:`search` (``None``: faiss's
            current setting). Set per call and restored afterwards, never globally.
        model_version: version of the model that produced the codes; stored in the manifest.

    Example:
        >>> index = BinaryFlatIndex(16)
        >>> index.add(["a", "b"], np.array([[0x80, 0x01], [0x00, 0x00]], dtype=np.uint8))
        >>> index.search_ids(np.array([[0x80, 0x00]], dtype=np.uint8), k=3)[1].tolist()
        [['a', 'b', None]]
    """

    def __init__(self, bits: int, *, num_threads: int | None = None, model_version: str = "") -> None:
        if not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads <= 0):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        self.bits = int(bits)
        self.num_threads = num_threads
        self.model_version = model_version
        self.index = faiss.IndexBinaryFlat(self.bits)
        self.idmap = IdMap()

    @property
    def ntotal(self) -> int:
        """Number of indexed codes."""
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"BinaryFlatIndex(bits={self.bits}, ntotal={self.ntotal})"

    def _packed(self, codes: np.ndarray, what: str) -> np.ndarray:
        return check_packed(codes, self.bits, what)

    def add(self, video_ids: Sequence[str], codes: np.ndarray) -> None:
        """Index ``codes`` (packed ``uint8`` ``(N, bits/8)`` or {-1,+1} ``(N, bits)``) under ``video_ids``.

        Raises:
            ValueError: shapes disagree, or an id is a duplicate (nothing is added then).
        """
        video_ids, packed = ids_and_codes(video_ids, codes, self.bits)
        positions = self.idmap.add(video_ids)  # validates ids before faiss sees anything
        if positions.size:
            assert positions[0] == self.index.ntotal, "id map and faiss index out of step"
            with faiss_threads(self.num_threads):
                self.index.add(packed)

    def search(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact Hamming top-``k`` for each query.

        Args:
            query_codes: packed ``uint8`` ``(nq, bits/8)`` or {-1,+1} ``(nq, bits)``.
            k: neighbours per query (>= 1). Slots beyond :attr:`ntotal` are padded (module docs).

        Returns:
            ``(distances int32 (nq, k), positions int64 (nq, k))``, ascending distance per row.
            Order among equal distances is faiss's and not guaranteed.
        """
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = int(k)
        q = self._packed(query_codes, "query codes")
        nq = q.shape[0]
        distances = np.full((nq, k), pad_distance(self.bits), dtype=np.int32)
        ints = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, self.ntotal)
        if nq and kk:
            with faiss_threads(self.num_threads):
                d, i = self.index.search(q, kk)
            distances[:, :kk] = d
            ints[:, :kk] = i
            # kk <= ntotal so faiss fills every slot; keep the contract even if it did not
            missing = ints < 0
            if missing.any():
                distances[missing] = pad_distance(self.bits)
        return distances, ints

    def search_ids(self, query_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, returning video ids (object array ``(nq, k)``, ``None`` in padding)."""
        distances, ints = self.search(query_codes, k)
        return distances, self.idmap.to_ids(ints)

    def reconstruct_ids(self, video_ids: Sequence[str]) -> np.ndarray:
        """The stored packed codes of ``video_ids`` (``KeyError`` naming an unknown id), e.g. to query by id."""
        positions = self.idmap.to_ints(list(video_ids))
        return self.reconstruct_codes()[positions]

    def reconstruct_codes(self) -> np.ndarray:
        """All indexed codes, packed ``uint8`` ``(ntotal, bits/8)`` in position order."""
        return faiss.vector_to_array(self.index.xb).reshape(self.ntotal, self.bits // 8)

    # ---------------------------------------------------------------- persistence

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        """Write the index folder at ``url``; the manifest is written last (see module docs)."""
        fs, root = url_to_fs(url, storage_options)
        index_bytes = faiss.serialize_index_binary(self.index).tobytes()
        ids_bytes = self.idmap.to_parquet_bytes()
        manifest = {
            "format": FORMAT_BINARY_FLAT,
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "count": self.ntotal,
            "bit_order": BIT_ORDER,
            "model_version": self.model_version,
        }
        write_files_then_manifest(fs, root, {INDEX_FILE: index_bytes, IDS_FILE: ids_bytes}, manifest, MANIFEST_FILE)
        logger.info("saved %r to %s (%d bytes)", self, url, len(index_bytes) + len(ids_bytes))

    @classmethod
    def load(
        cls, url: str, storage_options: dict[str, Any] | None = None, *, num_threads: int | None = None
    ) -> BinaryFlatIndex:
        """Load and verify an index folder written by :meth:`save`.

        Raises:
            FileNotFoundError: no manifest (missing or incomplete write) or a missing file.
            ValueError: wrong format, checksum mismatch (corrupt file), or inconsistent counts.
        """
        fs, root = url_to_fs(url, storage_options)
        manifest_path = join(fs, root, MANIFEST_FILE)
        if not fs.exists(manifest_path):
            raise FileNotFoundError(
                f"no {MANIFEST_FILE} in {url}: not a saved BinaryFlatIndex, or the save did not finish; "
                "save the index again"
            )
        manifest = read_json(fs, manifest_path)
        check_manifest_header(manifest, url, FORMAT_BINARY_FLAT, FORMAT_VERSION)
        blobs = read_verified_files(fs, root, url, manifest, (INDEX_FILE, IDS_FILE))
        bits, count = int(manifest["bits"]), int(manifest["count"])
        self = cls(bits, num_threads=num_threads, model_version=manifest.get("model_version", ""))
        self.index = faiss.deserialize_index_binary(np.frombuffer(blobs[INDEX_FILE], dtype=np.uint8))
        self.idmap = IdMap.from_parquet_bytes(blobs[IDS_FILE], source=f"{url}/{IDS_FILE}")
        if self.index.d != bits or self.ntotal != count or len(self.idmap) != count:
            raise ValueError(
                f"{url} is inconsistent: manifest says {bits} bits x {count} codes, faiss index has "
                f"{self.index.d} bits x {self.ntotal}, id map has {len(self.idmap)} ids"
            )
        return self

"""Sharded Hamming index: per-shard faiss binary indexes, an exact top-k merge, build and load.

The query service fans a query out to N shard replicas (each holding one :class:`ShardIndex`)
and merges their top-k with :func:`merge_topk`. :class:`ShardedIndex` does the same in one
process (the reference path the service and the benchmarks are checked against).

Index types (:class:`IndexSpec`):

============  =======  ===========================================================================
type          exact    params (defaults)
============  =======  ===========================================================================
``flat``      yes      -- (faiss ``IndexBinaryFlat``, popcount scan)
``gpu_flat``  yes      ``device=0`` (``faiss.GpuIndexBinaryFlat``; needs a GPU build of faiss and a
                       GPU, never falls back to the CPU; k <= 2048)
``hnsw``      no       ``M=16, ef_construction=40, ef_search=128`` (``IndexBinaryHNSW``)
``ivf``       no       ``nlist=None`` (= ``round(4 * sqrt(n))`` at training), ``nprobe=32``,
                       ``train_size=None`` (= ``min(n, max(50 * nlist, 10000))``), ``seed=0``
                       (``IndexBinaryIVF``, k-means trained on a sample of the shard's codes)
``multihash`` no       ``nhash=4, b=None`` (= ``min(bits // nhash, 24)``), ``nflip=2``
                       (``IndexBinaryMultiHash``, Norouzi-style multi-index hashing)
============  =======  ===========================================================================

Approximate types may miss neighbours (and return fewer than ``k`` hits, padded), but every
distance they return is the true Hamming distance of the returned id. Every type keeps the
shard's packed codes (flat: inside faiss; others: a numpy array beside the faiss index), so
:meth:`ShardIndex.reconstruct` (search by video id) and the category-mask search
(:mod:`vhindex.index.mask`, always exact) work on all of them.

Padding follows :mod:`vhindex.index.flat`: missing slots hold distance ``bits + 1`` and id
``None`` (position ``-1``), so they sort after every real hit and merge without a special case.

Saved layout (a folder at any fsspec URL)::

    <out>/_manifest.json            {"format": "vhindex.sharded_index", "format_version", "bits",
                                     "bit_order", "num_shards", "total_count", "spec", "model",
                                     "model_version", "created_at", "source", "index_version",
                                     "shards": [{"path", "count", "manifest_sha256"}, ...]}
                                     -- written LAST, after every shard is complete
    <out>/shard-00000/codes.npy     packed codes uint8 (count, bits/8), position order
    <out>/shard-00000/ids.parquet   the IdMap (row number = position)
    <out>/shard-00000/index.faiss   serialize_index_binary bytes (hnsw / ivf / multihash only;
                                     flat and gpu_flat are rebuilt from codes.npy -- a memcpy)
    <out>/shard-00000/_manifest.json  {"format": "vhindex.shard_index", "format_version", "bits",
                                     "count", "bit_order", "spec", "effective_params",
                                     "model_version", "shard_id", "num_shards",
                                     "files": {name: {"sha256", "bytes"}}}  -- written last
    <out>/shard-00001/...

Every file is checked against its manifest's SHA-256 on load, and each shard manifest against the
hash the top manifest recorded for it. ``index_version`` is a short hash of the shard manifest
hashes (which cover the codes, ids, spec and model version): the service compares it to decide
whether a hot swap is needed; rebuilding identical content with an exact type gives the same
version.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

import faiss
import numpy as np

from vhindex.data.planner import ReadTask
from vhindex.data.reader import CodesDataset
from vhindex.fs import (
    join,
    read_json,
    read_verified_files,
    sha256_hex,
    unstrip,
    url_to_fs,
    write_files_then_manifest,
    write_json_atomic,
)
from vhindex.index.codes import BIT_ORDER, check_packed, ids_and_codes
from vhindex.index.flat import faiss_threads, pad_distance
from vhindex.index.idmap import IdMap
from vhindex.index.mask import MaskedIndexCache, MaskTable, masked_search

__all__ = [
    "FORMAT_SHARD_INDEX",
    "FORMAT_SHARDED_INDEX",
    "INDEX_TYPES",
    "IndexSpec",
    "ShardIndex",
    "ShardInfo",
    "ShardedIndex",
    "ShardedIndexManifest",
    "build_sharded_index",
    "gpu_available",
    "merge_topk",
    "plan_index_shards",
    "search_shards",
    "shard_dirname",
]

logger = logging.getLogger(__name__)

FORMAT_SHARD_INDEX = "vhindex.shard_index"
FORMAT_SHARDED_INDEX = "vhindex.sharded_index"
FORMAT_VERSION = 1
MANIFEST_FILE = "_manifest.json"
CODES_FILE = "codes.npy"
IDS_FILE = "ids.parquet"
INDEX_FILE = "index.faiss"
GPU_MAX_K = 2048

INDEX_TYPES = ("flat", "hnsw", "ivf", "multihash", "gpu_flat")
_EXACT_TYPES = ("flat", "gpu_flat")
_DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {},
    "gpu_flat": {"device": 0},
    "hnsw": {"M": 16, "ef_construction": 40, "ef_search": 128},
    "ivf": {"nlist": None, "nprobe": 32, "train_size": None, "seed": 0},
    "multihash": {"nhash": 4, "b": None, "nflip": 2},
}
# params that may change after the index is built (ShardIndex.set_search_params)
_SEARCH_PARAMS = {"hnsw": ("ef_search",), "ivf": ("nprobe",), "multihash": ("nflip",)}
# smallest allowed value of each param (None values mean "auto")
_MIN_VALUE = {"M": 2, "ef_construction": 1, "ef_search": 1, "nlist": 1, "nprobe": 1, "train_size": 1,
              "seed": 0, "nhash": 1, "b": 1, "nflip": 0, "device": 0}
_MULTIHASH_MAX_B = 32  # hash keys of more bits leave nearly every bucket with one code


def shard_dirname(i: int) -> str:
    """Folder name of shard ``i`` inside a sharded index (``shard-00000``)."""
    return f"shard-{i:05d}"


# ================================================================ IndexSpec


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    """Which faiss binary index a shard uses, and its parameters (table in the module docs).

    ``params`` are validated and completed with the defaults of ``type`` (``None`` = decided at
    build time from the shard size). The spec round-trips through JSON (:meth:`to_json`).

    Example:
        >>> IndexSpec("hnsw", {"ef_search": 64}).params
        {'M': 16, 'ef_construction': 40, 'ef_search': 64}
    """

    type: str = "flat"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.type!r}; choose one of {list(INDEX_TYPES)}")
        given = dict(self.params or {})
        defaults = _DEFAULT_PARAMS[self.type]
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"unknown param(s) {unknown} for index type {self.type!r}; "
                             f"allowed: {sorted(defaults) or 'none'}")
        params = {**defaults, **given}
        for name, value in params.items():
            if value is None and defaults[name] is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < _MIN_VALUE[name]:
                raise ValueError(f"{self.type} param {name} must be an int >= {_MIN_VALUE[name]}"
                                 f"{' or None (auto)' if defaults[name] is None else ''}, got {value!r}")
            params[name] = int(value)
        object.__setattr__(self, "params", params)

    def __hash__(self) -> int:
        return hash(self.to_json())

    @property
    def exact(self) -> bool:
        """True for types that return exact top-k (flat, gpu_flat)."""
        return self.type in _EXACT_TYPES

    def check_bits(self, bits: int) -> None:
        """Raise ``ValueError`` when the params cannot work for ``bits``-bit codes."""
        if self.type == "multihash":
            nhash, b = self.params["nhash"], self.multihash_b(bits)
            if b > _MULTIHASH_MAX_B:
                raise ValueError(f"multihash b={b} bits per hash is too many (max {_MULTIHASH_MAX_B})")
            if nhash * b > bits:
                raise ValueError(f"multihash needs nhash * b <= bits, got {nhash} * {b} > {bits}")

    def multihash_b(self, bits: int) -> int:
        """Bits per hash table of a multihash index over ``bits``-bit codes."""
        b = self.params.get("b")
        return int(b) if b is not None else max(1, min(bits // self.params["nhash"], 24))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"type", "params"}``."""
        return {"type": self.type, "params": dict(self.params)}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, obj: Any) -> IndexSpec:
        """Parse :meth:`to_dict` output (also accepts a bare type string)."""
        if isinstance(obj, str):
            return cls(obj)
        if not isinstance(obj, dict) or "type" not in obj:
            raise ValueError(f"an index spec is {{'type': ..., 'params': {{...}}}}, got {obj!r}")
        extra = sorted(set(obj) - {"type", "params"})
        if extra:
            raise ValueError(f"unknown index spec key(s) {extra}; expected 'type' and 'params'")
        return cls(obj["type"], dict(obj.get("params") or {}))

    @classmethod
    def from_json(cls, text: str) -> IndexSpec:
        """Parse :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))


def gpu_available() -> bool:
    """Whether this faiss has GPU binary indexes and sees at least one GPU."""
    return hasattr(faiss, "GpuIndexBinaryFlat") and hasattr(faiss, "StandardGpuResources") and \
        faiss.get_num_gpus() > 0


def _require_gpu(device: int) -> None:
    if not (hasattr(faiss, "GpuIndexBinaryFlat") and hasattr(faiss, "StandardGpuResources")):
        raise RuntimeError(
            f"index type 'gpu_flat' needs a GPU build of faiss (faiss-gpu), but this faiss {faiss.__version__} "
            "is CPU-only; install faiss-gpu on a GPU machine or use IndexSpec('flat') (same exact results on the CPU)"
        )
    n = faiss.get_num_gpus()
    if n <= device:
        raise RuntimeError(
            f"index type 'gpu_flat' needs GPU {device}, but faiss sees {n} GPU(s) (faiss.get_num_gpus() == {n}); "
            "check CUDA_VISIBLE_DEVICES / the driver, or use IndexSpec('flat')"
        )


# ================================================================ ShardIndex


class ShardIndex:
    """One shard: a faiss binary index of ``spec.type`` plus an :class:`IdMap` and the packed codes.

    Args:
        bits: code length (a positive multiple of 8).
        spec: the index type and params (default exact ``flat``).
        shard_id / num_shards: position of this shard in a sharded index (recorded when saved).
        model_version: version of the model that produced the codes.
        num_threads: faiss OpenMP threads for add/train/search (``None``: faiss's setting); set per
            call and restored, never globally.
        mask_cache_size: masked indexes kept for category-mask search (:mod:`vhindex.index.mask`).

    Approximate types are built lazily: :meth:`add` stores the codes and the faiss structure is
    (trained and) filled on the first search or save, so an IVF shard trains on all its codes.
    Concurrent :meth:`search` calls from several threads are safe once the index is built (it is
    after :meth:`load`); :meth:`add` must not run concurrently with anything.
    """

    def __init__(
        self,
        bits: int,
        spec: IndexSpec | None = None,
        *,
        shard_id: int = 0,
        num_shards: int = 1,
        model_version: str = "",
        num_threads: int | None = None,
        mask_cache_size: int = 4,
    ) -> None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads <= 0):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        if not (isinstance(shard_id, int) and isinstance(num_shards, int) and 0 <= shard_id < num_shards):
            raise ValueError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id!r}, num_shards={num_shards!r}")
        spec = IndexSpec() if spec is None else spec
        if not isinstance(spec, IndexSpec):
            raise TypeError(f"spec must be an IndexSpec, got {type(spec).__name__}")
        spec.check_bits(int(bits))
        self.bits = int(bits)
        self.spec = spec
        self.shard_id = shard_id
        self.num_shards = num_shards
        self.model_version = model_version
        self.num_threads = num_threads
        self.idmap = IdMap()
        self.mask_cache = MaskedIndexCache(mask_cache_size)
        self._lock = threading.Lock()
        self._parts: list[np.ndarray] = []  # codes of non-flat types, concatenated lazily
        self._in_faiss = 0  # codes added to the faiss index so far
        self._effective: dict[str, Any] = {}
        self._gpu_res = None
        self._index = self._new_faiss_index()

    # ---------------------------------------------------------------- faiss plumbing

    def _new_faiss_index(self) -> Any:
        t, p = self.spec.type, self.spec.params
        if t == "flat":
            return faiss.IndexBinaryFlat(self.bits)
        if t == "gpu_flat":
            _require_gpu(p["device"])
            self._gpu_res = faiss.StandardGpuResources()
            cfg = faiss.GpuIndexBinaryFlatConfig()
            cfg.device = p["device"]
            return faiss.GpuIndexBinaryFlat(self._gpu_res, self.bits, cfg)
        if t == "hnsw":
            index = faiss.IndexBinaryHNSW(self.bits, p["M"])
            index.hnsw.efConstruction = p["ef_construction"]
        elif t == "multihash":
            index = faiss.IndexBinaryMultiHash(self.bits, p["nhash"], self.spec.multihash_b(self.bits))
            self._effective["b"] = self.spec.multihash_b(self.bits)
        else:  # ivf: created when trained (nlist depends on the shard size)
            return None
        self._apply_search_params(index)
        return index

    def _apply_search_params(self, index: Any) -> None:
        p = self.spec.params
        if index is None:
            return
        if self.spec.type == "hnsw":
            index.hnsw.efSearch = p["ef_search"]
        elif self.spec.type == "ivf":
            index.nprobe = min(p["nprobe"], index.nlist)
        elif self.spec.type == "multihash":
            index.nflip = p["nflip"]

    def set_search_params(self, **params: int) -> None:
        """Change search-time params (hnsw ``ef_search``, ivf ``nprobe``, multihash ``nflip``).

        Raises:
            ValueError: a param that is not a search-time param of this type, or a bad value.
        """
        allowed = _SEARCH_PARAMS.get(self.spec.type, ())
        bad = sorted(set(params) - set(allowed))
        if bad:
            raise ValueError(f"{bad} are not search-time params of a {self.spec.type!r} index; "
                             f"allowed: {list(allowed) or 'none'}")
        self.spec = IndexSpec(self.spec.type, {**self.spec.params, **params})
        with self._lock:
            self._apply_search_params(self._index)

    def _train_ivf(self, codes: np.ndarray) -> None:
        n = codes.shape[0]
        p = self.spec.params
        nlist = p["nlist"] if p["nlist"] is not None else max(1, min(n, int(round(4 * math.sqrt(n)))))
        if nlist > n:
            raise ValueError(f"ivf nlist={nlist} needs at least {nlist} codes to train, shard {self.shard_id} has {n}; "
                             "lower nlist or leave it None (auto)")
        size = p["train_size"] if p["train_size"] is not None else max(50 * nlist, 10_000)
        size = min(size, n)
        rng = np.random.default_rng(p["seed"])
        sample = codes if size >= n else codes[np.sort(rng.choice(n, size=size, replace=False))]
        # the factory makes the IVF index own its quantizer (no Python-side lifetime to manage)
        index = faiss.index_binary_factory(self.bits, f"BIVF{nlist}")
        # (already the concrete class; never wrap it in downcast_IndexBinary: the new proxy does not own the
        # object, and the owning one would be garbage-collected, freeing the index under our feet)
        # faiss k-means seeds from its ClusteringParameters (fixed seed 1234 by default): deterministic
        with faiss_threads(self.num_threads):
            index.train(np.ascontiguousarray(sample))
        self._index = index
        self._effective.update({"nlist": nlist, "train_size": int(sample.shape[0])})
        self._apply_search_params(index)
        logger.info("shard %d: trained ivf nlist=%d on %d of %d codes", self.shard_id, nlist, sample.shape[0], n)

    def _sync(self) -> None:
        """Add stored codes that are not in the faiss index yet (training an IVF index first)."""
        if self.spec.type == "flat" or self._in_faiss == self.ntotal:
            return
        with self._lock:
            n = self.ntotal
            if self._in_faiss == n:
                return
            codes = self.codes_view()
            if self.spec.type == "ivf" and self._index is None:
                self._train_ivf(codes)
            with faiss_threads(self.num_threads):
                self._index.add(np.ascontiguousarray(codes[self._in_faiss:n]))
            self._in_faiss = n
            if self._index.ntotal != n:
                raise RuntimeError(f"faiss index holds {self._index.ntotal} codes, expected {n}")

    # ---------------------------------------------------------------- basic properties

    @property
    def ntotal(self) -> int:
        """Number of indexed codes."""
        return len(self.idmap)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (f"ShardIndex(type={self.spec.type!r}, bits={self.bits}, ntotal={self.ntotal}, "
                f"shard={self.shard_id}/{self.num_shards})")

    def contains(self, video_id: str) -> bool:
        """Whether ``video_id`` is in this shard."""
        return video_id in self.idmap

    def __contains__(self, video_id: object) -> bool:
        return video_id in self.idmap

    def codes_view(self) -> np.ndarray:
        """All packed codes ``(ntotal, bits/8)`` in position order, without copying when possible.

        The result may view faiss's memory: read it, don't keep it across :meth:`add`.
        """
        nbytes = self.bits // 8
        if self.spec.type == "flat":
            n = int(self._index.ntotal)
            if n == 0:
                return np.empty((0, nbytes), dtype=np.uint8)
            return faiss.rev_swig_ptr(self._index.xb.data(), n * nbytes).reshape(n, nbytes)
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts else np.empty((0, nbytes), dtype=np.uint8)]
        return self._parts[0]

    def codes(self) -> np.ndarray:
        """A copy of all packed codes ``(ntotal, bits/8)`` in position order."""
        return np.array(self.codes_view(), copy=True)

    def info(self) -> dict[str, Any]:
        """Summary for logs and health checks."""
        return {"type": self.spec.type, "spec": self.spec.to_dict(), "effective_params": dict(self._effective),
                "bits": self.bits, "count": self.ntotal, "shard_id": self.shard_id, "num_shards": self.num_shards,
                "model_version": self.model_version}

    # ---------------------------------------------------------------- add / search

    def _packed(self, codes: np.ndarray, what: str) -> np.ndarray:
        return check_packed(codes, self.bits, what)

    def add(self, video_ids: Sequence[str], codes: np.ndarray) -> None:
        """Index ``codes`` (packed ``uint8`` ``(N, bits/8)`` or {-1,+1} ``(N, bits)``) under ``video_ids``.

        Raises:
            ValueError: shapes disagree, or an id is a duplicate (nothing is added then).
        """
        video_ids, packed = ids_and_codes(video_ids, codes, self.bits)
        if not video_ids:
            return
        with self._lock:
            self.idmap.add(video_ids)  # validates ids before anything else changes
            if self.spec.type == "flat":
                with faiss_threads(self.num_threads):
                    self._index.add(packed)
                self._in_faiss = int(self._index.ntotal)
            else:
                self._parts.append(packed.copy())
                if self.spec.type == "gpu_flat":  # exact and cheap to add: keep it in step
                    self._index.add(packed)
                    self._in_faiss = int(self._index.ntotal)

    def search_positions(
        self, query_codes: np.ndarray, k: int, *, categories: Any = None, mask_table: MaskTable | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, returning positions (``int64``, ``-1`` in padding) instead of ids."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive int, got {k!r}")
        k = int(k)
        q = self._packed(query_codes, "query codes")
        if (categories is None) != (mask_table is None):
            raise ValueError("category-mask search needs both categories= and mask_table= (or neither)")
        if mask_table is not None:
            return masked_search(self, q, categories, k, mask_table, cache=self.mask_cache,
                                 num_threads=self.num_threads)
        nq = q.shape[0]
        pad = pad_distance(self.bits)
        distances = np.full((nq, k), pad, dtype=np.int32)
        positions = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, self.ntotal)
        if not nq or not kk:
            return distances, positions
        if self.spec.type == "gpu_flat" and kk > GPU_MAX_K:
            raise ValueError(f"gpu_flat supports k <= {GPU_MAX_K} (faiss GPU k-selection limit), got k={k}")
        self._sync()
        with faiss_threads(self.num_threads):
            d, i = self._index.search(q, kk)
        missing = i < 0  # faiss pads with -1 and INT32_MAX (HNSW: INT32_MIN)
        if missing.any():
            d[missing] = pad
            if not self.spec.exact and np.any(np.diff(d, axis=1) < 0):
                order = np.argsort(d, axis=1, kind="stable")
                d = np.take_along_axis(d, order, axis=1)
                i = np.take_along_axis(i, order, axis=1)
        distances[:, :kk] = d
        positions[:, :kk] = i
        positions[distances == pad] = -1
        return distances, positions

    def search(
        self, query_codes: np.ndarray, k: int, *, categories: Any = None, mask_table: MaskTable | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for each query: exact for flat/gpu_flat, the type's approximation otherwise.

        Args:
            query_codes: packed ``uint8`` ``(nq, bits/8)`` or {-1,+1} ``(nq, bits)``.
            k: neighbours per query (>= 1); slots without a hit are padded (module docs).
            categories: with ``mask_table``, one category per query: rank by the category-mask
                distance instead (:func:`vhindex.index.mask.masked_search`; exact on every type).
            mask_table: the :class:`~vhindex.index.mask.MaskTable` for ``categories``.

        Returns:
            ``(distances int32 (nq, k), video ids object (nq, k))``, ascending distance per row,
            ``None`` ids in padding.
        """
        distances, positions = self.search_positions(query_codes, k, categories=categories, mask_table=mask_table)
        return distances, self.idmap.to_ids(positions)

    def reconstruct(self, video_ids: Sequence[str] | str) -> np.ndarray:
        """Packed codes ``(n, bits/8)`` of ``video_ids`` (a single id gives ``(1, bits/8)``), e.g. to query by id.

        Raises:
            KeyError: naming an id that is not in this shard.
        """
        positions = self.idmap.to_ints(video_ids)
        return np.array(self.codes_view()[positions], copy=True)

    # ---------------------------------------------------------------- persistence

    def _manifest_body(self) -> dict[str, Any]:
        return {
            "format": FORMAT_SHARD_INDEX,
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "count": self.ntotal,
            "bit_order": BIT_ORDER,
            "spec": self.spec.to_dict(),
            "effective_params": dict(self._effective),
            "model_version": self.model_version,
            "shard_id": self.shard_id,
            "num_shards": self.num_shards,
        }

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> str:
        """Write the shard folder at ``url``; the manifest is written last (module docs).

        Returns:
            The SHA-256 of the manifest written (what a sharded index's top manifest records).
        """
        fs, root = url_to_fs(url, storage_options)
        self._sync()
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(self.codes_view()), allow_pickle=False)
        files = {CODES_FILE: buf.getvalue(), IDS_FILE: self.idmap.to_parquet_bytes()}
        if not self.spec.exact and self._index is not None:
            files[INDEX_FILE] = faiss.serialize_index_binary(self._index).tobytes()
        write_files_then_manifest(fs, root, files, self._manifest_body(), MANIFEST_FILE)
        with fs.open(join(fs, root, MANIFEST_FILE), "rb") as f:
            digest = sha256_hex(f.read())
        logger.info("saved %r to %s (%d bytes)", self, url, sum(len(b) for b in files.values()))
        return digest

    @classmethod
    def load(
        cls,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        num_threads: int | None = None,
        mask_cache_size: int = 4,
        expected_manifest_sha256: str | None = None,
    ) -> ShardIndex:
        """Load and verify a shard folder written by :meth:`save`.

        Args:
            url: the shard folder.
            storage_options: fsspec options.
            num_threads: faiss threads (see the constructor).
            mask_cache_size: masked indexes kept for category-mask search.
            expected_manifest_sha256: refuse the shard unless its manifest has this SHA-256
                (what :class:`ShardedIndex` checks against its top manifest).

        Raises:
            FileNotFoundError: no manifest (missing or incomplete write) or a missing file.
            ValueError: wrong format, checksum mismatch (naming the file), or inconsistent contents.
            RuntimeError: a ``gpu_flat`` shard on a machine without a usable GPU.
        """
        fs, root = url_to_fs(url, storage_options)
        manifest_path = join(fs, root, MANIFEST_FILE)
        try:
            with fs.open(manifest_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no {MANIFEST_FILE} in {url}: not a saved shard index, or the save did not finish; save it again"
            ) from None
        if expected_manifest_sha256 is not None and sha256_hex(raw) != expected_manifest_sha256:
            raise ValueError(
                f"checksum mismatch for {MANIFEST_FILE} in {url}: sha256 {sha256_hex(raw)[:16]}... but the sharded "
                f"index manifest recorded {expected_manifest_sha256[:16]}...; the shard was changed or replaced after "
                "the sharded index was built -- rebuild the index"
            )
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"{url}/{MANIFEST_FILE} is not valid JSON: {err}") from err
        return cls._from_manifest(fs, root, url, manifest, num_threads=num_threads, mask_cache_size=mask_cache_size)

    @classmethod
    def _from_manifest(
        cls, fs: Any, root: str, url: str, manifest: dict[str, Any], *, num_threads: int | None, mask_cache_size: int
    ) -> ShardIndex:
        if manifest.get("format") != FORMAT_SHARD_INDEX:
            raise ValueError(f"{url} holds format {manifest.get('format')!r}, expected {FORMAT_SHARD_INDEX!r}")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{url} has format_version {manifest.get('format_version')!r}; "
                             f"this vhindex reads {FORMAT_VERSION}")
        if manifest.get("bit_order", BIT_ORDER) != BIT_ORDER:
            raise ValueError(f"{url} uses bit order {manifest['bit_order']!r}, expected {BIT_ORDER!r}")
        try:
            spec = IndexSpec.from_dict(manifest["spec"])
            bits, count = int(manifest["bits"]), int(manifest["count"])
            shard_id, num_shards = int(manifest["shard_id"]), int(manifest["num_shards"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{url}/{MANIFEST_FILE} is malformed ({type(err).__name__}: {err})") from err
        self = cls(bits, spec, shard_id=shard_id, num_shards=num_shards,
                   model_version=manifest.get("model_version", ""), num_threads=num_threads,
                   mask_cache_size=mask_cache_size)
        listed = set(manifest.get("files", {}))
        names = [CODES_FILE, IDS_FILE] + ([INDEX_FILE] if INDEX_FILE in listed else [])
        if not spec.exact and spec.type != "ivf" and INDEX_FILE not in listed:
            raise ValueError(f"{url}: a {spec.type} shard must list {INDEX_FILE} in its manifest")
        blobs = read_verified_files(fs, root, url, manifest, names)
        try:
            codes = np.load(io.BytesIO(blobs[CODES_FILE]), allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{url}/{CODES_FILE} is not a readable .npy: {err}") from err
        if codes.dtype != np.uint8 or codes.shape != (count, bits // 8):
            raise ValueError(f"{url}/{CODES_FILE} holds {codes.dtype} {codes.shape}, expected uint8 "
                             f"{(count, bits // 8)}")
        self.idmap = IdMap.from_parquet_bytes(blobs[IDS_FILE], source=f"{url}/{IDS_FILE}")
        if len(self.idmap) != count:
            raise ValueError(f"{url} is inconsistent: manifest says {count} codes, id map has {len(self.idmap)} ids")
        codes = np.ascontiguousarray(codes)
        if spec.type == "flat":
            if count:
                self._index.add(codes)
        else:
            self._parts = [codes]
            if spec.type == "gpu_flat":
                if count:
                    self._index.add(codes)
            elif INDEX_FILE in blobs:
                index = faiss.deserialize_index_binary(np.frombuffer(blobs[INDEX_FILE], dtype=np.uint8))
                want = {"hnsw": faiss.IndexBinaryHNSW, "ivf": faiss.IndexBinaryIVF,
                        "multihash": faiss.IndexBinaryMultiHash}[spec.type]
                if not isinstance(index, want) or index.d != bits or index.ntotal != count:
                    raise ValueError(f"{url}/{INDEX_FILE} holds a {type(index).__name__} of {index.d} bits x "
                                     f"{index.ntotal}, expected a {want.__name__} of {bits} bits x {count}")
                self._index = index
                self._apply_search_params(index)
        self._in_faiss = int(self._index.ntotal) if self._index is not None else 0
        self._effective = dict(manifest.get("effective_params") or {})
        return self


# ================================================================ merging


def _pad_mask(ids: np.ndarray) -> np.ndarray:
    if ids.dtype == object:
        return np.frompyfunc(lambda x: x is None, 1, 1)(ids).astype(bool) if ids.size else np.zeros(ids.shape, bool)
    return ids < 0


def merge_topk(
    results: Sequence[tuple[np.ndarray, np.ndarray]], k: int, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact merge of per-shard top-k lists into the global top-``k``.

    Args:
        results: ``(distances int32 (nq, k_s), ids (nq, k_s))`` per shard, in shard order. Ids are
            video ids (object arrays, ``None`` = padding) or integers (``-1`` = padding), the same
            kind for every shard; ``k_s`` may differ between shards.
        k: columns of the merged result (>= 1).
        bits: code length (padding distance is ``bits + 1``).

    Returns:
        ``(distances int32 (nq, k), ids (nq, k))`` in ascending distance; ties are broken by
        (shard order, then the shard's own order), so the merge is deterministic. Slots beyond
        the available hits are padded. When every shard returns its exact top-``k``, the result is
        the exact global top-``k``.

    Raises:
        ValueError: no results, mismatched shapes, or a distance outside ``[0, bits]`` that is not
            the padding (a shard that did not rewrite faiss's own padding, for example).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0:
        raise ValueError(f"bits must be a positive int, got {bits!r}")
    k, bits = int(k), int(bits)
    results = list(results)
    if not results:
        raise ValueError("merge_topk needs at least one shard result")
    pad = pad_distance(bits)
    ds, ids_list, kinds = [], [], set()
    nq = None
    for s, (d, ids) in enumerate(results):
        d, ids = np.asarray(d), np.asarray(ids)
        if ids.dtype.kind in "US":  # e.g. ids decoded from JSON lists without padding
            ids = ids.astype(object)
        if d.ndim != 2 or d.shape != ids.shape:
            raise ValueError(f"shard result {s}: distances {d.shape} and ids {ids.shape} must be equal 2-D shapes")
        if nq is None:
            nq = d.shape[0]
        elif d.shape[0] != nq:
            raise ValueError(f"shard result {s} has {d.shape[0]} query rows, shard result 0 has {nq}")
        if d.size and not np.issubdtype(d.dtype, np.integer):
            raise ValueError(f"shard result {s}: distances must be integers, got {d.dtype}")
        kinds.add("object" if ids.dtype == object else "int")
        if ids.size and ids.dtype != object and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"shard result {s}: ids must be an object array of video ids or integers, got {ids.dtype}")
        is_pad = _pad_mask(ids)
        d = d.astype(np.int32, copy=False)
        bad = (d < 0) | (d > pad) | (is_pad != (d == pad))
        if bad.any():
            r, c = (int(x[0]) for x in np.nonzero(bad))
            raise ValueError(
                f"shard result {s}, row {r}, column {c}: distance {int(d[r, c])} with id {ids[r, c]!r} is invalid for "
                f"{bits}-bit codes (real hits lie in [0, {bits}], padding is distance {pad} with id None/-1)"
            )
        ds.append(d)
        ids_list.append(ids)
    if len(kinds) > 1:
        raise ValueError("shard results mix video ids (object arrays) and integer ids; pass one kind")
    as_object = kinds == {"object"}
    out_d = np.full((nq, k), pad, dtype=np.int32)
    out_i = np.full((nq, k), None, dtype=object) if as_object else np.full((nq, k), -1, dtype=np.int64)
    all_d = np.concatenate(ds, axis=1)
    if all_d.shape[1] == 0 or nq == 0:
        return out_d, out_i
    all_i = np.concatenate([i.astype(object if as_object else np.int64, copy=False) for i in ids_list], axis=1)
    order = np.argsort(all_d, axis=1, kind="stable")[:, :k]
    n = order.shape[1]
    out_d[:, :n] = np.take_along_axis(all_d, order, axis=1)
    out_i[:, :n] = np.take_along_axis(all_i, order, axis=1)
    return out_d, out_i


def search_shards(
    shards: Sequence[ShardIndex],
    query_codes: np.ndarray,
    k: int,
    *,
    categories: Any = None,
    mask_table: MaskTable | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Search every shard (in order) and merge: what the service's fan-out does, in one process."""
    shards = list(shards)
    if not shards:
        raise ValueError("search_shards needs at least one shard")
    bits = shards[0].bits
    if any(s.bits != bits for s in shards):
        raise ValueError(f"shards differ in code length: {sorted({s.bits for s in shards})}")
    results = [s.search(query_codes, k, categories=categories, mask_table=mask_table) for s in shards]
    return merge_topk(results, k, bits)


# ================================================================ top manifest


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard of a sharded index: folder (relative), code count, SHA-256 of its manifest."""

    path: str
    count: int
    manifest_sha256: str


def _index_version(shard_hashes: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(shard_hashes).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class ShardedIndexManifest:
    """Contents of a sharded index's top ``_manifest.json`` (module docs)."""

    bits: int
    num_shards: int
    shards: tuple[ShardInfo, ...]
    total_count: int
    spec: IndexSpec
    model_version: str
    model: str
    created_at: str
    index_version: str
    source: str = ""
    bit_order: str = BIT_ORDER

    @property
    def counts(self) -> list[int]:
        """Codes per shard, in shard order."""
        return [s.count for s in self.shards]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "format": FORMAT_SHARDED_INDEX,
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "bit_order": self.bit_order,
            "num_shards": self.num_shards,
            "total_count": self.total_count,
            "spec": self.spec.to_dict(),
            "model": self.model,
            "model_version": self.model_version,
            "created_at": self.created_at,
            "source": self.source,
            "index_version": self.index_version,
            "shards": [dataclasses.asdict(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, obj: Any, source: str = "manifest") -> ShardedIndexManifest:
        """Parse and check :meth:`to_dict` output; ``source`` names the file in errors."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT_SHARDED_INDEX:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{source} holds format {got!r}, expected {FORMAT_SHARDED_INDEX!r}")
        if obj.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{source} has format_version {obj.get('format_version')!r}; this vhindex reads "
                             f"{FORMAT_VERSION}")
        try:
            shards = tuple(ShardInfo(str(s["path"]), int(s["count"]), str(s["manifest_sha256"]))
                           for s in obj["shards"])
            m = cls(bits=int(obj["bits"]), num_shards=int(obj["num_shards"]), shards=shards,
                    total_count=int(obj["total_count"]), spec=IndexSpec.from_dict(obj["spec"]),
                    model_version=str(obj.get("model_version", "")), model=str(obj.get("model", "")),
                    created_at=str(obj.get("created_at", "")), index_version=str(obj["index_version"]),
                    source=str(obj.get("source", "")), bit_order=str(obj.get("bit_order", BIT_ORDER)))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source} is not a valid sharded index manifest ({type(err).__name__}: {err})") from err
        if m.bit_order != BIT_ORDER:
            raise ValueError(f"{source} uses bit order {m.bit_order!r}, expected {BIT_ORDER!r}")
        if m.num_shards != len(m.shards) or m.num_shards < 1:
            raise ValueError(f"{source}: num_shards={m.num_shards} but {len(m.shards)} shards are listed")
        if m.total_count != sum(m.counts):
            raise ValueError(f"{source}: total_count={m.total_count} but the shard counts sum to {sum(m.counts)}")
        want = _index_version([s.manifest_sha256 for s in m.shards])
        if m.index_version != want:
            raise ValueError(f"{source}: index_version {m.index_version!r} does not match its shard hashes "
                             f"({want!r}); the manifest was edited -- rebuild the index")
        return m


# ================================================================ ShardedIndex


class ShardedIndex:
    """A saved sharded index opened through its top manifest; shards load lazily and verified.

    Use :meth:`open`. A shard replica calls ``ShardedIndex.open(url).load_shard(i)``; the
    in-process :meth:`search` loads every shard and merges (the reference path).
    """

    def __init__(self, url: str, fs: Any, root: str, manifest: ShardedIndexManifest,
                 storage_options: dict[str, Any] | None, num_threads: int | None) -> None:
        self.url = url
        self.manifest = manifest
        self.storage_options = storage_options
        self.num_threads = num_threads
        self._fs = fs
        self._root = root
        self._shards: dict[int, ShardIndex] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, url: str, storage_options: dict[str, Any] | None = None, *, num_threads: int | None = None
    ) -> ShardedIndex:
        """Read and verify the top manifest at ``url`` (no shard is loaded yet).

        Raises:
            FileNotFoundError: no top ``_manifest.json`` (not a sharded index, or the build did not finish).
            ValueError: wrong format or an inconsistent manifest.
        """
        fs, root = url_to_fs(url, storage_options)
        path = join(fs, root, MANIFEST_FILE)
        if not fs.exists(path):
            raise FileNotFoundError(
                f"no {MANIFEST_FILE} in {url}: not a sharded index, or its build did not finish "
                "(the top manifest is written last); run build_sharded_index again"
            )
        manifest = ShardedIndexManifest.from_dict(read_json(fs, path), source=unstrip(fs, path))
        return cls(url, fs, root, manifest, storage_options, num_threads)

    @property
    def bits(self) -> int:
        return self.manifest.bits

    @property
    def num_shards(self) -> int:
        return self.manifest.num_shards

    @property
    def index_version(self) -> str:
        return self.manifest.index_version

    @property
    def spec(self) -> IndexSpec:
        return self.manifest.spec

    def __len__(self) -> int:
        return self.manifest.total_count

    def __repr__(self) -> str:
        return (f"ShardedIndex({self.url!r}, type={self.spec.type!r}, bits={self.bits}, shards={self.num_shards}, "
                f"count={len(self)}, version={self.index_version!r})")

    def shard_url(self, i: int) -> str:
        """Full URL of shard ``i``'s folder."""
        return unstrip(self._fs, join(self._fs, self._root, self.manifest.shards[i].path))

    def load_shard(self, i: int, *, mask_cache_size: int = 4) -> ShardIndex:
        """Load shard ``i`` (cached), verifying its manifest hash and metadata against the top manifest."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_shards:
            raise IndexError(f"shard {i!r} out of range: {self.url} has {self.num_shards} shards")
        i = int(i)
        with self._lock:
            if i in self._shards:
                return self._shards[i]
        info = self.manifest.shards[i]
        url = self.shard_url(i)
        shard = ShardIndex.load(url, self.storage_options, num_threads=self.num_threads,
                                mask_cache_size=mask_cache_size, expected_manifest_sha256=info.manifest_sha256)
        got = (shard.shard_id, shard.num_shards, shard.bits, len(shard), shard.spec, shard.model_version)
        want = (i, self.num_shards, self.bits, info.count, self.spec, self.manifest.model_version)
        if got != want:
            raise ValueError(f"{url} does not match {self.url}/{MANIFEST_FILE}: shard has (shard_id, num_shards, bits, "
                             f"count, spec, model_version) = {got}, expected {want}")
        with self._lock:
            return self._shards.setdefault(i, shard)

    def load_all(self) -> list[ShardIndex]:
        """Load every shard (in order)."""
        return [self.load_shard(i) for i in range(self.num_shards)]

    def search(
        self, query_codes: np.ndarray, k: int, *, categories: Any = None, mask_table: MaskTable | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search every shard and merge (:func:`merge_topk`); see :meth:`ShardIndex.search`."""
        return search_shards(self.load_all(), query_codes, k, categories=categories, mask_table=mask_table)

    def reconstruct(self, video_ids: Sequence[str] | str) -> np.ndarray:
        """Packed codes ``(n, bits/8)`` of ``video_ids``, asking the shards.

        Raises:
            KeyError: naming an id that is in no shard.
        """
        video_ids = [video_ids] if isinstance(video_ids, str) else list(video_ids)
        shards = self.load_all()
        out = np.empty((len(video_ids), self.bits // 8), dtype=np.uint8)
        for row, vid in enumerate(video_ids):
            for shard in shards:
                if shard.contains(vid):
                    out[row] = shard.reconstruct([vid])[0]
                    break
            else:
                raise KeyError(f"unknown video id {vid!r}: in none of the {self.num_shards} shards of {self.url}")
        return out

    def info(self) -> dict[str, Any]:
        """Summary for the service's health and info endpoints."""
        m = self.manifest
        return {"index_version": m.index_version, "bits": m.bits, "num_shards": m.num_shards,
                "counts": m.counts, "total_count": m.total_count, "type": m.spec.type, "spec": m.spec.to_dict(),
                "exact": m.spec.exact, "model": m.model, "model_version": m.model_version,
                "created_at": m.created_at, "url": self.url}


# ================================================================ building


def _open_codes(codes_url: str, storage_options: dict[str, Any] | None) -> CodesDataset:
    return codes_url if isinstance(codes_url, CodesDataset) else CodesDataset.open(codes_url, storage_options)


def plan_index_shards(
    codes_url: str,
    num_shards: int,
    storage_options: dict[str, Any] | None = None,
    *,
    allow_fewer_shards: bool = False,
) -> list[ReadTask]:
    """Split a codes dataset into ``num_shards`` read tasks balanced by rows (one per shard).

    Row groups are never split (:func:`vhindex.data.planner.plan_tasks`), so shard sizes differ by
    at most about one row group.

    Raises:
        ValueError: the dataset has no rows, or fewer non-empty row groups than ``num_shards``
            (unless ``allow_fewer_shards``: then fewer shards are planned and a warning is logged).
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards <= 0:
        raise ValueError(f"num_shards must be a positive int, got {num_shards!r}")
    ds = _open_codes(codes_url, storage_options)
    tasks = ds.plan(num_tasks=num_shards)
    if not tasks:
        raise ValueError(f"codes dataset {ds.url} has no rows; nothing to index")
    if len(tasks) < num_shards:
        msg = (f"codes dataset {ds.url} ({ds.num_videos} rows) has only {len(tasks)} non-empty row groups, and row "
               f"groups are never split, so it gives {len(tasks)} shard(s), not {num_shards}")
        if not allow_fewer_shards:
            raise ValueError(f"{msg}; use num_shards <= {len(tasks)}, rewrite the codes with a smaller "
                             "row_group_size, or pass allow_fewer_shards=True")
        logger.warning("%s; building %d shard(s)", msg, len(tasks))
    return tasks


def build_sharded_index(
    codes_url: str,
    out_url: str,
    num_shards: int,
    spec: IndexSpec | None = None,
    so: dict[str, Any] | None = None,
    threads: int | None = None,
    *,
    batch_size: int = 65_536,
    overwrite: bool = False,
    allow_fewer_shards: bool = False,
) -> ShardedIndexManifest:
    """Build a sharded index from a codes dataset: one :class:`ShardIndex` per balanced read task.

    Shards are built and saved one after another (memory: one shard); the top manifest is written
    last, so a crashed build leaves no openable index.

    Args:
        codes_url: codes dataset (``vhindex.data.CodesDatasetWriter`` output).
        out_url: folder of the sharded index (layout in the module docs).
        num_shards: shards wanted (see :func:`plan_index_shards`).
        spec: index type and params (default exact ``flat``).
        so: fsspec storage options for both URLs.
        threads: faiss threads for building (HNSW insertion, IVF training).
        batch_size: rows read per batch.
        overwrite: replace an existing index at ``out_url`` (its top manifest is removed first).
        allow_fewer_shards: see :func:`plan_index_shards`.

    Raises:
        FileExistsError: ``out_url`` already holds a sharded index and ``overwrite`` is False.
        ValueError: a video id appears twice (naming the id and both shards), or a planning error.
        RuntimeError: ``gpu_flat`` without a usable GPU.
    """
    spec = IndexSpec() if spec is None else spec
    if not isinstance(spec, IndexSpec):
        raise TypeError(f"spec must be an IndexSpec, got {type(spec).__name__}")
    if spec.type == "gpu_flat":
        _require_gpu(spec.params["device"])
    ds = _open_codes(codes_url, so)
    meta = ds.meta
    spec.check_bits(meta.bits)
    if meta.bit_order != BIT_ORDER:
        raise ValueError(f"codes dataset {ds.url} uses bit order {meta.bit_order!r}, expected {BIT_ORDER!r}")
    tasks = plan_index_shards(ds, num_shards, so, allow_fewer_shards=allow_fewer_shards)
    fs, root = url_to_fs(out_url, so)
    top = join(fs, root, MANIFEST_FILE)
    if fs.exists(top):
        if not overwrite:
            raise FileExistsError(f"{out_url} already holds a sharded index; choose a new location or pass "
                                  "overwrite=True to replace it")
        fs.rm(top)
    n = len(tasks)
    owner: dict[str, int] = {}
    infos = []
    for t, task in enumerate(tasks):
        shard = ShardIndex(meta.bits, spec, shard_id=t, num_shards=n, model_version=meta.model_version,
                           num_threads=threads)
        for batch in ds.iter_batches(batch_size, tasks=[task]):
            for vid in batch.video_ids:
                prev = owner.get(vid)
                if prev is not None:
                    raise ValueError(f"duplicate video id {vid!r}: in shard {prev} and shard {t} of {ds.url}; "
                                     "video ids must be unique across the index")
                owner[vid] = t
            try:
                shard.add(batch.video_ids, batch.codes)
            except ValueError as err:  # duplicates within one batch
                raise ValueError(f"shard {t} of {ds.url}: {err}") from err
        if len(shard) != task.num_rows:
            raise ValueError(f"{ds.url}: read {len(shard)} rows for shard {t} but the plan says {task.num_rows}; "
                             "the dataset changed while building -- rebuild")
        rel = shard_dirname(t)
        digest = shard.save(unstrip(fs, join(fs, root, rel)), so)
        infos.append(ShardInfo(rel, len(shard), digest))
        logger.info("built shard %d/%d: %d codes (%s)", t + 1, n, len(shard), spec.type)
        del shard
    manifest = ShardedIndexManifest(
        bits=meta.bits, num_shards=n, shards=tuple(infos), total_count=sum(i.count for i in infos), spec=spec,
        model_version=meta.model_version, model=meta.model,
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        index_version=_index_version([i.manifest_sha256 for i in infos]), source=ds.url,
    )
    write_json_atomic(fs, top, manifest.to_dict())
    logger.info("wrote sharded index %s: %d shards, %d codes, version %s", out_url, n, manifest.total_count,
                manifest.index_version)
    return manifest

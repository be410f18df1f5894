"""Binary codes, id maps and exact Hamming indexes.

Public API:

* :mod:`vhindex.index.codes` -- the one bit order (``msb0``) and packing helpers.
* :class:`IdMap` -- ``video_id`` <-> int64 position.
* :class:`BinaryFlatIndex` -- exact Hamming top-k (faiss ``IndexBinaryFlat``) with save/load.
* :mod:`vhindex.index.sharded` -- :class:`IndexSpec`, :class:`ShardIndex` (flat / hnsw / ivf /
  multihash / gpu_flat), :func:`merge_topk`, :func:`build_sharded_index`, :class:`ShardedIndex`.
* :mod:`vhindex.index.mask` -- category-mask Hamming distance (:class:`MaskTable`, :func:`masked_search`).
* :mod:`vhindex.index.testing` -- brute-force oracle and tie-aware result comparison (tests).
"""

from vhindex.index.codes import (
    BIT_ORDER,
    as_packed,
    code_to_hex,
    hamming_distances,
    hex_to_code,
    pack_codes,
    unpack_codes,
)
from vhindex.index.flat import BinaryFlatIndex, faiss_threads, pad_distance
from vhindex.index.frames import FrameLevelIndex
from vhindex.index.idmap import IdMap
from vhindex.index.mask import MaskedIndexCache, MaskTable, masked_search
from vhindex.index.sharded import (
    IndexSpec,
    ShardedIndex,
    ShardedIndexManifest,
    ShardIndex,
    ShardInfo,
    build_sharded_index,
    gpu_available,
    merge_topk,
    plan_index_shards,
    search_shards,
)

__all__ = [
    "BIT_ORDER",
    "BinaryFlatIndex",
    "FrameLevelIndex",
    "IdMap",
    "IndexSpec",
    "MaskTable",
    "MaskedIndexCache",
    "ShardIndex",
    "ShardInfo",
    "ShardedIndex",
    "ShardedIndexManifest",
    "as_packed",
    "build_sharded_index",
    "code_to_hex",
    "faiss_threads",
    "gpu_available",
    "hamming_distances",
    "hex_to_code",
    "masked_search",
    "merge_topk",
    "pack_codes",
    "pad_distance",
    "plan_index_shards",
    "search_shards",
    "unpack_codes",
]

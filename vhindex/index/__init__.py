"""Binary codes, id maps and exact Hamming indexes.

Public API:

* :mod:`vhindex.index.codes` -- the one bit order (``msb0``) and packing helpers.
* :class:`IdMap` -- ``video_id`` <-> int64 position.
* :class:`BinaryFlatIndex` -- exact Hamming top-k (faiss ``IndexBinaryFlat``) with save/load.
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
from vhindex.index.idmap import IdMap

__all__ = [
    "BIT_ORDER",
    "BinaryFlatIndex",
    "IdMap",
    "as_packed",
    "code_to_hex",
    "faiss_threads",
    "hamming_distances",
    "hex_to_code",
    "pack_codes",
    "pad_distance",
    "unpack_codes",
]

"""Binary codes: the one bit order used everywhere in vhindex.

Models produce codes as arrays of {-1, +1} (float or int). On disk, in indexes and over HTTP,
codes are **packed bits**: K bits -> K/8 bytes (K must be a multiple of 8).

Bit order ("msb0"): bit ``i`` of the code (the ``i``-th model output) is stored in byte ``i // 8``
at bit position ``7 - (i % 8)`` -- the most significant bit first, as :func:`numpy.packbits`
does by default. A model output of +1 is a set bit (1), -1 (and 0, which only appears
when mean-pooled per-frame codes tie) is a cleared bit (0). So the hex form of a code reads
left to right as bits 0, 1, 2, ...: the 16-bit code ``[+1, -1, -1, -1, ..., -1, +1]`` is
``"8001"``.

The Hamming distance between packed codes is ``popcount(a XOR b)`` and does not depend on the bit
order; the order matters only when codes cross a boundary (files, hex strings, other tools).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

BIT_ORDER = "msb0"

_HEX_RE = re.compile(r"[0-9a-fA-F]*")
# popcount of every byte value; used where numpy < 2.0 lacks np.bitwise_count.
_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount8(x: np.ndarray) -> np.ndarray:
    """Number of set bits in every element of a ``uint8`` array (same shape, ``uint8``)."""
    x = np.asarray(x, dtype=np.uint8)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x)
    return _POPCOUNT8[x]


def _check_bits(bits: int) -> None:
    if bits <= 0 or bits % 8:
        raise ValueError(f"code length must be a positive multiple of 8 bits, got {bits}")


def pack_codes(signs: np.ndarray) -> np.ndarray:
    """Pack codes in {-1, +1} (shape ``(N, K)``) into ``uint8`` bytes of shape ``(N, K/8)``.

    Values > 0 become 1-bits; values <= 0 become 0-bits.
    """
    signs = np.asarray(signs)
    if signs.ndim != 2:
        raise ValueError(f"expected codes of shape (N, bits), got shape {signs.shape}")
    _check_bits(signs.shape[1])
    return np.packbits(signs > 0, axis=1, bitorder="big")


def unpack_codes(packed: np.ndarray, bits: int | None = None, dtype: type = np.int8) -> np.ndarray:
    """Unpack ``uint8`` codes ``(N, K/8)`` into {-1, +1} values ``(N, K)`` of ``dtype``."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise ValueError(f"expected packed codes as uint8 of shape (N, bytes), got {packed.dtype} {packed.shape}")
    if bits is not None and bits != packed.shape[1] * 8:
        raise ValueError(f"packed codes hold {packed.shape[1] * 8} bits, expected {bits}")
    bitsarr = np.unpackbits(packed, axis=1, bitorder="big")
    return (bitsarr.astype(dtype) * 2 - 1).astype(dtype)


def as_packed(codes: np.ndarray) -> np.ndarray:
    """Accept codes either packed (``uint8``) or as {-1, +1} values and return them packed.

    A ``uint8`` array is taken as already packed; any other dtype is taken as {-1, +1} values.
    0 (a tie in mean-pooled per-frame codes) packs as a cleared bit like -1, so a {0, 1} bit
    matrix of a non-uint8 dtype also packs correctly.
    """
    codes = np.asarray(codes)
    if codes.dtype == np.uint8:
        if codes.ndim != 2:
            raise ValueError(f"packed codes must be 2-D (N, bytes), got shape {codes.shape}")
        return np.ascontiguousarray(codes)
    valid = (codes == 1) | (codes == -1) | (codes == 0)
    if not valid.all():
        bad = np.unique(codes[~valid])[:5].tolist()
        raise ValueError(f"codes must be packed uint8 bytes or values in {{-1, +1}}; found values {bad}")
    return pack_codes(codes)


def code_to_hex(code: np.ndarray) -> str:
    """Hex string of one packed code (``uint8`` of shape ``(K/8,)``)."""
    return np.asarray(code, dtype=np.uint8).tobytes().hex()


def hex_to_code(text: str, bits: int) -> np.ndarray:
    """Parse a hex code of ``bits`` bits into packed ``uint8`` bytes, with a clear error."""
    _check_bits(bits)
    if not isinstance(text, str):
        raise TypeError(f"expected a hex string, got {type(text).__name__}")
    want = bits // 4
    if len(text) != want:
        raise ValueError(f"a {bits}-bit code is {want} hex digits, got {len(text)}: {text[:80]!r}")
    # bytes.fromhex alone would accept embedded spaces ("80 01 " -> 2 bytes), so check the digits.
    if not _HEX_RE.fullmatch(text):
        raise ValueError(f"code is not a hex string (only 0-9, a-f, A-F allowed): {text[:80]!r}")
    raw = bytes.fromhex(text)
    return np.frombuffer(raw, dtype=np.uint8).copy()


def hamming_distances(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """Brute-force Hamming distances ``(nq, nd)`` between packed codes (numpy oracle).

    Meant for tests and small inputs; large evaluations use chunked search.
    """
    q = as_packed(query)
    d = as_packed(database)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query codes have {q.shape[1] * 8} bits, database codes {d.shape[1] * 8}")
    return popcount8(q[:, None, :] ^ d[None, :, :]).sum(axis=2, dtype=np.int32)


def check_packed(codes: np.ndarray, bits: int, what: str) -> np.ndarray:
    """``codes`` as C-contiguous packed ``uint8`` ``(N, bits/8)``; {-1,+1} ``(N, bits)`` is packed first.

    Raises:
        ValueError: naming ``what``, the expected shapes and what was given.
    """
    packed = as_packed(codes)
    if packed.ndim != 2 or packed.shape[1] * 8 != bits:
        raise ValueError(
            f"{what} must be packed uint8 (N, {bits // 8}) or {{-1,+1}} (N, {bits}) for a "
            f"{bits}-bit index, got {np.asarray(codes).dtype} {np.asarray(codes).shape}"
        )
    return np.ascontiguousarray(packed)


def ids_and_codes(video_ids: Sequence[str] | str, codes: np.ndarray, bits: int) -> tuple[list[str], np.ndarray]:
    """Validate an ``add`` call: ids as a list (a single str allowed) and packed codes, one per id."""
    ids = [video_ids] if isinstance(video_ids, str) else list(video_ids)
    packed = check_packed(codes, bits, "codes")
    if len(ids) != packed.shape[0]:
        raise ValueError(f"got {len(ids)} video ids but {packed.shape[0]} codes; they must match one to one")
    return ids, packed


def check_manifest_header(manifest: dict, url: str, fmt: str, version: int) -> None:
    """Refuse a saved index whose manifest has another format, format version or bit order.

    Args:
        manifest: the parsed ``_manifest.json``.
        url: where it was read (named in errors).
        fmt: the expected ``format``.
        version: the ``format_version`` this vhindex reads.

    Raises:
        ValueError: naming the field, the value found and the value expected.
    """
    if manifest.get("format") != fmt:
        raise ValueError(f"{url} holds format {manifest.get('format')!r}, expected {fmt!r}")
    if manifest.get("format_version") != version:
        raise ValueError(f"{url} has format_version {manifest.get('format_version')!r}; this vhindex reads {version}")
    if manifest.get("bit_order", BIT_ORDER) != BIT_ORDER:
        raise ValueError(f"{url} uses bit order {manifest['bit_order']!r}, expected {BIT_ORDER!r}")

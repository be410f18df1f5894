"""Exact, stable Hamming top-k over packed binary codes, with bounded memory.

The ranking used everywhere in :mod:`vhindex.eval` orders database items by
``(Hamming distance, database index)``: ties are broken by database order, as a *stable* sort
of the distance row would (``np.argsort(row, kind="stable")``). The published evaluation code
(SSVH / BTH / DKPH / ConMH / S5VH ``mAP()``) uses numpy's default, unstable ``np.argsort``, so its
order inside a tie is implementation-defined; ours is deterministic and documented.

How it works, per chunk of queries (``chunk x N_db`` distances, never ``N_q x N_db``):

1. Hamming distances with faiss's C++ ``hammings`` (numpy ``bitwise_count`` fallback), stored as
   small unsigned integers (distances are ``0..bits``).
2. One histogram of distances per row. Its cumulative sum gives, per row, the k-th smallest
   distance ``t`` and the number ``n_lt`` of items strictly closer than ``t``.
3. Candidates are the items with ``d <= t`` (in index order, from ``np.flatnonzero``). All items with
   ``d < t`` are kept, plus the first ``k - n_lt`` items with ``d == t`` in index order.
4. The ``k`` kept items of a row are ordered by ``(distance, index)`` with a stable sort on ``k``
   items only -- no full sort of the row.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vhindex.index.codes import as_packed

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "auto_chunk_size",
    "hamming_distances_chunk",
    "iter_distance_chunks",
    "row_histograms",
    "select_stable_topk",
    "stable_topk_hamming",
]

#: Default working-set budget (bytes) for one chunk of queries.
DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024

# Bytes per (query, database) pair held while a chunk is processed: int32 distances (4), their
# small-int copy (<= 2), and the temporaries of the numpy fallback (uint64 XOR 8, popcount 1),
# rounded up.
_BYTES_PER_PAIR = 16
# Bytes per candidate (d <= t) during selection: flat index, row, column (8 each), distance,
# equality mask, rank (8), keep mask -- rounded up.
_BYTES_PER_CANDIDATE = 48

try:  # faiss is a core dependency, but keep a pure-numpy path for odd builds.
    import faiss as _faiss

    _HAVE_FAISS_HAMMINGS = hasattr(_faiss, "hammings") and hasattr(_faiss, "swig_ptr")
except ImportError:  # pragma: no cover - exercised only without faiss
    _faiss = None
    _HAVE_FAISS_HAMMINGS = False


def _distance_dtype(bits: int) -> np.dtype:
    return np.dtype(np.uint8) if bits <= 255 else np.dtype(np.uint16)


def auto_chunk_size(n_query: int, n_db: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Number of queries per chunk so that one chunk's working set stays within ``memory_budget``.

    Args:
        n_query: Number of queries (the chunk size never exceeds it).
        n_db: Number of database items (columns of a chunk's distance matrix).
        memory_budget: Bytes allowed for one chunk's working set.

    Returns:
        A chunk size in ``[1, max(n_query, 1)]``.
    """
    per_row = max(n_db, 1) * _BYTES_PER_PAIR
    return int(max(1, min(max(n_query, 1), memory_budget // per_row)))


def _check_packed_pair(query: np.ndarray, db: np.ndarray, qname: str, dbname: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        q = as_packed(query)
    except ValueError as exc:
        raise ValueError(f"{qname}: {exc}") from None
    try:
        d = as_packed(db)
    except ValueError as exc:
        raise ValueError(f"{dbname}: {exc}") from None
    if q.shape[1] != d.shape[1]:
        raise ValueError(
            f"{qname} has {q.shape[1] * 8} bits per code but {dbname} has {d.shape[1] * 8}; "
            "both must come from the same model / code length"
        )
    return q, d


def hamming_distances_chunk(
    query_packed: np.ndarray, db_packed: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """Hamming distances between packed codes, ``(nq, nd)`` ``int32``.

    Uses faiss's C++ ``hammings`` when available, else numpy ``bitwise_count`` on 64-bit words.
    The caller is responsible for chunking (the result is ``nq * nd * 4`` bytes).

    Args:
        query_packed: ``uint8`` array ``(nq, nbytes)``, C-contiguous.
        db_packed: ``uint8`` array ``(nd, nbytes)``, C-contiguous.
        out: Optional ``int32`` C-contiguous buffer of shape ``(nq, nd)`` to write into.

    Returns:
        The ``int32`` distance matrix (``out`` when given).
    """
    q = np.ascontiguousarray(query_packed, dtype=np.uint8)
    d = np.ascontiguousarray(db_packed, dtype=np.uint8)
    nq, nbytes = q.shape
    nd = d.shape[0]
    if out is None:
        out = np.empty((nq, nd), dtype=np.int32)
    elif out.shape != (nq, nd) or out.dtype != np.int32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous int32 array of shape {(nq, nd)}")
    if nq == 0 or nd == 0:
        return out
    if _HAVE_FAISS_HAMMINGS:
        sp = _faiss.swig_ptr
        _faiss.hammings(sp(q), sp(d), nq, nd, nbytes, sp(out))
        return out
    return _hamming_numpy(q, d, out)


def _hamming_numpy(q: np.ndarray, d: np.ndarray, out: np.ndarray) -> np.ndarray:
    """numpy fallback of :func:`hamming_distances_chunk` (codes zero-padded to 64-bit words)."""
    nbytes = q.shape[1]
    pad = (-nbytes) % 8
    if pad:
        q = np.concatenate([q, np.zeros((q.shape[0], pad), np.uint8)], axis=1)
        d = np.concatenate([d, np.zeros((d.shape[0], pad), np.uint8)], axis=1)
    q64 = np.ascontiguousarray(q).view(np.uint64)
    d64 = np.ascontiguousarray(d).view(np.uint64)
    out[...] = 0
    for w in range(q64.shape[1]):
        out += np.bitwise_count(q64[:, w, None] ^ d64[None, :, w])
    return out


def row_histograms(distances: np.ndarray, bins: int) -> np.ndarray:
    """Per-row histogram of small non-negative integer distances.

    Args:
        distances: ``(n, m)`` array of integers in ``[0, bins)``.
        bins: Number of histogram bins (``bits + 1`` for Hamming distances).

    Returns:
        ``int64`` array ``(n, bins)``; row ``i`` counts the values of ``distances[i]``.
    """
    n = distances.shape[0]
    hist = np.empty((n, bins), dtype=np.int64)
    for i in range(n):  # one bincount per row beats a single offset bincount (no int64 copy)
        hist[i] = np.bincount(distances[i], minlength=bins)
    return hist


def select_stable_topk(
    distances: np.ndarray, hist: np.ndarray, k: int, max_candidates: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Stable top-``k`` of each row of a small-integer distance matrix, without a full sort.

    Args:
        distances: ``(n, m)`` non-negative integer distances (``m >= k``), C-contiguous.
        hist: ``row_histograms(distances, bins)``.
        k: Number of items per row, ``1 <= k <= m``.
        max_candidates: Upper bound on candidates (items with ``d <= t``) processed at once; rows
            are grouped to respect it (a single row may exceed it). ``None``: no grouping.

    Returns:
        ``(dist int32 (n, k), idx int64 (n, k))`` ordered by ``(distance, column index)``.
    """
    n, m = distances.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}] (the number of columns), got {k}")
    bins = hist.shape[1]
    cs = np.cumsum(hist, axis=1)
    thr = np.argmax(cs >= k, axis=1)  # first bin whose cumulative count reaches k
    ar = np.arange(n)
    n_le = cs[ar, thr]
    need = k - (n_le - hist[ar, thr])  # how many of the d == t items to take, in index order
    out_d = np.empty((n, k), dtype=np.int32)
    out_i = np.empty((n, k), dtype=np.int64)
    if max_candidates is None:
        groups = [(0, n)]
    else:
        groups = []
        start, acc = 0, 0
        for i in range(n):
            if acc and acc + n_le[i] > max_candidates:
                groups.append((start, i))
                start, acc = i, 0
            acc += int(n_le[i])
        groups.append((start, n))
    thr_t = thr.astype(distances.dtype)
    for g0, g1 in groups:
        sub = distances[g0:g1]
        t = thr_t[g0:g1]
        flat = np.flatnonzero(sub <= t[:, None])  # row-major: rows ascending, columns ascending
        rows = flat // m
        cols = flat - rows * m
        d = sub.ravel()[flat]
        eq = d == t[rows]
        ceq = np.cumsum(eq)
        counts = np.bincount(rows, minlength=g1 - g0)
        starts = np.cumsum(counts) - counts
        base = np.where(starts > 0, ceq[np.maximum(starts - 1, 0)], 0)
        keep = ~eq | ((ceq - base[rows]) <= need[g0:g1][rows])
        rows, cols, d = rows[keep], cols[keep], d[keep]
        assert rows.size == (g1 - g0) * k, "stable top-k selected a wrong number of items"
        # rows ascending, columns ascending within a row: a stable sort by (row, d) gives (row, d, col)
        order = np.argsort(rows * bins + d, kind="stable")
        out_d[g0:g1] = d[order].reshape(g1 - g0, k)
        out_i[g0:g1] = cols[order].reshape(g1 - g0, k)
    return out_d, out_i


def iter_distance_chunks(
    query_packed: np.ndarray, db_packed: np.ndarray, chunk_size: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(start, stop, distances)`` for consecutive query chunks.

    ``distances`` is a ``(stop - start, N_db)`` array of ``uint8`` (``bits <= 255``) or ``uint16``;
    the buffers are reused between chunks, so consume each chunk before asking for the next.
    """
    nq = query_packed.shape[0]
    nd = db_packed.shape[0]
    bits = query_packed.shape[1] * 8
    chunk_size = max(1, min(int(chunk_size), max(nq, 1)))
    buf32 = np.empty((chunk_size, nd), dtype=np.int32)
    small = np.empty((chunk_size, nd), dtype=_distance_dtype(bits))
    for start in range(0, nq, chunk_size):
        stop = min(start + chunk_size, nq)
        c = stop - start
        d32 = hamming_distances_chunk(query_packed[start:stop], db_packed, out=buf32[:c])
        ds = small[:c]
        np.copyto(ds, d32, casting="unsafe")
        yield start, stop, ds


def stable_topk_hamming(
    query_packed: np.ndarray,
    db_packed: np.ndarray,
    k: int,
    chunk_size: int | None = None,
    *,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` database items per query by Hamming distance, ties broken by database order.

    The result equals, row by row, the first ``k`` entries of
    ``np.argsort(distances_row, kind="stable")`` -- i.e. items ordered by ``(distance, index)``.
    Memory is bounded: queries are processed in chunks (``chunk_size x N_db`` distances at a time).

    Args:
        query_packed: Query codes, packed ``uint8`` ``(nq, bits/8)`` or {-1, +1} ``(nq, bits)``.
        db_packed: Database codes in the same form and code length.
        k: Number of neighbours per query (``>= 1``). When ``k > N_db`` the last ``k - N_db``
            columns are padding: index ``-1`` and distance ``np.iinfo(np.int32).max`` (the faiss
            convention).
        chunk_size: Queries per chunk; ``None`` picks it from ``memory_budget``.
        memory_budget: Working-set bytes per chunk used when ``chunk_size`` is ``None``.

    Returns:
        ``(distances, indices)``: ``int32 (nq, k)`` and ``int64 (nq, k)``.

    Raises:
        ValueError: On bad codes, mismatched code lengths, ``k < 1`` or ``chunk_size < 1``.
    """
    q, d = _check_packed_pair(query_packed, db_packed, "query_packed", "db_packed")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    nq, nd = q.shape[0], d.shape[0]
    bits = q.shape[1] * 8
    out_d = np.full((nq, k), np.iinfo(np.int32).max, dtype=np.int32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, nd)
    if nq == 0 or kk == 0:
        return out_d, out_i
    cs = auto_chunk_size(nq, nd, memory_budget) if chunk_size is None else int(chunk_size)
    max_cand = max(1, memory_budget // _BYTES_PER_CANDIDATE)
    for start, stop, ds in iter_distance_chunks(q, d, cs):
        hist = row_histograms(ds, bits + 1)
        dd, ii = select_stable_topk(ds, hist, kk, max_candidates=max_cand)
        out_d[start:stop, :kk] = dd
        out_i[start:stop, :kk] = ii
    return out_d, out_i

"""Exact, stable Hamming top-k by multi-index hashing: sub-linear frame-level search at tens of millions of codes.

Brute force reads every gallery code for every query frame: 17.5 M frame codes x 25 query frames is
0.44 G distances, far too slow for an interactive frame-level query. Multi-index hashing (Norouzi, Punjani
and Fleet, "Fast exact search in Hamming space with multi-index hashing", TPAMI 2014) answers the same
question exactly while reading a small part of the gallery:

* a code of ``bits`` bits is cut into ``m = bits / 16`` substrings of 16 bits; table ``j`` holds the gallery
  sorted by substring ``j`` (a counting sort: 65,536 buckets), with the codes copied in that order so that a
  bucket is one contiguous run of memory;
* a code at distance ``d`` from the query has, by the pigeonhole principle, some substring at distance
  ``<= floor(d / m)``. Probing, for ``r = 0, 1, ...``, every bucket of every table whose key is at distance
  exactly ``r`` from the query's substring finds, after radius ``r``, **every** code at distance
  ``<= m (r + 1) - 1``;
* each code is counted once, at the radius and table where it is first found (its smallest substring
  distance, the first table attaining it), so no deduplication pass is needed;
* a query is done after radius ``r`` when at least ``k`` found codes lie within ``m (r + 1) - 1``: the
  ``k``-th smallest distance is then covered, so every code that ranks before it -- ties included -- was
  found, and ordering the found ones by ``(distance, index)`` gives exactly the stable ranking of
  :func:`vhindex.eval.topk.stable_topk_hamming`.

A query whose next radius would read more than ``brute_fraction`` of the gallery (heavily clustered codes,
a large ``k`` on a small gallery) is answered by brute force instead: never much slower than brute force.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

__all__ = ["MultiIndexHash"]

SUBSTRING_BITS = 16
_BUCKETS = 1 << SUBSTRING_BITS


def _flip_masks() -> list[np.ndarray]:
    """Per radius ``r``, every 16-bit mask with exactly ``r`` bits set."""
    out = []
    for r in range(SUBSTRING_BITS + 1):
        out.append(np.array([sum(1 << i for i in c) for c in itertools.combinations(range(SUBSTRING_BITS), r)],
                            dtype=np.int64))
    return out


_MASKS: list[np.ndarray] | None = None


def _masks() -> list[np.ndarray]:
    global _MASKS
    if _MASKS is None:
        _MASKS = _flip_masks()
    return _MASKS


class MultiIndexHash:
    """Multi-index hash tables over packed codes (module docs); built once, read-only.

    Args:
        codes: packed gallery codes ``uint8 (n, bits/8)``, ``bits`` a multiple of 16.
        brute_fraction: a query whose candidates would exceed this fraction of the gallery is answered by
            brute force.

    Memory: ``m`` copies of the codes plus an ``int32``/``int64`` position per code and table
    (``m = bits / 16``): at 32 bits, 16 bytes per code (280 MB at 17.5 M codes).
    """

    def __init__(self, codes: np.ndarray, *, brute_fraction: float = 0.125, backend: str = "auto",
                 num_threads: int | None = None) -> None:
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if codes.ndim != 2 or (codes.shape[1] * 8) % SUBSTRING_BITS:
            raise ValueError(f"multi-index hashing needs packed codes of a multiple of {SUBSTRING_BITS} bits, "
                             f"got shape {codes.shape}")
        self.n, self.bits = int(codes.shape[0]), int(codes.shape[1] * 8)
        self.m = self.bits // SUBSTRING_BITS
        self.brute_fraction = float(brute_fraction)
        if backend not in ("auto", "numba", "numpy"):
            raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
        self.num_threads = max(1, int(num_threads or os.cpu_count() or 1))
        self._codes = codes
        sub = self._substrings(codes)  # (n, m) int64 substring values (big-endian: msb0 like the codes)
        pos_dtype = np.int32 if self.n < 2**31 else np.int64
        self._order: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        # the codes of each table in table order, as one integer per code where one fits (one read and
        # one popcount per candidate), else as (n, m) uint16 substrings
        self._word = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(codes.shape[1])
        self._sorted: list[np.ndarray] = []
        words = self._as_words(codes) if self._word is not None else None
        # one (m, n) array per kind, the tables being its rows (what the compiled kernel takes)
        self._orders2d = np.empty((self.m, self.n), dtype=pos_dtype)
        self._starts2d = np.zeros((self.m, _BUCKETS + 1), dtype=np.int64)
        self._words2d = None if words is None else np.empty((self.m, self.n), dtype=self._word)
        for j in range(self.m):
            counts = np.bincount(sub[:, j], minlength=_BUCKETS)
            np.cumsum(counts, out=self._starts2d[j, 1:])
            # stable: index order inside a bucket
            self._orders2d[j] = np.argsort(sub[:, j], kind="stable")
            order = self._orders2d[j]
            self._order.append(order)
            self._starts.append(self._starts2d[j])
            if words is not None:
                np.take(words, order, out=self._words2d[j])
                self._sorted.append(self._words2d[j])
            else:
                self._sorted.append(np.ascontiguousarray(sub[order].astype(np.uint16)))
        del sub
        self._kernel = None
        if self._words2d is not None and backend != "numpy":
            try:
                from vhindex.index import _mih_numba

                self._kernel = _mih_numba
            except ImportError:
                if backend == "numba":
                    raise
        elif backend == "numba":
            raise ValueError(f"the compiled backend needs codes of 16, 32 or 64 bits, got {self.bits}")

    def _as_words(self, packed: np.ndarray) -> np.ndarray:
        """Each packed code as one big-endian unsigned integer (substring 0 in the high bits)."""
        return packed.view(np.dtype(self._word).newbyteorder(">")).reshape(-1).astype(self._word)

    @staticmethod
    def _substrings(packed: np.ndarray) -> np.ndarray:
        pairs = packed.reshape(packed.shape[0], -1, 2).astype(np.int64)
        return (pairs[:, :, 0] << 8) | pairs[:, :, 1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (not counting the codes themselves)."""
        return sum(a.nbytes for a in (*self._order, *self._starts, *self._sorted))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` per query in the stable ``(distance, index)`` order.

        Args:
            queries: packed codes ``uint8 (nq, bits/8)``.
            k: neighbours per query (``>= 1``).

        Returns:
            ``(distances int32 (nq, k), indices int64 (nq, k))`` -- equal to
            :func:`vhindex.eval.topk.stable_topk_hamming`, including its padding past ``n``.
        """
        from vhindex.eval.topk import stable_topk_hamming

        q = np.ascontiguousarray(queries, dtype=np.uint8)
        if q.ndim != 2 or q.shape[1] * 8 != self.bits:
            raise ValueError(f"queries must be packed {self.bits}-bit codes, got shape {q.shape}")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        nq = q.shape[0]
        out_d = np.full((nq, k), np.iinfo(np.int32).max, dtype=np.int32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        kk = min(k, self.n)
        if nq == 0 or kk == 0:
            return out_d, out_i
        qsub = self._substrings(q)
        brute: list[int] = []
        if self._kernel is not None:
            brute = self._search_compiled(q, qsub, kk, out_d, out_i)
        else:
            for row in range(nq):
                got = self._one(qsub[row], kk)
                if got is None:
                    brute.append(row)
                    continue
                out_d[row, :kk], out_i[row, :kk] = got
        if brute:
            d, i = stable_topk_hamming(q[brute], self._codes, kk)
            out_d[brute, :kk], out_i[brute, :kk] = d[:, :kk], i[:, :kk]
        return out_d, out_i

    def _search_compiled(self, q: np.ndarray, qsub: np.ndarray, k: int, out_d: np.ndarray,
                         out_i: np.ndarray) -> list[int]:
        """The compiled kernel over the query rows, split among ``num_threads`` threads; rows left to brute force."""
        import concurrent.futures

        masks = _masks()
        flat = np.concatenate(masks)
        offsets = np.concatenate(([0], np.cumsum([len(x) for x in masks]))).astype(np.int64)
        qwords = self._as_words(q).astype(np.uint64)
        nq = q.shape[0]
        dist = np.zeros((nq, k), dtype=np.int32)
        idx = np.zeros((nq, k), dtype=np.int64)
        brute = np.zeros(nq, dtype=np.int8)
        budget = int(self.brute_fraction * self.n)

        def run(lo: int, hi: int) -> None:
            self._kernel.search_rows(self._words2d, self._orders2d, self._starts2d, flat, offsets, qwords[lo:hi],
                                     qsub[lo:hi], self.m, self.bits, k, budget, dist[lo:hi], idx[lo:hi],
                                     brute[lo:hi])

        workers = min(self.num_threads, nq)
        bounds = np.linspace(0, nq, workers + 1).astype(int)
        if workers == 1:
            run(0, nq)
        else:
            with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda b: run(*b), zip(bounds[:-1], bounds[1:], strict=True)))
        ok = brute == 0
        out_d[ok, :k], out_i[ok, :k] = dist[ok], idx[ok]
        return np.flatnonzero(~ok).tolist()

    def warmup(self) -> None:
        """Compile the kernel now (a few seconds once per process) instead of in the first query."""
        if self._kernel is not None and self.n:
            self.search(np.zeros((1, self.bits // 8), dtype=np.uint8), 1)

    def _distances(self, cand: np.ndarray, qv: np.ndarray, j: int, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Candidates of table ``j`` at substring radius ``r``: which to count here (each code is counted once:
        at its smallest substring distance, which is ``r`` here, in the first table attaining it) and their
        full distances."""
        m = self.m
        if self._word is None:
            s = np.bitwise_count(cand ^ qv)  # (c, m) substring distances
            keep = np.ones(len(cand), dtype=bool)
            if j:
                keep &= (s[:, :j] > r).all(axis=1)
            if j + 1 < m:
                keep &= (s[:, j + 1:] >= r).all(axis=1)
            return keep, s.sum(axis=1, dtype=np.int32)[keep]
        x = cand ^ qv
        d = np.bitwise_count(x).astype(np.int32)
        if m == 1:
            return np.ones(len(d), dtype=bool), d
        if m == 2:  # the other substring's distance is d - r: table 0 keeps d - r >= r, table 1 keeps d - r > r
            keep = d >= 2 * r if j == 0 else d > 2 * r
            return keep, d[keep]
        keep = np.ones(len(d), dtype=bool)
        mask = np.array(_BUCKETS - 1, dtype=self._word)
        for jj in range(m):
            if jj == j:
                continue
            sj = np.bitwise_count((x >> np.array(SUBSTRING_BITS * (m - 1 - jj), dtype=self._word)) & mask)
            keep &= sj > r if jj < j else sj >= r
        return keep, d[keep]

    def _one(self, qsub: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """One query: ``(distances, indices)`` of its top ``k``, or None when brute force is cheaper."""
        masks, m = _masks(), self.m
        budget = self.brute_fraction * self.n
        found_d: list[np.ndarray] = []
        found_i: list[np.ndarray] = []
        read = 0
        hist = np.zeros(self.bits + 1, dtype=np.int64)  # found codes per distance
        if self._word is not None:
            qv = np.zeros((), dtype=self._word)
            for j in range(m):
                qv = qv | (np.array(int(qsub[j]), dtype=self._word) << np.array(SUBSTRING_BITS * (m - 1 - j),
                                                                                  dtype=self._word))
        else:
            qv = qsub.astype(np.uint16)
        for r in range(SUBSTRING_BITS + 1):
            spans = []
            for j in range(m):
                keys = int(qsub[j]) ^ masks[r]
                lo, hi = self._starts[j][keys], self._starts[j][keys + 1]
                spans.append((lo, hi))
                read += int((hi - lo).sum())
            if read > budget:
                return None
            guarantee = m * (r + 1) - 1
            for j, (lo, hi) in enumerate(spans):
                lens = hi - lo
                total = int(lens.sum())
                if total == 0:
                    continue
                # the positions of every selected bucket, concatenated (buckets are contiguous runs)
                pos = np.repeat(lo - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(total)
                keep, d = self._distances(self._sorted[j][pos], qv, j, r)
                found_d.append(d)
                found_i.append(self._order[j][pos[keep]])
                hist += np.bincount(d, minlength=self.bits + 1)
            if int(hist[: guarantee + 1].sum()) >= k:
                d = np.concatenate(found_d)
                i = np.concatenate(found_i).astype(np.int64)
                sel = d <= guarantee
                d, i = d[sel], i[sel]
                order = np.lexsort((i, d))[:k]
                return d[order], i[order]
            # the found codes beyond the guarantee stay: a later radius may cover them
        raise AssertionError("radius 16 covers every code")  # pragma: no cover

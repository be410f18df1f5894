"""Compiled (numba) query loop of :class:`vhindex.index.mih.MultiIndexHash` for codes of one machine word.

Imported lazily by :mod:`vhindex.index.mih` only (numba is the optional extra ``fast``); importing this
module raises ``ImportError`` without numba. The kernel does what the numpy path does -- probe the buckets
of radius ``r = 0, 1, ...`` of every table, count each code once (at its smallest substring distance, in
the first table attaining it), stop when ``k`` found codes lie within ``m (r + 1) - 1`` -- but in one pass
per bucket with no temporaries, and selects the answer with a distance histogram: the codes closer than
the ``k``-th distance, then the smallest indices at that distance, sorted by ``(distance, index)``.

Compiled with ``cache=False`` and ``nogil=True`` like :mod:`vhindex.graph._pairs_numba`: no on-disk cache
(a read-only install must work), query rows run on several threads. The compile takes a few seconds once
per process (:meth:`vhindex.index.mih.MultiIndexHash.warmup`).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=False, nogil=True)


@_jit
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@_jit
def search_rows(words, orders, starts, masks, mask_offsets, qwords, qsubs, m, bits, k, budget, out_d, out_i, brute):
    """Top-``k`` of query rows ``qwords`` (uint64) into ``out_d`` / ``out_i``; ``brute[row] = 1`` where the
    candidates would exceed ``budget`` (the caller answers those rows by brute force).

    ``words (m, n) uint64``: each table's codes in table order; ``orders (m, n)``: their gallery indices;
    ``starts (m, 65537)``: bucket bounds; ``masks`` / ``mask_offsets``: the 16-bit flip masks by radius.
    """
    sub_bits = 16
    for row in range(qwords.shape[0]):
        q = qwords[row]
        hist = np.zeros(bits + 1, np.int64)
        cap = 4 * k + 1024
        found_d = np.empty(cap, np.int32)
        found_i = np.empty(cap, np.int64)
        nfound = 0
        # the k-th smallest distance found so far: a code farther than it can never make the top k (k codes
        # are already at most that far), so it is not stored -- most candidates of the last radius are not
        cut = bits
        read = 0
        done = False
        for r in range(sub_bits + 1):
            for j in range(m):
                for t in range(mask_offsets[r], mask_offsets[r + 1]):
                    key = qsubs[row, j] ^ masks[t]
                    read += starts[j, key + 1] - starts[j, key]
            if read > budget:
                brute[row] = 1
                break
            guarantee = m * (r + 1) - 1
            for j in range(m):
                for t in range(mask_offsets[r], mask_offsets[r + 1]):
                    key = qsubs[row, j] ^ masks[t]
                    for p in range(starts[j, key], starts[j, key + 1]):
                        x = words[j, p] ^ q
                        d = _popcount(x)
                        if d > cut:
                            continue
                        keep = True
                        if m == 2:
                            keep = d >= 2 * r if j == 0 else d > 2 * r
                        elif m > 2:
                            for jj in range(m):
                                if jj == j:
                                    continue
                                sj = _popcount((x >> np.uint64(sub_bits * (m - 1 - jj))) & np.uint64(0xFFFF))
                                if (jj < j and sj <= r) or (jj > j and sj < r):
                                    keep = False
                                    break
                        if not keep:
                            continue
                        if nfound == cap:
                            cap *= 2
                            grown_d = np.empty(cap, np.int32)
                            grown_i = np.empty(cap, np.int64)
                            grown_d[:nfound] = found_d[:nfound]
                            grown_i[:nfound] = found_i[:nfound]
                            found_d, found_i = grown_d, grown_i
                        found_d[nfound] = d
                        found_i[nfound] = orders[j, p]
                        nfound += 1
                        hist[d] += 1
                    acc = 0
                    for dd in range(cut + 1):
                        acc += hist[dd]
                        if acc >= k:
                            cut = dd
                            break
            covered = 0
            for dd in range(min(guarantee, bits) + 1):
                covered += hist[dd]
            if covered >= k:
                # the k-th distance and how many come before it
                acc = 0
                kth = 0
                for dd in range(bits + 1):
                    if acc + hist[dd] >= k:
                        kth = dd
                        break
                    acc += hist[dd]
                keys = np.empty(acc, np.int64)
                ties = np.empty(hist[kth], np.int64)
                a = 0
                b = 0
                for e in range(nfound):
                    if found_d[e] < kth:
                        keys[a] = (np.int64(found_d[e]) << np.int64(40)) | found_i[e]
                        a += 1
                    elif found_d[e] == kth:
                        ties[b] = found_i[e]
                        b += 1
                keys.sort()
                ties.sort()
                for e in range(acc):
                    out_d[row, e] = keys[e] >> np.int64(40)
                    out_i[row, e] = keys[e] & np.int64((1 << 40) - 1)
                for e in range(k - acc):
                    out_d[row, acc + e] = kth
                    out_i[row, acc + e] = ties[e]
                done = True
                break
        if not done and brute[row] == 0:
            brute[row] = 1  # cannot happen (radius 16 covers everything); the caller's brute force answers

"""Compiled (numba) attempt loop and exact scan of :class:`vhindex.graph.pairs.PairSampler`.

Imported lazily by :mod:`vhindex.graph.pairs` only (numba is the optional extra ``fast``); importing
this module raises ``ImportError`` without numba.

The kernels draw from exactly the distribution of the numpy path (same proposals: an anchor of
the item chosen with probability proportional to its list length, a uniform member of that list,
acceptance with probability ``1 / multiplicity`` and only for the wanted class; the same narrower
"middle distance" proposal; uniform over all videos for the fallback class) and decide every
class exactly as :class:`~vhindex.graph.anchor_graph.AnchorGraph` does, bit for bit:

* ``"bth"``: ``SS_s = fl32 chain > float32(1e-5)`` with the chain replayed as the released float32
  GEMM rounds it -- terms in ascending anchor id, ``acc = fl32(acc + w_ik z_jk)`` with the
  product exact in float64 (:meth:`AnchorLevel.affinity` with ``emulate_float32=True``). Only
  shared anchors contribute (``fl32(acc + 0) == acc``). The numpy path's shortcuts (no shared
  anchor, "exact" rows, a plain float32 sum away from the threshold) are all equivalent to
  this chain; the kernel evaluates the chain itself, which is cheap compiled.
* ``"nph"`` / ``"gaussian"``: ``A`` summed in float64 left to right over the item's anchors (what
  numpy's ``sum(axis=1)`` does for fewer than 8 terms), then the rule's comparisons.

Randomness: numba's own per-thread Mersenne Twister, reseeded at the start of every kernel call
from the sampler's ``numpy.random.Generator``, so a sampler's draws are a deterministic function
of its seed and the sequence of ``sample`` calls (they differ from the numpy path's draws).

Compiled with ``cache=False`` (no on-disk cache: a read-only install or a shared ``__pycache__``
must not break sampling); the one-off compile takes a few seconds per process, see
:meth:`NumbaPairKernels.warmup`.
"""

from __future__ import annotations

import numba
import numpy as np

from vhindex.graph.anchor_graph import (
    BTH_THRESHOLD,
    CLASS_FALLBACK,
    CLASS_NEGATIVE,
    CLASS_NONE,
    CLASS_POSITIVE,
    AnchorGraph,
)

__all__ = ["NumbaPairKernels", "PROP_ALL", "PROP_LEVEL", "PROP_MID", "STATE_GAVE_UP"]

RULE_BTH, RULE_NPH, RULE_GAUSSIAN = 0, 1, 2
#: proposals: uniform over all videos / uniform over the union of the item's lists / middle distance
PROP_ALL, PROP_LEVEL, PROP_MID = 0, 1, 2
#: transient per-class state: the item failed ``max_rounds`` attempts in this call (needs a scan)
STATE_GAVE_UP = 3

_jit = numba.njit(cache=False, nogil=True)
# helpers are inlined into the kernels: a compiled call passing ~15 arrays costs ~100 ns (every
# array argument is reference-counted), several times the work of a class check
_inline = numba.njit(cache=False, nogil=True, inline="always")


@_inline
def _chain_f32(i, j, ids, z, w):
    """Released float32 ``A_s(i, j)``: FMA chain over i's anchors in ascending anchor id."""
    s = ids.shape[1]
    acc = np.float32(0.0)
    for a in range(s):
        ka = ids[i, a]
        for b in range(s):
            if ids[j, b] == ka:
                acc = np.float32(np.float64(acc) + np.float64(w[i, a]) * np.float64(z[j, b]))
                break
    return acc


@_inline
def _sum_f64(i, j, ids, z, w):
    """Float64 ``A(i, j) = sum_k w_ik z_jk``, left to right over i's anchors (numpy's order)."""
    s = ids.shape[1]
    acc = 0.0
    for a in range(s):
        ka = ids[i, a]
        zm = 0.0
        for b in range(s):
            if ids[j, b] == ka:
                zm = np.float64(z[j, b])
                break
        acc += np.float64(w[i, a]) * zm
    return acc


@_inline
def _share(i, j, rank, s):
    """Whether the first ``s`` ranked anchors of i and j intersect."""
    for a in range(s):
        ka = rank[i, a]
        for b in range(s):
            if rank[j, b] == ka:
                return True
    return False


@_inline
def _pair_class(i, j, rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
    """The sampler class (``CLASS_*``) of pair (i, j), as ``AnchorGraph.pair_classes``."""
    if rule == RULE_BTH:
        if not _share(i, j, rank, 5):
            return CLASS_FALLBACK  # adj = 0
        ss3 = 1 if _chain_f32(i, j, ids3, z3, w3) > thr else 0
        ss4 = 1 if _chain_f32(i, j, ids4, z4, w4) > thr else 0
        ss5 = 1 if _chain_f32(i, j, ids5, z5, w5) > thr else 0
        adj = 2 * (ss5 - ss4) + ss3
        if adj == 1:
            return CLASS_POSITIVE
        if adj == 2:
            return CLASS_NEGATIVE
        if adj == 0:
            return CLASS_FALLBACK
        return CLASS_NONE
    a = _sum_f64(i, j, ids3, z3, w3)
    if rule == RULE_NPH:
        return CLASS_POSITIVE if a > 0 else CLASS_NEGATIVE
    # gaussian: numpy assigns +1 first and -1 second, so -1 wins where both hold
    if a > 0 and a <= mu[i] - lam * sd[i]:
        return CLASS_NEGATIVE
    if a > 0 and a >= mu[i] + lam * sd[i]:
        return CLASS_POSITIVE
    return CLASS_FALLBACK


@_inline
def _is_class(i, j, cls, rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
    """``_pair_class(i, j) == cls``, evaluating as few BTH levels as possible."""
    if rule == RULE_BTH:
        if cls == CLASS_POSITIVE:  # SS3 and SS4 == SS5
            if not _share(i, j, rank, 3) or not _chain_f32(i, j, ids3, z3, w3) > thr:
                return False
            return (_chain_f32(i, j, ids4, z4, w4) > thr) == (_chain_f32(i, j, ids5, z5, w5) > thr)
        if cls == CLASS_NEGATIVE:  # SS5 and not SS4 and not SS3
            if not _share(i, j, rank, 5) or not _chain_f32(i, j, ids5, z5, w5) > thr:
                return False
            return not _chain_f32(i, j, ids4, z4, w4) > thr and not _chain_f32(i, j, ids3, z3, w3) > thr
    return _pair_class(i, j, rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam) == cls


@_jit
def _classes(ii, jj, rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
    out = np.empty(ii.size, np.int8)
    for p in range(ii.size):
        out[p] = _pair_class(ii[p], jj[p], rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam)
    return out


@_jit
def _chains(ii, jj, ids, z, w):
    """``_chain_f32`` for arrays of pairs (tests compare it with ``AnchorLevel.affinity``)."""
    out = np.empty(ii.size, np.float32)
    for p in range(ii.size):
        out[p] = _chain_f32(ii[p], jj[p], ids, z, w)
    return out


@_jit
def _draw(items, cls, seed, max_rounds, exclude_self, state, out, flag, n, prop,
          lv_ids, lv_indptr, lv_members, narrow, l_indptr, l_members, r_indptr, r_members,
          rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
    """Rejection sampling, one item after the other; returns the number of attempts.

    ``out[p]`` gets the partner of ``items[p]``; ``flag[p] = 1`` where the caller must use the
    exact set instead (state 1: cached; the item gave up after ``max_rounds`` failures now or
    earlier in this call, marked ``STATE_GAVE_UP`` in ``state``); state 2 (known empty) leaves
    ``out[p] = -1``, ``flag[p] = 0``.
    """
    np.random.seed(seed)
    s = lv_ids.shape[1]
    starts = np.zeros(8, np.int64)
    cum = np.zeros(8, np.int64)
    attempts = 0
    for p in range(items.size):
        i = items[p]
        st = state[i]
        if st == 2:
            continue
        if st != 0:
            flag[p] = 1
            continue
        kind = prop
        if kind == PROP_MID and not narrow[i]:
            kind = PROP_LEVEL
        a5 = rank[i, 4] if kind == PROP_MID else 0
        if kind == PROP_LEVEL:
            t = 0
            for c in range(s):
                k = lv_ids[i, c]
                starts[c] = lv_indptr[k]
                t += lv_indptr[k + 1] - lv_indptr[k]
                cum[c] = t
        elif kind == PROP_MID:  # L5(5th anchor of i) | R5(k) for k in top-4(i)
            starts[0] = l_indptr[a5]
            t = l_indptr[a5 + 1] - l_indptr[a5]
            cum[0] = t
            for c in range(4):
                k = rank[i, c]
                starts[c + 1] = r_indptr[k]
                t += r_indptr[k + 1] - r_indptr[k]
                cum[c + 1] = t
        else:
            t = n
        found = False
        tries = 0
        while tries < max_rounds:
            tries += 1
            r = np.random.randint(0, t)
            if kind == PROP_ALL:
                j = r
            else:
                c = 0
                while r >= cum[c]:
                    c += 1
                pos = starts[c] + r - (cum[c - 1] if c > 0 else 0)
                if kind == PROP_LEVEL:
                    j = np.int64(lv_members[pos])
                    mult = 0
                    for a in range(s):
                        ka = lv_ids[i, a]
                        for b in range(s):
                            if lv_ids[j, b] == ka:
                                mult += 1
                else:
                    j = np.int64(l_members[pos]) if c == 0 else np.int64(r_members[pos])
                    mult = 0
                    for b in range(5):
                        if rank[j, b] == a5:
                            mult = 1
                            break
                    for a in range(4):
                        if rank[j, 4] == rank[i, a]:
                            mult += 1
                            break
                if mult > 1 and np.random.random() * mult >= 1.0:
                    continue
            if exclude_self and j == i:
                continue
            if _is_class(i, j, cls, rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
                out[p] = j
                found = True
                break
        attempts += tries
        if not found:
            state[i] = STATE_GAVE_UP
            flag[p] = 1
    return attempts


@_jit
def _scan(i, cls, exclude_self, n, prop, lv_ids, lv_indptr, lv_members,
          rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
    """All partners of class ``cls`` of item ``i`` (ascending): over all videos or the union of i's lists."""
    if prop == PROP_ALL:
        buf = np.empty(n, np.int64)
        m = 0
        for j in range(n):
            if exclude_self and j == i:
                continue
            if _is_class(i, j, cls, rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
                buf[m] = j
                m += 1
        return buf[:m].copy()
    s = lv_ids.shape[1]
    total = 0
    for c in range(s):
        total += lv_indptr[lv_ids[i, c] + 1] - lv_indptr[lv_ids[i, c]]
    buf = np.empty(total, np.int64)
    m = 0
    for c in range(s):
        k = lv_ids[i, c]
        for pos in range(lv_indptr[k], lv_indptr[k + 1]):
            j = np.int64(lv_members[pos])
            dup = False  # counted once: in the list of its first shared anchor among i's
            for a in range(c):
                ka = lv_ids[i, a]
                for b in range(s):
                    if lv_ids[j, b] == ka:
                        dup = True
                if dup:
                    break
            if dup or (exclude_self and j == i):
                continue
            if _is_class(i, j, cls, rule, rank, ids3, z3, w3, ids4, z4, w4, ids5, z5, w5, thr, mu, sd, lam):
                buf[m] = j
                m += 1
    return np.sort(buf[:m])


def _c(a: np.ndarray, dtype=None) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


class NumbaPairKernels:
    """The graph's arrays laid out for the kernels, and thin wrappers around them.

    Args:
        graph: the anchor graph.
        mid: the sampler's ``_MiddleDistance`` helper (``"bth"``), or None.
    """

    def __init__(self, graph: AnchorGraph, mid) -> None:
        self.graph = graph
        self.n = graph.num_videos
        empty_f = np.zeros(1, np.float64)
        if graph.rule == "bth":
            lv = [graph.levels[s] for s in (3, 4, 5)]
            rule = RULE_BTH
            mu = sd = empty_f
            lam = 0.0
        else:
            a = int(graph.params["a"])
            lv = [graph.levels[a]] * 3
            rule = RULE_NPH if graph.rule == "nph" else RULE_GAUSSIAN
            if graph.rule == "gaussian":
                mu, sd = (_c(v, np.float64) for v in graph.row_stats())
                lam = float(graph.params["lam"])
            else:
                mu = sd = empty_f
                lam = 0.0
        fdt = np.float32 if rule == RULE_BTH else np.float64
        rank = _c(graph.anchor_ids, np.int32)
        self._cls_args = (rule, rank)
        for level in lv:
            self._cls_args += (_c(level.ids, np.int32), _c(level.z, fdt), _c(level.w, fdt))
        self._cls_args += (np.float32(BTH_THRESHOLD), mu, sd, np.float64(lam))
        # candidate levels per class (as AnchorGraph.candidate_level) and the middle-distance lists
        self._levels = {}
        for cls in (CLASS_POSITIVE, CLASS_NEGATIVE, CLASS_FALLBACK):
            level = graph.candidate_level(cls)
            if level is None:
                self._levels[cls] = (PROP_ALL, None)
            else:
                self._levels[cls] = (PROP_LEVEL, (_c(level.ids, np.int32), _c(level.indptr, np.int64),
                                                  _c(level.members, np.int32)))
        some = next((v[1] for v in self._levels.values() if v[1] is not None), None)
        if some is None:  # cannot happen for the rules we have (positives always come from lists)
            raise ValueError("no level with inverted lists")
        self._dummy_level = some
        if mid is not None:
            self._mid = (_c(mid.narrow, np.bool_), _c(mid.l_indptr, np.int64), _c(mid.l_members, np.int32),
                         _c(mid.r_indptr, np.int64), _c(mid.r_members, np.int32))
        else:
            z64 = np.zeros(1, np.int64)
            z32 = np.zeros(1, np.int32)
            self._mid = (np.zeros(self.n, np.bool_), z64, z32, z64, z32)

    def _prop(self, cls: int, *, scan: bool) -> tuple[int, tuple[np.ndarray, ...]]:
        kind, arrays = self._levels[cls]
        if kind == PROP_LEVEL and cls == CLASS_NEGATIVE and self.graph.rule == "bth" and not scan:
            kind = PROP_MID
        return kind, (arrays if arrays is not None else self._dummy_level)

    def draw(self, items: np.ndarray, cls: int, seed: int, max_rounds: int, exclude_self: bool,
             state: np.ndarray, out: np.ndarray, flag: np.ndarray) -> int:
        """Run the attempt loop over ``items`` (see ``_draw``); returns the number of attempts."""
        kind, (lv_ids, lv_indptr, lv_members) = self._prop(cls, scan=False)
        return int(_draw(items, cls, np.uint32(seed), max_rounds, exclude_self, state, out, flag, self.n, kind,
                         lv_ids, lv_indptr, lv_members, *self._mid, *self._cls_args))

    def scan(self, item: int, cls: int, exclude_self: bool) -> np.ndarray:
        """Every partner of class ``cls`` of ``item``, ascending (int64)."""
        kind, (lv_ids, lv_indptr, lv_members) = self._prop(cls, scan=True)
        return _scan(np.int64(item), cls, exclude_self, self.n, kind, lv_ids, lv_indptr, lv_members,
                     *self._cls_args)

    def pair_classes(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``AnchorGraph.pair_classes`` for 1-D int64 arrays (no checks), compiled."""
        return _classes(_c(i, np.int64), _c(j, np.int64), *self._cls_args)

    def warmup(self) -> None:
        """Compile every kernel for this graph's array types (a few seconds, once per process)."""
        items = np.zeros(0, np.int64)
        dummy = np.zeros(self.n, np.int8)
        self.draw(items, CLASS_POSITIVE, 0, 1, False, dummy, np.zeros(0, np.int64), np.zeros(0, np.int8))
        _scan(np.int64(0), CLASS_FALLBACK, False, 0, PROP_ALL, *self._dummy_level, *self._cls_args)
        self.pair_classes(np.zeros(1, np.int64), np.zeros(1, np.int64))

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

Speed: an attempt is two dependent random memory reads (an inverted-list entry, then the
candidate's packed record), so ``_draw`` works on ``LANES`` items side by side and their reads
overlap; items are cut into ``CHUNK``-sized kernel calls that may run on several threads (the
kernels release the GIL), with results independent of the thread count.

Randomness: numba's own per-thread Mersenne Twister, reseeded at the start of every kernel call
(chunk) with a seed derived from the sampler's ``numpy.random.Generator``, so a sampler's draws
are a deterministic function of its seed and the sequence of ``sample`` calls (they differ from
the numpy path's draws).

Compiled with ``cache=False`` (no on-disk cache: a read-only install or a shared ``__pycache__``
must not break sampling); the one-off compile takes a few seconds per process, see
:meth:`NumbaPairKernels.warmup`.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numba
import numpy as np

from vhindex.graph.anchor_graph import (
    BTH_LEVELS,
    BTH_THRESHOLD,
    CLASS_FALLBACK,
    CLASS_NEGATIVE,
    CLASS_NONE,
    CLASS_POSITIVE,
    AnchorGraph,
)

__all__ = ["NumbaPairKernels", "PROP_ALL", "PROP_LEVEL", "PROP_MID"]

RULE_BTH, RULE_NPH, RULE_GAUSSIAN = 0, 1, 2
#: proposals: uniform over all videos / uniform over the union of the item's lists / middle distance
PROP_ALL, PROP_LEVEL, PROP_MID = 0, 1, 2

_jit = numba.njit(cache=False, nogil=True)
# Helpers take few arrays (the packed layout below): every array argument of a compiled call is
# reference-counted, which cost more than the class check itself with 15 per-level arrays.
# (inline="always" on every helper avoids that too but triples the compile time; only the hot
# two-array body _bth_adj is inlined.)
_inline = numba.njit(cache=False, nogil=True)
_force_inline = numba.njit(cache=False, nogil=True, inline="always")

# Packed per-video layout. ``cids`` int32: bth ``[ids3 | ids4 | ids5]`` (12 columns, each level's
# anchors ascending), nph/gaussian ``ids_a``. ``czw`` bth float32 ``[z3 | z4 | z5 | w3 | w4 | w5]``
# (24 columns, aligned with ``cids``), nph/gaussian float64 ``[z_a | w_a | mu | sd]``.
_OFF3, _OFF4, _OFF5, _WOFF = 0, 3, 7, 12


@_inline
def _chain_f32(i, j, cids, czw, off, s):
    """Released float32 ``A_s(i, j)``: FMA chain over i's anchors in ascending anchor id.

    Written without data-dependent branches (they mispredict): an anchor j lacks adds
    ``w * 0.0``, and ``fl32(acc + 0.0) == acc`` exactly (``acc`` is never -0).
    """
    acc = np.float32(0.0)
    for a in range(s):
        ka = cids[i, off + a]
        zm = 0.0
        for b in range(s):
            zm = np.float64(czw[j, off + b]) if cids[j, off + b] == ka else zm
        acc = np.float32(np.float64(acc) + np.float64(czw[i, _WOFF + off + a]) * zm)
    return acc


@_inline
def _sum_f64(i, j, cids, czw, s):
    """Float64 ``A(i, j) = sum_k w_ik z_jk``, left to right over i's anchors (numpy's order)."""
    acc = 0.0
    for a in range(s):
        ka = cids[i, a]
        zm = 0.0
        for b in range(s):
            zm = np.float64(czw[j, b]) if cids[j, b] == ka else zm
        acc += np.float64(czw[i, s + a]) * zm
    return acc


@_inline
def _share(i, j, cids, off, s):
    """Whether i's and j's anchor sets ``cids[:, off:off + s]`` intersect."""
    hit = False
    for a in range(s):
        ka = cids[i, off + a]
        for b in range(s):
            hit |= cids[j, off + b] == ka
    return hit


@_force_inline
def _bth_adj(i, j, cids, czw, thr):
    """Released ``adj = 2 (SS5 - SS4) + SS3`` of pair (i, j) in one call, no nested calls (a compiled
    call costs more than this work). ``SS_s = chain_s > thr`` with the chain of ``_chain_f32``;
    a pair without a shared level-5 anchor is 0 at once."""
    hit = False
    for a in range(5):
        ka = cids[i, _OFF5 + a]
        for b in range(5):
            hit |= cids[j, _OFF5 + b] == ka
    if not hit:
        return 0
    adj = 0
    for lev in range(3):  # levels 3, 4, 5 at offsets 0, 3, 7 (weights 1, -2, 2)
        s = lev + 3
        off = 0 if lev == 0 else (_OFF4 if lev == 1 else _OFF5)
        acc = np.float32(0.0)
        for a in range(s):
            ka = cids[i, off + a]
            zm = 0.0
            for b in range(s):
                zm = np.float64(czw[j, off + b]) if cids[j, off + b] == ka else zm
            acc = np.float32(np.float64(acc) + np.float64(czw[i, _WOFF + off + a]) * zm)
        if acc > thr:
            adj += 1 if lev == 0 else (-2 if lev == 1 else 2)
    return adj


@_inline
def _pair_class(i, j, rule, cids, czw, thr, lam):
    """The sampler class (``CLASS_*``) of pair (i, j), as ``AnchorGraph.pair_classes``."""
    if rule == RULE_BTH:
        adj = _bth_adj(i, j, cids, czw, thr)
        if adj == 1:
            return CLASS_POSITIVE
        if adj == 2:
            return CLASS_NEGATIVE
        if adj == 0:
            return CLASS_FALLBACK
        return CLASS_NONE
    s = cids.shape[1]
    a = _sum_f64(i, j, cids, czw, s)
    if rule == RULE_NPH:
        return CLASS_POSITIVE if a > 0 else CLASS_NEGATIVE
    # gaussian: numpy assigns +1 first and -1 second, so -1 wins where both hold
    mu = czw[i, 2 * s]
    sd = czw[i, 2 * s + 1]
    if a > 0 and a <= mu - lam * sd:
        return CLASS_NEGATIVE
    if a > 0 and a >= mu + lam * sd:
        return CLASS_POSITIVE
    return CLASS_FALLBACK


@_inline
def _is_class(i, j, cls, rule, cids, czw, thr, lam):
    """``_pair_class(i, j) == cls``."""
    if rule == RULE_BTH:
        adj = _bth_adj(i, j, cids, czw, thr)
        if cls == CLASS_POSITIVE:
            return adj == 1
        if cls == CLASS_NEGATIVE:
            return adj == 2
        return adj == 0
    return _pair_class(i, j, rule, cids, czw, thr, lam) == cls


@_jit
def _classes(ii, jj, rule, cids, czw, thr, lam):
    out = np.empty(ii.size, np.int8)
    for p in range(ii.size):
        out[p] = _pair_class(ii[p], jj[p], rule, cids, czw, thr, lam)
    return out


@_jit
def _chains(ii, jj, cids, czw, s):
    """``_chain_f32`` of bth level ``s`` for arrays of pairs (tests compare it with ``AnchorLevel.affinity``)."""
    off = _OFF3 if s == 3 else (_OFF4 if s == 4 else _OFF5)
    out = np.empty(ii.size, np.float32)
    for p in range(ii.size):
        out[p] = _chain_f32(ii[p], jj[p], cids, czw, off, s)
    return out


#: items processed side by side by ``_draw`` (their memory loads overlap; see there)
LANES = 64


@_jit
def _draw(items, cls, seed, max_rounds, exclude_self, state, out, flag, n, prop, lv_off, lv_s,
          lv_indptr, lv_members, narrow, fifth, l_indptr, l_members, r_indptr, r_members,
          rule, cids, czw, thr, lam):
    """Rejection sampling for ``items``; returns ``(attempts, sink, fsink)`` (the sinks are unused).

    ``out[p]`` gets the partner of ``items[p]``; ``flag[p] = 1`` where the caller must use the
    exact set instead (state 1: cached; or the item failed ``max_rounds`` attempts, now or at an
    earlier copy in this call); state 2 (known empty) leaves ``out[p] = -1``, ``flag[p] = 0``.
    ``state`` is only read, so calls on disjoint slices may run concurrently. The candidate level's anchor sets are
    ``cids[:, lv_off:lv_off + lv_s]``; the middle-distance proposal needs bth (``cids`` level 5).

    An attempt is two dependent random memory reads (a list entry, then the candidate's record),
    so ``LANES`` items are worked on side by side in three phases per round -- draw every lane's
    proposal, touch every candidate's record, then decide -- and the reads of different lanes
    overlap. Each item still sees its own i.i.d. attempt sequence and keeps the first success;
    the order of random draws is fixed, so the result is a deterministic function of ``seed``.
    """
    np.random.seed(seed)
    nl = LANES
    lp = np.full(nl, -1, np.int64)  # position in items of each lane's item, -1 = idle
    li = np.zeros(nl, np.int64)
    lkind = np.zeros(nl, np.int64)
    la5 = np.zeros(nl, np.int64)
    lt = np.zeros(nl, np.int64)
    ltries = np.zeros(nl, np.int64)
    lj = np.zeros(nl, np.int64)
    lc = np.zeros(nl, np.int64)
    starts = np.zeros((nl, 8), np.int64)
    cum = np.zeros((nl, 8), np.int64)
    size = items.size
    last_col = cids.shape[1] - 1
    last_z = 11 if rule == RULE_BTH else cids.shape[1] - 1
    gave = np.empty(16, np.int64)  # items that failed max_rounds attempts in this call
    ngave = 0
    sink = 0
    fsink = 0.0
    attempts = 0
    nxt = 0
    while True:
        # refill idle lanes with the next items (skipping known-empty and flagged ones)
        active = 0
        for lane in range(nl):
            if lp[lane] < 0:
                while nxt < size:
                    p = nxt
                    nxt += 1
                    ahead = items[min(nxt + 2 * nl, size - 1)]  # touch a later item's record
                    sink += cids[ahead, 0] + cids[ahead, last_col]
                    i = items[p]
                    st = state[i]
                    if st == 2:
                        continue
                    if st != 0:
                        flag[p] = 1
                        continue
                    if ngave:
                        known = False
                        for q in range(ngave):
                            known |= gave[q] == i
                        if known:
                            flag[p] = 1
                            continue
                    kind = prop
                    if kind == PROP_MID and not narrow[i]:
                        kind = PROP_LEVEL
                    t = 0
                    if kind == PROP_LEVEL:
                        for c in range(lv_s):
                            k = cids[i, lv_off + c]
                            starts[lane, c] = lv_indptr[k]
                            t += lv_indptr[k + 1] - lv_indptr[k]
                            cum[lane, c] = t
                    elif kind == PROP_MID:  # L5(5th anchor of i) | R5(k) for k in top-4(i)
                        a5 = fifth[i]
                        la5[lane] = a5
                        starts[lane, 0] = l_indptr[a5]
                        t = l_indptr[a5 + 1] - l_indptr[a5]
                        cum[lane, 0] = t
                        c = 1
                        for b in range(5):
                            k = cids[i, _OFF5 + b]
                            if k != a5:
                                starts[lane, c] = r_indptr[k]
                                t += r_indptr[k + 1] - r_indptr[k]
                                cum[lane, c] = t
                                c += 1
                    else:
                        t = n
                    fsink += czw[i, czw.shape[1] - 1]
                    lp[lane] = p
                    li[lane] = i
                    lkind[lane] = kind
                    lt[lane] = t
                    ltries[lane] = 0
                    break
            if lp[lane] >= 0:
                active += 1
        if active == 0:
            break
        # phase 1: every lane's proposal (the list reads of all lanes are independent)
        for lane in range(nl):
            if lp[lane] < 0:
                continue
            r = np.random.randint(0, lt[lane])
            kind = lkind[lane]
            if kind == PROP_ALL:
                lj[lane] = r
                continue
            c = 0
            while r >= cum[lane, c]:
                c += 1
            pos = starts[lane, c] + r - (cum[lane, c - 1] if c > 0 else 0)
            lc[lane] = c
            if kind == PROP_LEVEL:
                lj[lane] = lv_members[pos]
            elif c == 0:
                lj[lane] = l_members[pos]
            else:
                lj[lane] = r_members[pos]
        # phase 2: touch the candidates' records so that their cache misses overlap
        for lane in range(nl):
            if lp[lane] >= 0:
                j = lj[lane]
                sink += cids[j, 0] + cids[j, last_col]
                fsink += czw[j, 0] + czw[j, last_z]
                if lkind[lane] == PROP_MID:
                    sink += fifth[j]
        # phase 3: accept (1 / multiplicity, not self, wanted class) or try again
        for lane in range(nl):
            p = lp[lane]
            if p < 0:
                continue
            i = li[lane]
            j = lj[lane]
            kind = lkind[lane]
            ltries[lane] += 1
            ok = True
            if kind != PROP_ALL:
                mult = 0
                if kind == PROP_LEVEL:
                    for a in range(lv_s):
                        ka = cids[i, lv_off + a]
                        for b in range(lv_s):
                            if cids[j, lv_off + b] == ka:
                                mult += 1
                else:
                    a5 = la5[lane]
                    f = fifth[j]
                    in5 = False  # a5(i) among j's 5 anchors
                    top4 = False  # j's 5th anchor among i's top 4 (i's 5 minus a5)
                    for b in range(5):
                        in5 |= cids[j, _OFF5 + b] == a5
                        top4 |= cids[i, _OFF5 + b] == f
                    mult = np.int64(in5) + np.int64(top4 and f != a5)
                if mult > 1 and np.random.random() * mult >= 1.0:
                    ok = False
            if ok and exclude_self and j == i:
                ok = False
            done = False
            if ok and _is_class(i, j, cls, rule, cids, czw, thr, lam):
                out[p] = j
                done = True
            elif ltries[lane] >= max_rounds:
                flag[p] = 1
                done = True
                if ngave == gave.size:
                    gave = np.concatenate((gave, np.empty(gave.size, np.int64)))
                gave[ngave] = i
                ngave += 1
            if done:
                attempts += ltries[lane]
                lp[lane] = -1
    return attempts, sink, fsink


@_jit
def _scan(i, cls, exclude_self, n, prop, lv_off, lv_s, lv_indptr, lv_members, rule, cids, czw, thr, lam):
    """All partners of class ``cls`` of item ``i`` (ascending): over all videos or the union of i's lists."""
    if prop == PROP_ALL:
        buf = np.empty(n, np.int64)
        m = 0
        for j in range(n):
            if exclude_self and j == i:
                continue
            if _is_class(i, j, cls, rule, cids, czw, thr, lam):
                buf[m] = j
                m += 1
        return buf[:m].copy()
    total = 0
    for c in range(lv_s):
        k = cids[i, lv_off + c]
        total += lv_indptr[k + 1] - lv_indptr[k]
    buf = np.empty(total, np.int64)
    m = 0
    for c in range(lv_s):
        k = cids[i, lv_off + c]
        for pos in range(lv_indptr[k], lv_indptr[k + 1]):
            j = np.int64(lv_members[pos])
            dup = False  # counted once: in the list of its first shared anchor among i's
            for a in range(c):
                ka = cids[i, lv_off + a]
                for b in range(lv_s):
                    if cids[j, lv_off + b] == ka:
                        dup = True
                if dup:
                    break
            if dup or (exclude_self and j == i):
                continue
            if _is_class(i, j, cls, rule, cids, czw, thr, lam):
                buf[m] = j
                m += 1
    return np.sort(buf[:m])


#: items per kernel call (each with its own seed): the unit of multi-threading
CHUNK = 8192
_EXECUTORS: dict[int, concurrent.futures.ThreadPoolExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()


def _executor(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    """A process-wide pool of ``threads`` threads (kept at module level: samplers stay picklable)."""
    with _EXECUTORS_LOCK:
        ex = _EXECUTORS.get(threads)
        if ex is None:
            ex = _EXECUTORS[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="vhindex-pairs")
        return ex


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
        self.n = n = graph.num_videos
        if graph.rule == "bth":
            lv = [graph.levels[s] for s in BTH_LEVELS]
            self.rule = RULE_BTH
            self.cids = _c(np.concatenate([x.ids for x in lv], axis=1), np.int32)
            self.czw = _c(np.concatenate([x.z for x in lv] + [x.w for x in lv], axis=1), np.float32)
            lam = 0.0
            offsets = {3: _OFF3, 5: _OFF5}
        else:
            a = int(graph.params["a"])
            level = graph.levels[a]
            self.rule = RULE_NPH if graph.rule == "nph" else RULE_GAUSSIAN
            cols = [level.z, level.w]
            if graph.rule == "gaussian":
                mu, sd = graph.row_stats()
                cols += [mu[:, None], sd[:, None]]
                lam = float(graph.params["lam"])
            else:
                lam = 0.0
            self.cids = _c(level.ids, np.int32)
            self.czw = _c(np.concatenate(cols, axis=1), np.float64)
            offsets = {a: 0}
        self._cls_args = (self.rule, self.cids, self.czw, np.float32(BTH_THRESHOLD), np.float64(lam))
        # candidate level per class (as AnchorGraph.candidate_level): (kind, offset, s, indptr, members)
        self._levels = {}
        for cls in (CLASS_POSITIVE, CLASS_NEGATIVE, CLASS_FALLBACK):
            level = graph.candidate_level(cls)
            if level is None:
                self._levels[cls] = (PROP_ALL, 0, 1, np.zeros(2, np.int64), np.zeros(1, np.int32))
            else:
                self._levels[cls] = (PROP_LEVEL, offsets[level.s], level.s, _c(level.indptr, np.int64),
                                     _c(level.members, np.int32))
        if mid is not None:
            self._mid = (_c(mid.narrow, np.bool_), _c(mid.rank[:, 4], np.int32), _c(mid.l_indptr, np.int64),
                         _c(mid.l_members, np.int32), _c(mid.r_indptr, np.int64), _c(mid.r_members, np.int32))
        else:
            z64 = np.zeros(1, np.int64)
            z32 = np.zeros(1, np.int32)
            self._mid = (np.zeros(n, np.bool_), z32, z64, z32, z64, z32)  # fifth is read for PROP_MID only

    def draw(self, items: np.ndarray, cls: int, seed: int, max_rounds: int, exclude_self: bool,
             state: np.ndarray, out: np.ndarray, flag: np.ndarray, threads: int = 1) -> int:
        """Run the attempt loop over ``items`` (see ``_draw``); returns the number of attempts.

        The items are cut into chunks of ``CHUNK`` with their own seeds (from ``seed``), run on
        up to ``threads`` threads (the kernel releases the GIL); the result does not depend on
        ``threads``.
        """
        kind, off, s, indptr, members = self._levels[cls]
        if kind == PROP_LEVEL and cls == CLASS_NEGATIVE and self.rule == RULE_BTH:
            kind = PROP_MID  # narrow items; the others keep the level-5 lists
        nchunks = -(-items.size // CHUNK)
        seeds = np.random.SeedSequence(seed).generate_state(max(nchunks, 1))

        def run(c: int) -> int:
            sl = slice(c * CHUNK, (c + 1) * CHUNK)
            attempts, _, _ = _draw(items[sl], cls, seeds[c], max_rounds, exclude_self, state, out[sl], flag[sl], self.n,
                                   kind, off, s, indptr, members, *self._mid, *self._cls_args)
            return int(attempts)

        if threads > 1 and nchunks > 1:
            return sum(_executor(threads).map(run, range(nchunks)))
        return sum(run(c) for c in range(nchunks))

    def scan(self, item: int, cls: int, exclude_self: bool) -> np.ndarray:
        """Every partner of class ``cls`` of ``item``, ascending (int64)."""
        return _scan(np.int64(item), cls, exclude_self, self.n, *self._levels[cls], *self._cls_args)

    def pair_classes(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``AnchorGraph.pair_classes`` for 1-D int64 arrays (no checks), compiled."""
        return _classes(_c(i, np.int64), _c(j, np.int64), *self._cls_args)

    def chains(self, i: np.ndarray, j: np.ndarray, s: int) -> np.ndarray:
        """bth: the released float32 ``A_s(i, j)`` (``AnchorLevel.affinity(..., emulate_float32=True)``)."""
        if self.rule != RULE_BTH:
            raise ValueError("chains() is the bth float32 arithmetic")
        return _chains(_c(i, np.int64), _c(j, np.int64), self.cids, self.czw, s)

    def warmup(self) -> None:
        """Compile the kernels for this graph's array types (a few seconds, once per process)."""
        none = np.zeros(0, np.int64)
        _draw(none, CLASS_POSITIVE, np.uint32(0), 1, False, np.zeros(self.n, np.int8), none, np.zeros(0, np.int8),
              self.n, PROP_ALL, *self._levels[CLASS_POSITIVE][1:], *self._mid, *self._cls_args)
        _scan(np.int64(0), CLASS_FALLBACK, False, 0, *self._levels[CLASS_FALLBACK][:1], 0, 1,
              *self._levels[CLASS_FALLBACK][3:], *self._cls_args)
        self.pair_classes(np.zeros(1, np.int64), np.zeros(1, np.int64))

"""Training-pair sampling on the implicit anchor graph, with the released DKPH/BTH distribution.

The released ``data.py`` (DKPH, BTH, MCMSH) draws, for each training video ``i``::

    with probability 1/2: j uniform over {j : adj[i, j] == 1}                      s = +1
    otherwise:            j uniform over {j : adj[i, j] == 2}, or, if that set is
                          empty, uniform over {j : adj[i, j] == 0}                 s = -1

:class:`PairSampler` draws from exactly that distribution without the ``N x N`` matrix.

Exactness. Every partner of a class lies in a known union of inverted lists (``bth``: positives
share one of the 3 nearest anchors, negatives one of the 5 nearest; see
:meth:`AnchorGraph.candidate_level`). One attempt draws ``r`` uniform in ``[0, T)`` with ``T`` the
summed length of i's lists and takes the ``r``-th entry of their concatenation, so a video ``j``
found in ``m(j)`` of i's lists is proposed with probability ``m(j) / T``; accepting it with
probability ``1 / m(j)`` makes every ``j`` of the union equally likely (``1 / T``), and keeping it
only when its class is the wanted one makes the accepted ``j`` uniform over that class. The
fallback class (released ``adj == 0``) and NPH's negatives are drawn uniformly from all ``N``
videos with the same class check. For BTH's "middle distance" class a narrower exact proposal is
used where it provably contains the whole class (see :class:`_MiddleDistance`).

Attempts are vectorised over the batch (several i.i.d. attempts per item once few are left, the
first success in attempt order kept). An item still without a partner after ``max_rounds``
attempts -- or sooner, when the pending items are mostly copies of a few -- gets an exact scan of
its candidates (cached) and a uniform draw from the scanned set. That keeps the draw uniform:
when to stop depends only on failures, which carry no information about which member an
accepted attempt would have returned. A scan that finds the set empty moves the item to the next
class (negative -> fallback) and is remembered for later batches.

Cost: each attempt is a few vectorised integer comparisons plus, for pairs whose float32 value
matters, ``s`` multiply-adds; the number of attempts per item is ``T / |class set|`` (list
lengths with multiplicity over the class size), which grows when hub anchors have long lists or
many pairs sit below the 1e-5 threshold (large ``N``).

Backends. ``backend="numba"`` (optional extra ``vhindex[fast]``, imported only when a sampler
is built) runs the same proposals, acceptance and class decisions as compiled loops, one item
after the other (:mod:`vhindex.graph._pairs_numba`); the exact scans are compiled too. The class
of every pair is bit-identical to :meth:`AnchorGraph.pair_classes`, so the distribution is the
same exact one; the random streams differ, so one seed gives different (reproducible) draws on
the two backends. ``"auto"`` picks numba when it can be imported, else numpy.

Departures from the released code, both where it would crash: an item without a positive partner
(possible with ``exclude_self=True``, or when its own ``adj[i, i]`` is not 1) gets a negative
pair (``s = -1``) instead; an item without negative and fallback partners raises ``ValueError``.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from vhindex.graph.anchor_graph import (
    CLASS_FALLBACK,
    CLASS_NEGATIVE,
    CLASS_POSITIVE,
    AnchorGraph,
    AnchorLevel,
)

logger = logging.getLogger(__name__)

__all__ = ["PairSampler", "BACKENDS"]

BACKENDS = ("auto", "numba", "numpy")


class PairSampler:
    """Draws ``(partner, s)`` for training videos from an :class:`AnchorGraph`, as DKPH/BTH do.

    Args:
        graph: the anchor graph.
        seed: seed of the sampler's own ``numpy.random.Generator`` (draws are reproducible for the
            same seed and sequence of ``sample`` calls).
        exclude_self: never pair a video with itself (the released code may: ``adj[i, i]`` is 1).
        max_rounds: rejection attempts per item before an exact scan of the item's candidates.
        cache_limit: most partner indices kept in the cache of exactly scanned sets.
        backend: ``"numba"`` (compiled attempt loop, the optional extra ``vhindex[fast]``),
            ``"numpy"`` (vectorised), or ``"auto"`` (default: numba when it can be imported).
            Both draw from the same exact distribution; for one seed they draw different samples.
        threads: numba backend: threads for the attempt loop; ``None`` (default) = the CPUs this
            process may use (sampling runs between training steps, not beside them). The draws
            do not depend on it. Ignored by the numpy backend.

    Attributes:
        backend: the backend in use, ``"numba"`` or ``"numpy"``.

    Raises:
        TypeError: when ``graph`` is not an :class:`AnchorGraph`.
        ValueError: on a non-positive ``max_rounds`` or ``threads``, negative ``cache_limit`` or unknown
            ``backend``.
        ImportError: for ``backend="numba"`` when numba cannot be imported.
    """

    def __init__(self, graph: AnchorGraph, seed: int | np.random.SeedSequence | None, *, exclude_self: bool = False,
                 max_rounds: int = 4096, cache_limit: int = 20_000_000, backend: str = "auto", threads: int | None = None):
        if not isinstance(graph, AnchorGraph):
            raise TypeError(f"graph must be an AnchorGraph, got {type(graph).__name__}")
        if max_rounds < 1:
            raise ValueError(f"max_rounds={max_rounds} must be >= 1")
        if cache_limit < 0:
            raise ValueError(f"cache_limit={cache_limit} must be >= 0")
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; use one of {BACKENDS}")
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads={threads!r} must be a positive int")
        self.threads = int(threads)
        self.graph = graph
        self.exclude_self = bool(exclude_self)
        self.max_rounds = int(max_rounds)
        self._attempt_budget = 16384  # attempts per vectorised round once few items are pending
        self.cache_limit = int(cache_limit)
        self._rng = np.random.default_rng(seed)
        n = graph.num_videos
        # per class: 0 unknown, 1 scanned & cached (or too big to cache), 2 known empty
        self._state = {c: np.zeros(n, np.int8) for c in (CLASS_POSITIVE, CLASS_NEGATIVE, CLASS_FALLBACK)}
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._cached = 0
        self._lengths = {s: lv.list_lengths for s, lv in graph.levels.items() if lv.indptr is not None}
        self._mid = _MiddleDistance(graph) if graph.rule == "bth" else None
        self.stats = {"attempts": 0, "scans": 0, "no_positive": 0, "fallback": 0}
        self._fast = None
        if backend != "numpy":
            kernels = _numba_kernels(required=backend == "numba")
            if kernels is not None:
                self._fast = kernels.NumbaPairKernels(graph, self._mid)
        self.backend = "numba" if self._fast is not None else "numpy"

    def warmup(self) -> float:
        """Compile the numba kernels now instead of on the first :meth:`sample` (no-op for numpy).

        Returns:
            Seconds spent (the one-off JIT compile, about once per process and graph rule).
        """
        t = time.perf_counter()
        if self._fast is not None:
            self._fast.warmup()
        return time.perf_counter() - t

    def sample(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One partner per item: a positive with probability 1/2, else a negative.

        Args:
            items: ``(B,)`` int video indices (repeats allowed).

        Returns:
            ``(partners (B,) int64, s (B,) float32)`` with ``s = +1`` for a similar pair (class
            ``adj == 1``) and ``-1`` for a dissimilar one (``adj == 2``, or ``adj == 0`` when the
            item has no ``adj == 2`` partner).

        Raises:
            ValueError: on a non-1-D or out-of-range ``items``, or an item with no negative and
                no fallback partner.
        """
        items = self._check_items(items)
        b = items.size
        want_pos = self._rng.random(b) < 0.5
        partners = np.full(b, -1, np.int64)
        s = np.where(want_pos, 1.0, -1.0).astype(np.float32)
        idx = np.nonzero(want_pos)[0]
        if idx.size:
            got = self._draw(items[idx], CLASS_POSITIVE)
            partners[idx] = got
            missing = idx[got < 0]
            if missing.size:
                self.stats["no_positive"] += int(missing.size)
                s[missing] = -1.0
        idx = np.nonzero(partners < 0)[0]
        if idx.size:
            partners[idx] = self._dissimilar(items[idx])
        return partners, s

    def sample_quadruplets(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """MCMSH's L_quad partners of every item: a neighbour, a non-neighbour, and a non-neighbour of that one.

        Args:
            items: ``(B,)`` int video indices.

        Returns:
            ``(positive, negative1, negative2, has_positive)``: ``positive[i]`` is a uniform partner of class
            ``adj == 1`` (the item itself where it has none, and then ``has_positive[i]`` is False);
            ``negative1[i]`` a dissimilar partner of the item and ``negative2[i]`` a dissimilar partner of
            ``negative1[i]`` (class ``adj == 2``, else ``adj == 0``, as :meth:`sample`'s negatives).

        Raises:
            ValueError: as :meth:`sample`.
        """
        items = self._check_items(items)
        positive = self._draw(items, CLASS_POSITIVE) if items.size else np.zeros(0, np.int64)
        has_positive = positive >= 0
        self.stats["no_positive"] += int((~has_positive).sum())
        positive = np.where(has_positive, positive, items)
        negative1 = self._dissimilar(items)
        return positive, negative1, self._dissimilar(negative1), has_positive

    def _dissimilar(self, items: np.ndarray) -> np.ndarray:
        """A negative partner per item (class 2), else a fallback one (class 0); raises when neither exists."""
        partners = np.full(items.size, -1, np.int64)
        if not items.size:
            return partners
        partners[:] = self._draw(items, CLASS_NEGATIVE)
        idx = np.nonzero(partners < 0)[0]
        if idx.size:
            self.stats["fallback"] += int(idx.size)
            got = self._draw(items[idx], CLASS_FALLBACK)
            partners[idx] = got
            if (got < 0).any():
                bad = int(items[idx[got < 0][0]])
                raise ValueError(f"video {bad} has no dissimilar partner at all (no negative and no fallback pair); "
                                 "the graph is degenerate (too few videos or anchors?)")
        return partners

    # ------------------------------------------------------------------ internals
    def _check_items(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items)
        if items.ndim != 1:
            raise ValueError(f"items must be 1-D, got shape {items.shape}")
        if items.size and items.dtype.kind not in "iu":
            raise TypeError(f"items must be integer video indices, got dtype {items.dtype}")
        items = items.astype(np.int64, copy=False)
        n = self.graph.num_videos
        if items.size and (items.min() < 0 or items.max() >= n):
            bad = items[(items < 0) | (items >= n)][0]
            raise ValueError(f"item {bad} out of range [0, {n})")
        return items

    def _draw(self, items: np.ndarray, cls: int) -> np.ndarray:
        """A uniform partner of class ``cls`` for every item, or -1 where the class is empty."""
        if self._fast is not None:
            return self._draw_numba(items, cls)
        out = np.full(items.size, -1, np.int64)
        state = self._state[cls]
        st = state[items]
        level = self.graph.candidate_level(cls)
        pending = np.nonzero(st == 0)[0]
        mid = self._mid if cls == CLASS_NEGATIVE else None
        attempts = 0
        while pending.size and attempts < self.max_rounds:
            if attempts >= 64 and pending.size >= 4 * np.unique(items[pending]).size:
                break  # the same few items over and over: one exact scan each is cheaper
            # several i.i.d. attempts per item once few are left; the first success (in attempt
            # order, which does not depend on the candidates) is kept, so the draw stays uniform
            reps = int(min(self.max_rounds - attempts, max(1, self._attempt_budget // pending.size)))
            attempts += reps
            it = np.repeat(items[pending], reps)
            if mid is None:
                cand, ok = self._propose(it, level)
            else:
                narrow = mid.narrow[it]
                cand = np.empty(it.size, np.int64)
                ok = np.empty(it.size, bool)
                cand[narrow], ok[narrow] = mid.propose(it[narrow], self._rng)
                wide = ~narrow
                cand[wide], ok[wide] = self._propose(it[wide], level)
            if self.exclude_self:
                ok &= cand != it
            sel = np.nonzero(ok)[0]
            if sel.size:
                ok[sel] = self.graph._pair_is_flat(it[sel], cand[sel], cls)
            self.stats["attempts"] += int(it.size)
            ok = ok.reshape(pending.size, reps)
            first = ok.argmax(axis=1)
            hit = ok[np.arange(pending.size), first]
            out[pending[hit]] = cand.reshape(pending.size, reps)[hit, first[hit]]
            pending = pending[~hit]
        rest = np.concatenate([pending, np.nonzero(st == 1)[0]])
        for pos in rest:
            cand = self._exact_set(int(items[pos]), cls, level)
            if cand.size:
                out[pos] = cand[self._rng.integers(cand.size)]
        return out

    def _draw_numba(self, items: np.ndarray, cls: int) -> np.ndarray:
        """:meth:`_draw` with the compiled attempt loop (``max_rounds`` attempts per item).

        An item that fails ``max_rounds`` attempts -- or whose earlier copy in the same kernel
        chunk did -- gets a uniform draw from its exact set, as an item with a cached set does.
        """
        out = np.full(items.size, -1, np.int64)
        flag = np.zeros(items.size, np.int8)
        seed = int(self._rng.integers(0, 2**63))
        self.stats["attempts"] += self._fast.draw(items, cls, seed, self.max_rounds, self.exclude_self,
                                                  self._state[cls], out, flag, threads=self.threads)
        level = self.graph.candidate_level(cls)
        for pos in np.nonzero(flag)[0]:
            cand = self._exact_set(int(items[pos]), cls, level)
            if cand.size:
                out[pos] = cand[self._rng.integers(cand.size)]
        return out

    def _propose(self, it: np.ndarray, level: AnchorLevel | None) -> tuple[np.ndarray, np.ndarray]:
        """One attempt per item: a candidate uniform over the union of its lists (after ``ok``)."""
        rng = self._rng
        p = it.size
        if level is None:
            return rng.integers(0, self.graph.num_videos, p), np.ones(p, bool)
        anc = level.ids[it]
        lens = self._lengths[level.s][anc]
        cum = np.cumsum(lens, axis=1)
        r = rng.integers(0, cum[:, -1])
        slot = _slot(r, cum)
        rows = np.arange(p)
        off = r - (cum[rows, slot] - lens[rows, slot])
        cand = level.members[level.indptr[anc[rows, slot]] + off].astype(np.int64)
        cj = level.ids[cand]
        mult = np.zeros(p, np.intp)
        for a in range(level.s):
            for b in range(level.s):
                mult += anc[:, a] == cj[:, b]
        ok = rng.random(p) * mult < 1.0
        return cand, ok

    def _exact_set(self, item: int, cls: int, level: AnchorLevel | None) -> np.ndarray:
        """All partners of class ``cls`` of ``item`` (cached while the cache has room)."""
        key = (item, cls)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        self.stats["scans"] += 1
        if self._fast is not None:
            found = self._fast.scan(item, cls, self.exclude_self)
        else:
            if level is None:
                cand = np.arange(self.graph.num_videos, dtype=np.int64)
            else:
                cand = np.unique(np.concatenate([level.members_of(int(a)) for a in level.ids[item]])).astype(np.int64)
            keep = self.graph._pair_classes_flat(np.full(cand.size, item, np.int64), cand) == cls
            if self.exclude_self:
                keep &= cand != item
            found = cand[keep]
        state = self._state[cls]
        if found.size == 0:
            state[item] = 2
        elif self._cached + found.size <= self.cache_limit:
            self._cache[key] = found
            self._cached += found.size
            state[item] = 1
        return found


def _numba_kernels(*, required: bool):
    """The compiled-kernel module, imported on first use (numba is optional); None when unavailable."""
    try:
        from vhindex.graph import _pairs_numba
    except ImportError as e:
        if required:
            raise ImportError("PairSampler(backend='numba') needs numba: pip install 'vhindex[fast]' "
                              f"(import failed: {e})") from e
        logger.debug("numba unavailable (%s); PairSampler uses the numpy backend", e)
        return None
    return _pairs_numba


def _slot(r: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Index of the list holding position ``r`` of the concatenation (``cum``: inclusive cumsums)."""
    slot = (r >= cum[:, 0]).astype(np.intp)
    for c in range(1, cum.shape[1] - 1):
        slot += r >= cum[:, c]
    return slot


class _MiddleDistance:
    """A narrower exact proposal for BTH's "middle distance" class (``adj == 2``).

    ``adj == 2`` needs ``SS4 = 0``. For a pair sharing an anchor ``k`` in both top-4 lists the
    float32 ``A_4`` is at least ``fl32(w4_ik z4_jk) >= fl32(w4_ik min_j z4_jk)`` (the FMA chain is
    monotone), so when that bound exceeds the threshold for all of i's 4 anchors -- the
    ``narrow`` items -- every ``adj == 2`` partner shares an anchor with i only through a 5th
    rank: ``j`` has i's 5th anchor in its top 5, or ``j``'s 5th anchor is one of i's top 4.
    Those two kinds of inverted lists are much shorter than the 5 full level-5 lists, so the
    same uniform-over-the-union rejection accepts far more often. Other items keep the level-5
    proposal; both are exact.
    """

    def __init__(self, graph: AnchorGraph):
        from vhindex.graph.anchor_graph import BTH_THRESHOLD

        lv4 = graph.levels[4]
        lv5 = graph.levels[5]
        k = graph.num_anchors
        zmin = np.full(k, np.inf, np.float32)
        np.minimum.at(zmin, lv4.ids.ravel(), lv4.z.ravel())
        bound = (lv4.w.astype(np.float64) * zmin[lv4.ids].astype(np.float64)).astype(np.float32)
        self.narrow = (bound > BTH_THRESHOLD).all(axis=1)
        self.rank = np.ascontiguousarray(graph.anchor_ids[:, :5])
        fifth = self.rank[:, 4]
        order = np.argsort(fifth, kind="stable")
        self.r_members = order.astype(np.int32)
        self.r_indptr = np.zeros(k + 1, np.int64)
        np.cumsum(np.bincount(fifth, minlength=k), out=self.r_indptr[1:])
        self.l_indptr = lv5.indptr
        self.l_members = lv5.members

    def propose(self, it: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Candidates uniform over ``L5(5th anchor of i) | R5(k) for k in top4(i)`` (after ``ok``)."""
        p = it.size
        rk = self.rank[it]
        starts = np.empty((p, 5), np.int64)
        lens = np.empty((p, 5), np.int64)
        a5 = rk[:, 4]
        starts[:, 0] = self.l_indptr[a5]
        lens[:, 0] = self.l_indptr[a5 + 1] - starts[:, 0]
        top4 = rk[:, :4]
        starts[:, 1:] = self.r_indptr[top4]
        lens[:, 1:] = self.r_indptr[top4 + 1] - starts[:, 1:]
        cum = np.cumsum(lens, axis=1)
        r = rng.integers(0, cum[:, -1])
        slot = _slot(r, cum)
        rows = np.arange(p)
        pos = starts[rows, slot] + r - (cum[rows, slot] - lens[rows, slot])
        cand = np.where(slot == 0, self.l_members[np.where(slot == 0, pos, 0)],
                        self.r_members[np.where(slot == 0, 0, pos)]).astype(np.int64)
        cr = self.rank[cand]
        in5 = cr[:, 0] == a5
        for c in range(1, 5):
            in5 |= cr[:, c] == a5
        fifth_in_top4 = cr[:, 4] == top4[:, 0]
        for c in range(1, 4):
            fifth_in_top4 |= cr[:, 4] == top4[:, c]
        mult = in5.astype(np.intp) + fifth_in_top4
        ok = rng.random(p) * mult < 1.0
        return cand, ok

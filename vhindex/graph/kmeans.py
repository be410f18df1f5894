"""K-means anchors over video embeddings, written against :class:`~vhindex.graph.interfaces.GraphExecutor`.

The hashing models BTH, DKPH, NPH and MCMSH learn from ~2,000 K-means anchors over up to
700,000 video-level embeddings (``d = 256``). The algorithm here touches the data **only** through
an executor (``assign_reduce``, ``take_rows``, ``nearest``) and ``source.num_rows / dim /
num_chunks / chunk_rows``, so the in-process :class:`~vhindex.graph.sequential.SequentialExecutor`
and a Dask executor over Parquet chunks give identical answers for the same seed and chunking.

Per-chunk kernels (pure functions of one chunk, run wherever the chunk lies):

* :func:`assign_chunk` -- exact nearest centroid with faiss ``IndexFlatL2``.
* :func:`assign_stats` -- the k-means map output (:class:`AssignStats`: float64 sums, counts, inertia).
* :func:`nearest_k` -- each row's ``a`` nearest centroids, ties ordered by (distance, index).

Driver-side algorithms:

* :func:`kmeans_plusplus` -- greedy k-means++ seeding on an in-memory sample (BLAS, incremental).
* :func:`kmeans_parallel` -- k-means|| (Bahmani et al., 2012) through executor maps.
* :func:`fit_kmeans` -- init + Lloyd ("full") or Sculley mini-batch iterations, empty-cluster splitting.

Tie rule (all kernels): a row equally close to several centroids goes to the **lowest centroid
index** (faiss's top-1 and heap result handlers compare ``(distance, index)``; :func:`nearest_k`
re-sorts by ``(distance, index)`` so the order never depends on faiss internals). Distances are
faiss's float32 ``|x|^2 + |c|^2 - 2<x, c>`` values, so "equal" means equal in that computation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from typing import Literal

import faiss
import numpy as np

from vhindex.graph.interfaces import AssignStats, GraphExecutor

logger = logging.getLogger(__name__)

__all__ = [
    "KMeansResult",
    "NonFiniteDataError",
    "assign_chunk",
    "assign_stats",
    "default_init_sample",
    "faiss_threads",
    "fit_kmeans",
    "kmeans_parallel",
    "kmeans_plusplus",
    "nearest_k",
    "prune_centroids",
    "segment_sums",
]


class NonFiniteDataError(ValueError):
    """The embeddings hold NaN or Inf values (the message names the chunk / row)."""


# --------------------------------------------------------------------------------------------------
# per-chunk kernels
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def faiss_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with faiss using ``num_threads`` OpenMP threads, then restore the previous setting.

    Args:
        num_threads: threads to use inside the block; None leaves faiss's setting untouched.
    """
    if num_threads is None:
        yield
        return
    if int(num_threads) < 1:
        raise ValueError(f"num_threads={num_threads} must be at least 1 (or None for faiss's default)")
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(num_threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) matrix, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_pair(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _as_matrix(x, "x")
    centroids = _as_matrix(centroids, "centroids")
    if centroids.shape[0] < 1:
        raise ValueError("centroids is empty; pass at least one centroid")
    if x.shape[1] != centroids.shape[1]:
        raise ValueError(f"dimension mismatch: data has d={x.shape[1]} but centroids have d={centroids.shape[1]}")
    return x, centroids


def _search(x: np.ndarray, centroids: np.ndarray, a: int, num_threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    index = faiss.IndexFlatL2(centroids.shape[1])
    with faiss_threads(num_threads):
        index.add(centroids)
        dist, ids = index.search(x, a)
    return ids, dist


def _raise_non_finite(x: np.ndarray, chunk: int | None, row_offset: int) -> None:
    where = "" if chunk is None else f" in chunk {chunk}"
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise NonFiniteDataError(
            f"the embeddings{where} contain NaN/Inf: {bad.size} bad row(s), first at global row "
            f"{row_offset + int(bad[0])}; clean or drop those videos before clustering")
    raise NonFiniteDataError(
        f"squared distances overflowed float32{where} (first bad row {row_offset}); the embeddings or "
        "centroids have huge values -- normalise the embeddings first")


def assign_chunk(x: np.ndarray, centroids: np.ndarray, *, num_threads: int | None = None,
                 chunk: int | None = None, row_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest centroid of each row (faiss ``IndexFlatL2``, brute force).

    Ties go to the lower centroid index (faiss's top-1 handler keeps the first minimum; tested).

    Args:
        x: ``(n, d)`` float32 rows.
        centroids: ``(k, d)`` float32 centroids.
        num_threads: faiss threads for this call only (None: faiss's current setting).
        chunk: chunk index, only used to name the chunk in errors.
        row_offset: global index of ``x[0]``, only used in errors.

    Returns:
        ``(ids (n,) int64, squared distances (n,) float32)``.

    Raises:
        NonFiniteDataError: ``x`` holds NaN/Inf (or distances overflow).
        ValueError: shapes do not match.
    """
    x, centroids = _check_pair(x, centroids)
    if x.shape[0] == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    ids, dist = _search(x, centroids, 1, num_threads)
    ids, dist = ids[:, 0].astype(np.int64, copy=False), dist[:, 0]
    if ids.min() < 0 or not np.isfinite(dist.max()):
        _raise_non_finite(x, chunk, row_offset)
    return ids, dist


def segment_sums(x: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-centroid float64 sums of the rows of ``x`` and counts, for labels ``ids`` in ``[0, k)``.

    Rows are grouped by a stable sort, so every centroid's rows are added in their original order
    (deterministic, and the same as ``np.add.at`` into a float64 array).

    Returns:
        ``(sums (k, d) float64, counts (k,) int64)``.
    """
    ids = np.asarray(ids, dtype=np.int64)
    counts = np.bincount(ids, minlength=k).astype(np.int64)
    sums = np.zeros((k, x.shape[1]), np.float64)
    if ids.size == 0:
        return sums, counts
    order = np.argsort(ids, kind="stable")
    xs = x[order]
    ends = np.cumsum(counts)
    starts = ends - counts
    for j in np.flatnonzero(counts).tolist():
        xs[starts[j]:ends[j]].sum(axis=0, dtype=np.float64, out=sums[j])
    return sums, counts


def assign_stats(x: np.ndarray, centroids: np.ndarray, num_threads: int | None = None, *,
                 chunk: int | None = None, row_offset: int = 0) -> AssignStats:
    """The k-means map: assign ``x`` to its nearest centroids and return the sufficient statistics.

    Args:
        x: ``(n, d)`` float32 rows (one chunk).
        centroids: ``(k, d)`` float32 centroids.
        num_threads: faiss threads for this call only.
        chunk: chunk index, named in errors.
        row_offset: global index of ``x[0]``, named in errors.

    Returns:
        :class:`AssignStats` with float64 per-centroid sums, int64 counts, and the float64 sum of the
        float32 squared distances as inertia.

    Raises:
        NonFiniteDataError: the chunk holds NaN/Inf.
    """
    x, centroids = _check_pair(x, centroids)
    ids, dist = assign_chunk(x, centroids, num_threads=num_threads, chunk=chunk, row_offset=row_offset)
    sums, counts = segment_sums(x, ids, centroids.shape[0])
    return AssignStats(sums, counts, float(dist.sum(dtype=np.float64)), int(x.shape[0]))


def nearest_k(x: np.ndarray, centroids: np.ndarray, a: int,
              num_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``a`` nearest centroids, ordered by (squared distance, centroid index).

    Args:
        x: ``(n, d)`` float32 rows.
        centroids: ``(k, d)`` float32 centroids.
        a: neighbours per row, ``1 <= a <= k``.
        num_threads: faiss threads for this call only.

    Returns:
        ``(ids (n, a) int32, squared distances (n, a) float32)``, nearest first.

    Raises:
        ValueError: ``a`` out of range or shapes do not match.
        NonFiniteDataError: ``x`` holds NaN/Inf.
    """
    x, centroids = _check_pair(x, centroids)
    k = centroids.shape[0]
    if not 1 <= int(a) <= k:
        raise ValueError(f"a={a} nearest anchors requested but there are k={k} centroids; use 1 <= a <= k")
    a = int(a)
    if x.shape[0] == 0:
        return np.empty((0, a), np.int32), np.empty((0, a), np.float32)
    ids, dist = _search(x, centroids, a, num_threads)
    if ids.min() < 0 or not np.isfinite(dist.max()):
        _raise_non_finite(x, None, 0)
    if a > 1:
        order = np.lexsort((ids, dist), axis=-1)
        ids = np.take_along_axis(ids, order, axis=1)
        dist = np.take_along_axis(dist, order, axis=1)
    return ids.astype(np.int32), np.ascontiguousarray(dist, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------------------


def kmeans_plusplus(sample: np.ndarray, k: int, rng: np.random.Generator, n_local_trials: int | None = None,
                    *, sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; the greedy variant of scikit-learn).

    At each of the ``k - 1`` steps, ``n_local_trials`` candidates are drawn with probability
    proportional to ``weight * D(x)^2`` and the one that lowers the potential most is kept. The
    squared distances to the chosen set are kept incrementally; the candidate distances are one
    ``(trials, d) x (d, m)`` float32 BLAS product per step, so k=2,000 on a 20,000-row sample takes a
    few seconds on two cores.

    Args:
        sample: ``(m, d)`` float32 points, ``m >= k``.
        k: number of seeds.
        rng: numpy generator (the only source of randomness).
        n_local_trials: candidates per step; default ``2 + int(ln k)`` as in scikit-learn.
        sample_weight: optional ``(m,)`` non-negative weights (k-means|| reclustering).

    Returns:
        ``(centers (k, d) float32, indices (k,) int64 into sample)``. When the sample has fewer than
        ``k`` distinct points, some seeds repeat (once the potential is 0 the last row is drawn).

    Raises:
        ValueError: ``k`` out of ``[1, m]`` or bad weights.
    """
    x = _as_matrix(sample, "sample")
    m, d = x.shape
    if not 1 <= int(k) <= m:
        raise ValueError(f"k={k} seeds requested from a sample of {m} points; need 1 <= k <= {m}")
    k = int(k)
    trials = int(n_local_trials) if n_local_trials is not None else 2 + int(np.log(k))
    if trials < 1:
        raise ValueError(f"n_local_trials={n_local_trials} must be at least 1")
    if sample_weight is None:
        w = None
        first = int(rng.integers(m))
    else:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (m,) or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
            raise ValueError(f"sample_weight must be ({m},) finite, non-negative and not all zero")
        first = int(rng.choice(m, p=w / w.sum()))
        w32 = w.astype(np.float32)
    norms = np.einsum("ij,ij->i", x, x)
    centers = np.empty((k, d), np.float32)
    indices = np.empty(k, np.int64)
    indices[0] = first
    centers[0] = x[first]
    closest = norms + norms[first] - 2.0 * (x @ x[first])
    np.maximum(closest, 0.0, out=closest)
    for c in range(1, k):
        cum = np.cumsum(closest if w is None else closest * w32, dtype=np.float64)
        draws = rng.random(trials) * cum[-1]
        cand = np.minimum(np.searchsorted(cum, draws, side="right"), m - 1)
        dist = x[cand] @ x.T
        dist *= -2.0
        dist += norms
        dist += norms[cand][:, None]
        np.maximum(dist, 0.0, out=dist)
        np.minimum(dist, closest, out=dist)
        pots = dist.sum(axis=1, dtype=np.float64) if w is None else dist @ w
        best = int(np.argmin(pots))
        closest = dist[best]
        indices[c] = cand[best]
        centers[c] = x[cand[best]]
    return centers, indices


def prune_centroids(sample: np.ndarray, centers: np.ndarray, k: int, *, frac: float = 0.25,
                    sample_weight: np.ndarray | None = None, num_threads: int | None = None) -> np.ndarray:
    """Greedily drop seeds until ``k`` remain, each time the one whose removal raises the sample cost least.

    Used after an *oversampled* k-means++ (e.g. 1.25 k seeds): plain greedy k-means++ places two
    seeds in some real clusters and none in others (its last steps sample the few uncovered
    clusters with a small probability), and Lloyd cannot move a centroid across to an uncovered
    cluster. Oversampling covers nearly every cluster; pruning removes the duplicates.

    Each round computes every sample row's two nearest seeds (:func:`nearest_k`); the cost of
    removing seed ``j`` is ``sum over its rows of (d_2 - d_1)``. Seeds are removed in ascending cost
    (ties: lower index), skipping ("deferring") a seed that is the fall-back of a seed already
    removed this round or whose rows would fall back on a removed seed (so every cost used is exact;
    a deferred seed's true cost can only have grown). A round stops after ``ceil(frac * initial
    excess)`` removals or at the first seed costing more than twice the cheapest deferred one (whose
    true cost may still be low, e.g. the third seed in one real cluster); then the costs are recomputed.

    Args:
        sample: ``(m, d)`` float32 rows.
        centers: ``(k', d)`` float32 seeds, ``k' >= k``.
        k: seeds to keep, ``k >= 2`` (with ``k = 1`` the sample mean-nearest seed is kept).
        frac: fraction of the initial excess removed per round at most.
        sample_weight: optional ``(m,)`` row weights (the cost sums ``w * (d_2 - d_1)``).
        num_threads: faiss threads.

    Returns:
        ``(k, d)`` float32, the kept seeds in their original order.
    """
    centers = _as_matrix(centers, "centers")
    x = _as_matrix(sample, "sample")
    if not 1 <= k <= centers.shape[0]:
        raise ValueError(f"cannot prune {centers.shape[0]} seeds to k={k}")
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
    if k == 1:
        mean = np.average(x, axis=0, weights=sample_weight)[None].astype(np.float32)
        ids, _ = assign_chunk(mean, centers, num_threads=num_threads)
        return centers[ids[:1]].copy()
    cap = max(1, math.ceil(frac * (centers.shape[0] - k)))
    while centers.shape[0] > k:
        kc = centers.shape[0]
        ids, dist = nearest_k(x, centers, 2, num_threads)
        owner = ids[:, 0].astype(np.int64)
        gap = dist[:, 1].astype(np.float64) - dist[:, 0]
        cost = np.bincount(owner, weights=gap if sample_weight is None else gap * sample_weight, minlength=kc)
        counts = np.bincount(owner, minlength=kc)
        ends = np.cumsum(counts)
        starts = ends - counts
        fallback = ids[np.argsort(owner, kind="stable"), 1]
        removed = np.zeros(kc, bool)
        blocked = np.zeros(kc, bool)
        todo = min(cap, kc - k)
        deferred = math.inf
        for j in np.argsort(cost, kind="stable").tolist():
            if todo == 0 or cost[j] > 2.0 * deferred:
                break
            fb = fallback[starts[j]:ends[j]]
            if blocked[j] or removed[fb].any():
                deferred = min(deferred, cost[j])
                continue
            removed[j] = True
            blocked[fb] = True
            todo -= 1
        centers = centers[~removed]
    return centers


def _weighted_lloyd(points: np.ndarray, weights: np.ndarray, centers: np.ndarray, n_iter: int,
                    num_threads: int | None) -> np.ndarray:
    """A few weighted Lloyd iterations in memory (empty centroids keep their position)."""
    k = centers.shape[0]
    wp = points.astype(np.float64) * weights[:, None]
    for _ in range(n_iter):
        ids, _ = assign_chunk(points, centers, num_threads=num_threads)
        wsum = np.bincount(ids, weights=weights, minlength=k)
        sums, _ = segment_sums(wp, ids, k)
        ok = wsum > 0
        new = centers.astype(np.float64)
        new[ok] = sums[ok] / wsum[ok, None]
        centers = new.astype(np.float32)
    return centers


def kmeans_parallel(executor: GraphExecutor, k: int, rng: np.random.Generator, rounds: int = 5,
                    oversampling: float = 2.0, *, recluster_iter: int = 10, recluster_oversample: float = 1.25,
                    num_threads: int | None = None) -> np.ndarray:
    """k-means|| seeding (Bahmani et al., 2012) over all rows, through executor maps only.

    One uniformly random first candidate, then ``rounds`` rounds: every row is kept independently
    with probability ``min(1, l * D(x)^2 / phi)`` where ``l = oversampling * k`` is the *expected
    number of rows per round* (Bahmani's l; dask-ml's ``oversampling_factor`` is l itself, so its
    default 2 draws ~2 points per round). ``D(x)^2`` comes from ``executor.nearest(new_candidates, 1)``
    merged with the previous minimum (strictly smaller wins, so ties keep the earlier candidate):
    exact, and deterministic in chunk order. The candidates, weighted by how many rows are nearest
    to them, are reclustered in memory: weighted :func:`kmeans_plusplus` of
    ``ceil(recluster_oversample * k)`` seeds, :func:`prune_centroids` back to ``k``, then
    ``recluster_iter`` weighted Lloyd iterations. Cost: each round is one pass of ``N x l`` distances (for
    N=700k, k=2,000, l=4,000 about as much as 2 Lloyd passes), so this is opt-in, not the default.

    Args:
        executor: where the rows are.
        k: number of seeds.
        rng: numpy generator.
        rounds: sampling rounds (Bahmani: ~5 suffice).
        oversampling: ``l / k``.
        recluster_iter: weighted Lloyd iterations on the candidates.
        recluster_oversample: seeds drawn per final seed before pruning (1.0: plain k-means++).
        num_threads: faiss threads for the in-memory reclustering.

    Returns:
        ``(k, d)`` float32 seeds.

    Raises:
        ValueError: ``k`` out of range, ``rounds < 0`` or ``oversampling <= 0``.
    """
    n = int(executor.source.num_rows)
    _check_k(k, n)
    if rounds < 0 or not oversampling > 0:
        raise ValueError(f"rounds={rounds} must be >= 0 and oversampling={oversampling} > 0")
    ell = float(oversampling) * k
    first = np.array([int(rng.integers(n))], np.int64)
    chosen = [first]
    cands = executor.take_rows(first)
    _check_finite_rows(executor, cands, first)
    ids, dist = executor.nearest(cands, 1)
    owner = ids[:, 0].astype(np.int64)
    d2 = dist[:, 0].copy()
    for r in range(rounds):
        phi = float(d2.sum(dtype=np.float64))
        if phi <= 0:
            break
        prob = np.minimum(1.0, ell * d2.astype(np.float64) / phi)
        new = np.flatnonzero(rng.random(n) < prob)
        logger.debug("k-means|| round %d: phi=%.6g, %d new candidates", r, phi, new.size)
        if new.size == 0:
            continue
        pts = executor.take_rows(new)
        _check_finite_rows(executor, pts, new)
        nid, ndist = executor.nearest(pts, 1)
        better = ndist[:, 0] < d2
        owner[better] = nid[better, 0].astype(np.int64) + cands.shape[0]
        d2[better] = ndist[better, 0]
        cands = np.concatenate([cands, pts])
        chosen.append(new)
    rows = np.concatenate(chosen)
    if cands.shape[0] <= k:
        # Too few candidates (tiny or degenerate data): top up with uniformly drawn unused rows.
        missing = k - cands.shape[0]
        pool = np.setdiff1d(np.arange(n, dtype=np.int64), rows, assume_unique=False)
        extra = np.sort(rng.choice(pool, size=missing, replace=False)) if missing else pool[:0]
        out = np.concatenate([cands, executor.take_rows(extra)]) if missing else cands
        return np.ascontiguousarray(out, dtype=np.float32)
    weights = np.bincount(owner, minlength=cands.shape[0]).astype(np.float64)
    logger.info("k-means||: %d candidates after %d rounds, reclustering to k=%d", cands.shape[0], rounds, k)
    k_over = min(cands.shape[0], max(k, math.ceil(recluster_oversample * k)))
    seeds, _ = kmeans_plusplus(cands, k_over, rng, sample_weight=weights)
    if k_over > k:
        seeds = prune_centroids(cands, seeds, k, sample_weight=weights, num_threads=num_threads)
    return _weighted_lloyd(cands, weights, seeds, recluster_iter, num_threads)


# --------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class KMeansResult:
    """What :func:`fit_kmeans` returns.

    Attributes:
        centroids: ``(k, d)`` float32.
        counts: ``(k,)`` int64, rows nearest to each centroid (over all data, final centroids).
        inertia: sum over all rows of the squared distance to the nearest final centroid.
        inertia_history: "full": the inertia of each evaluated centroid set (the last one is
            ``inertia``); "minibatch": per epoch the sum of the batch inertias (each before its
            update), then the exact final inertia.
        n_iter: centroid updates done ("full": Lloyd iterations; "minibatch": epochs).
        init_seconds: seconds spent in initialisation.
        seconds: total seconds.
        converged: whether the relative inertia change fell below ``tol``.
        num_reseeded: empty clusters re-seeded by splitting, over the whole fit.
    """

    centroids: np.ndarray
    counts: np.ndarray
    inertia: float
    inertia_history: list[float]
    n_iter: int
    init_seconds: float
    seconds: float
    converged: bool = False
    num_reseeded: int = 0

    @property
    def mean_inertia(self) -> float:
        """Mean squared distance of a row to its nearest centroid."""
        n = int(self.counts.sum())
        return self.inertia / n if n else 0.0


def default_init_sample(n: int, k: int) -> int:
    """Default k-means++ sample size: ``min(N, max(10 * k, 10_000))`` (20,000 rows for k=2,000).

    Ten rows per centroid is enough for k-means++ to place one seed in (nearly) every real cluster,
    and keeps the greedy seeding at a few seconds for k=2,000 on two cores; the Lloyd passes over
    all rows that follow fix the positions.
    """
    return int(min(n, max(10 * k, 10_000)))


def _check_k(k: int, n: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {k!r}")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    if n == 0:
        raise ValueError("the data has no rows (N=0); nothing to cluster -- check the input dataset")
    if k > n:
        raise ValueError(f"k={k} exceeds the number of videos N={n}; use k <= N")


def _check_finite_rows(executor: GraphExecutor, pts: np.ndarray, rows: np.ndarray) -> None:
    ok = np.isfinite(pts).all(axis=1)
    if ok.all():
        return
    bad = int(rows[np.flatnonzero(~ok)[0]])
    src = executor.source
    sizes = np.fromiter((src.chunk_rows(i) for i in range(src.num_chunks())), np.int64)
    chunk = int(np.searchsorted(np.cumsum(sizes), bad, side="right"))
    raise NonFiniteDataError(
        f"the embeddings contain NaN/Inf: global row {bad} (chunk {chunk}) and {int((~ok).sum()) - 1} more "
        "in the init sample; clean or drop those videos before clustering")


def _split_empty(centroids: np.ndarray, sizes: np.ndarray, empty: np.ndarray, scale: float,
                 rng: np.random.Generator) -> int:
    """Re-seed each empty centroid by splitting the currently largest cluster (in place).

    For empty ``j`` (ascending) and the largest cluster ``b`` (ties: lowest index) with at least two
    rows: ``c_j = c_b + delta``, ``c_b = c_b - delta`` with ``delta = 0.01 * scale * N(0, I)`` drawn
    from ``rng``, and ``b``'s size is halved between the two. Returns the number of splits.
    """
    done = 0
    d = centroids.shape[1]
    for j in empty.tolist():
        b = int(np.argmax(sizes))
        if sizes[b] < 2:
            break
        delta = 0.01 * scale * rng.standard_normal(d)
        centroids[j] = centroids[b] + delta
        centroids[b] = centroids[b] - delta
        half = sizes[b] / 2
        sizes[b] = sizes[b] - half
        sizes[j] = half
        done += 1
    return done


def _rel_change(prev: float, cur: float) -> float:
    return abs(prev - cur) / prev if prev > 0 else 0.0


def fit_kmeans(executor: GraphExecutor, k: int, *, n_iter: int = 20,
               init: Literal["k-means++", "k-means||", "random"] | np.ndarray = "k-means++",
               init_sample: int | None = None, mode: Literal["full", "minibatch"] = "full",
               batch_chunks: int | None = None, tol: float = 1e-4, seed: int = 0,
               empty: Literal["split"] = "split", n_local_trials: int | None = None,
               init_oversample: float = 1.25, num_threads: int | None = None) -> KMeansResult:
    """K-means over all rows of ``executor.source``, touching the data only through the executor.

    Recipe and defaults (tuned on 700,000 x 256, k=2,000, 2 cores; see benchmarks/bench_kmeans.py):

    * seeding: greedy k-means++ of ``k' = 1.25 k`` seeds on a uniform sample of
      :func:`default_init_sample` rows (20,000 for k=2,000; a few seconds), pruned back to ``k``
      with :func:`prune_centroids`. A good seeding matters far more than the engine: random init
      lands at ~1.75x the optimum on well-separated data whatever the number of iterations; plain
      k-means++ leaves ~3-4% of the real clusters without a seed (~1.1x); oversampling + pruning
      leaves <0.5% (~1.005x). Sample 16k vs 20k changed the objective by 0.4% and the seeding by
      ~2 s; 10 rows per centroid is kept for margin on less clean data.
    * Lloyd passes over all rows (one faiss pass each, ~3-6 s for 700k x 2,000 x 256 on 2 cores).
      From these seeds Lloyd converges (relative inertia change < ``tol=1e-4``) in ~3-5 passes, so
      ``n_iter=20`` is a cap, not the typical cost. Benchmark (2 shared cores, 700k x 256, k=2,000):
      default fit 43 s (seeding 10-22 s depending on machine load, 4 passes), mean squared distance
      64.24 (64.00 at the true centres, peak RSS 0.82 GB); ``faiss.Kmeans(niter=20)`` 71-119 s, 112.2;
      sklearn ``MiniBatchKMeans`` (k-means++ on 50k rows, batch 50k, 3 epochs) 92 s, 67.5.

    Modes:
        * ``"full"``: each Lloyd iteration is one ``assign_reduce`` over all chunks; new centroid =
          sums / counts. The last evaluated centroid set is returned with its exact stats.
        * ``"minibatch"``: ``n_iter`` epochs; each epoch visits the chunks in a seeded random order,
          ``batch_chunks`` chunks per step, with Sculley's per-centroid learning rate
          ``c += (sum_b - n_b c) / (N_c + n_b)`` (``N_c`` accumulated counts); one exact pass at the end.

    Empty clusters (``empty="split"``) are never dropped: each is re-seeded by splitting the
    currently largest cluster into two symmetric, slightly perturbed copies (as faiss does), so
    exactly ``k`` centroids come back. Counts can still be 0 when the data has fewer than ``k``
    distinct points.

    Args:
        executor: a :class:`GraphExecutor` over the embeddings.
        k: number of centroids, ``1 <= k <= N``.
        n_iter: maximum Lloyd iterations ("full") or epochs ("minibatch").
        init: "k-means++" (sample + :func:`kmeans_plusplus`), "k-means||" (:func:`kmeans_parallel`,
            exact but costs ~2 passes per round), "random" (k distinct uniform rows), or a
            ``(k, d)`` array of initial centroids.
        init_sample: rows in the k-means++ sample (default :func:`default_init_sample`).
        mode: "full" or "minibatch".
        batch_chunks: chunks per mini-batch step (default: about a tenth of the chunks, at least 1).
        tol: stop when the relative change of the inertia is below this (0 disables).
        seed: seeds every random choice (sample, seeding, chunk order, splits).
        empty: empty-cluster policy; only "split".
        n_local_trials: k-means++ candidates per step (default ``2 + int(ln k')``).
        init_oversample: "k-means++" draws ``k' = ceil(init_oversample * k)`` seeds from the sample and
            prunes them back to ``k`` with :func:`prune_centroids` (1.0: plain k-means++).
        num_threads: faiss threads for in-memory reclustering (the executor has its own setting).

    Returns:
        :class:`KMeansResult`.

    Raises:
        ValueError: bad ``k`` (``k < 1`` or "k=... exceeds the number of videos N=..."), empty data,
            init centroids of the wrong shape, bad mode/init/empty/batch_chunks/n_iter values.
        NonFiniteDataError: NaN/Inf in the data (the chunk and row are named).
    """
    t0 = time.perf_counter()
    src = executor.source
    n, d = int(src.num_rows), int(src.dim)
    _check_k(k, n)
    k = int(k)
    if mode not in ("full", "minibatch"):
        raise ValueError(f"mode={mode!r} is not one of 'full', 'minibatch'")
    if empty != "split":
        raise ValueError(f"empty={empty!r} is not supported; use 'split'")
    if int(n_iter) < 0:
        raise ValueError(f"n_iter={n_iter} must be >= 0")
    if tol < 0:
        raise ValueError(f"tol={tol} must be >= 0")
    if not init_oversample >= 1.0:
        raise ValueError(f"init_oversample={init_oversample} must be >= 1 (1 = plain k-means++)")
    rng = np.random.default_rng(seed)

    # ---- init ----------------------------------------------------------------------------------
    if isinstance(init, np.ndarray) or not isinstance(init, str):
        c0 = np.asarray(init)
        if c0.ndim != 2 or c0.shape[1] != d:
            raise ValueError(f"init centroids have shape {c0.shape} but the data has d={d}; pass a ({k}, {d}) array")
        if c0.shape[0] != k:
            raise ValueError(f"init has {c0.shape[0]} centroids but k={k}; pass a ({k}, {d}) array")
        if not np.all(np.isfinite(c0)):
            raise NonFiniteDataError("init centroids contain NaN/Inf")
        centroids = np.ascontiguousarray(c0, dtype=np.float32).copy()
    elif init == "random":
        rows = np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
        centroids = executor.take_rows(rows)
        _check_finite_rows(executor, centroids, rows)
    elif init == "k-means++":
        m = default_init_sample(n, k) if init_sample is None else int(init_sample)
        if not k <= m <= n:
            raise ValueError(f"init_sample={init_sample} must lie in [k={k}, N={n}]")
        rows = np.sort(rng.choice(n, size=m, replace=False)).astype(np.int64)
        sample = executor.take_rows(rows)
        _check_finite_rows(executor, sample, rows)
        k_over = min(m, max(k, math.ceil(init_oversample * k)))
        centroids, _ = kmeans_plusplus(sample, k_over, rng, n_local_trials)
        if k_over > k:
            centroids = prune_centroids(sample, centroids, k, num_threads=num_threads)
        del sample
    elif init == "k-means||":
        centroids = kmeans_parallel(executor, k, rng, num_threads=num_threads)
    else:
        raise ValueError(f"init={init!r} is not one of 'k-means++', 'k-means||', 'random' or a (k, d) array")
    init_seconds = time.perf_counter() - t0
    logger.info("k-means init %s: k=%d, N=%d, d=%d in %.2f s", init if isinstance(init, str) else "array",
                k, n, d, init_seconds)

    if mode == "full":
        res = _lloyd(executor, centroids, int(n_iter), tol, rng, n)
    else:
        res = _minibatch(executor, centroids, int(n_iter), tol, rng, n, batch_chunks)
    res.init_seconds = init_seconds
    res.seconds = time.perf_counter() - t0
    logger.info("k-means done: %d iterations, inertia/N=%.6g, %d reseeded, %.2f s", res.n_iter,
                res.mean_inertia, res.num_reseeded, res.seconds)
    return res


def _checked_stats(executor: GraphExecutor, centroids: np.ndarray, n: int,
                   chunk_ids: list[int] | None = None) -> AssignStats:
    stats = executor.assign_reduce(centroids, chunk_ids)
    if chunk_ids is None and stats.num_points != n:
        raise RuntimeError(f"executor assigned {stats.num_points} rows but the source has N={n}")
    if not math.isfinite(stats.inertia):
        raise NonFiniteDataError("the k-means inertia is NaN/Inf: the embeddings contain NaN/Inf values")
    return stats


def _lloyd(executor: GraphExecutor, centroids: np.ndarray, n_iter: int, tol: float,
           rng: np.random.Generator, n: int) -> KMeansResult:
    k, d = centroids.shape
    history: list[float] = []
    reseeded = 0
    converged = False
    it = 0
    while True:
        stats = _checked_stats(executor, centroids, n)
        history.append(stats.inertia)
        logger.debug("Lloyd pass %d: inertia/N=%.6g", it, stats.inertia / n)
        if len(history) > 1 and _rel_change(history[-2], history[-1]) < tol:
            converged = True
            break
        if it >= n_iter:
            break
        new = centroids.astype(np.float64)
        nz = stats.counts > 0
        new[nz] = stats.sums[nz] / stats.counts[nz, None]
        empty_ids = np.flatnonzero(~nz)
        if empty_ids.size:
            scale = math.sqrt(max(stats.inertia, 0.0) / n / d)
            reseeded += _split_empty(new, stats.counts.astype(np.float64), empty_ids, scale, rng)
        centroids = new.astype(np.float32)
        it += 1
    return KMeansResult(centroids, stats.counts, stats.inertia, history, it, 0.0, 0.0, converged, reseeded)


def _minibatch(executor: GraphExecutor, centroids: np.ndarray, n_iter: int, tol: float,
               rng: np.random.Generator, n: int, batch_chunks: int | None) -> KMeansResult:
    k, d = centroids.shape
    num_chunks = int(executor.source.num_chunks())
    bc = max(1, round(num_chunks / 10)) if batch_chunks is None else int(batch_chunks)
    if bc < 1:
        raise ValueError(f"batch_chunks={batch_chunks} must be at least 1")
    bc = min(bc, num_chunks)
    c = centroids.astype(np.float64)
    acc = np.zeros(k, np.float64)
    history: list[float] = []
    reseeded = 0
    converged = False
    epochs = 0
    for epoch in range(n_iter):
        perm = rng.permutation(num_chunks)
        epoch_inertia = 0.0
        epoch_counts = np.zeros(k, np.int64)
        for s in range(0, num_chunks, bc):
            ids = sorted(int(i) for i in perm[s:s + bc])
            st = _checked_stats(executor, c.astype(np.float32), n, ids)
            epoch_inertia += st.inertia
            epoch_counts += st.counts
            hit = st.counts > 0
            nb = st.counts[hit].astype(np.float64)
            acc[hit] += nb
            c[hit] += (st.sums[hit] - nb[:, None] * c[hit]) / acc[hit, None]
        epochs += 1
        empty_ids = np.flatnonzero(epoch_counts == 0)
        if empty_ids.size:
            scale = math.sqrt(max(epoch_inertia, 0.0) / n / d)
            done = _split_empty(c, acc, empty_ids, scale, rng)
            reseeded += done
            logger.debug("minibatch epoch %d: %d empty clusters, %d split", epoch, empty_ids.size, done)
        history.append(epoch_inertia)
        logger.debug("minibatch epoch %d: batch inertia/N=%.6g", epoch, epoch_inertia / n)
        if len(history) > 1 and _rel_change(history[-2], history[-1]) < tol:
            converged = True
            break
    centroids = c.astype(np.float32)
    stats = _checked_stats(executor, centroids, n)
    history.append(stats.inertia)
    return KMeansResult(centroids, stats.counts, stats.inertia, history, epochs, 0.0, 0.0, converged, reseeded)

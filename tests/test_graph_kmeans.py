"""K-means anchors: per-chunk kernels vs brute-force oracles, the sequential executor, init and fit."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from vhindex.graph import (
    ArrayChunkSource,
    AssignStats,
    GraphExecutor,
    NonFiniteDataError,
    SequentialExecutor,
    assign_chunk,
    assign_stats,
    fit_kmeans,
    kmeans_parallel,
    kmeans_plusplus,
    nearest_k,
)
from vhindex.graph.kmeans import faiss_threads, prune_centroids, segment_sums


def _sqdist64(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return ((x[:, None, :].astype(np.float64) - c[None, :, :].astype(np.float64)) ** 2).sum(-1)


def _int_data(rng: np.random.Generator, n: int, k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer data: float32 distances are exact, so ties are real ties; centroids duplicated."""
    x = rng.integers(-2, 3, (n, d)).astype(np.float32)
    c = rng.integers(-2, 3, (k, d)).astype(np.float32)
    c[k // 2:] = c[: k - k // 2][rng.permutation(k - k // 2)]  # every centroid has a twin
    return x, c


def _blobs(seed: int = 0, n: int = 3000, k: int = 20, d: int = 16, spread: float = 0.5):
    rng = np.random.default_rng(seed)
    centres = (rng.standard_normal((k, d)) * 4).astype(np.float32)
    labels = rng.integers(0, k, n)
    x = (centres[labels] + spread * rng.standard_normal((n, d))).astype(np.float32)
    return x, centres


def _objective(x: np.ndarray, c: np.ndarray) -> float:
    return float(_sqdist64(x, c).min(1).sum())


# --------------------------------------------------------------------------------------------------
# kernels vs oracles
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [7, 300])  # below and above faiss's BLAS threshold (20 queries)
def test_assign_chunk_matches_oracle_with_exact_ties(n):
    x, c = _int_data(np.random.default_rng(n), n, 12, 6)
    ids, dist = assign_chunk(x, c)
    d64 = _sqdist64(x, c)
    np.testing.assert_array_equal(ids, np.argmin(d64, axis=1))  # argmin: first (lowest) index of ties
    np.testing.assert_array_equal(dist, d64.min(1).astype(np.float32))
    assert ids.dtype == np.int64 and dist.dtype == np.float32


def test_assign_chunk_random_data_matches_oracle_up_to_near_ties():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    c = rng.standard_normal((40, 32)).astype(np.float32)
    ids, dist = assign_chunk(x, c, num_threads=1)
    d64 = _sqdist64(x, c)
    ref = np.argmin(d64, axis=1)
    differ = ids != ref
    assert differ.mean() < 0.01
    np.testing.assert_allclose(d64[np.arange(500), ids], d64.min(1), rtol=1e-5)
    np.testing.assert_allclose(dist, d64.min(1), rtol=1e-4, atol=1e-4)


def test_assign_stats_matches_oracle():
    x, c = _int_data(np.random.default_rng(2), 400, 10, 5)
    st = assign_stats(x, c)
    ids = np.argmin(_sqdist64(x, c), axis=1)
    sums = np.zeros((10, 5))
    np.add.at(sums, ids, x.astype(np.float64))
    np.testing.assert_array_equal(st.sums, sums)
    np.testing.assert_array_equal(st.counts, np.bincount(ids, minlength=10))
    assert st.inertia == pytest.approx(_sqdist64(x, c).min(1).sum())
    assert st.num_points == 400 and st.sums.dtype == np.float64 and st.counts.dtype == np.int64


def test_segment_sums_equal_add_at_in_float64():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((1000, 8)) * 1e4).astype(np.float32)
    ids = rng.integers(0, 7, 1000)
    ref = np.zeros((9, 8))
    np.add.at(ref, ids, x.astype(np.float64))
    sums, counts = segment_sums(x, ids, 9)
    np.testing.assert_array_equal(sums, ref)
    np.testing.assert_array_equal(counts, np.bincount(ids, minlength=9))


@pytest.mark.parametrize("n,a", [(9, 4), (250, 5), (250, 1), (60, 12)])
def test_nearest_k_matches_stable_argsort_with_ties(n, a):
    x, c = _int_data(np.random.default_rng(n + a), n, 12, 4)
    ids, dist = nearest_k(x, c, a)
    d64 = _sqdist64(x, c)
    ref = np.argsort(d64, axis=1, kind="stable")[:, :a]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_array_equal(dist, np.take_along_axis(d64, ref, 1).astype(np.float32))
    assert ids.dtype == np.int32 and ids.shape == (n, a)


def test_nearest_k_rejects_bad_a():
    with pytest.raises(ValueError, match="a=5 nearest anchors .* k=4"):
        nearest_k(np.zeros((3, 2), np.float32), np.zeros((4, 2), np.float32), 5)


def test_faiss_threads_restores_setting():
    before = faiss.omp_get_max_threads()
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


def test_kernel_errors_name_the_problem():
    x = np.ones((30, 4), np.float32)
    x[17, 2] = np.nan
    with pytest.raises(NonFiniteDataError, match=r"chunk 3 .*global row 117"):
        assign_stats(x, np.zeros((2, 4), np.float32), chunk=3, row_offset=100)
    with pytest.raises(ValueError, match="dimension mismatch: data has d=4 but centroids have d=3"):
        assign_chunk(np.ones((5, 4), np.float32), np.ones((2, 3), np.float32))


# --------------------------------------------------------------------------------------------------
# sequential executor
# --------------------------------------------------------------------------------------------------


def test_array_source_and_executor_basics():
    x = np.random.default_rng(4).standard_normal((103, 6)).astype(np.float32)
    src = ArrayChunkSource(x, 20)
    assert (src.num_chunks(), src.chunk_rows(5), src.num_rows, src.dim) == (6, 3, 103, 6)
    ex = SequentialExecutor(src)
    assert isinstance(ex, GraphExecutor)
    rows = np.array([0, 19, 20, 21, 64, 102])
    np.testing.assert_array_equal(ex.take_rows(rows), x[rows])
    assert ex.take_rows(np.array([], np.int64)).shape == (0, 6)
    with pytest.raises(ValueError, match="sorted unique"):
        ex.take_rows(np.array([5, 3]))
    with pytest.raises(ValueError, match=r"\[0, 103\)"):
        ex.take_rows(np.array([5, 103]))
    c = x[:7]
    ids, dist = ex.nearest(c, 3)
    ref_ids, ref_dist = nearest_k(x, c, 3)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(dist, ref_dist)


def test_assign_reduce_chunking():
    x = np.random.default_rng(5).standard_normal((1000, 8)).astype(np.float32)
    c = x[:15]
    a1 = SequentialExecutor(ArrayChunkSource(x, 100)).assign_reduce(c)
    a2 = SequentialExecutor(ArrayChunkSource(x, 100)).assign_reduce(c)
    b = SequentialExecutor(ArrayChunkSource(x, 333)).assign_reduce(c)
    one = assign_stats(x, c)
    np.testing.assert_array_equal(a1.sums, a2.sums)  # same chunking: bit-identical
    assert a1.inertia == a2.inertia
    for other in (b, one):
        np.testing.assert_array_equal(a1.counts, other.counts)
        np.testing.assert_allclose(a1.sums, other.sums, rtol=1e-12, atol=1e-10)
        assert a1.inertia == pytest.approx(other.inertia, rel=1e-12)
    # a chunk subset in the given order equals the sum of per-chunk stats in that order
    ex = SequentialExecutor(ArrayChunkSource(x, 100))
    part = ex.assign_reduce(c, [2, 7])
    ref = AssignStats.zeros(15, 8) + assign_stats(x[200:300], c) + assign_stats(x[700:800], c)
    np.testing.assert_array_equal(part.sums, ref.sums)
    assert part.num_points == 200


# --------------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------------


def test_kmeans_plusplus_deterministic_and_better_than_random():
    x, centres = _blobs()
    c1, i1 = kmeans_plusplus(x, 20, np.random.default_rng(0))
    c2, i2 = kmeans_plusplus(x, 20, np.random.default_rng(0))
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(c1, x[i1])
    assert len(np.unique(i1)) == 20
    rand = x[np.random.default_rng(0).choice(len(x), 20, replace=False)]
    assert _objective(x, c1) < 0.5 * _objective(x, rand)


def test_kmeans_plusplus_weighted_ignores_zero_weight_rows():
    x, _ = _blobs(n=500)
    w = np.zeros(500)
    w[:100] = 1.0
    _, idx = kmeans_plusplus(x, 10, np.random.default_rng(1), sample_weight=w)
    assert idx.max() < 100


def test_prune_centroids_removes_duplicate_seeds():
    x, centres = _blobs(n=2000, k=10)
    rng = np.random.default_rng(7)
    dup = centres[[0, 0, 3, 5]] + 0.05 * rng.standard_normal((4, 16)).astype(np.float32)
    seeds = np.concatenate([centres, dup])
    kept = prune_centroids(x, seeds, 10, frac=1.0)
    assert kept.shape == (10, 16)
    assert len(np.unique(nearest_k(kept, centres, 1)[0])) == 10  # one seed per real cluster


def test_kmeans_parallel_deterministic_and_good():
    x, centres = _blobs(n=2000)
    ex = SequentialExecutor(ArrayChunkSource(x, 300))
    s1 = kmeans_parallel(ex, 20, np.random.default_rng(3), rounds=3)
    s2 = kmeans_parallel(SequentialExecutor(ArrayChunkSource(x, 300)), 20, np.random.default_rng(3), rounds=3)
    np.testing.assert_array_equal(s1, s2)
    assert s1.shape == (20, 16)
    # seeds sit at weighted means of D^2-sampled candidates (biased outwards): good, not optimal
    assert _objective(x, s1) < 1.3 * _objective(x, centres)
    assert len(np.unique(nearest_k(s1, centres, 1)[0])) == 20  # one seed per real cluster
    rand = x[np.random.default_rng(3).choice(len(x), 20, replace=False)]
    assert _objective(x, s1) < 0.5 * _objective(x, rand)


# --------------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------------


def _numpy_lloyd(x: np.ndarray, c: np.ndarray, n_iter: int) -> np.ndarray:
    c = c.astype(np.float64)
    for _ in range(n_iter):
        ids = np.argmin(_sqdist64(x, c), axis=1)
        for j in range(len(c)):
            if np.any(ids == j):
                c[j] = x[ids == j].astype(np.float64).mean(0)
    return c


def test_full_lloyd_equals_numpy_reference():
    x, _ = _blobs(n=1200, k=8, spread=2.0)
    init = x[:8].copy()
    res = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 250)), 8, init=init, n_iter=6, tol=0.0)
    ref = _numpy_lloyd(x, init, 6)
    np.testing.assert_allclose(res.centroids, ref, rtol=1e-5, atol=1e-5)
    assert res.n_iter == 6 and len(res.inertia_history) == 7 and not res.converged
    assert res.inertia == pytest.approx(_objective(x, res.centroids), rel=1e-5)
    assert np.all(np.diff(res.inertia_history) <= 1e-6 * res.inertia_history[0])
    assert res.counts.sum() == 1200


def test_fit_recovers_blobs_deterministically_and_independent_of_chunking():
    x, centres = _blobs()
    r1 = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 400)), 20, seed=1)
    r2 = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 400)), 20, seed=1)
    np.testing.assert_array_equal(r1.centroids, r2.centroids)
    assert r1.inertia_history == r2.inertia_history
    assert r1.inertia <= 1.02 * _objective(x, centres)
    assert r1.converged
    r3 = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 999)), 20, seed=1)
    np.testing.assert_allclose(r3.centroids, r1.centroids, rtol=1e-5, atol=1e-5)
    rnd = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 400)), 20, seed=1, init="random")
    assert rnd.inertia > 1.3 * r1.inertia  # random seeds miss clusters; Lloyd cannot recover


@pytest.mark.parametrize("init", ["k-means||", "random"])
def test_fit_other_inits_run(init):
    x, centres = _blobs(n=1000, k=10)
    res = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 300)), 10, init=init, seed=2)
    assert res.centroids.shape == (10, 16) and np.isfinite(res.centroids).all()
    if init == "k-means||":
        assert res.inertia <= 1.02 * _objective(x, centres)


def test_minibatch_recovers_blobs():
    x, centres = _blobs()
    ex = SequentialExecutor(ArrayChunkSource(x, 200))
    res = fit_kmeans(ex, 20, mode="minibatch", batch_chunks=3, n_iter=5, seed=0)
    assert res.inertia <= 1.05 * _objective(x, centres)
    assert res.inertia == pytest.approx(_objective(x, res.centroids), rel=1e-5)
    again = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 200)), 20, mode="minibatch", batch_chunks=3, n_iter=5)
    np.testing.assert_array_equal(res.centroids, again.centroids)


def _numpy_minibatch(x, c, chunk_rows, batch_chunks, epochs, seed):
    """Sculley's update, written out: chunk order from the same seeded generator as fit_kmeans."""
    rng = np.random.default_rng(seed)
    n_chunks = -(-len(x) // chunk_rows)
    c = c.astype(np.float64)
    acc = np.zeros(len(c))
    for _ in range(epochs):
        perm = rng.permutation(n_chunks)
        for s in range(0, n_chunks, batch_chunks):
            rows = np.concatenate([np.arange(i * chunk_rows, min(len(x), (i + 1) * chunk_rows))
                                   for i in sorted(perm[s:s + batch_chunks])])
            xb = x[rows].astype(np.float64)
            ids = np.argmin(_sqdist64(xb, c), axis=1)
            for j in np.unique(ids):
                pts = xb[ids == j]
                acc[j] += len(pts)
                c[j] += (pts.sum(0) - len(pts) * c[j]) / acc[j]
    return c


def test_minibatch_equals_numpy_reference():
    x, centres = _blobs(n=900, k=6, spread=1.0)
    init = centres + 0.3
    res = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 100)), 6, init=init, mode="minibatch", batch_chunks=2,
                     n_iter=2, tol=0.0, seed=5)
    ref = _numpy_minibatch(x, init, 100, 2, 2, seed=5)
    np.testing.assert_allclose(res.centroids, ref, rtol=1e-5, atol=1e-5)
    assert res.n_iter == 2 and len(res.inertia_history) == 3


class _CountingSource(ArrayChunkSource):
    def __init__(self, x, chunk_rows):
        super().__init__(x, chunk_rows)
        self.loaded: list[int] = []

    def load_chunk(self, i):
        self.loaded.append(i)
        return super().load_chunk(i)


def test_take_rows_loads_only_needed_chunks():
    x = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    src = _CountingSource(x, 25)
    out = SequentialExecutor(src).take_rows(np.array([3, 7, 130, 149, 150]))
    np.testing.assert_array_equal(out, x[[3, 7, 130, 149, 150]])
    assert src.loaded == [0, 5, 6]


@pytest.mark.parametrize("mode", ["full", "minibatch"])
def test_empty_clusters_are_reseeded_not_dropped(mode):
    rng = np.random.default_rng(8)
    distinct = rng.standard_normal((30, 5)).astype(np.float32)
    x = np.repeat(distinct, 5, axis=0)[rng.permutation(150)]
    init = np.concatenate([distinct[:25], distinct[:5]])  # 5 twins: their second copies start empty
    res = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 40)), 30, init=init, n_iter=10, mode=mode,
                     batch_chunks=2)
    assert res.centroids.shape == (30, 5) and np.isfinite(res.centroids).all()
    assert res.num_reseeded >= 5
    assert res.counts.sum() == 150
    if mode == "full":
        assert res.inertia < 1e-6 * _objective(x, distinct[:1])  # one centroid per distinct point again
    # more centroids than distinct points: still k finite centroids, some necessarily empty
    res = fit_kmeans(SequentialExecutor(ArrayChunkSource(x, 40)), 32, n_iter=5, mode=mode, batch_chunks=2)
    assert res.centroids.shape == (32, 5) and np.isfinite(res.centroids).all()
    assert (res.counts == 0).sum() >= 2


def test_fit_errors():
    x = np.random.default_rng(9).standard_normal((50, 4)).astype(np.float32)
    ex = SequentialExecutor(ArrayChunkSource(x, 20))
    with pytest.raises(ValueError, match="k=51 exceeds the number of videos N=50"):
        fit_kmeans(ex, 51)
    with pytest.raises(ValueError, match="k=0 must be at least 1"):
        fit_kmeans(ex, 0)
    with pytest.raises(ValueError, match="no rows"):
        fit_kmeans(SequentialExecutor(ArrayChunkSource(np.zeros((0, 4), np.float32), 10)), 3)
    with pytest.raises(ValueError, match="data has d=4"):
        fit_kmeans(ex, 3, init=np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="init has 2 centroids but k=3"):
        fit_kmeans(ex, 3, init=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="mode='lloyd'"):
        fit_kmeans(ex, 3, mode="lloyd")
    with pytest.raises(ValueError, match="init='kmeans'"):
        fit_kmeans(ex, 3, init="kmeans")
    bad = x.copy()
    bad[45, 1] = np.inf
    exb = SequentialExecutor(ArrayChunkSource(bad, 20))
    with pytest.raises(NonFiniteDataError, match=r"global row 45 \(chunk 2\)"):
        fit_kmeans(exb, 3, init_sample=50)  # the sample holds the bad row
    with pytest.raises(NonFiniteDataError, match="chunk 2 .*global row 45"):
        fit_kmeans(exb, 3, init=x[:3])  # found by the assignment pass

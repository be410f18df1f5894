"""The implicit anchor graph against a literal port of the released dense BTH construction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vhindex.graph.anchor_graph import AnchorGraph, anchor_graph, nearest_anchors


# --------------------------------------------------------------------------- released code, ported literally
# BTH utils/calculate_neighbors.py (pdist2 + ZZ, sigma=None) and utils/apro_adj.py, dense N x N.
def _pdist2_sqeuclidean(X, Y):
    X = X.astype("float64")
    Y = Y.astype("float64")
    nx = X.shape[0]
    ny = Y.shape[0]
    XX = np.tile((X**2).sum(1), (ny, 1)).T
    YY = np.tile((Y**2).sum(1), (nx, 1))
    XY = X.dot(Y.T)
    sqeuc = XX + YY - 2 * XY
    return np.clip(sqeuc, 0, np.inf)


def _zz_tail(pos, val, n, m, nnanchors):
    """The part of ZZ after the nearest-anchor selection (shared by both oracles below)."""
    dist = np.sqrt(val[:, nnanchors - 1])
    sigma = np.mean(dist) / np.sqrt(2)
    c = 2 * np.power(sigma, 2)
    exponent = -val / c
    shift = np.amin(exponent, 1, keepdims=True)
    denom = np.log(np.sum(np.exp(exponent - shift), 1, keepdims=True)) + shift
    val = np.exp(exponent - denom)
    Z = np.zeros((n, m), dtype="float32")
    for i in range(nnanchors):
        Z[np.arange(n), pos[:, i]] = val[:, i]
    return Z, sigma, pos


def released_zz(data, anchors, nnanchors):
    n = data.shape[0]
    m = anchors.shape[0]
    sqdist = _pdist2_sqeuclidean(data, anchors)
    val = np.zeros((n, nnanchors))
    pos = np.zeros((n, nnanchors), dtype=np.int64)
    for i in range(nnanchors):
        pos[:, i] = np.argmin(sqdist, 1)
        val[:, i] = sqdist[np.arange(len(sqdist)), pos[:, i]]
        sqdist[np.arange(n), pos[:, i]] = float("inf")
    return _zz_tail(pos, val, n, m, nnanchors)


def released_zz_from_neighbors(pos5, val5, m, nnanchors):
    n = pos5.shape[0]
    val = np.zeros((n, nnanchors))
    val[:] = val5[:, :nnanchors]
    return _zz_tail(pos5[:, :nnanchors], val, n, m, nnanchors)


def released_adj(Zs):
    """apro_adj.py: SS_s = (Z diag(colsum^-1) Z^T > 1e-5); adj = 2 (SS5 - SS4) + SS3."""
    SS = {}
    for s, Z in Zs.items():
        colsum = Z.sum(0)
        Adj = np.dot(np.dot(Z, np.diag(colsum**-1)), Z.T)
        SS[s] = (Adj > 1e-5).astype(np.float32)
    return 2 * (SS[5] - SS[4]) + SS[3]


# --------------------------------------------------------------------------- data
def _clustered(seed, n, k, d, *, n_centers=12, dup_points=0, dup_anchors=0, anchors_from_data=True):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, d)) * 4
    scale = rng.choice([0.3, 1.0, 2.0], n)[:, None]
    x = (centers[rng.integers(0, n_centers, n)] + rng.normal(size=(n, d)) * scale).astype(np.float32)
    if dup_points:
        src = rng.integers(0, n, dup_points)
        dst = rng.choice(n, dup_points, replace=False)
        x[dst] = x[src]
    if anchors_from_data:
        u = x[rng.choice(n, k, replace=False)] + rng.normal(size=(k, d)).astype(np.float32) * 0.2
    else:
        u = (centers[rng.integers(0, n_centers, k)] + rng.normal(size=(k, d))).astype(np.float32)
    if dup_anchors:
        u[-dup_anchors:] = u[:dup_anchors]
    return x, u.astype(np.float32)


def _all_pairs(n):
    ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return ii, jj


DATASETS = [
    # (seed, N, k, d, extras) -- many shared anchors (k=10) up to sparse (k=300); ties; one at N=3000
    (0, 3000, 10, 8, {}),
    (1, 1200, 40, 4, {"dup_points": 200}),
    (2, 1000, 100, 16, {"dup_anchors": 5}),
    (3, 900, 300, 6, {}),
    (6, 700, 15, 3, {"anchors_from_data": False}),
    (4, 800, 25, 2, {"dup_points": 300, "dup_anchors": 3}),
]


@pytest.fixture(scope="module", params=DATASETS, ids=[f"N{d[1]}-k{d[2]}-s{d[0]}" for d in DATASETS])
def case(request):
    seed, n, k, d, extra = request.param
    x, u = _clustered(seed, n, k, d, **extra)
    zs = {}
    for s in (3, 4, 5):
        zs[s] = released_zz(x, u, s)
    assert (zs[3][0].sum(0) > 0).all(), "every anchor must be used, else the released matrix is NaN"
    adj = released_adj({s: v[0] for s, v in zs.items()})
    return x, u, zs, adj


def test_released_construction_reproduced_for_every_pair(case):
    x, u, zs, adj = case
    pos5 = zs[5][2]
    # the released sqdists (float64) in the released order feed the implicit graph
    sq = _pdist2_sqeuclidean(x, u)
    val5 = np.take_along_axis(sq, pos5, axis=1)
    g = AnchorGraph.from_neighbors(pos5, val5, u.shape[0])
    for s in (3, 4, 5):
        Z, sigma, pos = zs[s]
        lv = g.levels[s]
        assert lv.bandwidth == sigma
        np.testing.assert_array_equal(lv.colsum, Z.sum(0))  # float32 sequential column sums, bit for bit
        np.testing.assert_array_equal(lv.z, np.take_along_axis(Z, lv.ids.astype(np.int64), axis=1))
    ii, jj = _all_pairs(x.shape[0])
    # the float32 values themselves, not only the thresholded bits. The emulation replays a sequential
    # FMA chain, which is the accumulation order of OpenBLAS's float32 GEMM on some CPUs (bit for bit on
    # the Intel machines this was written on) but not all (AMD EPYC: up to 2 ulps apart), so the values
    # are held to 4 ulps of the BLAS product and the thresholded graph below to exact equality.
    n = x.shape[0]
    rows = np.arange(n) if n <= 1200 else np.random.default_rng(0).choice(n, 400, replace=False)
    ri, rj = np.meshgrid(rows, np.arange(n), indexing="ij")
    for s in (3, 4, 5):
        Z = zs[s][0]
        dense = np.dot(np.dot(Z, np.diag(Z.sum(0) ** -1)), Z.T)[rows]
        vals, shared = g.levels[s].affinity(ri.ravel(), rj.ravel(), emulate_float32=True)
        np.testing.assert_array_max_ulp(vals.reshape(dense.shape), dense, maxulp=4)
        np.testing.assert_array_equal(shared.reshape(dense.shape) > 0, dense > 0)
    mine = g.adjacency(ii, jj)
    assert mine.dtype == np.int8
    bad = np.argwhere(mine != adj)
    assert bad.size == 0, f"{len(bad)} pairs differ, first {bad[:5].tolist()}"
    # tags map 1 -> +1, 2 -> -1, everything else -> 0
    expected = np.where(adj == 1, 1, np.where(adj == 2, -1, 0))
    np.testing.assert_array_equal(g.tags(ii, jj), expected)
    assert (adj == 2).any() and (adj == 1).any() and (adj == 0).any()


def test_anchor_graph_entry_point_matches_released(case):
    x, u, zs, adj = case
    g = anchor_graph(x, u)
    np.testing.assert_array_equal(g.anchor_ids, zs[5][2])
    rng = np.random.default_rng(5)
    i = rng.integers(0, x.shape[0], 200_000)
    j = rng.integers(0, x.shape[0], 200_000)
    np.testing.assert_array_equal(g.adjacency(i, j), adj[i, j])


def test_from_faiss_like_float32_distances_keeps_structure():
    x, u = _clustered(7, 600, 30, 8)
    ids, sq = nearest_anchors(x, u, 5)
    g64 = AnchorGraph.from_neighbors(ids, sq, 30)
    g32 = AnchorGraph.from_neighbors(ids, sq.astype(np.float32) - 1e-7, 30)  # tiny negatives clipped
    ii, jj = _all_pairs(600)
    agree = (g64.adjacency(ii, jj) == g32.adjacency(ii, jj)).mean()
    assert agree > 0.999


def test_unused_anchor_is_ignored_not_nan():
    """An anchor in nobody's 3-list makes the released matrix NaN (all SS3 = 0); we drop it."""
    x, u = _clustered(8, 500, 20, 4)
    far = np.full((1, 4), 1e3, np.float32)
    u2 = np.concatenate([u, far])  # anchor 20: never among anyone's 5 nearest
    g = anchor_graph(x, u2)
    ref = released_adj({s: released_zz(x, u, s)[0] for s in (3, 4, 5)})
    ii, jj = _all_pairs(500)
    np.testing.assert_array_equal(g.adjacency(ii, jj), ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        released = released_adj({s: released_zz(x, u2, s)[0] for s in (3, 4, 5)})
    assert (released == 0).all()  # what the released code would have produced


# --------------------------------------------------------------------------- NPH
def _nph_dense(x, u, a, t):
    sq = _pdist2_sqeuclidean(x, u)
    n, m = sq.shape
    pos = np.argsort(sq, axis=1, kind="stable")[:, :a]
    dist = np.sqrt(np.take_along_axis(sq, pos, axis=1))
    if t is None:
        t = dist[:, a - 1].mean()
    num = np.exp(-dist / t)
    Y = np.zeros((n, m))
    Y[np.arange(n)[:, None], pos] = num / num.sum(1, keepdims=True)
    lam = Y.sum(0)
    inv = np.where(lam > 0, 1 / np.where(lam > 0, lam, 1), 0)
    A = Y @ np.diag(inv) @ Y.T
    return np.where(A > 0, 1, -1), t


@pytest.mark.parametrize("a,t", [(3, None), (2, 0.7), (5, None)])
def test_nph_rule_matches_dense_eq_13_14(a, t):
    x, u = _clustered(11, 700, 40, 6)
    ref, t_used = _nph_dense(x, u, a, t)
    g = anchor_graph(x, u, rule="nph", a=a, t=t)
    assert g.params["t"] == pytest.approx(t_used, rel=1e-12)
    ii, jj = _all_pairs(700)
    np.testing.assert_array_equal(g.adjacency(ii, jj), ref)
    np.testing.assert_array_equal(g.tags(ii, jj), ref)


# --------------------------------------------------------------------------- gaussian (interpretation)
def test_gaussian_rule_matches_dense_row_gaussians():
    x, u = _clustered(12, 600, 30, 5)
    a, lam = 3, 0.5
    g = anchor_graph(x, u, rule="gaussian", a=a, lam=lam)
    ids, sq = nearest_anchors(x, u, a)
    val = sq.astype(np.float64)
    sigma = np.mean(np.sqrt(val[:, a - 1])) / np.sqrt(2)
    z = np.exp(-val / (2 * sigma**2))
    z /= z.sum(1, keepdims=True)
    Z = np.zeros((600, 30))
    Z[np.arange(600)[:, None], ids] = z
    A = Z @ np.diag(1 / Z.sum(0)) @ Z.T
    nz = A > 0
    mu = np.array([A[i, nz[i]].mean() for i in range(600)])
    sd = np.array([A[i, nz[i]].std() for i in range(600)])
    gmu, gsd = g.row_stats()
    np.testing.assert_allclose(gmu, mu, rtol=1e-9)
    np.testing.assert_allclose(gsd, sd, rtol=1e-7)
    hi = mu[:, None] + lam * sd[:, None]
    lo = mu[:, None] - lam * sd[:, None]
    ref = np.where(nz & (A >= hi), 1, np.where(nz & (A <= lo), -1, 0))
    ii, jj = _all_pairs(600)
    mine = g.adjacency(ii, jj)
    boundary = (np.abs(A - hi) < 1e-9 * hi) | (np.abs(A - lo) < 1e-9 * np.abs(lo))
    assert ((mine != ref) & ~boundary).sum() == 0
    assert (ref == 1).any() and (ref == -1).any() and (ref == 0).any()


# --------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("rule,params", [("bth", {}), ("nph", {"a": 3}), ("gaussian", {"a": 4, "lam": 1.0})])
def test_to_arrays_from_arrays_roundtrip(rule, params):
    x, u = _clustered(13, 400, 20, 4)
    g = anchor_graph(x, u, rule=rule, **params)
    arrays, meta = g.to_arrays()
    meta = json.loads(json.dumps(meta))
    g2 = AnchorGraph.from_arrays({k: v.copy() for k, v in arrays.items()}, meta)
    ii, jj = _all_pairs(400)
    np.testing.assert_array_equal(g.adjacency(ii, jj), g2.adjacency(ii, jj))
    bad = dict(meta, num_videos=399)
    with pytest.raises(ValueError, match="399"):
        AnchorGraph.from_arrays(arrays, bad)
    with pytest.raises(ValueError, match="format"):
        AnchorGraph.from_arrays(arrays, dict(meta, format="other"))


def test_adjacency_broadcasts_and_checks_indices():
    x, u = _clustered(14, 300, 15, 4)
    g = anchor_graph(x, u)
    row = g.adjacency(7, np.arange(300))
    assert row.shape == (300,)
    np.testing.assert_array_equal(row, g.adjacency(np.full(300, 7), np.arange(300)))
    assert g.adjacency(np.arange(4)[:, None], np.arange(5)[None, :]).shape == (4, 5)
    with pytest.raises(IndexError, match="300"):
        g.adjacency(0, 300)
    with pytest.raises(IndexError, match="-1"):
        g.tags(-1, 0)
    with pytest.raises(TypeError, match="integer"):
        g.adjacency(0.5, 1)


# --------------------------------------------------------------------------- bad input
def _good(n=50, k=12):
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.random((n, k)), axis=1)[:, :5].astype(np.int32)
    sq = np.sort(rng.random((n, 5)), axis=1)
    return ids, sq


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda ids, sq, k: (np.where(ids == ids[0, 0], 12, ids), sq, k), "out of range"),
        (lambda ids, sq, k: (ids - 20, sq, k), "out of range"),
        (lambda ids, sq, k: (ids[:, :4], sq[:, :4], k), "needs 5"),
        (lambda ids, sq, k: (ids, np.where(np.arange(5) == 2, np.nan, sq), k), "NaN"),
        (lambda ids, sq, k: (ids, sq[:-1], k), "same shape"),
        (lambda ids, sq, k: (ids, sq, 4), "smaller than the 5"),
        (lambda ids, sq, k: (ids[:0], sq[:0], k), "no videos"),
        (lambda ids, sq, k: (ids, sq[:, ::-1], k), "not sorted"),
        (lambda ids, sq, k: (np.repeat(ids[:, :1], 5, axis=1), sq, k), "repeats"),
        (lambda ids, sq, k: (ids.ravel(), sq.ravel(), k), "2-D"),
        (lambda ids, sq, k: (ids, np.zeros_like(sq), k), "sigma"),
    ],
)
def test_from_neighbors_rejects_bad_input(mutate, match):
    ids, sq = _good()
    a, b, k = mutate(ids, sq, 12)
    with pytest.raises(ValueError, match=match):
        AnchorGraph.from_neighbors(a, b, k)


def test_bad_rules_params_and_embeddings():
    ids, sq = _good()
    with pytest.raises(ValueError, match="unknown graph rule"):
        AnchorGraph.from_neighbors(ids, sq, 12, rule="knn")
    with pytest.raises(ValueError, match="unexpected"):
        AnchorGraph.from_neighbors(ids, sq, 12, rule="bth", a=3)
    with pytest.raises(ValueError, match="a=0"):
        AnchorGraph.from_neighbors(ids, sq, 12, rule="nph", a=0)
    with pytest.raises(ValueError, match="t="):
        AnchorGraph.from_neighbors(ids, sq, 12, rule="nph", t=-1.0)
    with pytest.raises(ValueError, match="lam="):
        AnchorGraph.from_neighbors(ids, sq, 12, rule="gaussian", lam=-1.0)
    with pytest.raises(TypeError, match="anchor_ids must be integers"):
        AnchorGraph.from_neighbors(ids.astype(float), sq, 12)
    x, u = _clustered(1, 40, 8, 4)
    with pytest.raises(ValueError, match="dimension 4 but anchors have 3"):
        anchor_graph(x, u[:, :3])
    with pytest.raises(ValueError, match="empty input"):
        anchor_graph(x[:0], u)
    with pytest.raises(ValueError, match="use more anchors"):
        anchor_graph(x, u[:4])
    x_nan = x.copy()
    x_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        anchor_graph(x_nan, u)
    with pytest.raises(ValueError, match="row_stats"):
        anchor_graph(x, u).row_stats()

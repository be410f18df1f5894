"""PairSampler draws the released DKPH/BTH pair distribution (checked against a dense oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, chisquare

from vhindex.graph.anchor_graph import AnchorGraph, anchor_graph, nearest_anchors
from vhindex.graph.pairs import PairSampler

try:
    import numba  # noqa: F401

    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False

BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed"))]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _released_adj_from_neighbors(ids, sq, k):
    """BTH ZZ (after the argmin selection) + apro_adj, dense, as released."""
    n = ids.shape[0]
    SS = {}
    for s in (3, 4, 5):
        val = np.zeros((n, s))
        val[:] = sq[:, :s]
        sigma = np.mean(np.sqrt(val[:, s - 1])) / np.sqrt(2)
        c = 2 * np.power(sigma, 2)
        exponent = -val / c
        shift = np.amin(exponent, 1, keepdims=True)
        denom = np.log(np.sum(np.exp(exponent - shift), 1, keepdims=True)) + shift
        val = np.exp(exponent - denom)
        Z = np.zeros((n, k), dtype="float32")
        for i in range(s):
            Z[np.arange(n), ids[:, i]] = val[:, i]
        Adj = np.dot(np.dot(Z, np.diag(Z.sum(0) ** -1)), Z.T)
        SS[s] = (Adj > 1e-5).astype(np.float32)
    return 2 * (SS[5] - SS[4]) + SS[3]


def _data(seed, n, k, d=4, n_centers=6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_centers, d)) * 3
    x = (centers[rng.integers(0, n_centers, n)] + rng.normal(size=(n, d))).astype(np.float32)
    u = x[rng.choice(n, k, replace=False)] + rng.normal(size=(k, d)).astype(np.float32) * 0.1
    return x, u


def _graph_and_oracle(x, u):
    ids, sq = nearest_anchors(x, u, 5)
    g = AnchorGraph.from_neighbors(ids, sq, u.shape[0])
    with np.errstate(divide="raise", invalid="raise", over="raise"):  # a degenerate oracle (NaN matrix) would prove nothing
        return g, _released_adj_from_neighbors(ids, sq, u.shape[0])


def _assert_uniform(draws, support, label):
    assert np.isin(draws, support).all(), f"{label}: draws outside the allowed set"
    counts = np.array([(draws == j).sum() for j in support])
    p = chisquare(counts).pvalue
    assert p > 1e-4, f"{label}: not uniform over {support.size} partners (chi-square p={p:.2g})"


@pytest.fixture(scope="module")
def small():
    x, u = _data(0, 400, 16)
    return _graph_and_oracle(x, u)


@pytest.mark.parametrize("max_rounds", [256, 1], ids=["rejection", "exact-scan"])
def test_distribution_matches_released(small, max_rounds, backend):
    g, adj = small
    sampler = PairSampler(g, seed=1, max_rounds=max_rounds, backend=backend)
    assert sampler.backend == backend
    m = 12_000
    n2 = (adj == 2).sum(1)
    picks = [int(np.argmax(n2)), int(np.argmin(np.where(n2 > 0, n2, 10**9))), 17]
    for item in picks:
        partners, s = sampler.sample(np.full(m, item))
        assert partners.dtype == np.int64 and s.dtype == np.float32
        assert set(np.unique(s).tolist()) <= {-1.0, 1.0}
        assert binomtest(int((s > 0).sum()), m, 0.5).pvalue > 1e-4  # 50/50 split
        pos_set = np.nonzero(adj[item] == 1)[0]
        neg_set = np.nonzero(adj[item] == 2)[0]
        if neg_set.size == 0:
            neg_set = np.nonzero(adj[item] == 0)[0]
        _assert_uniform(partners[s > 0], pos_set, f"item {item} positives")
        _assert_uniform(partners[s < 0], neg_set, f"item {item} negatives")


def test_batch_of_all_items_respects_classes(small, backend):
    g, adj = small
    items = np.tile(np.arange(400), 10)
    partners, s = PairSampler(g, seed=3, backend=backend).sample(items)
    tag = adj[items, partners]
    assert (tag[s > 0] == 1).all()
    has2 = (adj == 2).any(1)[items]
    assert (tag[(s < 0) & has2] == 2).all()
    assert (tag[(s < 0) & ~has2] == 0).all()


def test_fallback_to_tag_zero_when_no_middle_distance_partner(backend):
    # 6 anchors: any two 4-subsets intersect, so nobody has an adj == 2 partner
    x, u = _data(4, 300, 6, d=3, n_centers=3)
    g, adj = _graph_and_oracle(x, u)
    assert not (adj == 2).any()
    item = int(np.argmax((adj == 0).sum(1)))
    zero = np.nonzero(adj[item] == 0)[0]
    assert zero.size > 5
    sampler = PairSampler(g, seed=5, backend=backend)
    partners, s = sampler.sample(np.full(8000, item))
    _assert_uniform(partners[s < 0], zero, "fallback")
    assert binomtest(int((s > 0).sum()), 8000, 0.5).pvalue > 1e-4
    assert sampler.stats["fallback"] > 0


def test_exclude_self_falls_back_to_negative_for_an_isolated_video(backend):
    rng = np.random.default_rng(6)
    x = np.concatenate([rng.normal(size=(200, 2)), [[8.0, 8.0]]]).astype(np.float32)
    u = np.concatenate([rng.normal(size=(6, 2)) * 0.5,
                        [[8.5, 8.0], [8.0, 8.5], [7.5, 7.7]]]).astype(np.float32)
    g, adj = _graph_and_oracle(x, u)
    lone = 200
    assert np.nonzero(adj[lone] == 1)[0].tolist() == [lone]
    partners, s = PairSampler(g, seed=0, backend=backend).sample(np.full(2000, lone))
    assert (partners[s > 0] == lone).all() and (s > 0).any()
    sampler = PairSampler(g, seed=0, exclude_self=True, backend=backend)
    partners, s = sampler.sample(np.full(2000, lone))
    assert (s < 0).all() and (partners != lone).all()
    assert sampler.stats["no_positive"] > 900
    tag = adj[lone, partners]
    assert ((tag == 2) | (tag == 0)).all()


def test_exclude_self_never_returns_the_item(small, backend):
    g, _ = small
    items = np.tile(np.arange(400), 5)
    partners, _ = PairSampler(g, seed=9, exclude_self=True, backend=backend).sample(items)
    assert (partners != items).all()


def test_seeded_and_reproducible(small, backend):
    g, _ = small
    items = np.random.default_rng(0).integers(0, 400, 5000)
    sa, sb = PairSampler(g, seed=42, backend=backend), PairSampler(g, seed=42, backend=backend)
    for _ in range(3):  # the same sequence of calls
        a = sa.sample(items)
        b = sb.sample(items)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    c = PairSampler(g, seed=43, backend=backend).sample(items)
    assert (a[0] != c[0]).any()


@pytest.mark.parametrize("rule,params", [("nph", {"a": 3}), ("gaussian", {"a": 3, "lam": 0.5})])
def test_other_rules_sample_their_tags(rule, params, backend):
    x, u = _data(7, 400, 16)
    g = anchor_graph(x, u, rule=rule, **params)
    items = np.tile(np.arange(400), 5)
    partners, s = PairSampler(g, seed=2, backend=backend).sample(items)
    tags = g.tags(items, partners)
    assert (tags[s > 0] == 1).all()
    neg = tags[s < 0]
    assert ((neg == -1) | (neg == 0)).all()
    if rule == "nph":
        assert (neg == -1).all()


def test_bad_input():
    x, u = _data(8, 100, 10)
    g = anchor_graph(x, u)
    sampler = PairSampler(g, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        sampler.sample(np.array([0, 100]))
    with pytest.raises(ValueError, match="1-D"):
        sampler.sample(np.zeros((2, 2), np.int64))
    with pytest.raises(TypeError, match="integer"):
        sampler.sample(np.array([0.5]))
    with pytest.raises(TypeError, match="AnchorGraph"):
        PairSampler(object(), seed=0)
    with pytest.raises(ValueError, match="max_rounds"):
        PairSampler(g, seed=0, max_rounds=0)
    with pytest.raises(ValueError, match="backend"):
        PairSampler(g, seed=0, backend="cuda")
    p, s = sampler.sample(np.array([], np.int64))
    assert p.shape == (0,) and s.shape == (0,)


def test_middle_distance_proposal_is_uniform_over_its_lists(small):
    """The narrower adj == 2 proposal: uniform over L5(5th anchor of i) | R5(k), k in top-4(i)."""
    g, _ = small
    sampler = PairSampler(g, seed=11)
    mid = sampler._mid
    ranks = g.anchor_ids
    best, best_dup = None, -1
    for item in range(g.num_videos):
        a5, top4 = ranks[item, 4], ranks[item, :4]
        dup = ((ranks == a5).any(1) & np.isin(ranks[:, 4], top4)).sum()
        if dup > best_dup:
            best, best_dup = item, dup
    assert best_dup > 3
    a5, top4 = ranks[best, 4], ranks[best, :4]
    support = np.nonzero((ranks == a5).any(1) | np.isin(ranks[:, 4], top4))[0]
    it = np.full(200_000, best)
    cand, ok = mid.propose(it, np.random.default_rng(0))
    _assert_uniform(cand[ok], support, "middle-distance proposal")


# ---------------------------------------------------------------------- numba backend
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")


@needs_numba
@pytest.mark.parametrize("rule,params", [("bth", {}), ("nph", {"a": 3}), ("gaussian", {"a": 3, "lam": 0.5})])
def test_numba_classes_bit_identical_to_anchor_graph(rule, params):
    """The compiled class check equals AnchorGraph.pair_classes on every pair tried."""
    x, u = _data(12, 1500, 24, d=6)
    g = anchor_graph(x, u, rule=rule, **params)
    kernels = PairSampler(g, seed=0, backend="numba")._fast
    rng = np.random.default_rng(1)
    n = g.num_videos
    i = rng.integers(0, n, 150_000)
    # mostly pairs that share anchors (where the float32 arithmetic decides), plus random ones
    lv = g.levels[5 if rule == "bth" else params["a"]]
    anc = lv.ids[i, rng.integers(0, lv.s, i.size)]
    lens = np.diff(lv.indptr)[anc]
    j = lv.members[lv.indptr[anc] + (rng.random(i.size) * lens).astype(np.int64)].astype(np.int64)
    j[::4] = rng.integers(0, n, j[::4].size)
    got = kernels.pair_classes(i, j)
    want = g.pair_classes(i, j)
    np.testing.assert_array_equal(got, want)
    assert np.unique(want).size >= (2 if rule == "nph" else 3)  # the pairs exercise every class


@needs_numba
def test_numba_float32_chain_bit_identical_to_affinity():
    """The kernel's released-float32 A_s(i, j) equals AnchorLevel.affinity bit for bit (all levels)."""
    x, u = _data(13, 3000, 40, d=5)
    g = anchor_graph(x, u)
    kernels = PairSampler(g, seed=0, backend="numba")._fast
    rng = np.random.default_rng(2)
    lv5 = g.levels[5]
    i = rng.integers(0, g.num_videos, 200_000)
    anc = lv5.ids[i, rng.integers(0, 5, i.size)]
    lens = np.diff(lv5.indptr)[anc]
    j = lv5.members[lv5.indptr[anc] + (rng.random(i.size) * lens).astype(np.int64)].astype(np.int64)
    for s in (3, 4, 5):
        lv = g.levels[s]
        want, shared = lv.affinity(i, j, emulate_float32=True)
        got = kernels.chains(i, j, s)
        assert want.dtype == got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
        assert (shared > 1).sum() > 1000  # multi-term chains, where the accumulation order matters
        # and values on both sides of the threshold
        assert (want > np.float32(1e-5)).any() and ((want <= np.float32(1e-5)) & (shared > 0)).any()


@needs_numba
def test_numba_exact_scan_equals_numpy_scan(small):
    g, adj = small
    fast = PairSampler(g, seed=0, backend="numba")
    slow = PairSampler(g, seed=0, backend="numpy")
    for item in (0, 17, 123, 399):
        for cls in (1, 2, 0):
            level = g.candidate_level(cls)
            np.testing.assert_array_equal(fast._exact_set(item, cls, level), slow._exact_set(item, cls, level))


def test_backend_selection():
    x, u = _data(8, 100, 10)
    g = anchor_graph(x, u)
    assert PairSampler(g, seed=0, backend="numpy").backend == "numpy"
    assert PairSampler(g, seed=0).backend == ("numba" if HAVE_NUMBA else "numpy")
    if not HAVE_NUMBA:
        with pytest.raises(ImportError, match="numba"):
            PairSampler(g, seed=0, backend="numba")


def test_auto_backend_falls_back_to_numpy_without_numba(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba.") or (args and args[2] and "_pairs_numba" in args[2]):
            raise ImportError(f"blocked by test: {name}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
    monkeypatch.delitem(__import__("sys").modules, "vhindex.graph._pairs_numba", raising=False)
    x, u = _data(8, 100, 10)
    g = anchor_graph(x, u)
    sampler = PairSampler(g, seed=0)
    assert sampler.backend == "numpy"
    partners, s = sampler.sample(np.arange(100))
    assert partners.shape == (100,)
    with pytest.raises(ImportError, match="vhindex\\[fast\\]"):
        PairSampler(g, seed=0, backend="numba")


@needs_numba
def test_numba_backend_gives_up_then_scans_and_caches(small):
    """max_rounds=1: most items go to the exact scan; empty sets are remembered across batches."""
    g, adj = small
    sampler = PairSampler(g, seed=4, max_rounds=1, backend="numba")
    items = np.tile(np.arange(400), 3)
    partners, s = sampler.sample(items)
    tag = adj[items, partners]
    assert (tag[s > 0] == 1).all()
    assert sampler.stats["scans"] > 0
    scans = sampler.stats["scans"]
    sampler.sample(items)
    assert sampler.stats["scans"] - scans < scans  # cached sets are reused


@needs_numba
def test_numba_draws_do_not_depend_on_threads():
    x, u = _data(14, 3000, 30, d=5)
    g = anchor_graph(x, u)
    items = np.random.default_rng(3).integers(0, 3000, 40_000)  # several kernel chunks per class
    runs = []
    for threads in (1, 2, 1):
        sampler = PairSampler(g, seed=7, backend="numba", threads=threads)
        runs.append((*sampler.sample(items), *sampler.sample(items[::-1])))
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, b)
    c = PairSampler(g, seed=8, backend="numba", threads=2).sample(items)
    assert (c[0] != runs[0][0]).any()
    tags = g.pair_classes(items, runs[0][0])
    assert (tags[runs[0][1] > 0] == 1).all()
    with pytest.raises(ValueError, match="threads"):
        PairSampler(g, seed=0, threads=0)


def test_numba_not_imported_by_vhindex_graph():
    import subprocess
    import sys

    code = ("import sys, vhindex, vhindex.graph, vhindex.graph.pairs; "
            "assert 'numba' not in sys.modules and 'vhindex.graph._pairs_numba' not in sys.modules; print('OK')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-2000:]

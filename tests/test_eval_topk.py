"""Stable Hamming top-k against a brute-force ``np.argsort(kind="stable")`` oracle."""

from __future__ import annotations

import numpy as np
import pytest

import vhindex.eval.topk as topk
from vhindex.eval import stable_topk_hamming
from vhindex.index.codes import hamming_distances, pack_codes


def _oracle(q, db, k):
    d = hamming_distances(q, db)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


def _codes(rng, n, nbytes, distinct):
    if distinct:  # a few code words only: long runs of ties
        words = rng.integers(0, 256, size=(distinct, nbytes), dtype=np.uint8)
        return words[rng.integers(0, distinct, n)]
    return rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)


@pytest.mark.parametrize("bits", [8, 16, 24, 64, 128, 256, 512])
def test_matches_stable_argsort(bits):
    rng = np.random.default_rng(bits)
    for trial in range(6):
        nd = int(rng.integers(1, 120))
        nq = int(rng.integers(1, 30))
        distinct = [None, 3, 17][trial % 3]
        db = _codes(rng, nd, bits // 8, distinct)
        q = np.concatenate([_codes(rng, nq, bits // 8, None), db[: min(nd, 3)]])  # some queries inside
        for k in sorted({1, 2, nd // 2 or 1, nd, int(rng.integers(1, nd + 1))}):
            want_d, want_i = _oracle(q, db, k)
            for cs in (None, 1, 4):
                got_d, got_i = stable_topk_hamming(q, db, k, chunk_size=cs)
                assert got_d.dtype == np.int32 and got_i.dtype == np.int64
                np.testing.assert_array_equal(got_i, want_i, err_msg=f"bits={bits} nd={nd} k={k} cs={cs}")
                np.testing.assert_array_equal(got_d, want_d)


def test_candidate_grouping_and_all_equal_rows():
    rng = np.random.default_rng(1)
    db = np.zeros((50, 2), np.uint8)  # every distance ties
    db[rng.random(50) < 0.3] = 255
    q = np.zeros((9, 2), np.uint8)
    d = topk.hamming_distances_chunk(q, db).astype(np.uint8)
    hist = topk.row_histograms(d, 17)
    for k in (1, 10, 35, 50):
        want_d, want_i = _oracle(q, db, k)
        for mc in (None, 1, 60, 10_000):
            got_d, got_i = topk.select_stable_topk(d, hist, k, max_candidates=mc)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_array_equal(got_d, want_d)


def test_k_beyond_database_is_padded():
    rng = np.random.default_rng(2)
    db = rng.integers(0, 256, (4, 1), dtype=np.uint8)
    q = rng.integers(0, 256, (3, 1), dtype=np.uint8)
    d, i = stable_topk_hamming(q, db, 6)
    want_d, want_i = _oracle(q, db, 4)
    np.testing.assert_array_equal(i[:, :4], want_i)
    np.testing.assert_array_equal(d[:, :4], want_d)
    assert (i[:, 4:] == -1).all() and (d[:, 4:] == np.iinfo(np.int32).max).all()


def test_sign_and_packed_inputs_agree():
    rng = np.random.default_rng(3)
    db = rng.choice([-1, 1], size=(40, 32))
    q = rng.choice([-1, 1], size=(7, 32))
    a = stable_topk_hamming(q, db, 10)
    b = stable_topk_hamming(pack_codes(q), pack_codes(db), 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("nbytes", [1, 3, 8, 12, 64])
def test_numpy_fallback_distances(monkeypatch, nbytes):
    rng = np.random.default_rng(nbytes)
    q = rng.integers(0, 256, (5, nbytes), dtype=np.uint8)
    db = rng.integers(0, 256, (11, nbytes), dtype=np.uint8)
    want = hamming_distances(q, db)
    np.testing.assert_array_equal(topk.hamming_distances_chunk(q, db), want)
    monkeypatch.setattr(topk, "_HAVE_FAISS_HAMMINGS", False)
    np.testing.assert_array_equal(topk.hamming_distances_chunk(q, db), want)


def test_auto_chunk_size_respects_budget():
    assert topk.auto_chunk_size(45_600, 45_600, 256 * 2**20) * 45_600 * 16 <= 256 * 2**20
    assert topk.auto_chunk_size(10, 100, 10**12) == 10
    assert topk.auto_chunk_size(10, 10**9, 1) == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(k=0), "k must be >= 1"),
        (dict(k=3, chunk_size=0), "chunk_size must be >= 1"),
        (dict(k=3, db_packed=np.zeros((4, 2), np.uint8)), "query_packed has 8 bits.*db_packed has 16"),
        (dict(k=3, query_packed=np.full((2, 8), 3)), "query_packed.*values"),
    ],
)
def test_errors(args, match):
    base = dict(query_packed=np.zeros((2, 1), np.uint8), db_packed=np.zeros((4, 1), np.uint8))
    with pytest.raises(ValueError, match=match):
        stable_topk_hamming(**{**base, **args})

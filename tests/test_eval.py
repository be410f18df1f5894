"""mAP@K / P@N / PR curves against a literal re-implementation of the published evaluation code."""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.eval import evaluate, map_at_k, pr_curve, precision_at_n
from vhindex.index.codes import pack_codes

KS = (1, 2, 3, 5, 10, 20)


# ----------------------------------------------------------------------------------------------
# Oracles: the published formula, written plainly (SSVH/BTH/DKPH ``mAP()``), but with a stable sort
# ----------------------------------------------------------------------------------------------


def _multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float64)
    out = np.zeros((labels.shape[0], num_classes))
    out[np.arange(labels.shape[0]), labels] = 1
    return out


def ref_map(db_signs, q_signs, db_mh, q_mh, k, protocol="paper"):
    """Literal port of the published ``mAP()`` with ``np.argsort(kind="stable")``."""
    db_signs = np.asarray(db_signs, dtype=np.float64)
    q_signs = np.asarray(q_signs, dtype=np.float64)
    bits = db_signs.shape[1]
    hamm = 0.5 * (bits - db_signs @ q_signs.T)  # (N_db, N_q), as the published code
    cate_train_test = (np.asarray(db_mh, np.float64) @ np.asarray(q_mh, np.float64).T) != 0
    ix = np.argsort(hamm, axis=0, kind="stable")
    num_test = ix.shape[1]
    apall = np.zeros((num_test, 1))
    for qid in range(num_test):
        query = ix[:, qid]
        x, p = 0, 0
        for rid in range(k):
            if cate_train_test[query[rid], qid]:
                x += 1
                p += x / (rid * 1.0 + 1.0)
        if not p:
            apall[qid] = 0.0
        elif protocol == "paper":
            apall[qid] = p / (k * 1.0)
        else:
            apall[qid] = p / (x * 1.0)
    return np.mean(apall)


def ref_precision(db_signs, q_signs, db_mh, q_mh, n):
    hamm = 0.5 * (db_signs.shape[1] - np.asarray(db_signs, float) @ np.asarray(q_signs, float).T)
    rel = (np.asarray(db_mh, float) @ np.asarray(q_mh, float).T) != 0
    ix = np.argsort(hamm, axis=0, kind="stable")
    return np.mean([rel[ix[:n, q], q].sum() / n for q in range(ix.shape[1])])


def ref_pr(db_signs, q_signs, db_mh, q_mh):
    bits = db_signs.shape[1]
    hamm = 0.5 * (bits - np.asarray(db_signs, float) @ np.asarray(q_signs, float).T)
    rel = (np.asarray(db_mh, float) @ np.asarray(q_mh, float).T) != 0
    prec = [[] for _ in range(bits + 1)]
    rec = [[] for _ in range(bits + 1)]
    for q in range(hamm.shape[1]):
        for r in range(bits + 1):
            got = hamm[:, q] <= r
            if got.sum() > 0:
                prec[r].append((got & rel[:, q]).sum() / got.sum())
            if rel[:, q].sum() > 0:
                rec[r].append((got & rel[:, q]).sum() / rel[:, q].sum())
    p = np.array([np.mean(v) if v else np.nan for v in prec])
    rc = np.array([np.mean(v) if v else np.nan for v in rec])
    return p, rc, np.array([len(v) for v in prec])


def _random_case(rng, n_db, n_q, bits, n_classes, *, distinct_codes=None, queries_inside=False, empty_frac=0.1):
    if distinct_codes:  # draw from a few code words: lots of ties
        words = rng.choice([-1, 1], size=(distinct_codes, bits))
        db = words[rng.integers(0, distinct_codes, n_db)]
    else:
        db = rng.choice([-1, 1], size=(n_db, bits))
    db_l = rng.random((n_db, n_classes)) < 1.5 / n_classes
    db_l[rng.random(n_db) < empty_frac] = False  # some items with no label
    if queries_inside:
        sel = rng.choice(n_db, size=n_q, replace=False)
        q, q_l = db[sel], db_l[sel]
    else:
        q = rng.choice([-1, 1], size=(n_q, bits))
        q_l = rng.random((n_q, n_classes)) < 1.5 / n_classes
        q_l[0] = False  # a query with no relevant item
    return db.astype(np.int8), q.astype(np.int8), db_l, q_l


CASES = [
    dict(n_db=60, n_q=25, bits=8, n_classes=4, distinct_codes=5, queries_inside=True),
    dict(n_db=40, n_q=40, bits=8, n_classes=6, queries_inside=True),
    dict(n_db=80, n_q=30, bits=16, n_classes=5, distinct_codes=12),
    dict(n_db=50, n_q=17, bits=16, n_classes=3),
    dict(n_db=30, n_q=11, bits=64, n_classes=7),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_map_matches_published_formula(case, protocol):
    rng = np.random.default_rng(hash((tuple(case.values()), protocol)) % 2**32)
    db, q, db_l, q_l = _random_case(rng, **case)
    want = {k: ref_map(db, q, db_l, q_l, k, protocol) for k in KS}
    got_all = map_at_k(db, q, db_l, q_l, ks=KS, protocol=protocol)
    for cs in (1, 7, len(q)):
        got = map_at_k(db, q, db_l, q_l, ks=KS, protocol=protocol, chunk_size=cs)
        assert got == got_all  # chunking never changes a bit of the result
    for k in KS:
        assert got_all[k] == pytest.approx(want[k], abs=1e-12), (k, got_all[k], want[k])
    # K = N_db is allowed (the whole database ranked)
    n = len(db)
    assert map_at_k(db, q, db_l, q_l, ks=n, protocol=protocol)[n] == pytest.approx(
        ref_map(db, q, db_l, q_l, n, protocol), abs=1e-12
    )


def test_packed_and_sign_inputs_agree():
    rng = np.random.default_rng(3)
    db, q, db_l, q_l = _random_case(rng, 70, 20, 16, 5, distinct_codes=9)
    a = map_at_k(db, q, db_l, q_l, ks=KS)
    b = map_at_k(pack_codes(db), pack_codes(q), db_l, q_l, ks=KS)
    c = map_at_k(db.astype(np.float32), pack_codes(q), db_l.astype(np.int64), q_l.astype(np.uint8), ks=KS)
    assert a == b == c


def test_class_id_labels_equal_one_hot():
    rng = np.random.default_rng(4)
    db = rng.choice([-1, 1], size=(50, 8))
    q = rng.choice([-1, 1], size=(12, 8))
    db_ids = rng.integers(0, 5, 50)
    q_ids = rng.integers(0, 7, 12)  # classes 5, 6: queries with no relevant item
    one_hot = map_at_k(db, q, _multi_hot(db_ids, 7).astype(bool), _multi_hot(q_ids, 7).astype(bool), ks=KS)
    assert map_at_k(db, q, db_ids, q_ids, ks=KS) == one_hot
    assert map_at_k(db, q, db_ids, _multi_hot(q_ids, 7), ks=KS) == one_hot  # mixed forms


def test_hand_computed_case():
    # 8-bit codes written as bytes; the query q0 is 0b00000000.
    #   item  code        dist to q0  labels   relevant to q0 (label {0})
    #   0     0b11000000  2           {0, 2}   yes
    #   1     0b00000000  0           {1}      no
    #   2     0b00000001  1           {0}      yes
    #   3     0b10000000  1           {}       no
    #   4     0b00000000  0           {0, 1}   yes
    # Stable ranking (distance, then index): 1, 4, 2, 3, 0 -> rel = 0, 1, 1, 0, 1
    # hits at ranks 2, 3, 5 with precisions 1/2, 2/3, 3/5.
    #   paper:    AP@1 = 0, AP@2 = (1/2)/2 = 1/4, AP@3 = (1/2 + 2/3)/3 = 7/18,
    #             AP@5 = (1/2 + 2/3 + 3/5)/5 = 53/150
    #   standard: AP@1 = 0, AP@2 = (1/2)/1 = 1/2, AP@3 = (7/6)/2 = 7/12, AP@5 = (53/30)/3 = 53/90
    # q1 has the code of item 0 and label {3}, which no item has: AP = 0 everywhere.
    db = np.array([[0b11000000], [0], [0b00000001], [0b10000000], [0]], dtype=np.uint8)
    q = np.array([[0], [0b11000000]], dtype=np.uint8)
    db_l = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    q_l = np.array([[1, 0, 0, 0], [0, 0, 0, 1]])
    paper = map_at_k(db, q, db_l, q_l, ks=(1, 2, 3, 5), protocol="paper")
    assert paper == pytest.approx({1: 0.0, 2: 1 / 4 / 2, 3: 7 / 18 / 2, 5: 53 / 150 / 2}, abs=1e-15)
    std = map_at_k(db, q, db_l, q_l, ks=(1, 2, 3, 5), protocol="standard")
    assert std == pytest.approx({1: 0.0, 2: 1 / 2 / 2, 3: 7 / 12 / 2, 5: 53 / 90 / 2}, abs=1e-15)
    # P@N: q0 has 0/1, 1/2, 2/3 relevant in its top 1, 2, 3; q1 has none.
    assert precision_at_n(db, q, db_l, q_l, ns=(1, 2, 3)) == pytest.approx({1: 0.0, 2: 1 / 4, 3: 1 / 3})
    # PR: q0 retrieves {1, 4} at r=0 (P 1/2, R 1/3), {1, 4, 2, 3} at r=1 (P 2/4, R 2/3), all at r>=2
    # (P 3/5, R 1). q1 (distances 0, 2, 3, 1, 2 to items 0..4) has precision 0 at every radius and
    # no relevant item, so it is left out of recall.
    pr = pr_curve(db, q, db_l, q_l)
    assert pr.radii.tolist() == list(range(9))
    np.testing.assert_allclose(pr.precision, [0.25, 0.25] + [0.3] * 7)
    np.testing.assert_allclose(pr.recall, [1 / 3, 2 / 3] + [1.0] * 7)
    assert pr.n_precision.tolist() == [2] * 9 and pr.n_recall == 1


def test_self_retrieval_fcvid_style():
    # Queries are the database itself (query not removed), every code unique and far apart and
    # every label unique: the only relevant item is the query itself, at rank 1.
    # AP@5 = (1/1)/5 = 0.2 under the paper protocol (the "self-match alone is worth 1/K" effect)
    # and 1.0 under the standard protocol.
    db = np.array([[0x00], [0x0F], [0xF0], [0xFF], [0x3C], [0xC3]], dtype=np.uint8)
    labels = np.arange(6)
    assert map_at_k(db, db, labels, labels, ks=(5,), protocol="paper") == {5: pytest.approx(0.2)}
    assert map_at_k(db, db, labels, labels, ks=(5,), protocol="standard") == {5: 1.0}


def test_ties_are_broken_by_database_order():
    # Every item at distance 0 from the query; only the last one is relevant. A stable ranking puts
    # it last: AP@N = (1/N)/N under the paper protocol.
    n = 6
    db = np.zeros((n, 1), np.uint8)
    db_l = np.zeros(n, np.int64)
    db_l[-1] = 1
    got = map_at_k(db, db[:1], db_l, np.array([1]), ks=(n - 1, n))
    assert got == {n - 1: 0.0, n: pytest.approx(1 / n / n)}


def test_precision_and_pr_match_oracles():
    rng = np.random.default_rng(5)
    db, q, db_l, q_l = _random_case(rng, 90, 23, 16, 4, distinct_codes=20)
    got = precision_at_n(db, q, db_l, q_l, ns=(1, 5, 17, 90))
    for n in (1, 5, 17, 90):
        assert got[n] == pytest.approx(ref_precision(db, q, db_l, q_l, n), abs=1e-12)
    p, r, npq = ref_pr(db, q, db_l, q_l)
    for cs in (1, 7, None):
        pr = pr_curve(db, q, db_l, q_l, chunk_size=cs)
        np.testing.assert_allclose(pr.precision, p, rtol=0, atol=1e-12)
        np.testing.assert_allclose(pr.recall, r, rtol=0, atol=1e-12)
        assert pr.n_precision.tolist() == npq.tolist()


def test_evaluate_combines_the_metrics():
    rng = np.random.default_rng(6)
    db, q, db_l, q_l = _random_case(rng, 64, 30, 16, 5, queries_inside=True)
    res = evaluate(db, q, db_l, q_l, ks=(5, 10, 40), protocol="standard", precision_ns=(3, 64), chunk_size=4)
    assert res.map_at_k == map_at_k(db, q, db_l, q_l, ks=(5, 10, 40), protocol="standard")
    assert res.precision_at_n == precision_at_n(db, q, db_l, q_l, ns=(3, 64))
    np.testing.assert_allclose(res.pr.precision, pr_curve(db, q, db_l, q_l).precision, atol=1e-12)
    assert (res.n_query, res.n_db, res.bits, res.protocol) == (30, 64, 16, "standard")
    assert evaluate(db, q, db_l, q_l, ks=(5,), pr=False, precision_ns=()).pr is None


def test_small_memory_budget_bounds_the_chunks(monkeypatch):
    import vhindex.eval.metrics as metrics

    seen = []
    real = metrics.iter_distance_chunks

    def spy(q, db, chunk_size):
        for start, stop, d in real(q, db, chunk_size):
            seen.append(d.shape)
            yield start, stop, d

    monkeypatch.setattr(metrics, "iter_distance_chunks", spy)
    rng = np.random.default_rng(7)
    db, q, db_l, q_l = _random_case(rng, 100, 40, 16, 4)
    want = map_at_k(db, q, db_l, q_l, ks=KS, chunk_size=40)
    seen.clear()
    got = map_at_k(db, q, db_l, q_l, ks=KS, memory_budget=100 * 16 * 3)  # room for 3 query rows
    assert got == want
    assert max(s[0] for s in seen) == 3 and all(s[1] == 100 for s in seen)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def _ok():
    rng = np.random.default_rng(8)
    return rng.choice([-1, 1], size=(20, 16)), rng.choice([-1, 1], size=(5, 16)), np.eye(20, 4), np.eye(5, 4)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: {**a, "query_codes": a["query_codes"][:, :8]}, "query_codes has 8 bits.*db_codes has 16"),
        (lambda a: {**a, "db_codes": a["db_codes"][:, :12]}, "db_codes.*multiple of 8"),
        (lambda a: {**a, "db_codes": a["db_codes"] * 2}, "db_codes.*values"),
        (lambda a: {**a, "query_labels": np.eye(5, 3)}, "db_labels has 4 classes.*query_labels has 3"),
        (lambda a: {**a, "db_labels": np.eye(19, 4)}, "db_labels has 19 rows.*db_codes has 20"),
        (lambda a: {**a, "query_labels": np.eye(4, 4)}, "query_labels has 4 rows.*query_codes has 5"),
        (lambda a: {**a, "db_labels": np.eye(20, 4) * 3}, "db_labels.*only 0 and 1"),
        (lambda a: {**a, "query_labels": np.full(5, 7)}, "query_labels: class id 7"),
        (lambda a: {**a, "db_labels": np.full(20, -1)}, "db_labels: class ids must be >= 0"),
        (lambda a: {**a, "ks": (5, 21)}, r"ks contains \[21\].*only 20 items"),
        (lambda a: {**a, "ks": (0,)}, "ks must hold positive integers"),
        (lambda a: {**a, "protocol": "trec"}, "protocol must be one of"),
        (lambda a: {**a, "chunk_size": 0}, "chunk_size must be >= 1"),
        (lambda a: {**a, "query_codes": np.zeros((0, 16))}, "query_codes is empty"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, match):
    db, q, dl, ql = _ok()
    args = mutate(dict(db_codes=db, query_codes=q, db_labels=dl, query_labels=ql, ks=(5,), protocol="paper"))
    with pytest.raises(ValueError, match=match):
        map_at_k(**args)


def test_precision_depth_beyond_database_raises():
    db, q, dl, ql = _ok()
    with pytest.raises(ValueError, match="precision_ns contains"):
        evaluate(db, q, dl, ql, ks=(5,), precision_ns=(100,))

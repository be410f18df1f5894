"""The real-data benchmark runner: its ranking metrics against oracles, and a tiny end-to-end build."""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.benchdata.quality import leave_one_out_metrics, map_at_k_from_relevance, ranked_relevance
from vhindex.eval import evaluate, stable_topk_hamming
from vhindex.index.codes import pack_codes


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_map_from_rankings_equals_evaluate(protocol: str) -> None:
    """The ranking-based mAP@K (used for float and UTS rows) equals vhindex.eval on code rankings."""
    rng = np.random.default_rng(3)
    bits, nq, nd, c = 16, 40, 300, 6
    q = pack_codes(np.where(rng.random((nq, bits)) < 0.5, -1, 1).astype(np.int8))
    d = pack_codes(np.where(rng.random((nd, bits)) < 0.5, -1, 1).astype(np.int8))
    ql = rng.random((nq, c)) < 0.25
    dl = rng.random((nd, c)) < 0.25
    ks = [1, 5, 20, 100]
    want = evaluate(d, q, dl, ql, ks=ks, protocol=protocol, pr=False, precision_ns=[]).map_at_k
    _, idx = stable_topk_hamming(q, d, max(ks))
    got = map_at_k_from_relevance(ranked_relevance(idx, ql, dl), ks, protocol)
    assert got.keys() == want.keys()
    for k in ks:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_map_from_relevance_hand_computed() -> None:
    rel = np.array([[True, False, True, False], [False, False, False, False]])
    paper = map_at_k_from_relevance(rel, [1, 4], "paper")
    standard = map_at_k_from_relevance(rel, [1, 4], "standard")
    # query 0: hits at ranks 1 and 3 -> P@1 = 1, P@3 = 2/3
    assert paper[1] == pytest.approx((1.0 + 0.0) / 2)
    assert paper[4] == pytest.approx(((1 + 2 / 3) / 4 + 0.0) / 2)
    assert standard[4] == pytest.approx(((1 + 2 / 3) / 2 + 0.0) / 2)
    # a ranking shorter than K is padded with non-relevant items, -1 entries are never relevant
    short = ranked_relevance(np.array([[0, -1]]), np.array([[True]]), np.array([[True]]))
    assert short.tolist() == [[True, False]]
    with pytest.raises(ValueError, match="protocol"):
        map_at_k_from_relevance(rel, [1], "other")


def test_leave_one_out_metrics_hand_computed() -> None:
    groups = np.array([0, 0, 1, 1, 0])
    rankings = [np.array([2, 1, 4, 3]),   # group 0: relevant 1, 4 at ranks 2, 3 -> AP (1/2 + 2/3) / 2
                np.array([0, 4, 2, 3]),   # AP 1
                np.array([3, 0, 1, 4]),   # AP 1
                np.array([0, 1, 4, 2]),   # relevant 2 at rank 4 -> AP 1/4
                np.array([3, 2, 1, 0])]   # relevant at 3, 4 -> (1/3 + 2/4) / 2
    m = leave_one_out_metrics(rankings, groups)
    aps = [(1 / 2 + 2 / 3) / 2, 1.0, 1.0, 0.25, (1 / 3 + 2 / 4) / 2]
    assert m["map"] == pytest.approx(np.mean(aps))
    assert m["top1"] == pytest.approx(2 / 5)
    assert m["queries"] == 5
    with pytest.raises(ValueError, match="itself"):
        leave_one_out_metrics([np.array([0, 1])], np.array([0, 0]))

"""Test helpers for Hamming k-NN results: a brute-force oracle and a tie-aware comparison.

Binary codes produce many equal distances, so two correct top-k results may list different ids
at the k-th distance (and in a different order within one distance). :func:`assert_same_knn`
accepts exactly that freedom and nothing more, in the spirit of faiss's
``compare_binary_result_lists``. Used by the flat-index tests and the sharded search tests.
"""

# ruff: noqa: E741  -- D, I are faiss's names for (distances, ids); kept on purpose
from __future__ import annotations

from collections import Counter

import numpy as np

from vhindex.index.codes import as_packed, hamming_distances


def brute_force_knn(
    queries: np.ndarray, database: np.ndarray, k: int | None = None, *, pad: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Hamming ranking by numpy (an oracle for tests).

    Args:
        queries: packed ``uint8`` or {-1,+1} codes ``(nq, ...)``.
        database: codes of the same length ``(nd, ...)``.
        k: columns to return; ``None`` returns the full ranking (``nd`` columns), which is what
            :func:`assert_same_knn` needs to judge ties at the k-th distance. ``k > nd`` pads.
        pad: distance in padded slots (default ``bits + 1``, as :class:`BinaryFlatIndex` does).

    Returns:
        ``(distances int32, positions int64)``, sorted by (distance, position).
    """
    q, db = as_packed(queries), as_packed(database)
    bits = q.shape[1] * 8
    nd = db.shape[0]
    k = nd if k is None else k
    dist = hamming_distances(q, db) if nd else np.zeros((q.shape[0], 0), dtype=np.int32)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    D = np.full((q.shape[0], k), bits + 1 if pad is None else pad, dtype=np.int32)
    I = np.full((q.shape[0], k), -1, dtype=np.int64)
    n = order.shape[1]
    D[:, :n] = np.take_along_axis(dist, order, axis=1)
    I[:, :n] = order
    return D, I


def assert_same_knn(D: np.ndarray, I: np.ndarray, D_ref: np.ndarray, I_ref: np.ndarray) -> None:
    """Assert that a top-k result ``(D, I)`` is a correct answer given a reference ``(D_ref, I_ref)``.

    Row by row:

    * the distances ``D`` equal ``D_ref[:, :k]`` exactly (and ascend);
    * no id appears twice in a row (``-1`` padding excepted);
    * the multiset of ids at each distance strictly below the k-th distance equals the reference's;
    * each id at the k-th distance is among the reference's ids at that distance.

    ``D_ref``/``I_ref`` may have more than ``k`` columns (e.g. the full ranking from
    :func:`brute_force_knn` with ``k=None``); only then does the last check see *every* tie at the
    k-th distance. With exactly ``k`` reference columns, the check is stricter than necessary.

    Ids may be ints (faiss positions) or objects (video ids, ``None`` as padding).

    Raises:
        AssertionError: listing the first few rows that differ.
    """
    D, I, D_ref, I_ref = (np.asarray(a) for a in (D, I, D_ref, I_ref))
    assert D.shape == I.shape, f"D {D.shape} and I {I.shape} differ in shape"
    assert D_ref.shape == I_ref.shape, f"D_ref {D_ref.shape} and I_ref {I_ref.shape} differ in shape"
    nq, k = D.shape
    assert D_ref.shape[0] == nq, f"{nq} result rows but {D_ref.shape[0]} reference rows"
    assert D_ref.shape[1] >= k, f"reference has {D_ref.shape[1]} columns, fewer than k={k}"
    problems: list[str] = []

    def is_pad(x: object) -> bool:
        return x is None or (isinstance(x, (int, np.integer)) and x == -1)

    for r in range(nq):
        d, ids, dref, iref = D[r], I[r], D_ref[r], I_ref[r]
        if not np.array_equal(d, dref[:k]):
            problems.append(f"row {r}: distances {d.tolist()} != reference {dref[:k].tolist()}")
            continue
        if k == 0:
            continue
        if np.any(np.diff(d.astype(np.int64)) < 0):
            problems.append(f"row {r}: distances not ascending {d.tolist()}")
            continue
        real = [x for x in ids.tolist() if not is_pad(x)]
        if len(set(real)) != len(real):
            dup = [x for x, c in Counter(real).items() if c > 1]
            problems.append(f"row {r}: ids repeated in one row: {dup[:5]}")
            continue
        kth = d[-1]
        below = d < kth
        got = Counter(ids[below].tolist())
        ref_below = dref[:k] < kth
        want = Counter(iref[:k][ref_below].tolist())
        if got != want:
            problems.append(
                f"row {r}: ids below the k-th distance {kth} differ: extra {sorted((got - want).elements(), key=str)[:5]}, "
                f"missing {sorted((want - got).elements(), key=str)[:5]}"
            )
            continue
        allowed = set(iref[dref == kth].tolist())
        stray = [x for x in ids[~below].tolist() if x not in allowed]
        if stray:
            problems.append(
                f"row {r}: ids {stray[:5]} at the k-th distance {kth} are not at that distance in the reference"
            )
    if problems:
        raise AssertionError(f"{len(problems)} of {nq} rows differ:\n  " + "\n  ".join(problems[:10]))

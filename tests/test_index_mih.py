# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""Multi-index hashing (vhindex.index.mih) against brute force: the same stable (distance, index) top-k.

Oracle: :func:`vhindex.eval.topk.stable_topk_hamming` (itself tested against ``np.argsort(kind="stable")``).
Data: clustered codes (25 noisy frames per video), a 100-code block of identical codes (a tie far longer
than k), random queries far from everything, k from 1 to past the gallery size -- for the compiled
kernel and the numpy path, and for every table layout (one word of 16/32/64 bits; 48 bits: substrings).
"""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.eval.topk import stable_topk_hamming
from vhindex.index.mih import MultiIndexHash


def _gallery(rng: np.random.Generator, bits: int, n: int) -> np.ndarray:
    centers = rng.integers(0, 256, size=(n // 25, bits // 8), dtype=np.uint8)
    codes = np.repeat(centers, 25, axis=0)
    for b in range(8):
        codes ^= ((rng.random(codes.shape) < 0.04).astype(np.uint8) << b)
    codes[:100] = codes[0]
    return codes


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("bits,n", [(16, 5_000), (32, 60_000), (48, 20_000), (64, 20_000)])
def test_equals_stable_brute_force(backend, bits, n):
    if backend == "numba":
        pytest.importorskip("numba")
        if bits == 48:
            pytest.skip("no one-word layout for 48 bits: the numpy path serves it")
    rng = np.random.default_rng(bits)
    codes = _gallery(rng, bits, n)
    mih = MultiIndexHash(codes, backend=backend, num_threads=2)
    q = np.concatenate([codes[rng.integers(0, len(codes), 12)],
                        rng.integers(0, 256, size=(4, bits // 8), dtype=np.uint8), codes[:1]])
    q[:6] ^= (rng.random((6, bits // 8)) < 0.1).astype(np.uint8)
    for k in (1, 7, 150, 1000, len(codes) + 3):
        D, I = mih.search(q, k)
        D0, I0 = stable_topk_hamming(q, codes, k)
        np.testing.assert_array_equal(I, I0, err_msg=f"k={k}")
        np.testing.assert_array_equal(D, D0, err_msg=f"k={k}")


def test_brute_force_fallback_and_bad_inputs():
    rng = np.random.default_rng(0)
    codes = np.zeros((3000, 4), dtype=np.uint8)  # one bucket holds everything: probing would read it all
    codes[::7] = rng.integers(0, 256, size=(len(codes[::7]), 4), dtype=np.uint8)
    q = codes[:3].copy()
    for backend in ("numba", "numpy"):
        mih = MultiIndexHash(codes, backend=backend, brute_fraction=0.01)
        D, I = mih.search(q, 40)
        D0, I0 = stable_topk_hamming(q, codes, 40)
        np.testing.assert_array_equal(I, I0)
        np.testing.assert_array_equal(D, D0)
    with pytest.raises(ValueError, match="multiple of 16"):
        MultiIndexHash(np.zeros((5, 3), np.uint8))
    with pytest.raises(ValueError, match="32-bit codes"):
        MultiIndexHash(codes).search(np.zeros((1, 8), np.uint8), 3)
    with pytest.raises(ValueError, match="k must be"):
        MultiIndexHash(codes).search(q, 0)
    with pytest.raises(ValueError, match="backend"):
        MultiIndexHash(codes, backend="gpu")

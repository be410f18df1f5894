"""Statistics of a set of binary codes: collapse, bit balance, bit correlation (diagnosing learned hashers).

A hasher can look fine by its loss while its codes degenerate: many videos share one code (collapse),
bits are nearly constant (unbalanced) or copies of each other (correlated) -- each wastes bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["code_statistics"]


def code_statistics(codes: np.ndarray) -> dict[str, Any]:
    """``{"distinct", "distinct_fraction", "largest_bucket", "bit_imbalance", "bit_abs_corr"}`` of ``codes``.

    Args:
        codes: packed ``uint8`` ``(N, K/8)`` codes (msb first), or ``{-1, +1}`` / ``{0, 1}`` ``(N, K)`` of any
            other dtype (e.g. the ``int8`` of ``HashModel.encode``).

    Returns:
        ``distinct``: different codes among the N; ``distinct_fraction``: that / N; ``largest_bucket``:
        videos sharing the most common code; ``bit_imbalance``: mean over bits of ``|P(bit = 1) - 0.5|``
        (0 balanced, 0.5 constant); ``bit_abs_corr``: mean absolute correlation between distinct bits
        (constant bits count as 0).
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"codes must be a non-empty 2-D array, got shape {codes.shape}")
    bits01 = np.unpackbits(codes, axis=1) if codes.dtype == np.uint8 else (codes > 0)  # uint8 = packed
    bits01 = bits01.astype(np.float64)
    rows = np.packbits(bits01.astype(np.uint8), axis=1)
    _, counts = np.unique(rows, axis=0, return_counts=True)
    p = bits01.mean(axis=0)
    centred = bits01 - p
    std = centred.std(axis=0)
    live = std > 0
    corr = 0.0
    if live.sum() > 1:
        c = centred[:, live] / std[live]
        m = (c.T @ c) / len(c)
        k = m.shape[0]
        corr = float((np.abs(m).sum() - k) / (k * (k - 1)))
    return {"distinct": int(len(counts)), "distinct_fraction": float(len(counts) / len(rows)),
            "largest_bucket": int(counts.max()), "bit_imbalance": float(np.abs(p - 0.5).mean()),
            "bit_abs_corr": corr}

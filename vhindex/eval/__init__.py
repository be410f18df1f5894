"""Retrieval evaluation of binary codes: mAP@K (paper and standard protocols), P@N, PR curves.

Ranking is by Hamming distance with ties broken by database order (stable); AP@K follows the
published code's formula (``protocol="paper"``: divided by K). See :mod:`vhindex.eval.metrics`
for the exact semantics and :mod:`vhindex.eval.topk` for the bounded-memory stable top-k.
"""

from vhindex.eval.metrics import (
    DEFAULT_KS,
    DEFAULT_PRECISION_NS,
    PROTOCOLS,
    EvalResult,
    PRCurve,
    evaluate,
    map_at_k,
    pr_curve,
    precision_at_n,
)
from vhindex.eval.report import markdown_table, plot_map_vs_k, plot_pr_curves, write_report
from vhindex.eval.topk import auto_chunk_size, hamming_distances_chunk, stable_topk_hamming

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_PRECISION_NS",
    "PROTOCOLS",
    "EvalResult",
    "PRCurve",
    "auto_chunk_size",
    "evaluate",
    "hamming_distances_chunk",
    "map_at_k",
    "markdown_table",
    "plot_map_vs_k",
    "plot_pr_curves",
    "pr_curve",
    "precision_at_n",
    "stable_topk_hamming",
    "write_report",
]

"""Retrieval metrics over binary codes: mAP@K (paper and standard protocols), P@N and PR curves.

Semantics (see ``reference/methods-and-results.md`` §2 for the published code this reproduces):

* **Relevance**: a database item is relevant to a query iff their label sets share at least one
  label (``labels_db @ labels_q.T != 0`` in the published code). Items with no label are relevant
  to nothing.
* **Ranking**: database items ordered by Hamming distance, **ties broken by database order**
  (a stable sort). The published ``mAP()`` uses numpy's default unstable ``np.argsort``, whose
  order inside a tie is implementation-defined; numbers can differ slightly from it when many
  items tie at the cut-off (typical at 16 bits).
* **AP@K**, with ``rel(r)`` the relevance of rank ``r`` and ``P@r`` the precision of the first ``r``:

  - ``protocol="paper"`` (what every published repo computes):
    ``AP@K = (1/K) * sum_{r<=K} rel(r) * P@r`` -- divided by ``K``.
  - ``protocol="standard"``: the same sum divided by the number of relevant items in the top ``K``
    (0 when there is none).

  mAP@K is the mean over all queries (queries with no relevant item count as 0).
* **Self-retrieval** (FCVID: the query set is the database, the query is not removed) needs no
  special case: the query's own entry is just another database item at distance 0.
* **K larger than the database**: the published code indexes past the end of the ranking and
  fails (``IndexError``); here it raises a :class:`ValueError` naming ``K`` and ``N_db``.
* Codes are packed with :func:`vhindex.index.codes.as_packed`; a 0 value (``sign(0)`` of an exact
  tie in mean-pooled frame codes) packs like -1, so the half-integer distances the published code
  would give for such bits are not reproduced.

Memory is bounded: queries are processed in chunks (``chunk x N_db`` distances at a time, chunk
size picked from ``memory_budget``), never an ``N_q x N_db`` matrix.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vhindex.eval.topk import (
    _BYTES_PER_CANDIDATE,
    DEFAULT_MEMORY_BUDGET,
    _check_packed_pair,
    auto_chunk_size,
    iter_distance_chunks,
    row_histograms,
    select_stable_topk,
)

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_PRECISION_NS",
    "PROTOCOLS",
    "EvalResult",
    "PRCurve",
    "evaluate",
    "map_at_k",
    "pr_curve",
    "precision_at_n",
]

#: The K list of BTH / DKPH / MCMSH / ConMH.
DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 40, 60, 80, 100)
DEFAULT_PRECISION_NS: tuple[int, ...] = (10, 50, 100)
PROTOCOLS = ("paper", "standard")

# Bytes per relevant (query, database) pair while a chunk's PR histogram is built (sparse product
# indices and data, expanded rows, gathered distances, bincount keys), rounded up.
_BYTES_PER_REL_PAIR = 48


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def _nan_to_none(values: Iterable[float]) -> list[float | None]:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v) for v in values]


def _none_to_nan(values: Iterable[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall at every Hamming radius ``0..bits``.

    At radius ``r`` a query retrieves every database item with distance ``<= r``. Values are
    averaged **per query, then over queries** (the usual "hash lookup" PR curve of the hashing
    literature), not pooled over all pairs:

    * ``precision[r]``: mean over queries that retrieve at least one item at radius ``r`` of
      ``#relevant retrieved / #retrieved`` (``nan`` if no query retrieves anything);
      ``n_precision[r]`` is the number of such queries.
    * ``recall[r]``: mean over queries with at least one relevant database item of
      ``#relevant retrieved / #relevant``; ``n_recall`` is the number of such queries.

    Attributes:
        radii: ``0..bits``.
        precision: Mean precision per radius (``float64``, may hold ``nan``).
        recall: Mean recall per radius (``float64``).
        n_precision: Queries averaged into ``precision`` per radius.
        n_recall: Queries averaged into ``recall`` (those with any relevant item).
    """

    radii: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    n_precision: np.ndarray
    n_recall: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``nan`` becomes ``None``)."""
        return {
            "radii": [int(r) for r in self.radii],
            "precision": _nan_to_none(self.precision.tolist()),
            "recall": _nan_to_none(self.recall.tolist()),
            "n_precision": [int(n) for n in self.n_precision],
            "n_recall": int(self.n_recall),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PRCurve:
        """Inverse of :meth:`to_dict`."""
        return cls(
            radii=np.asarray(d["radii"], dtype=np.int64),
            precision=_none_to_nan(d["precision"]),
            recall=_none_to_nan(d["recall"]),
            n_precision=np.asarray(d["n_precision"], dtype=np.int64),
            n_recall=int(d["n_recall"]),
        )


@dataclass(frozen=True)
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        protocol: ``"paper"`` or ``"standard"`` (how AP@K is normalised).
        map_at_k: ``{K: mAP@K}`` in the order of the requested ``ks``.
        precision_at_n: ``{N: mean precision of the top N}``.
        pr: Precision/recall per Hamming radius, or ``None`` when not computed.
        n_query: Number of queries.
        n_db: Number of database items.
        bits: Code length.
        seconds: Wall time of the evaluation.
    """

    protocol: str
    map_at_k: dict[int, float]
    precision_at_n: dict[int, float] = field(default_factory=dict)
    pr: PRCurve | None = None
    n_query: int = 0
    n_db: int = 0
    bits: int = 0
    seconds: float = 0.0

    @property
    def ks(self) -> tuple[int, ...]:
        """The K values of :attr:`map_at_k`."""
        return tuple(self.map_at_k)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; integer keys become strings as JSON requires (see :meth:`from_dict`)."""
        return {
            "protocol": self.protocol,
            "map_at_k": {str(k): float(v) for k, v in self.map_at_k.items()},
            "precision_at_n": {str(n): float(v) for n, v in self.precision_at_n.items()},
            "pr": None if self.pr is None else self.pr.to_dict(),
            "n_query": int(self.n_query),
            "n_db": int(self.n_db),
            "bits": int(self.bits),
            "seconds": float(self.seconds),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of :meth:`to_dict` (floats round-trip exactly)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            protocol=str(d["protocol"]),
            map_at_k={int(k): float(v) for k, v in d["map_at_k"].items()},
            precision_at_n={int(k): float(v) for k, v in d.get("precision_at_n", {}).items()},
            pr=None if d.get("pr") is None else PRCurve.from_dict(d["pr"]),
            n_query=int(d.get("n_query", 0)),
            n_db=int(d.get("n_db", 0)),
            bits=int(d.get("bits", 0)),
            seconds=float(d.get("seconds", 0.0)),
        )

    @classmethod
    def from_json(cls, text: str) -> EvalResult:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def to_markdown(self, digits: int = 4) -> str:
        """Markdown: one table row per K (mAP@K), then one row per N (P@N) if computed."""
        head = f"{self.n_query} queries vs {self.n_db} database items, {self.bits} bits, {self.protocol} protocol"
        lines = [head, "", "| K | mAP@K |", "| ---: | ---: |"]
        lines += [f"| {k} | {v:.{digits}f} |" for k, v in self.map_at_k.items()]
        if self.precision_at_n:
            lines += ["", "| N | P@N |", "| ---: | ---: |"]
            lines += [f"| {n} | {v:.{digits}f} |" for n, v in self.precision_at_n.items()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def _check_ints(values: Sequence[int] | int, name: str) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)):
        values = (int(values),)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
            raise ValueError(f"{name} must hold positive integers, got {list(values)!r}")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} must list at least one value")
    return tuple(out)


def _multi_hot(labels: np.ndarray, name: str) -> np.ndarray:
    if labels.dtype == bool:
        return labels
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise ValueError(f"{name}: multi-hot labels must be bool or 0/1 numbers, got dtype {labels.dtype}")
    ok = (labels == 0) | (labels == 1)
    if not ok.all():
        bad = labels[~ok][:5].tolist()
        raise ValueError(f"{name}: multi-hot labels must hold only 0 and 1, found {bad}")
    return labels != 0


def _class_ids(labels: np.ndarray, name: str) -> np.ndarray:
    if not np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
        raise ValueError(
            f"{name}: 1-D labels are read as integer class ids, got dtype {labels.dtype}; "
            "pass multi-hot labels as a 2-D (N, num_classes) array"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: class ids must be >= 0, found {int(labels.min())}")
    return labels.astype(np.int64, copy=False)


def _one_hot(ids: np.ndarray, num_classes: int, name: str) -> np.ndarray:
    if ids.size and ids.max() >= num_classes:
        raise ValueError(f"{name}: class id {int(ids.max())} >= number of classes {num_classes}")
    out = np.zeros((ids.shape[0], num_classes), dtype=bool)
    out[np.arange(ids.shape[0]), ids] = True
    return out


def _normalize_labels(db_labels: Any, query_labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both label arrays as bool multi-hot ``(N, C)`` with the same ``C``."""
    db = np.asarray(db_labels)
    q = np.asarray(query_labels)
    for arr, name in ((db, "db_labels"), (q, "query_labels")):
        if arr.ndim not in (1, 2):
            raise ValueError(f"{name} must be 1-D class ids or 2-D multi-hot (N, C), got shape {arr.shape}")
    if db.ndim == 2 and q.ndim == 2:
        if db.shape[1] != q.shape[1]:
            raise ValueError(
                f"db_labels has {db.shape[1]} classes (columns) but query_labels has {q.shape[1]}; "
                "both must use the same label vocabulary"
            )
        return _multi_hot(db, "db_labels"), _multi_hot(q, "query_labels")
    if db.ndim == 1 and q.ndim == 1:
        dbi, qi = _class_ids(db, "db_labels"), _class_ids(q, "query_labels")
        c = int(max(dbi.max(initial=-1), qi.max(initial=-1))) + 1
        return _one_hot(dbi, c, "db_labels"), _one_hot(qi, c, "query_labels")
    if db.ndim == 1:
        return _one_hot(_class_ids(db, "db_labels"), q.shape[1], "db_labels"), _multi_hot(q, "query_labels")
    return _multi_hot(db, "db_labels"), _one_hot(_class_ids(q, "query_labels"), db.shape[1], "query_labels")


def _label_words(labels: np.ndarray) -> np.ndarray:
    """Multi-hot bool ``(N, C)`` packed into ``uint64`` words ``(N, ceil(C/64))``."""
    n, c = labels.shape
    nwords = max(1, -(-c // 64))
    packed = np.zeros((n, nwords * 8), dtype=np.uint8)
    if c:
        packed[:, : -(-c // 8)] = np.packbits(labels, axis=1)
    return packed.view(np.uint64)


@dataclass
class _Inputs:
    q: np.ndarray  # packed query codes
    db: np.ndarray  # packed database codes
    q_labels: np.ndarray  # bool (nq, C)
    db_labels: np.ndarray  # bool (nd, C)

    @property
    def bits(self) -> int:
        return self.q.shape[1] * 8


def _prepare(db_codes: Any, query_codes: Any, db_labels: Any, query_labels: Any) -> _Inputs:
    q, db = _check_packed_pair(query_codes, db_codes, "query_codes", "db_codes")
    if q.shape[0] == 0:
        raise ValueError("query_codes is empty: nothing to evaluate")
    if db.shape[0] == 0:
        raise ValueError("db_codes is empty: nothing to retrieve")
    dbl, ql = _normalize_labels(db_labels, query_labels)
    if dbl.shape[0] != db.shape[0]:
        raise ValueError(f"db_labels has {dbl.shape[0]} rows but db_codes has {db.shape[0]}; one label row per code")
    if ql.shape[0] != q.shape[0]:
        raise ValueError(
            f"query_labels has {ql.shape[0]} rows but query_codes has {q.shape[0]}; one label row per code"
        )
    return _Inputs(q=q, db=db, q_labels=ql, db_labels=dbl)


def _check_depths(values: tuple[int, ...], n_db: int, name: str) -> None:
    too_big = [v for v in values if v > n_db]
    if too_big:
        raise ValueError(
            f"{name} contains {too_big} but the database has only {n_db} items; the ranked list "
            f"cannot be that long (the published mAP() would fail with IndexError): use values <= {n_db}"
        )


# ----------------------------------------------------------------------------------------------
# The single chunked pass behind every metric
# ----------------------------------------------------------------------------------------------


@dataclass
class _PassOutput:
    ap_paper: np.ndarray | None = None  # (len(ks), nq)
    ap_standard: np.ndarray | None = None  # (len(ks), nq)
    prec_n: np.ndarray | None = None  # (len(ns), nq)
    pr: PRCurve | None = None


def _relevant_pairs_estimate(inp: _Inputs) -> float:
    """Upper bound on relevant database items per query (sum over classes, over-counts overlaps)."""
    per_class_db = inp.db_labels.sum(axis=0, dtype=np.int64)
    per_class_q = inp.q_labels.sum(axis=0, dtype=np.int64)
    total = float(np.dot(per_class_q.astype(np.float64), per_class_db.astype(np.float64)))
    return min(total / inp.q.shape[0], float(inp.db.shape[0]))


def _run_pass(
    inp: _Inputs,
    ks: tuple[int, ...] = (),
    ns: tuple[int, ...] = (),
    pr: bool = False,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> _PassOutput:
    nq, nd = inp.q.shape[0], inp.db.shape[0]
    bits = inp.bits
    bins = bits + 1
    kmax = max(ks + ns, default=0)
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        cs = int(chunk_size)
    else:
        cs = auto_chunk_size(nq, nd, memory_budget)
        if pr:
            per_q = _relevant_pairs_estimate(inp) * _BYTES_PER_REL_PAIR
            cs = max(1, min(cs, int(memory_budget // max(per_q, 1.0))))
    max_cand = max(1, memory_budget // _BYTES_PER_CANDIDATE)

    out = _PassOutput()
    if kmax:
        q_words = _label_words(inp.q_labels)
        db_words = _label_words(inp.db_labels)
        ranks = np.arange(1, kmax + 1, dtype=np.float64)
        ap_p = np.zeros((len(ks), nq))
        ap_s = np.zeros((len(ks), nq))
        pn = np.zeros((len(ns), nq))
    if pr:
        import scipy.sparse as sp

        q_csr = sp.csr_matrix(inp.q_labels.astype(np.int32))
        db_t = sp.csr_matrix(inp.db_labels.T.astype(np.int32))
        prec_sum = np.zeros(bins)
        prec_cnt = np.zeros(bins, dtype=np.int64)
        rec_sum = np.zeros(bins)
        rec_cnt = 0

    for start, stop, dist in iter_distance_chunks(inp.q, inp.db, cs):
        c = stop - start
        hist = row_histograms(dist, bins)
        if kmax:
            _, idx = select_stable_topk(dist, hist, kmax, max_candidates=max_cand)
            # relevance of the ranked items: any shared label bit
            rel = np.zeros((c, kmax), dtype=bool)
            qw = q_words[start:stop]
            for w in range(qw.shape[1]):
                rel |= (db_words[idx, w] & qw[:, w, None]) != 0
            hits = np.cumsum(rel, axis=1)  # x after rank r
            # sum_{r'<=r} rel(r') * x(r') / r', accumulated left to right like the published loop
            acc = np.cumsum(np.where(rel, hits / ranks, 0.0), axis=1)
            for j, k in enumerate(ks):
                ap_p[j, start:stop] = acc[:, k - 1] / k
                h = hits[:, k - 1]
                ap_s[j, start:stop] = np.where(h > 0, acc[:, k - 1] / np.maximum(h, 1), 0.0)
            for j, n in enumerate(ns):
                pn[j, start:stop] = hits[:, n - 1] / n
        if pr:
            prod = (q_csr[start:stop] @ db_t).tocsr()
            rows = np.repeat(np.arange(c, dtype=np.int64), np.diff(prod.indptr))
            drel = dist[rows, prod.indices]
            hist_rel = np.bincount(rows * bins + drel, minlength=c * bins).reshape(c, bins)
            del prod, rows, drel
            retrieved = np.cumsum(hist, axis=1)
            rel_ret = np.cumsum(hist_rel, axis=1)
            n_rel = rel_ret[:, -1]
            ok = retrieved > 0
            prec_sum += np.where(ok, rel_ret / np.maximum(retrieved, 1), 0.0).sum(axis=0)
            prec_cnt += ok.sum(axis=0)
            has = n_rel > 0
            rec_sum += (rel_ret[has] / n_rel[has, None]).sum(axis=0)
            rec_cnt += int(has.sum())

    if kmax:
        out.ap_paper, out.ap_standard, out.prec_n = ap_p, ap_s, pn
    if pr:
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(prec_cnt > 0, prec_sum / np.maximum(prec_cnt, 1), np.nan)
            recall = rec_sum / rec_cnt if rec_cnt else np.full(bins, np.nan)
        out.pr = PRCurve(
            radii=np.arange(bins, dtype=np.int64),
            precision=precision,
            recall=recall,
            n_precision=prec_cnt,
            n_recall=rec_cnt,
        )
    return out


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def map_at_k(
    db_codes: Any,
    query_codes: Any,
    db_labels: Any,
    query_labels: Any,
    ks: Sequence[int] | int = DEFAULT_KS,
    protocol: str = "paper",
    *,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[int, float]:
    """Mean average precision of the top K by Hamming ranking, for several K.

    Ranking is by Hamming distance with **ties broken by database order** (stable; the published
    code's unstable ``np.argsort`` leaves tie order implementation-defined). With ``rel(r)`` the
    relevance (shares a label) of rank ``r`` and ``P@r`` the precision at ``r``:

    * ``protocol="paper"``: ``AP@K = (1/K) sum_{r<=K} rel(r) P@r`` (the published ``mAP()``).
    * ``protocol="standard"``: the same sum divided by the number of relevant items in the top K,
      0 when there is none.

    mAP@K is the mean of AP@K over all queries. Queries may be part of the database (FCVID
    self-retrieval): nothing is removed.

    Args:
        db_codes: Database codes, {-1, +1} ``(N_db, bits)`` or packed ``uint8`` ``(N_db, bits/8)``.
        query_codes: Query codes in either form, same code length.
        db_labels: Multi-hot ``(N_db, C)`` (bool or 0/1) or 1-D integer class ids ``(N_db,)``.
        query_labels: Same for the queries (same ``C``).
        ks: Cut-offs K (each ``1 <= K <= N_db``).
        protocol: ``"paper"`` or ``"standard"``.
        chunk_size: Queries per chunk; ``None`` picks it from ``memory_budget``. Results do not
            depend on it.
        memory_budget: Working-set bytes per chunk when ``chunk_size`` is ``None``.

    Returns:
        ``{K: mAP@K}`` in the order of ``ks``.

    Raises:
        ValueError: On malformed or mismatched inputs, an unknown protocol, or ``K > N_db``.
    """
    _check_protocol(protocol)
    ks_t = _check_ints(ks, "ks")
    inp = _prepare(db_codes, query_codes, db_labels, query_labels)
    _check_depths(ks_t, inp.db.shape[0], "ks")
    res = _run_pass(inp, ks=ks_t, chunk_size=chunk_size, memory_budget=memory_budget)
    ap = res.ap_paper if protocol == "paper" else res.ap_standard
    return {k: float(np.mean(ap[j])) for j, k in enumerate(ks_t)}


def precision_at_n(
    db_codes: Any,
    query_codes: Any,
    db_labels: Any,
    query_labels: Any,
    ns: Sequence[int] | int = DEFAULT_PRECISION_NS,
    *,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[int, float]:
    """Mean over queries of the precision of the top N (stable Hamming ranking, as :func:`map_at_k`).

    Args:
        db_codes: Database codes ({-1, +1} or packed).
        query_codes: Query codes, same code length.
        db_labels: Multi-hot ``(N_db, C)`` or 1-D class ids.
        query_labels: Same for the queries.
        ns: Cut-offs N (each ``1 <= N <= N_db``).
        chunk_size: Queries per chunk (``None``: automatic).
        memory_budget: Working-set bytes per chunk when ``chunk_size`` is ``None``.

    Returns:
        ``{N: mean P@N}``.
    """
    ns_t = _check_ints(ns, "ns")
    inp = _prepare(db_codes, query_codes, db_labels, query_labels)
    _check_depths(ns_t, inp.db.shape[0], "ns")
    res = _run_pass(inp, ns=ns_t, chunk_size=chunk_size, memory_budget=memory_budget)
    return {n: float(np.mean(res.prec_n[j])) for j, n in enumerate(ns_t)}


def pr_curve(
    db_codes: Any,
    query_codes: Any,
    db_labels: Any,
    query_labels: Any,
    *,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> PRCurve:
    """Precision and recall of Hamming-radius lookup at every radius ``0..bits``.

    Averaged per query then over queries; see :class:`PRCurve` for which queries enter each mean.
    Relevant pairs are found from sparse labels and the distances per chunk are histogrammed, so
    memory stays bounded (``chunk x N_db`` distances at a time).

    Args:
        db_codes: Database codes ({-1, +1} or packed).
        query_codes: Query codes, same code length.
        db_labels: Multi-hot ``(N_db, C)`` or 1-D class ids.
        query_labels: Same for the queries.
        chunk_size: Queries per chunk (``None``: automatic).
        memory_budget: Working-set bytes per chunk when ``chunk_size`` is ``None``.

    Returns:
        The :class:`PRCurve`.
    """
    inp = _prepare(db_codes, query_codes, db_labels, query_labels)
    res = _run_pass(inp, pr=True, chunk_size=chunk_size, memory_budget=memory_budget)
    assert res.pr is not None
    return res.pr


def evaluate(
    db_codes: Any,
    query_codes: Any,
    db_labels: Any,
    query_labels: Any,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    protocol: str = "paper",
    pr: bool = True,
    precision_ns: Sequence[int] = DEFAULT_PRECISION_NS,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> EvalResult:
    """mAP@K, P@N and (optionally) the PR curve in one chunked pass over the queries.

    Same semantics as :func:`map_at_k`, :func:`precision_at_n` and :func:`pr_curve` (each
    distance chunk is computed once and feeds all three).

    Args:
        db_codes: Database codes ({-1, +1} or packed).
        query_codes: Query codes, same code length.
        db_labels: Multi-hot ``(N_db, C)`` or 1-D class ids.
        query_labels: Same for the queries.
        ks: Cut-offs for mAP@K (each ``<= N_db``).
        protocol: ``"paper"`` (divide by K) or ``"standard"`` (divide by relevant retrieved).
        pr: Also compute the PR curve over Hamming radii.
        precision_ns: Cut-offs for P@N (each ``<= N_db``); empty for none.
        chunk_size: Queries per chunk (``None``: automatic).
        memory_budget: Working-set bytes per chunk when ``chunk_size`` is ``None``.

    Returns:
        An :class:`EvalResult`.
    """
    t0 = time.perf_counter()
    _check_protocol(protocol)
    ks_t = _check_ints(ks, "ks")
    ns_t = _check_ints(precision_ns, "precision_ns") if len(precision_ns) else ()
    inp = _prepare(db_codes, query_codes, db_labels, query_labels)
    _check_depths(ks_t, inp.db.shape[0], "ks")
    _check_depths(ns_t, inp.db.shape[0], "precision_ns")
    res = _run_pass(inp, ks=ks_t, ns=ns_t, pr=pr, chunk_size=chunk_size, memory_budget=memory_budget)
    ap = res.ap_paper if protocol == "paper" else res.ap_standard
    return EvalResult(
        protocol=protocol,
        map_at_k={k: float(np.mean(ap[j])) for j, k in enumerate(ks_t)},
        precision_at_n={n: float(np.mean(res.prec_n[j])) for j, n in enumerate(ns_t)},
        pr=res.pr,
        n_query=int(inp.q.shape[0]),
        n_db=int(inp.db.shape[0]),
        bits=inp.bits,
        seconds=time.perf_counter() - t0,
    )

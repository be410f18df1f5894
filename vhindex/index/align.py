"""Temporal alignment of a query video with a result video: which segments match, from frame matches.

Copy detectors that work from frame matches (temporal Hough voting, temporal match kernels) rest on
one observation: the matched frames of a true copy lie on a line ``t_db = speed * t_query + offset``,
while chance matches scatter. :func:`align_segments` finds such lines by voting:

1. For each candidate ``speed`` (a geometric grid from ``1 / max_speed`` to ``max_speed``, 1 included:
   a re-timed copy plays faster or slower), every frame match ``(t_q, t_d, similarity)`` votes for the
   offset ``t_d - speed * t_q``; votes are binned at the alignment tolerance and weighted by similarity,
   and a bin's score also counts its two neighbours (an offset on a bin edge is not split).
2. The best ``(speed, offset bin)`` wins; its inliers are the matches within the tolerance of the line
   through the weighted median offset, at most one per query frame (the most similar); the query
   segment spans the inliers' query times and the database segment their database times, each widened
   by half a sampling step (a sampled frame stands for the interval around it).
3. Its inliers are removed and the vote repeats, for up to ``max_segments`` segments (a query that
   copies two parts of a video, or the same part twice).

A segment's ``score`` is the sum of its inliers' similarities divided by the query's frame count: 1.0
when every query frame matches exactly along the line.

:func:`frame_matches` makes the matches from frame codes: for every query frame, the database frames
at its smallest Hamming distances (``per_frame`` of them), when within ``max_distance``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["Segment", "align_codes", "align_segments", "frame_matches"]


@dataclasses.dataclass(frozen=True)
class Segment:
    """One matched segment pair.

    Attributes:
        query_start, query_end: seconds in the query video.
        db_start, db_end: seconds in the database video.
        speed: database seconds per query second (1: same speed; 2: the query plays the database part
            twice as fast, i.e. it is shorter).
        score: sum of the inlier matches' similarities / query frames, in ``[0, 1]``.
        matches: inlier frame matches.
    """

    query_start: float
    query_end: float
    db_start: float
    db_end: float
    speed: float
    score: float
    matches: int

    def as_dict(self) -> dict[str, float]:
        """JSON-ready form (seconds rounded to ms)."""
        return {"query_start": round(self.query_start, 3), "query_end": round(self.query_end, 3),
                "db_start": round(self.db_start, 3), "db_end": round(self.db_end, 3),
                "speed": round(self.speed, 4), "score": round(self.score, 6), "matches": self.matches}


def frame_matches(query_codes: np.ndarray, db_codes: np.ndarray, bits: int, *, slack: int | None = None,
                  max_distance: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame matches between two videos' packed frame codes.

    Every database frame within ``slack`` bits of a query frame's nearest one is a candidate (not just the
    nearest: in slow or static footage many frames are equally close, and keeping one of them -- the first
    -- would pile every match onto the start of the video).

    Args:
        query_codes: ``uint8 (Mq, bits/8)``.
        db_codes: ``uint8 (Md, bits/8)``.
        bits: code length.
        slack: extra bits over the nearest distance a candidate may have (default ``bits // 16``).
        max_distance: matches farther than this are dropped (default ``bits // 4``).

    Returns:
        ``(query frame indices, database frame indices, similarities = 1 - hamming / bits)``.
    """
    q = np.asarray(query_codes, dtype=np.uint8)
    d = np.asarray(db_codes, dtype=np.uint8)
    limit = bits // 4 if max_distance is None else int(max_distance)
    slack = bits // 16 if slack is None else int(slack)
    ham = np.unpackbits(q[:, None, :] ^ d[None, :, :], axis=2).sum(axis=2)  # (Mq, Md): two videos, small
    nearest = ham.min(axis=1, keepdims=True)
    keep = (ham <= nearest + slack) & (ham <= limit)
    qi, di = np.nonzero(keep)
    return qi, di, 1.0 - ham[qi, di] / float(bits)


def _speeds(max_speed: float, steps: int) -> np.ndarray:
    grid = np.exp(np.linspace(-np.log(max_speed), np.log(max_speed), 2 * steps + 1))
    grid[steps] = 1.0
    return grid


def _step(times: np.ndarray) -> float:
    t = np.unique(np.asarray(times, dtype=np.float64))
    return float(np.median(np.diff(t))) if t.size > 1 else 1.0


def align_segments(query_times: Sequence[float], db_times: Sequence[float], query_idx: np.ndarray,
                   db_idx: np.ndarray, similarity: np.ndarray, *, max_speed: float = 2.0, speed_steps: int = 12,
                   tolerance_s: float | None = None, min_matches: int = 2,
                   max_segments: int = 3) -> list[Segment]:
    """Matched segments between a query and a database video (module docs), best first.

    Args:
        query_times: seconds of each query frame (by frame index).
        db_times: seconds of each database frame.
        query_idx: query frame of each match.
        db_idx: database frame of each match.
        similarity: weight of each match (``1 - hamming / bits``).
        max_speed: the largest speed change considered (and its inverse).
        speed_steps: grid points on each side of speed 1.
        tolerance_s: how far (database seconds) an inlier may lie from the line; default one database
            sampling step, or one query step times the speed when that is larger.
        min_matches: fewest inliers (distinct query frames) for a segment.
        max_segments: most segments returned.

    Returns:
        Segments, highest score first; empty when no line gathers ``min_matches`` matches.
    """
    qt = np.asarray(query_times, dtype=np.float64)
    dt = np.asarray(db_times, dtype=np.float64)
    qi = np.asarray(query_idx, dtype=np.int64)
    di = np.asarray(db_idx, dtype=np.int64)
    w = np.asarray(similarity, dtype=np.float64)
    if not (qi.shape == di.shape == w.shape):
        raise ValueError(f"query_idx, db_idx and similarity must have one entry per match, got shapes "
                         f"{qi.shape}, {di.shape}, {w.shape}")
    if max_speed < 1.0:
        raise ValueError(f"max_speed must be >= 1, got {max_speed}")
    q_step, d_step = _step(qt), _step(dt)
    n_query = max(len(qt), 1)
    alive = np.ones(qi.size, dtype=bool)
    segments: list[Segment] = []
    speeds = _speeds(max_speed, speed_steps) if max_speed > 1.0 else np.array([1.0])
    while len(segments) < max_segments and alive.sum() >= min_matches:
        a = np.flatnonzero(alive)
        tq, td, ww = qt[qi[a]], dt[di[a]], w[a]
        s, tol, off, near = _best_line(speeds, tq, td, ww, qi[a], q_step, d_step, tolerance_s)
        centre = _weighted_median(off[near], ww[near])
        inlier = np.abs(off - centre) <= tol
        # one match per query frame: its most similar inlier
        idx = a[inlier]
        if idx.size:
            order = np.lexsort((-w[idx], qi[idx]))
            idx = idx[order]
            first = np.ones(idx.size, dtype=bool)
            first[1:] = qi[idx][1:] != qi[idx][:-1]
            idx = idx[first]
        if idx.size < min_matches:
            break
        q_lo, q_hi = qt[qi[idx]].min(), qt[qi[idx]].max()
        d_lo, d_hi = dt[di[idx]].min(), dt[di[idx]].max()
        segments.append(Segment(
            query_start=float(max(0.0, q_lo - q_step / 2)), query_end=float(q_hi + q_step / 2),
            db_start=float(max(0.0, d_lo - d_step / 2)), db_end=float(d_hi + d_step / 2),
            speed=float(s), score=float(w[idx].sum() / n_query), matches=int(idx.size)))
        alive[a[inlier]] = False  # every match on the line, not only the ones kept
    segments.sort(key=lambda g: -g.score)
    return segments


def _best_line(speeds: np.ndarray, tq: np.ndarray, td: np.ndarray, ww: np.ndarray, qf: np.ndarray, q_step: float,
               d_step: float, tolerance_s: float | None) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The Hough vote of :func:`align_segments`, every (speed, grid shift) at once.

    For each speed ``s`` (tolerance ``tol``) and each of two grids staggered by half a bin, the offsets
    ``td - s * tq`` fall in bins of width ``2 tol``; each query frame votes once per bin, with its best
    similarity there. The winner has the most votes, then the speed nearest 1, then the longer database
    span, then comes first in (speed, shift) order. Returns ``(speed, tol, offsets, matches in the bin)``.
    """
    n = tq.size
    tols = (np.full(speeds.size, float(tolerance_s)) if tolerance_s is not None
            else np.maximum(d_step, speeds * q_step))
    off = td[None, :] - speeds[:, None] * tq[None, :]  # (S, n)
    shifts = np.array([0.0, 0.5])
    bins = np.floor(off[:, None, :] / (2 * tols)[:, None, None] + shifts[None, :, None]).astype(np.int64)
    bins = bins.reshape(-1, n)  # (S * 2, n): combo c = speed * 2 + shift
    rel = bins - bins.min(axis=1, keepdims=True)
    width = int(rel.max()) + 1
    combos = rel.shape[0]
    group = np.arange(combos)[:, None] * width + rel  # (combo, bin), unique over all combos
    q_span = int(qf.max()) + 1 if n else 1
    key = (group * q_span + qf[None, :]).ravel()
    w_all = np.broadcast_to(ww, (combos, n)).ravel()
    order = np.lexsort((-w_all, key))
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    sel = order[first]  # each query frame once per (combo, bin), its best similarity
    votes = np.bincount(group.ravel()[sel], weights=w_all[sel], minlength=combos * width).reshape(combos, width)
    best_bin = np.argmax(votes, axis=1)
    best_votes = np.round(votes[np.arange(combos), best_bin], 9)
    near = rel == best_bin[:, None]  # (combo, n)
    td_b = np.broadcast_to(td, (combos, n))
    span = np.where(near.any(axis=1),
                    np.where(near, td_b, -np.inf).max(axis=1) - np.where(near, td_b, np.inf).min(axis=1), 0.0)
    closeness = -np.abs(np.log(np.repeat(speeds, 2)))
    pick = np.lexsort((-np.arange(combos), span, closeness, best_votes))[-1]
    si = pick // 2
    return float(speeds[si]), float(tols[si]), off[si], near[pick]


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    v, c = values[order], np.cumsum(weights[order])
    return float(v[np.searchsorted(c, c[-1] / 2)])


def align_codes(query_codes: np.ndarray, query_times: np.ndarray | None, db_codes: np.ndarray,
                db_times: np.ndarray | None, bits: int, **kwargs: Any) -> list[Segment]:
    """Matched segments of two videos from their packed frame codes (:func:`frame_matches` then
    :func:`align_segments`). Times that are missing (None or NaN) fall back to frame positions
    (``i + 0.5``, in frames, not seconds).

    Args:
        query_codes: ``uint8 (Mq, bits/8)``.
        query_times: seconds of the query frames, or None.
        db_codes: ``uint8 (Md, bits/8)``.
        db_times: seconds of the database frames, or None.
        bits: code length.
        **kwargs: passed to :func:`align_segments`.
    """
    q = np.asarray(query_codes, dtype=np.uint8)
    d = np.asarray(db_codes, dtype=np.uint8)
    qt = _times_or_positions(query_times, q.shape[0])
    dt = _times_or_positions(db_times, d.shape[0])
    qi, di, sim = frame_matches(q, d, bits)
    return align_segments(qt, dt, qi, di, sim, **kwargs)


def _times_or_positions(times: np.ndarray | None, n: int) -> np.ndarray:
    positions = np.arange(n) + 0.5
    if times is None:
        return positions
    t = np.asarray(times, dtype=np.float64)
    return np.where(np.isnan(t), positions, t)

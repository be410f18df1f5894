"""Temporal alignment on constructed videos whose true segment pairs are known.

Frame codes: a distinct random 64-bit code per database frame; a query frame that copies database
frame ``j`` gets its code with up to 3 bits flipped; query frames of other content get fresh random
codes. Oracle: the construction's own segment bounds (widened by half a sampling step, as the
module documents), compared within one sampling step.
"""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.index.align import Segment, align_segments, frame_matches

BITS = 64


def _noisy(codes: np.ndarray, rng: np.random.Generator, flips: int = 3) -> np.ndarray:
    out = codes.copy()
    for row in out:
        for b in rng.choice(BITS, size=rng.integers(0, flips + 1), replace=False):
            row[b // 8] ^= np.uint8(1 << (7 - b % 8))
    return out


def _align(q_codes, q_times, d_codes, d_times, **kw) -> list[Segment]:
    qi, di, sim = frame_matches(q_codes, d_codes, BITS)
    return align_segments(q_times, d_times, qi, di, sim, **kw)


def _close(seg: Segment, q: tuple[float, float], d: tuple[float, float], tol: float) -> None:
    got = (seg.query_start, seg.query_end, seg.db_start, seg.db_end)
    want = (*q, *d)
    assert np.allclose(got, want, atol=tol), (got, want)


@pytest.mark.parametrize("seed", range(5))
def test_trim_speed_change_and_an_inserted_clip(seed):
    rng = np.random.default_rng(seed)
    fps = 5.0
    db = rng.integers(0, 256, size=(100, BITS // 8), dtype=np.uint8)
    db_t = (np.arange(100) + 0.5) / fps  # 20 s, a frame every 0.2 s

    # trim: the query is database seconds [6, 14) at the same speed
    a, b = 30, 70
    q = _noisy(db[a:b], rng)
    q_t = (np.arange(b - a) + 0.5) / fps
    seg = _align(q, q_t, db, db_t)[0]
    _close(seg, (0.0, 8.0), (6.0, 14.0), 0.2)
    assert seg.speed == 1.0 and seg.matches == b - a and seg.score > 0.9

    # speed: the query plays database seconds [4, 16) at 1.5x, sampled at the same 5 fps
    n = 40
    src = np.round(20 + 1.5 * np.arange(n)).astype(int)  # database frames shown
    q = _noisy(db[src], rng)
    q_t = (np.arange(n) + 0.5) / fps
    seg = _align(q, q_t, db, db_t)[0]
    assert abs(seg.speed - 1.5) < 0.1
    _close(seg, (0.0, 8.0), (db_t[src[0]] - 0.1, db_t[src[-1]] + 0.1), 0.35)

    # inserted: 30 frames of other content, database [2, 8), 40 frames of other content
    other = rng.integers(0, 256, size=(70, BITS // 8), dtype=np.uint8)
    q = np.concatenate([other[:30], _noisy(db[10:40], rng), other[30:]])
    q_t = (np.arange(100) + 0.5) / fps
    seg = _align(q, q_t, db, db_t)[0]
    _close(seg, (6.0, 12.0), (2.0, 8.0), 0.2)
    assert seg.speed == 1.0 and abs(seg.score - 0.3) < 0.05  # 30 of 100 query frames copy the video


def test_two_copied_parts_give_two_segments_and_unrelated_videos_none():
    rng = np.random.default_rng(7)
    db = rng.integers(0, 256, size=(60, BITS // 8), dtype=np.uint8)
    db_t = np.arange(60) + 0.5  # one frame a second
    q = np.concatenate([db[40:50], db[5:20]])  # two parts, in swapped order
    q_t = np.arange(25) + 0.5
    segs = _align(q, q_t, db, db_t)
    assert len(segs) >= 2
    first, second = segs[0], segs[1]
    _close(first, (10.0, 25.0), (5.0, 20.0), 1e-9)  # the longer part scores higher
    _close(second, (0.0, 10.0), (40.0, 50.0), 1e-9)
    unrelated = rng.integers(0, 256, size=(30, BITS // 8), dtype=np.uint8)
    assert _align(unrelated, np.arange(30) + 0.5, db, db_t) == []


def test_frame_matches_and_bad_input():
    d = np.array([[0x00], [0xFF], [0x0F]], dtype=np.uint8)
    q = np.array([[0x01], [0xF0]], dtype=np.uint8)
    qi, di, sim = frame_matches(q, d, 8, slack=2, max_distance=4)
    # query 0: nearest 0x00 at 1, 0x0F at 3 within the slack (0xFF at 7 not); query 1: 0x00 and 0xFF both at 4
    assert list(zip(qi.tolist(), di.tolist(), sim.tolist(), strict=True)) == [
        (0, 0, 1 - 1 / 8), (0, 2, 1 - 3 / 8), (1, 0, 0.5), (1, 1, 0.5)]
    with pytest.raises(ValueError, match="one entry per match"):
        align_segments([0.5], [0.5], np.array([0]), np.array([0, 1]), np.array([1.0]))

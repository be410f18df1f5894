"""FrameLevelIndex (UTS Algorithm 1) against an oracle written literally from the paper."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from vhindex.index import FrameLevelIndex, pack_codes, unpack_codes
from vhindex.index.frames import CODES_FILE, MANIFEST_FILE, rank_videos_leave_one_out

# ------------------------------------------------------------------ the oracle


def frame_level_scores_bruteforce(
    gallery: list[tuple[str, np.ndarray]], query: np.ndarray, bits: int, top_n: int, exclude: str | None = None
) -> tuple[list[str], list[Fraction]]:
    """Algorithm 1 of the UTS paper, line by line, with exact rational scores.

    ``gallery`` is ``[(video id, packed codes (M_i, bits/8)), ...]`` in gallery order; ``exclude``
    removes that video from the gallery before anything else. Returns the full ranking of the
    (remaining) gallery videos by score descending then gallery position, with their scores.
    """
    videos = [(vid, codes) for vid, codes in gallery if vid != exclude]
    frames = np.concatenate([codes for _, codes in videos])
    frame_video = [vid for vid, codes in videos for _ in range(len(codes))]
    q_bits = np.unpackbits(query, axis=1).astype(np.int64)
    g_bits = np.unpackbits(frames, axis=1).astype(np.int64)
    distances = (q_bits[:, None, :] != g_bits[None, :, :]).sum(axis=2)  # dense Hamming matrix
    S = {vid: Fraction(0) for vid, _ in videos}  # 1: all-zero scores
    for f in range(len(query)):  # 2: each query frame
        top = np.argsort(distances[f], kind="stable")[:top_n]  # 3: top-N by (distance, index)
        X = {vid: 0 for vid, _ in videos}  # 4
        for g in top:  # 5: best first
            v = frame_video[g]  # 6
            if X[v] == 0:  # 7
                S[v] += 1 - Fraction(int(distances[f, g]), bits)
                X[v] = 1
    for v in S:  # 13
        S[v] /= len(query)
    position = {vid: i for i, (vid, _) in enumerate(videos)}
    ranked = sorted(S, key=lambda v: (-S[v], position[v]))
    return ranked, [S[v] for v in ranked]


# ------------------------------------------------------------------ data helpers


def tie_heavy_gallery(rng: np.random.Generator, bits: int, n_videos: int, *, distinct: int = 5, max_frames: int = 6):
    """Videos with 1..max_frames frames drawn from a tiny pool of codes: distances tie a lot."""
    pool = rng.integers(0, 256, size=(distinct, bits // 8), dtype=np.uint8)
    gallery = []
    for i in range(n_videos):
        m = int(rng.integers(1, max_frames + 1))
        gallery.append((f"v{i:02d}", pool[rng.integers(0, distinct, m)]))
    return gallery, pool


def build(gallery, bits, **kw) -> FrameLevelIndex:
    index = FrameLevelIndex(bits, **kw)
    index.add([vid for vid, _ in gallery], [codes for _, codes in gallery])
    return index


def assert_matches_oracle(got: tuple[list[str], np.ndarray], ranked: list[str], scores: list[Fraction], k: int):
    ids, got_scores = got
    assert ids == ranked[:k]
    assert got_scores.dtype == np.float64
    # exact equality: the index divides exact integer sums once, float(Fraction) rounds correctly
    assert got_scores.tolist() == [float(s) for s in scores[:k]]


# ------------------------------------------------------------------ against the oracle


@pytest.mark.parametrize("bits,seed,method", [(8, 0, "auto"), (8, 1, "auto"), (16, 2, "auto"), (16, 3, "auto"),
                                             (16, 2, "mih"), (16, 3, "mih")])
def test_search_matches_oracle_with_many_ties(bits, seed, method):
    rng = np.random.default_rng(seed)
    gallery, pool = tie_heavy_gallery(rng, bits, n_videos=14)
    index = build(gallery, bits, method=method)
    assert index.uses_mih == (method == "mih")
    total = index.ntotal_frames
    queries = [pool[rng.integers(0, len(pool), int(rng.integers(1, 5)))] for _ in range(3)]
    queries += [gallery[i][1] for i in (0, 5, 13)]  # also gallery videos, to leave them out
    excludes = [None, None, "v07", "v00", "v05", None]
    for top_n in (1, 2, 5, total - 1, total + 7):
        for q, ex in zip(queries, excludes, strict=True):
            ranked, scores = frame_level_scores_bruteforce(gallery, q, bits, top_n, exclude=ex)
            for k in (1, 4, len(ranked), len(ranked) + 3):
                assert_matches_oracle(index.search(q, k, top_n=top_n, exclude=ex), ranked, scores, k)
            dense = index.scores(q, top_n=top_n, exclude=ex)
            expected = {vid: float(s) for vid, s in zip(ranked, scores, strict=True)}
            assert dense.tolist() == [expected.get(vid, 0.0) for vid, _ in gallery]
        batch = index.search_batch(queries, 5, top_n=top_n, exclude=excludes)
        for got, q, ex in zip(batch, queries, excludes, strict=True):
            assert_matches_oracle(got, *frame_level_scores_bruteforce(gallery, q, bits, top_n, exclude=ex), 5)


def test_chunked_batches_equal_one_pass_and_oracle():
    """A tiny memory budget forces one query per chunk (and small top-k chunks); results do not change."""
    bits = 16
    rng = np.random.default_rng(7)
    gallery, pool = tie_heavy_gallery(rng, bits, n_videos=20, distinct=4, max_frames=8)
    big, small = build(gallery, bits), build(gallery, bits, memory_budget=1, num_threads=1)
    queries = [gallery[i][1] for i in range(20)] + [pool[:2], pool[1:]]
    excludes = [vid for vid, _ in gallery] + [None, "v03"]
    for top_n in (1, 3, 10):
        a = big.search_batch(queries, 7, top_n=top_n, exclude=excludes)
        b = small.search_batch(queries, 7, top_n=top_n, exclude=excludes)
        for (ids_a, s_a), (ids_b, s_b), q, ex in zip(a, b, queries, excludes, strict=True):
            assert ids_a == ids_b and s_a.tolist() == s_b.tolist()
            assert_matches_oracle((ids_a, s_a), *frame_level_scores_bruteforce(gallery, q, bits, top_n, ex), 7)


def test_leave_one_out_ranking_matches_oracle():
    bits = 8
    rng = np.random.default_rng(11)
    gallery, _ = tie_heavy_gallery(rng, bits, n_videos=10)
    index = build(gallery, bits)
    ids = [vid for vid, _ in gallery]
    codes = [c for _, c in gallery]
    for top_n in (1, 4, 100):
        rankings = rank_videos_leave_one_out(index, ids, codes, top_n=top_n)
        for vid, c, ranking in zip(ids, codes, rankings, strict=True):
            assert len(ranking) == len(ids) - 1 and vid not in ranking
            assert ranking == frame_level_scores_bruteforce(gallery, c, bits, top_n, exclude=vid)[0]
    assert rank_videos_leave_one_out(index, [], []) == []


# ------------------------------------------------------------------ a hand-computed case


def test_hand_computed_three_videos():
    # gallery frames in order: A0=ff A1=0f B0=f0 C0=00 C1=fe; query frames ff, 00
    #   distances from ff: A0 0, A1 4, B0 4, C0 8, C1 1 -> order A0 C1 A1 B0 C0
    #   distances from 00: A0 8, A1 4, B0 4, C0 0, C1 7 -> order C0 A1 B0 C1 A0 (A1 before B0: index)
    u8 = lambda *xs: np.array([[x] for x in xs], dtype=np.uint8)  # noqa: E731
    index = FrameLevelIndex(8)
    index.add(["A", "B"], [u8(0xFF, 0x0F), u8(0xF0)])
    index.add(["C"], [u8(0x00, 0xFE)])
    assert (index.num_videos, index.ntotal_frames) == (3, 5)
    q = u8(0xFF, 0x00)

    def run(top_n, exclude=None):
        ids, scores = index.search(q, 10, top_n=top_n, exclude=exclude)
        return ids, scores.tolist()

    # N=1: A += 1 (A0), C += 1 (C0); /2 -> A .5, C .5 tie -> gallery order A, C; B never hit
    assert run(1) == (["A", "C", "B"], [0.5, 0.5, 0.0])
    # N=2: A += 1 (A0), C += 7/8 (C1); C += 1 (C0), A += 1/2 (A1) -> A 1.5/2, C 1.875/2
    assert run(2) == (["C", "A", "B"], [0.9375, 0.75, 0.0])
    # N=3: as N=2, A1 skipped for frame ff (A already hit); B += 1/2 (B0) for frame 00
    assert run(3) == (["C", "A", "B"], [0.9375, 0.75, 0.25])
    # N=5 (all frames): B also gets 1/2 for frame ff
    assert run(5) == (["C", "A", "B"], [0.9375, 0.75, 0.5])
    # without A (gallery B0 C0 C1), N=2: ff -> C1 (7/8), B0 (1/2); 00 -> C0 (1), B0 (1/2)
    assert run(2, exclude="A") == (["C", "B"], [0.9375, 0.5])
    # without C (gallery A0 A1 B0), N=1: ff -> A0 (1); 00 -> A1 (1/2; ties B0, earlier index)
    assert run(1, exclude="C") == (["A", "B"], [0.75, 0.0])
    np.testing.assert_array_equal(index.scores(q, top_n=2), [0.75, 0.0, 0.9375])
    np.testing.assert_array_equal(index.scores(q, top_n=2, exclude="A"), [0.0, 0.5, 0.9375])
    ids, scores = index.search(q, 1, top_n=2)
    assert ids == ["C"] and scores.tolist() == [0.9375]


# ------------------------------------------------------------------ input forms, persistence


def test_signs_and_packed_inputs_agree_and_3d_equals_list():
    bits = 16
    rng = np.random.default_rng(3)
    packed = rng.integers(0, 256, size=(6, 4, bits // 8), dtype=np.uint8)
    ids = [f"x{i}" for i in range(6)]
    as_signs = unpack_codes(packed.reshape(-1, bits // 8), bits).reshape(6, 4, bits)
    a, b, c = FrameLevelIndex(bits), FrameLevelIndex(bits), FrameLevelIndex(bits)
    a.add(ids, packed)
    b.add(ids, as_signs.astype(np.float32))
    c.add(ids[:2], [packed[0], as_signs[1]])  # list form, mixed, over two add calls
    c.add(ids[2:], list(packed[2:]))
    for other in (b, c):
        np.testing.assert_array_equal(other.codes, a.codes)
        np.testing.assert_array_equal(other.offsets, a.offsets)
        assert other.video_ids == a.video_ids
    q = packed[2]
    q_signs = unpack_codes(q, bits)
    assert pack_codes(q_signs).tolist() == q.tolist()
    want = a.search(q, 6, top_n=5)
    for other in (a, b, c):
        for query in (q, q_signs):
            ids_got, scores = other.search(query, 6, top_n=5)
            assert ids_got == want[0] and scores.tolist() == want[1].tolist()


def test_save_load_round_trip_and_corruption(tmp_path):
    bits = 16
    rng = np.random.default_rng(5)
    gallery, pool = tie_heavy_gallery(rng, bits, n_videos=8, distinct=6)
    index = build(gallery, bits)
    url = str(tmp_path / "frames")
    index.save(url)
    loaded = FrameLevelIndex.load(url)
    assert (loaded.bits, loaded.num_videos, loaded.ntotal_frames) == (bits, 8, index.ntotal_frames)
    assert loaded.video_ids == index.video_ids
    np.testing.assert_array_equal(loaded.codes, index.codes)
    np.testing.assert_array_equal(loaded.frame_counts, index.frame_counts)
    q = pool[:3]
    ids, scores = index.search(q, 8, top_n=4, exclude="v02")
    ids2, scores2 = loaded.search(q, 8, top_n=4, exclude="v02")
    assert ids == ids2 and scores.tolist() == scores2.tolist()
    loaded.add(["new"], [pool[:1]])  # a loaded index keeps growing
    assert loaded.num_videos == 9 and loaded.search(pool[:1], 1, top_n=1)[0] != []
    with pytest.raises(ValueError, match="duplicate video id 'v01'"):
        loaded.add(["v01"], [pool[:1]])

    # an in-memory fsspec URL works the same way
    index.save("memory://vhindex-test-frames/idx")
    assert FrameLevelIndex.load("memory://vhindex-test-frames/idx").video_ids == index.video_ids

    path = tmp_path / "frames" / CODES_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"checksum mismatch for {CODES_FILE}"):
        FrameLevelIndex.load(url)
    (tmp_path / "frames" / MANIFEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        FrameLevelIndex.load(url)


def test_empty_gallery_and_small_k():
    index = FrameLevelIndex(8)
    ids, scores = index.search(np.array([[1]], np.uint8), 3)
    assert ids == [] and scores.shape == (0,) and scores.dtype == np.float64
    assert index.scores(np.array([[1]], np.uint8)).shape == (0,)
    index.add(["a"], [np.array([[1]], np.uint8)])
    assert index.search(np.array([[1]], np.uint8), 3, exclude="a")[0] == []
    assert index.search_batch([], 3) == []


# ------------------------------------------------------------------ bad inputs


def test_bad_inputs_raise_clear_errors():
    bits = 16
    index = FrameLevelIndex(bits)
    good = np.zeros((2, 2), dtype=np.uint8)
    index.add(["a", "b"], [good, good[:1]])
    with pytest.raises(ValueError, match=r"positive multiple of 8"):
        FrameLevelIndex(12)
    # code length: expected vs got
    with pytest.raises(ValueError, match=r"video 'c'.*\(N, 2\).*\(N, 16\).*got uint8 \(2, 3\)"):
        index.add(["c"], [np.zeros((2, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"video 'c'.*got int8 \(2, 8\)"):
        index.add(["c"], [np.ones((2, 8), np.int8)])
    with pytest.raises(ValueError, match=r"video 'c'.*values \[2\]"):
        index.add(["c"], [np.full((2, 16), 2, np.int8)])
    with pytest.raises(ValueError, match="3-D"):
        index.add(["c"], np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        index.add(["c"], [np.zeros(2, np.uint8)])
    # duplicates, also across add calls; empty videos; counts
    with pytest.raises(ValueError, match="duplicate video id 'a'"):
        index.add(["c", "a"], [good, good])
    with pytest.raises(ValueError, match="duplicate video id 'd'"):
        index.add(["d", "d"], [good, good])
    with pytest.raises(ValueError, match="video 'e' has no frames"):
        index.add(["c", "e"], [good, np.zeros((0, 2), np.uint8)])
    with pytest.raises(ValueError, match="has no frames"):
        index.add(["c"], np.zeros((1, 0, 2), np.uint8))
    with pytest.raises(ValueError, match="2 video ids but 1 videos"):
        index.add(["c", "e"], [good])
    with pytest.raises(ValueError, match="single str"):
        index.add("c", [good])
    with pytest.raises(TypeError, match="must be str"):
        index.add([3], [good])
    assert (index.num_videos, index.ntotal_frames) == (2, 3)  # failed adds added nothing
    # search arguments
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive int"):
            index.search(good, k)
    for top_n in (0, -3, None):
        with pytest.raises(ValueError, match="top_n must be a positive int"):
            index.search(good, 1, top_n=top_n)
        with pytest.raises(ValueError, match="top_n must be a positive int"):
            index.scores(good, top_n=top_n)
    with pytest.raises(ValueError, match=r"exclude id 'zz' \(query 0\) is not a video"):
        index.search(good, 1, exclude="zz")
    with pytest.raises(ValueError, match="exclude id 'zz'"):
        index.scores(good, exclude="zz")
    with pytest.raises(ValueError, match=r"query video 0.*\(N, 2\).*got uint8 \(1, 1\)"):
        index.search(np.zeros((1, 1), np.uint8), 1)
    with pytest.raises(ValueError, match="query video 1 has no frames"):
        index.search_batch([good, np.zeros((0, 2), np.uint8)], 1)
    with pytest.raises(ValueError, match="2-D"):
        index.search(np.zeros(2, np.uint8), 1)
    with pytest.raises(ValueError, match="exclude has 1 entries but there are 2 queries"):
        index.search_batch([good, good], 1, exclude=["a"])
    with pytest.raises(ValueError, match=r"one id \(or None\) per query, got the single str"):
        index.search_batch([good], 1, exclude="a")
    with pytest.raises(ValueError, match="exclude id 'nope'"):
        rank_videos_leave_one_out(index, ["nope"], [good])
    with pytest.raises(ValueError, match="2 query ids but 1"):
        rank_videos_leave_one_out(index, ["a", "b"], [good])


# ------------------------------------------------------------------ near-duplicate sanity


def test_noisy_copies_rank_first():
    bits = 64
    rng = np.random.default_rng(42)
    n_videos, n_frames = 30, 12
    signs = rng.choice(np.array([-1, 1], np.int8), size=(n_videos, n_frames, bits))
    index = FrameLevelIndex(bits)
    index.add([f"g{i}" for i in range(n_videos)], signs)

    def noisy(i: int, flip: float = 0.08) -> np.ndarray:
        frames = signs[i, rng.permutation(n_frames)[:8]]  # a subset of frames, reordered
        return np.where(rng.random(frames.shape) < flip, -frames, frames)

    targets = [0, 7, 19, 29]
    results = index.search_batch([noisy(i) for i in targets], 3, top_n=20)
    for i, (ids, scores) in zip(targets, results, strict=True):
        assert ids[0] == f"g{i}"
        assert scores[0] > 0.85 > scores[1]

    # leave-one-out on a gallery holding near-duplicate pairs: each video's copy ranks first
    dup = FrameLevelIndex(bits)
    ids = [f"g{i}" for i in targets] + [f"g{i}-copy" for i in targets] + [f"g{i}" for i in range(1, 6)]
    codes = [signs[i] for i in targets] + [noisy(i) for i in targets] + [signs[i] for i in range(1, 6)]
    dup.add(ids, codes)
    rankings = rank_videos_leave_one_out(dup, ids[: 2 * len(targets)], codes[: 2 * len(targets)], top_n=50)
    for vid, ranking in zip(ids, rankings, strict=False):
        other = vid[: -len("-copy")] if vid.endswith("-copy") else f"{vid}-copy"
        assert ranking[0] == other and len(ranking) == len(ids) - 1

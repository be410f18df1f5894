"""Sharded frame-level search against the single FrameLevelIndex (the oracle), ties everywhere.

The single index is itself tested against a literal implementation of Algorithm 1
(tests/test_index_frames.py); here every sharding of the same gallery must give exactly its answers:
the same ids in the same order and bit-identical scores.
"""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.index.frame_shards import ShardedFrameIndex, merge_top_frames, split_frame_index
from vhindex.index.frames import FrameLevelIndex


def _gallery(seed: int, bits: int, videos: int, distinct: int) -> tuple[FrameLevelIndex, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    # few distinct frame codes: distances tie all the time, and whole frames repeat across videos
    palette = rng.integers(0, 256, size=(distinct, bits // 8), dtype=np.uint8)
    frames = [palette[rng.integers(0, distinct, size=rng.integers(1, 9))] for _ in range(videos)]
    index = FrameLevelIndex(bits, memory_budget=int(rng.integers(2_000, 200_000)))
    index.add([f"v{i:03d}" for i in range(videos)], frames)
    return index, frames


def test_top_frames_is_the_stable_order_with_exclusion():
    index, frames = _gallery(0, 16, 40, 6)
    codes = index.codes
    rng = np.random.default_rng(1)
    q = codes[rng.integers(0, len(codes), size=12)] ^ rng.integers(0, 2, size=(12, 2), dtype=np.uint8)
    excl = rng.integers(-1, 40, size=12)
    dist, idx = index.top_frames(q, 25, excl)
    frame_video = np.repeat(np.arange(40), index.frame_counts)
    for r in range(12):
        d = np.unpackbits(codes ^ q[r], axis=1).sum(axis=1)
        order = [int(i) for i in np.lexsort((np.arange(len(d)), d)) if frame_video[i] != excl[r]][:25]
        assert idx[r].tolist() == order
        assert dist[r].tolist() == d[order].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sharded_search_equals_the_single_index(seed):
    rng = np.random.default_rng(100 + seed)
    bits = int(rng.choice([8, 16, 32]))
    index, frames = _gallery(seed, bits, int(rng.integers(20, 70)), int(rng.integers(2, 8)))
    queries = [frames[i] for i in rng.integers(0, len(frames), size=6)]
    queries += [np.random.default_rng(seed).integers(0, 256, size=(int(rng.integers(1, 6)), bits // 8), dtype=np.uint8)]
    ids = index.video_ids
    for num_shards in range(1, 6):
        sharded = ShardedFrameIndex(split_frame_index(index, num_shards))
        assert sharded.num_videos == index.num_videos
        assert len(sharded.shards) == min(num_shards, index.num_videos)
        for top_n in (1, 3, 17, 1000):
            for k in (1, 5, index.num_videos):
                exclude = [ids[int(rng.integers(0, len(ids)))] if rng.random() < 0.5 else None for _ in queries]
                want = index.search_batch(queries, k, top_n=top_n, exclude=exclude)
                got = sharded.search_batch(queries, k, top_n=top_n, exclude=exclude)
                for (wi, ws), (gi, gs) in zip(want, got, strict=True):
                    assert gi == wi, (num_shards, top_n, k)
                    assert gs.tobytes() == ws.tobytes()  # bit-identical scores


def test_uneven_hand_made_shards_and_the_merge_key():
    # shards of 1, 3 and 2 videos; identical codes everywhere: only the global frame index breaks ties
    code = np.array([[0x0F]], dtype=np.uint8)
    single = FrameLevelIndex(8)
    single.add([f"v{i}" for i in range(6)], [code.repeat(i % 3 + 1, axis=0) for i in range(6)])
    parts = []
    for a, b in ((0, 1), (1, 4), (4, 6)):
        s = FrameLevelIndex(8)
        s.add([f"v{i}" for i in range(a, b)], [code.repeat(i % 3 + 1, axis=0) for i in range(a, b)])
        parts.append(s)
    sharded = ShardedFrameIndex(parts)
    for top_n in range(1, 14):
        assert sharded.search_batch([code], 6, top_n=top_n)[0][0] == single.search_batch([code], 6, top_n=top_n)[0][0]
    # the merge keeps the first top_n by (distance, shard, place in the shard's list), empty slots last
    d = (np.array([[1, 2, 0]]), np.array([[1, 1, -1]]))  # shard 0: videos 0-1
    e = (np.array([[1, 1]]), np.array([[2, 3]]))  # shard 1: videos 2-3
    dist, video = merge_top_frames([d, e], 3)
    assert dist.tolist() == [[1, 1, 1]] and video.tolist() == [[1, 2, 3]]
    dist, video = merge_top_frames([d, e], 9)
    assert dist.tolist()[0][:4] == [1, 1, 1, 2] and video.tolist() == [[1, 2, 3, 1, -1]]
    with pytest.raises(ValueError, match="in shards 0 and 1"):
        ShardedFrameIndex([parts[0], parts[0]])


def test_frame_times_survive_save_split_and_give_segments(tmp_path):
    from vhindex.index.frame_shards import align_with

    rng = np.random.default_rng(5)
    vids = [rng.integers(0, 256, size=(n, 8), dtype=np.uint8) for n in (40, 25, 60)]
    times = [(np.arange(len(v)) + 0.5) * 0.5 for v in vids]  # a frame every half second
    index = FrameLevelIndex(64)
    index.add(["a", "b", "c"], vids, times=times)
    index.save(str(tmp_path / "fl"))
    loaded = FrameLevelIndex.load(str(tmp_path / "fl"))
    assert np.array_equal(loaded.times, index.times)
    sharded = ShardedFrameIndex(split_frame_index(loaded, 3))
    codes, t = sharded.video_frames("c")
    assert np.array_equal(codes, vids[2]) and np.array_equal(t, times[2])
    # the query copies c's seconds [10, 20) (frames 20..39): the segment is found in seconds
    seg = align_with(sharded, vids[2][20:40], (np.arange(20) + 0.5) * 0.5, "c")[0]
    assert (seg.query_start, seg.query_end, seg.db_start, seg.db_end, seg.speed) == (0.0, 10.0, 10.0, 20.0, 1.0)
    # without times, positions stand in
    plain = FrameLevelIndex(64)
    plain.add(["c"], [vids[2]])
    assert np.isnan(plain.times).all()
    seg = align_with(plain, vids[2][20:40], None, "c")[0]
    assert (seg.db_start, seg.db_end) == (20.0, 40.0)
    with pytest.raises(ValueError, match="finite seconds"):
        plain.add(["d"], [vids[0]], times=[np.arange(3)])
    with pytest.raises(KeyError, match="'zz'"):
        sharded.video_frames("zz")


def test_build_from_frame_features_and_a_frame_model(tmp_path, memory_url, capsys):
    from vhindex.data import FrameDataset, FrameDatasetMeta, FrameDatasetWriter
    from vhindex.index.frame_shards import build_sharded_frame_index, load_sharded_frame_index
    from vhindex.models import build_model, load_model

    rng = np.random.default_rng(9)
    feats = rng.standard_normal((57, 6, 20)).astype(np.float32)
    feats[30:40] = feats[0:10] + 0.01 * rng.standard_normal((10, 6, 20)).astype(np.float32)  # near copies
    ids = [f"v{i:02d}" for i in range(57)]
    with FrameDatasetWriter(str(tmp_path / "frames"), FrameDatasetMeta(num_frames=6, feature_dim=20, dtype="float32"),
                            row_group_size=10) as w:
        w.write(ids, feats)
    model = build_model("itq", 16)
    model.fit(lambda: iter([feats.reshape(-1, 1, 20)]), seed=0)
    model.save(str(tmp_path / "frame-model"))
    for out in (str(tmp_path / "fidx"), memory_url + "/fidx"):
        manifest = build_sharded_frame_index(str(tmp_path / "frames"), str(tmp_path / "frame-model"), out, 4,
                                             batch_size=7)
        assert (manifest["num_shards"], manifest["num_videos"], manifest["ntotal_frames"]) == (4, 57, 57 * 6)
        with pytest.raises(FileExistsError):
            build_sharded_frame_index(str(tmp_path / "frames"), str(tmp_path / "frame-model"), out, 4)
        sharded = load_sharded_frame_index(out)
        # oracle: one FrameLevelIndex of the same frame codes
        m = load_model(str(tmp_path / "frame-model"))
        codes = m.encode_packed(FrameDataset.open(str(tmp_path / "frames")).iter_batches(100).__next__()
                                .features.reshape(-1, 1, 20)).reshape(57, 6, -1)
        single = FrameLevelIndex(16)
        single.add(ids, codes)
        queries = [codes[i] for i in (0, 5, 33)]
        got = sharded.search_batch(queries, 8, top_n=20, exclude=["v00", None, "v33"])
        want = single.search_batch(queries, 8, top_n=20, exclude=["v00", None, "v33"])
        for (gi, gs), (wi, ws) in zip(got, want, strict=True):
            assert gi == wi and gs.tobytes() == ws.tobytes()
        assert sharded.search_batch([codes[0]], 2, exclude=["v00"])[0][0][0] == "v30"  # its near copy
    # the command line: `vhindex build-index --level frame` builds the same index as `vhindex index frames`
    from vhindex.app.cli import main as cli_main

    assert cli_main(["build-index", "--level", "frame", "--frames", str(tmp_path / "frames"), "--model",
                     str(tmp_path / "frame-model"), "--out", str(tmp_path / "cli-fidx"), "--shards", "4"]) == 0
    by_cli = load_sharded_frame_index(str(tmp_path / "cli-fidx"))
    got = by_cli.search_batch(queries, 8, top_n=20, exclude=["v00", None, "v33"])
    for (gi, gs), (wi, ws) in zip(got, want, strict=True):
        assert gi == wi and gs.tobytes() == ws.tobytes()
    assert cli_main(["build-index", "--level", "frame", "--codes", "x", "--out", str(tmp_path / "y")]) == 2
    assert "needs --frames, --model and --out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="single frames"):
        video_model = build_model("itq", 16)
        video_model.fit(lambda: iter([feats]), seed=0)
        video_model.save(str(tmp_path / "video-model"))
        build_sharded_frame_index(str(tmp_path / "frames"), str(tmp_path / "video-model"), str(tmp_path / "x"), 2)

"""Sharded frame-level search whose answers equal one :class:`~vhindex.index.frames.FrameLevelIndex` exactly.

A frame-level gallery is cut into shards that each hold a *contiguous run of videos in gallery
order*, so a frame's global index is its shard's first frame plus its index in the shard, and a
video's global position is its shard's first video plus its position there. Algorithm 1 (see
:mod:`vhindex.index.frames`) then splits into a per-shard step and a merge:

1. **Per shard** (:meth:`FrameLevelIndex.top_frames`): the first ``N`` frames of each query frame in
   the shard's stable ``(distance, frame index)`` order, an excluded video left out.
2. **Merge** (:func:`merge_top_frames`): per query frame, the first ``N`` of the union in the global
   ``(distance, global frame index)`` order -- which is ``(distance, shard, place in the shard's list)``:
   shards are contiguous runs of frames and each list is in frame order within a distance, so the shards
   send only distances and video positions (6 bytes a slot), no frame indices.
3. **Aggregate** (:func:`aggregate_matches`): per query frame each video counts once, with its best
   (largest ``bits - distance``) frame in the merged list; per query the sum, in exact integers.

Why this is exact: the shard's order is the global order restricted to the shard (contiguous
shards keep the relative order of their frames), so every frame of the global top-``N`` is among its
own shard's top-``N``; the union therefore contains the global top-``N``, and sorting the union by the
global key and keeping ``N`` recovers it, ties included. Exclusion needs nothing more: the shard
holding the excluded video leaves its frames out before cutting to ``N``, the others never see it.
Scores are ``sum / (bits * qf_num)`` from the same integers, so they are the same floats; ranking is
(score descending, global video position), with zero-score videos filling up ``k`` in gallery
order -- the single index's rule. ``tests/test_index_frame_shards.py`` checks it on galleries with
many ties against the single index for 1 to 5 shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vhindex.index.codes import check_packed
from vhindex.index.frames import FrameLevelIndex

__all__ = ["ShardedFrameIndex", "aggregate_matches", "align_with", "build_sharded_frame_index", "fill_positions",
           "load_sharded_frame_index", "merge_top_frames", "open_sharded_frame_index", "rank_frame_scores",
           "shard_name", "shard_top_frames", "split_frame_index", "write_sharded_frame_index"]


def align_with(index: Any, query_codes: np.ndarray, query_times: np.ndarray | None, video_id: str,
               **kwargs: Any) -> list[Any]:
    """Matched segments (:func:`vhindex.index.align.align_segments`) of a query against one indexed video.

    Frame times that are unknown (NaN) fall back to frame positions (``i + 0.5``, in frames, not seconds).

    Args:
        index: a :class:`FrameLevelIndex` or :class:`ShardedFrameIndex`.
        query_codes: packed query frame codes.
        query_times: seconds of the query frames (None: positions).
        video_id: the indexed video.
        **kwargs: passed to ``align_segments``.
    """
    from vhindex.index.align import align_codes

    codes, times = index.video_frames(video_id)
    return align_codes(query_codes, query_times, codes, times, index.bits, **kwargs)


def merge_top_frames(parts: Sequence[tuple[np.ndarray, np.ndarray]], top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top-``top_n`` per query frame from the shards' lists.

    Args:
        parts: per shard, **in shard order**, ``(distances (F, n_s), global video positions (F, n_s))`` of
            its list (:func:`shard_top_frames`: stable ``(distance, frame)`` order); empty slots have video ``-1``.
        top_n: frames kept per query frame.

    Returns:
        ``(distances int32 (F, n), global video positions int64 (F, n))`` in the global stable order,
        ``n <= top_n``; empty slots have video ``-1``.
    """
    width = max(p[0].shape[1] for p in parts)
    dist = np.concatenate([p[0] for p in parts], axis=1).astype(np.int64)
    video = np.concatenate([p[1] for p in parts], axis=1).astype(np.int64)
    # (distance, shard, place): the global (distance, frame) order of contiguous shards; empty slots last
    place = np.concatenate([s * width + np.arange(p[0].shape[1]) for s, p in enumerate(parts)])
    span = np.int64(len(parts) * width)
    key = np.where(video >= 0, dist * span + place[None, :], np.iinfo(np.int64).max)
    n = min(top_n, key.shape[1])
    order = np.argsort(key, axis=1, kind="stable")[:, :n]
    rows = np.arange(key.shape[0])[:, None]
    return dist[rows, order].astype(np.int32), video[rows, order]


def aggregate_matches(dist: np.ndarray, video: np.ndarray, qf: np.ndarray,
                      bits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Algorithm 1's sums from merged top-N lists.

    Args:
        dist: ``(F, n)`` distances of the merged lists (:func:`merge_top_frames`), rows grouped by query.
        video: ``(F, n)`` global video positions of the same slots (``-1``: empty).
        qf: frames of each query (``sum(qf) == F``).
        bits: code length.

    Returns:
        Per query ``(global video positions ascending, match sums int64)`` of the videos with a positive
        sum (``sum = S[v] * bits * qf_num``).
    """
    out = []
    starts = np.concatenate([[0], np.cumsum(qf)])
    for q in range(len(qf)):
        d = dist[starts[q]:starts[q + 1]]
        v = video[starts[q]:starts[q + 1]]
        rows = np.broadcast_to(np.arange(d.shape[0])[:, None], d.shape)
        ok = v >= 0
        m, vv, rr = (bits - d[ok]).astype(np.int64), v[ok], rows[ok]
        if m.size == 0:
            out.append((np.empty(0, np.int64), np.empty(0, np.int64)))
            continue
        # best match per (row, video): sort by (row, video, -match), keep the first of each pair
        order = np.lexsort((-m, vv, rr))
        m, vv, rr = m[order], vv[order], rr[order]
        first = np.ones(m.size, dtype=bool)
        first[1:] = (vv[1:] != vv[:-1]) | (rr[1:] != rr[:-1])
        m, vv = m[first], vv[first]
        videos, inverse = np.unique(vv, return_inverse=True)
        sums = np.zeros(videos.size, dtype=np.int64)
        np.add.at(sums, inverse, m)
        keep = sums > 0
        out.append((videos[keep], sums[keep]))
    return out


def shard_top_frames(shard: FrameLevelIndex, first_video: int, frames: np.ndarray, top_n: int,
                     exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One shard's step: ``(distances uint16 (F, n), global video positions (F, n), -1 for an empty slot)``
    per query frame, in the shard's stable ``(distance, frame)`` order -- small on the wire (int32 positions
    when they fit).

    Args:
        shard: the shard's gallery.
        first_video: global position of its first video.
        frames: packed query frame codes ``(F, bits/8)``.
        top_n: frames per query frame.
        exclude: ``int64 (F,)`` global video positions to leave out (``-1``: none); only this shard's apply.
    """
    v0 = int(first_video)
    exclude = np.asarray(exclude, dtype=np.int64)
    local = np.where((exclude >= v0) & (exclude < v0 + shard.num_videos), exclude - v0, -1)
    dist, idx = shard.top_frames(frames, top_n, local)
    frame_video = shard.frame_videos  # cached by the shard (rebuilding it per query costs ~50 ms at 17.5 M frames)
    ok = idx >= 0
    gvideo = np.where(ok, frame_video[np.maximum(idx, 0)] + v0, -1)
    positions = np.int32 if v0 + shard.num_videos < 2**31 else np.int64
    return np.where(ok, dist, 0).astype(np.uint16), gvideo.astype(positions)


def rank_frame_scores(videos: np.ndarray, sums: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` of the hit videos by (match sum descending, global position): ``(positions, sums)``."""
    order = np.lexsort((videos, -sums))[:k]
    return videos[order], sums[order]


def fill_positions(hit: np.ndarray, excluded: int, need: int, num_videos: int) -> list[int]:
    """The first ``need`` global positions that were not hit nor excluded (zero-score fill, gallery order)."""
    taken = set(int(v) for v in hit)
    out: list[int] = []
    pos = 0
    while len(out) < need and pos < num_videos:
        if pos not in taken and pos != excluded:
            out.append(pos)
        pos += 1
    return out


def split_frame_index(index: FrameLevelIndex, num_shards: int) -> list[FrameLevelIndex]:
    """Cut a gallery into ``num_shards`` contiguous runs of videos with about equal frame counts
    (fewer when it has fewer videos)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    offsets = index.offsets
    nv = index.num_videos
    targets = np.linspace(0, offsets[-1], num_shards + 1)[1:-1]
    cuts = np.unique(np.clip(np.searchsorted(offsets, targets), 1, max(nv - 1, 1)))
    bounds = [0, *[int(c) for c in cuts if 0 < c < nv], nv]
    codes, ids, times = index.codes, index.video_ids, index.times
    shards = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b <= a:
            continue
        shard = FrameLevelIndex(index.bits, num_threads=index.num_threads, memory_budget=index.memory_budget)
        video_times = [times[offsets[i]:offsets[i + 1]] for i in range(a, b)]
        shard.add(ids[a:b], [codes[offsets[i]:offsets[i + 1]] for i in range(a, b)],
                  times=[None if np.isnan(t).any() else t for t in video_times])
        shards.append(shard)
    return shards


class ShardedFrameIndex:
    """A frame-level gallery held as contiguous shards, searched per shard and merged (module docs).

    Args:
        shards: :class:`FrameLevelIndex` shards in gallery order (videos of shard ``s`` come before those
            of shard ``s + 1``); the same ``bits``; video ids unique across shards.
    """

    def __init__(self, shards: Sequence[FrameLevelIndex]) -> None:
        shards = list(shards)
        if not shards:
            raise ValueError("a ShardedFrameIndex needs at least one shard")
        bits = {s.bits for s in shards}
        if len(bits) != 1:
            raise ValueError(f"shards have different code lengths: {sorted(bits)}")
        self.bits = bits.pop()
        self.shards = shards
        self.video_offsets = np.concatenate([[0], np.cumsum([s.num_videos for s in shards])]).astype(np.int64)
        self.frame_offsets = np.concatenate([[0], np.cumsum([s.ntotal_frames for s in shards])]).astype(np.int64)
        self._where: dict[str, tuple[int, int]] = {}
        for si, s in enumerate(shards):
            for pos, vid in enumerate(s.video_ids):
                if vid in self._where:
                    raise ValueError(f"video id {vid!r} is in shards {self._where[vid][0]} and {si}")
                self._where[vid] = (si, pos)

    @property
    def num_videos(self) -> int:
        """Videos over all shards."""
        return int(self.video_offsets[-1])

    def video_id(self, position: int) -> str:
        """The id of the video at a global gallery position."""
        s = int(np.searchsorted(self.video_offsets, position, side="right")) - 1
        # one lookup (video_ids would copy every id of the shard: ~20 ms per call at 700,000 videos)
        return str(self.shards[s].idmap.to_ids([position - int(self.video_offsets[s])])[0])

    def shard_top_frames(self, s: int, frames: np.ndarray, top_n: int,
                         exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shard ``s``'s step (:func:`shard_top_frames`)."""
        return shard_top_frames(self.shards[s], int(self.video_offsets[s]), frames, top_n, exclude)

    def video_frames(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """One video's ``(packed frame codes, frame times)`` (see :meth:`FrameLevelIndex.video_frames`)."""
        if video_id not in self._where:
            raise KeyError(f"video id {video_id!r} is not in this index")
        return self.shards[self._where[video_id][0]].video_frames(video_id)

    def search_batch(self, queries: Sequence[Any], k: int, *, top_n: int = 1000,
                     exclude: Sequence[str | None] | None = None) -> list[tuple[list[str], np.ndarray]]:
        """Same contract and answers as :meth:`FrameLevelIndex.search_batch` over the whole gallery."""
        if k < 1 or top_n < 1:
            raise ValueError(f"k and top_n must be >= 1, got {k}, {top_n}")
        qcodes = [check_packed(np.asarray(q), self.bits, f"query video {i}") for i, q in enumerate(queries)]
        if not qcodes:
            return []
        qf = np.array([q.shape[0] for q in qcodes], dtype=np.int64)
        excl_pos = np.full(len(qcodes), -1, dtype=np.int64)
        if exclude is not None:
            for i, vid in enumerate(exclude):
                if vid is None:
                    continue
                if vid not in self._where:
                    raise ValueError(f"exclude id {vid!r} (query {i}) is not a video of this index")
                s, pos = self._where[vid]
                excl_pos[i] = self.video_offsets[s] + pos
        frames = np.concatenate(qcodes)
        row_excl = np.repeat(excl_pos, qf)
        parts = [self.shard_top_frames(s, frames, top_n, row_excl) for s in range(len(self.shards))]
        dist, video = merge_top_frames(parts, top_n)
        results = []
        for q, (videos, sums) in enumerate(aggregate_matches(dist, video, qf, self.bits)):
            results.append(self._rank(videos, sums, int(qf[q]), int(excl_pos[q]), k))
        return results

    def _rank(self, videos: np.ndarray, sums: np.ndarray, qf_num: int, excluded: int,
              k: int) -> tuple[list[str], np.ndarray]:
        pos, top = rank_frame_scores(videos, sums, k)
        top_v, top_s = list(pos), list(top)
        if len(top_v) < k:  # zero-score videos fill up in gallery order, the excluded one left out
            fill = fill_positions(videos, excluded, k - len(top_v), self.num_videos)
            top_v += fill
            top_s += [0] * len(fill)
        scores = np.array(top_s, dtype=np.int64).astype(np.float64) / float(self.bits * qf_num)
        return [self.video_id(int(v)) for v in top_v], scores


# ------------------------------------------------------------------------------ on disk

FORMAT_SHARDED_FRAMES = "vhindex.sharded_frame_level"
SHARDED_FRAMES_VERSION = 1
TOP_MANIFEST = "_manifest.json"


def shard_name(i: int) -> str:
    """Folder of shard ``i`` inside a sharded frame index."""
    return f"shard-{i:05d}"


def build_sharded_frame_index(frames_url: str, model_url: str, out_url: str, num_shards: int, *,
                              storage_options: dict[str, Any] | None = None, batch_size: int = 1024,
                              overwrite: bool = False) -> dict[str, Any]:
    """Frame-feature dataset + a frame model -> a sharded frame-level index (``vhindex index frames``).

    Every sampled frame of every video is encoded on its own by ``model_url`` (a model fitted with
    ``M = 1``: LSH / ITQ on single frames as UTS does, or a frame student); the videos are cut into
    ``num_shards`` contiguous runs of about equal size (fewer for tiny datasets), each saved as a
    :class:`FrameLevelIndex` under ``<out>/shard-XXXXX``; the top manifest is written last, so a crashed
    build leaves nothing openable. Memory: the packed codes (``bits / 8`` bytes per frame) plus one batch
    of features.

    Returns:
        The top manifest: ``{"format", "bits", "num_shards", "num_videos", "ntotal_frames",
        "model_version", "index_version", "shards": [{"name", "videos", "frames"}]}``.
    """
    from vhindex.data import FrameDataset
    from vhindex.fs import join, url_to_fs
    from vhindex.models import load_model

    fs, root = url_to_fs(out_url, storage_options)
    top = join(fs, root, TOP_MANIFEST)
    if fs.exists(top):
        if not overwrite:
            raise FileExistsError(f"{out_url} already holds a sharded frame index (pass overwrite=True to replace it)")
        fs.rm(top)
    model = load_model(model_url, storage_options)
    if model.num_frames != 1:
        raise ValueError(f"{model_url} encodes {model.num_frames} frames at once; a frame index needs a model fitted on "
                         "single frames (M = 1)")
    ds = FrameDataset.open(frames_url, storage_options)
    if ds.meta.feature_dim != model.feature_dim:
        raise ValueError(f"{frames_url} has {ds.meta.feature_dim}-d features, the model takes {model.feature_dim}-d")
    ids: list[str] = []
    codes: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_size, columns=("video_id", "features")):
        b, m, d = batch.features.shape
        codes.append(model.encode_packed(batch.features.reshape(b * m, 1, d)).reshape(b, m, -1))
        ids.extend(batch.video_ids)
    if not ids:
        raise ValueError(f"{frames_url} has no videos; nothing to index")
    return write_sharded_frame_index(ids, np.concatenate(codes), model.bits, model.version(), out_url, num_shards,
                                     storage_options=storage_options)


def write_sharded_frame_index(ids: Sequence[str], codes: np.ndarray, bits: int, model_version: str, out_url: str,
                              num_shards: int, *, times: np.ndarray | None = None,
                              storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write videos' frame codes as a sharded frame index (what :func:`build_sharded_frame_index` ends with).

    Args:
        ids: one id per video.
        codes: packed frame codes ``uint8 (videos, M, bits/8)``.
        bits: code length.
        model_version: the version of the frame model that made the codes (checked by the service).
        out_url: the index folder; its top manifest is written last.
        num_shards: contiguous runs of videos (fewer for fewer videos).
        times: ``(videos, M)`` frame times in seconds, or None (unknown).
        storage_options: fsspec options.

    Returns:
        The top manifest (see :func:`build_sharded_frame_index`).
    """
    import hashlib

    from vhindex.fs import join, url_to_fs, write_json_atomic

    fs, root = url_to_fs(out_url, storage_options)
    n = len(ids)
    bounds = np.linspace(0, n, min(num_shards, n) + 1).round().astype(int)
    shards = []
    h = hashlib.sha256(model_version.encode())
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        shard = FrameLevelIndex(bits)
        shard.add(list(ids[a:b]), codes[a:b], times=None if times is None else list(times[a:b]))
        shard.save(f"{out_url.rstrip('/')}/{shard_name(i)}", storage_options)
        h.update(f"{i}:{b - a}:{shard.ntotal_frames}:".encode())
        h.update(np.ascontiguousarray(codes[a:b]).tobytes())
        h.update("\0".join(ids[a:b]).encode())
        shards.append({"name": shard_name(i), "videos": int(b - a), "frames": int(shard.ntotal_frames)})
    manifest = {"format": FORMAT_SHARDED_FRAMES, "format_version": SHARDED_FRAMES_VERSION, "bits": int(bits),
                "num_shards": len(shards), "num_videos": n, "ntotal_frames": int(sum(s["frames"] for s in shards)),
                "model_version": model_version, "index_version": h.hexdigest()[:16], "shards": shards}
    write_json_atomic(fs, join(fs, root, TOP_MANIFEST), manifest)
    return manifest


def open_sharded_frame_index(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The top manifest of a sharded frame index (raises naming the URL when it is not one)."""
    from vhindex.fs import join, read_json, url_to_fs

    fs, root = url_to_fs(url, storage_options)
    path = join(fs, root, TOP_MANIFEST)
    if not fs.exists(path):
        raise FileNotFoundError(f"no {TOP_MANIFEST} in {url}: not a sharded frame index, or its build did not finish")
    manifest = read_json(fs, path)
    if manifest.get("format") != FORMAT_SHARDED_FRAMES or manifest.get("format_version") != SHARDED_FRAMES_VERSION:
        raise ValueError(f"{url} holds {manifest.get('format')!r} v{manifest.get('format_version')}, expected "
                         f"{FORMAT_SHARDED_FRAMES!r} v{SHARDED_FRAMES_VERSION}")
    return manifest


def load_sharded_frame_index(url: str, storage_options: dict[str, Any] | None = None) -> ShardedFrameIndex:
    """Every shard of a sharded frame index, in memory (for in-process search and tests)."""
    manifest = open_sharded_frame_index(url, storage_options)
    return ShardedFrameIndex([FrameLevelIndex.load(f"{url.rstrip('/')}/{s['name']}", storage_options)
                              for s in manifest["shards"]])

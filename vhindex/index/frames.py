"""Frame-level retrieval: per-frame binary codes, video scores aggregated as in the UTS paper.

Liang et al., "Unsupervised Teacher-Student Model for Large-scale Video Retrieval", Algorithm 1
("Aggregation of the video similarity"). For a query video with ``qf_num`` frames::

    S = 0 for every gallery video
    for each query frame f:
        L = the top-N gallery frames most similar to f, best first      (paper: N = 1000)
        for each gallery video v with a frame in L:
            S[v] += sim(f, best frame of v in L)      # each video scores at most once per frame
    S /= qf_num                                      # rank gallery videos by S, descending

Definitions this module fixes (the paper leaves them implicit):

* **Frame similarity** of binary codes: ``sim = 1 - hamming / bits`` (in ``[0, 1]``). The "best
  frame of ``v`` in ``L``" is its first frame in ``L`` = its smallest Hamming distance.
* **Top-N order** is ``(Hamming distance, gallery frame index)``: ties are broken by insertion
  order of the gallery frames, so the top-N set is deterministic even when the N-th distance is
  shared by many frames (:func:`vhindex.eval.topk.stable_topk_hamming`).
* **Exact scores.** ``S[v] * qf_num * bits`` is an integer (the sum of ``bits - hamming`` over the
  query frames that hit ``v``), so it is accumulated in ``int64`` and divided once:
  ``score = matches / (bits * qf_num)``, the correctly rounded float64 of the exact rational score.
  Mathematically equal scores are therefore equal floats, whatever the summation order.
* **Video ranking**: score descending, then the gallery video's position (insertion order).
  This is a total order over *all* gallery videos: videos with score 0 (no query frame hit them,
  or hit them only at distance ``bits``) follow the others in gallery order, and
  :meth:`FrameLevelIndex.search` fills up to ``k`` with them.

A frame-level model is an ordinary :class:`~vhindex.models.base.HashModel` fitted and used with
``M = 1``: encode features ``(B, M, D)`` reshaped to ``(B * M, 1, D)``, then reshape the codes back
to ``(B, M, bits/8)`` for :meth:`FrameLevelIndex.add`.

Saved layout (a folder at any fsspec URL)::

    codes.npz         "codes" uint8 (ntotal_frames, bits/8), "offsets" int64 (num_videos + 1),
                      "times" float64 (ntotal_frames,) seconds, NaN = unknown (absent in older saves)
    ids.parquet       the IdMap (row number = video position)
    _manifest.json    {"format": "vhindex.frame_level", "bits", "num_videos", "ntotal_frames",
                       "bit_order", "files": {name: {"sha256", "bytes"}}}  -- written LAST
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from vhindex.fs import join, read_json, read_verified_files, url_to_fs, write_files_then_manifest
from vhindex.index.codes import BIT_ORDER, check_manifest_header, check_packed
from vhindex.index.flat import faiss_threads
from vhindex.index.idmap import IdMap

logger = logging.getLogger(__name__)

__all__ = ["FrameLevelIndex", "rank_videos_leave_one_out"]

FORMAT_FRAME_LEVEL = "vhindex.frame_level"
FORMAT_VERSION = 1
CODES_FILE = "codes.npz"
IDS_FILE = "ids.parquet"
MANIFEST_FILE = "_manifest.json"

# Working set of one chunk of queries during aggregation, per query frame (row): per top-N slot
# the top-k output (int32 distance, int64 index), the int64 video / flat key, masks and the
# match value; per gallery video the dense best-match row (uint16) and its share of the per-query
# int64 sums -- rounded up. stable_topk_hamming bounds its distance matrix separately.
_BYTES_PER_SLOT = 40
_BYTES_PER_VIDEO = 12
#: gallery frames from which method="auto" finds the top-N by multi-index hashing (below, brute force is as
#: fast: benchmarks/bench_frame_scale.py)
MIH_MIN_FRAMES = 1_000_000

# Working-set budget handed to stable_topk_hamming. Its chunks are processed with several passes
# over candidate arrays, which run ~2x faster when they stay cache-sized: 300 x 25 query frames
# against 8,000 gallery frames, top-N 1000, took 1.04 s with a 256 MiB budget and 0.44 s with 8 MiB.
_TOPK_MEMORY_BUDGET = 8 * 1024 * 1024


def _topk() -> ModuleType:
    """:mod:`vhindex.eval.topk`, imported on first use.

    A module-level import would be circular: ``vhindex.eval.topk`` imports
    ``vhindex.index.codes``, which initialises this package (and so this module) first.
    """
    from vhindex.eval import topk

    return topk


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value!r}")
    return int(value)


class FrameLevelIndex:
    """Gallery of per-frame binary codes with the frame -> video mapping (video ids are strings).

    Frames of one video are stored contiguously, videos in insertion order; video ``i`` owns
    frames ``offsets[i]:offsets[i + 1]``. Search is exact (brute-force Hamming over all frames) and
    follows Algorithm 1 of the UTS paper; see the module docs for the definitions.

    Args:
        bits: code length (a positive multiple of 8).
        num_threads: faiss OpenMP threads for the distance computation (``None``: faiss's current
            setting); set per call and restored afterwards.
        memory_budget: working-set bytes for one chunk of query frames during search: bounds the
            top-N buffers and the dense (query frame x gallery video) best-match rows; a single
            query video is never split. The Hamming distance matrix is chunked separately, to at
            most 8 MiB. ``None``: :data:`vhindex.eval.topk.DEFAULT_MEMORY_BUDGET`.

    Example:
        >>> index = FrameLevelIndex(8)
        >>> index.add(["a", "b"], [np.array([[0xFF], [0x0F]], np.uint8), np.array([[0xF0]], np.uint8)])
        >>> ids, scores = index.search(np.array([[0xFF]], np.uint8), k=2, top_n=3)
        >>> ids, scores.tolist()
        (['a', 'b'], [1.0, 0.5])
    """

    def __init__(self, bits: int, *, num_threads: int | None = None, memory_budget: int | None = None,
                 method: str = "auto"):
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
            raise ValueError(f"bits must be a positive multiple of 8, got {bits!r}")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads <= 0):
            raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
        if method not in ("auto", "brute", "mih"):
            raise ValueError(f"method must be 'auto', 'brute' or 'mih', got {method!r}")
        if method == "mih" and bits % 16:
            raise ValueError(f"method 'mih' needs a code length that is a multiple of 16, got {bits}")
        self.bits = int(bits)
        self.num_threads = num_threads
        # how the top-N frames are found: brute force, or multi-index hashing (vhindex.index.mih: exact, the
        # same stable order, sub-linear) -- "auto" uses it from MIH_MIN_FRAMES frames on
        self.method = method
        self._mih: Any = None  # built on first use, dropped by add()
        if memory_budget is None:
            memory_budget = _topk().DEFAULT_MEMORY_BUDGET
        self.memory_budget = _check_positive_int(memory_budget, "memory_budget")
        # bits - hamming fits uint16 for any practical code length; np.maximum.at is fast on it
        self._match_dtype = np.dtype(np.uint16) if self.bits <= np.iinfo(np.uint16).max else np.dtype(np.uint32)
        self.idmap = IdMap()
        # codes are appended as parts and concatenated lazily, so many small add() calls stay linear
        self._parts: list[np.ndarray] = []
        self._codes: np.ndarray = np.empty((0, self.bits // 8), dtype=np.uint8)
        self._offsets: np.ndarray = np.zeros(1, dtype=np.int64)
        self._frame_video: np.ndarray | None = None  # cached video position of every frame
        # seconds of every frame in its video (NaN: unknown), for temporal alignment
        self._time_parts: list[np.ndarray] = []
        self._times: np.ndarray = np.empty(0, dtype=np.float64)

    # ---------------------------------------------------------------- properties

    @property
    def ntotal_frames(self) -> int:
        """Number of indexed frames (over all videos)."""
        return int(self._offsets[-1])

    @property
    def num_videos(self) -> int:
        """Number of indexed videos."""
        return len(self.idmap)

    @property
    def video_ids(self) -> list[str]:
        """All video ids in gallery (insertion) order."""
        return self.idmap.ids

    @property
    def frame_counts(self) -> np.ndarray:
        """Frames per video, ``int64 (num_videos,)`` in gallery order."""
        return np.diff(self._offsets)

    @property
    def codes(self) -> np.ndarray:
        """All frame codes, packed ``uint8 (ntotal_frames, bits/8)``, videos in gallery order."""
        if self._parts:
            self._codes = np.ascontiguousarray(np.concatenate([self._codes, *self._parts], axis=0))
            self._parts = []
        return self._codes

    @property
    def times(self) -> np.ndarray:
        """Seconds of every frame in its video, ``float64 (ntotal_frames,)``; NaN where not given."""
        if self._time_parts:
            self._times = np.concatenate([self._times, *self._time_parts])
            self._time_parts = []
        return self._times

    def video_frames(self, video_id: str) -> tuple[np.ndarray, np.ndarray]:
        """One video's ``(packed frame codes (M, bits/8), frame times (M,) seconds, NaN if unknown)``."""
        if video_id not in self.idmap:
            raise KeyError(f"video id {video_id!r} is not in this index")
        pos = int(self.idmap.to_ints([video_id])[0])
        a, b = int(self._offsets[pos]), int(self._offsets[pos + 1])
        return self.codes[a:b], self.times[a:b]

    @property
    def offsets(self) -> np.ndarray:
        """Frame offsets ``int64 (num_videos + 1,)``: video ``i`` owns ``codes[offsets[i]:offsets[i+1]]``."""
        return self._offsets.copy()

    @property
    def frame_videos(self) -> np.ndarray:
        """Gallery position of every frame's video, ``int64 (ntotal_frames,)`` (cached)."""
        return self._frame_videos()

    def _frame_videos(self) -> np.ndarray:
        if self._frame_video is None:
            self._frame_video = np.repeat(np.arange(self.num_videos, dtype=np.int64), self.frame_counts)
        return self._frame_video

    def __len__(self) -> int:
        return self.num_videos

    def __repr__(self) -> str:
        return f"FrameLevelIndex(bits={self.bits}, num_videos={self.num_videos}, ntotal_frames={self.ntotal_frames})"

    # ---------------------------------------------------------------- building

    def _video_codes(self, codes: Any, what: str) -> np.ndarray:
        """One video's frame codes as packed ``(M, bits/8)``; refuses anything else with ``what`` named."""
        arr = np.asarray(codes)
        if arr.ndim != 2:
            raise ValueError(
                f"{what} must be 2-D frame codes: packed uint8 (M, {self.bits // 8}) or {{-1,+1}} "
                f"(M, {self.bits}), got {arr.dtype} {arr.shape}"
            )
        try:
            packed = check_packed(arr, self.bits, what)
        except ValueError as err:
            # as_packed's own messages (bad values) do not say which video; check_packed's do
            raise ValueError(str(err) if str(err).startswith(what) else f"{what}: {err}") from None
        if packed.shape[0] == 0:
            raise ValueError(f"{what} has no frames; every video needs at least one frame code")
        return packed

    def add(self, video_ids: Sequence[str], frame_codes: np.ndarray | Sequence[np.ndarray],
            times: Sequence[Sequence[float] | None] | None = None) -> None:
        """Append videos and their frame codes; either all of them are added or none.

        Args:
            video_ids: one unique ``str`` per video (unique also across :meth:`add` calls).
            frame_codes: a 3-D array ``(B, M, bits/8)`` packed ``uint8`` or ``(B, M, bits)``
                {-1,+1} (every video has ``M`` frames), or a sequence of ``B`` per-video 2-D arrays
                ``(M_i, ...)`` in either form (frame counts may differ).
            times: per video, the seconds of its frames (one per frame code, finite), or None for a video
                whose times are unknown; used by temporal alignment (:mod:`vhindex.index.align`). ``None``:
                unknown for every video (NaN).

        Raises:
            ValueError: a duplicate id (named), a video with no frames, a wrong code length
                (expected vs got), or ids and videos that do not match one to one.
            TypeError: an id is not a ``str``.
        """
        if isinstance(video_ids, str):
            raise ValueError(
                f"video_ids must be a sequence of str, got the single str {video_ids!r}; wrap it in a list"
            )
        ids = list(video_ids)
        if isinstance(frame_codes, np.ndarray):
            if frame_codes.ndim != 3:
                raise ValueError(
                    f"frame_codes as one array must be 3-D: packed uint8 (B, M, {self.bits // 8}) or {{-1,+1}} "
                    f"(B, M, {self.bits}); got {frame_codes.dtype} {frame_codes.shape} "
                    "(pass a list of per-video (M_i, ...) arrays for variable frame counts)"
                )
            videos: Sequence[Any] = list(frame_codes)
        else:
            videos = list(frame_codes)
        if len(ids) != len(videos):
            raise ValueError(
                f"got {len(ids)} video ids but {len(videos)} videos of frame codes; they must match one to one"
            )
        packed = [self._video_codes(v, f"frame codes of video {vid!r}") for vid, v in zip(ids, videos, strict=True)]
        if times is None:
            frame_times = [np.full(p.shape[0], np.nan) for p in packed]
        else:
            times = list(times)
            if len(times) != len(packed):
                raise ValueError(f"got {len(times)} lists of frame times for {len(packed)} videos")
            frame_times = []
            for vid, p, t in zip(ids, packed, times, strict=True):
                if t is None:  # this video's times are unknown
                    frame_times.append(np.full(p.shape[0], np.nan))
                    continue
                arr = np.asarray(t, dtype=np.float64).reshape(-1)
                if arr.shape[0] != p.shape[0] or not np.isfinite(arr).all():
                    raise ValueError(f"frame times of video {vid!r}: need {p.shape[0]} finite seconds (one per "
                                     f"frame code), got {arr.shape[0]} values")
                frame_times.append(arr)
        self.idmap.add(ids)  # validates ids (type, duplicates) before anything else changes
        if not packed:
            return
        counts = np.fromiter((p.shape[0] for p in packed), dtype=np.int64, count=len(packed))
        self._parts.extend(packed)
        self._time_parts.extend(frame_times)
        self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(counts)])
        self._frame_video = None
        self._mih = None

    # ---------------------------------------------------------------- search

    def _exclude_positions(self, exclude: Sequence[str | None] | None, nq: int) -> np.ndarray:
        """Gallery positions of the excluded videos per query (``-1``: none)."""
        if exclude is None:
            return np.full(nq, -1, dtype=np.int64)
        if isinstance(exclude, str):
            raise ValueError(
                f"exclude must be a sequence with one id (or None) per query, got the single str {exclude!r}"
            )
        exclude = list(exclude)
        if len(exclude) != nq:
            raise ValueError(
                f"exclude has {len(exclude)} entries but there are {nq} queries; give one id or None per query"
            )
        out = np.full(nq, -1, dtype=np.int64)
        for i, vid in enumerate(exclude):
            if vid is None:
                continue
            if not isinstance(vid, str) or vid not in self.idmap:
                raise ValueError(
                    f"exclude id {vid!r} (query {i}) is not a video of this index ({self.num_videos} videos)"
                )
            out[i] = int(self.idmap.to_ints([vid])[0])
        return out

    def _aggregate(
        self, queries: Sequence[Any], top_n: int, exclude: Sequence[str | None] | None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, int, int]]:
        """Algorithm 1 for a batch of query videos.

        Yields, per query in order, ``(query index, positions (ascending) of the videos with a
        positive match sum, those sums (int64), qf_num, excluded position or -1)``. A video's match
        sum is the sum over query frames of ``bits - hamming`` to its best frame among that query
        frame's top-N, i.e. ``S[v] * bits * qf_num``.
        """
        top_n = _check_positive_int(top_n, "top_n")
        if isinstance(queries, np.ndarray) and queries.ndim != 3:
            raise ValueError(
                f"queries as one array must be 3-D (num_queries, M, ...), got shape {queries.shape}; "
                "for a single query video use search()"
            )
        qcodes = [self._video_codes(q, f"query video {i}") for i, q in enumerate(queries)]
        nq = len(qcodes)
        excl = self._exclude_positions(exclude, nq)
        if nq == 0:
            return
        qf = np.fromiter((q.shape[0] for q in qcodes), dtype=np.int64, count=nq)
        ntotal = self.ntotal_frames
        if ntotal == 0:
            for i in range(nq):
                yield i, np.empty(0, np.int64), np.empty(0, np.int64), int(qf[i]), int(excl[i])
            return
        codes, frame_video, counts = self.codes, self._frame_videos(), self.frame_counts
        # Exclusion stays exact by over-asking: the stable ranking of the gallery without video E
        # is the full stable ranking with E's frames deleted -- the relative (distance, index) order
        # of two frames outside E does not depend on E (deleting E shifts indices but keeps their
        # order). At most |E| of the first top_n + |E| frames of the full ranking belong to E, so
        # that prefix minus E's frames holds >= top_n frames, and they are the first ones of the
        # ranking without E (anything ranked before a kept frame is inside the prefix too). So:
        # ask for top_n + |E|, drop E's frames, keep the first top_n that remain.
        n_excl = np.where(excl >= 0, counts[np.maximum(excl, 0)], 0)
        k_req = int(min(top_n + int(n_excl.max()), ntotal))
        rows_per_chunk = max(1, self.memory_budget // (k_req * _BYTES_PER_SLOT + self.num_videos * _BYTES_PER_VIDEO))
        bounds = np.concatenate([[0], np.cumsum(qf)])
        start = 0
        while start < nq:
            # whole query videos per chunk (at least one), so each chunk's aggregation is final
            stop = int(np.searchsorted(bounds, bounds[start] + rows_per_chunk, side="right")) - 1
            stop = max(stop, start + 1)
            yield from self._aggregate_chunk(
                qcodes[start:stop], qf[start:stop], excl[start:stop], start, top_n, k_req, codes, frame_video
            )
            start = stop

    def _aggregate_chunk(
        self,
        qcodes: list[np.ndarray],
        qf: np.ndarray,
        excl: np.ndarray,
        first: int,
        top_n: int,
        k_req: int,
        codes: np.ndarray,
        frame_video: np.ndarray,
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, int, int]]:
        nv = self.num_videos
        nchunk = len(qcodes)
        stacked = np.concatenate(qcodes, axis=0)
        row_query = np.repeat(np.arange(nchunk, dtype=np.int64), qf)  # local query of each frame row
        with faiss_threads(self.num_threads):
            dist, idx = self._stable_topk(stacked, k_req)
        valid = idx >= 0  # k_req <= ntotal, so no padding; kept for safety
        vid = frame_video[np.maximum(idx, 0)]
        row_excl = excl[row_query]
        if (row_excl >= 0).any():
            valid &= vid != row_excl[:, None]
        if k_req > top_n:
            valid &= np.cumsum(valid, axis=1, dtype=np.int32) <= top_n
        # X[v] of Algorithm 1: per query frame, each video counts once, with its first (= best =
        # smallest distance) frame in the top-N. That is the max of `bits - hamming` over the video's
        # kept frames, so a dense (frame row, video) max needs no sort. Dropped slots contribute 0,
        # which is also what a miss contributes to S, and a hit at distance `bits` adds 0 as well.
        matches = np.where(valid, self.bits - dist, 0).astype(self._match_dtype)
        del dist, idx, valid
        keys = vid
        keys += (np.arange(stacked.shape[0], dtype=np.int64) * nv)[:, None]  # flat (row, video) index
        best = np.zeros((stacked.shape[0], nv), dtype=self._match_dtype)
        np.maximum.at(best.reshape(-1), keys.reshape(-1), matches.reshape(-1))
        del keys, matches
        # S[v] += sim over the query's frames, in exact integers (sim * bits = bits - hamming)
        starts = np.concatenate([[0], np.cumsum(qf)[:-1]])
        sums = np.add.reduceat(best, starts, axis=0, dtype=np.int64)  # (queries in chunk, nv)
        for j in range(nchunk):
            videos = np.flatnonzero(sums[j])
            yield first + j, videos, sums[j, videos], int(qf[j]), int(excl[j])

    @property
    def uses_mih(self) -> bool:
        """Whether searches find the top-N frames by multi-index hashing (``method``, gallery size)."""
        if self.method == "brute" or self.bits % 16:
            return False
        return self.method == "mih" or self.ntotal_frames >= MIH_MIN_FRAMES

    def prepare(self) -> None:
        """Build the multi-index hash tables (and compile their kernel) now rather than in the first search."""
        if self.uses_mih:
            self._mih_tables().warmup()

    def _mih_tables(self) -> Any:
        if self._mih is None:
            from vhindex.index.mih import MultiIndexHash

            self._mih = MultiIndexHash(self.codes, num_threads=self.num_threads)
        return self._mih

    def _stable_topk(self, frames: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k`` gallery frames of each query frame in the stable ``(distance, index)`` order."""
        if self.uses_mih:
            return self._mih_tables().search(frames, k)
        return _topk().stable_topk_hamming(frames, self.codes, k,
                                           memory_budget=min(self.memory_budget, _TOPK_MEMORY_BUDGET))

    def top_frames(
        self, frames: np.ndarray, top_n: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``top_n`` gallery frames of each query frame in the stable ``(distance, frame index)``
        order -- the "L" of Algorithm 1 -- with an excluded video per row left out exactly.

        This is the per-shard step of a sharded frame-level search (:mod:`vhindex.index.frame_shards`):
        with shards holding contiguous runs of gallery videos, the global top-N of a query frame is the
        first ``top_n`` of the union of the shards' answers ordered by (distance, global frame index).

        Args:
            frames: packed query frame codes ``uint8 (F, bits/8)``.
            top_n: frames returned per query frame (fewer when the gallery, minus the excluded video,
                has fewer).
            exclude: ``int64 (F,)`` gallery position of the video whose frames a row ignores, or ``-1``.

        Returns:
            ``(distances int32 (F, n), frame indices int64 (F, n))``, ``n = min(top_n, ntotal_frames)``;
            slots past the end of a row's list have index ``-1`` (and distance ``bits + 1``).
        """
        top_n = _check_positive_int(top_n, "top_n")
        frames = check_packed(np.asarray(frames), self.bits, "query frames")
        nf = frames.shape[0]
        excl = np.full(nf, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
        if excl.shape != (nf,):
            raise ValueError(f"exclude must have one entry per query frame ({nf}), got shape {excl.shape}")
        ntotal = self.ntotal_frames
        n = min(top_n, ntotal)
        out_d = np.full((nf, n), self.bits + 1, dtype=np.int32)
        out_i = np.full((nf, n), -1, dtype=np.int64)
        if nf == 0 or n == 0:
            return out_d, out_i
        counts, frame_video = self.frame_counts, self._frame_videos()
        n_excl = int(np.where(excl >= 0, counts[np.maximum(excl, 0)], 0).max())
        k_req = int(min(top_n + n_excl, ntotal))  # over-ask by the excluded frames (see _aggregate)
        rows = max(1, self.memory_budget // (k_req * _BYTES_PER_SLOT))
        for start in range(0, nf, rows):
            stop = min(nf, start + rows)
            with faiss_threads(self.num_threads):
                dist, idx = self._stable_topk(frames[start:stop], k_req)
            row_excl = excl[start:stop]
            if k_req == n and not (row_excl >= 0).any():  # nothing to leave out: the lists are the answer
                out_d[start:stop], out_i[start:stop] = dist[:, :n], idx[:, :n]
                continue
            keep = idx >= 0
            if (row_excl >= 0).any():
                keep &= frame_video[np.maximum(idx, 0)] != row_excl[:, None]
            keep &= np.cumsum(keep, axis=1, dtype=np.int32) <= n
            # compact the kept slots to the left of each row, in order
            slot = np.cumsum(keep, axis=1) - 1
            r, c = np.nonzero(keep)
            out_d[start + r, slot[r, c]] = dist[r, c]
            out_i[start + r, slot[r, c]] = idx[r, c]
        return out_d, out_i

    def _rank(
        self, videos: np.ndarray, sums: np.ndarray, qf_num: int, excluded: int, k: int
    ) -> tuple[list[str], np.ndarray]:
        """Top-``k`` by (score desc, gallery position), zero-score videos filling in gallery order."""
        positive = sums > 0
        videos, sums = videos[positive], sums[positive]
        order = np.lexsort((videos, -sums))[:k]
        top_v, top_s = videos[order], sums[order]
        need = k - top_v.size
        if need > 0:
            rest = np.ones(self.num_videos, dtype=bool)
            rest[videos] = False
            if excluded >= 0:
                rest[excluded] = False
            fill = np.flatnonzero(rest)[:need]
            top_v = np.concatenate([top_v, fill])
            top_s = np.concatenate([top_s, np.zeros(fill.size, dtype=np.int64)])
        scores = top_s.astype(np.float64) / float(self.bits * qf_num)
        return self.idmap.to_ids(top_v).tolist(), scores

    def search_batch(
        self,
        queries: Sequence[np.ndarray],
        k: int,
        *,
        top_n: int = 1000,
        exclude: Sequence[str | None] | None = None,
    ) -> list[tuple[list[str], np.ndarray]]:
        """Top-``k`` gallery videos for each query video (Algorithm 1), in one batched pass.

        All query frames are stacked and searched with one stable top-N pass (chunked to
        :attr:`memory_budget`); each frame's best match per video is taken with one
        ``np.maximum.at`` into a dense (frame, video) array and summed per query with
        ``np.add.reduceat`` -- no sorting and no Python loop over frames or top-N lists.

        Args:
            queries: per-query frame codes ``(M_q, bits/8)`` packed or ``(M_q, bits)`` {-1,+1}
                (a 3-D array ``(num_queries, M, ...)`` works too).
            k: videos returned per query (>= 1). Fewer come back only when the gallery (minus the
                excluded video) has fewer than ``k`` videos.
            top_n: gallery frames considered per query frame (the paper's N, >= 1).
            exclude: one gallery video id or ``None`` per query; that video's frames are ignored,
                exactly as if it were not in the gallery (leave-one-out evaluation).

        Returns:
            Per query ``(video ids, scores float64)``, ordered by score descending then gallery
            position; videos no query frame hit have score 0 and follow in gallery order.

        Raises:
            ValueError: ``k`` or ``top_n`` < 1, a query with no frames or a wrong code length,
                an unknown exclude id, or ``exclude`` of the wrong length.
        """
        k = _check_positive_int(k, "k")
        results: list[tuple[list[str], np.ndarray]] = []
        for _, videos, sums, qf_num, excluded in self._aggregate(queries, top_n, exclude):
            results.append(self._rank(videos, sums, qf_num, excluded, k))
        return results

    def search(
        self, query_frame_codes: np.ndarray, k: int, *, top_n: int = 1000, exclude: str | None = None
    ) -> tuple[list[str], np.ndarray]:
        """Top-``k`` gallery videos for one query video; see :meth:`search_batch`.

        Args:
            query_frame_codes: ``(M_q, bits/8)`` packed ``uint8`` or ``(M_q, bits)`` {-1,+1}.
            k: videos returned (>= 1).
            top_n: gallery frames considered per query frame (>= 1).
            exclude: a gallery video id whose frames are ignored, or ``None``.

        Returns:
            ``(video ids, scores float64)``.
        """
        if exclude is not None and not isinstance(exclude, str):
            raise ValueError(f"exclude must be one video id (str) or None, got {exclude!r}")
        return self.search_batch([query_frame_codes], k, top_n=top_n, exclude=[exclude])[0]

    def scores(self, query_frame_codes: np.ndarray, *, top_n: int = 1000, exclude: str | None = None) -> np.ndarray:
        """Dense Algorithm-1 scores of one query video, ``float64 (num_videos,)`` in gallery order.

        Videos not hit by any query frame -- and the excluded video -- have score 0.
        """
        if exclude is not None and not isinstance(exclude, str):
            raise ValueError(f"exclude must be one video id (str) or None, got {exclude!r}")
        out = np.zeros(self.num_videos, dtype=np.float64)
        for _, videos, sums, qf_num, _ in self._aggregate([query_frame_codes], top_n, [exclude]):
            out[videos] = sums.astype(np.float64) / float(self.bits * qf_num)
        return out

    # ---------------------------------------------------------------- persistence

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        """Write the index folder at ``url``; the manifest (with checksums) is written last."""
        fs, root = url_to_fs(url, storage_options)
        buf = io.BytesIO()
        np.savez(buf, codes=self.codes, offsets=self._offsets, times=self.times)
        codes_bytes = buf.getvalue()
        ids_bytes = self.idmap.to_parquet_bytes()
        manifest = {
            "format": FORMAT_FRAME_LEVEL,
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "num_videos": self.num_videos,
            "ntotal_frames": self.ntotal_frames,
            "bit_order": BIT_ORDER,
        }
        write_files_then_manifest(fs, root, {CODES_FILE: codes_bytes, IDS_FILE: ids_bytes}, manifest, MANIFEST_FILE)
        logger.info("saved %r to %s", self, url)

    @classmethod
    def load(
        cls, url: str, storage_options: dict[str, Any] | None = None, *, num_threads: int | None = None,
        method: str = "auto",
    ) -> FrameLevelIndex:
        """Load and verify an index folder written by :meth:`save`.

        Raises:
            FileNotFoundError: no manifest (not a saved index, or the save did not finish) or a
                missing file.
            ValueError: wrong format, checksum mismatch (corrupt file), or inconsistent contents.
        """
        fs, root = url_to_fs(url, storage_options)
        manifest_path = join(fs, root, MANIFEST_FILE)
        if not fs.exists(manifest_path):
            raise FileNotFoundError(
                f"no {MANIFEST_FILE} in {url}: not a saved FrameLevelIndex, or the save did not finish; save it again"
            )
        manifest = read_json(fs, manifest_path)
        check_manifest_header(manifest, url, FORMAT_FRAME_LEVEL, FORMAT_VERSION)
        blobs = read_verified_files(fs, root, url, manifest, (CODES_FILE, IDS_FILE))
        bits = int(manifest["bits"])
        self = cls(bits, num_threads=num_threads, method=method)
        with np.load(io.BytesIO(blobs[CODES_FILE]), allow_pickle=False) as npz:
            codes, offsets = npz["codes"], npz["offsets"]
            # indexes saved before frame times existed have none: unknown
            times = npz["times"] if "times" in npz.files else np.full(codes.shape[0], np.nan)
        idmap = IdMap.from_parquet_bytes(blobs[IDS_FILE], source=f"{url}/{IDS_FILE}")
        nv, nf = int(manifest["num_videos"]), int(manifest["ntotal_frames"])
        ok = (
            codes.dtype == np.uint8
            and codes.shape == (nf, bits // 8)
            and offsets.dtype == np.int64
            and offsets.shape == (nv + 1,)
            and len(idmap) == nv
            and offsets[0] == 0
            and offsets[-1] == nf
            and bool(np.all(np.diff(offsets) > 0))
        )
        if not ok:
            raise ValueError(
                f"{url} is inconsistent: manifest says {nv} videos, {nf} frames of {bits} bits; files hold codes "
                f"{codes.dtype} {codes.shape}, offsets {offsets.dtype} {offsets.shape}, {len(idmap)} ids"
            )
        self.idmap = idmap
        if times.shape != (nf,):
            raise ValueError(f"{url} is inconsistent: {times.shape} frame times for {nf} frames")
        self._codes = np.ascontiguousarray(codes)
        self._offsets = offsets
        self._times = times.astype(np.float64)
        return self


def rank_videos_leave_one_out(
    index: FrameLevelIndex, query_ids: Sequence[str], query_codes: Sequence[np.ndarray], *, top_n: int = 1000
) -> list[list[str]]:
    """Full ranking of every other gallery video for each query, the query left out of the gallery.

    Each query id must be a video of ``index`` (leave-one-out: its frames are excluded, so it never
    ranks itself). Rankings are by Algorithm-1 score descending, then gallery position; videos no
    query frame hit follow the hit ones in gallery order. Meant for mAP / top-1 evaluation.

    Args:
        index: the gallery.
        query_ids: gallery video id of each query.
        query_codes: per-query frame codes (usually the same codes as stored in the gallery).
        top_n: gallery frames considered per query frame.

    Returns:
        One list of ``index.num_videos - 1`` video ids per query.
    """
    if isinstance(query_ids, str):
        raise ValueError(f"query_ids must be a sequence of str, got the single str {query_ids!r}")
    query_ids = list(query_ids)
    if len(query_ids) != len(query_codes):
        raise ValueError(f"got {len(query_ids)} query ids but {len(query_codes)} query videos of codes")
    if not query_ids:
        return []
    results = index.search_batch(query_codes, max(index.num_videos, 1), top_n=top_n, exclude=query_ids)
    return [ids for ids, _ in results]

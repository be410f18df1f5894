"""The query router's parts that need no Ray Serve: request gate, query -> code, fan-out + merge, batching.

:class:`cluster.serve.Router` (the Serve ingress) composes them; each is tested on its own with plain
``asyncio`` and fake shards (``tests/test_router.py``):

* :class:`RequestGate` -- HTTP concerns: bearer auth, body limits, JSON parsing, request validation
  (:class:`SearchRequest` / :class:`BatchRequest`), ``k`` and batch-size bounds. Bad input raises
  :class:`RequestError` with the HTTP status and a message naming the field.
* :class:`QueryResolver` -- each query to a packed code: hex parsed, an indexed video's code looked up
  on the shards, frame features encoded by the service's model.
* :class:`FanOut` -- one search over every shard (a ``search_shard`` coroutine per shard), partial
  answers when shards are down (never a wrong top-k), the exact merge
  (:func:`vhindex.index.sharded.merge_topk`), and the router's counters.
* :class:`AdaptiveBatcher` -- timer-free batching of concurrent single queries into one fan-out.
"""

# No `from __future__ import annotations`: the request models are FastAPI/pydantic models.
import asyncio
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["AdaptiveBatcher", "AddVideosRequest", "BatchRequest", "DeleteVideosRequest", "ErrorBody", "FanOut", "FrameSearch", "Query", "QueryResolver",
           "RequestError",
           "RequestGate", "SearchRequest", "VersionNotLoaded", "VideoUrlRequest", "check_video_url", "hits",
           "json_depth"]

logger = logging.getLogger(__name__)


class Query(BaseModel):
    """One query: exactly one of ``code`` (hex, msb0), ``video_id`` (an indexed video) or ``features``
    (M x D frame features, encoded by the service's model); ``category`` selects a mask (DVHCM).

    ``level: "frame"`` searches the frame-level index (``serve.frame_index``) with the query's frame codes:
    an indexed ``video_id``'s, or ``frame_codes`` (hex per frame, optional ``frame_times`` in seconds)."""

    model_config = ConfigDict(extra="forbid")
    code: str | None = None
    video_id: str | None = Field(None, min_length=1, max_length=1024)
    features: list[list[float]] | None = None
    frame_codes: list[str] | None = Field(None, min_length=1, max_length=10_000)
    frame_times: list[float] | None = None
    level: Literal["video", "frame"] = "video"
    category: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> "Query":
        given = [k for k in ("code", "video_id", "features", "frame_codes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'code' (hex), 'video_id', 'features' or 'frame_codes'"
                             + (f"; got {given}" if given else ""))
        if self.level == "frame" and given[0] not in ("video_id", "frame_codes"):
            raise ValueError(f"level 'frame' searches by 'video_id' or 'frame_codes', not by '{given[0]}'")
        if self.level == "video" and given[0] == "frame_codes":
            raise ValueError("'frame_codes' need level 'frame'")
        if self.frame_times is not None and (self.frame_codes is None or len(self.frame_times) != len(self.frame_codes)):
            raise ValueError("'frame_times' needs 'frame_codes', one time per frame code")
        if self.level == "frame" and self.category is not None:
            raise ValueError("'category' applies to level 'video' only")
        return self


class SearchRequest(Query):
    """``POST /search`` body."""

    k: int = Field(10, description="neighbours to return")
    top_n: int | None = Field(None, ge=1, le=100_000, description="level frame: gallery frames per query frame "
                                                                  "(Algorithm 1's N; default serve.frame_top_n)")
    segments: bool = Field(True, description="level frame: the matched segment pairs of every result")
    exclude_self: bool = Field(False, description="level frame, by video_id: leave that video out of the "
                                                  "gallery (leave-one-out), instead of ranking it first")


class BatchRequest(BaseModel):
    """``POST /search/batch`` body."""

    model_config = ConfigDict(extra="forbid")
    queries: list[Query] = Field(min_length=1)
    k: int = 10


class VideoUrlRequest(BaseModel):
    """``POST /search/video`` JSON body: a video the service reads itself (``serve.video_url_prefixes``)."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=4096, description="fsspec URL under an allowed prefix")
    k: int = Field(10, description="neighbours to return")
    level: Literal["video", "frame"] = Field("video", description="frame: frame-level copy search with segments")


class VideoCode(BaseModel):
    """One video to add: its id and either its packed code as hex or its frame features (M x D, encoded by the
    service's model)."""

    model_config = ConfigDict(extra="forbid")
    video_id: str = Field(min_length=1, max_length=1024)
    code: str | None = None
    features: list[list[float]] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "VideoCode":
        if (self.code is None) == (self.features is None):
            raise ValueError("give exactly one of 'code' (hex) or 'features' (M x D frame features)")
        return self


class AddVideosRequest(BaseModel):
    """``POST /videos`` body."""

    model_config = ConfigDict(extra="forbid")
    videos: list[VideoCode] = Field(min_length=1)


class DeleteVideosRequest(BaseModel):
    """``POST /videos/delete`` body."""

    model_config = ConfigDict(extra="forbid")
    video_ids: list[str] = Field(min_length=1)


class ErrorBody(BaseModel):
    """Body of every non-2xx answer of the service."""

    error: str = Field(description="what was wrong, naming the field or limit")


class RequestError(Exception):
    """A client error: HTTP ``status`` with a message naming what was wrong."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class VersionNotLoaded(LookupError):
    """A shard replica was asked for an index version it does not hold (restarting, or mid-swap)."""


# ------------------------------------------------------------------------------------ HTTP side


class RequestGate:
    """Auth, body limits, parsing and validation of one HTTP request (no I/O of its own).

    Args:
        settings: the :class:`vhindex.config.ServeSection` (``max_body_bytes``, ``max_k``, ``max_batch``).
        token_sha256: SHA-256 (hex) of the bearer token every request must send; None: no auth.
    """

    def __init__(self, settings: Any, token_sha256: str | None = None) -> None:
        self.max_body_bytes, self.max_k, self.max_batch = settings.max_body_bytes, settings.max_k, settings.max_batch
        self.max_json_depth = int(getattr(settings, "max_json_depth", 16))
        self.token_sha256 = token_sha256

    def check_auth(self, headers: Mapping[str, str]) -> None:
        """401 unless ``Authorization: Bearer <token>`` matches (constant-time compare of the hashes)."""
        if self.token_sha256 is None:
            return
        header = headers.get("authorization", "")
        given = hashlib.sha256(header[7:].strip().encode()).hexdigest() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given, self.token_sha256):
            raise RequestError(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")

    def check_declared_length(self, headers: Mapping[str, str], limit: int | None = None, what: str = "request body",
                              framing: int = 0) -> None:
        """413 before reading a body whose ``Content-Length`` is over ``limit`` (default ``max_body_bytes``)
        plus ``framing`` bytes of envelope (multipart boundaries and headers); ``what`` names the body."""
        limit = self.max_body_bytes if limit is None else int(limit)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + framing:
            about = "about " if framing else ""
            raise RequestError(413, f"{what} of {about}{declared} bytes exceeds the limit of {limit} bytes")

    def parse(self, raw: bytes, model: type[BaseModel]) -> Any:
        """The validated ``model`` of a JSON body: 413 too large, 400 not JSON, 422 invalid (fields named)."""
        if len(raw) > self.max_body_bytes:
            raise RequestError(413, f"request body of {len(raw)} bytes exceeds the limit of {self.max_body_bytes} bytes")
        depth = json_depth(raw)
        if depth > self.max_json_depth:
            raise RequestError(400, f"malformed JSON body: nested {depth} levels deep, more than the limit of "
                                    f"{self.max_json_depth}")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, f"malformed JSON body: {err}") from None
        except RecursionError:  # e.g. 50,000 nested brackets: a bad request, not a server error
            raise RequestError(400, "malformed JSON body: nested too deeply") from None
        try:
            return model.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'body'}: {e['msg']}" for e in err.errors())
            raise RequestError(422, f"invalid request: {problems}") from None

    def check_k(self, k: int) -> int:
        """``k`` within ``[1, max_k]`` (400 otherwise)."""
        if k <= 0 or k > self.max_k:
            raise RequestError(400, f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def check_batch(self, n: int) -> None:
        """At most ``max_batch`` queries in one request (400 otherwise)."""
        if n > self.max_batch:
            raise RequestError(400, f"at most {self.max_batch} queries per batch, got {n}")


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(raw: bytes) -> int:
    """Deepest ``[`` / ``{`` nesting of a JSON text, brackets inside strings not counted.

    Checked before parsing, so a hostile body (``[[[[...``) is refused in linear time without the
    parser's recursion. Malformed text gets some number; the parser then reports it.
    """
    if not raw:
        return 0
    if isinstance(raw, str):
        raw = raw.encode()
    text = _JSON_STRING.sub(b'""', raw)
    b = np.frombuffer(text, dtype=np.uint8)
    step = (np.isin(b, (0x5B, 0x7B)).astype(np.int32) - np.isin(b, (0x5D, 0x7D)).astype(np.int32))
    return int(max(0, np.cumsum(step).max())) if len(step) else 0


_URL_PARENT = re.compile(r"(^|/)\.\.?(/|$)")


def check_video_url(url: str, prefixes: list[str]) -> None:
    """Raise :class:`RequestError` 403 unless ``url`` lies under one of ``prefixes``.

    The service reads only what its operator allowed: no prefix means no URL at all; ``.``/``..``
    segments and backslashes are refused outright (they could step out of an allowed prefix).
    """
    if not prefixes:
        raise RequestError(403, "url: this service reads no URLs (serve.video_url_prefixes is empty); upload the "
                                "video bytes instead")
    if "\\" in url or _URL_PARENT.search(url.split("://", 1)[-1]) or any(ord(c) < 32 for c in url):
        raise RequestError(403, f"url: {url!r} has '.' / '..' segments, backslashes or control characters")
    if not any(url.startswith(p) for p in prefixes):
        raise RequestError(403, f"url: {url!r} is not under an allowed prefix (serve.video_url_prefixes: {prefixes})")


# ------------------------------------------------------------------------------------ query -> code


class QueryResolver:
    """Packed codes ``(n, bits/8)`` of queries: hex parsed, indexed videos looked up, features encoded.

    Args:
        reconstruct: ``async (video_ids) -> list (one reply per shard)``; each reply is the shard's list
            of codes (``bytes`` or None per id) or an exception (that shard did not answer).
        encoder_info: ``async () -> {"num_frames", "feature_dim"}`` of the service's model; None: no model.
        encode: ``async ((n, M, D) float32) -> (n, bits/8) packed codes``; None: no model.
        has_mask_table: whether queries may name a ``category``.
        classify: ``async ((n, M, D) float32) -> (n,) categories`` of a model with a classifier (DVHCM); with a
            mask table, a feature query without a ``category`` is searched under its predicted category's mask
            (the paper's retrieval). Used only when ``encoder_info`` says ``"classifies": true``.
    """

    def __init__(self, reconstruct: Callable[[list[str]], Awaitable[list[Any]]],
                 encoder_info: Callable[[], Awaitable[dict[str, Any]]] | None = None,
                 encode: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None,
                 has_mask_table: bool = False,
                 classify: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None) -> None:
        self.reconstruct, self.encoder_info, self.encode = reconstruct, encoder_info, encode
        self.has_mask_table, self.classify = has_mask_table, classify
        self._shape: tuple[int, int] | None = None
        self._classifies = False

    async def codes(self, queries: list[Query], bits: int) -> np.ndarray:
        """Packed codes of ``queries`` in order. Raises :class:`RequestError` (400 / 404) naming the query."""
        return (await self.resolve(queries, bits))[0]

    async def resolve(self, queries: list[Query], bits: int) -> tuple[np.ndarray, list[int | None]]:
        """Packed codes of ``queries`` and the category each is searched under (its own, the model's prediction
        for a feature query when the service has a mask table and a classifying model, else None)."""
        from vhindex.index.codes import hex_to_code

        out = np.zeros((len(queries), bits // 8), dtype=np.uint8)
        by_id = [(i, q.video_id) for i, q in enumerate(queries) if q.video_id is not None]
        by_feat = [(i, q.features) for i, q in enumerate(queries) if q.features is not None]
        categories: list[int | None] = [q.category for q in queries]
        for i, q in enumerate(queries):
            if q.code is not None:
                try:
                    out[i] = hex_to_code(q.code, bits)
                except ValueError as err:
                    raise RequestError(400, f"queries[{i}].code: {err}") from None
            if q.category is not None and not self.has_mask_table:
                raise RequestError(400, f"queries[{i}].category: this service has no category mask table")
        if by_id:
            ids = [v for _, v in by_id]
            replies = await self.reconstruct(ids)
            found: dict[str, bytes] = {}
            for reply in replies:
                if isinstance(reply, BaseException):
                    continue
                for vid, code in zip(ids, reply, strict=True):
                    if code is not None:
                        found[vid] = code
            for i, vid in by_id:
                if vid not in found:
                    missing = [s for s, r in enumerate(replies) if isinstance(r, BaseException)]
                    extra = f" (shards {missing} did not answer)" if missing else ""
                    raise RequestError(404, f"queries[{i}].video_id: {vid!r} is not in the index{extra}")
                out[i] = np.frombuffer(found[vid], dtype=np.uint8)
        if by_feat:
            if self.encode is None or self.encoder_info is None:
                raise RequestError(400, "feature queries need the service to run with a model (serve.model)")
            if self._shape is None:
                info = await self.encoder_info()
                self._shape = (int(info["num_frames"]), int(info["feature_dim"]))
                self._classifies = bool(info.get("classifies")) and self.classify is not None
            m, d = self._shape
            arrays = []
            for i, feats in by_feat:
                try:
                    with np.errstate(over="ignore"):  # out of float32 range -> inf, refused just below
                        arr = np.asarray(feats, dtype=np.float32)
                except ValueError:  # rows of different lengths
                    raise RequestError(400, f"queries[{i}].features: rows of different lengths; expected {m} frames "
                                            f"x {d} dims") from None
                if arr.shape != (m, d):
                    raise RequestError(400, f"queries[{i}].features: expected {m} frames x {d} dims, got shape "
                                            f"{list(arr.shape)}")
                if not np.isfinite(arr).all():
                    raise RequestError(400, f"queries[{i}].features: NaN or Inf values")
                arrays.append(arr)
            stacked = np.stack(arrays)
            codes = await self.encode(stacked)
            for (i, _), code in zip(by_feat, codes, strict=True):
                out[i] = code
            unlabelled = [j for j, (i, _) in enumerate(by_feat) if queries[i].category is None]
            if unlabelled and self.has_mask_table and self._classifies:
                predicted = await self.classify(stacked[unlabelled])  # type: ignore[misc]
                for j, cat in zip(unlabelled, predicted, strict=True):
                    categories[by_feat[j][0]] = int(cat)
        return out, categories


# ------------------------------------------------------------------------------------ fan-out + merge


SearchShard = Callable[[int, np.ndarray, int, "np.ndarray | None", "str | None"], Awaitable[Any]]


class FanOut:
    """One search over every shard, merged into the exact top-k of all codes.

    Args:
        search_shard: ``async (shard, packed, k, categories, version) -> (distances, ids, version)``;
            an exception marks that shard missing from the answer, except a ``LookupError`` (not
            :class:`VersionNotLoaded`), which is the caller's mistake (400).
        num_shards: shards of the index.
    """

    def __init__(self, search_shard: SearchShard, num_shards: int) -> None:
        self.search_shard, self.num_shards = search_shard, num_shards
        #: mean batch = queries / fanouts (the router adds its transport counters)
        self.counters = {"fanouts": 0, "queries": 0}

    async def __call__(self, packed: np.ndarray, k: int, categories: np.ndarray | None, version: str | None,
                       bits: int) -> dict[str, Any]:
        """``{"dist" (n, k), "ids" (n, k), "missing": [shards], "version"}``; 503 when no shard answered."""
        from vhindex.index.sharded import merge_topk

        self.counters["fanouts"] += 1
        self.counters["queries"] += int(packed.shape[0])
        replies = await asyncio.gather(*[self.search_shard(s, packed, k, categories, version)
                                         for s in range(self.num_shards)], return_exceptions=True)
        parts, missing = [], []
        for s, reply in enumerate(replies):
            if isinstance(reply, BaseException):
                # shard-side exceptions arrive wrapped in a RayTaskError whose .cause is the original
                cause = getattr(reply, "cause", reply)
                if isinstance(cause, LookupError) and not isinstance(cause, VersionNotLoaded):
                    raise RequestError(400, str(cause))
                missing.append(s)
                logger.error("shard %d unavailable: %s", s, reply)
                continue
            dist, ids, answered = reply
            if answered != version:  # cannot happen: shards search exactly the version asked
                raise RuntimeError(f"shard {s} answered index version {answered}, asked {version}")
            parts.append((dist, ids))
        if not parts:
            raise RequestError(503, f"no shard answered (shards {missing} unavailable); retry later")
        dist, ids = merge_topk(parts, k, bits)
        return {"dist": dist, "ids": ids, "missing": missing, "version": version}


def hits(dist: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
    """One query's answer as JSON: ``[{"video_id", "distance"}]`` (empty slots dropped)."""
    return [{"video_id": v, "distance": int(d)} for d, v in zip(dist, ids, strict=True) if v is not None]


# ------------------------------------------------------------------------------------ frame level


class FrameSearch:
    """Frame-level search over the shards of a sharded frame index (:mod:`vhindex.index.frame_shards`):
    each shard's top-N frames per query frame, the exact merge, Algorithm 1's scores, the ranking with
    zero-score fill in gallery order, and the matched segments of every result.

    Args:
        call: ``async (shard, method, *args) -> reply`` on a frame shard (``top_frames``, ``video_frames``,
            ``ids_at``, ``locate``); an exception means the shard did not answer.
        manifest: the index's top manifest (``bits``, ``num_videos``, ``ntotal_frames``, ``shards``).
    """

    def __init__(self, call: Callable[..., Awaitable[Any]], manifest: dict[str, Any]) -> None:
        self.call = call
        self.bits = int(manifest["bits"])
        self.num_videos = int(manifest["num_videos"])
        self.ntotal_frames = int(manifest["ntotal_frames"])
        self.version = str(manifest["index_version"])
        counts = [int(x["videos"]) for x in manifest["shards"]]
        self.video_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_shards = len(counts)

    def _shard_of(self, position: int) -> int:
        return int(np.searchsorted(self.video_offsets, position, side="right")) - 1

    async def query_frames(self, q: Query) -> tuple[np.ndarray, np.ndarray | None, int]:
        """``(packed frame codes, frame times or None, excluded global position or -1)`` of a query."""
        from vhindex.index.codes import hex_to_code

        if q.frame_codes is not None:
            try:
                codes = np.stack([hex_to_code(h, self.bits) for h in q.frame_codes])
            except ValueError as err:
                raise RequestError(400, f"frame_codes: {err}") from None
            times = None if q.frame_times is None else np.asarray(q.frame_times, dtype=np.float64)
            if times is not None and not np.isfinite(times).all():
                raise RequestError(400, "frame_times: NaN or Inf values")
            return codes, times, -1
        replies = await asyncio.gather(*[self.call(s, "video_frames", [q.video_id]) for s in range(self.num_shards)],
                                       return_exceptions=True)
        for r in replies:
            if not isinstance(r, BaseException) and r[0] is not None:
                codes, times, position = r[0]
                times = np.asarray(times, dtype=np.float64)
                exclude = int(position) if getattr(q, "exclude_self", False) else -1
                return np.asarray(codes, dtype=np.uint8), (None if np.isnan(times).any() else times), exclude
        missing = [s for s, r in enumerate(replies) if isinstance(r, BaseException)]
        extra = f" (frame shards {missing} did not answer)" if missing else ""
        raise RequestError(404, f"video_id: {q.video_id!r} is not in the frame index{extra}")

    async def search(self, frames: np.ndarray, times: np.ndarray | None, exclude: int, k: int, top_n: int,
                     segments: bool) -> dict[str, Any]:
        """The answer of one frame-level query (results with ``score`` and ``segments``)."""
        from vhindex.index.frame_shards import aggregate_matches, fill_positions, merge_top_frames, rank_frame_scores

        t0 = time.perf_counter()
        row_excl = np.full(frames.shape[0], exclude, dtype=np.int64)
        replies = await asyncio.gather(*[self.call(s, "top_frames", frames, top_n, row_excl)
                                         for s in range(self.num_shards)], return_exceptions=True)
        t1 = time.perf_counter()
        parts, missing = [], []
        for s, r in enumerate(replies):
            if isinstance(r, BaseException):
                missing.append(s)
                logger.error("frame shard %d unavailable: %s", s, r)
            else:
                parts.append(r)
        if not parts:
            raise RequestError(503, f"no frame shard answered (shards {missing}); retry later")
        dist, video = merge_top_frames(parts, top_n)
        (videos, sums), = aggregate_matches(dist, video, np.array([frames.shape[0]]), self.bits)
        pos, top = rank_frame_scores(videos, sums, k)
        positions = [int(p) for p in pos]
        scores = [int(x) for x in top]
        if len(positions) < k:
            fill = fill_positions(videos, exclude, k - len(positions), self.num_videos)
            positions += fill
            scores += [0] * len(fill)
        by_shard: dict[int, list[int]] = {}
        for p in positions:
            by_shard.setdefault(self._shard_of(p), []).append(p)
        t2 = time.perf_counter()
        names: dict[int, str] = {}
        asked = [(s, plist) for s, plist in by_shard.items() if s not in missing]
        replies = await asyncio.gather(*[self.call(s, "ids_at", plist) for s, plist in asked])  # in parallel
        for (_, plist), got in zip(asked, replies, strict=True):
            names.update(zip(plist, got, strict=True))
        results = []
        denom = float(self.bits * frames.shape[0])
        for p, sc in zip(positions, scores, strict=True):
            if p in names:
                results.append({"video_id": names[p], "score": sc / denom})
        t3 = time.perf_counter()
        fetch_ms = await self._segments(results, frames, times) if segments else 0.0
        timing = {"top_frames_ms": 1000 * (t1 - t0), "rank_ms": 1000 * (t2 - t1), "ids_ms": 1000 * (t3 - t2),
                  "segments_ms": 1000 * (time.perf_counter() - t3), "segments_fetch_ms": fetch_ms}
        return {"results": results, "partial": bool(missing), "missing_shards": missing,
                "frame_index_version": self.version, "frame_timing": {k: round(v, 3) for k, v in timing.items()}}

    async def _segments(self, results: list[dict[str, Any]], frames: np.ndarray, times: np.ndarray | None) -> float:
        """Add each result's ``segments``; the milliseconds spent fetching the results' frames from the shards."""
        from vhindex.index.align import align_codes

        hits = [r for r in results if r["score"] > 0]
        if not hits:
            for r in results:
                r["segments"] = []
            return 0.0
        ids = [r["video_id"] for r in hits]
        t0 = time.perf_counter()
        replies = await asyncio.gather(*[self.call(s, "video_frames", ids) for s in range(self.num_shards)],
                                       return_exceptions=True)
        fetch_ms = 1000 * (time.perf_counter() - t0)
        found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for r in replies:
            if isinstance(r, BaseException):
                continue
            for vid, item in zip(ids, r, strict=True):
                if item is not None:
                    found[vid] = (np.asarray(item[0], dtype=np.uint8), np.asarray(item[1], dtype=np.float64))
        for r in results:
            r["segments"] = []
            if r["video_id"] in found and r["score"] > 0:
                codes, dt = found[r["video_id"]]
                r["segments"] = [g.as_dict() for g in align_codes(frames, times, codes, dt, self.bits)]
        return fetch_ms


# ------------------------------------------------------------------------------------ batching


class AdaptiveBatcher:
    """Merges concurrent calls into batches without a timer ("natural" batching).

    A call goes out at once while fewer than ``max_inflight`` batches are running; otherwise it waits
    and leaves with everything that queued up behind it (at most ``max_size``) as soon as a running
    batch finishes. An idle service adds no wait; under load batches grow with the load. ``@serve.batch``
    instead closes a batch ``batch_wait_timeout_s`` after its first item whether or not earlier batches
    are still running, so under load it sends many small batches (measured: ~1.4 queries per shard
    fan-out at 16 concurrent clients) and an idle query always pays the wait.

    Args:
        run: ``async run(items) -> results`` (one result per item, same order, handed back as they
            are). If ``run`` raises, every caller of that batch gets the exception.
        max_size: most items per batch.
        max_inflight: batches running at once.
    """

    def __init__(self, run: Any, max_size: int, max_inflight: int) -> None:
        if max_size < 1 or max_inflight < 1:
            raise ValueError(f"max_size and max_inflight must be >= 1, got {max_size}, {max_inflight}")
        self.run, self.max_size, self.max_inflight = run, max_size, max_inflight
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.inflight = 0
        self._tasks: set[asyncio.Task] = set()

    async def submit(self, item: Any) -> Any:
        """Run ``item`` in the next batch; its result (or its exception, raised)."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self.pending and self.inflight < self.max_inflight:
            batch = [(i, f) for i, f in self.pending[: self.max_size] if not f.cancelled()]
            del self.pending[: self.max_size]
            if not batch:
                continue
            self.inflight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)  # keep a reference: the loop holds tasks only weakly
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            results = await self.run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
        except asyncio.CancelledError:  # the loop is shutting down: the callers are cancelled too
            for _, future in batch:
                future.cancel()
            raise
        except Exception as err:  # noqa: BLE001 -- every waiting caller gets the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
        finally:
            self.inflight -= 1
            self._dispatch()

"""Ray Serve query service: a FastAPI router fans each query out to one deployment per index shard
and merges their top-k into exactly the answer one brute-force index over all codes would give.

Deployments (built by :func:`build_app` from a sharded index, :mod:`vhindex.index.sharded`):

* ``Shard0`` … ``Shard{N-1}`` (:class:`IndexShardServer`), ``serve.replicas`` replicas each: load
  their shard once (checksums verified), search it off the event loop (faiss in a worker thread),
  answer ``reconstruct`` for search-by-video-id, report health (``check_health``).
* ``Encoder`` (:class:`EncoderServer`, only with ``serve.model``): frame features -> packed codes.
* ``Router`` (:class:`Router`, the FastAPI ingress): validation, auth, fan-out with ``asyncio``,
  per-shard deadline, retries on a dead replica, exact merge; concurrent single queries share one
  fan-out (:class:`AdaptiveBatcher`, timer-free; or Ray Serve's ``@serve.batch``).

Fast path (``serve.fast_path``, default): the Ray cluster runs Serve throughput-optimized
(:func:`serve_cluster_env`): router replicas answer HTTP on their own ports (:func:`direct_endpoints`)
besides Serve's proxy, and the router calls the shards over Serve's gRPC transport.

Data plane (``serve.data_plane``, default): shard searches skip Serve's per-call path and go over
direct TCP connections to the shard replicas (:mod:`cluster.dataplane`; endpoints learned through a
Serve handle); any failure there sends the call through the Serve handle, with its deadline and retries.

Endpoints: ``POST /search`` (one query: ``code`` hex, ``video_id`` or ``features``), ``POST
/search/batch`` (``queries``: a list of those), ``GET /healthz``, ``GET /info``. Bad requests get a
4xx JSON ``{"error": ...}`` naming the field; a shard without a live replica makes the answer
``"partial": true`` with ``"missing_shards"`` listing it (never a silently wrong top-k).

Hot swap: every deployment takes ``user_config = {"index": URL}``. Changing it (``serve deploy`` of
an edited config, or :func:`deploy` again) reconfigures replicas in place: each shard loads the new
version beside the old one; the router keeps asking for the old version until **every** replica of
every shard reports the new one, then switches. Queries never see a mix of versions.
"""

# No `from __future__ import annotations`: FastAPI (inside Serve's class-based ingress) must see real
# annotation objects, or `request: Request` turns into a query parameter (422).
import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from typing import Any

import numpy as np
from pydantic import BaseModel

logger = logging.getLogger(__name__)

__all__ = ["AdaptiveBatcher", "EncoderServer", "FrameShardServer", "IndexShardServer", "Router", "VideoEncoderServer", "build_app", "deploy", "direct_endpoints",
           "proxy_url", "reachable_host", "serve_cluster_env", "service_url"]

from ray import serve  # noqa: E402  (cluster.* may import Ray; vhindex.* never does)

from cluster.dataplane import DataPlaneClient, DataPlaneError, RemoteShardError, ShardDataServer  # noqa: E402
from cluster.router import (  # noqa: E402
    AdaptiveBatcher,
    AddVideosRequest,
    BatchRequest,
    DeleteVideosRequest,
    ErrorBody,
    FanOut,
    Query,
    QueryResolver,
    RequestError,
    RequestGate,
    SearchRequest,
    VersionNotLoaded,
    VideoUrlRequest,
    check_video_url,
    hits,
)

try:  # FastAPI ships with ray[serve]
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover
    raise ImportError("cluster.serve needs ray[serve] (pip install -c constraints.txt 'vhindex[ray]')") from err


# --------------------------------------------------------------------------------------- shard side


def _open_index(url: str, storage_options: dict[str, Any] | None) -> Any:
    from vhindex.index.sharded import ShardedIndex

    return ShardedIndex.open(url, storage_options)


#: query rows x shard codes below which a shard searches on its event loop instead of a thread
INLINE_SEARCH_CODES = 4_000_000


class IndexShardServer:
    """One shard of the index. Keeps at most two versions loaded (current + previous) for hot swaps.

    The index URL comes only from ``user_config = {"index": URL}`` (applied by Serve right after
    construction and on every change), never from constructor arguments: a change of constructor
    arguments would make Serve restart the replicas instead of reconfiguring them in place.

    Args:
        shard_id: which shard of the sharded index to serve.
        storage_options: fsspec options.
        faiss_threads: faiss OpenMP threads (set once here: replicas must not fight over cores).
        mask_table: optional category-mask table URL.
        data_plane_ports: port range of the direct data endpoint (``serve.data_plane_ports``).
    """

    def __init__(self, shard_id: int, storage_options: dict[str, Any] | None = None, faiss_threads: int = 1,
                 mask_table: str | None = None, data_plane_ports: tuple[int, int] | None = None,
                 updates: dict[str, Any] | None = None) -> None:
        import faiss

        faiss.omp_set_num_threads(faiss_threads)
        self.shard_id = shard_id
        self.storage_options = storage_options
        self.mask_table = None
        if mask_table:
            from vhindex.index.mask import MaskTable

            self.mask_table = MaskTable.load(mask_table, storage_options)
        self.versions: dict[str, Any] = {}
        self.current: str | None = None
        self._plane: Any = None  # cluster.dataplane.ShardDataServer, started by the first data_endpoint()
        self.data_plane_ports = tuple(data_plane_ports) if data_plane_ports else None
        # online updates (serve.updates): every update read from the log, applied to every loaded version
        self.updates = updates
        self._log: Any = None
        self._applied: list[Any] = []
        # writer -> the batch up to which every one of its batches is applied here: the log's read position
        # (read_new reads a writer's batches in order; a pushed batch moves it only when it is the next one),
        # copied after each apply. Not "the highest batch seen": a batch pushed while an earlier one is still
        # unread (a replica that missed a push while it restarted) must not make a search skip its catch-up.
        self._seen: dict[str, int] = {}
        self._follower: Any = None
        # Reading the log and applying what was read happen under one lock: read_new() hands each batch to
        # one caller only, so a catch-up racing the follower thread could otherwise find nothing new while
        # the follower has read the batch but not applied it yet -- and answer without it.
        self._log_lock = threading.Lock()
        self._stop = None

    def _follow_log(self) -> None:
        """Thread: read new batches of the update log every ``poll_s`` and apply them (module docs of
        :mod:`vhindex.index.live`); the router also pushes each batch right after writing it."""
        while not self._stop.wait(float(self.updates["poll_s"])):
            try:
                with self._log_lock:
                    self._apply(self._log.read_new())
                    self._seen = self._log.read_through
            except Exception as err:  # noqa: BLE001 -- storage hiccup: try again at the next poll
                logger.warning("shard %d: reading the update log failed: %s", self.shard_id, err)

    def _apply(self, updates: list[Any]) -> int:
        if not updates:
            return 0
        self._applied.extend(updates)
        return max((shard.apply(updates) for shard in self.versions.values()), default=0)

    def apply_updates(self, batch: list[dict[str, Any]]) -> int:
        """Apply a batch the router just wrote to the log (read-your-writes; repeats are harmless)."""
        from vhindex.index.live import Update

        updates = [Update.from_json(u) for u in batch]
        with self._log_lock:
            if updates and self._log is not None:
                _, writer, seq = updates[0].stamp
                self._log.mark_read(writer, seq)  # the follower skips it unless an earlier batch is missing
            changed = self._apply(updates)
            if self._log is not None:
                self._seen = self._log.read_through
            return changed

    def _load(self, url: str) -> None:
        sharded = _open_index(url, self.storage_options)
        info = sharded.info()
        version = str(info["index_version"])
        if version in self.versions:
            self.current = version
            return
        if self.shard_id >= int(info["num_shards"]):
            raise ValueError(f"{url} has {info['num_shards']} shards; cannot serve shard {self.shard_id} "
                             "(a hot swap must keep the shard count -- redeploy instead)")
        shard = sharded.load_shard(self.shard_id)
        if self.updates:
            from vhindex.index.live import LiveShard, UpdateLog, read_compaction

            shard = LiveShard(shard, self.shard_id, int(info["num_shards"]),
                              compaction=read_compaction(url, self.storage_options))
            if self._log is None:
                self._log = UpdateLog(self.updates["log"], self.storage_options, writer="reader",
                                      bits=int(info["bits"]))
                with self._log_lock:  # replay on start
                    self._apply(self._log.read_new())
                    self._seen = self._log.read_through
                self._stop = threading.Event()
                self._follower = threading.Thread(target=self._follow_log, daemon=True,
                                                  name=f"shard{self.shard_id}-log")
                self._follower.start()
            shard.apply(self._applied)
        self.versions[version] = shard
        previous = self.current
        self.current = version
        for v in list(self.versions):
            if v not in (self.current, previous):
                del self.versions[v]
        logger.info("shard %d: loaded index version %s (%d codes) from %s", self.shard_id, version, len(shard), url)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with ``user_config`` on start and on every change: load ``index`` if new."""
        url = (user_config or {}).get("index")
        if url:
            self._load(url)

    def live_counts(self) -> dict[str, Any]:
        """Videos this replica serves now (base + updates) and how many came by updates (serve.updates)."""
        shard = self.versions.get(self.current) if self.current else None
        if shard is None:
            return {"count": 0, "delta": 0, "hidden": 0}
        return {"count": int(shard.count) if hasattr(shard, "count") else len(shard),
                "delta": int(getattr(shard, "delta_size", 0)), "hidden": len(getattr(shard, "hidden", ()))}

    def loaded_versions(self) -> dict[str, Any]:
        """``{"current": v, "versions": [...], "shard_id": i, "pid": pid, "node_id": Ray node}`` (control plane)."""
        import ray

        return {"current": self.current, "versions": sorted(self.versions), "shard_id": self.shard_id,
                "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}

    def _get(self, version: str | None) -> Any:
        v = version or self.current
        if v not in self.versions:
            raise VersionNotLoaded(f"shard {self.shard_id} has no index version {v} loaded (has {sorted(self.versions)})")
        return self.versions[v]

    async def _catch_up(self, after: tuple[str, int]) -> None:
        """Make sure batch ``after = (writer, seq)`` is applied: read the log now if it is not (a replica that
        started after the router pushed it). Acknowledged means durable, so the log has it."""
        writer, seq = str(after[0]), int(after[1])
        if self._log is None or self._seen.get(writer, 0) >= seq:
            return

        def catch_up() -> None:
            with self._log_lock:  # waits for a follower read in progress to be applied (see __init__)
                if self._log.read_through.get(writer, 0) < seq:
                    self._apply(self._log.read_new())
                if self._log.read_through.get(writer, 0) < seq:  # behind a gap of failed writes: list the folders
                    self._apply(self._log.read_new(full=True))
                self._seen = self._log.read_through

        try:
            await asyncio.to_thread(catch_up)
        except Exception as err:  # noqa: BLE001 -- storage hiccup: answer with what is applied, say so
            logger.warning("shard %d: catching up with the update log failed: %s", self.shard_id, err)
        if self._seen.get(writer, 0) < seq:
            logger.warning("shard %d: batch %s/%d not in the update log yet", self.shard_id, writer, seq)

    async def search(self, packed: np.ndarray, k: int, categories: np.ndarray | None = None,
                     version: str | None = None, after: tuple[str, int] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, str]:
        """Top-``k`` of this shard for every query row: ``(distances, video ids, version)``.

        ``after``: ``(writer, seq)`` of an update batch the answer must include (the router's last acknowledged).
        """
        if after is not None:
            await self._catch_up(after)
        shard = self._get(version)
        kwargs: dict[str, Any] = {}
        if categories is not None:
            if self.mask_table is None:
                raise LookupError("this service has no category mask table (serve.mask_table)")
            kwargs = {"categories": categories, "mask_table": self.mask_table}
        # Small searches (a few queries: well under a millisecond) run inline -- a thread hop costs more
        # than they do on a busy box. Large batches go to a thread (faiss releases the GIL), keeping the
        # replica's event loop (health checks, other requests) responsive.
        if packed.shape[0] * len(shard) <= INLINE_SEARCH_CODES:
            dist, ids = shard.search(packed, k, **kwargs)
        else:
            dist, ids = await asyncio.to_thread(shard.search, packed, k, **kwargs)
        return dist, ids, version or self.current

    async def data_endpoint(self) -> dict[str, Any]:
        """Start (once) this replica's direct search endpoint; ``{"host", "port", "secret", "shard_id", "pid"}``.

        The router calls this through a Serve handle (the authenticated control plane) and then sends
        searches straight to the endpoint (:mod:`cluster.dataplane`). It listens on the node's address:
        127.0.0.1 on a local Ray (``connect_ray`` pins it there), the node's network address in a
        multi-node cluster.
        """
        if self._plane is None:
            import ray

            self._plane = ShardDataServer(self.search, ray.util.get_node_ip_address(),
                                          [(VersionNotLoaded, "version"), (LookupError, "lookup")],
                                          ports=self.data_plane_ports)
        endpoint = await self._plane.start()
        return {**endpoint, "shard_id": self.shard_id, "pid": os.getpid()}

    async def reconstruct(self, video_ids: list[str], version: str | None = None,
                          after: tuple[str, int] | None = None) -> list[bytes | None]:
        """Packed codes of the ``video_ids`` this shard holds (``None`` for the others); ``after`` as in :meth:`search`."""
        if after is not None:
            await self._catch_up(after)
        shard = self._get(version)
        out: list[bytes | None] = []
        for vid in video_ids:
            out.append(bytes(shard.reconstruct([vid])[0]) if shard.contains(vid) else None)
        return out

    def check_health(self) -> None:
        """Serve's health probe: fail when no index is loaded (the replica is then replaced)."""
        if self.current is None or self.current not in self.versions:
            raise RuntimeError(f"shard {self.shard_id}: no index loaded")


class FrameShardServer:
    """One shard of a sharded frame-level index (:mod:`vhindex.index.frame_shards`).

    Args:
        shard_id: which shard.
        index_url: the sharded frame index.
        storage_options: fsspec options.
        faiss_threads: faiss OpenMP threads.
    """

    def __init__(self, shard_id: int, index_url: str, storage_options: dict[str, Any] | None = None,
                 faiss_threads: int = 1) -> None:
        from vhindex.index.frame_shards import open_sharded_frame_index
        from vhindex.index.frames import FrameLevelIndex

        manifest = open_sharded_frame_index(index_url, storage_options)
        shards = manifest["shards"]
        self.shard_id = shard_id
        self.first_video = int(sum(x["videos"] for x in shards[:shard_id]))
        self.index = FrameLevelIndex.load(f"{index_url.rstrip('/')}/{shards[shard_id]['name']}", storage_options,
                                          num_threads=faiss_threads)
        self.index.prepare()  # large shards: multi-index hash tables built (and compiled) before serving
        self.index.frame_videos  # noqa: B018 -- the frame -> video map, cached now rather than in a query
        self.version = str(manifest["index_version"])

    async def top_frames(self, frames: np.ndarray, top_n: int, exclude: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(distances, global video positions)`` per query frame (:func:`~vhindex.index.frame_shards.shard_top_frames`)."""
        from vhindex.index.frame_shards import shard_top_frames

        return await asyncio.to_thread(shard_top_frames, self.index, self.first_video, frames, top_n, exclude)

    async def video_frames(self, video_ids: list[str]) -> list[Any]:
        """Per id: ``(frame codes, frame times, global position)`` when this shard holds it, else None."""
        out: list[Any] = []
        for vid in video_ids:
            if vid in self.index.idmap:
                codes, times = self.index.video_frames(vid)
                pos = self.first_video + int(self.index.idmap.to_ints([vid])[0])
                out.append((codes, times, pos))
            else:
                out.append(None)
        return out

    async def ids_at(self, positions: list[int]) -> list[str]:
        """Video ids at global gallery positions of this shard."""
        return self.index.idmap.to_ids(np.asarray(positions, dtype=np.int64) - self.first_video).tolist()

    def check_health(self) -> None:
        """Serve's health probe (the index is loaded in the constructor)."""


class EncoderServer:
    """Encodes frame features with the model that produced the indexed codes."""

    def __init__(self, model_url: str, storage_options: dict[str, Any] | None = None, threads: int = 1) -> None:
        import torch

        from vhindex.models import load_model

        torch.set_num_threads(threads)
        self.model = load_model(model_url, storage_options)
        self.shape = (self.model.num_frames, self.model.feature_dim)

    def info(self) -> dict[str, Any]:
        """Model name, bits, version, the frame shape queries must have, and whether it classifies (DVHCM)."""
        return {"name": self.model.name, "bits": self.model.bits, "version": self.model.version(),
                "num_frames": self.shape[0], "feature_dim": self.shape[1],
                "classifies": callable(getattr(self.model, "classify", None))}

    async def encode(self, features: np.ndarray) -> np.ndarray:
        """``(n, M, D)`` float32 -> packed codes ``(n, bits/8)``."""
        return await asyncio.to_thread(self.model.encode_packed, features)

    async def classify(self, features: np.ndarray) -> np.ndarray:
        """``(n, M, D)`` float32 -> the model's predicted categories ``(n,)`` (a classifying model only).

        Raises:
            LookupError: the model has no classifier.
        """
        fn = getattr(self.model, "classify", None)
        if not callable(fn):
            raise LookupError(f"model {self.model.name} has no classifier")
        return await asyncio.to_thread(fn, features)


class VideoEncoderServer:
    """Video bytes or an allowed URL -> packed code: PyAV decoding, the backbone, the index's model.

    The same sampling, crop, backbone and dtype as ``vhindex extract`` (the settings must be the ones the
    model's training features were made with), so an uploaded file gets the code the batch path gives
    it. Problems with the video (undecodable, truncated to nothing, too long) come back as
    ``{"status": 4xx, "error": ...}`` -- the extraction job's reasons -- never as exceptions.

    Args:
        model_url: the saved model that made the indexed codes.
        storage_options: fsspec options (model and video URLs).
        settings: the :class:`vhindex.config.ServeSection` fields as a dict (``video_*``, ``max_video_seconds``).
    """

    def __init__(self, model_url: str, storage_options: dict[str, Any] | None, settings: dict[str, Any]) -> None:
        import torch

        from vhindex.features import FrameFeatureExtractor
        from vhindex.models import load_model

        torch.set_num_threads(int(settings["video_threads"]))
        self.model = load_model(model_url, storage_options)
        frame_model = settings.get("frame_model")
        self.frame_model = load_model(frame_model, storage_options) if frame_model else None
        self.storage_options = storage_options
        self.prefixes = list(settings.get("video_url_prefixes") or [])
        self.max_seconds = float(settings["max_video_seconds"])
        self.extractor = FrameFeatureExtractor(
            settings["video_backbone"], weights=settings.get("video_weights"), num_frames=self.model.num_frames,
            image_size=settings.get("video_image_size"), device="auto", dtype=settings["video_dtype"],
            batch_frames=max(256, self.model.num_frames), decode_workers=0, threads=int(settings["video_threads"]),
            storage_options=storage_options, runtime=settings["video_runtime"])
        if self.extractor.feature_dim != self.model.feature_dim:
            raise ValueError(f"serve.video_backbone {settings['video_backbone']} gives {self.extractor.feature_dim}-d "
                             f"features; the model {model_url} takes {self.model.feature_dim}-d ones")

    def info(self) -> dict[str, Any]:
        """The extractor's description (what the features depend on) and its runtime."""
        return {**self.extractor.describe(), "runtime": self.extractor.runtime, "device": str(self.extractor.device),
                "pid": os.getpid()}

    async def encode_video(self, video: bytes | str, level: str = "video") -> dict[str, Any]:
        """``{"code": bytes, "decode_ms", "features_ms", "encode_ms", "decoded_frames", "duration_s"}`` or
        ``{"status", "error"}`` (off the event loop: decoding and the CNN release the GIL). ``level="frame"``
        returns ``"frame_codes"`` (one code per sampled frame, ``serve.frame_model``) and ``"times"`` instead."""
        return await asyncio.to_thread(self._encode, video, level)

    def _encode(self, video: bytes | str, level: str = "video") -> dict[str, Any]:
        import io

        from vhindex.features import VideoDecodeError, probe_video, sample_frames

        t0 = time.perf_counter()
        if isinstance(video, str):
            try:  # checked by the router too; a replica never trusts its caller with paths
                check_video_url(video, self.prefixes)
            except RequestError as err:
                return {"status": err.status, "error": err.message}
            name = video

            def source() -> Any:
                return video
        else:
            name = f"the uploaded video ({len(video)} bytes)"

            def source() -> Any:
                return io.BytesIO(video)
        try:
            head = probe_video(source(), self.storage_options)
            if head["duration"] is not None and head["duration"] > self.max_seconds:
                return {"status": 422, "error": f"video: {name} lasts {head['duration']:.1f} s, more than "
                                               f"serve.max_video_seconds = {self.max_seconds:g} s"}
            sampled = sample_frames(source(), self.extractor.num_frames, size=self.extractor.image_size,
                                    storage_options=self.storage_options, min_frames=self.extractor.min_frames)
        except VideoDecodeError as err:
            detail = f" ({err.detail})" if err.detail else ""
            return {"status": 422, "error": f"video: cannot sample frames from {name}: {err.reason}{detail}"}
        t1 = time.perf_counter()
        with np.errstate(over="ignore"):
            feats = self.extractor.embed(sampled.frames).astype(self.extractor.dtype)
        if not np.isfinite(feats).all():
            return {"status": 422, "error": f"video: non-finite features from {name} (non_finite)"}
        t2 = time.perf_counter()
        out: dict[str, Any] = {"decoded_frames": int(sampled.decoded_frames), "duration_s": sampled.duration_s,
                               "truncated": sampled.decode_error is not None}
        if level == "frame":
            if self.frame_model is None:
                return {"status": 400, "error": "level 'frame' video queries need serve.frame_model"}
            m, d = feats.shape
            out["frame_codes"] = self.frame_model.encode_packed(feats.reshape(m, 1, d)).tobytes()
            out["times"] = [float(t) for t in sampled.timestamps]
        else:
            out["code"] = self.model.encode_packed(feats[None])[0].tobytes()
        t3 = time.perf_counter()
        return {**out, "decode_ms": 1000 * (t1 - t0), "features_ms": 1000 * (t2 - t1), "encode_ms": 1000 * (t3 - t2)}


# ---------------------------------------------------------------------------------------- the router


app = FastAPI(title="vhindex", description="Hamming top-k over learned binary video codes")


# One error contract: every non-2xx answer is {"error": "<message>"}, including the ones FastAPI and
# Starlette make themselves (unknown path 404, wrong method 405) and anything unexpected (500).
@app.exception_handler(RequestError)
async def _request_error(request: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    message = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(err.status_code, str(err.detail))
    return JSONResponse({"error": message}, status_code=err.status_code, headers=getattr(err, "headers", None))


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in err.errors())
    return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)


@app.exception_handler(Exception)
async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": f"internal error ({type(err).__name__}); see the service log"}, status_code=500)


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of an endpoint's error statuses (all share :class:`ErrorBody`)."""
    words = {400: "bad request (field named)", 401: "missing or wrong bearer token", 403: "URL not allowed",
             404: "unknown video id or endpoint", 405: "method not allowed", 413: "body or video too large",
             415: "unsupported content type", 422: "invalid request or undecodable video",
             503: "no shard answered"}
    return {st: {"model": ErrorBody, "description": words.get(st, "error")} for st in statuses}


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


_VIDEO_BODY = {"requestBody": {"required": True, "content": {
    "video/mp4": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["video"], "properties": {
        "video": {"type": "string", "format": "binary"}, "k": {"type": "integer"},
        "level": {"type": "string", "enum": ["video", "frame"]}}}},
    "application/json": {"schema": {"$ref": "#/components/schemas/VideoUrlRequest"}}}},
    "parameters": [{"name": "k", "in": "query", "required": False, "schema": {"type": "integer", "default": 10},
                    "description": "neighbours to return (uploads; JSON bodies carry their own k)"},
                   {"name": "level", "in": "query", "required": False,
                    "schema": {"type": "string", "enum": ["video", "frame"], "default": "video"},
                    "description": "frame: frame-level copy search with matched segments (serve.frame_index)"}]}


def _openapi() -> dict[str, Any]:
    """The app's OpenAPI document, with the request models our handlers parse themselves (they take the raw
    body to control limits and errors, so FastAPI cannot see them) added to the components."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (SearchRequest, BatchRequest, VideoUrlRequest, AddVideosRequest, DeleteVideosRequest, ErrorBody):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    # FastAPI documents its own 422 body for routes with parameters; ours answers {"error"} there too
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for methods in doc.get("paths", {}).values():
        for op in methods.values():
            for status, resp in op.get("responses", {}).items():
                if status[:1] in "45":
                    resp["content"] = {"application/json": {"schema": dict(error_ref)}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    app.openapi_schema = doc
    return doc


app.openapi = _openapi


@serve.ingress(app)
class Router:
    """FastAPI ingress: the request gate, query -> code, fan-out + merge (:mod:`cluster.router`), wired to the
    shards over the direct data plane or Serve handles, with hot swaps of the index version.

    Args:
        shards: one deployment handle per shard, in shard order.
        encoder: encoder handle (``None``: feature queries are refused with 400).
        video_encoder: :class:`VideoEncoderServer` handle (``None``: ``/search/video`` answers 400).
        frame_shards: one :class:`FrameShardServer` handle per frame shard (``serve.frame_index``), or None.
        settings: the :class:`vhindex.config.ServeSection` (its ``index`` arrives through ``user_config``).
        token_sha256: SHA-256 of the bearer token (:func:`build_app` reads the token where the app is built;
            only its hash travels to the replicas); None: no auth.
    """

    def __init__(self, shards: list[Any], encoder: Any, settings: Any, token_sha256: str | None = None,
                 video_encoder: Any = None, frame_shards: list[Any] | None = None, compactor: Any = None) -> None:
        from ray.serve._private import constants as serve_constants

        if serve_constants.RAY_SERVE_USE_GRPC_BY_DEFAULT:
            # The handles were made where the app was built (by reference: Ray actor calls, unless that
            # process ran throughput-optimized too). Here they are re-optioned to Serve's gRPC transport:
            # a 4-shard fan-out costs about half as much on a small machine (benchmarks/bench_serve.py).
            shards = [h.options(_by_reference=False) for h in shards]
            encoder = None if encoder is None else encoder.options(_by_reference=False)
        self.shards = shards
        self.encoder = encoder
        # by reference (Ray's object store), not gRPC: an upload can be tens of MB
        self.video_encoder = video_encoder
        self.frame_shards = list(frame_shards or [])
        self.compactor = compactor  # automatic compaction (serve.compact_after), or None
        self.frame_search = None
        if self.frame_shards:
            from cluster.router import FrameSearch
            from vhindex.index.frame_shards import open_sharded_frame_index

            self.frame_search = FrameSearch(self._frame_call, open_sharded_frame_index(
                settings.frame_index, settings.storage_options or None))
        self.settings = settings
        self.storage_options = settings.storage_options or None
        self.version: str | None = None  # set by the first reconfigure (Serve applies user_config at start)
        self._log: Any = None  # vhindex.index.live.UpdateLog, made by the first update (serve.updates)
        # (writer, seq) of the last batch this router acknowledged: every shard search carries it, and a replica
        # that has not applied that batch yet (one started after the batch was pushed) reads the log first --
        # read-your-writes through this router, whatever replica answers
        self._written: tuple[str, int] | None = None
        self._index_url: str | None = None
        self.target: str | None = None
        self._swap_task: asyncio.Task | None = None
        self.gate = RequestGate(settings, token_sha256)
        self.resolver = QueryResolver(
            self._reconstruct,
            encoder_info=None if encoder is None else (lambda: self.encoder.info.remote()),
            encode=None if encoder is None else (lambda frames: self.encoder.encode.remote(frames)),
            has_mask_table=bool(settings.mask_table),
            classify=None if encoder is None else (lambda frames: self.encoder.classify.remote(frames)))
        self.fanout = FanOut(self._search_shard, len(shards))
        # shard searches by transport (direct data plane or Serve handle)
        self.transport = {"direct_calls": 0, "handle_calls": 0, "direct_failures": 0}
        self._planes: dict[int, list[Any]] = {}  # shard -> DataPlaneClient per live replica
        self._plane_refresh_at = [0.0] * len(shards)
        self._plane_tasks: dict[int, asyncio.Task] = {}
        self._plane_rr = [0] * len(shards)
        self._search_batched.set_max_batch_size(settings.batch_max_size)
        self._search_batched.set_batch_wait_timeout_s(settings.batch_wait_s)
        self._adaptive = AdaptiveBatcher(self._search_many, settings.batch_max_size, settings.batch_max_inflight)

    @property
    def counters(self) -> dict[str, int]:
        """Fan-outs, queries, and shard calls by transport (reported by ``/info``)."""
        return {**self.fanout.counters, **self.transport}

    def _set_index(self, url: str) -> None:
        self._index_url = url.rstrip("/")
        info = _open_index(url, self.storage_options).info()
        if int(info["num_shards"]) != len(self.shards):
            raise ValueError(f"{url} has {info['num_shards']} shards but the service runs {len(self.shards)}; "
                             "redeploy to change the shard count")
        self.target, self.target_info, self.bits = str(info["index_version"]), info, int(info["bits"])

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """New ``index`` URL: remember the target version; switch once every shard replica has it."""
        url = (user_config or {}).get("index")
        if not url:
            return
        self._set_index(url)
        if self.version is None:  # first configuration: nothing served yet, nothing to swap
            self.version, self.info_cache = self.target, self.target_info
            return
        if self.target != self.version and (self._swap_task is None or self._swap_task.done()):
            self._swap_task = asyncio.create_task(self._switch_when_loaded())

    async def _switch_when_loaded(self, poll_s: float = 0.25, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            target = self.target
            try:
                replies = await asyncio.gather(*[h.broadcast("loaded_versions").results_async(timeout_s=5.0)
                                                 for h in self.shards])
                if all(r and all(target in x["versions"] for x in r) for r in replies):
                    self.version, self.info_cache = target, self.target_info
                    logger.info("router: switched to index version %s", target)
                    return
            except Exception as err:  # noqa: BLE001 -- replicas restarting; poll again
                logger.info("router: waiting for shards to load %s (%s)", target, err)
            await asyncio.sleep(poll_s)
        logger.error("router: shards did not load index version %s within %.0fs; still serving %s",
                     self.target, timeout_s, self.version)

    # -- request plumbing -----------------------------------------------------------------------
    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        self.gate.check_auth(request.headers)
        self.gate.check_declared_length(request.headers)
        return self.gate.parse(await request.body(), model)

    async def _reconstruct(self, ids: list[str]) -> list[Any]:
        return await asyncio.gather(*[self._call(s, "reconstruct", ids, version=self.version, after=self._written)
                                      for s in range(len(self.shards))], return_exceptions=True)

    async def _call(self, shard: int, method: str, *args: Any, handles: list[Any] | None = None,
                    timeout_s: float | None = None, **kwargs: Any) -> Any:
        """One shard call with the per-shard deadline and retries (a retry lands on another replica).

        ``handles``: the deployments to call (default the index shards); ``timeout_s``: the deadline of
        one attempt (default ``serve.shard_timeout_s``).
        """
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        handles = self.shards if handles is None else handles
        timeout_s = self.settings.shard_timeout_s if timeout_s is None else timeout_s
        attempts = self.settings.retries + 1
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                handle = getattr(handles[shard], method)
                return await asyncio.wait_for(handle.remote(*args, **kwargs), timeout=timeout_s)
            except Exception as err:
                retriable = isinstance(err, (ActorDiedError, ActorUnavailableError, RayActorError, asyncio.TimeoutError))
                if not retriable and not isinstance(getattr(err, "cause", None), VersionNotLoaded):
                    raise
                last = err
                logger.warning("shard %d %s attempt %d/%d failed: %s", shard, method, attempt + 1, attempts,
                               type(err).__name__)
        assert last is not None
        raise last

    async def _frame_call(self, shard: int, method: str, *args: Any) -> Any:
        """One frame-shard call (:meth:`_call` on the frame shards; at least 10 s: a frame top-N is heavier)."""
        return await self._call(shard, method, *args, handles=self.frame_shards,
                                timeout_s=max(self.settings.shard_timeout_s, 10.0))

    async def _search_frames(self, req: Any, k: int, t0: float) -> JSONResponse:
        if self.frame_search is None:
            raise RequestError(400, "level 'frame' needs a frame-level index (serve.frame_index)")
        top_n = req.top_n or self.settings.frame_top_n
        frames, times, exclude = await self.frame_search.query_frames(req)
        answer = await self.frame_search.search(frames, times, exclude, k, top_n, req.segments)
        return JSONResponse({**answer, "k": k, "level": "frame", "top_n": top_n,
                             "took_ms": round(1000 * (time.perf_counter() - t0), 3)})

    # -- the direct data plane (cluster.dataplane) ---------------------------------------------------
    #: seconds between data-endpoint refreshes of a shard (new replicas are found within this time)
    PLANE_REFRESH_S = 5.0
    #: after a failed connection, wait at least this long before asking the shard's replicas again
    PLANE_RETRY_S = 1.0

    async def _search_shard(self, s: int, packed: np.ndarray, k: int, categories: np.ndarray | None,
                            version: str | None) -> Any:
        """Search shard ``s``: over a replica's direct endpoint when one is known, else (or when that
        fails in any way) through the Serve handle with its deadline and retries."""
        if self.settings.data_plane:
            self._maybe_refresh_plane(s)
            clients = self._planes.get(s)
            if clients:
                # fewest calls in flight; ties rotate, so idle replicas share sequential load too
                self._plane_rr[s] += 1
                start = self._plane_rr[s] % len(clients)
                client = min(clients[start:] + clients[:start], key=lambda c: c.inflight)
                try:
                    out = await client.search(packed, k, categories, version, self.settings.shard_timeout_s,
                                              after=self._written)
                    self.transport["direct_calls"] += 1
                    return out
                except RemoteShardError as err:
                    if err.kind == "lookup":  # the caller's mistake (e.g. no mask table): 400, like the handle path
                        raise LookupError(err.message) from None
                    # e.g. this replica has not loaded `version` yet: the handle path retries on another one
                    self.transport["direct_failures"] += 1
                    logger.info("shard %d direct search answered %s; using the Serve handle", s, err)
                except DataPlaneError as err:
                    self.transport["direct_failures"] += 1
                    logger.warning("shard %d data plane %s:%d failed (%s); using the Serve handle",
                                   s, client.host, client.port, err)
                    self._drop_plane_client(s, client)
        self.transport["handle_calls"] += 1
        return await self._call(s, "search", packed, k, categories, version=version, after=self._written)

    def _maybe_refresh_plane(self, s: int) -> None:
        now = time.monotonic()
        if now >= self._plane_refresh_at[s] and s not in self._plane_tasks:
            self._plane_refresh_at[s] = now + self.PLANE_REFRESH_S
            task = asyncio.get_running_loop().create_task(self._refresh_plane(s))
            self._plane_tasks[s] = task

    async def _refresh_plane(self, s: int) -> None:
        """Ask every live replica of shard ``s`` for its data endpoint; keep pools of known ones."""
        try:
            replies = await self.shards[s].broadcast("data_endpoint").results_async(timeout_s=5.0,
                                                                                  return_exceptions=True)
            endpoints = [r for r in replies if isinstance(r, dict)]
            known = {c.key: c for c in self._planes.get(s, [])}
            fresh = []
            for e in endpoints:
                key = (str(e["host"]), int(e["port"]), str(e["secret"]))
                fresh.append(known.pop(key) if key in known else DataPlaneClient(e))
            for gone in known.values():
                gone.close()
            self._planes[s] = fresh
        except Exception as err:  # noqa: BLE001 -- shard restarting: the handle path serves meanwhile
            logger.info("shard %d: data endpoints not available yet (%s)", s, err)
        finally:
            self._plane_tasks.pop(s, None)

    def _drop_plane_client(self, s: int, client: Any) -> None:
        client.close()
        self._planes[s] = [c for c in self._planes.get(s, []) if c is not client]
        self._plane_refresh_at[s] = min(self._plane_refresh_at[s], time.monotonic() + self.PLANE_RETRY_S)

    # -- batching of concurrent single queries ---------------------------------------------------
    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.001)
    async def _search_batched(self, items: list[tuple[bytes, int, int | None]]) -> list[Any]:
        """``@serve.batch`` (``serve.batching: serve_batch``): concurrent single queries share one fan-out."""
        return await self._search_many(items)

    async def _search_many(self, items: list[tuple[bytes, int, int | None]]) -> list[Any]:
        """One fan-out for many single queries ``(packed code, k, category)`` (k = the largest asked)."""
        packed = np.stack([np.frombuffer(code, dtype=np.uint8) for code, _, _ in items])
        k = max(k for _, k, _ in items)
        cats = [c for _, _, c in items]
        categories = None if all(c is None for c in cats) else np.array([-1 if c is None else c for c in cats])
        if categories is not None and (categories < 0).any():
            # mixing masked and unmasked queries in one fan-out is not supported: run them separately
            out = []
            for item in items:
                out.append(await self._fanout_one(*item))
            return out
        try:
            res = await self.fanout(packed, k, categories, self.version, self.bits)
        except RequestError as err:
            return [err] * len(items)
        return [(res["dist"][i, :kk], res["ids"][i, :kk], res["missing"], res["version"])
                for i, (_, kk, _) in enumerate(items)]

    async def _fanout_one(self, code: bytes, k: int, category: int | None) -> Any:
        try:
            res = await self.fanout(np.frombuffer(code, dtype=np.uint8)[None, :], k,
                                    None if category is None else np.array([category]), self.version, self.bits)
        except RequestError as err:
            return err
        return res["dist"][0], res["ids"][0], res["missing"], res["version"]

    def runtime_mode(self) -> dict[str, Any]:
        """How Ray Serve runs in this replica's process (control plane: checked by :func:`deploy`)."""
        from ray.serve._private import constants as c

        return {"pid": os.getpid(), "direct_ingress": bool(c.RAY_SERVE_ENABLE_DIRECT_INGRESS),
                "grpc_handles": bool(c.RAY_SERVE_USE_GRPC_BY_DEFAULT),
                "user_code_on_replica_loop": not c.RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD}

    # -- endpoints --------------------------------------------------------------------------------
    @app.post("/search", responses=_error_responses(400, 401, 404, 413, 422, 503), openapi_extra=_json_body(SearchRequest))
    async def search(self, request: Request) -> JSONResponse:
        """Top-k of one query: ``{"code"|"video_id"|"features", "k", "category"?}``."""
        t0 = time.perf_counter()
        req = await self._body(request, SearchRequest)
        k = self.gate.check_k(req.k)
        if req.level == "frame":
            return await self._search_frames(req, k, t0)
        packed, categories = await self.resolver.resolve([req], self.bits)
        item = (packed[0].tobytes(), k, categories[0])
        adaptive = self.settings.batching == "adaptive"
        out = await (self._adaptive.submit(item) if adaptive else self._search_batched(item))
        if isinstance(out, RequestError):
            raise out
        dist, ids, missing, version = out
        body = {"results": hits(dist, ids), "k": k, "partial": bool(missing), "missing_shards": missing,
                "index_version": version, "took_ms": round(1000 * (time.perf_counter() - t0), 3)}
        if categories[0] is not None:
            body["category"] = categories[0]  # the mask the search used (the query's own or the model's prediction)
        return JSONResponse(body)

    @app.post("/search/batch", responses=_error_responses(400, 401, 404, 413, 422, 503),
              openapi_extra=_json_body(BatchRequest))
    async def search_batch(self, request: Request) -> JSONResponse:
        """Top-k of many queries in one fan-out: ``{"queries": [...], "k"}``."""
        t0 = time.perf_counter()
        req = await self._body(request, BatchRequest)
        k = self.gate.check_k(req.k)
        self.gate.check_batch(len(req.queries))
        if any(q.level == "frame" for q in req.queries):
            raise RequestError(400, "level 'frame' is searched one query at a time (POST /search)")
        packed, cats = await self.resolver.resolve(req.queries, self.bits)
        if all(c is None for c in cats):
            res = await self.fanout(packed, k, None, self.version, self.bits)
        elif all(c is not None for c in cats):
            res = await self.fanout(packed, k, np.array(cats), self.version, self.bits)
        else:
            raise RequestError(400, "queries of one batch must all have a category or none")
        results = [hits(res["dist"][i], res["ids"][i]) for i in range(len(req.queries))]
        return JSONResponse({"results": results, "k": k, "partial": bool(res["missing"]),
                             "missing_shards": res["missing"], "index_version": res["version"],
                             "took_ms": round(1000 * (time.perf_counter() - t0), 3)})

    # -- online updates (serve.updates) ---------------------------------------------------------------
    async def _write_updates(self, ops: list[tuple[str, str, bytes | None]]) -> JSONResponse:
        """Durable in the update log, then pushed to every shard replica (read-your-writes), then acknowledged."""
        if not self.settings.updates:
            raise RequestError(400, "online updates are off on this service (serve.updates: true turns them on)")
        if self._log is None:
            import os as _os

            from vhindex.index.live import UpdateLog

            writer = "r" + hashlib.sha256(f"{_os.getpid()}-{time.time_ns()}".encode()).hexdigest()[:10]
            self._log = UpdateLog(self.settings.update_log, self.storage_options, writer=writer, bits=self.bits)
        try:
            updates = await asyncio.to_thread(self._log.append, ops)
        except ValueError as err:
            raise RequestError(400, str(err)) from None
        except Exception as err:  # noqa: BLE001 -- storage refused: nothing was acknowledged
            logger.error("update log write failed: %s", err)
            raise RequestError(503, f"the update log could not be written ({type(err).__name__}); nothing was "
                                    "applied -- retry") from None
        batch = [u.to_json() for u in updates]
        if updates:
            self._written = (updates[0].stamp[1], max(self._written[1] if self._written else 0, updates[0].stamp[2]))
        replies = await asyncio.gather(*[h.broadcast("apply_updates", batch).results_async(timeout_s=10.0)
                                         for h in self.shards], return_exceptions=True)
        lagging = [s for s, r in enumerate(replies) if isinstance(r, BaseException)]
        if lagging:  # durable anyway: those replicas pick the batch up from the log within serve.update_poll_s
            logger.warning("shards %s did not confirm an update batch: %s", lagging,
                           [r for r in replies if isinstance(r, BaseException)][:1])
        return JSONResponse({"acknowledged": len(updates), "durable": True, "pending_shards": lagging,
                             "stamp": list(updates[-1].stamp) if updates else None})

    @app.post("/videos", responses=_error_responses(400, 401, 413, 422, 503), openapi_extra=_json_body(AddVideosRequest))
    async def add_videos(self, request: Request) -> JSONResponse:
        """Add (or replace) videos online: ``{"videos": [{"video_id", "code"}]}``; acknowledged once durable."""
        from vhindex.index.codes import hex_to_code

        req = await self._body(request, AddVideosRequest)
        self.gate.check_batch(len(req.videos))
        ops = []
        for i, v in enumerate(req.videos):
            if v.code is None:
                continue
            try:
                ops.append((i, ("add", v.video_id, hex_to_code(v.code, self.bits).tobytes())))
            except ValueError as err:
                raise RequestError(400, f"videos[{i}].code: {err}") from None
        with_features = [(i, v) for i, v in enumerate(req.videos) if v.features is not None]
        if with_features:  # encoded by the service's model, in one call
            try:
                packed = await self.resolver.codes([Query(features=v.features) for _, v in with_features], self.bits)
            except RequestError as err:  # name the entry of this request, not of the resolver's list
                head, sep, rest = err.message.partition("]")
                if not (head.startswith("queries[") and sep):
                    raise
                raise RequestError(err.status, f"videos[{with_features[int(head[8:])][0]}]{rest}") from None
            ops += [(i, ("add", v.video_id, code.tobytes())) for (i, v), code in zip(with_features, packed, strict=True)]
        return await self._write_updates([op for _, op in sorted(ops, key=lambda x: x[0])])

    @app.put("/videos/{video_id}", responses=_error_responses(400, 401, 413, 415, 422, 503), openapi_extra=_VIDEO_BODY)
    async def upload_video(self, video_id: str, request: Request) -> JSONResponse:
        """Add (or replace) one video from its bytes (``video/*`` or ``application/octet-stream`` body): decoded
        and encoded like a video query, then acknowledged once durable."""
        self.gate.check_auth(request.headers)
        if not video_id or len(video_id) > 1024:
            raise RequestError(400, "video_id: 1 to 1024 characters")
        if self.video_encoder is None:
            raise RequestError(400, "video uploads need video queries on (serve.video_queries: true with serve.model)")
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if not (ctype.startswith("video/") or ctype == "application/octet-stream"):
            raise RequestError(415, f"content type {ctype!r}: send the video as video/* or application/octet-stream")
        payload = await self._read_capped(request, self.settings.max_video_bytes, "video")
        if not payload:
            raise RequestError(422, "video: the upload is empty (0 bytes)")
        enc = await self._encode_upload(payload, "video")
        return await self._write_updates([("add", video_id, enc["code"])])

    @app.post("/videos/delete", responses=_error_responses(400, 401, 413, 422, 503),
              openapi_extra=_json_body(DeleteVideosRequest))
    async def delete_videos(self, request: Request) -> JSONResponse:
        """Delete videos online: ``{"video_ids": [...]}`` (ids not in the index are no-ops)."""
        req = await self._body(request, DeleteVideosRequest)
        self.gate.check_batch(len(req.video_ids))
        return await self._write_updates([("delete", v, None) for v in req.video_ids])

    @app.delete("/videos/{video_id}", responses=_error_responses(400, 401, 503))
    async def delete_video(self, video_id: str, request: Request) -> JSONResponse:
        """Delete one video online."""
        self.gate.check_auth(request.headers)
        if not video_id or len(video_id) > 1024:
            raise RequestError(400, "video_id: 1 to 1024 characters")
        return await self._write_updates([("delete", video_id, None)])

    @app.post("/search/video", responses=_error_responses(400, 401, 403, 413, 415, 422, 503), openapi_extra=_VIDEO_BODY)
    async def search_video(self, request: Request) -> JSONResponse:
        """Top-k of a video: its bytes (``video/*`` or ``application/octet-stream`` body, ``?k=``; or multipart
        field ``video``) or JSON ``{"url", "k"}`` under ``serve.video_url_prefixes``. The answer adds
        ``timing`` (``decode_ms``, ``features_ms``, ``encode_ms``, ``search_ms``)."""
        t0 = time.perf_counter()
        s = self.settings
        self.gate.check_auth(request.headers)
        if self.video_encoder is None:
            raise RequestError(400, "video queries are off on this service (serve.video_queries: true with "
                                    "serve.model turns them on)")
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        k_text = request.query_params.get("k")
        level = request.query_params.get("level", "video")
        payload: bytes | str
        if ctype.startswith("video/") or ctype == "application/octet-stream":
            payload = await self._read_capped(request, s.max_video_bytes, "video")
        elif ctype == "multipart/form-data":
            payload, form_k, form_level = await self._read_multipart(request)
            k_text = form_k if form_k is not None else k_text
            level = form_level or level
        elif ctype in ("application/json", "text/plain", ""):
            req = self.gate.parse(await self._read_capped(request, s.max_body_bytes, "request body"), VideoUrlRequest)
            check_video_url(req.url, s.video_url_prefixes)
            payload, k_text, level = req.url, str(req.k), req.level
        else:
            raise RequestError(415, f"content type {ctype!r}: send the video as video/* or application/octet-stream "
                                    "bytes, as multipart/form-data field 'video', or JSON {\"url\": ..., \"k\": ...}")
        try:
            k = self.gate.check_k(int(k_text) if k_text is not None else 10)
        except ValueError:
            raise RequestError(400, f"k must be an integer, got {k_text!r}") from None
        if level not in ("video", "frame"):
            raise RequestError(400, f"level must be 'video' or 'frame', got {level!r}")
        if level == "frame" and (self.frame_search is None or not s.frame_model):
            raise RequestError(400, "level 'frame' video queries need serve.frame_index and serve.frame_model")
        if isinstance(payload, bytes) and not payload:
            raise RequestError(422, "video: the upload is empty (0 bytes)")
        enc = await self._encode_upload(payload, level)
        timing = {"decode_ms": round(enc["decode_ms"], 3), "features_ms": round(enc["features_ms"], 3),
                  "encode_ms": round(enc["encode_ms"], 3)}
        video_info = {"decoded_frames": enc["decoded_frames"], "duration_s": enc["duration_s"],
                      "truncated": enc["truncated"]}
        if level == "frame":
            t_search = time.perf_counter()
            frames = np.frombuffer(enc["frame_codes"], dtype=np.uint8).reshape(-1, self.frame_search.bits // 8)
            times = np.asarray(enc["times"], dtype=np.float64)
            answer = await self.frame_search.search(frames, None if np.isnan(times).any() else times, -1, k,
                                                    s.frame_top_n, True)
            timing["search_ms"] = round(1000 * (time.perf_counter() - t_search), 3)
            return JSONResponse({**answer, "k": k, "level": "frame", "timing": timing, "video": video_info,
                                 "took_ms": round(1000 * (time.perf_counter() - t0), 3)})
        t_search = time.perf_counter()
        out = await self._adaptive.submit((enc["code"], k, None))
        if isinstance(out, RequestError):
            raise out
        dist, ids, missing, version = out
        search_ms = 1000 * (time.perf_counter() - t_search)
        return JSONResponse({"results": hits(dist, ids), "k": k, "partial": bool(missing), "missing_shards": missing,
                             "index_version": version,
                             "timing": {"decode_ms": round(enc["decode_ms"], 3),
                                        "features_ms": round(enc["features_ms"], 3),
                                        "encode_ms": round(enc["encode_ms"], 3), "search_ms": round(search_ms, 3)},
                             "video": {"decoded_frames": enc["decoded_frames"], "duration_s": enc["duration_s"],
                                       "truncated": enc["truncated"]},
                             "took_ms": round(1000 * (time.perf_counter() - t0), 3)})

    async def _encode_upload(self, payload: bytes | str, level: str) -> dict[str, Any]:
        """Decode and encode one video (bytes or an allowed URL) on the video encoder; RequestError on failure."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        timeout_s = self.settings.video_timeout_s
        try:
            enc = await asyncio.wait_for(self.video_encoder.encode_video.remote(payload, level), timeout=timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(422, f"video: not decoded and encoded within serve.video_timeout_s = "
                                    f"{timeout_s:g} s") from None
        except (ActorDiedError, ActorUnavailableError, RayActorError) as err:
            # the replica died under this call (Serve replaces it): the request is safe to send again
            raise RequestError(503, f"the video encoder replica was lost during the call ({type(err).__name__}); "
                                    "retry") from None
        if "error" in enc:
            raise RequestError(int(enc["status"]), enc["error"])
        return enc

    async def _read_capped(self, request: Request, limit: int, what: str) -> bytes:
        """The body, refused with 413 as soon as it is known to be over ``limit`` bytes (declared or streamed)."""
        self.gate.check_declared_length(request.headers, limit, what)
        parts, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"{what} exceeds the limit of {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def _read_multipart(self, request: Request) -> tuple[bytes, str | None, str | None]:
        """Field ``video`` (a file) and optional fields ``k`` and ``level`` of a multipart upload."""
        limit = self.settings.max_video_bytes
        self.gate.check_declared_length(request.headers, limit, "video", framing=64_000)
        try:
            form = await request.form(max_files=1, max_fields=4, max_part_size=64_000)
        except Exception as err:  # noqa: BLE001 -- starlette raises several kinds for bad multipart bodies
            raise RequestError(400, f"malformed multipart body: {getattr(err, 'detail', err)}") from None
        try:
            video = form.get("video")
            if video is None or isinstance(video, str):
                raise RequestError(422, "video: multipart field 'video' (a file) is missing")
            if video.size is not None and video.size > limit:
                raise RequestError(413, f"video of {video.size} bytes exceeds the limit of {limit} bytes")
            data = await video.read()
            if len(data) > limit:
                raise RequestError(413, f"video of {len(data)} bytes exceeds the limit of {limit} bytes")
            k, level = form.get("k"), form.get("level")
            return data, (k if isinstance(k, str) else None), (level if isinstance(level, str) else None)
        finally:
            await form.close()

    @app.get("/healthz", responses=_error_responses(401, 503))
    async def healthz(self, request: Request) -> JSONResponse:
        """Liveness plus, per shard, whether a replica answers (``status`` ok | degraded)."""
        self.gate.check_auth(request.headers)
        probe = np.zeros((1, self.bits // 8), dtype=np.uint8)
        replies = await asyncio.gather(*[self._call(s, "search", probe, 1, None, version=self.version)
                                         for s in range(len(self.shards))], return_exceptions=True)
        down = [s for s, r in enumerate(replies) if isinstance(r, BaseException)]
        return JSONResponse({"status": "ok" if not down else "degraded", "shards": len(self.shards),
                             "missing_shards": down, "index_version": self.version},
                            status_code=200 if not down else 503)

    @app.get("/info", responses=_error_responses(401))
    async def info(self, request: Request) -> JSONResponse:
        """Index version, code length, counts per shard, index type, model version."""
        self.gate.check_auth(request.headers)
        info = dict(self.info_cache)
        s = self.settings
        if s.updates:  # what the index holds now: one replica per shard asked (replicas agree within a poll)
            replies = await asyncio.gather(*[self._call(i, "live_counts") for i in range(len(self.shards))],
                                           return_exceptions=True)
            ok = [r if isinstance(r, dict) else None for r in replies]
            info["live"] = {"counts": [None if r is None else r["count"] for r in ok],
                            "added": [None if r is None else r["delta"] for r in ok],
                            "hidden_base": [None if r is None else r["hidden"] for r in ok],
                            "total": None if None in ok else sum(r["count"] for r in ok),
                            "update_log": s.update_log, "last_acknowledged": self._written}
            if self.compactor is not None:
                try:
                    info["live"]["compaction"] = await asyncio.wait_for(self.compactor.status.remote(), timeout=5.0)
                except Exception as err:  # noqa: BLE001 -- the compactor restarting: say so, serve the rest
                    info["live"]["compaction"] = {"error": f"{type(err).__name__}: {err}"}
        info.update(serving_version=self.version, pending_version=self.target if self.target != self.version else None,
                    max_k=s.max_k, max_batch=s.max_batch, feature_queries=self.encoder is not None,
                    video_queries=self.video_encoder is not None,
                    frame_index=None if self.frame_search is None else {
                        "shards": self.frame_search.num_shards, "videos": self.frame_search.num_videos,
                        "frames": self.frame_search.ntotal_frames, "version": self.frame_search.version},
                    router_counters=self.counters, batching=s.batching, serve_mode=self.runtime_mode(),
                    data_plane={"enabled": s.data_plane,
                                "endpoints": {str(i): len(self._planes.get(i, [])) for i in range(len(self.shards))},
                                "peers": {str(i): [{"host": c.host, "port": c.port, "pid": c.pid}
                                                   for c in self._planes.get(i, [])] for i in range(len(self.shards))}})
        return JSONResponse(json.loads(json.dumps(info, default=str)))


# ------------------------------------------------------------------------------------- application

#: bump when the deployment classes change behaviour (part of every deployment's code version)
_CODE_VERSION = "serve-2"


def build_app(args: dict[str, Any]) -> Any:
    """Serve application builder (``import_path: cluster.serve:build_app`` in a Serve config).

    Args:
        args: ``ServeSection`` fields (``index`` required); unknown keys are errors.

    Returns:
        The bound application (router + one deployment per shard [+ encoder]).
    """
    from vhindex.config import ServeSection

    settings = ServeSection.model_validate(args)
    if not settings.index:
        raise ValueError("serve.index: required (URL of a sharded index; jobs/build_index.py writes one)")
    if not settings.mask_table:  # the table `build-index --model` attached to the index (a DVHCM model's)
        from vhindex.index.mask import attached_mask_table

        attached = attached_mask_table(settings.index, settings.storage_options or None)
        if attached:
            settings = settings.model_copy(update={"mask_table": attached})
    info = _open_index(settings.index, settings.storage_options or None).info()
    user_config = {"index": settings.index}
    so = settings.storage_options or None
    # A stable code version per deployment (a hash of what its replicas are built from). Ray 2.60 gives
    # every deployment of a `serve.run` a random version unless `Deployment._version` is set (the public
    # `version=` argument was removed), and a new version restarts every replica. With a stable one, a
    # redeploy that changes only user_config (the index URL) reconfigures the replicas in place.
    # tests/test_serve.py::test_hot_swap_serves_one_version_at_a_time fails if this stops working.
    def versioned(dep: Any, *parts: Any) -> Any:
        text = json.dumps([_CODE_VERSION, dep.name, *parts], sort_keys=True, default=str)
        dep._version = hashlib.sha256(text.encode()).hexdigest()[:16]
        return dep

    updates = None
    if settings.updates:
        if settings.mask_table:
            raise ValueError("serve.updates and serve.mask_table cannot be combined yet (masked search over the "
                             "updates is not built)")
        updates = {"log": (settings.update_log or f"{settings.index.rstrip('/')}/_updates"),
                   "poll_s": settings.update_poll_s}
    # One access-log line per request and per shard call is measurable on small machines: off by default.
    logging_config = {"enable_access_log": settings.access_log}
    # Placement over nodes (docs/cluster.md): Serve spreads a deployment's replicas best-effort; with
    # max_replicas_per_node it never puts more than that many of one shard on a node, so one lost node
    # cannot take every copy of a shard.
    shard_actor_options: dict[str, Any] = {"num_cpus": settings.shard_cpus}
    if settings.shard_resources:
        shard_actor_options["resources"] = dict(settings.shard_resources)
    placement = ({"max_replicas_per_node": settings.max_replicas_per_node}
                 if settings.max_replicas_per_node else {})
    shards = [
        versioned(serve.deployment(IndexShardServer, name=f"Shard{i}", num_replicas=settings.replicas,
                                   ray_actor_options=shard_actor_options, user_config=user_config,
                                   health_check_period_s=5, health_check_timeout_s=10, max_ongoing_requests=64,
                                   logging_config=logging_config, **placement),
                  i, so, settings.faiss_threads, settings.mask_table, settings.replicas, shard_actor_options,
                  settings.data_plane_ports, updates, placement)
        .bind(i, so, settings.faiss_threads, settings.mask_table, settings.data_plane_ports, updates)
        for i in range(int(info["num_shards"]))
    ]
    encoder = None
    if settings.model:
        from vhindex.models import load_model

        model = load_model(settings.model, so)
        if model.bits != int(info["bits"]) or (info.get("model_version") and model.version() != info["model_version"]):
            raise ValueError(f"serve.model {settings.model} ({model.name}-{model.bits}, version {model.version()}) did "
                             f"not make the indexed codes ({info['bits']} bits, model version {info.get('model_version')})")
        encoder = serve.deployment(EncoderServer, name="Encoder", ray_actor_options={"num_cpus": 0.5}).bind(
            settings.model, so)
    video_encoder = None
    if settings.video_queries:
        if not settings.model:
            raise ValueError("serve.video_queries needs serve.model (the model that made the indexed codes)")
        video_settings = {k: v for k, v in settings.model_dump(mode="json").items()
                          if k.startswith("video_") or k in ("max_video_seconds", "frame_model")}
        video_encoder = versioned(serve.deployment(VideoEncoderServer, name="VideoEncoder",
                                                  num_replicas=settings.video_replicas,
                                                  ray_actor_options={"num_cpus": settings.video_cpus,
                                                                     "num_gpus": settings.video_gpus},
                                                  max_ongoing_requests=8, logging_config=logging_config),
                                  settings.model, so, video_settings).bind(settings.model, so, video_settings)
    frame_shards = None
    if settings.frame_index:
        from vhindex.index.frame_shards import open_sharded_frame_index

        fm = open_sharded_frame_index(settings.frame_index, so)
        if settings.frame_model:
            from vhindex.models import load_model

            frame_model = load_model(settings.frame_model, so)
            if frame_model.version() != fm["model_version"]:
                raise ValueError(f"serve.frame_model {settings.frame_model} (version {frame_model.version()}) did not "
                                 f"make the frame index's codes (model version {fm['model_version']})")
        frame_shards = [
            versioned(serve.deployment(FrameShardServer, name=f"FrameShard{i}", num_replicas=settings.replicas,
                                       ray_actor_options=shard_actor_options, max_ongoing_requests=64,
                                       health_check_period_s=5, logging_config=logging_config, **placement),
                      i, settings.frame_index, fm["index_version"], so, settings.faiss_threads, shard_actor_options,
                      placement)
            .bind(i, settings.frame_index, so, settings.faiss_threads)
            for i in range(int(fm["num_shards"]))]
    # the index travels in user_config (a new one hot-swaps instead of restarting the router)
    # the update log stays where it was when the app was built: a hot swap to another index URL keeps it
    router_settings = settings.model_copy(update={"index": None,
                                                  "update_log": updates["log"] if updates else settings.update_log})
    token_sha256 = None
    if settings.auth_token_env:
        token = os.environ.get(settings.auth_token_env, "")
        if not token:
            raise ValueError(f"serve.auth_token_env={settings.auth_token_env!r}: that environment variable is empty or "
                             "unset where the application is built")
        token_sha256 = hashlib.sha256(token.encode()).hexdigest()
    router_actor_options: dict[str, Any] = {"num_cpus": settings.router_cpus}
    if settings.router_resources:
        router_actor_options["resources"] = dict(settings.router_resources)
    router_dep = versioned(serve.deployment(Router, name="Router", num_replicas=settings.router_replicas,
                                            ray_actor_options=router_actor_options,
                                            user_config=user_config, max_ongoing_requests=256,
                                            logging_config=logging_config),
                           len(shards), settings.model, router_settings.model_dump(mode="json"), token_sha256)
    compactor = None
    if settings.compact_after:
        if not updates:
            raise ValueError("serve.compact_after needs serve.updates: true (it compacts the update log)")
        from cluster.compactor import Compactor

        # the log explicit, as in the compactor's own redeploys: the same arguments, so a swap never restarts it
        compactor_settings = settings.model_copy(update={"update_log": updates["log"]}).model_dump(
            mode="json", exclude={"index"})
        compactor = versioned(serve.deployment(Compactor, name="Compactor", num_replicas=1,
                                               ray_actor_options={"num_cpus": 0.05}, user_config=user_config,
                                               logging_config=logging_config),
                              compactor_settings, updates["log"]).bind(compactor_settings, updates["log"], build_app)
    return router_dep.bind(shards, encoder, router_settings, token_sha256, video_encoder, frame_shards, compactor)


#: router replicas of the fast path take ports in [direct_port, direct_port + DIRECT_PORT_SPAN)
DIRECT_PORT_SPAN = 100


def serve_cluster_env(settings: Any) -> dict[str, str]:
    """Environment the Ray cluster's processes need for ``settings`` (``ServeSection``).

    With ``fast_path`` (the default): Ray Serve's throughput-optimized mode -- router replicas answer
    HTTP on their own ports (direct ingress: no proxy actor in the request path), deployment handles
    talk gRPC, user code runs on the replica's event loop -- plus the router's port range (from
    ``direct_port``) and drain period (``direct_drain_s``). Ray Serve reads these when its processes
    start, so they must be in the cluster's environment: :func:`cluster.runtime.connect_ray` applies
    them to a Ray it starts; for a cluster started with ``ray start``, export them before starting it.
    ``{}`` without ``fast_path``.
    """
    if not settings.fast_path:
        return {}
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(settings.direct_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(settings.direct_port + DIRECT_PORT_SPAN),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(settings.direct_drain_s)}


_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def _is_local_address(ip: str) -> bool:
    """True when ``ip`` is an address of this machine (a socket can bind it)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def reachable_host(advertised_ip: str, bound_host: str) -> str | None:
    """The address a client on this machine can use for a server that Serve advertises at
    ``advertised_ip`` (its node's address) but that listens on ``bound_host`` (Serve's ``http_options.host``).

    - bound to every interface: the advertised address works;
    - bound to one address: that address, if the server runs on this machine (its advertised address is
      one of ours) or is the advertised address itself; otherwise None -- e.g. a replica on another node
      bound to that node's loopback cannot be reached from here.
    """
    if bound_host in _WILDCARD_HOSTS:
        return advertised_ip
    if bound_host == "localhost":
        bound_host = "127.0.0.1"
    if bound_host == advertised_ip or _is_local_address(advertised_ip):
        return bound_host
    return None


def _listens(host: str, port: int, timeout_s: float = 1.0) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def direct_endpoints(app_name: str, timeout_s: float = 60.0, *, ask_router: bool = True) -> list[str]:
    """``http://host:port`` of every running router replica's own HTTP server (fast path), else ``[]``.

    These skip Serve's proxy (one hop less, several ms on small machines); the proxy address keeps
    working and spreads load over router replicas. Waits up to ``timeout_s`` for the replicas' ports.
    ``ask_router=False`` skips asking the app whether direct ingress is on (for apps other than
    vhindex's router, e.g. the benchmarks' no-op apps).

    Only addresses where a server accepts connections from this machine are returned: Serve advertises
    each replica at its node's address, while the replica's server binds Serve's ``http_options.host``
    (:func:`reachable_host` reconciles the two), and every URL is probed with a TCP connect. A replica
    that cannot be reached is left out with a warning (callers then use the proxy, :func:`service_url`).
    """
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    # The controller's target groups are what Serve's own HAProxy integration routes to: the ingress
    # replicas' ports when direct ingress is on, else the proxies (told apart by the target names).
    if ask_router:
        mode = serve.get_app_handle(app_name).runtime_mode.remote().result(timeout_s=timeout_s)
        if not mode["direct_ingress"]:
            return []
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    bound_host = str(ray.get(controller.get_http_config.remote()).host)
    deadline = time.monotonic() + timeout_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name))
        targets = sorted({(str(t.ip), int(t.port)) for g in groups if str(g.protocol).upper().endswith("HTTP")
                          and getattr(g, "app_name", app_name) == app_name for t in g.targets
                          if "proxy" not in str(t.name).lower()})
        urls, unreachable, never = [], [], 0
        for ip, port in targets:
            host = reachable_host(ip, bound_host)
            never += host is None  # bound elsewhere: waiting will not help
            if host is not None and _listens(host, port):
                urls.append(_url(host, port))
            else:
                unreachable.append(f"{ip}:{port} (bound to {bound_host})")
        if urls or (targets and never == len(targets)) or time.monotonic() > deadline:
            if unreachable:
                logger.warning("router replicas not reachable from this machine, left out: %s", ", ".join(unreachable))
            return sorted(urls)
        time.sleep(0.2)


def service_url(settings: Any) -> str:
    """Where a client on this machine should send queries: the first router replica's own port when
    the fast path runs and is reachable (:func:`direct_endpoints`), else Serve's proxy on
    ``settings.host:port`` (127.0.0.1 when the proxy binds every interface)."""
    direct = direct_endpoints(settings.app_name) if settings.fast_path else []
    return direct[0] if direct else proxy_url(settings)


def proxy_url(settings: Any) -> str:
    """Serve's proxy as a client on this machine reaches it: ``settings.host:port``, with 127.0.0.1 when
    the proxy binds every interface."""
    return _url("127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host, settings.port)


def deploy(settings: Any, *, blocking: bool = False) -> Any:
    """Start Serve's HTTP proxy on ``settings.host:port`` and run (or update in place) the application.

    Redeploying with another ``index`` but the same shard count hot-swaps without downtime. With
    ``fast_path`` the router replicas also answer on their own ports (:func:`direct_endpoints`) --
    provided the Ray cluster runs with :func:`serve_cluster_env` (a warning says when it does not).
    """
    serve.start(proxy_location=settings.proxy_location, http_options={"host": settings.host, "port": settings.port})
    handle = serve.run(build_app(settings.model_dump(mode="json")), name=settings.app_name,
                       route_prefix=settings.route_prefix, blocking=blocking)
    if settings.fast_path and not blocking:
        mode = handle.runtime_mode.remote().result(timeout_s=60)
        if not mode["direct_ingress"]:
            logger.warning("serve.fast_path is set but this Ray cluster runs Serve without it (%s); start Ray with "
                           "%s, or set serve.fast_path: false", mode,
                           " ".join(f"{k}={v}" for k, v in serve_cluster_env(settings).items()))
    return handle

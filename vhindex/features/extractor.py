"""Videos -> ``(M, D)`` frame features: threaded decoding overlapped with batched CNN inference.

:class:`FrameFeatureExtractor` samples ``M`` frames per video (:func:`~vhindex.features.video.sample_frames`)
in a thread pool -- PyAV releases the GIL while decoding -- while the calling thread runs the
backbone on batches that pack the frames of several videos (up to ``batch_frames`` per forward
pass). A video that cannot be decoded becomes a :class:`VideoFeatures` with ``error`` set; a
batch of thousands of videos from the wild is never lost to one bad file.

Example::

    ex = FrameFeatureExtractor("efficientnet_lite0", num_frames=25)
    for r in ex.extract(["s3://bucket/a.mp4", "/data/b.avi"]):
        if r.ok:
            feats = r.features                      # (25, 1280) float16
        else:
            print(r.source, r.error_reason, r.error)
    meta = ex.describe()                            # record with the dataset
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from vhindex.features.backbones import build_backbone
from vhindex.features.video import SampledFrames, VideoDecodeError, sample_frames

__all__ = ["FrameFeatureExtractor", "VideoFeatures"]

_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclasses.dataclass
class VideoFeatures:
    """Features of one video (or why there are none).

    Attributes:
        source: the path/URL as given.
        features: ``(M, D)`` in the extractor's dtype; ``None`` when ``error`` is set.
        error: human-readable error naming the source; ``None`` on success.
        error_reason: short tag (:class:`~vhindex.features.video.VideoDecodeError` reasons, or
            ``"non_finite"``); ``None`` on success.
        decoded_frames: frames decoded from the video (0 when it could not be opened).
        duration_s: header duration in seconds, if known.
        seconds: wall time spent on this video: its decode plus its share of the forward passes.
    """

    source: str
    features: np.ndarray | None
    error: str | None
    error_reason: str | None
    decoded_frames: int
    duration_s: float | None
    seconds: float

    @property
    def ok(self) -> bool:
        """True when features were extracted."""
        return self.error is None


class FrameFeatureExtractor:
    """Sample ``num_frames`` frames per video and embed each with a CNN backbone.

    Args:
        backbone: registered backbone name (:func:`~vhindex.features.backbones.available_backbones`).
        weights: weights path/fsspec URL (``None``: bundled weights, where the backbone has them).
        num_frames: ``M`` frames per video, sampled at the centres of ``M`` equal segments.
        image_size: crop side ``S`` (default: the backbone's ``input_size``); frames are resized
            so their shorter side is ``S``, then centre-cropped.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        batch_frames: frames per forward pass (frames of several videos are packed together).
        dtype: ``"float16"`` or ``"float32"``, the dtype of the returned features. On CUDA the
            forward pass runs under float16 autocast, so features differ slightly from the CPU's.
        decode_workers: decoding threads (0 decodes in the calling thread).
        threads: if given, ``torch.set_num_threads(threads)`` (process-wide).
        storage_options: fsspec options for video and weights URLs.
        min_frames: videos with fewer decodable frames are errors (``"too_few_frames"``).
        runtime: ``"auto"`` (ONNX Runtime on CPU when it is installed, torch otherwise), ``"torch"``
            or ``"onnx"`` (CPU only; :mod:`vhindex.features.onnx`). The two give the same features
            within float32 rounding; ONNX Runtime is 2-3x faster on a CPU.

    Attributes:
        feature_dim, num_frames, image_size, backbone_name, device (a :class:`torch.device`),
        backbone (the :class:`~vhindex.features.backbones.Backbone` module), runtime (``"torch"`` or
        ``"onnx"``, as resolved).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
        *,
        weights: str | None = None,
        num_frames: int = 25,
        image_size: int | None = None,
        device: str = "auto",
        batch_frames: int = 256,
        dtype: str = "float16",
        decode_workers: int = 2,
        threads: int | None = None,
        storage_options: dict | None = None,
        min_frames: int = 1,
        runtime: str = "auto",
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        for label, value, low in (("num_frames", num_frames, 1), ("batch_frames", batch_frames, 1),
                                  ("decode_workers", decode_workers, 0), ("min_frames", min_frames, 1)):
            if int(value) != value or value < low:
                raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")
        if image_size is not None and image_size < 8:
            raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
        if threads is not None:
            torch.set_num_threads(int(threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if runtime not in ("auto", "torch", "onnx"):
            raise ValueError(f"runtime must be 'auto', 'torch' or 'onnx', got {runtime!r}")
        if runtime == "onnx" and torch.device(device).type != "cpu":
            raise ValueError(f"runtime 'onnx' runs on the CPU only, device is {device}")
        self.device = torch.device(device)
        net = build_backbone(backbone, weights=weights, storage_options=storage_options)
        # channels_last: 1.4-1.7x faster convolutions on CPU (oneDNN) and tensor cores on CUDA.
        self.backbone = net.to(self.device, memory_format=torch.channels_last)
        self.backbone_name = backbone
        self.feature_dim = int(self.backbone.feature_dim)
        self.num_frames = int(num_frames)
        self.image_size = int(image_size or self.backbone.input_size)
        self.batch_frames = int(batch_frames)
        self.dtype = dtype
        self.decode_workers = int(decode_workers)
        self.storage_options = storage_options
        self.min_frames = int(min_frames)
        from vhindex.features.onnx import OnnxBackbone, onnx_available

        if runtime == "auto":
            runtime = "onnx" if self.device.type == "cpu" and onnx_available() else "torch"
        self.runtime = runtime
        self._onnx = OnnxBackbone(self.backbone, self.image_size, threads=threads) if runtime == "onnx" else None

    def describe(self) -> dict[str, Any]:
        """What determines the features, for dataset metadata and versioning.

        ``weights`` is ``"bundled"`` or ``"sha256:<16 hex>"`` of the file (not its path, so the
        same weights at another location describe the same features).
        """
        return {
            "backbone": self.backbone_name,
            "weights": self.backbone.weights_id,
            "feature_dim": self.feature_dim,
            "num_frames": self.num_frames,
            "image_size": self.image_size,
            "dtype": self.dtype,
            "sampling": "uniform_segment_centres",
            "resize": "shorter_side_bilinear_center_crop",
        }

    # ------------------------------------------------------------------------------------------

    def _decode(self, source: str) -> tuple[SampledFrames | VideoDecodeError, float]:
        start = time.perf_counter()
        # Several workers already decode several videos at once: one decoder thread each avoids
        # oversubscribing the cores; a single worker lets ffmpeg pick its thread count.
        try:
            out: SampledFrames | VideoDecodeError = sample_frames(
                source, self.num_frames, size=self.image_size, storage_options=self.storage_options,
                min_frames=self.min_frames, threads=0 if self.decode_workers <= 1 else 1,
            )
        except VideoDecodeError as err:
            out = err
        return out, time.perf_counter() - start

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """The backbone on already sampled frames: ``(B, S, S, 3)`` uint8 at :attr:`image_size` -> ``(B, D)``
        float32 (the query service decodes its uploads itself and then embeds their frames here)."""
        return self._forward(frames)

    @torch.inference_mode()
    def _forward(self, frames: np.ndarray) -> np.ndarray:
        """``(B, S, S, 3)`` uint8 -> ``(B, D)`` float32 on the host."""
        if self._onnx is not None:
            return self._onnx(frames)
        x = torch.from_numpy(frames).to(self.device, non_blocking=True)
        x = self.backbone.preprocess(x).contiguous(memory_format=torch.channels_last)
        cuda = self.device.type == "cuda"
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=cuda):
            y = self.backbone(x)
        return y.float().cpu().numpy()

    def extract(self, sources: Sequence[str]) -> list[VideoFeatures]:
        """Features of each video, in input order.

        Per-video problems (missing file, undecodable video, too few frames, non-finite features)
        give a :class:`VideoFeatures` with ``error`` set; nothing is raised for them.

        Args:
            sources: local paths or fsspec URLs.

        Returns:
            One :class:`VideoFeatures` per source, in the same order.
        """
        if isinstance(sources, (str, bytes)):
            raise TypeError("extract() takes a sequence of paths/URLs, not a single string")
        sources = list(sources)
        results: list[VideoFeatures | None] = [None] * len(sources)
        batcher = _Batcher(self, results)
        pool = cf.ThreadPoolExecutor(self.decode_workers, thread_name_prefix="vhindex-decode") \
            if self.decode_workers > 0 else None
        # Bounded look-ahead: decoded frames of at most this many videos wait for the CNN.
        ahead = max(2, 2 * self.decode_workers)
        pending: deque[tuple[int, cf.Future | None]] = deque()
        next_index = 0
        try:
            while next_index < len(sources) or pending:
                while next_index < len(sources) and len(pending) < ahead:
                    fut = pool.submit(self._decode, sources[next_index]) if pool is not None else None
                    pending.append((next_index, fut))
                    next_index += 1
                i, fut = pending.popleft()
                decoded, seconds = fut.result() if fut is not None else self._decode(sources[i])
                if isinstance(decoded, VideoDecodeError):
                    results[i] = VideoFeatures(sources[i], None, str(decoded), decoded.reason, 0, None, seconds)
                else:
                    batcher.add(i, sources[i], decoded, seconds)
            batcher.flush(final=True)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


class _Batcher:
    """Packs the frames of several videos into forward passes of ``batch_frames`` frames.

    Frames wait until a full batch is available (the tail of one video may share a pass with the
    head of the next), so every pass but the last has the same size.
    """

    def __init__(self, ex: FrameFeatureExtractor, results: list[VideoFeatures | None]) -> None:
        self.ex = ex
        self.results = results
        self.frames: list[np.ndarray] = []  # waiting frame blocks, in order
        self.owners: list[int] = []  # video index of each waiting block
        self.waiting = 0
        self.videos: dict[int, dict[str, Any]] = {}  # video index -> partial outputs and bookkeeping

    def add(self, index: int, source: str, sampled: SampledFrames, seconds: float) -> None:
        self.videos[index] = {"source": source, "sampled": sampled, "seconds": seconds, "rows": []}
        self.frames.append(sampled.frames)
        self.owners.append(index)
        self.waiting += len(sampled.frames)
        if self.waiting >= self.ex.batch_frames:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        if not self.waiting:
            return
        block = np.concatenate(self.frames) if len(self.frames) > 1 else self.frames[0]
        owners = np.repeat(np.array(self.owners), [len(f) for f in self.frames])
        b = self.ex.batch_frames
        usable = len(block) if final else (len(block) // b) * b
        for start in range(0, usable, b):
            chunk = block[start:start + b]
            t0 = time.perf_counter()
            out = self.ex._forward(chunk)
            share = (time.perf_counter() - t0) / len(chunk)
            chunk_owners = owners[start:start + b]
            for vid in np.unique(chunk_owners).tolist():
                rows = chunk_owners == vid
                state = self.videos[vid]
                state["rows"].append(out[rows])
                state["seconds"] += share * int(rows.sum())
                if sum(len(r) for r in state["rows"]) == len(state["sampled"].frames):
                    self._finish(vid)
        rest, rest_owners = block[usable:], owners[usable:]
        self.frames, self.owners, self.waiting = [], [], len(rest)
        if len(rest):
            # Regroup the remainder per video (contiguous runs, in order).
            cuts = np.flatnonzero(np.diff(rest_owners)) + 1
            for part, own in zip(np.split(rest, cuts), np.split(rest_owners, cuts), strict=True):
                self.frames.append(part)
                self.owners.append(int(own[0]))

    def _finish(self, vid: int) -> None:
        state = self.videos.pop(vid)
        sampled: SampledFrames = state["sampled"]
        with np.errstate(over="ignore"):  # overflow to inf in float16 is caught just below
            feats = np.concatenate(state["rows"]).astype(_DTYPES[self.ex.dtype])
        error = reason = None
        if not np.isfinite(feats).all():
            bad = int((~np.isfinite(feats)).any(axis=1).sum())
            error = (f"non-finite features (inf/nan) in {bad} of {len(feats)} frames of {state['source']}"
                     f" ({self.ex.backbone_name}, dtype {self.ex.dtype})")
            reason, feats = "non_finite", None
        self.results[vid] = VideoFeatures(
            source=state["source"], features=feats, error=error, error_reason=reason,
            decoded_frames=sampled.decoded_frames, duration_s=sampled.duration_s, seconds=state["seconds"],
        )

"""Decode a video and sample frames uniformly, the way the video-hashing papers do.

The papers (SSVH, BTH, ConMH, ...) represent a video by ``M`` frames taken at the centres of
``M`` equal segments: with ``N`` decoded frames, frame ``i`` is ``floor((i + 0.5) * N / M)``.
:func:`sample_frames` does exactly that, then resizes each frame (shorter side to ``resize_to``)
and centre-crops it to ``size x size`` RGB, ready for a CNN backbone.

``N`` is only known for sure after decoding the whole stream: container headers are often wrong
(``perception``'s ``v2.m4v`` says 287 frames and holds 149) and files in the wild end early. So
decoding is a single sequential pass that

* keeps the frames at the target indices computed from the header's count (exact, cheap), and
* keeps a bounded *reservoir* of every ``k``-th frame (``k`` starts at 1 and doubles whenever the
  reservoir exceeds ``4 * M`` frames, dropping the frames that are not multiples of the new ``k``).

If the decoded count equals the header's count, the exact frames are used. Otherwise the targets
are recomputed from the real count and each is served by the nearest kept frame (ties go to the
earlier frame). While ``N <= 4 * M`` the reservoir holds every frame, so the result is exact;
beyond that the chosen frame is at most ``k / 2 < N / (4 * M)`` frames from its target, i.e.
always inside the target's segment. Memory stays at ``O(M)`` small frames, whatever the length.

Only kept frames are converted to RGB, in one ``swscale`` call that also resizes
(:meth:`av.VideoFrame.reformat`): converting a small output is much cheaper than converting the
full-resolution frame and resizing it in PIL, and swscale's ``BILINEAR`` widens its filter when
downscaling (antialiased, like PIL's ``BILINEAR``).

PyAV (``pip install vhindex[video]``) is imported lazily, so this module imports without it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import IO, Any, BinaryIO

import numpy as np

from vhindex import fs as vfs

__all__ = ["SampledFrames", "VideoDecodeError", "probe_video", "sample_frames", "uniform_indices"]

# The reservoir holds at most this many frames per requested frame (see the module docstring).
RESERVOIR_FACTOR = 4

# ffmpeg demuxers that turn text into frames.
_TEXT_DEMUXERS = frozenset({"tty"})


class VideoDecodeError(Exception):
    """A video could not be opened or decoded well enough to sample frames from it.

    Attributes:
        source: the path/URL (or file object name) of the video.
        reason: a short tag: ``"not_found"``, ``"open_failed"``, ``"no_video_stream"``,
            ``"no_frames"`` (the stream ended cleanly without a frame), ``"decode_failed"``
            (decoding raised before the first frame) or ``"too_few_frames"`` (fewer than
            ``min_frames`` decoded).
    """

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        self.source = source
        self.reason = reason
        self.detail = detail
        super().__init__(f"cannot sample frames from {source}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across process pools (Exception's default drops our args)
        return (type(self), (self.source, self.reason, self.detail))


@dataclasses.dataclass
class SampledFrames:
    """Frames sampled from one video by :func:`sample_frames`.

    Attributes:
        frames: ``(M, S, S, 3)`` uint8 RGB, resized and centre-cropped.
        frame_indices: ``(M,)`` int64, index (in presentation order, counting from 0) of the
            decoded frame behind each row; non-decreasing, with repeats when the video has fewer
            than ``M`` frames.
        timestamps: ``(M,)`` float64 presentation time in seconds of each row (``index / fps``
            when the frame carries no timestamp, ``nan`` when neither is known).
        decoded_frames: how many frames were decoded (``N``).
        duration_s: duration from the container header in seconds, ``None`` if it does not say.
        width: width of the decoded frames (before any rotation).
        height: height of the decoded frames (before any rotation).
        expected_frames: frame count the header promised (or estimated from duration x fps);
            ``None`` if unknown. Differs from ``decoded_frames`` for wrong headers or truncated files.
        decode_error: message of the error that stopped decoding early (a truncated or corrupt
            tail); ``None`` when the stream ended cleanly. The frames decoded before it are used.
        rotation: clockwise degrees the frames were rotated by to honour the display matrix.
    """

    frames: np.ndarray
    frame_indices: np.ndarray
    timestamps: np.ndarray
    decoded_frames: int
    duration_s: float | None
    width: int
    height: int
    expected_frames: int | None = None
    decode_error: str | None = None
    rotation: int = 0


def uniform_indices(num_decoded: int, num_frames: int) -> np.ndarray:
    """Centre frame of each of ``num_frames`` equal segments of ``num_decoded`` frames.

    Returns ``floor((i + 0.5) * N / M)`` for ``i = 0..M-1`` as int64 (exact integer arithmetic:
    ``(2i + 1) * N // (2M)``), so ``N < M`` repeats frames uniformly.
    """
    if num_decoded < 1 or num_frames < 1:
        raise ValueError(f"need num_decoded >= 1 and num_frames >= 1, got {num_decoded}, {num_frames}")
    i = np.arange(num_frames, dtype=np.int64)
    return (2 * i + 1) * num_decoded // (2 * num_frames)


def _import_av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("video decoding needs PyAV: pip install 'vhindex[video]' (or pip install av)") from err
    return av


def _source_name(source: str | BinaryIO) -> str:
    if isinstance(source, str):
        return source
    return str(getattr(source, "name", None) or f"<{type(source).__name__}>")


class _Opened:
    """Context manager: an open av container for a path, fsspec URL or file object."""

    def __init__(self, source: str | BinaryIO, storage_options: dict | None) -> None:
        self.source = source
        self.storage_options = storage_options
        self.name = _source_name(source)
        self._file: IO[bytes] | None = None
        self.container: Any = None

    def __enter__(self):
        av = _import_av()
        target: Any = self.source
        if isinstance(self.source, str):
            try:
                fs, path = vfs.url_to_fs(self.source, self.storage_options)
            except (ValueError, ImportError) as err:
                raise VideoDecodeError(self.name, "open_failed", str(err)) from err
            if vfs.is_local(fs):
                # ffmpeg's own file protocol is faster than Python-level reads through a file object.
                if not os.path.isfile(path):
                    detail = "not a regular file" if os.path.exists(path) else "no such file"
                    raise VideoDecodeError(self.name, "not_found", detail)
                target = path
            else:
                try:
                    self._file = fs.open(path, "rb")
                except FileNotFoundError as err:
                    raise VideoDecodeError(self.name, "not_found", str(err)) from err
                except OSError as err:
                    raise VideoDecodeError(self.name, "open_failed", f"{type(err).__name__}: {err}") from err
                target = self._file
        try:
            self.container = av.open(target, mode="r", metadata_errors="ignore")
        except FileNotFoundError as err:
            self._close_file()
            raise VideoDecodeError(self.name, "not_found", str(err)) from err
        except (av.FFmpegError, OSError, ValueError) as err:
            self._close_file()
            raise VideoDecodeError(self.name, "open_failed", f"{type(err).__name__}: {err}") from err
        if self.container.format.name in _TEXT_DEMUXERS:
            # ffmpeg renders any text file (an HTML/XML error page saved by a failed download, say)
            # as an ANSI-art "video" through its tty demuxer; that is never a real video here.
            fmt = self.container.format.name
            self.__exit__(None, None, None)
            raise VideoDecodeError(self.name, "open_failed", f"not a video: ffmpeg reads it as text ({fmt} demuxer)")
        return self

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __exit__(self, *exc) -> None:
        try:
            if self.container is not None:
                self.container.close()
        finally:
            self._close_file()

    def video_stream(self):
        if not self.container.streams.video:
            raise VideoDecodeError(self.name, "no_video_stream", f"{len(self.container.streams)} other streams")
        return self.container.streams.video[0]


def _header_info(container, stream) -> tuple[float | None, float | None, int | None]:
    """``(fps, duration_s, frame count)`` from the headers; ``None`` where unknown."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else None
    duration = None
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None and container.duration > 0:
        duration = container.duration / 1_000_000  # AV_TIME_BASE is microseconds
    frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
    if frames is None and duration is not None and fps is not None:
        frames = max(1, round(duration * fps))  # estimate: only used to choose which frames to keep
    return fps, duration, frames


def probe_video(source: str | BinaryIO, storage_options: dict | None = None) -> dict[str, Any]:
    """Header facts of a video's first video stream, without decoding it.

    Args:
        source: local path, fsspec URL or binary file object.
        storage_options: fsspec options for URLs.

    Returns:
        ``{"codec", "width", "height", "fps", "frames", "duration"}``; ``frames`` is the
        header's count (``None`` if absent; it may be wrong, see :func:`sample_frames`),
        ``duration`` in seconds or ``None``.

    Raises:
        VideoDecodeError: the file is missing, not a video, or has no video stream.
    """
    with _Opened(source, storage_options) as opened:
        stream = opened.video_stream()
        fps, duration, _ = _header_info(opened.container, stream)
        ctx = stream.codec_context
        return {
            "codec": ctx.name,
            "width": int(ctx.width),
            "height": int(ctx.height),
            "fps": fps,
            "frames": int(stream.frames) if stream.frames and stream.frames > 0 else None,
            "duration": duration,
        }


def _resize_crop(frame, size: int, resize_to: int, rotation: int) -> np.ndarray:
    """One frame -> ``(size, size, 3)`` uint8: shorter side to ``resize_to``, centre crop, rotate."""
    w, h = frame.width, frame.height
    scale = resize_to / min(w, h)
    # max(): keep the longer side >= resize_to even when rounding would shave a pixel off.
    new_w = max(resize_to, round(w * scale)) if w >= h else resize_to
    new_h = max(resize_to, round(h * scale)) if h > w else resize_to
    rgb = frame.reformat(width=new_w, height=new_h, format="rgb24", interpolation="BILINEAR",
                         src_color_range=frame.color_range, threads=1)
    arr = rgb.to_ndarray()
    top, left = (new_h - size) // 2, (new_w - size) // 2
    arr = arr[top:top + size, left:left + size]
    if rotation:
        # A 90-degree turn of the centre square is the centre square of the turned frame. np.rot90
        # turns counter-clockwise for positive k, so k = -rotation/90 turns clockwise.
        arr = np.rot90(arr, k=-rotation // 90)
    return np.ascontiguousarray(arr)


def _display_rotation(frame) -> int:
    """Clockwise degrees (0/90/180/270) that show the frame upright, as ffmpeg's autorotate does."""
    try:
        ccw = frame.rotation  # counter-clockwise angle of the display matrix, in [-180, 180]
    except (AttributeError, ValueError):  # pragma: no cover - older PyAV
        return 0
    if not ccw:
        return 0
    # The display matrix turns the frame counter-clockwise by `ccw`: showing it upright is the same turn.
    return (-int(round(ccw / 90.0)) * 90) % 360


def sample_frames(
    source: str | BinaryIO,
    num_frames: int,
    *,
    size: int = 224,
    resize_to: int | None = None,
    storage_options: dict | None = None,
    min_frames: int = 1,
    threads: int = 0,
) -> SampledFrames:
    """Decode a video and return ``num_frames`` uniformly sampled, resized, centre-cropped frames.

    Frame ``i`` is the decoded frame ``floor((i + 0.5) * N / M)`` (see :func:`uniform_indices`),
    with ``N`` the number of frames actually decoded. A header whose count is wrong or a file that
    ends early is handled by a bounded reservoir (module docstring): exact while ``N <= 4 * M``,
    always within the right segment beyond. The result is deterministic for a given file.

    Args:
        source: local path, fsspec URL (``s3://...``, ``memory://...``) or binary file object
            (read from its current position; not closed).
        num_frames: ``M``, frames to return (videos with fewer frames repeat frames).
        size: side ``S`` of the square output crop.
        resize_to: shorter side after resizing, before the crop (default ``size``; must be >= size).
        storage_options: fsspec options for URLs (credentials, endpoints).
        min_frames: fewer decoded frames than this is an error (``"too_few_frames"``).
        threads: decoder threads (0 = let ffmpeg choose).

    Returns:
        :class:`SampledFrames`.

    Raises:
        VideoDecodeError: missing file, not a video, no video stream, no decodable frame, or
            fewer than ``min_frames`` frames. A decode error *after* some frames were decoded
            does not raise: decoding stops there and :attr:`SampledFrames.decode_error` records it.
        ValueError: invalid arguments.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    resize_to = size if resize_to is None else resize_to
    if resize_to < size:
        raise ValueError(f"resize_to ({resize_to}) must be >= size ({size}) for a centre crop")
    if min_frames < 1:
        raise ValueError(f"min_frames must be >= 1, got {min_frames}")
    av = _import_av()
    name = _source_name(source)
    with _Opened(source, storage_options) as opened:
        container = opened.container
        stream = opened.video_stream()
        stream.thread_type = "AUTO"  # frame + slice threads; PyAV releases the GIL while decoding
        stream.codec_context.thread_count = int(threads)
        fps, duration, expected = _header_info(container, stream)
        targets = set(uniform_indices(expected, num_frames).tolist()) if expected else set()

        limit = RESERVOIR_FACTOR * num_frames
        kept: dict[int, tuple[np.ndarray, float]] = {}  # index -> (crop, seconds) for header targets
        reservoir: dict[int, tuple[np.ndarray, float]] = {}  # every k-th frame
        stride = 1
        decoded = 0
        decode_error = None
        width = height = 0
        rotation = 0
        try:
            for frame in container.decode(stream):
                idx = decoded
                decoded += 1
                in_res = idx % stride == 0
                if not (in_res or idx in targets):
                    continue
                if idx == 0:
                    width, height = frame.width, frame.height
                    rotation = _display_rotation(frame)
                t = frame.time
                seconds = float(t) if t is not None else (idx / fps if fps else math.nan)
                item = (_resize_crop(frame, size, resize_to, rotation), seconds)
                if idx in targets:
                    kept[idx] = item
                if in_res:
                    reservoir[idx] = item
                    if len(reservoir) > limit:
                        stride *= 2
                        reservoir = {i: v for i, v in reservoir.items() if i % stride == 0}
        except (av.FFmpegError, OSError, EOFError, ValueError) as err:
            # A truncated or corrupt tail is common in the wild: keep what was decoded.
            decode_error = f"{type(err).__name__}: {err}"
            if decoded == 0:
                raise VideoDecodeError(name, "decode_failed", decode_error) from err
    if decoded == 0:
        raise VideoDecodeError(name, "no_frames", "the video stream holds no decodable frame")
    if decoded < min_frames:
        raise VideoDecodeError(name, "too_few_frames", f"decoded {decoded} < min_frames={min_frames}")

    indices = uniform_indices(decoded, num_frames)
    if decoded == expected:
        chosen = [kept[i] for i in indices.tolist()]
    else:
        pool = {**reservoir, **kept}
        avail = np.array(sorted(pool), dtype=np.int64)
        pos = np.clip(np.searchsorted(avail, indices), 1, max(1, len(avail) - 1))
        lower, upper = avail[pos - 1], avail[np.minimum(pos, len(avail) - 1)]
        # Nearest available frame; ties (and the single-frame case) take the earlier one.
        indices = np.where(indices - lower <= upper - indices, lower, upper).astype(np.int64)
        chosen = [pool[i] for i in indices.tolist()]
    return SampledFrames(
        frames=np.stack([c[0] for c in chosen]),
        frame_indices=indices,
        timestamps=np.array([c[1] for c in chosen], dtype=np.float64),
        decoded_frames=decoded,
        duration_s=duration,
        width=int(width),
        height=int(height),
        expected_frames=expected,
        decode_error=decode_error,
        rotation=rotation,
    )


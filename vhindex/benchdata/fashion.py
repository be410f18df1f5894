"""A labelled *video* retrieval benchmark rendered from real Fashion-MNIST photos.

Fashion-MNIST (Zalando; Debian package ``dataset-fashion-mnist``, files under
``/usr/share/datasets/fashion-mnist``) holds 70,000 grayscale 28x28 photos of clothing items,
bright on black, in 10 classes (:data:`CLASS_NAMES`). This module turns them into short clips that
look like web video -- several shots, hard cuts, items moving and zooming over textured
backgrounds, shots with no item at all -- and writes them as H.264 MP4 files with label listings,
so that the whole pipeline (decode -> CNN frame features -> hashing -> index -> evaluation) can be
benchmarked on real pixels without any download. Relevance is *sharing a label* (as in FCVID /
YFCC / ActivityNet evaluations).

This docstring is the benchmark's specification; :data:`GENERATOR_VERSION` changes whenever the
rendering or planning changes, and is recorded in ``spec.json``.

Splits (ActivityNet style)
--------------------------
* ``train`` (:attr:`FashionClipSpec.train` clips): rendered **only** from Fashion-MNIST *train*
  images. Meant to be used unlabelled by hashing learners; the labels are still written to the
  listing so the benchmark can be checked.
* ``query`` and ``database``: rendered **only** from Fashion-MNIST *test* (``t10k``) images.
  No image appears in two clips, and query and database use disjoint images: for each class the
  test images are shuffled once (seeded); query clips take images from the front of that order,
  database clips from the back. If the requested counts need more images of some class than the
  test (or train) set holds, :func:`plan_clips` raises :class:`ValueError` saying how many were
  needed and how many exist.

Clip ids are ``t00000`` ..., ``q00000`` ..., ``d00000`` ... (train, query, database; 0-based).

Labels
------
Every clip has one label, or two distinct labels with probability
:attr:`~FashionClipSpec.two_label_fraction`. The primary labels of a split cycle through the 10
classes in blocks, each block a fresh seeded shuffle, so classes are balanced to within one clip
per block; the second label of a two-label clip is uniform among the other nine classes.

Shots
-----
A clip has ``n`` shots, ``n`` uniform in :attr:`~FashionClipSpec.shots` (inclusive), of which
``k`` (uniform in :attr:`~FashionClipSpec.distractor_shots`) are *distractor* shots, lowered if
needed so that at least one *item* shot per label remains. Shot order is a random permutation (a
distractor may open, close or interrupt the clip). Shot lengths partition
:attr:`~FashionClipSpec.frames_per_clip`: each shot gets :attr:`~FashionClipSpec.min_shot_frames`
frames plus a Dirichlet(2)-multinomial share of the rest. Cuts are hard.

*Item shots* show one Fashion-MNIST image of one of the clip's labels (a different image in every
item shot). In two-label clips the item shots alternate between the two labels, starting with a
random one, so each label gets at least one shot. The 28x28 image is (optionally mirrored and)
bilinearly resampled by an affine map: its side goes linearly from ``scale0`` to ``scale1`` times
the frame side (both uniform in :attr:`~FashionClipSpec.item_scale`: a zoom in or out), its centre
moves linearly between two random points within :attr:`~FashionClipSpec.item_travel` of the
frame centre (items may be partly cut off), and it rotates linearly between two angles in
``+-``:attr:`~FashionClipSpec.item_rotation` degrees. The item is tinted with a random colour
(uniform hue, HSV saturation uniform in :attr:`~FashionClipSpec.item_saturation`, value 0.6-1); its pixel colour is ``tint * (0.35 + 0.65 * v)`` and its
alpha ``opacity * clip(2 v, 0, 1)`` for image intensity ``v`` in [0, 1], with ``opacity`` uniform
in :attr:`~FashionClipSpec.item_opacity`, so the item's own shading survives and its faint edges
blend into the background. Behind the item move :attr:`~FashionClipSpec.item_clutter` random
shapes (see below; none by default).

*Distractor shots* contain no fashion item. Each is, with equal probability:
``"texture"`` (a background texture alone), ``"shapes"`` (a texture plus 2-4 moving shapes) or
``"title"`` (a title card: a solid colour with a faint gradient plus 1-3 moving shapes).

Backgrounds
-----------
Every item and texture/shapes shot has its own procedural texture: a scalar field mixing, with
Dirichlet(1) weights, (a) a linear gradient at a random orientation, (b) a sinusoidal grating with
:attr:`~FashionClipSpec.grating_cycles` cycles per frame at a random orientation and phase and
(c, d) two octaves of bilinear value noise (3-8 and 8-16 cells per frame side). The field is
mapped through a random three-colour palette whose spread around its middle colour is scaled by a
contrast uniform in :attr:`~FashionClipSpec.texture_contrast`. The texture pans at a random
velocity of up to :attr:`~FashionClipSpec.pan_speed` frame sides per frame along each axis. Textures differ
between shots and clips, so mean-pooled CNN features carry nuisance variance that a hash must see
past.

Shapes (distractors and clutter) are circles, rotated rectangles or semi-transparent stripe
patterns, each with a random colour, size (10-45% of the frame side) and opacity (0.5-1 for
solid shapes, 0.25-0.6 for stripes), moving linearly across the shot (stripes drift in phase).

Finally every frame gets Gaussian pixel noise of standard deviation
:attr:`~FashionClipSpec.pixel_noise` (grey levels) and is encoded with libx264
(``crf`` = :attr:`~FashionClipSpec.crf`, preset ``veryfast``, one encoder thread, macroblock-tree
rate control off, yuv420p) at :attr:`~FashionClipSpec.fps`: lossy like web video.

Randomness and determinism
--------------------------
Everything is drawn from ``numpy.random.default_rng(SeedSequence(spec.seed, spawn_key=...))``
streams keyed by purpose, split and clip index (and shot index when rendering): label blocks per
split, image permutations per source set, one planning stream and one rendering stream per clip.
A clip's plan and pixels therefore depend only on ``(spec, split, clip index)`` -- not on the
number of worker processes or the order of rendering -- and ``workers=4`` writes the same bytes as
``workers=1`` with the same PyAV/FFmpeg/x264 build (the encoder runs single-threaded and without
macroblock-tree rate control for that reason: both made the bytes vary from run to run). Other
encoder builds may write other bytes for the same frames; ``spec.json`` records the plan
fingerprints (build-independent) and the file hashes.

Difficulty (calibration of the defaults)
----------------------------------------
The difficulty knobs were set so that the benchmark is neither trivial nor hopeless for frame
features mean-pooled over a clip. Measured on a build of 300 train / 100 query / 300 database
clips at the full preset's 112x112 frames, with
``FrameFeatureExtractor("efficientnet_lite0", num_frames=10, image_size=112)`` features,
mean-pooled and L2-normalised, label precision@10 of query -> database ranking (relevant =
sharing a label; chance 0.17):

* cosine kNN on the real-valued features: 0.55;
* 64-bit LSH (random hyperplanes on train-centred features): 0.42 (mean of 5 draws);
* 64-bit PCA-sign (PCA fitted on train): 0.37; real-valued PCA-64: 0.58.

For reference, flat backgrounds (``texture_contrast=(0, 0)``) with ``distractor_shots=(0, 0)``
give about 0.78 with cosine kNN, and ``item_clutter=(0, 1)`` (a shape behind the item in half the
item shots) about 0.48: distractor and clutter shapes are what make mean pooling hard; texture
contrast and item saturation moved the score by a few hundredths only. Another seed gave 0.56 /
0.43 / 0.35 (cosine / LSH / PCA-sign); expect +-0.03 from one 100-query build to another.

Output layout (:func:`build_fashion_clips`)
-------------------------------------------
::

    <out_dir>/spec.json                      spec, generator version, counts, fingerprints
    <out_dir>/<split>/videos/<clip_id>.mp4   the clips
    <out_dir>/<split>/listing.csv            uri,video_id,labels  (uri relative, labels ';'-joined)
    <out_dir>/<split>/_done.json             written last: the split is complete

Re-running with the same spec only renders what is missing (clip files are written under a
temporary name and renamed, so an existing clip is complete); a different spec in the same folder
is refused.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "SPLITS",
    "ClipPlan",
    "FashionClipSpec",
    "ShotPlan",
    "build_fashion_clips",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "plan_clips",
    "plan_fingerprint",
    "render_clip",
    "render_shot",
]

GENERATOR_VERSION = 1

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)

SPLITS: tuple[str, ...] = ("train", "query", "database")
# Which Fashion-MNIST set a split's images come from.
SPLIT_SOURCE = {"train": "train", "query": "test", "database": "test"}
_SPLIT_PREFIX = {"train": "t", "query": "q", "database": "d"}
_SPLIT_KEY = {"train": 0, "query": 1, "database": 2}
# Purposes of the random streams (second element of the spawn key): fixed forever, so that adding a
# purpose never changes the existing streams.
_KEY_LABELS, _KEY_CLIP_PLAN, _KEY_RENDER, _KEY_PERMUTE = 0, 1, 2, 3

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC = 0x00000803, 0x00000801
_DISTRACTOR_STYLES = ("texture", "shapes", "title")


# --------------------------------------------------------------------------------------------- spec
@dataclasses.dataclass(frozen=True)
class FashionClipSpec:
    """What to render: split sizes, clip geometry, difficulty and encoding.

    Attributes:
        train: clips in the ``train`` split (0: no train split).
        query: clips in the ``query`` split.
        database: clips in the ``database`` split.
        frame_size: side of the square frames in pixels (even, >= 32).
        frames_per_clip: frames rendered per clip.
        fps: frame rate written to the files.
        shots: ``(min, max)`` shots per clip, inclusive.
        distractor_shots: ``(min, max)`` of those shots that are distractors (no item), inclusive;
            lowered per clip so each label keeps an item shot.
        two_label_fraction: probability that a clip has two labels.
        seed: seed of every random draw (non-negative).
        crf: libx264 constant rate factor (0 lossless ... 51 worst; 23 is ffmpeg's default).
        min_shot_frames: fewest frames in a shot.
        item_scale: ``(min, max)`` item side as a fraction of the frame side; a shot zooms from one
            uniform draw to another.
        item_travel: item centres lie within this fraction of the frame side of the frame centre.
        item_rotation: largest item rotation in degrees (start and end angles are uniform in
            ``[-item_rotation, item_rotation]``).
        item_opacity: ``(min, max)`` opacity of the item where its intensity is high.
        item_clutter: ``(min, max)`` random shapes moving behind the item in item shots.
        item_saturation: ``(min, max)`` HSV saturation of the item's tint (0: grey/white items).
        texture_contrast: ``(min, max)`` scale of the background palette's spread (0: flat colour).
        grating_cycles: ``(min, max)`` cycles per frame side of the background grating.
        pan_speed: largest background pan speed in frame sides per frame.
        pixel_noise: standard deviation of the Gaussian pixel noise, in grey levels.
    """

    train: int = 4000
    query: int = 1000
    database: int = 2000
    frame_size: int = 112
    frames_per_clip: int = 32
    fps: int = 8
    shots: tuple[int, int] = (3, 4)
    distractor_shots: tuple[int, int] = (1, 1)
    two_label_fraction: float = 0.3
    seed: int = 0
    crf: int = 23
    min_shot_frames: int = 3
    item_scale: tuple[float, float] = (0.5, 0.95)
    item_travel: float = 0.25
    item_rotation: float = 15.0
    item_opacity: tuple[float, float] = (0.8, 1.0)
    item_clutter: tuple[int, int] = (0, 0)
    item_saturation: tuple[float, float] = (0.0, 0.5)
    texture_contrast: tuple[float, float] = (0.1, 0.6)
    grating_cycles: tuple[float, float] = (1.5, 8.0)
    pan_speed: float = 0.01
    pixel_noise: float = 3.0

    def __post_init__(self) -> None:
        def fail(msg: str) -> None:
            raise ValueError(f"FashionClipSpec: {msg}")

        # (min, max) fields given as lists (from JSON/YAML) become tuples: hashable, and equal specs compare equal.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            if f.type.startswith("tuple") and len(getattr(self, f.name)) != 2:
                fail(f"{f.name} must be a (min, max) pair, got {value!r}")

        for name in ("train", "query", "database"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                fail(f"{name} must be an integer >= 0, got {value!r}")
        if self.frame_size < 32 or self.frame_size % 2:
            fail(f"frame_size must be even and >= 32 (libx264 with yuv420p needs even sides), got {self.frame_size}")
        if self.fps < 1:
            fail(f"fps must be >= 1, got {self.fps}")
        if self.seed < 0:
            fail(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.crf <= 51:
            fail(f"crf must be in [0, 51], got {self.crf}")
        if not 0.0 <= self.two_label_fraction <= 1.0:
            fail(f"two_label_fraction must be in [0, 1], got {self.two_label_fraction}")
        for name in ("shots", "distractor_shots", "item_clutter"):
            lo, hi = getattr(self, name)
            if lo < 0 or lo > hi:
                fail(f"{name} must be (min, max) with 0 <= min <= max, got {(lo, hi)}")
        if self.shots[0] < 1:
            fail(f"shots must allow at least one shot per clip, got {self.shots}")
        if self.min_shot_frames < 1:
            fail(f"min_shot_frames must be >= 1, got {self.min_shot_frames}")
        if self.frames_per_clip < self.shots[1] * self.min_shot_frames:
            fail(f"frames_per_clip={self.frames_per_clip} cannot hold {self.shots[1]} shots of at least "
                 f"min_shot_frames={self.min_shot_frames} frames")
        for name in ("item_scale", "item_opacity", "grating_cycles"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                fail(f"{name} must be (min, max) with 0 < min <= max, got {(lo, hi)}")
        for name in ("texture_contrast", "item_saturation"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                fail(f"{name} must be (min, max) with 0 <= min <= max, got {(lo, hi)}")
        if self.item_saturation[1] > 1:
            fail(f"item_saturation must lie in [0, 1], got {self.item_saturation}")
        if self.item_opacity[1] > 1:
            fail(f"item_opacity must lie in (0, 1], got {self.item_opacity}")
        for name in ("item_travel", "item_rotation", "pan_speed", "pixel_noise"):
            if getattr(self, name) < 0:
                fail(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def preset(cls, name: str) -> FashionClipSpec:
        """A named spec: ``"full"`` (the defaults) or ``"tiny"`` (120/40/80 clips of 16 64x64 frames)."""
        if name == "full":
            return cls()
        if name == "tiny":
            return cls(train=120, query=40, database=80, frame_size=64, frames_per_clip=16)
        raise ValueError(f"unknown FashionClipSpec preset {name!r}; choose 'full' or 'tiny'")

    def count(self, split: str) -> int:
        """Number of clips in ``split``."""
        if split not in _SPLIT_KEY:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        return int(getattr(self, split))

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FashionClipSpec:
        """Inverse of :meth:`to_dict` (unknown keys are refused)."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"FashionClipSpec.from_dict: unknown fields {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ------------------------------------------------------------------------------------------- data
def find_fashion_mnist(roots: Sequence[str] = ()) -> str:
    """Find the folder holding the four Fashion-MNIST idx ``.gz`` files.

    Args:
        roots: filesystem roots searched first, each as ``<root>/usr/share/datasets/fashion-mnist``
            (e.g. a folder where the Debian package was extracted with ``dpkg -x``).

    Returns:
        The first folder that holds all four files; ``/usr/share/datasets/fashion-mnist`` (a system
        install) is tried last.

    Raises:
        FileNotFoundError: no candidate holds all four files; the message names every place looked
            and how to get the data.
    """
    names = [n for pair in _FILES.values() for n in pair]
    candidates = [os.path.join(r, _SYSTEM_DIR.lstrip("/")) for r in roots] + [_SYSTEM_DIR]
    looked = []
    for folder in candidates:
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if not missing:
            return folder
        looked.append(f"{folder} (missing {', '.join(missing)})" if len(missing) < len(names) else folder)
    raise FileNotFoundError(
        "Fashion-MNIST not found; looked in: " + "; ".join(looked) +
        ". Get it with `make bench-sources` (extracts the Debian package dataset-fashion-mnist under "
        "bench-work/sources/root) or `apt-get install dataset-fashion-mnist`."
    )


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """One idx file (gzip): checks magic number, dimensions and payload size against the header."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable gzip file ({err})") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: {len(data)} bytes, too short for an idx header of {header} bytes")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(f"{path}: idx magic number 0x{found:08x}, expected 0x{magic:08x} "
                         f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}); corrupt or wrong file")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise ValueError(f"{path}: header says {'x'.join(map(str, dims))} = {expected} bytes of data, "
                         f"file has {len(data) - header}; truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one Fashion-MNIST set from its idx files.

    Args:
        folder: a folder from :func:`find_fashion_mnist`.
        split: ``"train"`` (60,000 items) or ``"test"`` (the ``t10k`` files, 10,000 items).

    Returns:
        ``(images, labels)``: ``(N, 28, 28)`` uint8 and ``(N,)`` int64 in ``[0, 10)``.

    Raises:
        ValueError: unknown split, or a file with a wrong magic number, wrong image size, a payload
            that disagrees with its header, labels out of range or counts that disagree (the
            message names the file).
        FileNotFoundError: a file is missing.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_path, lab_path = (os.path.join(folder, n) for n in _FILES[split])
    for p in (img_path, lab_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} does not exist (see find_fashion_mnist for how to get Fashion-MNIST)")
    images = _read_idx(img_path, _IDX_IMAGES_MAGIC, 3)
    if images.shape[1:] != (28, 28):
        raise ValueError(f"{img_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    labels = _read_idx(lab_path, _IDX_LABELS_MAGIC, 1).astype(np.int64)
    if len(labels) != len(images):
        raise ValueError(f"{lab_path}: {len(labels)} labels for {len(images)} images in {img_path}")
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{lab_path}: label {int(labels.max())} out of range [0, {NUM_CLASSES})")
    return images, labels


# ------------------------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class ShotPlan:
    """One shot of a clip.

    Attributes:
        kind: ``"item"`` or ``"distractor"``.
        image: index of the item's image in the split's source set (Fashion-MNIST train for
            ``train``, test for ``query``/``database``); -1 for distractors.
        label: the item's class; -1 for distractors.
        n_frames: frames in the shot.
        style: distractor style (``"texture"``, ``"shapes"``, ``"title"``); ``""`` for items.
        center0: item centre ``(x, y)`` at the first frame, in frame sides (0.5 = middle).
        center1: item centre at the last frame.
        scale0: item side at the first frame, in frame sides.
        scale1: item side at the last frame.
        angle0: item rotation at the first frame, degrees (counter-clockwise).
        angle1: item rotation at the last frame.
        flip: the item is mirrored left-right.
    """

    kind: str
    image: int
    label: int
    n_frames: int
    style: str = ""
    center0: tuple[float, float] = (0.5, 0.5)
    center1: tuple[float, float] = (0.5, 0.5)
    scale0: float = 0.0
    scale1: float = 0.0
    angle0: float = 0.0
    angle1: float = 0.0
    flip: bool = False


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Everything about a clip except the pixels drawn at render time (textures, colours, noise).

    Attributes:
        clip_id: ``t00000`` / ``q00000`` / ``d00000`` style id (also the file name).
        split: ``"train"``, ``"query"`` or ``"database"``.
        index: position of the clip in its split (keys the clip's random streams).
        labels: the clip's 1 or 2 classes, ascending.
        shots: the shots in play order.
    """

    clip_id: str
    split: str
    index: int
    labels: tuple[int, ...]
    shots: tuple[ShotPlan, ...]

    @property
    def source(self) -> str:
        """Fashion-MNIST set the images come from: ``"train"`` or ``"test"``."""
        return SPLIT_SOURCE[self.split]

    @property
    def n_frames(self) -> int:
        """Total frames (sum over shots)."""
        return sum(s.n_frames for s in self.shots)

    @property
    def images(self) -> tuple[int, ...]:
        """Image indices of the item shots, in shot order."""
        return tuple(s.image for s in self.shots if s.kind == "item")


def _seedseq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(int(k) for k in key))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seedseq(seed, *key))


def _clip_id(split: str, index: int, count: int) -> str:
    return f"{_SPLIT_PREFIX[split]}{index:0{max(5, len(str(max(count - 1, 0))))}d}"


def _plan_shots(spec: FashionClipSpec, rng: np.random.Generator,
                labels: list[int]) -> tuple[list[int], list[dict[str, Any]]]:
    """The clip's final labels and its shots' kinds, labels, lengths and motion (images come later)."""
    n_shots = int(rng.integers(spec.shots[0], spec.shots[1] + 1))
    labels = labels[:n_shots]  # a one-shot clip keeps only its primary label
    n_distract = int(rng.integers(spec.distractor_shots[0], spec.distractor_shots[1] + 1))
    n_distract = max(0, min(n_distract, n_shots - len(labels)))
    n_items = n_shots - n_distract
    first = int(rng.integers(len(labels)))
    item_labels = [labels[(first + j) % len(labels)] for j in range(n_items)]
    kinds = ["item"] * n_items + ["distractor"] * n_distract
    kinds = [kinds[j] for j in rng.permutation(n_shots)]
    extra = spec.frames_per_clip - n_shots * spec.min_shot_frames
    lengths = spec.min_shot_frames + rng.multinomial(extra, rng.dirichlet(np.full(n_shots, 2.0)))
    shots: list[dict[str, Any]] = []
    item_iter = iter(item_labels)
    for kind, n in zip(kinds, lengths, strict=True):
        if kind == "distractor":
            style = _DISTRACTOR_STYLES[int(rng.integers(len(_DISTRACTOR_STYLES)))]
            shots.append({"kind": kind, "image": -1, "label": -1, "n_frames": int(n), "style": style})
            continue
        c = rng.uniform(0.5 - spec.item_travel, 0.5 + spec.item_travel, size=4)
        s = rng.uniform(spec.item_scale[0], spec.item_scale[1], size=2)
        a = rng.uniform(-spec.item_rotation, spec.item_rotation, size=2)
        shots.append({
            "kind": kind, "image": -1, "label": next(item_iter), "n_frames": int(n),
            "center0": (round(float(c[0]), 6), round(float(c[1]), 6)),
            "center1": (round(float(c[2]), 6), round(float(c[3]), 6)),
            "scale0": round(float(s[0]), 6), "scale1": round(float(s[1]), 6),
            "angle0": round(float(a[0]), 4), "angle1": round(float(a[1]), 4),
            "flip": bool(rng.random() < 0.5),
        })
    return labels, shots


def _class_queues(spec_seed: int, source: str, labels: np.ndarray) -> list[np.ndarray]:
    """Per class, the indices of ``labels`` in a seeded random order (one order per source set)."""
    # Keyed by source set (0 train, 1 test), not by split: query and database share the test order.
    rng = _rng(spec_seed, 0 if source == "train" else 1, _KEY_PERMUTE)
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(NUM_CLASSES)]


def plan_clips(spec: FashionClipSpec, train_labels: np.ndarray, test_labels: np.ndarray) -> dict[str, list[ClipPlan]]:
    """Plan every clip of every split (pure and deterministic given the spec and the label arrays).

    Args:
        spec: what to render.
        train_labels: ``(60000,)`` labels of the Fashion-MNIST train set (or any labels in [0, 10)).
        test_labels: ``(10000,)`` labels of the test set.

    Returns:
        ``{split: [ClipPlan, ...]}`` for ``"train"``, ``"query"`` and ``"database"`` (an empty list
        for a split of 0 clips). Image indices refer to the train set for ``train`` and to the
        test set for ``query`` and ``database``.

    Raises:
        ValueError: a source set has fewer images of some class than the requested clips need.
    """
    train_labels = np.asarray(train_labels)
    test_labels = np.asarray(test_labels)
    drafts: dict[str, list[tuple[list[int], list[dict[str, Any]]]]] = {}
    for split in SPLITS:
        n = spec.count(split)
        key = _SPLIT_KEY[split]
        label_rng = _rng(spec.seed, key, _KEY_LABELS)
        # Primary labels: shuffled blocks of all classes, so classes stay balanced.
        blocks = -(-n // NUM_CLASSES)
        primary = np.concatenate([label_rng.permutation(NUM_CLASSES) for _ in range(blocks)] or [np.zeros(0, int)])
        drafts[split] = []
        for i in range(n):
            rng = _rng(spec.seed, key, _KEY_CLIP_PLAN, i)
            labels = [int(primary[i])]
            if rng.random() < spec.two_label_fraction:
                labels.append((labels[0] + int(rng.integers(1, NUM_CLASSES))) % NUM_CLASSES)
            labels, shots = _plan_shots(spec, rng, labels)
            drafts[split].append((sorted(labels), shots))

    # Assign images: train from the train set; query from the front and database from the back of
    # the same per-class orders of the test set, so the two never share an image.
    def need(splits: Sequence[str]) -> np.ndarray:
        counts = np.zeros(NUM_CLASSES, dtype=np.int64)
        for sp in splits:
            for _, shots in drafts[sp]:
                for s in shots:
                    if s["kind"] == "item":
                        counts[s["label"]] += 1
        return counts

    for source, splits, labels in (("train", ("train",), train_labels), ("test", ("query", "database"), test_labels)):
        needed, avail = need(splits), np.bincount(labels, minlength=NUM_CLASSES)[:NUM_CLASSES]
        short = [c for c in range(NUM_CLASSES) if needed[c] > avail[c]]
        if short:
            detail = ", ".join(f"class {c} ({CLASS_NAMES[c]}): {needed[c]} needed, {avail[c]} available" for c in short)
            raise ValueError(f"plan_clips: the Fashion-MNIST {source} set is too small for "
                             f"{'+'.join(splits)} = {'+'.join(str(spec.count(s)) for s in splits)} clips "
                             f"(one image per item shot, never reused): {detail}. Lower the clip counts or shots.")
        queues = _class_queues(spec.seed, source, labels)
        for j, sp in enumerate(splits):
            pos = np.zeros(NUM_CLASSES, dtype=np.int64)
            for _, shots in drafts[sp]:
                for s in shots:
                    if s["kind"] == "item":
                        c = s["label"]
                        q = queues[c]
                        s["image"] = int(q[pos[c]] if j == 0 else q[len(q) - 1 - pos[c]])
                        pos[c] += 1

    out: dict[str, list[ClipPlan]] = {}
    for split in SPLITS:
        n = spec.count(split)
        out[split] = [
            ClipPlan(_clip_id(split, i, n), split, i, tuple(labels), tuple(ShotPlan(**s) for s in shots))
            for i, (labels, shots) in enumerate(drafts[split])
        ]
    return out


def plan_fingerprint(plans: Sequence[ClipPlan]) -> str:
    """sha256 (hex) of a list of plans (stable across machines and Python versions)."""
    h = hashlib.sha256()
    for p in plans:
        h.update(json.dumps(dataclasses.asdict(p), sort_keys=True, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


# ----------------------------------------------------------------------------------------- render
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (components in [0, 1]) -> RGB in [0, 255]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, dtype=np.float32) * 255.0


def _bilinear(grid: np.ndarray, ys: np.ndarray, xs: np.ndarray, *, wrap: bool) -> np.ndarray:
    """Sample a 2-D ``grid`` at float pixel coordinates (pixel centres at integers).

    ``wrap``: periodic; otherwise samples outside the grid read 0 (fades to 0 over the border pixel).
    """
    h, w = grid.shape
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    fy = (ys - y0).astype(np.float32)
    fx = (xs - x0).astype(np.float32)
    y0 = y0.astype(np.int64)
    x0 = x0.astype(np.int64)
    if wrap:
        y0 %= h
        x0 %= w
        y1, x1 = (y0 + 1) % h, (x0 + 1) % w
        g = grid
    else:
        # Pad by one zero pixel and clamp: everything outside reads 0.
        g = np.pad(grid, 1)
        y1, x1 = np.clip(y0 + 2, 0, h + 1), np.clip(x0 + 2, 0, w + 1)
        y0, x0 = np.clip(y0 + 1, 0, h + 1), np.clip(x0 + 1, 0, w + 1)
    top = g[y0, x0] * (1 - fx) + g[y0, x1] * fx
    bottom = g[y1, x0] * (1 - fx) + g[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _lerp(a: float | np.ndarray, b: float | np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t


def _frame_coords(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(Y, X)`` of shape ``(1, S, S)`` and shot time ``t`` in [0, 1], ``(n, 1, 1)``."""
    ax = np.arange(size, dtype=np.float32) + 0.5
    ys, xs = np.meshgrid(ax, ax, indexing="ij")
    t = (np.arange(n, dtype=np.float32) / max(n - 1, 1))[:, None, None]
    return ys[None], xs[None], t


_LUT_LEVELS = 1024  # palette lookup resolution: finer than one grey level for any palette


def _texture(rng: np.random.Generator, n: int, spec: FashionClipSpec) -> np.ndarray:
    """A panning procedural texture, ``(n, S, S, 3)`` float32 in [0, 255]."""
    size = spec.frame_size
    vel = rng.uniform(-1.0, 1.0, size=2) * spec.pan_speed * size  # (x, y) pixels per frame
    # The texture is a static field seen through a window that slides by ``vel`` each frame: compute
    # the field once on a canvas covering every window, then cut the windows out with a sub-pixel
    # shift (one 4-tap blend per frame instead of re-evaluating every component per frame).
    shift = vel[None, :] * np.arange(n)[:, None]  # (n, 2)
    origin = np.floor(shift.min(axis=0)).astype(np.int64)
    extent = np.ceil(shift.max(axis=0)).astype(np.int64) - origin + 1
    ys = (np.arange(size + extent[1], dtype=np.float32) + 0.5 + origin[1])[:, None]
    xs = (np.arange(size + extent[0], dtype=np.float32) + 0.5 + origin[0])[None, :]
    th = rng.uniform(0, 2 * np.pi, size=2)
    gradient = np.clip(((xs - size / 2) * np.cos(th[0]) + (ys - size / 2) * np.sin(th[0])) / size + 0.5, 0, 1)
    cycles = rng.uniform(*spec.grating_cycles)
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * (xs * np.cos(th[1]) + ys * np.sin(th[1])) / size
                                 + rng.uniform(0, 2 * np.pi))
    k1, k2 = int(rng.integers(3, 9)), int(rng.integers(8, 17))
    Y, X = np.broadcast_arrays(ys, xs)
    noise1 = _bilinear(rng.random((k1, k1)).astype(np.float32), Y * (k1 / size), X * (k1 / size), wrap=True)
    noise2 = _bilinear(rng.random((k2, k2)).astype(np.float32), Y * (k2 / size), X * (k2 / size), wrap=True)
    w = rng.dirichlet(np.ones(4)).astype(np.float32)
    field = (w[0] * gradient + w[1] * grating + w[2] * noise1 + w[3] * noise2).astype(np.float32)
    # Stretch the mix to the full [0, 1] range (a Dirichlet mix of [0, 1] fields is squashed toward
    # its mean), so the contrast knob alone controls the spread.
    lo, hi = float(field.min()), float(field.max())
    field = np.clip((field - lo) / max(hi - lo, 1e-3), 0, 1)
    rel = shift - origin  # window offsets inside the canvas, >= 0
    ix, iy = np.floor(rel[:, 0]).astype(np.int64), np.floor(rel[:, 1]).astype(np.int64)
    fx, fy = (rel[:, 0] - ix).astype(np.float32), (rel[:, 1] - iy).astype(np.float32)
    windows = np.empty((n, size, size), dtype=np.float32)
    for t in range(n):
        c = field[iy[t]:iy[t] + size + 1, ix[t]:ix[t] + size + 1]
        top = c[:-1, :-1] * (1 - fx[t]) + c[:-1, 1:] * fx[t]
        bottom = c[1:, :-1] * (1 - fx[t]) + c[1:, 1:] * fx[t]
        windows[t] = top * (1 - fy[t]) + bottom * fy[t]
    # Palette: piecewise linear through three colours, as a lookup table.
    palette = rng.uniform(0, 255, size=(3, 3)).astype(np.float32)
    contrast = rng.uniform(*spec.texture_contrast)
    palette = palette[1] + np.float32(contrast) * (palette - palette[1])
    levels = np.linspace(0, 1, _LUT_LEVELS, dtype=np.float32)[:, None]
    lut = np.where(levels < 0.5, _lerp(palette[0], palette[1], np.clip(2 * levels, 0, 1)),
                   _lerp(palette[1], palette[2], np.clip(2 * levels - 1, 0, 1))).astype(np.float32)
    return lut[np.rint(windows * (_LUT_LEVELS - 1)).astype(np.int32)]


def _draw_shapes(frames: np.ndarray, rng: np.random.Generator, count: int, spec: FashionClipSpec) -> None:
    """Alpha-blend ``count`` moving shapes onto ``frames`` (``(n, S, S, 3)`` float32) in place."""
    n, size = frames.shape[0], spec.frame_size
    ys, xs, t = _frame_coords(n, size)
    for _ in range(count):
        kind = int(rng.integers(3))
        colour = rng.uniform(0, 255, size=3).astype(np.float32)
        c = rng.uniform(0.1, 0.9, size=4) * size
        cx, cy = _lerp(c[0], c[2], t), _lerp(c[1], c[3], t)
        dx, dy = xs - cx, ys - cy
        if kind == 0:  # circle, soft one-pixel edge
            r = rng.uniform(0.05, 0.225) * size
            alpha = np.clip(r - np.sqrt(dx * dx + dy * dy) + 0.5, 0, 1) * rng.uniform(0.5, 1.0)
        elif kind == 1:  # rotated rectangle
            hw, hh = rng.uniform(0.05, 0.225, size=2) * size
            a = rng.uniform(0, np.pi)
            u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
            alpha = np.clip(np.minimum(hw - np.abs(u), hh - np.abs(v)) + 0.5, 0, 1) * rng.uniform(0.5, 1.0)
        else:  # stripes drifting in phase over the whole frame
            a = rng.uniform(0, np.pi)
            cycles = rng.uniform(2, 8)
            phase = rng.uniform(0, 2 * np.pi) + rng.uniform(-np.pi, np.pi) * t
            wave = np.sin(2 * np.pi * cycles * (xs * np.cos(a) + ys * np.sin(a)) / size + phase)
            alpha = np.clip(wave * 3.0, 0, 1) * rng.uniform(0.25, 0.6)
        alpha = np.broadcast_to(alpha, frames.shape[:3])[..., None].astype(np.float32)
        frames *= 1 - alpha
        frames += alpha * colour


def _draw_item(frames: np.ndarray, rng: np.random.Generator, shot: ShotPlan, image: np.ndarray,
               spec: FashionClipSpec) -> None:
    """Alpha-blend the shot's tinted, moving, zooming, rotating item onto ``frames`` in place."""
    n, size = frames.shape[0], spec.frame_size
    ys, xs, t = _frame_coords(n, size)
    img = image.astype(np.float32) / 255.0
    if shot.flip:
        img = img[:, ::-1]
    cx = _lerp(shot.center0[0], shot.center1[0], t) * size
    cy = _lerp(shot.center0[1], shot.center1[1], t) * size
    side = _lerp(shot.scale0, shot.scale1, t) * size  # item side in pixels
    ang = np.deg2rad(_lerp(shot.angle0, shot.angle1, t))
    # Inverse map: frame pixel -> item pixel (rotate back, then scale to the 28-pixel grid).
    dx, dy = xs - cx, ys - cy
    cos, sin = np.cos(ang), np.sin(ang)
    k = img.shape[0] / side
    u = (dx * cos + dy * sin) * k + img.shape[1] / 2 - 0.5
    v = (-dx * sin + dy * cos) * k + img.shape[0] / 2 - 0.5
    value = np.clip(_bilinear(img, v, u, wrap=False), 0, 1).astype(np.float32)
    hue, sat, val = rng.random(), rng.uniform(*spec.item_saturation), rng.uniform(0.6, 1.0)
    tint = _hsv_to_rgb(hue, sat, val)
    opacity = np.float32(rng.uniform(*spec.item_opacity))
    alpha = (opacity * np.clip(2 * value, 0, 1))[..., None]
    colour = tint * (0.35 + 0.65 * value[..., None])
    frames *= 1 - alpha
    frames += alpha * colour


def _title_card(rng: np.random.Generator, n: int, spec: FashionClipSpec) -> np.ndarray:
    size = spec.frame_size
    ys, xs, _ = _frame_coords(1, size)
    base = rng.uniform(0, 255, size=3).astype(np.float32)
    th = rng.uniform(0, 2 * np.pi)
    ramp = ((xs - size / 2) * np.cos(th) + (ys - size / 2) * np.sin(th)) / size  # in about [-0.7, 0.7]
    frame = np.clip(base + np.float32(rng.uniform(10, 40)) * ramp[..., None], 0, 255)
    return np.repeat(frame, n, axis=0).astype(np.float32)


def render_shot(plan: ClipPlan, shot_index: int, images: np.ndarray, spec: FashionClipSpec) -> np.ndarray:
    """Render one shot of a clip as float32 ``(n_frames, S, S, 3)`` in [0, 255] (before noise/rounding).

    Its randomness comes from the clip's render stream and the shot index only.
    """
    shot = plan.shots[shot_index]
    rng = _rng(spec.seed, _SPLIT_KEY[plan.split], _KEY_RENDER, plan.index, shot_index)
    n = shot.n_frames
    if shot.kind == "item":
        frames = _texture(rng, n, spec)
        lo, hi = spec.item_clutter
        _draw_shapes(frames, rng, int(rng.integers(lo, hi + 1)), spec)
        if not 0 <= shot.image < len(images):
            raise ValueError(f"{plan.clip_id} shot {shot_index}: image {shot.image} outside the {len(images)} "
                             f"{plan.source} images passed to render_clip")
        _draw_item(frames, rng, shot, images[shot.image], spec)
    elif shot.style == "title":
        frames = _title_card(rng, n, spec)
        _draw_shapes(frames, rng, int(rng.integers(1, 4)), spec)
    else:
        frames = _texture(rng, n, spec)
        if shot.style == "shapes":
            _draw_shapes(frames, rng, int(rng.integers(2, 5)), spec)
    return frames


def render_clip(plan: ClipPlan, images: np.ndarray, spec: FashionClipSpec) -> np.ndarray:
    """Render a planned clip.

    Args:
        plan: from :func:`plan_clips` with the same ``spec``.
        images: the split's source images, ``(N, 28, 28)`` uint8: the Fashion-MNIST train set for
            ``train`` clips, the test set for ``query`` and ``database`` clips.
        spec: the spec the plan was made with.

    Returns:
        ``(frames_per_clip, S, S, 3)`` uint8 RGB frames; identical for identical arguments (random
        draws come from streams keyed by ``spec.seed``, the split and the clip index).
    """
    if images.ndim != 3:
        raise ValueError(f"{plan.clip_id}: images must be (N, 28, 28) uint8, got shape {images.shape}")
    if plan.n_frames != spec.frames_per_clip:
        raise ValueError(f"{plan.clip_id}: plan has {plan.n_frames} frames, spec.frames_per_clip is "
                         f"{spec.frames_per_clip}; plan and spec do not match")
    frames = np.concatenate([render_shot(plan, j, images, spec) for j in range(len(plan.shots))])
    if spec.pixel_noise > 0:
        noise_rng = _rng(spec.seed, _SPLIT_KEY[plan.split], _KEY_RENDER, plan.index, len(plan.shots))
        frames += noise_rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(spec.pixel_noise)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _encode(path: str, frames: np.ndarray, spec: FashionClipSpec) -> None:
    from vhindex.testing.videos import write_test_video

    # Reproducible bytes: threads=1 because x264's output depends on its thread count (which would
    # follow the CPU count); mbtree=0 because with macroblock-tree rate control the same frames
    # encoded twice in one process gave different bytes (x264 165, depending on what the process
    # had allocated before), which would break "workers=N writes what workers=1 writes".
    write_test_video(path, frames, fps=spec.fps, codec="libx264",
                     options={"crf": str(spec.crf), "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"})


# ------------------------------------------------------------------------------------------ build
_WORKER: dict[str, Any] = {}


def _worker_init(folder: str, spec_dict: dict[str, Any]) -> None:
    _WORKER.clear()
    _WORKER.update(folder=folder, spec=FashionClipSpec.from_dict(spec_dict), images={})


def _worker_images(source: str) -> np.ndarray:
    cache = _WORKER["images"]
    if source not in cache:
        cache[source] = load_fashion_mnist(_WORKER["folder"], source)[0]
    return cache[source]


def _render_to_file(plan: ClipPlan, images: np.ndarray, spec: FashionClipSpec, videos_dir: str) -> str:
    final = os.path.join(videos_dir, plan.clip_id + ".mp4")
    # Temporary name, then an atomic rename: an existing <clip_id>.mp4 is always complete.
    tmp = os.path.join(videos_dir, f"{plan.clip_id}.tmp{os.getpid()}.mp4")
    _encode(tmp, render_clip(plan, images, spec), spec)
    os.replace(tmp, final)
    return plan.clip_id


def _worker_render(task: tuple[ClipPlan, str]) -> str:
    plan, videos_dir = task
    return _render_to_file(plan, _worker_images(plan.source), _WORKER["spec"], videos_dir)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err}); delete the folder or choose another out_dir") from None


def _listing_text(plans: Sequence[ClipPlan]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["uri", "video_id", "labels"])
    for p in plans:
        w.writerow([f"videos/{p.clip_id}.mp4", p.clip_id, ";".join(str(c) for c in p.labels)])
    return buf.getvalue()


def build_fashion_clips(out_dir: str, spec: FashionClipSpec, *, roots: Sequence[str] = (), workers: int = 1,
                        progress: Callable[[str], None] | None = None) -> dict[str, str]:
    """Render the benchmark's clips and listings (layout in the module docstring).

    Args:
        out_dir: local output folder (created if needed).
        spec: what to render.
        roots: extra roots where Fashion-MNIST is looked for (:func:`find_fashion_mnist`).
        workers: rendering processes; ``> 1`` uses a process pool (forkserver, or spawn where
            forkserver is unavailable). The files are identical for any value.
        progress: called with one-line progress messages.

    Returns:
        ``{split: path of its listing.csv}`` for each split with at least one clip.

    Raises:
        ValueError: ``out_dir`` holds a benchmark built with a different spec or generator version
            (or split folders without a ``spec.json``), or the data set is too small for ``spec``.
        FileNotFoundError: Fashion-MNIST was not found.
    """
    if int(workers) != workers or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    say = progress or (lambda _msg: None)
    folder = find_fashion_mnist(roots)
    data = {s: load_fashion_mnist(folder, s) for s in ("train", "test")}
    plans = plan_clips(spec, data["train"][1], data["test"][1])
    fingerprints = {s: plan_fingerprint(plans[s]) for s in SPLITS}
    identity = {"generator": "vhindex.benchdata.fashion", "version": GENERATOR_VERSION, "spec": spec.to_dict()}

    os.makedirs(out_dir, exist_ok=True)
    spec_path = os.path.join(out_dir, "spec.json")
    existing = _read_json(spec_path)
    if existing is None:
        stray = [s for s in SPLITS if os.path.exists(os.path.join(out_dir, s))]
        if stray:
            raise ValueError(f"{out_dir} has split folders {stray} but no spec.json: not a complete benchmark "
                             "made by build_fashion_clips; delete them or choose another out_dir")
    else:
        old = {k: existing.get(k) for k in identity}
        if old != identity:
            diff = sorted(k for k in set(spec.to_dict()) | set(old.get("spec") or {})
                          if (old.get("spec") or {}).get(k) != spec.to_dict().get(k))
            what = f"spec fields {diff}" if diff else f"generator version {old.get('version')} != {GENERATOR_VERSION}"
            raise ValueError(f"{out_dir} holds a Fashion-MNIST benchmark built with a different spec ({what} differ; "
                             f"see {spec_path}); choose another out_dir or delete it to rebuild")
    if existing is None or not existing.get("complete"):
        _write_atomic(spec_path, json.dumps({**identity, "complete": False, "plan_fingerprints": fingerprints},
                                            indent=2) + "\n")

    listings: dict[str, str] = {}
    content: dict[str, str] = {}
    pool = None
    try:
        for split in SPLITS:
            split_plans = plans[split]
            if not split_plans:
                continue
            split_dir = os.path.join(out_dir, split)
            videos_dir = os.path.join(split_dir, "videos")
            listing = os.path.join(split_dir, "listing.csv")
            done_path = os.path.join(split_dir, "_done.json")
            listings[split] = listing
            done = _read_json(done_path)
            if done and done.get("plan_fingerprint") == fingerprints[split] and os.path.isfile(listing):
                content[split] = done["content_sha256"]
                say(f"{split}: {len(split_plans)} clips already built, skipped")
                continue
            os.makedirs(videos_dir, exist_ok=True)
            for name in os.listdir(videos_dir):  # leftovers of an interrupted run
                if ".tmp" in name:
                    os.remove(os.path.join(videos_dir, name))
            todo = [p for p in split_plans
                    if not os.path.isfile(os.path.join(videos_dir, p.clip_id + ".mp4"))
                    or os.path.getsize(os.path.join(videos_dir, p.clip_id + ".mp4")) == 0]
            say(f"{split}: rendering {len(todo)} of {len(split_plans)} clips "
                f"({spec.frames_per_clip} frames of {spec.frame_size}x{spec.frame_size}, workers={workers})")
            start, step = time.perf_counter(), max(1, len(todo) // 20)

            def report(k: int, split: str = split, start: float = start, total: int = len(todo)) -> None:
                rate = k / max(time.perf_counter() - start, 1e-9)
                say(f"{split}: {k}/{total} clips rendered ({rate:.1f} clips/s)")

            if workers == 1 or len(todo) <= 1:
                images = data[SPLIT_SOURCE[split]][0]
                for k, p in enumerate(todo, start=1):
                    _render_to_file(p, images, spec, videos_dir)
                    if k % step == 0 or k == len(todo):
                        report(k)
            else:
                if pool is None:
                    methods = multiprocessing.get_all_start_methods()
                    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
                    pool = ctx.Pool(int(workers), initializer=_worker_init, initargs=(folder, spec.to_dict()))
                tasks = [(p, videos_dir) for p in todo]
                for k, _ in enumerate(pool.imap_unordered(_worker_render, tasks, chunksize=4), start=1):
                    if k % step == 0 or k == len(todo):
                        report(k)
            h = hashlib.sha256()
            for p in split_plans:
                h.update(f"{p.clip_id} {_sha256_file(os.path.join(videos_dir, p.clip_id + '.mp4'))}\n".encode())
            text = _listing_text(split_plans)
            h.update(text.encode())
            _write_atomic(listing, text)
            content[split] = h.hexdigest()
            _write_atomic(done_path, json.dumps({"split": split, "clips": len(split_plans),
                                                 "plan_fingerprint": fingerprints[split],
                                                 "content_sha256": content[split]}, indent=2) + "\n")
    except BaseException:
        if pool is not None:
            pool.terminate()  # do not wait for the rest of the clips after a failure or Ctrl-C
            pool = None
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    if existing is None or not existing.get("complete"):
        whole = hashlib.sha256("".join(f"{s} {content[s]}\n" for s in SPLITS if s in content).encode()).hexdigest()
        counts = {s: spec.count(s) for s in SPLITS}
        label_counts = {s: np.bincount([c for p in plans[s] for c in p.labels], minlength=NUM_CLASSES).tolist()
                        for s in SPLITS}
        _write_atomic(spec_path, json.dumps({
            **identity, "complete": True, "counts": counts, "label_counts": label_counts,
            "class_names": list(CLASS_NAMES), "plan_fingerprints": fingerprints,
            "content_sha256": content, "content_fingerprint": whole,
            "source": {"folder": folder, "sha256": {n: _sha256_file(os.path.join(folder, n))
                                                    for pair in _FILES.values() for n in pair}},
        }, indent=2) + "\n")
    return listings

"""Seeded, structured synthetic frame-feature datasets that look like CNN features of web videos.

Used by unit tests, the demo and the scale benchmarks. Any number of videos can be generated,
streamed in chunks (never the whole set in memory), by any worker, in any order, with identical
results.

Generative model
----------------
All vectors below live in a latent space of ``latent_dim`` (L) dimensions; ``N(0, I)`` is a
standard normal vector there.

*Shared parameters* (drawn from ``seed`` alone):

* per class ``c``: a prototype ``p_c ~ N(0, I)`` and ``subtopics_per_class`` sub-topic prototypes
  ``q_ck = sqrt(1 - s^2) p_c + s u_ck`` with ``u_ck ~ N(0, I)`` and ``s = subtopic_spread``;
* ``num_backgrounds`` class-unrelated background prototypes ``g_b ~ N(0, I)``, shared by all
  classes (studio shots, crowds, title cards, ...);
* a fixed random two-layer network ``F(z) = a * relu(W2 gelu(W1 z + b1) + b2 + n)`` from L to
  ``feature_dim`` (D) dimensions through ``hidden_dim`` (H) units. ``W2``'s rows are standardised
  and ``b2`` is a negative per-dimension bias calibrated (on a seed-determined sample) so that a
  fraction ``sparsity`` of feature entries is exactly zero; ``a`` is a per-dimension log-normal
  scale times ``feature_scale``, and ``n`` is per-frame, per-dimension observation noise (centred
  uniform, std ``obs_noise_std`` in units of the standardised pre-activation). The features are
  therefore nonnegative and sparse, like VGG fc7 / EfficientNet pooled features after ReLU.

*Per clip* (drawn from the clip's own random stream):

1. With probability ``noise_clip_fraction`` the clip is a pure distractor: labels ``[]``
   (train and database splits only: query clips are always labelled, as in the papers' query sets).
   Otherwise it has 1 label, or 2 distinct labels with probability ``prob_two_labels``; classes
   are uniform.
2. A clip offset ``o ~ N(0, clip_offset_std^2 I)`` (the clip's "style": camera, lighting).
3. ``n`` shots, ``n`` uniform in ``[shots_min, shots_max]`` (at least the number of labels); the
   shot boundaries are ``n - 1`` distinct cut points drawn uniformly among the ``M - 1`` frame
   gaps, so shots are contiguous frame segments of random length.
4. Each shot is a background shot with probability ``background_shot_prob`` (latent centre
   ``g_b + o``, ``b`` uniform), otherwise a content shot: the centre is ``q_ck + o`` for one of the
   clip's classes ``c`` (each label gets at least one content shot) and a uniform sub-topic ``k``.
   Shots of noise clips that are not background shots are centred on a fresh random latent
   ``r ~ N(0, I)`` instead. Every shot centre gets shot noise ``N(0, shot_noise_std^2 I)``.
5. Within a shot, frame latents follow a stationary AR(1) process around the shot centre:
   ``z_t = mu + e_t``, ``e_t = rho e_(t-1) + sqrt(1 - rho^2) frame_noise_std eta_t``, with
   ``rho = temporal_ar`` and ``e`` restarting (``e = frame_noise_std eta``) at every cut, so frames
   drift smoothly inside a shot and jump at cuts.
6. Frame features are ``F(z_t)``, stored as ``dtype``.

Two clips are relevant to each other when they share a label (multi-label, as in ActivityNet /
FCVID evaluation). Background shots (shared across classes), sub-topics, clip offsets and the
nonlinearity make mean pooling an imperfect summary: mean-pooled features still rank same-label
clips well above chance (so LSH / PCA / ITQ on mean-pooled features clearly beat random codes),
but a model that learns which frames carry class content and how they evolve over time can do
better.

Determinism and streaming
-------------------------
Videos of a split are generated in aligned blocks of :data:`BLOCK_SIZE` consecutive global
indices. Block ``j`` of split ``s`` draws its randomness from
``SeedSequence([seed, DOMAIN, split_code(s), j])`` and is computed with fixed array shapes, so a
video's features depend only on ``(spec, split, index)``: generating ``[0, 100)`` or
``[0, 37) + [37, 100)``, in one process or many, with any BLAS thread count, gives
byte-identical arrays (labels and shot structure are exact everywhere; float features can differ
in the last bits between CPU types / BLAS builds, never between chunkings). The shared
parameters come from ``SeedSequence([seed, DOMAIN, 0])``. Split sizes only bound the valid
indices; query and database are disjoint, independent draws from the same distribution.

Example:
    >>> spec = SYNTH_PRESETS["tiny"]
    >>> ids, feats, labels = generate_chunk(spec, "train", 0, 4)
    >>> feats.shape
    (4, 8, 64)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from vhindex.data.schema import FrameDatasetMeta

logger = logging.getLogger(__name__)

#: Version of the generative model; bump whenever the same spec would produce different data.
GENERATOR_VERSION = 2  # 2: query clips are never noise clips
#: Videos per aligned generation block (fixes array shapes so results never depend on chunking).
BLOCK_SIZE = 64
#: Extractor name recorded in the dataset metadata.
EXTRACTOR_NAME = "synthetic"
#: Name of the spec file written next to the split datasets by :func:`write_synthetic`.
SPEC_FILE_NAME = "synth_spec.json"
#: Codes of the splits in the random-stream derivation (0 is reserved for calibration).
SPLIT_CODES = {"train": 1, "query": 2, "database": 3}

#: Shot kinds reported by :func:`shot_structure`.
SHOT_NONE, SHOT_CONTENT, SHOT_BACKGROUND, SHOT_RANDOM = -1, 0, 1, 2

_DOMAIN = 0x5E_4D_1D_EC  # separates vhindex.synth streams from other users of the same seed
_CALIBRATION_CODE = 0
_PARAMS_CODE = 0
_CALIBRATION_BLOCKS = 16
_CALIBRATION_VALUES = 1 << 22
_SQRT12 = math.sqrt(12.0)


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a synthetic dataset (see the module docstring for the model).

    Attributes:
        num_classes: number of label classes C.
        num_frames: frames per video M.
        feature_dim: feature dimensions per frame D.
        latent_dim: dimensions L of the latent space.
        hidden_dim: hidden units H of the fixed random feature network.
        subtopics_per_class: sub-topic prototypes per class.
        subtopic_spread: in [0, 1]; 0 makes sub-topics equal the class prototype, 1 independent.
        num_backgrounds: class-unrelated background prototypes shared by all classes.
        background_shot_prob: probability that a shot shows background content.
        shots_min: fewest shots per clip.
        shots_max: most shots per clip (at most ``num_frames``).
        prob_two_labels: probability that a labelled clip has 2 labels instead of 1.
        noise_clip_fraction: probability that a clip is a pure distractor with no labels.
        clip_offset_std: std of the per-clip latent offset.
        shot_noise_std: std of the per-shot latent noise.
        frame_noise_std: stationary std of the per-frame AR(1) latent deviation.
        temporal_ar: AR(1) coefficient rho in [0, 1) of frame latents within a shot.
        obs_noise_std: std of the per-frame, per-dimension observation noise (pre-ReLU units).
        sparsity: target fraction of exactly-zero feature entries, in (0, 1).
        feature_scale: overall magnitude of the features.
        train: number of training videos.
        query: number of query videos.
        database: number of database videos.
        dtype: storage dtype, ``float16`` or ``float32``.
        seed: master seed (a nonnegative int).
    """

    num_classes: int = 20
    num_frames: int = 25
    feature_dim: int = 256
    latent_dim: int = 64
    hidden_dim: int = 128
    subtopics_per_class: int = 3
    subtopic_spread: float = 0.6
    num_backgrounds: int = 12
    background_shot_prob: float = 0.35
    shots_min: int = 2
    shots_max: int = 4
    prob_two_labels: float = 0.2
    noise_clip_fraction: float = 0.1
    clip_offset_std: float = 0.6
    shot_noise_std: float = 0.4
    frame_noise_std: float = 0.6
    temporal_ar: float = 0.85
    obs_noise_std: float = 0.3
    sparsity: float = 0.7
    feature_scale: float = 2.0
    train: int = 5_000
    query: int = 500
    database: int = 5_000
    dtype: str = "float16"
    seed: int = 0

    def __post_init__(self) -> None:
        problems: list[str] = []

        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                problems.append(f"{name} must be an int >= {minimum}, got {value!r}")

        def number(name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if ok:
                ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
            if not ok:
                interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
                problems.append(f"{name} must be a number in {interval}, got {value!r}")

        for name in ("num_classes", "num_frames", "feature_dim", "latent_dim", "hidden_dim",
                     "subtopics_per_class", "num_backgrounds", "shots_min", "shots_max"):
            positive_int(name)
        for name in ("train", "query", "database", "seed"):
            positive_int(name, minimum=0)
        for name in ("subtopic_spread", "background_shot_prob", "prob_two_labels"):
            number(name, 0.0, 1.0)
        number("noise_clip_fraction", 0.0, 1.0, hi_open=True)
        number("temporal_ar", 0.0, 1.0, hi_open=True)
        number("sparsity", 0.0, 1.0, lo_open=True, hi_open=True)
        for name in ("clip_offset_std", "shot_noise_std", "frame_noise_std", "obs_noise_std"):
            number(name, 0.0, math.inf, hi_open=True)
        number("feature_scale", 0.0, math.inf, lo_open=True, hi_open=True)
        if self.dtype not in ("float16", "float32"):
            problems.append(f"dtype must be 'float16' or 'float32', got {self.dtype!r}")
        if not problems:
            if self.shots_min > self.shots_max:
                problems.append(f"shots_min ({self.shots_min}) must be <= shots_max ({self.shots_max})")
            if self.shots_max > self.num_frames:
                problems.append(f"shots_max ({self.shots_max}) must be <= num_frames ({self.num_frames}): "
                                "every shot needs at least one frame")
            if self.prob_two_labels > 0 and (self.num_classes < 2 or self.shots_max < 2):
                problems.append("prob_two_labels > 0 needs num_classes >= 2 and shots_max >= 2 "
                                f"(got num_classes={self.num_classes}, shots_max={self.shots_max}); "
                                "set prob_two_labels=0 for single-label data")
        if problems:
            raise ValueError("invalid SynthSpec: " + "; ".join(problems))

    def split_size(self, split: str) -> int:
        """Number of videos in ``split`` (``train``, ``query`` or ``database``)."""
        _check_split(split)
        return int(getattr(self, split))

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SynthSpec:
        """Build a spec from :meth:`to_dict` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - names)
        if unknown:
            raise ValueError(f"unknown SynthSpec field(s) {unknown}; valid fields are {sorted(names)}")
        return cls(**obj)

    def spec_hash(self) -> str:
        """Short content hash of the spec and the generator version (12 hex digits)."""
        payload = json.dumps({"generator_version": GENERATOR_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def frame_meta(self) -> FrameDatasetMeta:
        """The :class:`FrameDatasetMeta` of datasets written from this spec."""
        return FrameDatasetMeta(
            num_frames=self.num_frames,
            feature_dim=self.feature_dim,
            dtype=self.dtype,  # type: ignore[arg-type]
            extractor=EXTRACTOR_NAME,
            extractor_version=f"synth-v{GENERATOR_VERSION}+{self.spec_hash()}",
            num_classes=self.num_classes,
        )


#: Named specs: ``tiny`` for unit tests, ``demo`` for the quick-start demo, ``bench-700k`` for
#: scale benchmarks (700,000 training videos x 25 frames x 256 dims, float16 -- about 9 GB).
SYNTH_PRESETS: dict[str, SynthSpec] = {
    "tiny": SynthSpec(
        num_classes=8, num_frames=8, feature_dim=64, latent_dim=32, hidden_dim=64,
        subtopics_per_class=2, num_backgrounds=6, shots_min=2, shots_max=3,
        clip_offset_std=0.4, frame_noise_std=0.4,
        train=256, query=64, database=256, dtype="float32",
    ),
    "demo": SynthSpec(train=5_000, query=500, database=5_000),
    "bench-700k": SynthSpec(train=700_000, query=2_000, database=100_000),
}


def _check_split(split: str) -> None:
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CODES)}")


def video_id(split: str, index: int) -> str:
    """The video id of the ``index``-th video of ``split`` (e.g. ``train-0000042``)."""
    return f"{split}-{index:07d}"


# ----------------------------------------------------------------------------------------------
# Shared parameters


@dataclasses.dataclass(frozen=True)
class _Params:
    subtopics: np.ndarray  # (C, K, L) float32
    backgrounds: np.ndarray  # (G, L) float32
    w1t: np.ndarray  # (L, H) float32
    b1: np.ndarray  # (H,) float32
    w2t: np.ndarray  # (H, D) float32, folded: standardisation and output scale
    b2: np.ndarray  # (D,) float32, folded: calibrated threshold, scale and noise centring
    noise_scale: np.ndarray  # (D,) float32: multiplies uniform [0, 1) noise


def _model_key(spec: SynthSpec) -> SynthSpec:
    """The spec with the fields that do not change the model zeroed (for caching)."""
    return dataclasses.replace(spec, train=0, query=0, database=0, dtype="float32")


def _params(spec: SynthSpec) -> _Params:
    return _params_cached(_model_key(spec))


@functools.lru_cache(maxsize=8)
def _params_cached(spec: SynthSpec) -> _Params:
    rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([spec.seed, _DOMAIN, _PARAMS_CODE])))
    C, K, L, H, D, G = (spec.num_classes, spec.subtopics_per_class, spec.latent_dim, spec.hidden_dim,
                        spec.feature_dim, spec.num_backgrounds)
    s = spec.subtopic_spread
    protos = rng.standard_normal((C, 1, L))
    subtopics = math.sqrt(1.0 - s * s) * protos + s * rng.standard_normal((C, K, L))
    backgrounds = rng.standard_normal((G, L))
    w1t = rng.standard_normal((L, H)) / math.sqrt(L)
    b1 = 0.5 * rng.standard_normal(H)
    w2t = rng.standard_normal((H, D)) / math.sqrt(H)
    out_scale = spec.feature_scale * np.exp(0.35 * rng.standard_normal(D))
    raw = _Params(
        subtopics=subtopics.astype(np.float32), backgrounds=backgrounds.astype(np.float32),
        w1t=w1t.astype(np.float32), b1=b1.astype(np.float32), w2t=w2t.astype(np.float32),
        b2=np.zeros(D, np.float32), noise_scale=np.zeros(D, np.float32),
    )
    # Calibrate on a seed-determined sample: standardise each output unit, then put the ReLU
    # threshold at the `sparsity` quantile of (standardised pre-activation + observation noise).
    # The sample has 4,096 to 16 blocks' worth of frames, fewer for large D to bound memory.
    frames_per_block = BLOCK_SIZE * spec.num_frames
    target = min(_CALIBRATION_BLOCKS * frames_per_block, max(4096, _CALIBRATION_VALUES // D))
    pre = []
    noise = []
    for block in range(-(-target // frames_per_block)):
        z, _, unif, _ = _latents_block(spec, raw, _CALIBRATION_CODE, block)
        pre.append(_hidden(z, raw) @ raw.w2t)
        noise.append(unif.reshape(-1, D))
    # (D, frames) float32, one contiguous row per output unit: bounded memory, fast quantiles.
    pre_t = np.ascontiguousarray(np.concatenate(pre).T)
    noise_t = np.ascontiguousarray(np.concatenate(noise).T)
    del pre, noise
    mu = pre_t.mean(axis=1, dtype=np.float64)
    sd = pre_t.std(axis=1, dtype=np.float64) + 1e-6
    pre_t -= mu.astype(np.float32)[:, None]
    pre_t /= sd.astype(np.float32)[:, None]
    noise_t -= np.float32(0.5)
    noise_t *= np.float32(_SQRT12 * spec.obs_noise_std)
    pre_t += noise_t
    del noise_t
    threshold = np.quantile(pre_t, spec.sparsity, axis=1).astype(np.float64)
    del pre_t
    # F = a * relu((pre - mu) / sd + noise - t) = relu(pre * a/sd + a*(-mu/sd - t) + a*noise)
    w2t_f = w2t * (out_scale / sd)[None, :]
    noise_scale = out_scale * _SQRT12 * spec.obs_noise_std  # times uniform u in [0, 1), centred via b2
    b2_f = out_scale * (-mu / sd - threshold) - 0.5 * noise_scale
    return dataclasses.replace(
        raw, w2t=w2t_f.astype(np.float32), b2=b2_f.astype(np.float32), noise_scale=noise_scale.astype(np.float32)
    )


# ----------------------------------------------------------------------------------------------
# One aligned block


def _block_rng(spec: SynthSpec, split_code: int, block: int) -> np.random.Generator:
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([spec.seed, _DOMAIN, split_code, block])))


def _latents_block(
    spec: SynthSpec, params: _Params, split_code: int, block: int
) -> tuple[np.ndarray, list[list[int]], np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Frame latents, labels and the observation-noise uniforms of one aligned block.

    Returns:
        ``(z, labels, unif, (shot_of_frame, shot_kind))``: ``z`` (BLOCK_SIZE, M, L) float32, a
        label list per video, ``unif`` (BLOCK_SIZE, M, D) float32 uniforms in [0, 1) for the
        observation noise, and the shot structure (see :class:`ShotStructure`).
    """
    B, M, L, D, S = BLOCK_SIZE, spec.num_frames, spec.latent_dim, spec.feature_dim, spec.shots_max
    C, K, G = spec.num_classes, spec.subtopics_per_class, spec.num_backgrounds
    rng = _block_rng(spec, split_code, block)

    # --- all randomness of the block, in a fixed order and fixed shapes -----------------------
    n_u = 5 + (M - 1) + 5 * S
    u = rng.random((B, n_u))
    normals = rng.standard_normal((B, L + 2 * S * L + M * L), dtype=np.float32)
    unif = rng.random((B, M, D), dtype=np.float32)

    cols = iter(range(n_u))
    u_noise, u_two, u_c1, u_c2, u_nshots = (u[:, next(cols)] for _ in range(5))
    cut_keys = u[:, [next(cols) for _ in range(M - 1)]]
    u_bg, u_order, u_slot, u_sub, u_bgid = (u[:, [next(cols) for _ in range(S)]] for _ in range(5))
    offset = normals[:, :L]
    shot_eps = normals[:, L:L + S * L].reshape(B, S, L)
    rand_lat = normals[:, L + S * L:L + 2 * S * L].reshape(B, S, L)
    eta = normals[:, L + 2 * S * L:].reshape(B, M, L)

    # --- labels ---------------------------------------------------------------------------------
    # Query sets are labelled (as in FCVID / ActivityNet / YFCC): distractors only in train/database.
    is_noise = (u_noise < spec.noise_clip_fraction) & (split_code != SPLIT_CODES["query"])
    n_labels = np.where(is_noise, 0, np.where(u_two < spec.prob_two_labels, 2, 1))
    c1 = np.minimum((u_c1 * C).astype(np.int64), C - 1)
    c2 = (c1 + 1 + np.minimum((u_c2 * max(C - 1, 1)).astype(np.int64), max(C - 2, 0))) % C
    clip_classes = np.stack([c1, c2], axis=1)  # slot 1 is used only when n_labels == 2

    # --- shots and cut points --------------------------------------------------------------------
    span = spec.shots_max - spec.shots_min + 1
    n_shots = spec.shots_min + np.minimum((u_nshots * span).astype(np.int64), span - 1)
    n_shots = np.maximum(n_shots, n_labels)
    if M > 1:
        cut_rank = np.argsort(np.argsort(cut_keys, axis=1, kind="stable"), axis=1, kind="stable")
        is_cut = cut_rank < (n_shots - 1)[:, None]  # (B, M-1): a cut before frame t+1
        shot_of_frame = np.concatenate([np.zeros((B, 1), np.int64), np.cumsum(is_cut, axis=1)], axis=1)
    else:
        shot_of_frame = np.zeros((B, 1), np.int64)
    new_shot = np.ones((B, M), bool)
    new_shot[:, 1:] = shot_of_frame[:, 1:] != shot_of_frame[:, :-1]

    # --- shot types and centres --------------------------------------------------------------------
    shot_valid = np.arange(S)[None, :] < n_shots[:, None]
    order_keys = np.where(shot_valid, u_order, 2.0)
    shot_rank = np.argsort(np.argsort(order_keys, axis=1, kind="stable"), axis=1, kind="stable")
    forced = shot_rank < n_labels[:, None]  # each label gets one guaranteed content shot
    is_bg = (u_bg < spec.background_shot_prob) & ~forced
    nl = np.maximum(n_labels, 1)[:, None]
    slot = np.where(forced, shot_rank, np.minimum((u_slot * nl).astype(np.int64), nl - 1))
    shot_class = np.take_along_axis(clip_classes, slot, axis=1)  # (B, S)
    sub = np.minimum((u_sub * K).astype(np.int64), K - 1)
    bgid = np.minimum((u_bgid * G).astype(np.int64), G - 1)

    content = params.subtopics[shot_class, sub]  # (B, S, L)
    centre = np.where(is_noise[:, None, None], rand_lat, content)
    centre = np.where(is_bg[:, :, None], params.backgrounds[bgid], centre)
    centre = centre + spec.clip_offset_std * offset[:, None, :] + spec.shot_noise_std * shot_eps

    # --- frames: AR(1) around the shot centre, restarting at cuts -------------------------------
    mu = np.take_along_axis(centre, shot_of_frame[:, :, None], axis=1)  # (B, M, L)
    rho = np.float32(spec.temporal_ar)
    innov = np.float32(math.sqrt(1.0 - spec.temporal_ar**2))
    sigma = np.float32(spec.frame_noise_std)
    dev = np.empty((B, M, L), np.float32)
    dev[:, 0] = sigma * eta[:, 0]
    for t in range(1, M):
        carried = rho * dev[:, t - 1] + (innov * sigma) * eta[:, t]
        dev[:, t] = np.where(new_shot[:, t, None], sigma * eta[:, t], carried)
    z = (mu + dev).astype(np.float32)

    labels: list[list[int]] = []
    for n, a, b in zip(n_labels.tolist(), c1.tolist(), c2.tolist(), strict=True):
        labels.append([] if n == 0 else sorted([a, b]) if n == 2 else [a])
    kind = np.where(is_noise[:, None], SHOT_RANDOM, SHOT_CONTENT)
    kind = np.where(is_bg, SHOT_BACKGROUND, kind)
    kind = np.where(shot_valid, kind, SHOT_NONE).astype(np.int8)
    return z, labels, unif, (shot_of_frame, kind)


def _gelu(x: np.ndarray) -> np.ndarray:
    """tanh-approximated GELU, in place on ``x``."""
    inner = x * x
    inner *= np.float32(0.044715)
    inner += np.float32(1.0)
    inner *= x
    inner *= np.float32(math.sqrt(2.0 / math.pi))
    np.tanh(inner, out=inner)
    inner += np.float32(1.0)
    inner *= np.float32(0.5)
    x *= inner
    return x


def _hidden(z: np.ndarray, params: _Params) -> np.ndarray:
    h = z.reshape(-1, z.shape[-1]) @ params.w1t
    h += params.b1
    return _gelu(h)


def _features_block(spec: SynthSpec, params: _Params, split_code: int, block: int) -> tuple[np.ndarray, list[list[int]]]:
    z, labels, unif, _ = _latents_block(spec, params, split_code, block)
    out = _hidden(z, params) @ params.w2t  # (B*M, D) float32
    out += params.b2
    unif = unif.reshape(out.shape)
    unif *= params.noise_scale
    out += unif
    np.maximum(out, np.float32(0.0), out=out)
    return out.reshape(BLOCK_SIZE, spec.num_frames, spec.feature_dim), labels


# ----------------------------------------------------------------------------------------------
# Public API


def generate_chunk(
    spec: SynthSpec, split: str, start: int, stop: int
) -> tuple[list[str], np.ndarray, list[list[int]]]:
    """Generate videos ``[start, stop)`` of ``split``.

    The result depends only on ``(spec, split, index)`` of each video, never on the chunking.

    Args:
        spec: the dataset spec.
        split: ``train``, ``query`` or ``database``.
        start: first global index (inclusive).
        stop: last global index (exclusive), at most ``spec.split_size(split)``.

    Returns:
        ``(video_ids, features, labels)``: ids like ``train-0000042``, features of shape
        ``(stop - start, M, D)`` in ``spec.dtype`` (nonnegative, sparse), and one sorted list of
        class ids per video (``[]`` for noise clips).

    Raises:
        ValueError: on an unknown split or a range outside ``[0, split size]``.
    """
    size = spec.split_size(split)
    if isinstance(start, bool) or isinstance(stop, bool) or not isinstance(start, (int, np.integer)) \
            or not isinstance(stop, (int, np.integer)):
        raise ValueError(f"start and stop must be ints, got start={start!r}, stop={stop!r}")
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop <= size:
        raise ValueError(f"invalid range [{start}, {stop}) for split {split!r} of size {size}: "
                         f"need 0 <= start <= stop <= {size}")
    params = _params(spec)
    dtype = np.dtype(spec.dtype)
    features = np.empty((stop - start, spec.num_frames, spec.feature_dim), dtype)
    labels: list[list[int]] = []
    code = SPLIT_CODES[split]
    for block in range(start // BLOCK_SIZE, -(-stop // BLOCK_SIZE)):
        lo, hi = max(start, block * BLOCK_SIZE), min(stop, (block + 1) * BLOCK_SIZE)
        feats, block_labels = _features_block(spec, params, code, block)
        a, b = lo - block * BLOCK_SIZE, hi - block * BLOCK_SIZE
        features[lo - start:hi - start] = feats[a:b]  # casts to spec.dtype
        labels.extend(block_labels[a:b])
    ids = [video_id(split, i) for i in range(start, stop)]
    return ids, features, labels


@dataclasses.dataclass(frozen=True)
class ShotStructure:
    """The hidden shot structure of generated videos (for diagnostics, oracles and tests).

    Attributes:
        shot_of_frame: (B, M) int, the shot index of every frame (0-based, nondecreasing).
        shot_kind: (B, shots_max) int8 per shot: :data:`SHOT_CONTENT` (a labelled class's
            sub-topic), :data:`SHOT_BACKGROUND` (shared background), :data:`SHOT_RANDOM`
            (a noise clip's random content) or :data:`SHOT_NONE` (unused slot).
    """

    shot_of_frame: np.ndarray
    shot_kind: np.ndarray

    def frame_kind(self) -> np.ndarray:
        """(B, M) kind of the shot each frame belongs to."""
        return np.take_along_axis(self.shot_kind, self.shot_of_frame, axis=1)


def shot_structure(spec: SynthSpec, split: str, start: int, stop: int) -> ShotStructure:
    """The shot structure of videos ``[start, stop)`` of ``split`` (consistent with :func:`generate_chunk`).

    Args:
        spec: the dataset spec.
        split: ``train``, ``query`` or ``database``.
        start: first global index (inclusive).
        stop: last global index (exclusive).
    """
    size = spec.split_size(split)
    if not 0 <= start <= stop <= size:
        raise ValueError(f"invalid range [{start}, {stop}) for split {split!r} of size {size}")
    params = _params(spec)
    frames, kinds = [], []
    for block in range(start // BLOCK_SIZE, -(-stop // BLOCK_SIZE)):
        lo, hi = max(start, block * BLOCK_SIZE) - block * BLOCK_SIZE, min(stop, (block + 1) * BLOCK_SIZE) - block * BLOCK_SIZE
        _, _, _, (shot_of_frame, kind) = _latents_block(spec, params, SPLIT_CODES[split], block)
        frames.append(shot_of_frame[lo:hi])
        kinds.append(kind[lo:hi])
    if not frames:
        return ShotStructure(np.zeros((0, spec.num_frames), np.int64), np.zeros((0, spec.shots_max), np.int8))
    return ShotStructure(np.concatenate(frames), np.concatenate(kinds))


def iter_chunks(
    spec: SynthSpec, split: str, chunk_size: int = 4096, *, start: int = 0, stop: int | None = None
) -> Iterator[tuple[list[str], np.ndarray, list[list[int]]]]:
    """Stream ``split`` (or its sub-range ``[start, stop)``) in chunks of ``chunk_size`` videos.

    Args:
        spec: the dataset spec.
        split: ``train``, ``query`` or ``database``.
        chunk_size: videos per chunk (a multiple of :data:`BLOCK_SIZE` avoids recomputation).
        start: first index.
        stop: end index (default: the split size).

    Yields:
        ``(video_ids, features, labels)`` as returned by :func:`generate_chunk`.
    """
    size = spec.split_size(split)
    stop = size if stop is None else stop
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not 0 <= start <= stop <= size:
        raise ValueError(f"invalid range [{start}, {stop}) for split {split!r} of size {size}")
    for lo in range(start, stop, chunk_size):
        yield generate_chunk(spec, split, lo, min(lo + chunk_size, stop))


def write_synthetic(
    spec: SynthSpec,
    out_url: str,
    *,
    splits: Sequence[str] = ("train", "query", "database"),
    rows_per_file: int = 50_000,
    row_group_size: int = 1_000,
    chunk_size: int = 4096,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``out_url/<split>/`` frame-feature datasets and ``out_url/synth_spec.json``.

    Each split is streamed chunk by chunk through :class:`~vhindex.data.writer.FrameDatasetWriter`
    (with labels; ``extractor="synthetic"``, ``extractor_version="synth-v<N>+<spec hash>"``), so
    memory stays bounded by ``chunk_size`` and the writer's buffers whatever the split size.

    Args:
        spec: the dataset spec.
        out_url: output folder (any fsspec URL).
        splits: which splits to write.
        rows_per_file: videos per Parquet part file.
        row_group_size: videos per Parquet row group.
        chunk_size: videos generated per step.
        storage_options: fsspec options for ``out_url``.
        overwrite: passed to the writer (replace existing split datasets).
        progress: show a tqdm progress bar per split.

    Returns:
        ``{split: DatasetManifest}`` for every written split.

    Raises:
        ValueError: on an unknown or empty split or bad sizes.
    """
    from vhindex import fs as vfs
    from vhindex.data.writer import FrameDatasetWriter

    splits = list(splits)
    if not splits:
        raise ValueError("splits is empty; pass at least one of 'train', 'query', 'database'")
    for split in splits:
        _check_split(split)
        if spec.split_size(split) == 0:
            raise ValueError(f"split {split!r} has size 0 in the spec; set SynthSpec.{split} > 0 or drop it from splits")
    if len(set(splits)) != len(splits):
        raise ValueError(f"splits has duplicates: {splits}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")

    fs, root = vfs.url_to_fs(out_url, storage_options)
    meta = spec.frame_meta()
    manifests: dict[str, Any] = {}
    for split in splits:
        size = spec.split_size(split)
        split_url = vfs.unstrip(fs, vfs.join(fs, root, split))
        writer = FrameDatasetWriter(
            split_url, meta, with_labels=True, rows_per_file=rows_per_file, row_group_size=row_group_size,
            storage_options=storage_options, overwrite=overwrite,
        )
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=size, desc=f"synth {split}", unit="video")
        with writer:
            for ids, feats, labels in iter_chunks(spec, split, chunk_size):
                writer.write(ids, feats, labels)
                if bar is not None:
                    bar.update(len(ids))
        if bar is not None:
            bar.close()
        manifests[split] = writer.close()
        logger.info("wrote synthetic split %s (%d videos) to %s", split, size, split_url)
    vfs.write_json_atomic(
        fs, vfs.join(fs, root, SPEC_FILE_NAME),
        {"generator_version": GENERATOR_VERSION, "spec_hash": spec.spec_hash(), "spec": spec.to_dict(),
         "splits": {s: spec.split_size(s) for s in splits}},
    )
    return manifests


def read_spec(url: str, storage_options: dict[str, Any] | None = None) -> SynthSpec:
    """Read the :class:`SynthSpec` stored by :func:`write_synthetic` at ``url``.

    Args:
        url: the folder given to :func:`write_synthetic` (or the ``synth_spec.json`` file itself).
        storage_options: fsspec options.
    """
    from vhindex import fs as vfs

    fs, path = vfs.url_to_fs(url, storage_options)
    if not path.endswith(SPEC_FILE_NAME):
        path = vfs.join(fs, path, SPEC_FILE_NAME)
    obj = vfs.read_json(fs, path)
    if not isinstance(obj, dict) or "spec" not in obj:
        raise ValueError(f"{vfs.unstrip(fs, path)} is not a vhindex synth spec file (no 'spec' key)")
    return SynthSpec.from_dict(obj["spec"])


# ------------------------------------------------------------------------ from a configuration
# (``cfg`` is a :class:`vhindex.config.Config`; typed as Any so this module never imports the config)

_SPLITS = ("train", "query", "database")


def synth_spec_from_config(cfg: Any) -> SynthSpec:
    """The :class:`~vhindex.data.synth.SynthSpec` a config asks for (preset + overrides + run seed)."""
    if cfg.synth.preset not in SYNTH_PRESETS:
        raise ValueError(f"synth.preset: unknown preset {cfg.synth.preset!r}; choose from {sorted(SYNTH_PRESETS)}")
    base = SYNTH_PRESETS[cfg.synth.preset]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(cfg.synth.overrides) - fields)
    if unknown:
        raise ValueError(f"synth.overrides: unknown field(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(base, **{"seed": cfg.run.seed, **cfg.synth.overrides})


def ensure_synthetic(cfg: Any, data_url: str, out: Any = None) -> None:
    """Write the configured synthetic dataset at ``data_url`` unless an identical one is complete there.

    Args:
        cfg: the configuration (``synth`` preset and overrides, ``run.seed``, ``run.storage_options``).
        data_url: folder of the ``train`` / ``query`` / ``database`` datasets.
        out: text stream for progress messages (None: quiet).
    """
    import time

    from vhindex import fs as vfs
    from vhindex.data.schema import MANIFEST_NAME

    spec = synth_spec_from_config(cfg)
    fs, root = vfs.url_to_fs(data_url, cfg.run.storage_options)
    spec_path = vfs.join(fs, root, SPEC_FILE_NAME)
    if fs.exists(spec_path):
        complete = all(fs.exists(vfs.join(fs, root, s, MANIFEST_NAME)) for s in _SPLITS)
        # spec_hash covers the generator version too: data from an older generator is rebuilt.
        if complete and vfs.read_json(fs, spec_path).get("spec_hash") == spec.spec_hash():
            _say(out, f"reusing synthetic dataset at {data_url}")
            return
    if fs.exists(root):
        fs.rm(root, recursive=True)
    _say(out, f"synthesizing {spec.train} train / {spec.query} query / {spec.database} database videos "
              f"({spec.num_frames} frames x {spec.feature_dim} dims) into {data_url} ...")
    t0 = time.perf_counter()
    write_synthetic(
        spec,
        data_url,
        rows_per_file=cfg.synth.rows_per_file,
        row_group_size=cfg.synth.row_group_size,
        chunk_size=cfg.synth.chunk_size,
        storage_options=cfg.run.storage_options,
    )
    _say(out, f"  done in {time.perf_counter() - t0:.1f}s")


def _say(out: Any, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)

"""The interface every vhindex hashing model implements, its registry, and save/load.

A model maps a batch of videos -- frame features ``(B, M, D)`` -- to binary codes ``(B, bits)`` in
{-1, +1} (``int8``); :meth:`HashModel.encode_packed` packs them with the one bit order of
:mod:`vhindex.index.codes`.

Training data arrives as a *callable* returning a fresh iterator of batches, so a model can make
several streaming passes with bounded memory and never holds the whole dataset::

    model = build_model("itq", bits=64).fit(lambda: reader.iter_batches(), seed=0)

Saved layout (a folder at any fsspec URL)::

    model.json      {"format": "vhindex.model", "name", "bits", "config", "feature_dim", "num_frames"}
    weights.npz     numpy arrays (no pickles)
    _manifest.json  {"format", "name", "bits", "version", "files": {name: {"sha256", "bytes"}}}  -- LAST

:func:`load_model` dispatches on ``model.json``'s ``name`` through the registry filled by
:func:`register_model`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, TypeVar

import numpy as np

from vhindex.fs import join, read_json, read_verified_files, url_to_fs, write_files_then_manifest
from vhindex.index.codes import pack_codes

logger = logging.getLogger(__name__)

FORMAT_MODEL = "vhindex.model"
FORMAT_VERSION = 1
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.npz"
MANIFEST_FILE = "_manifest.json"

#: Training data: a callable returning a *fresh* iterator of ``(B, M, D)`` frame-feature batches.
BatchSource = Callable[[], Iterable[np.ndarray]]

MODEL_REGISTRY: dict[str, type[HashModel]] = {}

_M = TypeVar("_M", bound="type[HashModel]")


def register_model(cls: _M) -> _M:
    """Class decorator: make ``cls`` buildable by :func:`build_model` / loadable by :func:`load_model`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute `name` to be registered")
    if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
        raise ValueError(f"model name {name!r} is already registered by {MODEL_REGISTRY[name].__qualname__}")
    MODEL_REGISTRY[name] = cls
    return cls


def _lookup(name: str) -> type[HashModel]:
    try:
        return MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model name {name!r}; known models: {sorted(MODEL_REGISTRY)}") from None


def available_models() -> list[str]:
    """Names of the registered models, sorted (what configs may name in ``model.name``)."""
    return sorted(MODEL_REGISTRY)


def build_model(name: str, bits: int, **params: Any) -> HashModel:
    """Construct an unfitted model by registry name, e.g. ``build_model("lsh", 64, center=True)``.

    Raises:
        ValueError: unknown name (the error lists the known names) or invalid parameters.
    """
    cls = _lookup(name)
    try:
        return cls(bits, **params)
    except TypeError as err:
        raise ValueError(f"bad parameters for model {name!r}: {err}") from err


def model_params(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The constructor parameters of model ``name`` (besides ``bits`` and ``device``) with ``params`` applied
    over the constructor's defaults -- what ``build_model(name, bits, **params)`` would use, without building it.

    Raises:
        ValueError: unknown model name, or a parameter its constructor does not take.
    """
    import inspect

    cls = _lookup(name)
    sig = inspect.signature(cls.__init__)
    known = {p.name: p.default for p in list(sig.parameters.values())[1:]
             if p.name not in ("bits", "device") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    known.update(getattr(cls, "DEFAULTS", {}))  # models that take **params list their defaults there
    unknown = sorted(set(params or {}) - set(known))
    if unknown:
        raise ValueError(f"model {name!r} takes no parameter(s) {unknown}; it takes {sorted(known)}")
    return {**{k: v for k, v in known.items() if v is not inspect.Parameter.empty}, **(params or {})}


def load_model(url: str, storage_options: dict[str, Any] | None = None) -> HashModel:
    """Load any saved model, dispatching on the ``name`` in its ``model.json``."""
    return HashModel.load(url, storage_options)


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8 (codes are packed into bytes), got {bits!r}")
    return int(bits)


def signs(x: np.ndarray) -> np.ndarray:
    """``int8`` {-1, +1}: +1 where ``x > 0``, else -1 (ties at 0 go to -1, matching :func:`pack_codes`)."""
    return np.where(np.asarray(x) > 0, np.int8(1), np.int8(-1))


class HashModel(abc.ABC):
    """Base class of hashing models: fit on streamed frame features, encode to {-1, +1} codes.

    Subclasses set ``name``, implement :meth:`fit`, :meth:`get_config`, :meth:`get_weights`,
    :meth:`set_weights` and either :meth:`_scores` (real-valued ``(B, bits)``; the sign is taken
    here) or :meth:`encode` itself, and are decorated with :func:`register_model`.

    Attributes:
        bits: code length (positive multiple of 8).
        feature_dim: D seen in training (``None`` before :meth:`fit`).
        num_frames: M seen in training (``None`` before :meth:`fit`).
    """

    name: ClassVar[str]

    def __init__(self, bits: int) -> None:
        self.bits = _check_bits(bits)
        self.feature_dim: int | None = None
        self.num_frames: int | None = None

    def __repr__(self) -> str:
        state = f"D={self.feature_dim}, M={self.num_frames}" if self.is_fitted else "unfitted"
        return f"{type(self).__name__}(bits={self.bits}, {self.get_config()}, {state})"

    # ------------------------------------------------------------------ to implement

    @abc.abstractmethod
    def fit(self, batches: BatchSource, *, seed: int | None = None) -> HashModel:
        """Train on streamed batches; return ``self``.

        Args:
            batches: callable returning a fresh iterator of ``(B, M, D)`` float16/float32 batches;
                may be called several times (one call per pass).
            seed: seed of every random choice; the same seed and data give identical codes.
        """

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """JSON-able constructor parameters other than ``bits`` (``cls(bits, **config)`` rebuilds it)."""

    @abc.abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """The learned state as named numpy arrays (saved to ``weights.npz``)."""

    @abc.abstractmethod
    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Restore the state returned by :meth:`get_weights`."""

    def _scores(self, frames: np.ndarray) -> np.ndarray:
        """Real-valued scores ``(B, bits)`` whose signs are the codes (checked input)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _scores() or encode()")

    # ------------------------------------------------------------------ shared behaviour

    @property
    def is_fitted(self) -> bool:
        """Whether the model has been fitted (or loaded)."""
        return self.feature_dim is not None

    def _require_fitted(self, what: str) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() or load a saved model before {what}")

    def check_frames(self, frames: np.ndarray) -> np.ndarray:
        """Validate a ``(B, M, D)`` batch against the fitted M and D; return it as an array.

        Raises:
            ValueError: wrong rank, M or D (the message names the expected shape).
        """
        self._require_fitted("encoding")
        frames = np.asarray(frames)
        expected = f"(B, M={self.num_frames}, D={self.feature_dim})"
        if frames.ndim != 3:
            hint = " (for single-frame inputs use frames[:, None, :])" if frames.ndim == 2 else ""
            raise ValueError(f"{self.name}: frames must be 3-D {expected}, got shape {frames.shape}{hint}")
        if frames.shape[2] != self.feature_dim:
            raise ValueError(
                f"{self.name}: feature dim D={frames.shape[2]} but the model was fitted on D={self.feature_dim}; "
                f"expected {expected} -- were the features made by a different extractor?"
            )
        if frames.shape[1] != self.num_frames:
            raise ValueError(
                f"{self.name}: {frames.shape[1]} frames per video but the model was fitted on M={self.num_frames}; "
                f"expected {expected} -- sample the same number of frames as in training"
            )
        if not np.issubdtype(frames.dtype, np.floating):
            raise ValueError(f"{self.name}: frames must be float16/float32, got dtype {frames.dtype}")
        return frames

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Codes of a batch: ``(B, M, D)`` -> ``int8`` {-1, +1} ``(B, bits)``."""
        frames = self.check_frames(frames)
        scores = self._scores(frames)
        assert scores.shape == (frames.shape[0], self.bits), scores.shape
        return signs(scores)

    def encode_packed(self, frames: np.ndarray) -> np.ndarray:
        """Packed codes ``uint8`` ``(B, bits/8)`` (bit order of :mod:`vhindex.index.codes`)."""
        return pack_codes(self.encode(frames))

    def _describe(self) -> dict[str, Any]:
        return {
            "format": FORMAT_MODEL,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "bits": self.bits,
            "config": self.get_config(),
            "feature_dim": self.feature_dim,
            "num_frames": self.num_frames,
        }

    def version(self) -> str:
        """Short content hash (16 hex digits) of name, bits, config, shapes and weights."""
        self._require_fitted("version()")
        h = hashlib.sha256(json.dumps(self._describe(), sort_keys=True).encode())
        for key, value in sorted(self.get_weights().items()):
            arr = np.ascontiguousarray(value)
            h.update(f"|{key}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
        return h.hexdigest()[:16]

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        """Write the model folder at ``url`` (``model.json``, ``weights.npz``, manifest last)."""
        self._require_fitted("save()")
        fs, root = url_to_fs(url, storage_options)
        model_bytes = (json.dumps(self._describe(), indent=2, sort_keys=True) + "\n").encode()
        buf = io.BytesIO()
        # np.asarray(order="C"), not ascontiguousarray: that one turns 0-d arrays (scalar buffers) into 1-d
        np.savez(buf, **{k: np.asarray(v, order="C") for k, v in self.get_weights().items()})
        weights_bytes = buf.getvalue()
        manifest = {
            "format": FORMAT_MODEL,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "bits": self.bits,
            "version": self.version(),
        }
        write_files_then_manifest(fs, root, {MODEL_FILE: model_bytes, WEIGHTS_FILE: weights_bytes}, manifest, MANIFEST_FILE)
        logger.info("saved %s model %s to %s", self.name, self.version(), url)

    @classmethod
    def load(cls, url: str, storage_options: dict[str, Any] | None = None) -> HashModel:
        """Load a saved model, dispatching on its registry ``name``; verifies the manifest.

        Called on a subclass, the saved model must be of that subclass.

        Raises:
            FileNotFoundError: no manifest (not a model folder, or an unfinished save).
            ValueError: checksum mismatch, unknown model name, wrong class or version mismatch.
        """
        fs, root = url_to_fs(url, storage_options)
        manifest_path = join(fs, root, MANIFEST_FILE)
        if not fs.exists(manifest_path):
            raise FileNotFoundError(
                f"no {MANIFEST_FILE} in {url}: not a saved vhindex model, or the save did not finish"
            )
        manifest = read_json(fs, manifest_path)
        if manifest.get("format") != FORMAT_MODEL:
            raise ValueError(f"{url} holds format {manifest.get('format')!r}, expected {FORMAT_MODEL!r}")
        blobs = read_verified_files(fs, root, url, manifest, (MODEL_FILE, WEIGHTS_FILE))
        desc = json.loads(blobs[MODEL_FILE])
        model_cls = _lookup(desc["name"])
        if cls is not HashModel and not issubclass(model_cls, cls):
            raise ValueError(f"{url} holds a {desc['name']!r} model, not a {cls.__name__}; use load_model()")
        model = model_cls(desc["bits"], **desc["config"])
        with np.load(io.BytesIO(blobs[WEIGHTS_FILE]), allow_pickle=False) as npz:
            weights = {k: npz[k] for k in npz.files}
        model.feature_dim = desc["feature_dim"]
        model.num_frames = desc["num_frames"]
        model.set_weights(weights)
        if model.version() != manifest["version"]:
            raise ValueError(
                f"{url}: loaded model has version {model.version()} but the manifest says {manifest['version']}; "
                "the model class changed how it describes itself -- re-save the model"
            )
        return model


# ---------------------------------------------------------------------- streaming helpers


def mean_pool(frames: np.ndarray) -> np.ndarray:
    """Video-level features: mean over frames, accumulated in float64. ``(B, M, D) -> (B, D)``."""
    return np.asarray(frames).mean(axis=1, dtype=np.float64)


@dataclasses.dataclass
class FrameShape:
    """``(M, D)`` of the training batches, learned from the first non-empty batch of a fit."""

    num_frames: int | None = None
    feature_dim: int | None = None


def iter_pooled(batches: BatchSource, shape: FrameShape) -> Iterator[np.ndarray]:
    """One streaming pass: yield mean-pooled float64 ``(B, D)`` batches, checking shapes.

    The first non-empty batch sets ``shape`` if it is unset; every batch must agree with it.
    Empty batches are skipped.
    """
    if not callable(batches):
        raise TypeError(
            f"batches must be a callable returning a fresh iterator of (B, M, D) arrays, got "
            f"{type(batches).__name__}; wrap a list as `lambda: iter(my_list)`"
        )
    for i, batch in enumerate(batches()):
        batch = np.asarray(batch)
        if batch.ndim != 3:
            raise ValueError(f"training batch {i} has shape {batch.shape}; expected (B, M, D) frame features")
        if not np.issubdtype(batch.dtype, np.floating):
            raise ValueError(f"training batch {i} has dtype {batch.dtype}; expected float16 or float32")
        if batch.shape[0] == 0:
            continue
        if shape.feature_dim is None:
            shape.num_frames, shape.feature_dim = int(batch.shape[1]), int(batch.shape[2])
        if batch.shape[1:] != (shape.num_frames, shape.feature_dim):
            raise ValueError(
                f"training batch {i} has shape {batch.shape} but earlier batches were "
                f"(B, {shape.num_frames}, {shape.feature_dim}); all batches must share M and D"
            )
        yield mean_pool(batch)


class StreamingMoments:
    """Mean and covariance of a stream of row batches in float64 (Chan et al. pairwise merge).

    Stable for any batch sizes: batches of 1, 7 or everything give the same result to rounding.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of outer products of deviations from the mean

    def update(self, x: np.ndarray) -> None:
        """Add rows ``x`` of shape ``(n, D)``."""
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        if n == 0:
            return
        mean_b = x.mean(axis=0)
        dev = x - mean_b
        m2_b = dev.T @ dev
        if self.count == 0:
            self.count, self.mean, self._m2 = n, mean_b, m2_b
            return
        total = self.count + n
        delta = mean_b - self.mean
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Covariance ``(D, D)`` with ``ddof`` (default 1, like :func:`numpy.cov`)."""
        if self.count <= ddof:
            raise ValueError(f"need more than {ddof} samples for a covariance, got {self.count}")
        return self._m2 / (self.count - ddof)

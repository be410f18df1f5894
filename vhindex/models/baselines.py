"""Unsupervised baselines on mean-pooled frame features: LSH, PCA-sign and ITQ.

All three reduce a video to its video-level feature ``x`` = mean over frames (float64), then take
the sign of a linear map: ``code = sign((x - mu) @ W)`` with ``W`` of shape ``(D, bits)``.

* **LSH** (``"lsh"``): ``W`` = i.i.d. standard Gaussian hyperplanes (seeded). With ``center=True``
  (default) ``mu`` is the training mean (one streaming pass), which balances the bits; with
  ``center=False`` ``mu = 0`` (classic random-hyperplane LSH, only the first batch is read to learn D).
* **PCA-sign** (``"pca_sign"``): one streaming pass accumulates the mean and covariance (float64,
  ``D x D``); ``W`` = the top-``bits`` eigenvectors (each signed so its largest-magnitude entry is
  positive). Deterministic; needs ``bits <= D``.
* **ITQ** (``"itq"``, Gong & Lazebnik, CVPR 2011 / TPAMI 2013): PCA as above, then a second
  streaming pass collects the projections ``V = (x - mu) @ P`` (a seeded reservoir sample of at most
  ``max_train`` rows, ``max_train x bits`` float64 in memory) and ``n_iter`` alternating steps
  minimise the quantisation loss ``||B - V R||_F^2`` over codes ``B`` and an orthogonal rotation
  ``R`` (orthogonal Procrustes by SVD), starting from a seeded random orthogonal ``R``.
  ``W = P @ R``. :attr:`ITQ.loss_history` records the loss after every code update; it never
  increases.

The same seed and the same batches give identical codes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from vhindex.models.base import (
    BatchSource,
    FrameShape,
    HashModel,
    StreamingMoments,
    iter_pooled,
    mean_pool,
    register_model,
    signs,
)

logger = logging.getLogger(__name__)


def quantization_loss(V: np.ndarray, R: np.ndarray | None = None) -> float:
    """ITQ's objective ``||sign(V R) - V R||_F^2`` (``R = I`` when ``None``: plain PCA-sign)."""
    Z = np.asarray(V, dtype=np.float64) if R is None else np.asarray(V, dtype=np.float64) @ R
    return float(np.sum((signs(Z) - Z) ** 2))


def random_orthogonal(n: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random ``n x n`` orthogonal matrix (QR of a Gaussian with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


class _LinearSignHash(HashModel):
    """``sign((mean_pool(frames) - mean) @ projection)`` -- the shared encoder of the baselines."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.mean_: np.ndarray | None = None
        self._projection: np.ndarray | None = None  # (D, bits) effective W

    def _scores(self, frames: np.ndarray) -> np.ndarray:
        return (mean_pool(frames) - self.mean_) @ self._projection

    def project(self, frames: np.ndarray) -> np.ndarray:
        """Real-valued projections ``(B, bits)`` whose signs are the codes (for analysis)."""
        return self._scores(self.check_frames(frames))

    def _finish_fit(self, shape: FrameShape) -> None:
        self.num_frames, self.feature_dim = shape.num_frames, shape.feature_dim


def _no_data(name: str) -> ValueError:
    return ValueError(f"{name}: batches() yielded no videos; check the training dataset URL and filters")


def _check_bits_le_dim(name: str, bits: int, dim: int) -> None:
    if bits > dim:
        raise ValueError(
            f"{name}: bits={bits} exceeds the feature dimension D={dim}; PCA-based models give at most D "
            f"bits -- use bits <= {dim} or the 'lsh' model"
        )


def _fit_pca(batches: BatchSource, shape: FrameShape, bits: int, name: str) -> tuple[np.ndarray, ...]:
    """One pass: streamed mean/covariance -> (count, mean, top-``bits`` components, eigenvalues)."""
    moments = StreamingMoments()
    for x in iter_pooled(batches, shape):
        _check_bits_le_dim(name, bits, shape.feature_dim)
        moments.update(x)
    if moments.count == 0:
        raise _no_data(name)
    if moments.count < 2:
        raise ValueError(f"{name}: need at least 2 training videos for a covariance, got {moments.count}")
    if moments.count <= bits:
        logger.warning("%s: only %d training videos for %d bits; trailing bits are noise", name, moments.count, bits)
    evals, evecs = np.linalg.eigh(moments.covariance())
    order = np.argsort(evals)[::-1][:bits]
    components = evecs[:, order]
    # canonical sign: largest-magnitude entry of each component is positive
    pivot = np.argmax(np.abs(components), axis=0)
    components = components * np.where(components[pivot, np.arange(bits)] < 0, -1.0, 1.0)
    return moments.count, moments.mean, np.ascontiguousarray(components), evals[order]


@register_model
class LSH(_LinearSignHash):
    """Random-hyperplane LSH on mean-pooled features.

    Args:
        bits: code length (multiple of 8).
        center: subtract the training mean before projecting (one extra pass; balances the bits).
    """

    name = "lsh"

    def __init__(self, bits: int, center: bool = True) -> None:
        super().__init__(bits)
        if not isinstance(center, bool):
            raise ValueError(f"lsh: center must be True or False, got {center!r}")
        self.center = center

    def get_config(self) -> dict[str, Any]:
        """See :meth:`HashModel.get_config`."""
        return {"center": self.center}

    def fit(self, batches: BatchSource, *, seed: int | None = None) -> LSH:
        """See :meth:`HashModel.fit`. Reads one pass (``center=True``) or one batch."""
        shape = FrameShape()
        if self.center:
            moments = StreamingMoments()
            for x in iter_pooled(batches, shape):
                moments.update(x)
            if moments.count == 0:
                raise _no_data(self.name)
            mean = moments.mean
        else:
            if next(iter_pooled(batches, shape), None) is None:
                raise _no_data(self.name)
            mean = np.zeros(shape.feature_dim)
        rng = np.random.default_rng(seed)
        self.set_weights({"mean": mean, "projection": rng.standard_normal((shape.feature_dim, self.bits))})
        self._finish_fit(shape)
        return self

    def get_weights(self) -> dict[str, np.ndarray]:
        """``mean (D,)`` and ``projection (D, bits)``."""
        return {"mean": self.mean_, "projection": self._projection}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """See :meth:`HashModel.set_weights`."""
        self.mean_ = np.asarray(weights["mean"], dtype=np.float64)
        self._projection = np.asarray(weights["projection"], dtype=np.float64)


@register_model
class PCASign(_LinearSignHash):
    """Sign of the top-``bits`` principal components of mean-pooled features (``bits <= D``)."""

    name = "pca_sign"

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.components_: np.ndarray | None = None
        self.eigenvalues_: np.ndarray | None = None

    def get_config(self) -> dict[str, Any]:
        """No parameters besides ``bits``."""
        return {}

    def fit(self, batches: BatchSource, *, seed: int | None = None) -> PCASign:
        """See :meth:`HashModel.fit`. One pass; ``seed`` is accepted and unused (deterministic)."""
        shape = FrameShape()
        _, mean, components, evals = _fit_pca(batches, shape, self.bits, self.name)
        self.set_weights({"mean": mean, "components": components, "eigenvalues": evals})
        self._finish_fit(shape)
        return self

    def get_weights(self) -> dict[str, np.ndarray]:
        """``mean (D,)``, ``components (D, bits)`` and ``eigenvalues (bits,)`` (descending)."""
        return {"mean": self.mean_, "components": self.components_, "eigenvalues": self.eigenvalues_}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """See :meth:`HashModel.set_weights`."""
        self.mean_ = np.asarray(weights["mean"], dtype=np.float64)
        self.components_ = np.asarray(weights["components"], dtype=np.float64)
        self.eigenvalues_ = np.asarray(weights["eigenvalues"], dtype=np.float64)
        self._projection = self.components_


class _Reservoir:
    """Uniform sample of at most ``capacity`` rows from a stream (Algorithm R, vectorised per batch)."""

    def __init__(self, capacity: int, dim: int, rng: np.random.Generator) -> None:
        self.buf = np.empty((capacity, dim), dtype=np.float64)
        self.capacity, self.filled, self.seen, self.rng = capacity, 0, 0, rng

    def update(self, rows: np.ndarray) -> None:
        take = min(rows.shape[0], self.capacity - self.filled)
        self.buf[self.filled : self.filled + take] = rows[:take]
        self.filled += take
        self.seen += take
        rest = rows[take:]
        if not rest.shape[0]:
            return
        t = self.seen + np.arange(rest.shape[0])  # 0-based stream index of each row
        slot = self.rng.integers(0, t + 1)  # uniform in [0, t]
        keep = slot < self.capacity
        slot, src = slot[keep][::-1], rest[keep][::-1]
        uniq, last = np.unique(slot, return_index=True)  # later rows win, as in sequential Algorithm R
        self.buf[uniq] = src[last]
        self.seen += rest.shape[0]

    def sample(self) -> np.ndarray:
        return self.buf[: self.filled]


@register_model
class ITQ(_LinearSignHash):
    """Iterative quantisation: PCA to ``bits`` dims, then a learned rotation (``bits <= D``).

    Args:
        bits: code length (multiple of 8).
        n_iter: rotation iterations (50 in the paper).
        max_train: at most this many videos (a seeded reservoir sample) are used to learn the
            rotation; memory is ``max_train * bits * 8`` bytes.
    """

    name = "itq"

    def __init__(self, bits: int, n_iter: int = 50, max_train: int = 200_000) -> None:
        super().__init__(bits)
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
            raise ValueError(f"itq: n_iter must be an int >= 0, got {n_iter!r}")
        if isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 2:
            raise ValueError(f"itq: max_train must be an int >= 2, got {max_train!r}")
        self.n_iter, self.max_train = n_iter, max_train
        self.components_: np.ndarray | None = None
        self.rotation_: np.ndarray | None = None
        self.loss_history_: np.ndarray | None = None

    @property
    def loss_history(self) -> np.ndarray:
        """Quantisation loss ``||B - V R||^2`` after each code update (``n_iter + 1`` values, non-increasing)."""
        self._require_fitted("reading loss_history")
        return self.loss_history_

    def get_config(self) -> dict[str, Any]:
        """``n_iter`` and ``max_train``."""
        return {"n_iter": self.n_iter, "max_train": self.max_train}

    def fit(self, batches: BatchSource, *, seed: int | None = None) -> ITQ:
        """See :meth:`HashModel.fit`. Two passes: PCA, then the rotation sample."""
        shape = FrameShape()
        count, mean, components, _ = _fit_pca(batches, shape, self.bits, self.name)
        sample_rng, rotation_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        reservoir = _Reservoir(self.max_train, self.bits, sample_rng)
        for x in iter_pooled(batches, shape):
            reservoir.update((x - mean) @ components)
        if reservoir.seen != count:
            raise ValueError(
                f"itq: the second pass over batches() saw {reservoir.seen} videos, the first {count}; "
                "batches must be a callable returning a FRESH iterator over the same data each call"
            )
        rotation, history = self._learn_rotation(reservoir.sample(), random_orthogonal(self.bits, rotation_rng))
        self.set_weights({"mean": mean, "components": components, "rotation": rotation, "loss_history": history})
        self._finish_fit(shape)
        return self

    def _learn_rotation(self, V: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        history = []
        for it in range(self.n_iter + 1):
            Z = V @ R
            B = signs(Z).astype(np.float64)
            history.append(float(np.sum((B - Z) ** 2)))
            if it == self.n_iter:
                break
            # orthogonal Procrustes: R = argmax tr(R^T V^T B) = U W^T with V^T B = U S W^T
            u, _, wt = np.linalg.svd(V.T @ B)
            R = u @ wt
        logger.info("itq: quantisation loss %.6g -> %.6g over %d iterations", history[0], history[-1], self.n_iter)
        return R, np.asarray(history)

    def get_weights(self) -> dict[str, np.ndarray]:
        """``mean``, ``components (D, bits)``, ``rotation (bits, bits)`` and ``loss_history``."""
        return {
            "mean": self.mean_,
            "components": self.components_,
            "rotation": self.rotation_,
            "loss_history": self.loss_history_,
        }

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """See :meth:`HashModel.set_weights`."""
        self.mean_ = np.asarray(weights["mean"], dtype=np.float64)
        self.components_ = np.asarray(weights["components"], dtype=np.float64)
        self.rotation_ = np.asarray(weights["rotation"], dtype=np.float64)
        self.loss_history_ = np.asarray(weights["loss_history"], dtype=np.float64)
        self._projection = self.components_ @ self.rotation_

"""DVHCM (Liu et al., arXiv 1712.08315): supervised video hashing with a per-category bit mask.

Written from the paper (``shared/seeds/004``; no public code was found). A video's frames are fused
with learned weights into one vector, a fully connected layer with a sigmoid gives the *binary-like*
vector ``ip`` in ``(0, 1)^L`` (the code is ``ip > 0.5``), and a softmax layer on ``ip`` classifies
the video::

    w = softmax_t(score(v_t)),  x = sum_t w_t v_t                # weighted frame fusion
    ip = sigmoid(FC(x)),  code = [ip > 0.5]                      # binary encoding module
    p = softmax(W ip + c)                                        # output module (C classes)

Training (:func:`vhindex.models.losses.dvhcm_loss`) uses *intra-pairs*: two disjoint frame sets of one
video. The loss is ``alpha * CE + beta * max(||ip_1 - ip_2||^2 - margin, 0)`` (eq. 2-4): the
classification loss makes classes separable, the intra-pair loss makes a video's code independent
of which frames were sampled.

Category mask (eq. 5-8): after training, row ``c`` of the mask keeps the ``ratio * L`` bits with the
largest ``|W[c, i]|`` (:meth:`vhindex.index.mask.MaskTable.from_classifier_weights`); a query of
predicted category ``c`` is compared on those bits only. :meth:`DVHCM.category_masks` derives it,
:meth:`DVHCM.classify` gives the query's category, and ``mask_ratio`` (saved with the model) is the
ratio used by ``vhindex build-index``.

Choices where the paper leaves room (documented and tested):

* **Frame fusion.** "Fused with weights ... learned at training phase": here the weight of a frame is
  a softmax over a learned score of its content, so the same network fuses a half frame set (training)
  and all M frames (retrieval). The paper's frames are sampled "at even interval": an intra-pair here
  is a random split of the M frames into two disjoint halves.
* **Frozen backbone.** vhindex trains on extracted frame features, not pixels, so an optional hidden
  layer (``hidden > 0``: ``Linear -> ReLU``) before the binary FC gives the trainable part some depth;
  ``hidden=0`` is the paper's single FC.
* **Multi-label videos.** The cross-entropy target is the multi-hot label row divided by its count
  (``-sum_i y_i log p_i`` of eq. 3 with ``y`` a distribution); the query's category is the argmax.
* ``alpha = beta = 1`` and ``margin`` are not given by the paper: ``margin`` defaults to ``L / 32``
  (the squared distance of ``ip`` vectors ranges over ``[0, L]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vhindex.models.base import _check_bits, register_model
from vhindex.models.learned import TorchHashModel
from vhindex.models.nets import _positive_int

__all__ = ["DVHCM", "DVHCMNet", "build_dvhcm", "intra_pair_split"]


class DVHCMNet(nn.Module):
    """Weighted frame fusion -> (hidden) -> FC -> sigmoid ``ip`` -> linear classifier; see the module docstring.

    ``forward(frames, keep=None)`` returns ``ip`` ``(B, L)``, ``logits`` ``(B, C)`` and ``weights``
    ``(B, M)`` (the fusion weights; 0 where ``keep`` is False).
    """

    def __init__(self, num_frames: int, feature_dim: int, bits: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.num_frames, self.feature_dim, self.bits = num_frames, feature_dim, bits
        self.score = nn.Linear(feature_dim, 1)
        body: list[nn.Module] = [nn.Linear(feature_dim, hidden), nn.ReLU()] if hidden else []
        self.body = nn.Sequential(*body)
        self.binary = nn.Linear(hidden or feature_dim, bits)
        self.classifier = nn.Linear(bits, num_classes)

    def check_input(self, frames: Tensor) -> None:
        """Raise ``ValueError`` unless ``frames`` is ``(B, M, D)`` with this network's M and D."""
        if frames.ndim != 3 or frames.shape[1:] != (self.num_frames, self.feature_dim):
            raise ValueError(f"DVHCMNet: frames must have shape (B, M={self.num_frames}, D={self.feature_dim}), "
                             f"got {tuple(frames.shape)}")

    def fuse(self, frames: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The fused video vector ``(B, D)`` and the fusion weights ``(B, M)`` over the kept frames."""
        scores = self.score(frames).squeeze(-1)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bm,bmd->bd", weights, frames), weights

    def forward(self, frames: Tensor, keep: Tensor | None = None) -> dict[str, Tensor]:  # noqa: D102
        self.check_input(frames)
        fused, weights = self.fuse(frames, keep)
        ip = torch.sigmoid(self.binary(self.body(fused)))
        return {"ip": ip, "logits": self.classifier(ip), "weights": weights}

    def encode(self, frames: Tensor) -> Tensor:
        """``ip - 0.5`` ``(B, L)`` over all frames: its ``> 0`` pattern is the code."""
        return self.forward(frames)["ip"] - 0.5


def intra_pair_split(batch: int, num_frames: int, generator: torch.Generator,
                     device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Two disjoint frame sets per video: a random half of the M frames and the rest, ``(B, M)`` bool each.

    The first set has ``M // 2`` frames, the second ``M - M // 2``; together they cover every frame once.

    Raises:
        ValueError: fewer than 2 frames (no intra-pair exists).
    """
    if num_frames < 2:
        raise ValueError(f"an intra-pair needs at least 2 frames per video, got M={num_frames}")
    order = torch.argsort(torch.rand(batch, num_frames, generator=generator), dim=1)
    first = torch.zeros(batch, num_frames, dtype=torch.bool)
    first.scatter_(1, order[:, : num_frames // 2], True)
    return first.to(device), (~first).to(device)


def build_dvhcm(bits: int, num_frames: int, feature_dim: int, *, num_classes: int, hidden: int = 512) -> DVHCMNet:
    """:class:`DVHCMNet` with checked arguments.

    Raises:
        ValueError: a non-positive size (``hidden`` may be 0), bits not a multiple of 8.
    """
    for name, value in (("num_frames", num_frames), ("feature_dim", feature_dim), ("num_classes", num_classes)):
        _positive_int(name, value)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
        raise ValueError(f"hidden must be a non-negative integer (0: the paper's single FC), got {hidden!r}")
    return DVHCMNet(num_frames, feature_dim, _check_bits(bits), num_classes, hidden)


@register_model
class DVHCM(TorchHashModel):
    """DVHCM: supervised codes with a category mask; trained by :mod:`vhindex.train.supervised` (labels needed).

    Args:
        bits: code length L (multiple of 8).
        num_frames: M.
        feature_dim: D.
        num_classes: C, the categories of the training labels.
        hidden: width of the hidden layer before the binary FC (0: the paper's single FC).
        mask_ratio: fraction of the bits each category's mask keeps (paper: 0.3-0.6 by length; 1.0 = no mask).
        margin: the intra-pair hinge margin ``M`` (``None``: ``bits / 32``).
        alpha: weight of the classification loss.
        beta: weight of the intra-pair loss.
        device: where ``.net`` lives (``None``/``"auto"``: CUDA when available).
    """

    name = "dvhcm"
    net: DVHCMNet

    def __init__(self, bits: int, num_frames: int = 25, feature_dim: int = 4096, num_classes: int = 101,
                 hidden: int = 512, mask_ratio: float = 0.5, margin: float | None = None, alpha: float = 1.0,
                 beta: float = 1.0, device: str | torch.device | None = None) -> None:
        if not (isinstance(mask_ratio, (int, float)) and 0.0 < mask_ratio <= 1.0):
            raise ValueError(f"mask_ratio must be in (0, 1], got {mask_ratio!r}")
        super().__init__(bits, {"num_frames": num_frames, "feature_dim": feature_dim, "num_classes": num_classes,
                                "hidden": hidden, "mask_ratio": float(mask_ratio), "margin": margin,
                                "alpha": float(alpha), "beta": float(beta)}, device)
        self.num_classes, self.mask_ratio = int(num_classes), float(mask_ratio)
        self.margin = float(self.bits / 32 if margin is None else margin)
        self.alpha, self.beta = float(alpha), float(beta)
        self._finish_init(build_dvhcm(self.bits, num_frames, feature_dim, num_classes=num_classes, hidden=hidden))

    def loss_kwargs(self) -> dict[str, float]:
        """``margin``, ``alpha`` and ``beta`` as keyword arguments of :func:`~vhindex.models.losses.dvhcm_loss`."""
        return {"margin": self.margin, "alpha": self.alpha, "beta": self.beta}

    def category_masks(self, ratio: float | None = None) -> Any:
        """The category mask table (eq. 5 / 7) from the classifier's weights, ``ratio`` default ``mask_ratio``.

        Returns:
            A :class:`vhindex.index.mask.MaskTable` of ``num_classes`` rows and ``bits`` bits.
        """
        from vhindex.index.mask import MaskTable

        weight = self.net.classifier.weight.detach().to("cpu", torch.float32).numpy()
        return MaskTable.from_classifier_weights(weight, self.mask_ratio if ratio is None else ratio)

    def class_scores(self, frames: np.ndarray) -> np.ndarray:
        """Classifier logits, float32 ``(B, C)``."""
        frames = self.check_frames(frames)
        return self._batched(frames, lambda x: self.net(x)["logits"], self.num_classes)

    def classify(self, frames: np.ndarray) -> np.ndarray:
        """The predicted category of each video (argmax of the softmax layer), int64 ``(B,)``."""
        return self.class_scores(frames).argmax(axis=1).astype(np.int64)

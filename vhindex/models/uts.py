"""UTS Net (seed 003, "Unsupervised Teacher-Student Model for Large-scale Video Retrieval"): the networks and loss.

Written from the paper (no public code was found). A frozen **teacher** (a backbone + a fully connected
layer computed as PCA whitening of the backbone's frame features, eq. 1-3) and a trained **student** (the
same family of backbone with its last block replaced by ``Conv-BN-ReLU x 2 + Conv-BN``, so that its
output is zero-mean like the PCA's) see the same frames; the student is trained with

    L = l0 (1 - C(s, t)) + l1 (1 - C(s*, t)) + l2 I(s) + l3 I(s*)                        (eq. 8)

``C`` the mean cosine similarity of each student output with the teacher's (global consistency, eq. 4-5),
``I`` the intra-batch similarity (local inconsistency, eq. 6-7): for each frame, the mean of its sorted
cosine similarities to the batch between ranks ``alpha * n`` and ``beta * n``. ``s`` is the student on the
augmented frames, ``s*`` on the plain ones, ``t`` the teacher on the plain ones. Frame codes are then LSH
(faiss) of the student's features, searched by the frame-level pipeline (:mod:`vhindex.index.frames`).

Choices where the paper leaves room (documented and tested):

* **Sorted order** in eq. 7 is descending (most similar first); the self-similarity (1) is rank 0, so with
  ``alpha * n >= 1`` the frame itself and its nearest batch-mates are skipped and ranks
  ``[round(alpha n), round(beta n))`` are averaged (``(beta - alpha) n`` terms, eq. 6's normaliser).
* **PCA sign**: each component's largest-magnitude loading is made positive (PCA leaves it free).
* **Backbone**: EfficientNet-Lite0 for both roles (bundled weights); the student's "last block" is the
  last MBConv block and the head (1x1 conv to 1,280 + BN), replaced by ``Conv3x3-BN-ReLU, Conv3x3-BN-ReLU,
  Conv1x1-BN`` to the teacher's PCA width, then global average pooling.

Training (frames, teacher, the loop, the LSH frame model) is :mod:`vhindex.train.uts`; the student as an
extraction backbone is ``uts_student`` (:class:`vhindex.features.backbones.UTSStudentBackbone`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UTS_DEFAULTS", "UTSStudent", "UTSTeacher", "check_uts_params", "intra_batch_similarity", "pca_fc",
           "teacher_student_similarity", "uts_loss"]

#: ``model.params`` of ``model.name: uts`` (:mod:`vhindex.train.uts`) and their defaults (the paper's alpha, beta,
#: lambdas; the rest are vhindex's choices, see that module).
UTS_DEFAULTS: dict[str, Any] = {
    "out_dim": 256,          # D*: the teacher's PCA width = the student's feature width
    "width": 320,            # channels of the student's two new 3x3 convolutions
    "alpha": 0.1,
    "beta": 0.6,
    "lambdas": [2.0, 2.0, 1.0, 1.0],
    "rotation": 15.0,        # degrees, +-
    "crop_scale": 0.5,       # smallest kept area fraction of the random crop
    "colour": 0.4,           # brightness / contrast / saturation factor range 1 +- colour
    "max_videos": None,      # a seeded subset of the listing (None: every video)
    "teacher_batch": 64,     # frames per teacher / feature forward pass
}


def check_uts_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` over :data:`UTS_DEFAULTS`, checked.

    Raises:
        ValueError: an unknown key (named), or a value out of range (named).
    """
    unknown = sorted(set(params) - set(UTS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown UTS parameter(s) {unknown}; known: {sorted(UTS_DEFAULTS)}")
    p = {**UTS_DEFAULTS, **params}
    if not 0.0 <= p["alpha"] < p["beta"] <= 1.0:
        raise ValueError(f"need 0 <= alpha < beta <= 1, got alpha={p['alpha']}, beta={p['beta']}")
    if len(p["lambdas"]) != 4:
        raise ValueError(f"lambdas: need 4 weights (l0..l3), got {p['lambdas']}")
    if not 0.0 < p["crop_scale"] <= 1.0 or not 0.0 <= p["colour"] < 1.0 or p["rotation"] < 0:
        raise ValueError(f"need 0 < crop_scale <= 1, 0 <= colour < 1, rotation >= 0; got crop_scale="
                         f"{p['crop_scale']}, colour={p['colour']}, rotation={p['rotation']}")
    for key in ("out_dim", "width", "teacher_batch"):
        if int(p[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {p[key]}")
    if p["max_videos"] is not None and int(p["max_videos"]) < 1:
        raise ValueError(f"max_videos must be >= 1 or null, got {p['max_videos']}")
    return p


def pca_fc(features: np.ndarray, out_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's fc layer as PCA whitening (eq. 1-3): ``f* = W f + b`` with ``W = U[:, :D*]^T / sqrt(V[:D*])``
    and ``b = -W mean(f)``, ``U, V`` the eigenvectors / eigenvalues of the covariance (``1/m``, eq. 1), largest first.

    Args:
        features: ``(m, D)`` frame features of the backbone.
        out_dim: ``D*``, at most ``min(m - 1, D)`` (the non-zero eigenvalues).

    Returns:
        ``(W (D*, D), b (D*,))`` float32.

    Raises:
        ValueError: a non-2-D input, ``out_dim`` out of range, or a zero eigenvalue among the kept ones.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"pca_fc: expected (m >= 2, D) features, got shape {f.shape}")
    if not 1 <= out_dim <= min(f.shape[0] - 1, f.shape[1]):
        raise ValueError(f"pca_fc: out_dim={out_dim} must be in [1, min(m - 1, D) = {min(f.shape[0] - 1, f.shape[1])}]")
    mean = f.mean(axis=0)
    centred = f - mean
    cov = centred.T @ centred / f.shape[0]
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:out_dim]
    values, vectors = values[order], vectors[:, order]
    if (values <= 1e-12 * max(values[0], 1e-300)).any():
        raise ValueError("pca_fc: a kept eigenvalue is zero (features of rank < out_dim); lower out_dim")
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(out_dim)])
    weight = (vectors * signs).T / np.sqrt(values)[:, None]
    return weight.astype(np.float32), (-weight @ mean).astype(np.float32)


def teacher_student_similarity(x: Tensor, y: Tensor) -> Tensor:
    """Eq. 4-5: the mean over the batch of ``cos(x_i, y_i)``."""
    return (F.normalize(x, dim=1) * F.normalize(y, dim=1)).sum(dim=1).mean()


def intra_batch_similarity(x: Tensor, alpha: float = 0.1, beta: float = 0.6) -> Tensor:
    """Eq. 6-7: each frame's cosine similarities to the batch (itself included) sorted descending, the mean of
    ranks ``[round(alpha n), round(beta n))``, averaged over the batch.

    Raises:
        ValueError: ``0 <= alpha < beta <= 1`` does not hold, or the range is empty for this batch size.
    """
    if not 0.0 <= alpha < beta <= 1.0:
        raise ValueError(f"need 0 <= alpha < beta <= 1, got alpha={alpha}, beta={beta}")
    n = x.shape[0]
    lo, hi = round(alpha * n), round(beta * n)
    if hi <= lo:
        raise ValueError(f"batch of {n}: ranks [{lo}, {hi}) are empty; use a larger batch")
    z = F.normalize(x, dim=1)
    ranked = torch.sort(z @ z.T, dim=1, descending=True).values
    return ranked[:, lo:hi].mean()


def uts_loss(s: Tensor, s_plain: Tensor, t: Tensor, *, alpha: float = 0.1, beta: float = 0.6,
             lambdas: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)) -> dict[str, Tensor]:
    """Eq. 8 with the paper's ``alpha = 0.1, beta = 0.6, lambda = (2, 2, 1, 1)``.

    Args:
        s: ``(n, D*)`` student outputs on the augmented frames.
        s_plain: ``(n, D*)`` student outputs on the same frames without augmentation (``s*``).
        t: ``(n, D*)`` teacher outputs on the frames without augmentation.
        alpha: start of the averaged rank range, as a fraction of the batch.
        beta: its end.
        lambdas: ``(l0, l1, l2, l3)``.
    """
    l0, l1, l2, l3 = lambdas
    global_s, global_plain = teacher_student_similarity(s, t), teacher_student_similarity(s_plain, t)
    local_s, local_plain = intra_batch_similarity(s, alpha, beta), intra_batch_similarity(s_plain, alpha, beta)
    total = l0 * (1 - global_s) + l1 * (1 - global_plain) + l2 * local_s + l3 * local_plain
    return {"total": total, "global": global_s, "global_plain": global_plain, "local": local_s,
            "local_plain": local_plain}


class UTSTeacher(nn.Module):
    """Frozen backbone + the PCA fc layer (:func:`pca_fc`): ``(N, 3, S, S)`` preprocessed frames -> ``(N, D*)``.

    Args:
        backbone: a :class:`vhindex.features.backbones.Backbone` (its weights are frozen here).
        weight: ``(D*, feature_dim)`` from :func:`pca_fc`.
        bias: ``(D*,)``.
    """

    def __init__(self, backbone: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False).eval()
        self.fc = nn.Linear(weight.shape[1], weight.shape[0]).requires_grad_(False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.as_tensor(weight))
            self.fc.bias.copy_(torch.as_tensor(bias))

    def train(self, mode: bool = True) -> UTSTeacher:
        """The teacher never trains: always eval mode (the paper: it 'needs no training')."""
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        with torch.no_grad():
            return self.fc(self.backbone(x))


class UTSStudent(nn.Module):
    """EfficientNet-Lite0 with its last MBConv block and head replaced by ``Conv-BN-ReLU x 2 + Conv-BN``.

    Args:
        lite0: an :class:`vhindex.features.backbones.EfficientNetLite0` (weights loaded as wanted; its stem and
            all but the last block are kept and trained).
        out_dim: ``D*`` (the teacher's PCA width).
        width: channels of the two new 3x3 convolutions.
    """

    def __init__(self, lite0: nn.Module, out_dim: int, width: int = 320) -> None:
        super().__init__()
        net = lite0.net
        self.stem = nn.Sequential(net._conv_stem, net._bn0, net._swish)
        self.blocks = nn.ModuleList(list(net._blocks)[:-1])
        in_ch = net._blocks[-1]._block_args.input_filters
        self.head = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out_dim, 1, bias=False), nn.BatchNorm2d(out_dim))
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))

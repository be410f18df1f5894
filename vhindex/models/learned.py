"""Learned hashers as :class:`~vhindex.models.base.HashModel`\\ s: BTH (``"bth"``) and DKPH (``"dkph"``).

Each wraps a torch network from :mod:`vhindex.models.nets` (the ``.net`` attribute) so that the
shared interface works unchanged: ``encode`` / ``encode_packed``, ``save`` / ``load`` (the weights
are the network's ``state_dict`` as float32 numpy arrays in ``weights.npz``; no pickles) and
``version()`` (a content hash of config and weights).

Training needs the anchor graph and the pair sampler, so it lives in :mod:`vhindex.train`
(``jobs/train_dkph.py``), which optimises ``model.net`` with :mod:`vhindex.models.losses` and then
saves the model; :meth:`fit` raises with a pointer there.

A learned model knows M and D from construction (the network's shapes depend on them), so it counts
as fitted from the start: its weights are the network's current parameters (random until trained).

Test-time codes (released rules):

* BTH: per-frame binary codes -> mean over frames -> sign. The released ``eval.py`` uses
  ``torch.sign``, which gives 0 where exactly half the frames vote each way (possible for even M);
  here such ties become -1 (the ``x > 0`` rule of :func:`~vhindex.models.base.signs` and of packing).
* DKPH: the hash layer's video code directly (already in {-1, +1}); the hash layer reads the
  flattened encoder states (released) or, with ``hash_input="mean"``, their mean over frames.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vhindex.models.base import BatchSource, HashModel, register_model, signs
from vhindex.models.nets import BTHNet, DKPHNet, build_bth, build_dkph

logger = logging.getLogger(__name__)

__all__ = ["BTH", "DKPH", "ENCODE_BATCH", "TorchHashModel", "resolve_device"]

#: Videos per forward pass in :meth:`_TorchHashModel.encode` (peak float32 input memory B*M*D*4 bytes).
ENCODE_BATCH = 1024


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"`` -> CUDA when available, else CPU; anything else -> ``torch.device(device)``.

    Raises:
        ValueError: an unknown device string, or CUDA requested but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:0' or 'auto'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return dev


class TorchHashModel(HashModel):
    """Shared behaviour of the torch-backed models (config, weights, batched no-grad encoding).

    Subclasses build their network and call :meth:`_finish_init`; ``arch`` (which must hold
    ``num_frames`` and ``feature_dim``) is the model's config, saved with it.
    """

    net: torch.nn.Module

    def __init__(self, bits: int, arch: dict[str, Any], device: str | torch.device | None) -> None:
        super().__init__(bits)
        self._arch = dict(arch)
        self.num_frames, self.feature_dim = int(arch["num_frames"]), int(arch["feature_dim"])
        self.device = resolve_device(device)

    def _finish_init(self, net: torch.nn.Module) -> None:
        self.net = net.to(self.device)

    # ------------------------------------------------------------------ HashModel

    def fit(self, batches: BatchSource, *, seed: int | None = None) -> HashModel:
        """Not available here: train with :mod:`vhindex.train` (``jobs/train_dkph.py``).

        Raises:
            NotImplementedError: always -- training needs the anchor graph and the pair sampler.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.fit() is not supported: {self.name} trains on video pairs from the anchor graph "
            f"(teacher features -> anchors -> pair sampler), which a plain batch stream does not carry. Train with "
            f"vhindex.train (or `python jobs/train_dkph.py --config ...`), which optimises `model.net` and saves the "
            f"model; then load it with vhindex.models.load_model(url)."
        )

    def get_config(self) -> dict[str, Any]:  # noqa: D102
        return dict(self._arch)

    def get_weights(self) -> dict[str, np.ndarray]:
        """The network's ``state_dict`` as float32 numpy arrays (keys are the parameter names)."""
        return {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in self.net.state_dict().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load arrays produced by :meth:`get_weights` into ``.net``.

        Raises:
            ValueError: missing / unexpected parameter names or wrong shapes (a different architecture).
        """
        expected = self.net.state_dict()
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        wrong = sorted(k for k in set(expected) & set(weights) if tuple(np.shape(weights[k])) != tuple(expected[k].shape))
        if missing or unexpected or wrong:
            raise ValueError(
                f"{self.name}: weights do not match the architecture {self.get_config()} (bits={self.bits}): "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
            )
        state = {k: torch.as_tensor(np.asarray(weights[k]), dtype=expected[k].dtype) for k in expected}
        self.net.load_state_dict(state, strict=True)

    # ------------------------------------------------------------------ encoding

    def to(self, device: str | torch.device | None) -> _TorchHashModel:
        """Move the network to ``device`` (``"auto"``/``None``: CUDA when available); returns ``self``."""
        self.device = resolve_device(device)
        self.net.to(self.device)
        return self

    def _net_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Real-valued ``(B, bits)`` whose ``> 0`` pattern is the code."""
        return self.net.encode(x)

    def _batched(self, frames: np.ndarray, fn: Callable[[torch.Tensor], torch.Tensor], width: int) -> np.ndarray:
        out = np.empty((frames.shape[0], width), dtype=np.float32)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                for start in range(0, frames.shape[0], ENCODE_BATCH):
                    chunk = np.ascontiguousarray(frames[start:start + ENCODE_BATCH])
                    if not chunk.flags.writeable:  # Arrow-backed batches are read-only; torch wants to own them
                        chunk = chunk.copy()
                    x = torch.from_numpy(chunk).to(self.device, torch.float32)
                    out[start:start + ENCODE_BATCH] = fn(x).float().cpu().numpy()
        finally:
            self.net.train(was_training)
        return out

    def _scores(self, frames: np.ndarray) -> np.ndarray:
        return self._batched(frames, self._net_codes, self.bits)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """Codes ``int8`` {-1, +1} ``(B, bits)`` of ``(B, M, D)`` frames (eval mode, no grad, batches of 1,024).

        Raises:
            ValueError: wrong rank, M, D or dtype (names the expected shape).
        """
        frames = self.check_frames(frames)
        return signs(self._scores(frames))

class _TorchHashModel(TorchHashModel):
    """BTH / DKPH: the released transformer encoder's architecture parameters."""

    net: BTHNet | DKPHNet

    def __init__(self, bits: int, num_frames: int, feature_dim: int, hidden: int, layers: int, heads: int,
                 ffn: int, dropout: float, device: str | torch.device | None) -> None:
        super().__init__(bits, {"num_frames": num_frames, "feature_dim": feature_dim, "hidden": hidden,
                                "layers": layers, "heads": heads, "ffn": ffn, "dropout": dropout}, device)

    def latent_features(self, frames: np.ndarray) -> np.ndarray:
        """Mean over frames of the encoder's hidden states, float32 ``(B, hidden)``.

        For a teacher (a BTH trained with the reconstruction loss only) these are the released
        "latent features" that the anchors (k-means) and the similarity graph are built from.
        """
        frames = self.check_frames(frames)
        return self._batched(frames, lambda x: self.net.encoder(x).mean(dim=1), self._arch["hidden"])


@register_model
class BTH(_TorchHashModel):
    """BTH (Li et al., CVPR 2021): per-frame codes of a bidirectional transformer, averaged and signed.

    Also the DKPH *teacher* when trained with the reconstruction loss only.

    Args:
        bits: code length (multiple of 8).
        num_frames: M.
        feature_dim: D.
        hidden: transformer width d.
        layers: transformer blocks.
        heads: attention heads.
        ffn: FFN inner size.
        dropout: dropout rate (training only).
        device: where ``.net`` lives and encoding runs (``None``/``"auto"``: CUDA when available).
    """

    name = "bth"

    def __init__(self, bits: int, num_frames: int = 25, feature_dim: int = 4096, hidden: int = 256,
                 layers: int = 1, heads: int = 1, ffn: int = 1024, dropout: float = 0.1,
                 device: str | torch.device | None = None) -> None:
        super().__init__(bits, num_frames, feature_dim, hidden, layers, heads, ffn, dropout, device)
        self._finish_init(build_bth(self.bits, num_frames, feature_dim, hidden=hidden, layers=layers, heads=heads,
                                    ffn=ffn, dropout=dropout))


@register_model
class DKPH(_TorchHashModel):
    """DKPH (Li et al., ECCV 2022): dual-stream student; the hash layer's video code is the code.

    Args:
        bits: code length (multiple of 8).
        num_frames: M.
        feature_dim: D.
        hidden: transformer width d.
        layers: transformer blocks.
        heads: attention heads.
        ffn: FFN inner size.
        dropout: dropout rate (training only).
        temporal: build the temporal layer (``False``: the "no temporal layer" ablation).
        use_tsim: train with L_tsim (ablation switch read by the trainer via :meth:`loss_kwargs`).
        use_bsim: train with L_bsim (ablation switch read by the trainer via :meth:`loss_kwargs`).
        hash_input: ``"flatten"`` (released: hash layer on the flattened encoder states) or ``"mean"``
            (hash layer ``Linear(d -> K)`` on their mean over frames).
        device: where ``.net`` lives and encoding runs (``None``/``"auto"``: CUDA when available).
    """

    name = "dkph"

    def __init__(self, bits: int, num_frames: int = 25, feature_dim: int = 4096, hidden: int = 256,
                 layers: int = 1, heads: int = 1, ffn: int = 1024, dropout: float = 0.1, temporal: bool = True,
                 use_tsim: bool = True, use_bsim: bool = True, hash_input: str = "flatten",
                 device: str | torch.device | None = None) -> None:
        super().__init__(bits, num_frames, feature_dim, hidden, layers, heads, ffn, dropout, device)
        self.temporal, self.use_tsim, self.use_bsim = bool(temporal), bool(use_tsim), bool(use_bsim)
        self.hash_input = hash_input
        self._finish_init(build_dkph(self.bits, num_frames, feature_dim, hidden=hidden, layers=layers, heads=heads,
                                     ffn=ffn, dropout=dropout, temporal=self.temporal, hash_input=hash_input))

    def get_config(self) -> dict[str, Any]:
        """Constructor parameters; ``hash_input`` is listed only when it is not the released ``"flatten"``,
        so models saved before the option existed keep their config and :meth:`version`."""
        config = {**self._arch, "temporal": self.temporal, "use_tsim": self.use_tsim, "use_bsim": self.use_bsim}
        if self.hash_input != "flatten":
            config["hash_input"] = self.hash_input
        return config

    def loss_kwargs(self) -> dict[str, bool]:
        """The ablation switches as keyword arguments of :func:`~vhindex.models.losses.dkph_loss`."""
        return {"use_tsim": self.use_tsim, "use_bsim": self.use_bsim}

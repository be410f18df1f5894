"""MCMSH (Hao et al., ACM MM 2022): an MLP-Mixer over the frames with multi-granularity self-gating.

Written from the paper and the description of the released code (``haoyanbin918/MCMSH``;
``reference/methods-and-results.md`` section 7), with ``M``, ``D``, width, depth, reduction ratios
and gates as parameters.

Network (:class:`MCMLPNet`), frames ``(B, M, D)``::

    Linear(D -> d) + ReLU -> `layers` x MixerLayer -> states e (B, M, d)
    MixerLayer:  x = x + TokenGates(MLP_M(x^T))^T      # mixes along the frames (MLP M -> 2M -> M)
                 x = x + ChannelGates(MLP_d(x))         # mixes along the channels (MLP d -> 2d -> d)
                 x = FinalGates(x)
    hash:        h = mean_t tanh(alpha * Linear(d -> K)(e_t)),   b = sign(h) (straight-through)

Each ``*Gates`` block is the sum of the enabled gates among

* **LRD** (large range): 1x1 mix -> squeeze over the whole sequence -> bottleneck FC (BN, ReLU) ->
  FC (BN) -> sigmoid: one gate per channel -> 1x1 mix;
* **MRD** (medium range): 1x1 mix -> average-pool the sequence to ``len // 3`` segments -> k=3 conv
  bottleneck (BN, ReLU) -> k=3 conv (BN) -> sigmoid -> stretched back to the sequence: one gate per
  (segment, channel) -> 1x1 mix;
* **SRD** (short range): the same at full resolution (a gate per position and channel).

A gate block works on ``x (B, L, C)``: the 1x1 mixes run along ``L`` and the gates along the other
axis, as released. Inside the token block the tensor is transposed (``L = d``, ``C = M``: the 1x1
mixes mix channels, the gates act per frame position, reduction ``r_token``); in the channel and final
blocks ``L = M``, ``C = d`` (1x1 mixes over frames, a gate per channel, reduction ``r_channel``, MRD's
segments are groups of frames).

Choices where the paper and code leave room (documented, tested):

* ``gates=()`` is the paper's "MLP-Mixer" ablation: token and channel MLPs with their residuals and no
  final gate block (the released code has no variant without gates; an empty sum would zero ``x``).
* MRD pools to ``max(1, len // 3)`` segments (the released ``len // 3`` fails below 3).
* ``alpha = sqrt(epoch + 1)`` is a buffer set by the trainer each epoch (:meth:`MCMLPNet.set_alpha`),
  saved with the weights, so encoding after loading uses the last trained epoch's ``alpha``.
* The code is ``sign(h)`` with the ``x > 0`` rule of :func:`vhindex.models.base.signs`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vhindex.models.base import _check_bits, register_model
from vhindex.models.learned import TorchHashModel
from vhindex.models.nets import binarize

__all__ = ["GATES", "MCMLPNet", "MCMSH", "MixerLayer", "RangeGate", "build_mcmsh"]

#: the gates of a gate block, in the paper's order
GATES = ("lrd", "mrd", "srd")


class RangeGate(nn.Module):
    """One self-gating module on ``x (B, L, C)``: 1x1 mix along ``L``, a sigmoid gate, 1x1 mix along ``L``.

    Args:
        length: ``L`` (the axis the 1x1 mixes run along).
        channels: ``C`` (the gated axis: one gate per channel for ``lrd``).
        reduction: bottleneck ratio of the gate (``C // reduction`` hidden units, at least 1).
        kind: ``"lrd"`` (one gate per channel from the mean over ``L``), ``"mrd"`` (per segment of
            ``L // 3`` and channel) or ``"srd"`` (per position and channel).
        grouped: MRD / SRD convolutions grouped ``C // reduction`` ways (the released channel blocks).
    """

    def __init__(self, length: int, channels: int, reduction: int, kind: str, grouped: bool = False) -> None:
        super().__init__()
        if kind not in GATES:
            raise ValueError(f"gate kind {kind!r}; choose from {GATES}")
        self.kind, self.length = kind, int(length)
        hidden = max(1, channels // reduction)
        self.mix_in = nn.Conv1d(length, length, kernel_size=1)
        self.mix_out = nn.Conv1d(length, length, kernel_size=1)
        if kind == "lrd":
            self.squeeze = nn.Linear(channels, hidden, bias=False)
            self.excite = nn.Linear(hidden, channels, bias=False)
            nn.init.normal_(self.squeeze.weight, 0.0, 0.001)
            nn.init.normal_(self.excite.weight, 0.0, 0.001)
        else:
            groups = hidden if grouped and channels % hidden == 0 else 1
            self.squeeze = nn.Conv1d(channels, hidden, kernel_size=3, padding=1, bias=False, groups=groups)
            self.excite = nn.Conv1d(hidden, channels, kernel_size=3, padding=1, bias=False, groups=groups)
            nn.init.kaiming_normal_(self.squeeze.weight, mode="fan_out", nonlinearity="relu")
            nn.init.xavier_normal_(self.excite.weight)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.bn2 = nn.BatchNorm1d(channels)
        self.segments = max(1, self.length // 3)

    def gate(self, y: Tensor) -> Tensor:
        """Sigmoid gate of ``y (B, C, L)``, broadcastable to it."""
        if self.kind == "lrd":
            g = y.mean(dim=2)  # (B, C)
            g = self.bn2(self.excite(F.relu(self.bn1(self.squeeze(g)))))
            return torch.sigmoid(g).unsqueeze(2)
        if self.kind == "mrd":
            g = F.adaptive_avg_pool1d(y, self.segments)
            g = torch.sigmoid(self.bn2(self.excite(F.relu(self.bn1(self.squeeze(g))))))
            return F.adaptive_avg_pool1d(g, self.length)  # each position takes its segment's gate
        return torch.sigmoid(self.bn2(self.excite(F.relu(self.bn1(self.squeeze(y))))))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        y = self.mix_in(x).transpose(1, 2)  # (B, C, L)
        y = y * self.gate(y)
        return self.mix_out(y.transpose(1, 2).contiguous())


class GateBlock(nn.Module):
    """The sum of the enabled :class:`RangeGate`\\ s (``gates`` empty: identity)."""

    def __init__(self, length: int, channels: int, reduction: int, gates: Sequence[str], grouped: bool) -> None:
        super().__init__()
        self.gates = nn.ModuleDict({k: RangeGate(length, channels, reduction, k, grouped=grouped and k != "lrd")
                                    for k in GATES if k in gates})

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        if not self.gates:
            return x
        return sum(g(x) for g in self.gates.values())  # type: ignore[return-value]


class _MLP(nn.Module):
    def __init__(self, width: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, width * expansion)
        self.fc2 = nn.Linear(width * expansion, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class MixerLayer(nn.Module):
    """Token mixing (over frames) + channel mixing, each followed by its gate block, then the final gate block.

    Args:
        num_frames: M.
        hidden: d.
        expansion: MLP expansion factor (released 2).
        dropout: MLP dropout (released 0.5).
        gates: enabled gates (subset of :data:`GATES`; empty = plain MLP-Mixer).
        r_token: gate reduction inside the token block (released 4).
        r_channel: gate reduction inside the channel and final blocks (released 16).
    """

    def __init__(self, num_frames: int, hidden: int, expansion: int, dropout: float, gates: Sequence[str],
                 r_token: int, r_channel: int) -> None:
        super().__init__()
        self.token_mlp = _MLP(num_frames, expansion, dropout)
        self.token_gates = GateBlock(hidden, num_frames, r_token, gates, grouped=False)
        self.channel_mlp = _MLP(hidden, expansion, dropout)
        self.channel_gates = GateBlock(num_frames, hidden, r_channel, gates, grouped=True)
        self.final_gates = GateBlock(num_frames, hidden, r_channel, gates, grouped=True)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        t = self.token_gates(self.token_mlp(x.transpose(1, 2)))  # (B, d, M)
        x = x + t.transpose(1, 2)
        x = x + self.channel_gates(self.channel_mlp(x))
        return self.final_gates(x)


class MCMLPNet(nn.Module):
    """The MC-MLP encoder and hash layer (module docstring). ``forward`` returns
    ``{"hidden": e (B, M, d), "h": h (B, K), "b": b (B, K)}``; ``encode`` returns ``h``."""

    def __init__(self, bits: int, num_frames: int, feature_dim: int, hidden: int, layers: int, expansion: int,
                 dropout: float, gates: Sequence[str], r_token: int, r_channel: int) -> None:
        super().__init__()
        self.num_frames, self.feature_dim, self.bits = num_frames, feature_dim, bits
        self.proj = nn.Linear(feature_dim, hidden)
        self.layers = nn.ModuleList(MixerLayer(num_frames, hidden, expansion, dropout, gates, r_token, r_channel)
                                    for _ in range(layers))
        self.hash = nn.Linear(hidden, bits)
        self.register_buffer("alpha", torch.tensor(1.0))

    def set_alpha(self, epoch: int) -> None:
        """``alpha = sqrt(epoch + 1)``: the tanh sharpens as training goes on (released ``set_alpha``)."""
        self.alpha.fill_(math.sqrt(epoch + 1))

    def states(self, frames: Tensor) -> Tensor:
        """Frame states ``e (B, M, d)``."""
        if frames.dim() != 3 or frames.shape[1:] != (self.num_frames, self.feature_dim):
            raise ValueError(f"expected frames (B, {self.num_frames}, {self.feature_dim}), got {tuple(frames.shape)}")
        x = F.relu(self.proj(frames))
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, frames: Tensor) -> dict[str, Tensor]:  # noqa: D102
        e = self.states(frames)
        h = torch.tanh(self.alpha * self.hash(e)).mean(dim=1)
        return {"hidden": e, "h": h, "b": binarize(h)}

    def encode(self, frames: Tensor) -> Tensor:
        """Real-valued ``(B, K)`` whose ``> 0`` pattern is the code."""
        return self.forward(frames)["h"]


def _gate_list(gates: Sequence[str]) -> list[str]:
    """``gates`` in the canonical order; a string is one gate name (not its letters)."""
    gates = [gates] if isinstance(gates, str) else list(gates)
    unknown = sorted(set(gates) - set(GATES))
    if unknown:
        raise ValueError(f"gates: unknown {unknown}; choose from {list(GATES)} (empty: the plain MLP-Mixer ablation)")
    return [g for g in GATES if g in gates]


def build_mcmsh(bits: int, num_frames: int, feature_dim: int, *, hidden: int = 256, layers: int = 1,
                expansion: int = 2, dropout: float = 0.5, gates: Sequence[str] = GATES, r_token: int = 4,
                r_channel: int = 16) -> MCMLPNet:
    """:class:`MCMLPNet` with checked arguments.

    Raises:
        ValueError: a non-positive size, an unknown gate name, or bits not a multiple of 8.
    """
    for name, value in (("num_frames", num_frames), ("feature_dim", feature_dim), ("hidden", hidden),
                        ("layers", layers), ("expansion", expansion), ("r_token", r_token), ("r_channel", r_channel)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    return MCMLPNet(_check_bits(bits), num_frames, feature_dim, hidden, layers, expansion, dropout,
                    _gate_list(gates), r_token, r_channel)


@register_model
class MCMSH(TorchHashModel):
    """MCMSH: MC-MLP encoder with L/M/S-RD gates; trained on the anchor graph (:mod:`vhindex.train.recipes`).

    Args:
        bits: code length (multiple of 8).
        num_frames: M.
        feature_dim: D.
        hidden: mixer width d (the teacher's width: the anchors live in its space).
        layers: mixer layers (released 1).
        heads: unused by MCMSH (the shared architecture's teacher parameter; accepted so that one
            ``model.params`` describes teacher and student).
        ffn: unused by MCMSH (as ``heads``).
        dropout: unused by MCMSH (the teacher's dropout, as ``heads``).
        mlp_dropout: dropout of the mixer MLPs (released 0.5).
        expansion: MLP expansion factor (released 2).
        gates: enabled gates, a subset of ``("lrd", "mrd", "srd")``; ``[]`` = the MLP-Mixer ablation.
        r_token: gate reduction inside the token block (released 4).
        r_channel: gate reduction inside the channel and final blocks (released 16).
        use_quad: train with L_quad (ablation switch read by the trainer).
        device: where ``.net`` lives (``None``/``"auto"``: CUDA when available).
    """

    name = "mcmsh"
    net: MCMLPNet

    def __init__(self, bits: int, num_frames: int = 25, feature_dim: int = 4096, hidden: int = 256, layers: int = 1,
                 heads: int = 1, ffn: int = 1024, dropout: float = 0.1, mlp_dropout: float = 0.5, expansion: int = 2,
                 gates: Sequence[str] = GATES, r_token: int = 4, r_channel: int = 16, use_quad: bool = True,
                 device: str | torch.device | None = None) -> None:
        gates = _gate_list(gates)
        super().__init__(bits, {"num_frames": num_frames, "feature_dim": feature_dim, "hidden": hidden,
                                "layers": layers, "heads": heads, "ffn": ffn, "dropout": dropout,
                                "mlp_dropout": mlp_dropout, "expansion": expansion, "gates": list(gates),
                                "r_token": r_token, "r_channel": r_channel, "use_quad": bool(use_quad)}, device)
        self.use_quad = bool(use_quad)
        self._finish_init(build_mcmsh(self.bits, num_frames, feature_dim, hidden=hidden, layers=layers,
                                      expansion=expansion, dropout=mlp_dropout, gates=gates, r_token=r_token,
                                      r_channel=r_channel))

    def latent_features(self, frames: np.ndarray) -> np.ndarray:
        """Mean over frames of the mixer states, float32 ``(B, hidden)``."""
        frames = self.check_frames(frames)
        return self._batched(frames, lambda x: self.net.states(x).mean(dim=1), self._arch["hidden"])

"""NPH (Li et al., ICCV 2019): neighbourhood-preserving hashing with a neighbourhood-attention LSTM.

Written from the paper (``shared/seeds/002``; no public code exists). A video's frames ``v_1..v_M``
go through an LSTM whose input is a *memory state* ``m_t`` updated by attention over the previous
memory and the new frame (eq. 3); at the first step the memory is the video's *neighbourhood
representation* ``n`` (eq. 4), so what the LSTM writes is conditioned on where the video sits
among the training set's anchors::

    y  = mean_t teacher(frames)                      # the shared teacher's latent feature (frozen)
    n  = FC([u_i1; ...; u_ia])                       # the a nearest K-means anchors of y (eq. 11)
    m_1 = Att(n, v'_1),  m_t = Att(m_{t-1}, v'_t)    # Att(m, v) = softmax(mWq ([m; v]Wk)^T / sqrt(dk)) [m; v]Wv
    i, f, o = sigmoid(W v_t + U h_{t-1})
    c_t = BN(f * c_{t-1} + i * MLP(m_t)),  h_t = o * tanh(c_t)
    t  = FC(h_M, K),  b = sgn(t)                      # the code (straight-through gradient)

Training (:func:`vhindex.models.losses.nph_loss`): ``0.1 L_s + 0.8 L_vr + 0.1 L_nr`` -- the
neighbourhood similarity of the relaxed codes against the graph's ``S`` (eq. 15), the reconstruction of
every frame by an LSTM decoder fed the code (eq. 16), and the reconstruction of ``n`` from the last
memory state (eq. 17).

Choices where the paper leaves room (documented and tested):

* **Spatial-temporal feature ``y`` and anchors.** NPH trains an LSTM autoencoder for ``y`` and runs
  K-means on it; vhindex uses the shared teacher (a masked-reconstruction transformer, the same
  unsupervised role) and the shared graph's K-means anchors of its embeddings, so NPH, BTH, DKPH and
  MCMSH learn from one neighbourhood structure. The teacher's encoder and the anchors are saved inside
  NPH's weights (frozen), because encoding a new video needs its neighbourhood.
* **Frame input to the attention.** ``[m; v]`` stacks the memory and the frame as two rows, which needs
  one width: frames are first mapped ``v' = Linear(D -> memory)(v)``. The LSTM gates read the raw
  ``v`` as eq. 5-7 write.
* **``S`` inside a step.** L_s sums over all pairs of the ``2B`` videos of a step (each video and its
  graph partner): ``S_ij = +1`` when the two share one of their ``a`` nearest anchors (the NPH rule,
  ``A_ij > 0``, eq. 13-14), else ``-1``; the sampled partner guarantees positives in every batch.
* **BN** is one ``BatchNorm1d`` over the cell state, shared by the time steps; ``MLP`` is
  ``Linear -> ReLU -> Linear``; dropout (the paper's "Drop-Out") is on ``h_M`` before the hash layer.
* **No frame masking** (NPH does not mask); the decoder is an ``LSTMCell`` fed its own previous output,
  starting from ``Linear(K -> D)(b)``.

Ablation switches (paper Table 3): ``attention="neighbour"`` (NPH), ``"self"`` (rRNN: the first memory is
a learned vector, not ``n`` -- "SelfAtt"), ``"none"`` (plain LSTM on ``v'`` -- "Plain"); ``use_ls`` /
``use_nr`` drop L_s / L_nr ("NPH-" is ``use_nr=False``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vhindex.models.base import _check_bits, register_model
from vhindex.models.learned import TorchHashModel
from vhindex.models.nets import FrameEncoder, _encoder, _positive_int, binarize

__all__ = ["ATTENTIONS", "NPH", "NPHNet", "NeighbourAttention", "build_nph", "shared_anchor_similarity"]

#: the encoder variants: NPH's neighbourhood attention, rRNN self-attention, a plain LSTM
ATTENTIONS = ("neighbour", "self", "none")


class NeighbourAttention(nn.Module):
    """One memory update ``m' = softmax(m Wq ([m; v] Wk)^T / sqrt(dk)) [m; v] Wv`` (NPH eq. 3 / 4).

    Args:
        memory: ``b``, the width of the memory and of the (projected) frame.
        key_dim: ``d^k`` (the scaling factor and the query / key width; paper 256).
    """

    def __init__(self, memory: int, key_dim: int) -> None:
        super().__init__()
        self.key_dim = key_dim
        self.query = nn.Linear(memory, key_dim, bias=False)
        self.key = nn.Linear(memory, key_dim, bias=False)
        self.value = nn.Linear(memory, memory, bias=False)

    def forward(self, m: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        rows = torch.stack([m, v], dim=1)                                   # (B, 2, b): [m; v]
        scores = torch.einsum("bk,brk->br", self.query(m), self.key(rows))  # (B, 2)
        weights = torch.softmax(scores / math.sqrt(self.key_dim), dim=-1)
        return torch.einsum("br,brc->bc", weights, self.value(rows))


class NPHNet(nn.Module):
    """The NPH encoder, decoders and frozen neighbourhood (teacher encoder + anchors); see the module docstring.

    ``forward(frames)`` returns ``t`` (relaxed code), ``b`` (code), ``recon`` ``(B, M, D)``, ``n`` / ``n_rec``
    (neighbourhood representation and its reconstruction; absent without neighbourhood attention) and
    ``anchor_ids`` ``(B, a)`` (the nearest anchors, nearest first).
    """

    def __init__(self, teacher: FrameEncoder, num_anchors: int, bits: int, *, neighbours: int, memory: int,
                 lstm_hidden: int, key_dim: int, dropout: float, attention: str) -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention={attention!r}; choose from {list(ATTENTIONS)}")
        if neighbours > num_anchors:
            raise ValueError(f"neighbours={neighbours} exceeds num_anchors={num_anchors}")
        self.bits, self.attention, self.neighbours = bits, attention, neighbours
        self.num_frames, self.feature_dim = teacher.num_frames, teacher.feature_dim
        d = teacher.hidden
        self.teacher = teacher.requires_grad_(False)
        self.register_buffer("anchors", torch.zeros(num_anchors, d))
        self.frame_in = nn.Linear(self.feature_dim, memory)
        self.neighbourhood = nn.Linear(neighbours * d, memory)
        self.first_memory = nn.Parameter(torch.randn(memory) / math.sqrt(memory))
        self.attend = NeighbourAttention(memory, key_dim)
        self.gates_v = nn.Linear(self.feature_dim, 3 * lstm_hidden)
        self.gates_h = nn.Linear(lstm_hidden, 3 * lstm_hidden, bias=False)
        self.write = nn.Sequential(nn.Linear(memory, lstm_hidden), nn.ReLU(), nn.Linear(lstm_hidden, lstm_hidden))
        self.cell_norm = nn.BatchNorm1d(lstm_hidden)
        self.drop = nn.Dropout(dropout)
        self.hash = nn.Linear(lstm_hidden, bits)
        self.dec_in = nn.Linear(bits, self.feature_dim)
        self.decoder = nn.LSTMCell(self.feature_dim, lstm_hidden)
        self.dec_out = nn.Linear(lstm_hidden, self.feature_dim)
        self.n_rec = nn.Linear(memory, memory)
        self.lstm_hidden = lstm_hidden

    def train(self, mode: bool = True) -> NPHNet:
        """Train mode for NPH's layers; the frozen teacher stays in eval mode (no dropout in ``y``)."""
        super().train(mode)
        self.teacher.eval()
        return self

    def nearest_anchors(self, frames: Tensor) -> Tensor:
        """``(B, a)`` ids of the ``a`` anchors nearest (l2) to the teacher's latent feature, nearest first."""
        with torch.no_grad():
            y = self.teacher(frames).mean(dim=1)
            dist = torch.cdist(y, self.anchors)
            return torch.topk(dist, self.neighbours, dim=1, largest=False).indices

    def _encoder_pass(self, frames: Tensor) -> dict[str, Tensor]:
        """The encoder: ``t``, the last memory ``m`` and the nearest anchors (+ ``n`` with neighbourhood attention)."""
        self.teacher.check_input(frames)
        batch = frames.shape[0]
        ids = self.nearest_anchors(frames)
        v_in = self.frame_in(frames)                                          # (B, M, b)
        gates_v = self.gates_v(frames)                                        # (B, M, 3H)
        out: dict[str, Tensor] = {"anchor_ids": ids}
        if self.attention == "neighbour":
            m = out["n"] = self.neighbourhood(self.anchors[ids].reshape(batch, -1))
        else:
            m = self.first_memory.expand(batch, -1)
        h = frames.new_zeros(batch, self.lstm_hidden)
        c = frames.new_zeros(batch, self.lstm_hidden)
        for step in range(self.num_frames):
            if self.attention == "none":
                written = v_in[:, step]
            else:
                m = written = self.attend(m, v_in[:, step])
            i, f, o = torch.sigmoid(gates_v[:, step] + self.gates_h(h)).chunk(3, dim=1)
            c = self.cell_norm(f * c + i * self.write(written))
            h = o * torch.tanh(c)
        out["t"], out["memory"] = self.hash(self.drop(h)), m
        return out

    def forward(self, frames: Tensor) -> dict[str, Tensor]:  # noqa: D102
        out = self._encoder_pass(frames)
        out["b"] = binarize(out["t"])
        out["recon"] = self.decode(out["b"])
        if self.attention == "neighbour":
            out["n_rec"] = self.n_rec(out["memory"])
        return out

    def decode(self, codes: Tensor) -> Tensor:
        """The LSTM decoder: ``v~_0 = Linear(K -> D)(b)``, then each output is the next input; ``(B, M, D)``."""
        x = self.dec_in(codes)
        state = None
        frames = []
        for _ in range(self.num_frames):
            state = self.decoder(x, state)
            x = self.dec_out(state[0])
            frames.append(x)
        return torch.stack(frames, dim=1)

    def encode(self, frames: Tensor) -> Tensor:
        """Relaxed codes ``t`` ``(B, K)`` (the decoders do not run); their ``> 0`` pattern is the code."""
        return self._encoder_pass(frames)["t"]


def shared_anchor_similarity(ids_a: Tensor, ids_b: Tensor) -> Tensor:
    """NPH's ``S`` between two sets of videos: ``+1`` where they share one of their nearest anchors, else ``-1``.

    Args:
        ids_a: ``(P, a)`` anchor ids.
        ids_b: ``(Q, a)`` anchor ids.

    Returns:
        ``(P, Q)`` float in {-1, +1} (``A_ij > 0`` of eq. 14 iff a shared anchor).
    """
    shared = (ids_a[:, None, :, None] == ids_b[None, :, None, :]).any(dim=3).any(dim=2)
    return shared.to(torch.float32) * 2.0 - 1.0


def build_nph(bits: int, num_frames: int, feature_dim: int, *, hidden: int = 256, layers: int = 1, heads: int = 1,
              ffn: int = 1024, num_anchors: int = 2000, neighbours: int = 3, memory: int = 256,
              lstm_hidden: int = 256, key_dim: int = 256, nph_dropout: float = 0.5,
              attention: str = "neighbour") -> NPHNet:
    """:class:`NPHNet` with checked arguments (teacher architecture = the shared BTH teacher's).

    Raises:
        ValueError: a non-positive size, bits not a multiple of 8, an unknown attention variant.
    """
    for name, value in (("num_anchors", num_anchors), ("neighbours", neighbours), ("memory", memory),
                        ("lstm_hidden", lstm_hidden), ("key_dim", key_dim)):
        _positive_int(name, value)
    if not 0.0 <= float(nph_dropout) < 1.0:
        raise ValueError(f"nph_dropout must be in [0, 1), got {nph_dropout!r}")
    teacher = _encoder(num_frames, feature_dim, hidden, layers, heads, ffn, 0.0)
    return NPHNet(teacher, num_anchors, _check_bits(bits), neighbours=neighbours, memory=memory,
                  lstm_hidden=lstm_hidden, key_dim=key_dim, dropout=float(nph_dropout), attention=attention)


@register_model
class NPH(TorchHashModel):
    """NPH: neighbourhood-attention LSTM hasher; trained by :mod:`vhindex.train.recipes` (``model.name=nph``).

    Args:
        bits: code length (multiple of 8).
        num_frames: M.
        feature_dim: D.
        hidden: the teacher's width d (the anchors live in its space).
        layers: teacher transformer blocks.
        heads: teacher attention heads.
        ffn: teacher FFN size.
        dropout: the teacher's training dropout (unused here: the teacher is frozen and runs in eval mode).
        num_anchors: n, anchors in the neighbourhood table (the graph's; set by the trainer).
        neighbours: a, nearest anchors per video (paper 3).
        memory: b, memory / neighbourhood width (paper 256).
        lstm_hidden: LSTM width.
        key_dim: d^k (paper 256).
        nph_dropout: dropout on the last hidden state.
        attention: ``"neighbour"`` (NPH), ``"self"`` (SelfAtt ablation) or ``"none"`` (plain LSTM).
        use_ls: train with L_s (ablation switch read by the trainer).
        use_nr: train with L_nr ("NPH-" is ``False``; ignored without neighbourhood attention).
        device: where ``.net`` lives (``None``/``"auto"``: CUDA when available).
    """

    name = "nph"
    net: NPHNet

    def __init__(self, bits: int, num_frames: int = 25, feature_dim: int = 4096, hidden: int = 256, layers: int = 1,
                 heads: int = 1, ffn: int = 1024, dropout: float = 0.1, num_anchors: int = 2000, neighbours: int = 3,
                 memory: int = 256, lstm_hidden: int = 256, key_dim: int = 256, nph_dropout: float = 0.5,
                 attention: str = "neighbour", use_ls: bool = True, use_nr: bool = True,
                 device: str | torch.device | None = None) -> None:
        super().__init__(bits, {"num_frames": num_frames, "feature_dim": feature_dim, "hidden": hidden,
                                "layers": layers, "heads": heads, "ffn": ffn, "dropout": dropout,
                                "num_anchors": num_anchors, "neighbours": neighbours, "memory": memory,
                                "lstm_hidden": lstm_hidden, "key_dim": key_dim, "nph_dropout": nph_dropout,
                                "attention": attention, "use_ls": bool(use_ls), "use_nr": bool(use_nr)}, device)
        self.use_ls, self.use_nr = bool(use_ls), bool(use_nr) and attention == "neighbour"
        self._finish_init(build_nph(self.bits, num_frames, feature_dim, hidden=hidden, layers=layers, heads=heads,
                                    ffn=ffn, num_anchors=num_anchors, neighbours=neighbours, memory=memory,
                                    lstm_hidden=lstm_hidden, key_dim=key_dim, nph_dropout=nph_dropout,
                                    attention=attention))

    def attach_neighbourhood(self, teacher_state: dict[str, Any], anchors: np.ndarray) -> None:
        """Load the frozen teacher encoder (a BTH net's ``encoder.*`` weights) and the anchor table.

        Raises:
            ValueError: the anchors' shape is not ``(num_anchors, hidden)`` or the teacher does not fit.
        """
        anchors = np.array(anchors, dtype=np.float32)  # a writable copy (graph arrays may be read-only)
        if anchors.shape != tuple(self.net.anchors.shape):
            raise ValueError(f"nph: anchors have shape {anchors.shape}, the model expects "
                             f"{tuple(self.net.anchors.shape)} (num_anchors, hidden)")
        state = {k[len("encoder."):]: torch.as_tensor(np.asarray(v)) for k, v in teacher_state.items()
                 if k.startswith("encoder.")}
        try:
            self.net.teacher.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"nph: the teacher's encoder does not match hidden/layers/heads/ffn "
                             f"{ {k: self._arch[k] for k in ('hidden', 'layers', 'heads', 'ffn')} }: {err}") from err
        self.net.anchors.copy_(torch.from_numpy(anchors))

    def loss_kwargs(self) -> dict[str, bool]:
        """The ablation switches as keyword arguments of :func:`~vhindex.models.losses.nph_loss`."""
        return {"use_ls": self.use_ls, "use_nr": self.use_nr}

    def latent_features(self, frames: np.ndarray) -> np.ndarray:
        """The frozen teacher's latent feature ``y`` (mean over frames), float32 ``(B, hidden)``."""
        frames = self.check_frames(frames)
        return self._batched(frames, lambda x: self.net.teacher(x).mean(dim=1), self._arch["hidden"])

    def neighbourhood_ids(self, frames: np.ndarray) -> np.ndarray:
        """The ``a`` nearest anchors of each video, int64 ``(B, a)`` nearest first."""
        frames = self.check_frames(frames)
        return self._batched(frames, lambda x: self.net.nearest_anchors(x).float(),
                             self._arch["neighbours"]).astype(np.int64)


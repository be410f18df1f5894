"""Torch networks of the learned hashers: BTH (teacher / baseline) and DKPH (dual-stream student).

Both reproduce the released code (``Shuyan98/BTH`` @c97db40, ``IMCCretrieval/DKPH`` @66fa2c0; see
``reference/methods-and-results.md`` §3-§4) with the frame count ``M``, feature size ``D``, width
``d``, depth, heads and FFN size as parameters instead of constants.

Shared encoder (:class:`FrameEncoder`, the released ``BERT``)::

    frames (B, M, D) -> Linear(D -> d) + fixed sinusoidal positions -> dropout
                     -> `layers` x pre-LN transformer block -> hidden (B, M, d)

Each block is ``x = x + drop(attn(LN(x))); x = x + drop(FFN(LN(x))); x = drop(x)`` with
attention-probability dropout, FFN ``Linear(d -> ffn) -> GELU(tanh) -> dropout -> Linear(ffn -> d)``
and no final LayerNorm, as released. Differences from the released modules, all numerically
minor: ``nn.LayerNorm(eps=1e-6)`` (biased variance inside the square root) instead of the released
``a * (x - mean) / (std_unbiased + 1e-6) + b``; positions are computed for exactly ``M`` frames
(released: a 512-row table, of which the first ``M`` rows are used -- identical values).

* :class:`BTHNet` -- per-frame hash ``Linear(d -> K)`` + :func:`binarize`, per-frame "restore"
  decoder ``Linear(K -> D)``; video code at test time = ``sign(mean over frames)``.
* :class:`DKPHNet` -- hash layer ``Linear(M*d -> K)`` on the flattened hidden states (one code per
  video), temporal layer ``Linear(d -> K)`` per frame, decoder ``Linear(K -> D)`` applied to
  ``code`` broadcast over frames ``+ temporal``. Option ``hash_input="mean"`` (not in the released
  code): the hash layer is ``Linear(d -> K)`` on the mean over frames of the hidden states, so its
  pooling -- like BTH's mean of per-frame codes -- does not tie hash weights to frame positions
  (the encoder's positional embeddings still make the hidden states position-aware, in both nets).

:func:`mask_frames` is the BERT-style frame masking of the released data loaders.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vhindex.models.base import _check_bits

__all__ = [
    "KEPT",
    "REPLACED",
    "UNTOUCHED",
    "ZEROED",
    "BTHNet",
    "DKPHNet",
    "HASH_INPUTS",
    "FrameEncoder",
    "STESign",
    "TransformerBlock",
    "binarize",
    "build_bth",
    "build_dkph",
    "mask_frames",
    "mask_plan",
    "sinusoidal_positions",
]


# ---------------------------------------------------------------------- binarisation


class STESign(torch.autograd.Function):
    """Binarisation ``x -> {-1, +1}`` with the released straight-through gradient.

    Released code (BTH ``binary_tanh_unit`` / DKPH ``binarization`` + ``Round3``/``BNet``)::

        y = (x + 1) / 2;  y[y > 1] = 1;  y[y < 0] = 0      # "hard sigmoid", clamped IN PLACE
        out = 2 * Round(y) - 1                              # Round: forward torch.round,
                                                            # backward grad * (y != 0)

    Forward, reproduced with the same float32 operations: ``+1`` iff ``round((x + 1) / 2) == 1``.
    ``torch.round`` rounds half to even, so ``x == 0`` (``y == 0.5``) gives ``-1``; so does any
    positive ``x`` too small to change ``x + 1`` in floating point (e.g. ``1e-8`` in float32).
    Otherwise ``x > 0 -> +1``, ``x < 0 -> -1``.

    Backward: the factors 2 and 1/2 cancel, so ``dL/dx = dL/dout`` where ``-1 < x <= 1`` and ``0``
    elsewhere: the in-place assignments zero the gradient where ``x > 1`` (``y > 1``) and
    ``x < -1`` (``y < 0``), and ``Round``'s mask zeroes it where ``y == 0``, i.e. also at
    ``x == -1`` exactly. ``x == +1`` passes its gradient (``y == 1`` is not ``> 1``).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # noqa: D102
        y = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
        ctx.save_for_backward((x > -1.0) & (x <= 1.0))
        return 2.0 * torch.round(y) - 1.0

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:  # noqa: D102
        (passes,) = ctx.saved_tensors
        return grad_output * passes.to(grad_output.dtype)


def binarize(x: Tensor) -> Tensor:
    """``{-1, +1}`` codes of ``x`` with the released straight-through gradient (:class:`STESign`)."""
    return STESign.apply(x)


# ---------------------------------------------------------------------- encoder


def sinusoidal_positions(num_positions: int, dim: int) -> Tensor:
    """The fixed ``(num_positions, dim)`` sin/cos table of the released ``PositionalEmbedding``.

    ``pe[p, 2i] = sin(p * w_i)``, ``pe[p, 2i+1] = cos(p * w_i)``, ``w_i = 10000^(-2i/dim)``.
    """
    position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    pe = torch.zeros(num_positions, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term[: dim // 2])
    return pe


class SelfAttention(nn.Module):
    """Multi-head self-attention: q/k/v ``Linear(d -> d)``, scaled dot product with dropout on the
    attention probabilities, output ``Linear(d -> d)`` (the released ``MultiHeadedAttention``)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, m, d = x.shape
        q, k, v = (
            proj(x).view(b, m, self.heads, d // self.heads).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, m, d))


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + drop(attn(LN(x)))``, ``x + drop(FFN(LN(x)))``, then dropout."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.attention = SelfAttention(hidden, heads, dropout)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, ffn), nn.GELU(approximate="tanh"), nn.Dropout(dropout), nn.Linear(ffn, hidden)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = x + self.dropout(self.attention(self.norm1(x)))
        x = x + self.dropout(self.ffn(self.norm2(x)))
        return self.dropout(x)


class FrameEncoder(nn.Module):
    """Frame features ``(B, M, D)`` -> contextual frame embeddings ``(B, M, d)``.

    Args:
        feature_dim: D, the size of one frame feature.
        num_frames: M, frames per video (the position table has exactly M rows).
        hidden: d, the transformer width.
        layers: number of transformer blocks.
        heads: attention heads (must divide ``hidden``).
        ffn: FFN inner size.
        dropout: dropout rate (embeddings, attention probabilities, FFN, residual branches).
    """

    def __init__(
        self, feature_dim: int, num_frames: int, hidden: int = 256, layers: int = 1, heads: int = 1,
        ffn: int = 1024, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.feature_dim, self.num_frames, self.hidden = feature_dim, num_frames, hidden
        self.frame_map = nn.Linear(feature_dim, hidden)
        self.register_buffer("positions", sinusoidal_positions(num_frames, hidden), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, heads, ffn, dropout) for _ in range(layers))

    def check_input(self, frames: Tensor) -> None:
        """Raise ``ValueError`` unless ``frames`` is ``(B, M, D)`` with this encoder's M and D."""
        if frames.ndim != 3 or frames.shape[1] != self.num_frames or frames.shape[2] != self.feature_dim:
            raise ValueError(
                f"{type(self).__name__}: frames must have shape (B, M={self.num_frames}, D={self.feature_dim}), "
                f"got {tuple(frames.shape)}; build the network with the M and D of your features"
            )

    def forward(self, frames: Tensor) -> Tensor:  # noqa: D102
        self.check_input(frames)
        x = self.dropout(self.frame_map(frames) + self.positions)
        for block in self.blocks:
            x = block(x)
        return x


# ---------------------------------------------------------------------- hashing nets


class BTHNet(nn.Module):
    """BTH: shared encoder, per-frame binary layer ``Linear(d -> K)`` and "restore" ``Linear(K -> D)``.

    ``forward`` returns a dict:

    * ``hidden`` ``(B, M, d)`` -- encoder output (its mean over frames is the teacher's latent feature);
    * ``frame_logits`` ``(B, M, K)``; ``frame_codes`` ``(B, M, K)`` = :func:`binarize` of them;
    * ``video_code`` ``(B, K)`` = mean of ``frame_codes`` over frames (real-valued in [-1, 1]);
    * ``recon`` ``(B, M, D)`` = restore(``frame_codes``), per frame.
    """

    def __init__(self, encoder: FrameEncoder, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.encoder = encoder
        self.binary = nn.Linear(encoder.hidden, bits)
        self.restore = nn.Linear(bits, encoder.feature_dim)

    def forward(self, frames: Tensor) -> dict[str, Tensor]:  # noqa: D102
        hidden = self.encoder(frames)
        frame_logits = self.binary(hidden)
        frame_codes = binarize(frame_logits)
        return {
            "hidden": hidden,
            "frame_logits": frame_logits,
            "frame_codes": frame_codes,
            "video_code": frame_codes.mean(dim=1),
            "recon": self.restore(frame_codes),
        }

    def encode(self, frames: Tensor) -> Tensor:
        """Mean over frames of the per-frame codes ``(B, K)`` (no decoder; the sign is the code)."""
        return binarize(self.binary(self.encoder(frames))).mean(dim=1)


#: Inputs of the DKPH hash layer: ``"flatten"`` (released) or ``"mean"`` (see :class:`DKPHNet`).
HASH_INPUTS = ("flatten", "mean")


class DKPHNet(nn.Module):
    """DKPH dual stream: hash layer ``Linear(M*d -> K)`` + temporal layer ``Linear(d -> K)`` + decoder.

    ``forward`` returns a dict:

    * ``hidden`` ``(B, M, d)`` -- encoder output E;
    * ``logits`` ``(B, K)`` -- hash layer on the flattened (or mean-pooled) E; ``code`` ``(B, K)`` =
      :func:`binarize`;
    * ``temporal`` ``(B, M, K)`` -- temporal layer per frame (zeros when built with ``temporal=False``);
    * ``recon`` ``(B, M, D)`` -- decoder(``code`` broadcast over frames ``+ temporal``).

    ``hash_input="mean"`` (not released) makes the hash layer ``Linear(d -> K)`` on the mean of E over
    frames instead: a permutation of the hidden states then leaves the code unchanged, whereas the
    released ``"flatten"`` ties each block of hash weights to one frame position.
    """

    def __init__(self, encoder: FrameEncoder, bits: int, temporal: bool = True,
                 hash_input: str = "flatten") -> None:
        super().__init__()
        if hash_input not in HASH_INPUTS:
            raise ValueError(f"hash_input must be one of {HASH_INPUTS}, got {hash_input!r}")
        self.bits = bits
        self.hash_input = hash_input
        self.encoder = encoder
        in_features = encoder.hidden if hash_input == "mean" else encoder.num_frames * encoder.hidden
        self.hash = nn.Linear(in_features, bits)
        self.temporal = nn.Linear(encoder.hidden, bits) if temporal else None
        self.decoder = nn.Linear(bits, encoder.feature_dim)

    def _code(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        pooled = hidden.mean(dim=1) if self.hash_input == "mean" else hidden.reshape(hidden.shape[0], -1)
        logits = self.hash(pooled)
        return logits, binarize(logits)

    def forward(self, frames: Tensor) -> dict[str, Tensor]:  # noqa: D102
        hidden = self.encoder(frames)
        logits, code = self._code(hidden)
        if self.temporal is not None:
            temporal = self.temporal(hidden)
        else:
            temporal = hidden.new_zeros(hidden.shape[0], hidden.shape[1], self.bits)
        recon = self.decoder(code.unsqueeze(1) + temporal)
        return {"hidden": hidden, "logits": logits, "code": code, "temporal": temporal, "recon": recon}

    def encode(self, frames: Tensor) -> Tensor:
        """The video codes ``(B, K)`` in {-1, +1} (hash stream only; no temporal layer, no decoder)."""
        return self._code(self.encoder(frames))[1]


# ---------------------------------------------------------------------- builders


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _encoder(num_frames: int, feature_dim: int, hidden: int, layers: int, heads: int, ffn: int,
             dropout: float) -> FrameEncoder:
    for name, value in (("num_frames", num_frames), ("feature_dim", feature_dim), ("hidden", hidden),
                        ("layers", layers), ("heads", heads), ("ffn", ffn)):
        _positive_int(name, value)
    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    return FrameEncoder(feature_dim, num_frames, hidden, layers, heads, ffn, float(dropout))


def build_bth(bits: int, num_frames: int, feature_dim: int, *, hidden: int = 256, layers: int = 1,
              heads: int = 1, ffn: int = 1024, dropout: float = 0.1) -> BTHNet:
    """A :class:`BTHNet` (released setting: ``hidden=256, layers=1, heads=1, ffn=1024, dropout=0.1``).

    Args:
        bits: K, a positive multiple of 8.
        num_frames: M.
        feature_dim: D.
        hidden: d.
        layers: transformer blocks.
        heads: attention heads (divides ``hidden``).
        ffn: FFN inner size.
        dropout: dropout rate.

    Raises:
        ValueError: a non-positive size, ``bits`` not a multiple of 8, ``heads`` not dividing ``hidden``.
    """
    bits = _check_bits(bits)
    return BTHNet(_encoder(num_frames, feature_dim, hidden, layers, heads, ffn, dropout), bits)


def build_dkph(bits: int, num_frames: int, feature_dim: int, *, hidden: int = 256, layers: int = 1,
               heads: int = 1, ffn: int = 1024, dropout: float = 0.1, temporal: bool = True,
               hash_input: str = "flatten") -> DKPHNet:
    """A :class:`DKPHNet`; ``temporal=False`` is the "no temporal layer" ablation.

    Args:
        bits: K, a positive multiple of 8.
        num_frames: M (with ``hash_input="flatten"`` the hash layer has ``M * hidden`` inputs).
        feature_dim: D.
        hidden: d.
        layers: transformer blocks.
        heads: attention heads (divides ``hidden``).
        ffn: FFN inner size.
        dropout: dropout rate.
        temporal: build the temporal layer (otherwise the decoder sees the code alone).
        hash_input: ``"flatten"`` (released: hash layer ``Linear(M*d -> K)`` on the flattened hidden
            states) or ``"mean"`` (``Linear(d -> K)`` on their mean over frames).

    Raises:
        ValueError: as :func:`build_bth`, or an unknown ``hash_input``.
    """
    bits = _check_bits(bits)
    if hash_input not in HASH_INPUTS:
        raise ValueError(f"hash_input must be one of {HASH_INPUTS}, got {hash_input!r}")
    return DKPHNet(_encoder(num_frames, feature_dim, hidden, layers, heads, ffn, dropout), bits, bool(temporal),
                   hash_input)


# ---------------------------------------------------------------------- masking


#: :func:`mask_plan` actions per frame.
UNTOUCHED, ZEROED, REPLACED, KEPT = 0, 1, 2, 3


def mask_plan(batch: int, num_frames: int, pool_size: int, generator: torch.Generator,
              prob: float = 0.15) -> tuple[Tensor, Tensor]:
    """The random choices of :func:`mask_frames`, on the CPU.

    For every frame one uniform ``u`` is drawn: the frame is selected when ``u < prob``; a selected
    frame is zeroed when ``u / prob < 0.8`` (80%), replaced when ``u / prob < 0.9`` (10%) and kept
    otherwise (10%) -- the released loaders' rule. Replacement rows are drawn uniformly from
    ``range(pool_size)`` for every frame (used only where the action is ``REPLACED``), so the
    generator advances by the same amount whatever the outcome.

    Args:
        batch: B.
        num_frames: M.
        pool_size: P, rows of the replacement pool.
        generator: a CPU ``torch.Generator``.
        prob: selection probability per frame, in [0, 1].

    Returns:
        ``(action, idx)``: ``int64`` ``(B, M)`` tensors; ``action`` in {``UNTOUCHED``, ``ZEROED``,
        ``REPLACED``, ``KEPT``}, ``idx`` the replacement row of each frame.

    Raises:
        ValueError: ``prob`` outside [0, 1] or an empty pool.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mask_frames: prob must be in [0, 1], got {prob!r}")
    if pool_size <= 0:
        raise ValueError("mask_frames: the replacement pool is empty")
    u = torch.rand((batch, num_frames), generator=generator)
    idx = torch.randint(pool_size, (batch, num_frames), generator=generator)
    action = torch.full((batch, num_frames), UNTOUCHED, dtype=torch.int64)
    if prob > 0.0:
        r = u / prob
        selected = u < prob
        action[selected] = KEPT
        action[selected & (r < 0.9)] = REPLACED
        action[selected & (r < 0.8)] = ZEROED
    return action, idx


def mask_frames(frames: Tensor, generator: torch.Generator, prob: float = 0.15,
                replace_pool: Tensor | None = None) -> Tensor:
    """BERT-style frame masking of the released data loaders; returns a new tensor.

    Each frame is selected with probability ``prob``; of the selected frames 80% are zeroed, 10%
    replaced by a random row of ``replace_pool`` and 10% kept (see :func:`mask_plan`).
    Reconstruction targets are the original frames: ``frames`` is not modified. (The released
    loaders mask a *view* of the stored features in place, so their targets are the masked frames
    and the stored features degrade over epochs; this function does not reproduce that.)

    Args:
        frames: ``(B, M, D)`` batch.
        generator: a CPU ``torch.Generator`` -- the only source of randomness, so a seeded generator
            gives the same mask on any device.
        prob: selection probability per frame, in [0, 1].
        replace_pool: ``(P, D)`` frames to draw replacements from (released: a random frame of a random
            training video); ``None`` uses the frames of this batch.

    Raises:
        ValueError: wrong shapes, ``prob`` outside [0, 1] or an empty pool.
    """
    if frames.ndim != 3:
        raise ValueError(f"mask_frames: frames must be (B, M, D), got shape {tuple(frames.shape)}")
    b, m, d = frames.shape
    pool = frames.detach().reshape(-1, d) if replace_pool is None else replace_pool
    if pool.ndim != 2 or pool.shape[1] != d:
        raise ValueError(f"mask_frames: replace_pool must be a (P, D={d}) tensor, got {tuple(pool.shape)}")
    action, idx = mask_plan(b, m, pool.shape[0], generator, prob)
    out = frames.clone()
    out[(action == ZEROED).to(out.device)] = 0
    replace = action == REPLACED
    if bool(replace.any()):
        rows = pool[idx[replace].to(pool.device)]
        out[replace.to(out.device)] = rows.to(device=out.device, dtype=out.dtype)
    return out

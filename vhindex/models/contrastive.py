"""Masked-video contrastive hashers: ConMH (``"conmh"``) and vhindex's own GCMH (``"gcmh"``).

Both are one network, :class:`MaskedHashNet`, built with different parameters (a builder, not copied
classes):

* **Encoder** -- ``Linear(D -> width)`` + fixed sin/cos frame positions, ``depth`` pre-LayerNorm
  transformer blocks (``heads`` heads, MLP ratio 4, LayerNorm eps 1e-6) over the **visible frames
  only** (the masked ones are dropped, not zeroed), a final LayerNorm and ``Linear(width -> width)``.
* **Hash head** -- ``Linear(width -> K)`` -> ``LayerNorm(K)`` -> ``{-1, +1}`` with the released
  straight-through gradient (:func:`vhindex.models.nets.binarize`). ``pooling`` says where the video
  code comes from:

  - ``"mean_codes"`` (ConMH): every visible frame gets a code; the video code is their mean
    (real-valued in training, its sign at test time);
  - ``"attention"`` (GCMH): a learned attention over the visible frames' states
    (``softmax_t(v . tanh(W h_t))``) pools them into one video state, which is hashed once. Frames
    that do not carry the video's content (title cards, empty shots) can get ~0 weight, which a mean
    cannot do.

* **Decoder** (training only) -- the visible frames' codes (``mean_codes``) or states (``attention``)
  mapped to ``dec_width`` (no bias), learned mask tokens at the masked positions, fixed positions,
  ``dec_depth`` blocks and ``Linear(dec_width -> D)``: it predicts the masked frames' features.

Training (:mod:`vhindex.train.contrastive`) feeds two views of every clip with *disjoint* visible
frame sets (:func:`two_view_masks`) and minimises masked-frame reconstruction plus a contrastive
loss between the two views' codes (:func:`vhindex.models.losses.dcl_loss`); GCMH adds
anchor-graph neighbours as extra positives and code balance / decorrelation terms
(:func:`vhindex.models.losses.gcmh_loss`). At test time every frame is visible.

ConMH "small" as released (``huangmozhi9527/ConMH``): width 256, depth 12, 6 heads, decoder 192 x 2
blocks x 3 heads, mask ratio 0.75, DCL temperature 0.5 and tau+ 0.1, weight 1.0, Adam 1e-4.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vhindex.models.base import register_model
from vhindex.models.learned import TorchHashModel
from vhindex.models.nets import binarize, sinusoidal_positions

__all__ = ["ConMH", "GCMH", "MaskedHashNet", "build_masked_hash_net", "two_view_masks"]

POOLINGS = ("mean_codes", "attention")


class Attention(nn.Module):
    """Multi-head self-attention with ``head_dim = width // heads`` (ConMH "small" runs 6 heads of 42 on
    width 256: the heads need not divide the width), qkv with bias, output ``Linear(heads*head_dim -> width)``."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(width, 3 * inner)
        self.proj = nn.Linear(inner, width)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class PreLNBlock(nn.Module):
    """``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU, ratio ``mlp_ratio``), LayerNorm eps 1e-6."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _gather_frames(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b, j]]`` for ``x`` ``(B, M, C)`` and ``idx`` ``(B, V)`` -> ``(B, V, C)``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MaskedHashNet(nn.Module):
    """Encoder over visible frames, hash head, and a masked-frame decoder (see the module docstring).

    Args:
        bits: K.
        num_frames: M.
        feature_dim: D.
        width: encoder width.
        depth: encoder blocks.
        heads: encoder attention heads.
        dec_width: decoder width.
        dec_depth: decoder blocks.
        dec_heads: decoder heads.
        pooling: ``"mean_codes"`` (ConMH) or ``"attention"``.
        dropout: dropout in the blocks (training only).
    """

    def __init__(self, bits: int, num_frames: int, feature_dim: int, *, width: int, depth: int, heads: int,
                 dec_width: int, dec_depth: int, dec_heads: int, pooling: str, dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        for name, value, div in (("width", width, heads), ("dec_width", dec_width, dec_heads)):
            if value < div:
                raise ValueError(f"{name}={value} must be at least its number of heads ({div})")
        self.bits, self.num_frames, self.feature_dim, self.pooling = bits, num_frames, feature_dim, pooling
        self.embed = nn.Linear(feature_dim, width)
        self.register_buffer("pos", sinusoidal_positions(num_frames, width), persistent=False)
        self.blocks = nn.ModuleList(PreLNBlock(width, heads, dropout=dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, width)
        if pooling == "attention":
            self.attn_score = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1, bias=False))
        self.hash = nn.Linear(width, bits)
        self.hash_norm = nn.LayerNorm(bits)
        dec_in = bits if pooling == "mean_codes" else width
        self.to_decoder = nn.Linear(dec_in, dec_width, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_width))
        self.register_buffer("dec_pos", sinusoidal_positions(num_frames, dec_width), persistent=False)
        self.dec_blocks = nn.ModuleList(PreLNBlock(dec_width, dec_heads, dropout=dropout) for _ in range(dec_depth))
        self.dec_norm = nn.LayerNorm(dec_width, eps=1e-6)
        self.dec_head = nn.Linear(dec_width, feature_dim)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)

    # ------------------------------------------------------------------ parts

    def states(self, frames: Tensor, visible: Tensor | None = None) -> Tensor:
        """Encoder states ``(B, V, width)`` of the visible frames (all ``M`` when ``visible`` is None)."""
        pos = self.pos.to(frames.dtype).unsqueeze(0).expand(frames.shape[0], -1, -1)
        if visible is not None:  # embed only the visible frames (the masked ones are dropped, not zeroed)
            frames, pos = _gather_frames(frames, visible), _gather_frames(pos, visible)
        x = self.embed(frames) + pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def frame_weights(self, states: Tensor) -> Tensor:
        """Attention pooling weights ``(B, V)`` (``pooling="attention"`` only), summing to 1 per video."""
        return torch.softmax(self.attn_score(states).squeeze(-1), dim=1)

    def code_scores(self, states: Tensor) -> tuple[Tensor, Tensor]:
        """``(video code (B, K) real, per-frame codes (B, V, K) or pooled state (B, 1, width))``.

        ``mean_codes``: the mean of the visible frames' {-1, +1} codes (the test-time code is its sign).
        ``attention``: the {-1, +1} code of the attention-pooled state.
        """
        if self.pooling == "mean_codes":
            codes = binarize(self.hash_norm(self.hash(states)))
            return codes.mean(dim=1), codes
        pooled = (self.frame_weights(states).unsqueeze(-1) * states).sum(dim=1)
        return binarize(self.hash_norm(self.hash(pooled))), pooled.unsqueeze(1)

    def decode(self, carried: Tensor, visible: Tensor, masked: Tensor) -> Tensor:
        """Predicted features ``(B, Mm, D)`` of the masked frames from what the visible frames carry
        (their codes, or their states)."""
        b = carried.shape[0]
        pos = self.dec_pos.to(carried.dtype).unsqueeze(0).expand(b, -1, -1)
        vis = self.to_decoder(carried) + _gather_frames(pos, visible)
        tok = self.mask_token.to(carried.dtype).expand(b, masked.shape[1], -1) + _gather_frames(pos, masked)
        x = torch.cat([vis, tok], dim=1)
        for block in self.dec_blocks:
            x = block(x)
        return self.dec_head(self.dec_norm(x[:, -masked.shape[1]:]))

    # ------------------------------------------------------------------ training / test

    def forward(self, frames: Tensor, visible: Tensor, masked: Tensor) -> dict[str, Tensor]:
        """One masked view: ``code`` (B, K) real, ``recon`` (B, Mm, D) of the masked frames, ``target``
        (their true features) and ``states`` (B, V, width)."""
        states = self.states(frames, visible)
        code, per_frame = self.code_scores(states)
        carried = per_frame if self.pooling == "mean_codes" else states
        return {"code": code, "recon": self.decode(carried, visible, masked),
                "target": _gather_frames(frames, masked), "states": states}

    def encode(self, frames: Tensor) -> Tensor:
        """Test-time real-valued ``(B, K)`` whose sign is the code (every frame visible)."""
        return self.code_scores(self.states(frames))[0]


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_masked_hash_net(bits: int, num_frames: int, feature_dim: int, **arch: Any) -> MaskedHashNet:
    """:class:`MaskedHashNet` with checked integer parameters."""
    for name in ("width", "depth", "heads", "dec_width", "dec_depth", "dec_heads"):
        value = arch[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return MaskedHashNet(bits, num_frames, feature_dim, **arch)


def two_view_masks(batch: int, num_frames: int, mask_ratio: float, generator: torch.Generator
                   ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Two masked views per clip with **disjoint** visible frame sets (ConMH's ``RandomMaskingGenerator``).

    ``n_mask = int(mask_ratio * M)`` frames are masked per view and ``V = M - n_mask`` are visible: a
    random permutation of the frames gives view 1 its first ``V`` frames and view 2 its last ``V``
    (disjoint while ``2 V <= M``, i.e. ``mask_ratio >= 0.5``). Indices are sorted (frame order kept).

    Returns:
        ``((visible1, masked1), (visible2, masked2))``, int64 ``(B, V)`` and ``(B, n_mask)`` on the CPU.

    Raises:
        ValueError: ``mask_ratio`` that leaves no visible or no masked frame.
    """
    n_mask = int(mask_ratio * num_frames)
    n_vis = num_frames - n_mask
    if n_vis < 1 or n_mask < 1:
        raise ValueError(f"mask_ratio={mask_ratio} with M={num_frames} frames leaves {n_vis} visible and {n_mask} "
                         "masked frames; both must be >= 1")
    perm = torch.argsort(torch.rand((batch, num_frames), generator=generator), dim=1)
    views = []
    for vis in (perm[:, :n_vis], perm[:, num_frames - n_vis:]):
        keep = torch.zeros((batch, num_frames), dtype=torch.bool)
        keep.scatter_(1, vis, True)
        order = torch.arange(num_frames).expand(batch, -1)
        visible = order[keep].reshape(batch, n_vis)
        masked = order[~keep].reshape(batch, n_mask)
        views.append((visible, masked))
    return views[0], views[1]


class _MaskedContrastive(TorchHashModel):
    """A :class:`MaskedHashNet` as a :class:`~vhindex.models.base.HashModel` (trained by
    :mod:`vhindex.train.contrastive`; its training settings live in the model's config, so a saved
    model says how it was made)."""

    #: constructor defaults of the subclass (architecture + training recipe)
    DEFAULTS: dict[str, Any] = {}
    ARCH = ("width", "depth", "heads", "dec_width", "dec_depth", "dec_heads", "pooling", "dropout")

    def __init__(self, bits: int, num_frames: int = 25, feature_dim: int = 4096, device: str | None = None,
                 **params: Any) -> None:
        unknown = sorted(set(params) - set(self.DEFAULTS))
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected parameters {unknown}; it takes "
                            f"{sorted(self.DEFAULTS)}")
        cfg = {**self.DEFAULTS, **params}
        if cfg.get("neighbour_source", "model") not in ("model", "features"):
            raise ValueError(f"neighbour_source must be 'model' or 'features', got {cfg['neighbour_source']!r}")
        super().__init__(bits, {"num_frames": num_frames, "feature_dim": feature_dim, **cfg}, device)
        self.num_frames, self.feature_dim = num_frames, feature_dim
        arch = {k: cfg[k] for k in self.ARCH}
        self._finish_init(build_masked_hash_net(self.bits, num_frames, feature_dim, **arch))

    def latent_features(self, frames: np.ndarray) -> np.ndarray:
        """Mean over frames of the encoder's output states, float32 ``(B, width)`` (every frame visible)."""
        frames = self.check_frames(frames)
        return self._batched(frames, lambda x: self.net.states(x).mean(dim=1), int(self._arch["width"]))

    @property
    def recipe(self) -> dict[str, Any]:
        """The training settings of this model (everything in its config but the architecture)."""
        return {k: v for k, v in self._arch.items() if k not in (*self.ARCH, "num_frames", "feature_dim")}


@register_model
class ConMH(_MaskedContrastive):
    """ConMH (Wang et al., AAAI 2023): masked-frame reconstruction + debiased contrastive loss between two
    views with disjoint visible frames; video code = sign of the mean of per-frame codes.

    Args:
        bits: code length K (multiple of 8).
        num_frames: M.
        feature_dim: D.
        width, depth, heads: encoder (released "small": 256, 12, 6).
        dec_width, dec_depth, dec_heads: decoder (192, 2, 3).
        pooling: ``"mean_codes"`` (released).
        dropout: block dropout (released: 0).
        mask_ratio: frames masked per view (released: 0.75 FCVID / YFCC, 0.5 ActivityNet).
        temperature: DCL temperature (0.5).
        tau_plus: DCL positive-class prior (0.1 FCVID / YFCC, 0.05 ActivityNet).
        contrast_weight: ``a`` (1.0 FCVID / YFCC, 0.2 ActivityNet).
        device: where ``.net`` lives.
    """

    name = "conmh"
    DEFAULTS = {"width": 256, "depth": 12, "heads": 6, "dec_width": 192, "dec_depth": 2, "dec_heads": 3,
                "pooling": "mean_codes", "dropout": 0.0, "mask_ratio": 0.75, "temperature": 0.5, "tau_plus": 0.1,
                "contrast_weight": 1.0}


@register_model
class GCMH(_MaskedContrastive):
    """GCMH, vhindex's graph-contrastive masked hasher: ConMH's two masked views and masked-frame
    reconstruction, plus what the seeds and the data add (see ``docs/quality.md`` for the evidence):

    * **attention pooling** (``pooling="attention"``): the code is hashed from an attention-weighted
      mean of the frame states, so shots that carry nothing of the video's content (distractors) can
      be ignored;
    * **anchor-graph positives** (``neighbour_weight``): each clip is also pulled towards a clip
      sharing its nearest anchor in the anchor graph (:mod:`vhindex.graph`), the free positives that
      two-view contrastive learning ignores. ``neighbour_source="model"`` (default) builds the graph
      from the model's own embeddings, rebuilt at the start of every epoch from ``neighbour_start``
      on -- the model is its own teacher, as in DKPH's teacher -> student distillation, and its
      neighbours are purer than the raw features'; ``"features"`` builds it once on the
      mean-pooled input features (the graph stage, ``<run>/gcmh/graph``);
    * **code balance and decorrelation** (``balance_weight``, ``decorrelation_weight``): every bit
      near 50/50 over a batch, bits uncorrelated, so the K bits carry K bits of information.

    Args:
        bits: code length K (multiple of 8).
        num_frames: M.
        feature_dim: D.
        width, depth, heads, dec_width, dec_depth, dec_heads, pooling, dropout: see :class:`ConMH`.
        mask_ratio, temperature, tau_plus, contrast_weight: see :class:`ConMH`.
        neighbour_weight: weight of the anchor-graph positive pairs' contrastive loss (0: none).
        neighbour_source: ``"model"`` (self-distilled graph, rebuilt every epoch) or ``"features"``.
        neighbour_start: first epoch (0-based) with neighbour positives (``"model"``: the model must
            have learned something first).
        neighbour_k: ``0``: the partner is any clip of the same anchor group; ``k > 0``: one of the
            clip's ``k`` most similar members of its group (purer pairs; ``"model"`` source only).
        neighbour_anchors: anchors of the self-distilled graph (``"model"`` source); ``0``: the
            config's ``graph.anchors``.
        balance_weight: weight of the per-bit balance term.
        decorrelation_weight: weight of the bit-decorrelation term.
        device: where ``.net`` lives.
    """

    name = "gcmh"
    DEFAULTS = {"width": 256, "depth": 2, "heads": 4, "dec_width": 128, "dec_depth": 1, "dec_heads": 2,
                "pooling": "attention", "dropout": 0.0, "mask_ratio": 0.5, "temperature": 0.3, "tau_plus": 0.1,
                "contrast_weight": 1.0, "neighbour_weight": 1.0, "neighbour_source": "model", "neighbour_start": 3,
                "neighbour_k": 0, "neighbour_anchors": 0, "balance_weight": 0.1, "decorrelation_weight": 0.1}

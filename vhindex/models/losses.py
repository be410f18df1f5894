"""Training losses of BTH and DKPH, exactly as in the released ``train.py`` / ``train_dkph.py``.

Notation: a batch holds ``B`` pairs of videos ``(v1, v2)`` with similarity ``s`` in {+1, -1}
(``(B,)``), original (unmasked) frames ``F1, F2`` ``(B, M, D)``, network outputs ``out1, out2``
(dicts of :class:`~vhindex.models.nets.BTHNet` / :class:`~vhindex.models.nets.DKPHNet`), codes of
``K`` bits, encoder width ``d`` and ``c1, c2`` ``(B, d)`` = the embedding of each video's nearest
anchor (teacher latent space). Every function returns a dict of scalar tensors whose ``"total"`` is
the training objective.

* teacher (BTH trained with the mask loss only): ``total = recon``.
* BTH: ``total = 0.92 * mask + 0.08 * nei + 0.8 * mu`` with
  ``mask = [||F1^ - F1||^2 + ||F2^ - F2||^2] / (2 M D B)``,
  ``nei = (1/B) sum (s - <mean_t b1, mean_t b2> / K)^2``,
  ``mu = [||mean_t h1 - c1||^2 + ||mean_t h2 - c2||^2] / (d B)``.
* DKPH: ``total = recon + gamma2 * tsim + gamma1 * bsim`` with ``recon`` as BTH's ``mask``,
  ``bsim = (1/B) sum (s - <b1, b2> / K)^2`` on the video codes and
  ``tsim = [||mean_t E1 - c1||^2 + ||mean_t E2 - c2||^2] / (d B)
  + 0.1 * TripletMarginLoss(margin=0.5, p=2)(mean_t E1, w c1, w c2)``, ``w = (1 - s) / 2``.
  For a similar pair ``w = 0``: anchor-to-positive and anchor-to-negative distances are equal, so the
  triplet term is the constant ``margin`` with no gradient; only dissimilar pairs (``w = 1``) pull
  ``mean_t E1`` towards its own anchor and away from the other video's anchor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["balance_loss", "bth_loss", "conmh_loss", "dcl_loss", "decorrelation_loss", "dkph_loss", "dvhcm_loss", "gcmh_loss",
           "mcmsh_loss", "nph_loss", "recon_loss", "teacher_loss"]


def recon_loss(recon: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over all elements (all frames and dims, every video in the batch)."""
    if recon.shape != target.shape:
        raise ValueError(f"recon_loss: reconstruction {tuple(recon.shape)} vs target {tuple(target.shape)}")
    return F.mse_loss(recon, target.to(recon.dtype), reduction="mean")


def _pair_recon(out1: dict[str, Tensor], out2: dict[str, Tensor], frames1: Tensor, frames2: Tensor) -> Tensor:
    # [sum1 + sum2] / (2 M D B) == mean of the two per-video-batch MSEs (both batches have B*M*D elements)
    return 0.5 * (recon_loss(out1["recon"], frames1) + recon_loss(out2["recon"], frames2))


def _code_similarity_loss(b1: Tensor, b2: Tensor, s: Tensor) -> Tensor:
    """``(1/B) sum (s - <b1, b2>/K)^2``."""
    sim = (b1 * b2).sum(dim=1) / b1.shape[1]
    return ((s.to(sim.dtype).reshape(-1) - sim) ** 2).mean()


def _anchor_loss(h1: Tensor, h2: Tensor, c1: Tensor, c2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``[||mean_t h1 - c1||^2 + ||mean_t h2 - c2||^2] / (d B)`` and the two mean-pooled embeddings."""
    m1, m2 = h1.mean(dim=1), h2.mean(dim=1)
    if c1.shape != m1.shape or c2.shape != m2.shape:
        raise ValueError(
            f"anchor embeddings must be (B, d)={tuple(m1.shape)} like the mean-pooled hidden states, got "
            f"c1 {tuple(c1.shape)}, c2 {tuple(c2.shape)}; anchors must come from a teacher of the same width d"
        )
    b, d = m1.shape
    loss = (((m1 - c1.to(m1.dtype)) ** 2).sum() + ((m2 - c2.to(m2.dtype)) ** 2).sum()) / (d * b)
    return loss, m1, m2


def teacher_loss(out: dict[str, Tensor], frames: Tensor) -> dict[str, Tensor]:
    """The teacher objective: reconstruction of the unmasked ``frames`` only (``total == recon``)."""
    recon = recon_loss(out["recon"], frames)
    return {"total": recon, "recon": recon}


def bth_loss(
    out1: dict[str, Tensor], out2: dict[str, Tensor], frames1: Tensor, frames2: Tensor, s: Tensor,
    c1: Tensor, c2: Tensor, *, w_mask: float = 0.92, w_nei: float = 0.08, w_mu: float = 0.8,
) -> dict[str, Tensor]:
    """BTH's loss ``w_mask * mask + w_nei * nei + w_mu * mu`` (module docstring has the terms).

    Args:
        out1: :class:`~vhindex.models.nets.BTHNet` output of the first (masked) videos.
        out2: output of the second videos.
        frames1: unmasked frames of the first videos ``(B, M, D)`` (reconstruction targets).
        frames2: unmasked frames of the second videos.
        s: ``(B,)`` pair similarity, +1 similar / -1 dissimilar.
        c1: ``(B, d)`` nearest-anchor embedding of the first videos.
        c2: ``(B, d)`` nearest-anchor embedding of the second videos.
        w_mask: weight of the reconstruction ("visual cloze") term.
        w_nei: weight of the similarity-reconstruction term.
        w_mu: weight of the cluster-assignment term.

    Returns:
        ``{"total", "mask", "nei", "mu"}`` scalar tensors.
    """
    mask = _pair_recon(out1, out2, frames1, frames2)
    nei = _code_similarity_loss(out1["video_code"], out2["video_code"], s)
    mu, _, _ = _anchor_loss(out1["hidden"], out2["hidden"], c1, c2)
    return {"total": w_mask * mask + w_nei * nei + w_mu * mu, "mask": mask, "nei": nei, "mu": mu}


def dkph_loss(
    out1: dict[str, Tensor], out2: dict[str, Tensor], frames1: Tensor, frames2: Tensor, s: Tensor,
    c1: Tensor, c2: Tensor, *, gamma1: float = 0.11, gamma2: float = 0.9, use_tsim: bool = True,
    use_bsim: bool = True, triplet_weight: float = 0.1, margin: float = 0.5,
) -> dict[str, Tensor]:
    """DKPH's loss ``recon + gamma2 * tsim + gamma1 * bsim`` (module docstring has the terms).

    Args:
        out1: :class:`~vhindex.models.nets.DKPHNet` output of the first (masked) videos.
        out2: output of the second videos.
        frames1: unmasked frames of the first videos ``(B, M, D)`` (reconstruction targets).
        frames2: unmasked frames of the second videos.
        s: ``(B,)`` pair similarity, +1 similar / -1 dissimilar.
        c1: ``(B, d)`` nearest-anchor embedding of the first videos.
        c2: ``(B, d)`` nearest-anchor embedding of the second videos.
        gamma1: weight of ``bsim`` (binary structure similarity).
        gamma2: weight of ``tsim`` (teacher-student visual embedding similarity).
        use_tsim: include ``tsim`` in ``total`` (ablation "no L_tsim" when False).
        use_bsim: include ``bsim`` in ``total`` (ablation "no L_bsim" when False).
        triplet_weight: weight of the triplet part inside ``tsim`` (released 0.1).
        margin: triplet margin (released 0.5).

    Returns:
        ``{"total", "recon", "tsim", "bsim"}`` scalar tensors. A term switched off is still reported,
        detached (for monitoring), but contributes nothing to ``total`` or its gradient.
    """
    recon = _pair_recon(out1, out2, frames1, frames2)
    bsim = _code_similarity_loss(out1["code"], out2["code"], s)
    anchor, m1, _ = _anchor_loss(out1["hidden"], out2["hidden"], c1, c2)
    w = ((1.0 - s.to(m1.dtype)) / 2.0).reshape(-1, 1)
    triplet = F.triplet_margin_loss(m1, w * c1.to(m1.dtype), w * c2.to(m1.dtype), margin=margin, p=2.0, eps=1e-6)
    tsim = anchor + triplet_weight * triplet
    total = recon
    if use_tsim:
        total = total + gamma2 * tsim
    else:
        tsim = tsim.detach()
    if use_bsim:
        total = total + gamma1 * bsim
    else:
        bsim = bsim.detach()
    return {"total": total, "recon": recon, "tsim": tsim, "bsim": bsim}



# ---------------------------------------------------------------------- masked contrastive (ConMH, GCMH)


def dcl_loss(z1: Tensor, z2: Tensor, temperature: float = 0.5, tau_plus: float = 0.1) -> Tensor:
    """Debiased contrastive loss (Chuang et al., NeurIPS 2020) between two views, as ConMH uses it.

    Rows ``i`` of ``z1`` and ``z2`` (``(B, K)``) are a positive pair; every other row of either view is
    a negative. With ``u = normalize(z)``, ``pos_i = exp(<u1_i, u2_i> / t)`` and ``neg_i`` the
    ``2B - 2`` values ``exp(<u_i, u_j> / t)`` over the other rows (both views),
    ``Ng_i = max((sum neg_i - tau_plus * N * pos_i) / (1 - tau_plus), N * e^(-1/t))``, ``N = 2B - 2``,
    and the loss is the mean over the ``2B`` anchors of ``-log(pos_i / (pos_i + Ng_i))``.
    ``tau_plus = 0`` gives the plain (biased) InfoNCE / NT-Xent.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"dcl_loss: views must both be (B, K), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"dcl_loss: tau_plus must be in [0, 1), got {tau_plus}")
    b = z1.shape[0]
    u = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = torch.exp(u @ u.t() / temperature)
    idx = torch.arange(b, device=z1.device)
    keep = torch.ones((2 * b, 2 * b), dtype=torch.bool, device=z1.device)
    keep[idx, idx] = keep[idx + b, idx + b] = False  # self
    keep[idx, idx + b] = keep[idx + b, idx] = False  # the positive
    neg = sim[keep].reshape(2 * b, 2 * b - 2)
    pos = torch.exp((u[:b] * u[b:]).sum(dim=1) / temperature).repeat(2)
    n = 2 * b - 2
    ng = (neg.sum(dim=1) - tau_plus * n * pos) / (1.0 - tau_plus)
    ng = torch.clamp(ng, min=n * math.exp(-1.0 / temperature))
    return (-torch.log(pos / (pos + ng))).mean()


def balance_loss(codes: Tensor) -> Tensor:
    """Mean over bits of the squared batch mean of each bit: 0 when every bit is +1 for half the batch."""
    return (codes.mean(dim=0) ** 2).mean()


def decorrelation_loss(codes: Tensor) -> Tensor:
    """Mean squared off-diagonal entry of the bits' correlation matrix over the batch (0: uncorrelated)."""
    c = codes - codes.mean(dim=0, keepdim=True)
    c = c / (c.norm(dim=0, keepdim=True) + 1e-6)
    corr = c.t() @ c
    k = corr.shape[0]
    off = corr - torch.diag_embed(torch.diagonal(corr))
    return (off ** 2).sum() / (k * (k - 1))


def conmh_loss(v1: dict[str, Tensor], v2: dict[str, Tensor], *, temperature: float = 0.5, tau_plus: float = 0.1,
               contrast_weight: float = 1.0) -> dict[str, Tensor]:
    """ConMH: ``recon(view 1) + recon(view 2) + a * DCL(code 1, code 2)``; ``v1`` / ``v2`` are the
    :meth:`~vhindex.models.contrastive.MaskedHashNet.forward` outputs of the two views."""
    recon = recon_loss(v1["recon"], v1["target"]) + recon_loss(v2["recon"], v2["target"])
    contrast = dcl_loss(v1["code"], v2["code"], temperature, tau_plus)
    return {"total": recon + contrast_weight * contrast, "recon": recon, "contrast": contrast}


def gcmh_loss(v1: dict[str, Tensor], v2: dict[str, Tensor], nb: dict[str, Tensor] | None, *,
              temperature: float, tau_plus: float, contrast_weight: float, neighbour_weight: float,
              balance_weight: float, decorrelation_weight: float) -> dict[str, Tensor]:
    """GCMH: ConMH's terms, plus ``neighbour_weight * DCL(code 1, code of an anchor-graph neighbour's view)``
    (``nb``; None: no neighbour term), plus ``balance_weight * balance + decorrelation_weight * decorrelation``
    of the view codes (both views stacked)."""
    out = conmh_loss(v1, v2, temperature=temperature, tau_plus=tau_plus, contrast_weight=contrast_weight)
    total = out["total"]
    if nb is not None and neighbour_weight > 0:
        out["neighbour"] = dcl_loss(v1["code"], nb["code"], temperature, tau_plus)
        total = total + neighbour_weight * out["neighbour"]
    codes = torch.cat([v1["code"], v2["code"]], dim=0)
    out["balance"] = balance_loss(codes)
    out["decorrelation"] = decorrelation_loss(codes)
    out["total"] = total + balance_weight * out["balance"] + decorrelation_weight * out["decorrelation"]
    return out


def mcmsh_loss(
    out1: dict[str, Tensor], out2: dict[str, Tensor], s: Tensor, c1: Tensor, c2: Tensor,
    h_pos: Tensor | None = None, h_neg1: Tensor | None = None, h_neg2: Tensor | None = None,
    quad_mask: Tensor | None = None, *, w_cluster: float = 0.8, w_sim: float = 0.1, w_q: float = 0.01,
    w_quad: float = 0.01,
) -> dict[str, Tensor]:
    """MCMSH's loss ``0.8 * cluster + 0.1 * sim + 0.01 * q + 0.01 * quad`` (released ``train.py`` weights).

    With ``B`` pairs, ``K`` bits, width ``d``, ``h`` the relaxed codes and ``b = sign(h)``:

    * ``cluster = [||mean_t e1 - c1||^2 + ||mean_t e2 - c2||^2] / (d B)`` (each video towards its anchor);
    * ``sim = (1/B) sum (s - <h1, h2> / K)^2``;
    * ``q = [||h1 - b1||^2 + ||h2 - b2||^2] / (B K)``;
    * ``quad = (1/B) sum_i m_i [relu(K/4 + ||h1 - h+||^2 - ||h1 - h-1||^2) + relu(K/64 + ||h1 - h+||^2 -
      ||h-1 - h-2||^2)]`` with ``h+`` a graph neighbour of video 1, ``h-1`` a non-neighbour and ``h-2`` a
      non-neighbour of ``h-1``; ``m_i = 0`` drops videos without a neighbour (``quad_mask``; default all 1).
      Without ``h_pos`` the term is left out (the "no L_quad" ablation).

    Args:
        out1: :class:`~vhindex.models.mixer.MCMLPNet` output (``hidden``, ``h``, ``b``) of the first videos.
        out2: the same for their partners.
        s: ``(B,)`` pair similarity in {+1, -1}.
        c1: ``(B, d)`` anchor embedding of each first video.
        c2: ``(B, d)`` anchor embedding of each partner.
        h_pos: ``(B, K)`` relaxed codes of the neighbours.
        h_neg1: ``(B, K)`` relaxed codes of the first non-neighbours.
        h_neg2: ``(B, K)`` relaxed codes of the second non-neighbours (non-neighbours of the first).
        quad_mask: ``(B,)`` 1 where the video has a neighbour.
        w_cluster: weight of L_cluster.
        w_sim: weight of L_sim.
        w_q: weight of L_q.
        w_quad: weight of L_quad.
    """
    cluster, _, _ = _anchor_loss(out1["hidden"], out2["hidden"], c1, c2)
    h1, h2 = out1["h"], out2["h"]
    b, k = h1.shape
    sim = _code_similarity_loss(h1, h2, s)
    q = (((h1 - out1["b"]) ** 2).sum() + ((h2 - out2["b"]) ** 2).sum()) / (b * k)
    total = w_cluster * cluster + w_sim * sim + w_q * q
    out = {"cluster": cluster, "sim": sim, "q": q}
    if h_pos is not None:
        if h_neg1 is None or h_neg2 is None:
            raise ValueError("mcmsh_loss: L_quad needs h_pos, h_neg1 and h_neg2")
        pos = ((h1 - h_pos) ** 2).sum(dim=1)
        per_item = (F.relu(k / 4.0 + pos - ((h1 - h_neg1) ** 2).sum(dim=1))
                    + F.relu(k / 64.0 + pos - ((h_neg1 - h_neg2) ** 2).sum(dim=1)))
        if quad_mask is not None:
            per_item = per_item * quad_mask.to(per_item.dtype)
        quad = per_item.sum() / b
        total = total + w_quad * quad
        out["quad"] = quad
    return {"total": total, **out}


def nph_loss(
    out1: dict[str, Tensor], out2: dict[str, Tensor], frames1: Tensor, frames2: Tensor, *, w_s: float = 0.1,
    w_vr: float = 0.8, w_nr: float = 0.1, use_ls: bool = True, use_nr: bool = True,
) -> dict[str, Tensor]:
    """NPH's loss ``0.1 L_s + 0.8 L_vr + 0.1 L_nr`` (paper eq. 12, its weights) over a step's ``2B`` videos.

    With ``T`` the relaxed codes ``t`` of the ``N = 2B`` videos (``out1`` then ``out2``), ``Bc`` their codes,
    ``K`` bits and ``S`` in {-1, +1} from shared nearest anchors
    (:func:`vhindex.models.nph.shared_anchor_similarity` of ``anchor_ids``):

    * ``L_s = (1/N^2) sum_ij (S_ij - <t_i, t_j>/K)^2 + (1/(K N)) sum_i ||b_i - t_i||^2`` (eq. 15);
    * ``L_vr = (1/(D M N)) sum ||v - v~||^2`` (eq. 16, both halves' frames);
    * ``L_nr = (1/(b N)) sum ||n - n~||^2`` (eq. 17; only with neighbourhood attention).

    Args:
        out1: :class:`~vhindex.models.nph.NPHNet` output of the first videos.
        out2: the same for their graph partners.
        frames1: ``(B, M, D)`` input frames of the first videos (reconstruction targets).
        frames2: the partners' frames.
        w_s: weight of L_s.
        w_vr: weight of L_vr.
        w_nr: weight of L_nr.
        use_ls: include L_s (ablation switch).
        use_nr: include L_nr (ablation switch; ignored when the outputs carry no ``n``).
    """
    from vhindex.models.nph import shared_anchor_similarity

    t = torch.cat([out1["t"], out2["t"]])
    codes = torch.cat([out1["b"], out2["b"]])
    n, k = t.shape
    vr = recon_loss(torch.cat([out1["recon"], out2["recon"]]), torch.cat([frames1, frames2]))
    out = {"vr": vr}
    total = w_vr * vr
    if use_ls:
        ids = torch.cat([out1["anchor_ids"], out2["anchor_ids"]])
        s = shared_anchor_similarity(ids, ids).to(t.dtype)
        ls = ((s - t @ t.T / k) ** 2).mean() + ((codes - t) ** 2).sum() / (k * n)
        out["s"] = ls
        total = total + w_s * ls
    if use_nr and "n" in out1:
        nr = F.mse_loss(torch.cat([out1["n_rec"], out2["n_rec"]]), torch.cat([out1["n"], out2["n"]]))
        out["nr"] = nr
        total = total + w_nr * nr
    return {"total": total, **out}


def dvhcm_loss(out1: dict[str, Tensor], out2: dict[str, Tensor], targets: Tensor, *, margin: float,
               alpha: float = 1.0, beta: float = 1.0) -> dict[str, Tensor]:
    """DVHCM's ``alpha * CE + beta * intra`` (eq. 2-4) over ``B`` intra-pairs (two frame sets of one video).

    * ``ce = (1/2B') sum over both frame sets and the B' labelled videos of -sum_c y_c log softmax(logits)_c``,
      with ``y`` the video's label distribution (a multi-hot row divided by its count); an unlabelled video
      (a zero row, e.g. a distractor clip) adds nothing to it but still to ``intra``;
    * ``intra = (1/B) sum_i max(||ip_1 - ip_2||^2 - margin, 0)`` on the sigmoid outputs.

    Args:
        out1: :class:`~vhindex.models.dvhcm.DVHCMNet` output (``ip``, ``logits``) of the first frame sets.
        out2: the same for the second frame sets (the same videos).
        targets: ``(B, C)`` label distributions (rows sum to 1, or 0 for an unlabelled video).
        margin: the hinge margin ``M``.
        alpha: weight of the classification loss.
        beta: weight of the intra-pair loss.
    """
    if targets.shape != out1["logits"].shape:
        raise ValueError(f"dvhcm_loss: targets {tuple(targets.shape)} vs logits {tuple(out1['logits'].shape)}")
    y = targets.to(out1["logits"].dtype)
    labelled = (y.sum(dim=1) > 0).sum().clamp(min=1)
    ce = -0.5 * ((y * F.log_softmax(out1["logits"], dim=1)).sum() + (y * F.log_softmax(out2["logits"], dim=1)).sum()) \
        / labelled
    intra = F.relu(((out1["ip"] - out2["ip"]) ** 2).sum(dim=1) - margin).mean()
    return {"total": alpha * ce + beta * intra, "ce": ce, "intra": intra}

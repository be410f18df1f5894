"""Losses of BTH / DKPH (vhindex.models.losses) against hand-computed values on tiny tensors.

Shared toy batch: B=2 pairs, M=2 frames, D=2 dims, K=2 bits, d=2.

* reconstruction: out1 recon = 1 everywhere, out2 recon = 2 everywhere, targets 0
  -> [8*1 + 8*4] / (2*M*D*B = 16) = 2.5
* anchor term: mean_t h1 = [[2,3],[1,1]], c1 = [[2,2],[0,1]] -> 1 + 1;  mean_t h2 = [[1,1],[0,0]], c2 = 0 -> 2 + 0
  -> (2 + 2) / (d*B = 4) = 1.0
* s = [+1, -1]
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vhindex.models.losses import bth_loss, dkph_loss, recon_loss, teacher_loss

H1 = [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [2.0, 2.0]]]
H2 = [[[1.0, 1.0], [1.0, 1.0]], [[-1.0, 1.0], [1.0, -1.0]]]
C1 = torch.tensor([[2.0, 2.0], [0.0, 1.0]])
C2 = torch.zeros(2, 2)
S = torch.tensor([1.0, -1.0])
F0 = torch.zeros(2, 2, 2)


def _t(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x, np.float32), requires_grad=True)


def _dkph_outs():
    out1 = {"hidden": _t(H1), "code": torch.tensor([[1.0, 1.0], [1.0, -1.0]]), "recon": _t(np.ones((2, 2, 2), np.float32))}
    out2 = {"hidden": _t(H2), "code": torch.tensor([[1.0, 1.0], [1.0, 1.0]]), "recon": _t(2 * np.ones((2, 2, 2), np.float32))}
    return out1, out2


def test_recon_and_teacher_loss():
    recon = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    assert recon_loss(recon, torch.zeros(1, 2, 2)).item() == pytest.approx(7.5)  # (1+4+9+16)/4
    out = teacher_loss({"recon": recon}, torch.ones(1, 2, 2))
    assert out["total"].item() == pytest.approx(3.5) and out["recon"].item() == pytest.approx(3.5)  # (0+1+4+9)/4
    with pytest.raises(ValueError, match="target"):
        recon_loss(recon, torch.zeros(1, 2, 3))


def test_bth_loss_hand_values():
    # frame codes -> mean over frames: v1 [1,0] vs [1,1] -> <.,.>/K = 0.5 ; v2 [0,0] vs [1,-1] -> 0
    fc1 = torch.tensor([[[1.0, 1.0], [1.0, -1.0]], [[1.0, 1.0], [-1.0, -1.0]]])
    fc2 = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, -1.0], [1.0, -1.0]]])
    out1 = {"hidden": _t(H1), "video_code": fc1.mean(1), "recon": torch.ones(2, 2, 2)}
    out2 = {"hidden": _t(H2), "video_code": fc2.mean(1), "recon": 2 * torch.ones(2, 2, 2)}
    losses = bth_loss(out1, out2, F0, F0, S, C1, C2)
    assert losses["mask"].item() == pytest.approx(2.5)
    assert losses["nei"].item() == pytest.approx(0.625)  # ((1-0.5)^2 + (-1-0)^2) / 2
    assert losses["mu"].item() == pytest.approx(1.0)
    assert losses["total"].item() == pytest.approx(3.15)  # 0.92*2.5 + 0.08*0.625 + 0.8*1.0
    w = bth_loss(out1, out2, F0, F0, S, C1, C2, w_mask=1.0, w_nei=0.0, w_mu=0.0)
    assert w["total"].item() == pytest.approx(2.5)


# triplet: row 0 similar -> w=0 -> positive = negative = 0 -> loss = margin = 0.5
#          row 1 dissimilar -> anchor [1,1], positive c1=[0,1] (dist 1), negative c2=[0,0] (dist sqrt 2)
#          -> 1 - sqrt(2) + 0.5 ;  mean = 1 - sqrt(2)/2 = 0.29289322
TRIPLET = 1 - np.sqrt(2) / 2
TSIM = 1.0 + 0.1 * TRIPLET  # 1.02928932
BSIM = 0.5  # codes: <[1,1],[1,1]>/2 = 1 vs s=1 -> 0 ; <[1,-1],[1,1]>/2 = 0 vs s=-1 -> 1 ; mean 0.5


def test_dkph_loss_hand_values():
    losses = dkph_loss(*_dkph_outs(), F0, F0, S, C1, C2)
    assert losses["recon"].item() == pytest.approx(2.5)
    assert losses["bsim"].item() == pytest.approx(BSIM)
    assert losses["tsim"].item() == pytest.approx(TSIM, abs=1e-5)
    assert losses["total"].item() == pytest.approx(3.48136039, abs=1e-5)  # 2.5 + 0.9*TSIM + 0.11*0.5


@pytest.mark.parametrize(("use_tsim", "use_bsim", "expected"), [
    (True, False, 2.5 + 0.9 * TSIM),
    (False, True, 2.5 + 0.11 * BSIM),
    (False, False, 2.5),
])
def test_dkph_ablations_drop_the_right_terms(use_tsim, use_bsim, expected):
    out1, out2 = _dkph_outs()
    losses = dkph_loss(out1, out2, F0, F0, S, C1, C2, use_tsim=use_tsim, use_bsim=use_bsim)
    assert losses["total"].item() == pytest.approx(expected, abs=1e-5)
    # switched-off terms are still reported (for monitoring) but detached
    assert losses["tsim"].item() == pytest.approx(TSIM, abs=1e-5) and losses["bsim"].item() == pytest.approx(BSIM)
    assert losses["tsim"].requires_grad == use_tsim
    losses["total"].backward()
    grad = out1["hidden"].grad
    assert (grad is not None and bool(grad.abs().sum() > 0)) == use_tsim


def test_triplet_is_constant_without_gradient_for_similar_pairs():
    g = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    c1, c2 = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    frames = torch.zeros(4, 3, 2)

    def run(s, triplet_weight):
        x1, x2 = h1.clone().requires_grad_(), h2.clone().requires_grad_()
        out1 = {"hidden": x1, "code": torch.ones(4, 8), "recon": frames}
        out2 = {"hidden": x2, "code": torch.ones(4, 8), "recon": frames}
        total = dkph_loss(out1, out2, frames, frames, s, c1, c2, triplet_weight=triplet_weight)["total"]
        total.backward()
        return total.item(), x1.grad.clone()

    similar = torch.ones(4)
    with_t, grad_with = run(similar, 0.1)
    without_t, grad_without = run(similar, 0.0)
    assert with_t - without_t == pytest.approx(0.9 * 0.1 * 0.5, abs=1e-6)  # gamma2 * 0.1 * margin
    assert torch.allclose(grad_with, grad_without, atol=1e-7)
    # for dissimilar pairs the triplet term does move the anchor embedding
    dissimilar = -torch.ones(4)
    _, grad_with = run(dissimilar, 0.1)
    _, grad_without = run(dissimilar, 0.0)
    assert not torch.allclose(grad_with, grad_without, atol=1e-4)


def test_anchor_shape_mismatch_is_clear():
    out1, out2 = _dkph_outs()
    with pytest.raises(ValueError, match="same width d"):
        dkph_loss(out1, out2, F0, F0, S, torch.zeros(2, 3), torch.zeros(2, 3))


# ------------------------------------------------------------------ masked contrastive (ConMH, GCMH)


def _dcl_literal(z1, z2, t, tau_plus):
    """The debiased contrastive loss written out per anchor with Python loops (the oracle)."""
    import math

    import numpy as np

    u = np.concatenate([z1, z2]).astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    b = len(z1)
    n = 2 * b - 2
    losses = []
    for i in range(2 * b):
        partner = i + b if i < b else i - b
        pos = math.exp(float(u[i] @ u[partner]) / t)
        neg = sum(math.exp(float(u[i] @ u[j]) / t) for j in range(2 * b) if j not in (i, partner))
        ng = max((neg - tau_plus * n * pos) / (1 - tau_plus), n * math.exp(-1 / t))
        losses.append(-math.log(pos / (pos + ng)))
    return sum(losses) / len(losses)


def test_dcl_loss_hand_computed_and_literal():
    import math

    import numpy as np

    from vhindex.models.losses import dcl_loss

    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # every anchor: pos = e^2, two negatives of exp(0) = 1, N = 2
    assert float(dcl_loss(z, z, 0.5, 0.0)) == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)  # 0.23958
    ng = (2 - 0.1 * 2 * math.exp(2)) / 0.9  # debiased: 0.5802 > the floor 2 e^-2
    assert float(dcl_loss(z, z, 0.5, 0.1)) == pytest.approx(math.log(1 + ng * math.exp(-2)), rel=1e-6)  # 0.07559
    # random views, several temperatures and priors: equal to the literal loops (including the floor)
    rng = np.random.default_rng(0)
    for b, k, t, tp in ((3, 4, 0.5, 0.1), (5, 8, 0.2, 0.05), (4, 16, 1.0, 0.0), (6, 3, 0.1, 0.3)):
        z1, z2 = rng.standard_normal((b, k)), rng.standard_normal((b, k))
        got = float(dcl_loss(torch.tensor(z1), torch.tensor(z2), t, tp))
        assert got == pytest.approx(_dcl_literal(z1, z2, t, tp), rel=1e-9), (b, k, t, tp)
    with pytest.raises(ValueError, match="tau_plus"):
        dcl_loss(z, z, 0.5, 1.0)
    with pytest.raises(ValueError, match="both be"):
        dcl_loss(z, z[:1], 0.5, 0.1)


def test_balance_and_decorrelation_hand_computed():
    from vhindex.models.losses import balance_loss, decorrelation_loss

    assert float(balance_loss(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))) == pytest.approx(0.5)  # bit means 1, 0
    assert float(balance_loss(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))) == 0.0
    independent = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    assert float(decorrelation_loss(independent)) == pytest.approx(0.0, abs=1e-9)
    copies = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # bit 2 = bit 1: correlation 1
    assert float(decorrelation_loss(copies)) == pytest.approx(1.0, rel=1e-5)
    three = torch.tensor([[1.0, 1.0, -1.0], [-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]])
    # by hand: bits c1 = [1,-1,1,-1], c2 = [1,-1,-1,1], c3 = [-1,1,1,-1] (means 0, norms 2):
    # corr(1,2) = 0, corr(1,3) = 0, corr(2,3) = -4/4 = -1 -> off-diagonal squares sum 2 over 3 * 2 entries
    assert float(decorrelation_loss(three)) == pytest.approx(1 / 3, rel=1e-5)


def test_conmh_and_gcmh_losses_combine_their_terms():
    from vhindex.models.losses import balance_loss, conmh_loss, dcl_loss, decorrelation_loss, gcmh_loss, recon_loss

    g = torch.Generator().manual_seed(0)

    def view(b=4, k=8, m=3, d=5):
        return {"code": torch.randn(b, k, generator=g), "recon": torch.randn(b, m, d, generator=g),
                "target": torch.randn(b, m, d, generator=g)}

    v1, v2, nb = view(), view(), view()
    out = conmh_loss(v1, v2, temperature=0.5, tau_plus=0.1, contrast_weight=0.3)
    recon = recon_loss(v1["recon"], v1["target"]) + recon_loss(v2["recon"], v2["target"])
    contrast = dcl_loss(v1["code"], v2["code"], 0.5, 0.1)
    assert float(out["total"]) == pytest.approx(float(recon + 0.3 * contrast), rel=1e-6)
    out = gcmh_loss(v1, v2, nb, temperature=0.5, tau_plus=0.1, contrast_weight=0.3, neighbour_weight=2.0,
                    balance_weight=0.5, decorrelation_weight=0.25)
    codes = torch.cat([v1["code"], v2["code"]])
    expect = (recon + 0.3 * contrast + 2.0 * dcl_loss(v1["code"], nb["code"], 0.5, 0.1)
              + 0.5 * balance_loss(codes) + 0.25 * decorrelation_loss(codes))
    assert float(out["total"]) == pytest.approx(float(expect), rel=1e-6)
    assert set(out) == {"total", "recon", "contrast", "neighbour", "balance", "decorrelation"}
    no_nb = gcmh_loss(v1, v2, None, temperature=0.5, tau_plus=0.1, contrast_weight=0.3, neighbour_weight=2.0,
                      balance_weight=0.0, decorrelation_weight=0.0)
    assert "neighbour" not in no_nb and float(no_nb["total"]) == pytest.approx(float(recon + 0.3 * contrast))

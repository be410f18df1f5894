"""ConMH / GCMH networks (vhindex.models.contrastive) and GCMH's anchor neighbours (vhindex.train.contrastive)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vhindex.models import GCMH, ConMH, build_model, load_model, model_params
from vhindex.models.contrastive import two_view_masks
from vhindex.train.contrastive import AnchorKnnNeighbours, AnchorNeighbours


def test_two_views_have_disjoint_sorted_visible_frames():
    g = torch.Generator().manual_seed(0)
    for m, ratio in ((10, 0.75), (25, 0.75), (30, 0.5), (8, 0.5)):
        (v1, k1), (v2, k2) = two_view_masks(64, m, ratio, g)
        n_mask = int(ratio * m)
        assert v1.shape == v2.shape == (64, m - n_mask) and k1.shape == (64, n_mask)
        for row in range(64):
            a, b = set(v1[row].tolist()), set(v2[row].tolist())
            assert not a & b  # disjoint visible sets
            assert a | set(k1[row].tolist()) == set(range(m)) == b | set(k2[row].tolist())
            assert v1[row].tolist() == sorted(a) and k2[row].tolist() == sorted(k2[row].tolist())
    with pytest.raises(ValueError, match="leaves 0 visible"):
        two_view_masks(2, 4, 1.0, g)


def test_released_conmh_small_shape_and_round_trip(tmp_path):
    model = build_model("conmh", 64, num_frames=10, feature_dim=32)
    assert isinstance(model, ConMH)
    net = model.net
    assert len(net.blocks) == 12 and net.blocks[0].attn.heads == 6 and net.blocks[0].attn.head_dim == 42  # 256 / 6
    assert len(net.dec_blocks) == 2 and net.dec_head.out_features == 32
    x = np.random.default_rng(0).standard_normal((5, 10, 32)).astype(np.float32)
    codes = model.encode(x)
    assert codes.shape == (5, 64) and set(np.unique(codes)) <= {-1, 1}
    model.save(str(tmp_path / "m"))
    again = load_model(str(tmp_path / "m"))
    assert isinstance(again, ConMH) and again.version() == model.version()
    assert np.array_equal(again.encode(x), codes)
    assert again.recipe == {"mask_ratio": 0.75, "temperature": 0.5, "tau_plus": 0.1, "contrast_weight": 1.0}


def test_gcmh_attention_pooling_and_gradients():
    model = build_model("gcmh", 16, num_frames=6, feature_dim=8, width=32, heads=2, dec_width=16)
    assert isinstance(model, GCMH) and model.net.pooling == "attention"
    x = torch.randn(4, 6, 8)
    w = model.net.frame_weights(model.net.states(x))
    assert w.shape == (4, 6) and torch.allclose(w.sum(dim=1), torch.ones(4))
    g = torch.Generator().manual_seed(1)
    (vis, msk), _ = two_view_masks(4, 6, 0.5, g)
    out = model.net(x, vis, msk)
    assert set(out["code"].unique().tolist()) <= {-1.0, 1.0}  # one binary code per video
    assert out["recon"].shape == out["target"].shape == (4, 3, 8)
    out["code"].sum().backward()  # the straight-through gradient reaches the encoder
    assert model.net.embed.weight.grad is not None and model.net.embed.weight.grad.abs().sum() > 0
    assert {"neighbour_weight", "balance_weight", "decorrelation_weight"} <= set(model_params("gcmh"))
    with pytest.raises(TypeError, match="unexpected parameters"):
        GCMH(16, num_frames=6, feature_dim=8, hidden=32)


def test_anchor_neighbours_are_other_clips_at_the_same_anchor():
    nearest = np.array([0, 1, 0, 2, 1, 0, 3, 3])  # anchor 2 holds one clip only
    nb = AnchorNeighbours(nearest)
    rng = np.random.default_rng(0)
    seen = {i: set() for i in range(len(nearest))}
    for _ in range(300):
        rows = nb.sample(np.arange(len(nearest)), rng)
        assert (nearest[rows] == nearest).all()
        for i, r in enumerate(rows):
            seen[i].add(int(r))
    assert seen[3] == {3}  # alone at its anchor: itself
    assert seen[0] == {2, 5} and seen[2] == {0, 5} and seen[5] == {0, 2}  # every other member, never itself
    assert seen[1] == {4} and seen[6] == {7}
    again = AnchorNeighbours(nearest).sample(np.arange(8), np.random.default_rng(5))
    assert np.array_equal(again, nb.sample(np.arange(8), np.random.default_rng(5)))  # seeded


@pytest.mark.parametrize("block", [4096, 3])  # 3: groups larger than a block are searched in pieces
def test_anchor_knn_neighbours_match_a_brute_force_search_within_each_group(block):
    rng = np.random.default_rng(1)
    n, d, k = 60, 5, 3
    emb = rng.standard_normal((n, d)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    nearest = rng.integers(0, 6, n)
    nearest[-1] = 6  # alone at its anchor
    nearest[-3:-1] = 7  # a pair: one partner each
    nb = AnchorKnnNeighbours(nearest, emb, k, block=block)
    # oracle: for every clip, the k most similar *other* clips that share its anchor
    want = {}
    for i in range(n):
        others = [j for j in range(n) if j != i and nearest[j] == nearest[i]]
        others.sort(key=lambda j: -float(emb[i] @ emb[j]))
        want[i] = set(others[:k]) or {i}
    seen = {i: set() for i in range(n)}
    for _ in range(200):
        for i, r in enumerate(nb.sample(np.arange(n), rng)):
            seen[i].add(int(r))
    assert seen == want
    assert seen[n - 1] == {n - 1} and seen[n - 2] == {n - 3} and seen[n - 3] == {n - 2}
    with pytest.raises(ValueError, match="k must be"):
        AnchorKnnNeighbours(nearest, emb, 0)
    with pytest.raises(ValueError, match="rows"):
        AnchorKnnNeighbours(nearest[:-1], emb, 2)

"""Networks of the learned hashers (vhindex.models.nets) and their HashModel wrappers (learned.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vhindex.models import BTH, DKPH, build_model, load_model
from vhindex.models import learned as learned_mod
from vhindex.models.losses import dkph_loss, teacher_loss
from vhindex.models.nets import (
    KEPT,
    REPLACED,
    UNTOUCHED,
    ZEROED,
    STESign,
    binarize,
    build_bth,
    build_dkph,
    mask_frames,
    mask_plan,
    sinusoidal_positions,
)

TINY = {"hidden": 8, "ffn": 16}


def _frames(b: int, m: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, m, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- shapes and codes


@pytest.mark.parametrize(("bits", "m", "d_in", "hidden", "layers", "heads"),
                         [(8, 3, 10, 4, 1, 1), (16, 5, 12, 8, 2, 2), (32, 25, 6, 16, 1, 4)])
def test_dkph_shapes_and_codes(bits, m, d_in, hidden, layers, heads):
    net = build_dkph(bits, m, d_in, hidden=hidden, layers=layers, heads=heads, ffn=2 * hidden)
    out = net(_frames(3, m, d_in))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "hidden": (3, m, hidden), "logits": (3, bits), "code": (3, bits), "temporal": (3, m, bits),
        "recon": (3, m, d_in)}
    assert set(out["code"].unique().tolist()) <= {-1.0, 1.0}
    assert net.hash.in_features == m * hidden  # hash layer on the flattened hidden states, as released
    h = out["hidden"]
    assert torch.allclose(out["logits"], net.hash(h.reshape(3, -1)))
    assert torch.allclose(out["temporal"], net.temporal(h))
    assert torch.allclose(out["recon"], net.decoder(out["code"].unsqueeze(1) + out["temporal"]))
    net.eval()
    assert torch.equal(net.encode(_frames(3, m, d_in, 1)), net(_frames(3, m, d_in, 1))["code"])


@pytest.mark.parametrize(("bits", "m", "d_in", "hidden"), [(8, 3, 10, 4), (24, 6, 7, 12)])
def test_bth_shapes_and_codes(bits, m, d_in, hidden):
    net = build_bth(bits, m, d_in, hidden=hidden, ffn=2 * hidden)
    out = net(_frames(2, m, d_in))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "hidden": (2, m, hidden), "frame_logits": (2, m, bits), "frame_codes": (2, m, bits),
        "video_code": (2, bits), "recon": (2, m, d_in)}
    assert set(out["frame_codes"].unique().tolist()) <= {-1.0, 1.0}
    assert torch.allclose(out["video_code"], out["frame_codes"].mean(dim=1))
    assert torch.allclose(out["recon"], net.restore(out["frame_codes"]))
    assert torch.equal(out["frame_codes"], torch.where(out["frame_logits"] > 0, 1.0, -1.0))


def test_temporal_false_gives_zero_temporal_and_no_layer():
    net = build_dkph(8, 4, 6, temporal=False, **TINY)
    out = net(_frames(2, 4, 6))
    assert net.temporal is None and not any(k.startswith("temporal") for k in net.state_dict())
    assert torch.count_nonzero(out["temporal"]) == 0
    # the decoder sees the code alone: every frame of a video is reconstructed identically
    assert torch.allclose(out["recon"], out["recon"][:, :1].expand_as(out["recon"]))


def _permuted_codes(net, frames: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    net.eval()
    with torch.no_grad():
        return net.encode(frames), net.encode(frames[:, perm])


def test_hash_input_mean_is_frame_order_invariant_flatten_is_not():
    m, d_in, bits = 6, 10, 32
    frames = _frames(16, m, d_in, seed=3)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.manual_seed(0)
    mean = build_dkph(bits, m, d_in, hash_input="mean", **TINY)
    torch.manual_seed(0)
    flat = build_dkph(bits, m, d_in, **TINY)
    assert mean.hash.in_features == 8 and flat.hash.in_features == m * 8
    # the hash stage alone: mean pooling ignores the order of the hidden states, flattening does not
    hidden = torch.randn(16, m, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(mean._code(hidden)[0], mean._code(hidden[:, perm])[0], atol=1e-5)
        assert not torch.equal(flat._code(hidden)[1], flat._code(hidden[:, perm])[1])
        out = mean(frames)
        assert torch.allclose(out["logits"], mean.hash(out["hidden"].mean(dim=1)))
    # end to end (eval mode, no masking) with the positional embeddings removed, so that the encoder is
    # permutation-equivariant: the mean-pooled code is unchanged, the flattened one changes
    for net in (mean, flat):
        net.encoder.positions.zero_()
    a, b = _permuted_codes(mean, frames, perm)
    assert torch.equal(a, b)
    a, b = _permuted_codes(flat, frames, perm)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="hash_input"):
        build_dkph(8, m, d_in, hash_input="max", **TINY)


def test_builders_validate():
    with pytest.raises(ValueError, match="multiple of 8"):
        build_dkph(12, 4, 6, **TINY)
    with pytest.raises(ValueError, match="divisible by heads"):
        build_bth(8, 4, 6, hidden=6, heads=4)
    with pytest.raises(ValueError, match="num_frames"):
        build_dkph(8, 0, 6, **TINY)
    net = build_dkph(8, 4, 6, **TINY)
    with pytest.raises(ValueError, match=r"M=4, D=6"):
        net(_frames(2, 5, 6))


def test_sinusoidal_positions_match_formula():
    pe = sinusoidal_positions(3, 4)
    expected = [[0, 1, 0, 1],
                [np.sin(1), np.cos(1), np.sin(0.01), np.cos(0.01)],
                [np.sin(2), np.cos(2), np.sin(0.02), np.cos(0.02)]]
    np.testing.assert_allclose(pe.numpy(), expected, atol=1e-6)
    assert sinusoidal_positions(2, 5).shape == (2, 5)  # odd widths work


# ---------------------------------------------------------------------- straight-through estimator


class _ReleasedRound(torch.autograd.Function):
    """Literal copy of the released Round3 / BNet (CPU)."""

    @staticmethod
    def forward(ctx, y):
        ctx.save_for_backward(y)
        return torch.round(y)

    @staticmethod
    def backward(ctx, grad_output):
        (y,) = ctx.saved_tensors
        return grad_output * (1 - (y == 0).float())


def _released_binarization(x):
    y = (x + 1.0) / 2.0
    y[y > 1] = 1
    y[y < 0] = 0
    return 2.0 * _ReleasedRound.apply(y) - 1.0


def test_ste_hand_values():
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 1e-8, 0.3, 1.0, 1.5], requires_grad=True)
    y = binarize(x)
    assert y.tolist() == [-1, -1, -1, -1, -1, 1, 1, 1]  # 0 and 1e-8 -> -1 (round half to even)
    y.backward(torch.arange(1.0, 9.0))
    # gradient passes unchanged on (-1, 1], zero elsewhere (x = -1 included, x = +1 excluded)
    assert x.grad.tolist() == [0, 0, 3, 4, 5, 6, 7, 0]


def test_ste_matches_literal_released_code():
    x = torch.cat([torch.linspace(-2.5, 2.5, 401), torch.tensor([-1.0, 0.0, 1.0, 1e-7, -1e-7])])
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_ref = STESign.apply(ours), _released_binarization(ref)
    assert torch.equal(out_ours, out_ref)
    out_ours.backward(upstream)
    out_ref.backward(upstream)
    assert torch.equal(ours.grad, ref.grad)


# ---------------------------------------------------------------------- masking


def test_mask_plan_statistics():
    b, m, n = 4000, 25, 100_000
    action, idx = mask_plan(b, m, 17, torch.Generator().manual_seed(0), prob=0.15)
    counts = {a: int((action == a).sum()) for a in (UNTOUCHED, ZEROED, REPLACED, KEPT)}
    selected = n - counts[UNTOUCHED]
    # binomial 5-sigma bounds
    assert abs(selected - 0.15 * n) < 5 * np.sqrt(n * 0.15 * 0.85)
    for a, p in ((ZEROED, 0.8), (REPLACED, 0.1), (KEPT, 0.1)):
        assert abs(counts[a] - p * selected) < 5 * np.sqrt(selected * p * (1 - p)), (a, counts)
    assert int(idx.min()) >= 0 and int(idx.max()) == 16


def test_mask_frames_follows_plan_and_is_deterministic():
    frames = _frames(300, 6, 4) + 10.0  # never zero, never equal to a pool row
    pool = torch.arange(5.0).repeat_interleave(4).reshape(5, 4) - 100.0
    out = mask_frames(frames, torch.Generator().manual_seed(7), 0.15, pool)
    action, idx = mask_plan(300, 6, 5, torch.Generator().manual_seed(7), 0.15)
    assert torch.equal(out[action == ZEROED], torch.zeros(int((action == ZEROED).sum()), 4))
    assert torch.equal(out[action == REPLACED], pool[idx[action == REPLACED]])
    untouched = (action == UNTOUCHED) | (action == KEPT)
    assert torch.equal(out[untouched], frames[untouched])
    assert int((action == REPLACED).sum()) > 0 and int((action == KEPT).sum()) > 0
    # same seed -> same output, other seed -> different; the input is not modified
    assert torch.equal(out, mask_frames(frames, torch.Generator().manual_seed(7), 0.15, pool))
    assert not torch.equal(out, mask_frames(frames, torch.Generator().manual_seed(8), 0.15, pool))
    assert torch.all(frames >= 5.0)


def test_mask_frames_default_pool_is_the_batch():
    frames = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2) + 1.0
    for seed in range(20):
        out = mask_frames(frames, torch.Generator().manual_seed(seed), prob=1.0)
        rows = {tuple(r) for r in frames.reshape(-1, 2).tolist()} | {(0.0, 0.0)}
        assert {tuple(r) for r in out.reshape(-1, 2).tolist()} <= rows
    with pytest.raises(ValueError, match="prob"):
        mask_frames(frames, torch.Generator(), prob=1.5)
    with pytest.raises(ValueError, match="replace_pool"):
        mask_frames(frames, torch.Generator(), replace_pool=torch.zeros(3, 5))


# ---------------------------------------------------------------------- optimisation (golden-ish)


def _structured_batch(b: int, m: int, d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, m, 3, generator=g) @ torch.randn(3, d, generator=g)  # rank-3 frames


def _train(net, loss_fn, steps: int = 30) -> tuple[float, float]:
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = last = None
    for step in range(steps + 1):
        losses = loss_fn(net)
        if step == 0:
            first = losses["recon"].item()
        if step == steps:
            last = losses["recon"].item()
            break
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    return first, last


def test_dkph_training_steps_reduce_reconstruction():
    torch.manual_seed(0)
    frames = _structured_batch(8, 4, 32)
    net = build_dkph(16, 4, 32, hidden=16, ffn=32, dropout=0.0)
    s = torch.tensor([1.0, -1.0] * 4)
    c1, c2 = torch.zeros(8, 16), torch.ones(8, 16) * 0.1

    def step(n):
        return dkph_loss(n(frames), n(frames.flip(0)), frames, frames.flip(0), s, c1, c2)

    first, last = _train(net, step)
    assert last < 0.5 * first, (first, last)


def test_teacher_training_steps_reduce_reconstruction():
    torch.manual_seed(0)
    frames = _structured_batch(8, 4, 32)
    net = build_bth(16, 4, 32, hidden=16, ffn=32, dropout=0.0)
    first, last = _train(net, lambda n: teacher_loss(n(frames), frames))
    assert last < 0.5 * first, (first, last)


# ---------------------------------------------------------------------- HashModel wrappers


def _model(cls, **kw):
    return cls(16, num_frames=4, feature_dim=6, device="cpu", **TINY, **kw)


def _np_frames(b: int, m: int = 4, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, m, d)).astype(np.float32)


@pytest.mark.parametrize(("cls", "kw"), [(BTH, {}), (DKPH, {}), (DKPH, {"temporal": False, "use_bsim": False}),
                                         (DKPH, {"hash_input": "mean"})])
def test_save_load_round_trip(tmp_path, cls, kw):
    torch.manual_seed(1)
    model = _model(cls, **kw)
    frames = _np_frames(20)
    codes = model.encode(frames)
    assert codes.dtype == np.int8 and codes.shape == (20, 16) and set(np.unique(codes)) <= {-1, 1}
    model.save(str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert type(loaded) is cls and loaded.get_config() == model.get_config()
    if cls is DKPH:  # the hash input survives the round trip; the released "flatten" is left out of the config
        assert loaded.hash_input == loaded.net.hash_input == kw.get("hash_input", "flatten")
        assert ("hash_input" in model.get_config()) == ("hash_input" in kw)
    assert loaded.version() == model.version()
    np.testing.assert_array_equal(loaded.encode(frames), codes)
    np.testing.assert_array_equal(loaded.encode_packed(frames), model.encode_packed(frames))
    torch.manual_seed(2)
    other = _model(cls, **kw)
    assert other.version() != model.version()  # the version is a content hash of the weights


def test_encode_is_eval_mode_batched_and_restores_training(monkeypatch):
    model = _model(DKPH, dropout=0.5)
    frames = _np_frames(7)
    model.net.train()
    full = model.encode(frames)
    np.testing.assert_array_equal(full, model.encode(frames))  # no dropout at encode time
    assert model.net.training
    monkeypatch.setattr(learned_mod, "ENCODE_BATCH", 3)
    np.testing.assert_array_equal(model.encode(frames), full)
    np.testing.assert_array_equal(model.encode(frames.astype(np.float16)).shape, (7, 16))
    with torch.no_grad():
        model.net.eval()
        expected = model.net.encode(torch.from_numpy(frames)).numpy()
    np.testing.assert_array_equal(full, expected.astype(np.int8))


def test_bth_codes_are_sign_of_mean_frame_codes_ties_to_minus_one(monkeypatch):
    model = _model(BTH)
    frames = _np_frames(5)
    model.net.eval()
    with torch.no_grad():
        mean = model.net(torch.from_numpy(frames))["video_code"].numpy()
    np.testing.assert_array_equal(model.encode(frames), np.where(mean > 0, 1, -1))
    monkeypatch.setattr(model.net, "encode", lambda x: torch.zeros(x.shape[0], 16))  # every bit a tie
    assert np.all(model.encode(frames) == -1)


def test_encode_rejects_wrong_shapes():
    model = _model(DKPH)
    with pytest.raises(ValueError, match="feature dim D=7"):
        model.encode(_np_frames(2, d=7))
    with pytest.raises(ValueError, match="5 frames per video"):
        model.encode(_np_frames(2, m=5))
    with pytest.raises(ValueError, match="3-D"):
        model.encode(np.zeros((2, 6), np.float32))


def test_registry_config_and_errors(tmp_path):
    model = build_model("dkph", 16, num_frames=4, feature_dim=6, temporal=False, device="cpu", **TINY)
    assert isinstance(model, DKPH) and model.net.temporal is None and model.is_fitted
    assert model.loss_kwargs() == {"use_tsim": True, "use_bsim": True}
    assert "device" not in model.get_config()
    with pytest.raises(NotImplementedError, match="vhindex.train"):
        model.fit(lambda: iter([_np_frames(2)]))
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("bth", 12, num_frames=4, feature_dim=6)
    with_temporal = _model(DKPH)
    with pytest.raises(ValueError, match="unexpected"):
        model.set_weights(with_temporal.get_weights())
    feats = with_temporal.latent_features(_np_frames(3))
    assert feats.shape == (3, 8) and feats.dtype == np.float32


def test_encode_throughput_smoke():
    model = DKPH(64, num_frames=8, feature_dim=64, hidden=32, ffn=64, device="auto")
    codes = model.encode_packed(_np_frames(300, m=8, d=64))
    assert codes.shape == (300, 8) and codes.dtype == np.uint8

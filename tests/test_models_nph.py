"""NPH (vhindex.models.nph): the loss against hand-computed values, the attention against its literal formula,
the neighbourhood (nearest anchors of the frozen teacher) against brute force, the ablation variants, save /
load, and the recipe (train, resume exactly, encode through the Ray Data encoding job)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vhindex.models import build_model, load_model
from vhindex.models.losses import nph_loss
from vhindex.models.nph import NeighbourAttention, shared_anchor_similarity

DEMO = Path(__file__).resolve().parents[1] / "configs" / "train" / "demo.yaml"
SMALL = dict(num_frames=5, feature_dim=12, hidden=8, ffn=16, num_anchors=7, memory=8, lstm_hidden=8, key_dim=4)


def _with_neighbourhood(seed: int = 0, **overrides):
    """A small NPH whose frozen teacher is a (random) BTH and whose anchors are random points."""
    torch.manual_seed(seed)
    params = {**SMALL, **overrides}
    model = build_model("nph", 16, **params, device="cpu")
    teacher = build_model("bth", 16, num_frames=params["num_frames"], feature_dim=params["feature_dim"],
                          hidden=params["hidden"], ffn=params["ffn"], device="cpu")
    anchors = np.random.default_rng(seed).standard_normal((params["num_anchors"], params["hidden"])).astype(np.float32)
    model.attach_neighbourhood(teacher.get_weights(), anchors)
    return model, teacher, anchors


# ----------------------------------------------------------------------------------------------- loss


def test_nph_loss_equals_hand_computed_values():
    """One pair (N = 2 videos), K = 2 bits, M = 1 frame, D = 2, b = 2; every term by hand below."""
    t = torch.tensor
    out1 = {"t": t([[0.5, -0.5]]), "b": t([[1.0, -1.0]]), "recon": t([[[0.0, 2.0]]]), "n": t([[1.0, 0.0]]),
            "n_rec": t([[0.0, 0.0]]), "anchor_ids": t([[0, 1]])}
    out2 = {"t": t([[1.0, 0.0]]), "b": t([[1.0, -1.0]]), "recon": t([[[1.0, 1.0]]]), "n": t([[2.0, 2.0]]),
            "n_rec": t([[2.0, 0.0]]), "anchor_ids": t([[2, 3]])}  # no shared anchor: S = [[1, -1], [-1, 1]]
    f1, f2 = t([[[1.0, 2.0]]]), t([[[0.0, 0.0]]])
    # <t_i, t_j>/K: 0.25, 0.25, 0.5 -> (1-.25)^2 + 2 (-1-.25)^2 + (1-.5)^2 = 3.9375 over N^2 = 4
    # ||b - t||^2: 0.5 + 1.0 over K N = 4
    ls = 3.9375 / 4 + 1.5 / 4
    vr = (1.0 + 2.0) / 4      # ||v - v~||^2 = 1 and 2 over D M N = 4
    nr = (1.0 + 4.0) / 4      # ||n - n~||^2 = 1 and 4 over b N = 4
    got = nph_loss(out1, out2, f1, f2)
    for name, want in (("s", ls), ("vr", vr), ("nr", nr), ("total", 0.1 * ls + 0.8 * vr + 0.1 * nr)):
        assert math.isclose(got[name].item(), want, rel_tol=1e-6), name
    only_vr = nph_loss(out1, out2, f1, f2, use_ls=False, use_nr=False)
    assert set(only_vr) == {"total", "vr"} and math.isclose(only_vr["total"].item(), 0.8 * vr, rel_tol=1e-6)
    shared = dict(out2, anchor_ids=t([[3, 0]]))  # anchor 0 shared: S is all +1
    ls_shared = ((1 - 0.25) ** 2 * 3 + (1 - 0.5) ** 2) / 4 + 1.5 / 4
    assert math.isclose(nph_loss(out1, shared, f1, f2)["s"].item(), ls_shared, rel_tol=1e-6)


def test_shared_anchor_similarity_is_the_nph_rule():
    ids = torch.tensor([[0, 1, 2], [2, 5, 6], [7, 8, 9], [9, 3, 4]])
    s = shared_anchor_similarity(ids, ids).numpy()
    sets = [set(r) for r in ids.tolist()]
    want = np.array([[1.0 if a & b else -1.0 for b in sets] for a in sets])
    np.testing.assert_array_equal(s, want)
    assert s[0, 1] == 1 and s[0, 2] == -1 and s[2, 3] == 1


# ----------------------------------------------------------------------------------------------- network


def test_attention_equals_the_literal_formula():
    """m' = softmax(m Wq ([m; v] Wk)^T / sqrt(dk)) [m; v] Wv, computed row by row in numpy."""
    torch.manual_seed(3)
    att = NeighbourAttention(6, 4)
    m, v = torch.randn(3, 6), torch.randn(3, 6)
    got = att(m, v).detach().numpy()
    wq, wk, wv = (p.weight.detach().numpy().T for p in (att.query, att.key, att.value))
    for i in range(3):
        rows = np.stack([m[i].numpy(), v[i].numpy()])          # [m; v] as two rows
        scores = (m[i].numpy() @ wq) @ (rows @ wk).T / math.sqrt(4)
        w = np.exp(scores - scores.max())
        w /= w.sum()
        np.testing.assert_allclose(got[i], w @ (rows @ wv), rtol=1e-5, atol=1e-6)


def test_neighbourhood_is_the_teachers_nearest_anchors():
    model, teacher, anchors = _with_neighbourhood(neighbours=3)
    x = np.random.default_rng(1).standard_normal((40, 5, 12)).astype(np.float32)
    y = teacher.latent_features(x)
    np.testing.assert_allclose(model.latent_features(x), y, rtol=1e-5, atol=1e-6)  # the frozen teacher is BTH's encoder
    dist = ((y[:, None, :] - anchors[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(model.neighbourhood_ids(x), np.argsort(dist, axis=1, kind="stable")[:, :3])
    with pytest.raises(ValueError, match=r"anchors have shape \(3, 8\)"):
        model.attach_neighbourhood(teacher.get_weights(), anchors[:3])


def test_only_neighbourhood_attention_reads_the_anchors():
    """Moving the anchors changes NPH's codes; the SelfAtt and plain-LSTM ablations never look at them."""
    x = np.random.default_rng(2).standard_normal((64, 5, 12)).astype(np.float32)
    for attention, depends in (("neighbour", True), ("self", False), ("none", False)):
        model, teacher, anchors = _with_neighbourhood(seed=4, attention=attention)
        before = model._scores(x)
        model.attach_neighbourhood(teacher.get_weights(), anchors[::-1].copy() * 3.0)
        assert (not np.allclose(before, model._scores(x))) == depends, attention
        out = model.net(torch.from_numpy(x[:4]))
        assert ("n" in out and "n_rec" in out) == (attention == "neighbour")
        assert model.loss_kwargs()["use_nr"] == (attention == "neighbour")
    with pytest.raises(ValueError, match="attention='both'"):
        build_model("nph", 16, **SMALL, attention="both")


def test_the_teacher_stays_frozen_and_in_eval_mode():
    model, _, _ = _with_neighbourhood()
    model.net.train()
    assert not model.net.teacher.training and all(not p.requires_grad for p in model.net.teacher.parameters())
    out = model.net(torch.randn(4, 5, 12))
    nph_loss(out, out, torch.zeros(4, 5, 12), torch.zeros(4, 5, 12))["total"].backward()
    assert all(p.grad is None for p in model.net.teacher.parameters())
    assert model.net.frame_in.weight.grad is not None and model.net.neighbourhood.weight.grad is not None


def test_save_load_keeps_teacher_and_anchors(tmp_path):
    model, _, _ = _with_neighbourhood(seed=5)
    x = np.random.default_rng(6).standard_normal((30, 5, 12)).astype(np.float32)
    model.save(str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.name == "nph" and loaded.version() == model.version()
    np.testing.assert_array_equal(loaded.neighbourhood_ids(x), model.neighbourhood_ids(x))
    np.testing.assert_array_equal(loaded.encode(x), model.encode(x))


# ----------------------------------------------------------------------------------------------- recipe

TINY = ["model.name=nph", "model.params.num_frames=8", "model.params.feature_dim=64", "model.params.hidden=32",
        "model.params.ffn=64", "model.params.memory=16", "model.params.lstm_hidden=16", "model.params.key_dim=16",
        "model.bits=16", "train.teacher_epochs=2", "graph.anchors=16", "graph.executor=sequential",
        "train.pair_backend=numpy", "train.device=cpu", "train.batch_size=64", "eval.plots=false"]


def test_recipe_trains_resumes_exactly_and_records_every_term(tmp_path):
    from vhindex.config import load_config
    from vhindex.graph.stage import load_graph
    from vhindex.train.recipes import run_recipe

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = run_recipe(load_config(DEMO, [*TINY, f"run.output_dir={tmp_path / 'a'}", "train.epochs=3"]),
                              progress=False)
        run_recipe(load_config(DEMO, [*TINY, f"run.output_dir={tmp_path / 'b'}", "train.epochs=2"]), progress=False)
        resumed = run_recipe(load_config(DEMO, [*TINY, f"run.output_dir={tmp_path / 'b'}", "train.epochs=3"]),
                             progress=False)
    finally:
        torch.set_num_threads(old)
    assert straight.model_url.endswith("/nph/model") and resumed.stages["student"] == "ran"
    a, b = load_model(straight.model_url), load_model(resumed.model_url)
    assert a.name == "nph" and a.version() == b.version()  # epochs 0-1, then 2 after a resume == 0-2 straight
    anchors = load_graph(str(tmp_path / "a" / "graph"), None, expected_dim=32)[0]
    np.testing.assert_array_equal(a.net.anchors.numpy(), anchors)  # the graph's anchors, frozen into the model
    teacher = load_model(str(tmp_path / "a" / "teacher" / "model"))
    for key, value in teacher.get_weights().items():
        if key.startswith("encoder."):
            np.testing.assert_array_equal(a.get_weights()["teacher." + key[len("encoder."):]], value)
    lines = (tmp_path / "a" / "nph" / "student" / "metrics.jsonl").read_text().splitlines()
    assert {"loss_s", "loss_vr", "loss_nr"} <= set(json.loads(lines[-1]))
    assert 0.0 < straight.map_at_k[5] <= 1.0


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
def test_ray_data_encoding_job_writes_the_in_process_codes(tmp_path, local_ray):
    from tests.test_pipelines_encode import assert_ray_encoding_equals_in_process

    model, _, _ = _with_neighbourhood(seed=7, num_frames=6, feature_dim=32)
    assert_ray_encoding_equals_in_process(tmp_path, model)

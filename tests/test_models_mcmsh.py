"""MCMSH (vhindex.models.mixer): the loss against hand-computed values, the gates' ranges, the MLP-Mixer
ablation, the saved tanh sharpness, the quadruplet sampler against the dense released graph, and the
recipe (train, resume exactly, encode through the Ray Data encoding job)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vhindex.models import build_model, load_model
from vhindex.models.losses import mcmsh_loss
from vhindex.models.mixer import GATES, RangeGate

DEMO = Path(__file__).resolve().parents[1] / "configs" / "train" / "demo.yaml"


# ----------------------------------------------------------------------------------------------- loss


def test_mcmsh_loss_equals_hand_computed_values():
    """B=2 pairs, K=2 bits, d=2, M=2: every term computed by hand below."""
    t = torch.tensor
    e1 = t([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [2.0, 2.0]]])  # mean over frames: [2, 3], [1, 1]
    e2 = t([[[1.0, 1.0], [1.0, 1.0]], [[4.0, 0.0], [0.0, 4.0]]])  # mean: [1, 1], [2, 2]
    c1, c2 = t([[2.0, 2.0], [1.0, 3.0]]), t([[0.0, 1.0], [2.0, 2.0]])
    h1, h2 = t([[0.5, -0.5], [0.8, 0.2]]), t([[0.5, 0.5], [-1.0, 0.0]])
    b1, b2 = t([[1.0, -1.0], [1.0, 1.0]]), t([[1.0, 1.0], [-1.0, -1.0]])
    s = t([1.0, -1.0])
    out1, out2 = {"hidden": e1, "h": h1, "b": b1}, {"hidden": e2, "h": h2, "b": b2}
    # cluster: ||[2,3]-[2,2]||^2 = 1, ||[1,1]-[1,3]||^2 = 4; ||[1,1]-[0,1]||^2 = 1, ||[2,2]-[2,2]||^2 = 0 -> 6 / (2*2)
    cluster = 6 / 4
    # sim: <h1,h2>/K = (0.25-0.25)/2 = 0 -> (1-0)^2 = 1; (-0.8+0)/2 = -0.4 -> (-1+0.4)^2 = 0.36 -> /2
    sim = (1 + 0.36) / 2
    # q: ||h1-b1||^2 = 0.25+0.25 + 0.04+0.64 = 1.18; ||h2-b2||^2 = 0.25+0.25 + 0+1 = 1.5 -> /(B K = 4)
    q = (1.18 + 1.5) / 4
    got = mcmsh_loss(out1, out2, s, c1, c2)
    assert math.isclose(got["cluster"].item(), cluster, rel_tol=1e-6)
    assert math.isclose(got["sim"].item(), sim, rel_tol=1e-6)
    assert math.isclose(got["q"].item(), q, rel_tol=1e-6)
    assert "quad" not in got and math.isclose(got["total"].item(), 0.8 * cluster + 0.1 * sim + 0.01 * q, rel_tol=1e-6)

    h_pos = t([[0.5, 0.5], [0.8, 0.2]])    # ||h1 - h+||^2: 1.0, 0.0
    h_neg1 = t([[0.5, -0.5], [-0.2, 0.2]])  # ||h1 - h-1||^2: 0.0, 1.0
    h_neg2 = t([[0.0, 0.5], [-0.2, 0.2]])   # ||h-1 - h-2||^2: 1.25, 0.0
    # item 0: relu(2/4 + 1 - 0) = 1.5, relu(2/64 + 1 - 1.25) = 0;  item 1: relu(0.5 + 0 - 1) = 0, relu(1/32 + 0 - 0)
    per_item = [1.5 + 0.0, 0.0 + 1 / 32]
    got = mcmsh_loss(out1, out2, s, c1, c2, h_pos, h_neg1, h_neg2)
    assert math.isclose(got["quad"].item(), sum(per_item) / 2, rel_tol=1e-6)
    assert math.isclose(got["total"].item(), 0.8 * cluster + 0.1 * sim + 0.01 * q + 0.01 * sum(per_item) / 2,
                        rel_tol=1e-6)
    masked = mcmsh_loss(out1, out2, s, c1, c2, h_pos, h_neg1, h_neg2, quad_mask=t([0.0, 1.0]))
    assert math.isclose(masked["quad"].item(), per_item[1] / 2, rel_tol=1e-6)
    with pytest.raises(ValueError, match="needs h_pos, h_neg1 and h_neg2"):
        mcmsh_loss(out1, out2, s, c1, c2, h_pos)


# ----------------------------------------------------------------------------------------------- network


def test_each_gate_acts_at_its_range():
    """LRD: one gate per channel; MRD: one per segment of L // 3 positions and channel; SRD: per position."""
    torch.manual_seed(0)
    y = torch.randn(4, 5, 9)  # (B, C, L): 9 positions -> 3 segments of 3
    for kind in GATES:
        gate = RangeGate(9, 5, 2, kind).eval()
        g = gate.gate(y)
        if kind == "lrd":
            assert g.shape == (4, 5, 1)
        else:
            assert g.shape == (4, 5, 9) and bool(((g > 0) & (g < 1)).all())
            seg = g.reshape(4, 5, 3, 3)
            constant_within_segments = bool(torch.allclose(seg, seg[..., :1].expand_as(seg)))
            assert constant_within_segments == (kind == "mrd"), kind
        assert gate(torch.randn(4, 9, 5)).shape == (4, 9, 5)  # forward takes (B, L, C)
    with pytest.raises(ValueError, match="gate kind"):
        RangeGate(9, 5, 2, "xrd")


def test_gates_switch_on_and_off_and_bad_names_are_refused():
    sizes = dict(num_frames=6, feature_dim=12, hidden=16)
    full = build_model("mcmsh", 16, **sizes)
    plain = build_model("mcmsh", 16, gates=[], **sizes)
    one = build_model("mcmsh", 16, gates=["srd"], **sizes)

    def kinds(model):
        return {type(m).__name__ + ":" + m.kind for m in model.net.modules() if isinstance(m, RangeGate)}

    assert kinds(full) == {f"RangeGate:{k}" for k in GATES} and kinds(plain) == set() and kinds(one) == {"RangeGate:srd"}
    assert full.get_config()["gates"] == list(GATES) and plain.get_config()["gates"] == []
    x = np.random.default_rng(0).standard_normal((3, 6, 12)).astype(np.float32)
    for model in (full, plain, one):
        assert model.encode(x).shape == (3, 16) and model.latent_features(x).shape == (3, 16)
    with pytest.raises(ValueError, match=r"gates: unknown \['big'\]"):
        build_model("mcmsh", 16, gates=["lrd", "big"], **sizes)


def test_the_tanh_sharpness_is_saved_and_used_for_encoding(tmp_path):
    torch.manual_seed(1)
    model = build_model("mcmsh", 32, num_frames=4, feature_dim=8, hidden=16)
    x = np.random.default_rng(2).standard_normal((64, 4, 8)).astype(np.float32)
    scores_alpha1 = model._scores(x)
    model.net.set_alpha(3)  # epoch 3 -> sqrt(4)
    assert float(model.net.alpha) == 2.0
    scores_alpha2 = model._scores(x)
    assert not np.allclose(scores_alpha1, scores_alpha2)
    model.save(str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert float(loaded.net.alpha) == 2.0 and loaded.version() == model.version()
    np.testing.assert_array_equal(loaded.encode(x), model.encode(x))


# ----------------------------------------------------------------------------------------------- sampler


def test_quadruplets_are_a_neighbour_and_two_mutual_non_neighbours():
    from tests.test_graph_pairs import _data, _graph_and_oracle
    from vhindex.graph.pairs import PairSampler

    x, u = _data(3, 300, 20)
    graph, adj = _graph_and_oracle(x, u)
    sampler = PairSampler(graph, 0, backend="numpy")
    items = np.arange(300)
    pos, neg1, neg2, has_pos = sampler.sample_quadruplets(np.concatenate([items, items]))
    items2 = np.concatenate([items, items])
    has_any_positive = (adj == 1).any(axis=1)
    assert np.array_equal(has_pos, has_any_positive[items2])
    assert (adj[items2[has_pos], pos[has_pos]] == 1).all()
    assert (pos[~has_pos] == items2[~has_pos]).all()
    for a, b in ((items2, neg1), (neg1, neg2)):  # class 2, or 0 where the video has no class-2 partner
        cls = adj[a, b]
        has_negative = (adj[a] == 2).any(axis=1)
        assert ((cls == 2) | ((cls == 0) & ~has_negative)).all()
    with pytest.raises(ValueError, match="out of range"):
        sampler.sample_quadruplets(np.array([300]))


# ----------------------------------------------------------------------------------------------- recipe

TINY = ["model.name=mcmsh", "model.params.num_frames=8", "model.params.feature_dim=64", "model.params.hidden=32",
        "model.params.ffn=64", "model.bits=16", "train.teacher_epochs=2", "graph.anchors=16",
        "graph.executor=sequential", "train.pair_backend=numpy", "train.device=cpu", "train.batch_size=64",
        "eval.plots=false"]


def test_recipe_trains_resumes_exactly_and_records_every_term(tmp_path):
    from vhindex.config import load_config
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
    assert straight.model_url.endswith("/mcmsh/model") and resumed.stages["student"] == "ran"
    a, b = load_model(straight.model_url), load_model(resumed.model_url)
    assert a.name == "mcmsh" and a.version() == b.version()  # epochs 0-1, then 2 after a resume == 0-2 straight
    assert math.isclose(float(a.net.alpha), math.sqrt(3), rel_tol=1e-6)  # the last epoch's sharpness (float32)
    import json

    lines = (tmp_path / "a" / "mcmsh" / "student" / "metrics.jsonl").read_text().splitlines()
    assert {"loss_cluster", "loss_sim", "loss_q", "loss_quad"} <= set(json.loads(lines[-1]))
    assert 0.0 < straight.map_at_k[5] <= 1.0


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
def test_ray_data_encoding_job_writes_the_in_process_codes(tmp_path, local_ray):
    from tests.test_pipelines_encode import assert_ray_encoding_equals_in_process

    torch.manual_seed(0)
    model = build_model("mcmsh", 32, num_frames=6, feature_dim=32, hidden=16)
    model.net.set_alpha(4)
    assert_ray_encoding_equals_in_process(tmp_path, model)

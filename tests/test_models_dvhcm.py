"""DVHCM (vhindex.models.dvhcm): the loss against hand-computed values, intra-pairs, the weighted fusion, the
category mask on constructed cases where the right mask is known, and the supervised recipe (train on labels,
resume exactly, encode through the Ray Data encoding job)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vhindex.models import build_model, load_model
from vhindex.models.dvhcm import intra_pair_split
from vhindex.models.losses import dvhcm_loss

DEMO = Path(__file__).resolve().parents[1] / "configs" / "train" / "demo.yaml"


# ----------------------------------------------------------------------------------------------- loss


def test_dvhcm_loss_equals_hand_computed_values():
    """B = 2 videos, C = 2 classes, L = 2 bits; the second video is unlabelled (classification ignores it)."""
    t = torch.tensor
    logits1, logits2 = t([[0.0, 0.0], [5.0, -5.0]]), t([[math.log(3.0), 0.0], [1.0, 2.0]])
    ip1, ip2 = t([[0.9, 0.1], [0.5, 0.5]]), t([[0.3, 0.1], [0.0, 1.0]])
    y = t([[1.0, 0.0], [0.0, 0.0]])
    # video 0: -log softmax([0, 0])_0 = log 2; -log softmax([log 3, 0])_0 = -log(3/4) -> one labelled video
    ce = 0.5 * (math.log(2.0) - math.log(0.75))
    # ||ip1 - ip2||^2: 0.36 and 0.5; margin 0.4 -> relu: 0, 0.1 -> mean over B = 2
    intra = (0.0 + 0.1) / 2
    got = dvhcm_loss({"logits": logits1, "ip": ip1}, {"logits": logits2, "ip": ip2}, y, margin=0.4, alpha=0.7, beta=2.0)
    assert math.isclose(got["ce"].item(), ce, rel_tol=1e-6)
    assert math.isclose(got["intra"].item(), intra, rel_tol=1e-6)
    assert math.isclose(got["total"].item(), 0.7 * ce + 2.0 * intra, rel_tol=1e-6)
    # a two-label video: the target is (0.5, 0.5)
    two = dvhcm_loss({"logits": logits1, "ip": ip1}, {"logits": logits1, "ip": ip1}, t([[0.5, 0.5], [0.0, 0.0]]),
                     margin=0.0)
    assert math.isclose(two["ce"].item(), math.log(2.0), rel_tol=1e-6) and two["intra"].item() == 0.0
    with pytest.raises(ValueError, match="targets"):
        dvhcm_loss({"logits": logits1, "ip": ip1}, {"logits": logits2, "ip": ip2}, t([[1.0, 0.0, 0.0]]), margin=0.1)


def test_intra_pairs_are_two_disjoint_halves_covering_every_frame():
    gen = torch.Generator().manual_seed(0)
    first, second = intra_pair_split(64, 7, gen)
    assert first.shape == (64, 7) and (first.sum(1) == 3).all() and (second.sum(1) == 4).all()
    assert not (first & second).any() and (first | second).all()
    assert len({tuple(r) for r in first.int().tolist()}) > 10  # random per video
    with pytest.raises(ValueError, match="at least 2 frames"):
        intra_pair_split(4, 1, gen)


def test_fusion_ignores_the_frames_outside_the_set():
    torch.manual_seed(0)
    model = build_model("dvhcm", 16, num_frames=6, feature_dim=10, num_classes=3, hidden=8, device="cpu")
    x = torch.randn(5, 6, 10)
    keep = torch.tensor([True, False, True, False, True, False]).expand(5, 6)
    changed = x.clone()
    changed[:, 1::2] = torch.randn(5, 3, 10) * 100  # the frames outside the set
    out_a, out_b = model.net(x, keep), model.net(changed, keep)
    torch.testing.assert_close(out_a["ip"], out_b["ip"])
    assert (out_a["weights"][:, 1::2] == 0).all() and torch.allclose(out_a["weights"].sum(1), torch.ones(5))
    scores = model.net.score(x).squeeze(-1)  # the weights are a softmax of the learned frame scores
    torch.testing.assert_close(model.net(x)["weights"], torch.softmax(scores, dim=1))


# ----------------------------------------------------------------------------------------------- category mask


def test_category_mask_keeps_each_categorys_strongest_bits():
    """Classifier weights set by hand: category c's informative bits are known, so is its mask."""
    model = build_model("dvhcm", 16, num_frames=4, feature_dim=8, num_classes=3, mask_ratio=0.25, device="cpu")
    w = np.full((3, 16), 0.01, dtype=np.float32)
    informative = {0: [0, 1, 2, 3], 1: [4, 9, 10, 15], 2: [3, 7, 8, 12]}
    for c, bits in informative.items():
        w[c, bits] = np.array([2.0, -3.0, 1.5, -0.5]) * (c + 1)  # sign does not matter, magnitude does
    with torch.no_grad():
        model.net.classifier.weight.copy_(torch.from_numpy(w))
    table = model.category_masks()
    want = np.zeros((3, 16), dtype=bool)
    for c, bits in informative.items():
        want[c, bits] = True
    unpacked = np.unpackbits(table.masks, axis=1).astype(bool)  # msb0: bit i of the code is column i
    np.testing.assert_array_equal(unpacked, want)
    assert table.kept_bits().tolist() == [4, 4, 4]
    assert np.unpackbits(model.category_masks(1.0).masks, axis=1).all()  # ratio 1: plain Hamming
    half = np.unpackbits(model.category_masks(0.125).masks, axis=1).astype(bool)  # 2 bits: the 2 strongest
    np.testing.assert_array_equal(np.flatnonzero(half[1]), [4, 9])


def test_masked_search_with_the_learned_table_equals_brute_force():
    from vhindex.index.mask import masked_distances, masked_search

    torch.manual_seed(2)
    model = build_model("dvhcm", 32, num_frames=4, feature_dim=8, num_classes=4, mask_ratio=0.5, device="cpu")
    rng = np.random.default_rng(0)
    db_frames = rng.standard_normal((300, 4, 8)).astype(np.float32)
    q_frames = rng.standard_normal((20, 4, 8)).astype(np.float32)
    db, q = model.encode(db_frames) > 0, model.encode(q_frames) > 0
    cats = model.classify(q_frames)
    table = model.category_masks()
    mask = np.unpackbits(table.masks, axis=1).astype(bool)
    dist = ((q[:, None, :] != db[None]) & mask[cats][:, None, :]).sum(axis=2)  # eq. 8, bit by bit
    db_packed, q_packed = np.packbits(db, axis=1), np.packbits(q, axis=1)
    np.testing.assert_array_equal(masked_distances(q_packed, db_packed, cats, table), dist)
    got_d, got_i = masked_search(db_packed, q_packed, cats, 10, table)
    np.testing.assert_array_equal(got_d, np.sort(dist, axis=1, kind="stable")[:, :10])
    for row in range(20):  # the same distance at every returned position (ties may order differently)
        np.testing.assert_array_equal(dist[row, got_i[row]], got_d[row])


def test_save_load_keeps_classifier_ratio_and_codes(tmp_path):
    torch.manual_seed(3)
    model = build_model("dvhcm", 16, num_frames=4, feature_dim=8, num_classes=5, mask_ratio=0.375, device="cpu")
    x = np.random.default_rng(1).standard_normal((30, 4, 8)).astype(np.float32)
    model.save(str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.name == "dvhcm" and loaded.version() == model.version() and loaded.mask_ratio == 0.375
    np.testing.assert_array_equal(loaded.encode(x), model.encode(x))
    np.testing.assert_array_equal(loaded.classify(x), model.classify(x))
    assert loaded.category_masks() == model.category_masks()
    with pytest.raises(ValueError, match="mask_ratio"):
        build_model("dvhcm", 16, num_frames=4, feature_dim=8, num_classes=5, mask_ratio=0.0)


# ----------------------------------------------------------------------------------------------- recipe

TINY = ["model.name=dvhcm", "model.bits=16",
        "model.params={num_frames: 8, feature_dim: 64, num_classes: 8, hidden: 32}",
        "train.device=cpu", "train.batch_size=64", "train.lr=1.0e-2", "eval.plots=false"]


def test_recipe_trains_on_labels_resumes_exactly_and_learns_the_classes(tmp_path):
    from vhindex.config import load_config
    from vhindex.data import FrameDataset
    from vhindex.train.recipes import run_recipe

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        straight = run_recipe(load_config(DEMO, [*TINY, f"run.output_dir={tmp_path / 'a'}", "train.epochs=4"]),
                              progress=False)
        run_recipe(load_config(DEMO, [*TINY, f"run.output_dir={tmp_path / 'b'}", "train.epochs=2"]), progress=False)
        resumed = run_recipe(load_config(DEMO, [*TINY, f"run.output_dir={tmp_path / 'b'}", "train.epochs=4"]),
                             progress=False)
    finally:
        torch.set_num_threads(old)
    assert straight.model_url.endswith("/dvhcm/model") and resumed.stages["student"] == "ran"
    a, b = load_model(straight.model_url), load_model(resumed.model_url)
    assert a.name == "dvhcm" and a.version() == b.version()
    lines = (tmp_path / "a" / "dvhcm" / "student" / "metrics.jsonl").read_text().splitlines()
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert {"loss_ce", "loss_intra"} <= set(last) and last["loss_ce"] < first["loss_ce"]
    query = FrameDataset.open(str(tmp_path / "a" / "data" / "query"))  # the demo's synthetic labelled clips
    labels = query.read_labels_multi_hot(8)
    frames = np.concatenate([fb.features for fb in query.iter_batches(4096, columns=("video_id", "features"))])
    pred = a.classify(frames)
    labelled = labels.any(axis=1)
    accuracy = labels[np.flatnonzero(labelled), pred[labelled]].mean()
    assert accuracy > 3.0 / 8  # chance is 1/8 (measured: 0.56 after 4 epochs)
    assert 0.0 < straight.map_at_k[5] <= 1.0


def test_recipe_refuses_training_data_without_labels(tmp_path):
    from tests.test_pipelines_encode import _write_frames
    from vhindex.config import load_config
    from vhindex.train.recipes import check_datasets
    from vhindex.train.supervised import train_dvhcm

    _write_frames(tmp_path / "frames", 40, seed=1)  # M=6, D=32, no labels column
    cfg = load_config(DEMO, ["model.name=dvhcm", "model.bits=16",
                             "model.params={num_frames: 6, feature_dim: 32, num_classes: 4, hidden: 8}",
                             f"data.train={tmp_path / 'frames'}", f"data.query={tmp_path / 'frames'}",
                             f"data.database={tmp_path / 'frames'}", f"run.output_dir={tmp_path / 'run'}",
                             "graph.anchors=8"])
    with pytest.raises(ValueError, match="has no labels column"):
        train_dvhcm(cfg, check_datasets(cfg), progress=False)


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
def test_ray_data_encoding_job_writes_the_in_process_codes(tmp_path, local_ray):
    from tests.test_pipelines_encode import assert_ray_encoding_equals_in_process

    torch.manual_seed(0)
    model = build_model("dvhcm", 32, num_frames=6, feature_dim=32, num_classes=5, hidden=16)
    assert_ray_encoding_equals_in_process(tmp_path, model)

"""Tests of the synthetic frame-feature generator (vhindex.data.synth)."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from vhindex.data import synth
from vhindex.data.synth import (
    BLOCK_SIZE,
    SHOT_BACKGROUND,
    SHOT_CONTENT,
    SHOT_NONE,
    SYNTH_PRESETS,
    SynthSpec,
    generate_chunk,
    iter_chunks,
    shot_structure,
    write_synthetic,
)

TINY = SYNTH_PRESETS["tiny"]
# A larger (but still quick) labelled sample for the statistical checks.
STATS = dataclasses.replace(TINY, database=1024)


@pytest.fixture(scope="module")
def stats_sample():
    ids, feats, labels = generate_chunk(STATS, "database", 0, STATS.database)
    return ids, feats, labels


def _multi_hot(labels, num_classes):
    y = np.zeros((len(labels), num_classes), bool)
    for i, lab in enumerate(labels):
        y[i, lab] = True
    return y


# ------------------------------------------------------------------------------------------ spec


def test_presets_are_valid_and_sized():
    tiny, demo, bench = SYNTH_PRESETS["tiny"], SYNTH_PRESETS["demo"], SYNTH_PRESETS["bench-700k"]
    assert (tiny.num_frames, tiny.feature_dim) == (8, 64) and tiny.train + tiny.query + tiny.database < 1000
    assert (demo.num_frames, demo.feature_dim) == (25, 256)
    assert (bench.train, bench.num_frames, bench.feature_dim, bench.dtype) == (700_000, 25, 256, "float16")


def test_spec_validation_reports_every_problem():
    with pytest.raises(ValueError) as info:
        SynthSpec(num_classes=0, sparsity=1.5, dtype="int8", temporal_ar=1.0)
    msg = str(info.value)
    for name in ("num_classes", "sparsity", "dtype", "temporal_ar"):
        assert name in msg
    with pytest.raises(ValueError, match="shots_max"):
        SynthSpec(num_frames=3, shots_min=2, shots_max=4)
    with pytest.raises(ValueError, match="shots_min"):
        SynthSpec(shots_min=4, shots_max=3)
    with pytest.raises(ValueError, match="prob_two_labels"):
        SynthSpec(num_classes=1)
    with pytest.raises(ValueError, match="unknown SynthSpec field"):
        SynthSpec.from_dict({"num_clases": 3})


def test_spec_roundtrip_and_hash():
    assert SynthSpec.from_dict(TINY.to_dict()) == TINY
    assert TINY.spec_hash() == SynthSpec.from_dict(TINY.to_dict()).spec_hash()
    assert TINY.spec_hash() != dataclasses.replace(TINY, seed=1).spec_hash()
    meta = TINY.frame_meta()
    assert meta.extractor == "synthetic" and TINY.spec_hash() in meta.extractor_version
    assert (meta.num_frames, meta.feature_dim, meta.num_classes) == (8, 64, 8)


def test_bad_ranges_and_splits():
    with pytest.raises(ValueError, match="split"):
        generate_chunk(TINY, "validation", 0, 1)
    with pytest.raises(ValueError, match="invalid range"):
        generate_chunk(TINY, "train", 0, TINY.train + 1)
    with pytest.raises(ValueError, match="invalid range"):
        generate_chunk(TINY, "train", 5, 3)
    with pytest.raises(ValueError, match="chunk_size"):
        next(iter_chunks(TINY, "train", 0))


# ----------------------------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_and_chunking_does_not_matter():
    ids, a, la = generate_chunk(TINY, "train", 0, 100)
    _, b, lb = generate_chunk(TINY, "train", 0, 100)
    assert a.tobytes() == b.tobytes() and la == lb
    _, c1, l1 = generate_chunk(TINY, "train", 0, 37)
    _, c2, l2 = generate_chunk(TINY, "train", 37, 100)
    assert np.concatenate([c1, c2]).tobytes() == a.tobytes() and l1 + l2 == la
    # a range inside one block and one straddling a block boundary
    _, d, ld = generate_chunk(TINY, "train", BLOCK_SIZE - 5, BLOCK_SIZE + 3)
    assert d.tobytes() == a[BLOCK_SIZE - 5:BLOCK_SIZE + 3].tobytes() and ld == la[BLOCK_SIZE - 5:BLOCK_SIZE + 3]
    streamed = list(iter_chunks(TINY, "train", 13, stop=100))
    assert np.concatenate([f for _, f, _ in streamed]).tobytes() == a.tobytes()
    assert [i for ch, _, _ in streamed for i in ch] == ids
    assert ids[0] == "train-0000000" and ids[42] == "train-0000042"


def test_float16_is_the_cast_of_float32():
    f32 = generate_chunk(TINY, "query", 0, 20)[1]
    f16 = generate_chunk(dataclasses.replace(TINY, dtype="float16"), "query", 0, 20)[1]
    assert f16.dtype == np.float16 and f32.dtype == np.float32
    assert f16.tobytes() == f32.astype(np.float16).tobytes()


def test_different_seeds_and_splits_differ():
    a = generate_chunk(TINY, "train", 0, 20)[1]
    b = generate_chunk(dataclasses.replace(TINY, seed=1), "train", 0, 20)[1]
    q = generate_chunk(TINY, "query", 0, 20)[1]
    d = generate_chunk(TINY, "database", 0, 20)[1]
    assert not np.array_equal(a, b)
    assert not np.array_equal(q, d) and not np.array_equal(a, q)
    # split sizes are bounds only: they do not change the videos
    bigger = dataclasses.replace(TINY, train=TINY.train * 2)
    assert generate_chunk(bigger, "train", 0, 20)[1].tobytes() == a.tobytes()


# ------------------------------------------------------------------------------------ statistics


def test_features_nonnegative_finite_sparse(stats_sample):
    _, feats, _ = stats_sample
    assert feats.shape == (STATS.database, STATS.num_frames, STATS.feature_dim)
    assert np.isfinite(feats).all() and (feats >= 0).all()
    zeros = float((feats == 0).mean())
    assert abs(zeros - STATS.sparsity) < 0.05, zeros
    nonzero = feats[feats > 0]
    assert 0.2 < float(nonzero.mean()) < 10.0 and float(feats.max()) < 100.0
    # no dead feature dimensions, and frames are not all-zero
    assert (feats > 0).mean(axis=(0, 1)).min() > 0.05
    assert (feats.reshape(-1, STATS.feature_dim) > 0).any(axis=1).all()


def test_sparsity_follows_spec():
    spec = dataclasses.replace(TINY, sparsity=0.4)
    zeros = float((generate_chunk(spec, "train", 0, 256)[1] == 0).mean())
    assert abs(zeros - 0.4) < 0.05, zeros


def test_label_distribution(stats_sample):
    _, _, labels = stats_sample
    n = len(labels)
    for lab in labels:
        assert lab == sorted(set(lab)) and all(0 <= c < STATS.num_classes for c in lab) and len(lab) <= 2
    counts = np.bincount([len(lab) for lab in labels], minlength=3) / n
    p0 = STATS.noise_clip_fraction
    p2 = (1 - p0) * STATS.prob_two_labels
    tol = lambda p: 4 * np.sqrt(p * (1 - p) / n)  # noqa: E731
    assert abs(counts[0] - p0) < tol(p0), counts
    assert abs(counts[2] - p2) < tol(p2), counts
    # every class occurs
    assert _multi_hot(labels, STATS.num_classes).any(axis=0).all()


def test_query_clips_are_always_labelled():
    spec = dataclasses.replace(TINY, query=512, database=512, noise_clip_fraction=0.5)
    _, _, q_labels = generate_chunk(spec, "query", 0, 512)
    assert all(len(lab) >= 1 for lab in q_labels)
    _, _, db_labels = generate_chunk(spec, "database", 0, 512)
    assert 0.4 < np.mean([len(lab) == 0 for lab in db_labels]) < 0.6


def test_shot_structure_is_consistent(stats_sample):
    _, _, labels = stats_sample
    st = shot_structure(STATS, "database", 0, STATS.database)
    sof, kind = st.shot_of_frame, st.shot_kind
    assert (np.diff(sof, axis=1) >= 0).all() and (np.diff(sof, axis=1) <= 1).all() and (sof[:, 0] == 0).all()
    n_shots = sof[:, -1] + 1
    assert (n_shots >= STATS.shots_min).all() and (n_shots <= STATS.shots_max).all()
    assert ((kind != SHOT_NONE).sum(axis=1) == n_shots).all()
    for lab, k in zip(labels, kind, strict=True):
        # each label has a content shot; noise clips have none
        assert (k == SHOT_CONTENT).sum() >= len(lab)
    frac_bg = (kind == SHOT_BACKGROUND).sum() / (kind != SHOT_NONE).sum()
    assert 0.1 < frac_bg < STATS.background_shot_prob + 0.05
    # a sub-range agrees with the full structure
    part = shot_structure(STATS, "database", 70, 90)
    assert np.array_equal(part.shot_of_frame, sof[70:90]) and np.array_equal(part.shot_kind, kind[70:90])


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_mean_pooled_same_label_clips_are_closer(stats_sample):
    _, feats, labels = stats_sample
    pooled = feats.astype(np.float64).mean(axis=1)
    pooled -= pooled.mean(axis=0)
    y = _multi_hot(labels, STATS.num_classes)
    sim = _cos(pooled, pooled)
    share = (y.astype(int) @ y.T.astype(int)) > 0
    labelled = y.any(axis=1)
    off_diag = ~np.eye(len(labels), dtype=bool)
    same = sim[share & off_diag].mean()
    diff = sim[~share & np.outer(labelled, labelled)].mean()
    assert same - diff > 0.08, (same, diff)
    # retrieval by mean pooling is far above chance but not trivial (room for learned hashing)
    q = np.flatnonzero(labelled)[:200]
    aps = []
    for i in q:
        order = np.argsort(-sim[i], kind="stable")
        order = order[order != i]
        rel = share[i, order]
        prec = np.cumsum(rel) / np.arange(1, len(rel) + 1)
        aps.append((prec * rel).sum() / rel.sum())
    chance = share[np.ix_(q, np.arange(len(labels)))].mean()
    assert 0.2 + chance < np.mean(aps) < 0.95, (np.mean(aps), chance)


def test_background_shots_dilute_mean_pooling(stats_sample):
    """Pooling only the content frames (an oracle a learned model can approach) ranks better."""
    _, feats, labels = stats_sample
    st = shot_structure(STATS, "database", 0, STATS.database)
    content = st.frame_kind() == SHOT_CONTENT
    y = _multi_hot(labels, STATS.num_classes)
    keep = y.any(axis=1)
    f = feats[keep].astype(np.float64)
    share = ((y[keep].astype(int) @ y[keep].T.astype(int)) > 0)

    def margin(pooled):
        pooled = pooled - pooled.mean(axis=0)
        sim = _cos(pooled, pooled)
        off = ~np.eye(len(pooled), dtype=bool)
        return sim[share & off].mean() - sim[~share].mean()

    m = content[keep][:, :, None]
    oracle = (f * m).sum(axis=1) / m.sum(axis=1)
    assert margin(oracle) > 1.2 * margin(f.mean(axis=1))


def test_frames_within_a_shot_correlate_more_than_across_shots(stats_sample):
    _, feats, _ = stats_sample
    st = shot_structure(STATS, "database", 0, STATS.database)
    f = feats.astype(np.float64)
    f -= f.reshape(-1, STATS.feature_dim).mean(axis=0)
    within, across = [], []
    for t in range(STATS.num_frames - 1):
        c = np.einsum("bd,bd->b", f[:, t], f[:, t + 1]) / (
            np.linalg.norm(f[:, t], axis=1) * np.linalg.norm(f[:, t + 1], axis=1))
        same = st.shot_of_frame[:, t] == st.shot_of_frame[:, t + 1]
        within.append(c[same])
        across.append(c[~same])
    within_m, across_m = np.concatenate(within).mean(), np.concatenate(across).mean()
    assert within_m > across_m + 0.2, (within_m, across_m)
    # frames vary over time inside a shot (not a constant image)
    assert within_m < 0.98


# --------------------------------------------------------------------------------------- writing


def test_write_roundtrip_memory_and_validate():
    from vhindex.data.reader import FrameDataset
    from vhindex.data.validate import validate_dataset

    spec = dataclasses.replace(TINY, train=150, query=40, database=90, dtype="float16")
    url = f"memory://synth-test-{uuid.uuid4().hex}"
    manifests = write_synthetic(spec, url, rows_per_file=64, row_group_size=16, chunk_size=50)
    assert set(manifests) == {"train", "query", "database"}
    assert synth.read_spec(url) == spec
    for split in ("train", "query", "database"):
        ds = FrameDataset.open(f"{url}/{split}")
        assert ds.num_videos == spec.split_size(split)
        assert ds.meta == spec.frame_meta()
        ids, feats, labels = [], [], []
        for batch in ds.iter_batches(batch_size=33):
            ids += list(batch.video_ids)
            feats.append(batch.features)
            labels += [list(x) for x in batch.labels]
        exp_ids, exp_feats, exp_labels = generate_chunk(spec, split, 0, spec.split_size(split))
        assert ids == exp_ids and labels == exp_labels
        assert np.concatenate(feats).tobytes() == exp_feats.tobytes()
        validate_dataset(f"{url}/{split}", expected_num_frames=spec.num_frames, expected_feature_dim=spec.feature_dim)
        multi_hot = ds.read_labels_multi_hot()
        assert np.array_equal(multi_hot.astype(bool), _multi_hot(exp_labels, spec.num_classes))


def test_write_local_single_split(tmp_path):
    from vhindex.data.reader import FrameDataset

    spec = dataclasses.replace(TINY, train=70)
    manifests = write_synthetic(spec, str(tmp_path / "out"), splits=["train"], rows_per_file=1000)
    assert list(manifests) == ["train"] and manifests["train"].num_rows == 70
    assert (tmp_path / "out" / "synth_spec.json").exists() and not (tmp_path / "out" / "query").exists()
    ds = FrameDataset.open(str(tmp_path / "out" / "train"))
    batch = next(ds.iter_batches(batch_size=70))
    assert batch.features.dtype == np.float32 and batch.features.shape == (70, 8, 64)
    with pytest.raises(ValueError, match="size 0"):
        write_synthetic(dataclasses.replace(TINY, query=0), str(tmp_path / "o2"), splits=["query"])
    with pytest.raises(ValueError, match="unknown split"):
        write_synthetic(TINY, str(tmp_path / "o3"), splits=["val"])


def test_golden_values():
    """Catches accidental changes of the generator (bump GENERATOR_VERSION when intended)."""
    _, feats, labels = generate_chunk(TINY, "train", 0, 12)
    assert labels == [[3, 4], [4], [6], [1], [2], [1], [2], [0], [1, 7], [4], [3], [6]]
    # float values may differ in the last bits across CPUs / BLAS builds, hence the tolerance
    assert float(feats.astype(np.float64).sum()) == pytest.approx(2860.712117, rel=1e-4)
    np.testing.assert_allclose(feats[0, 0, :6], [0.478171, 0.0, 0.104381, 1.336343, 0.0, 0.0], rtol=1e-3, atol=1e-5)

"""LSH, PCA-sign and ITQ on seeded structured data: retrieval quality, oracles, streaming, save/load."""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.index import hamming_distances
from vhindex.models import (
    ITQ,
    MODEL_REGISTRY,
    HashModel,
    PCASign,
    StreamingMoments,
    build_model,
    load_model,
    quantization_loss,
)
from vhindex.models.baselines import _Reservoir

MODELS = ["lsh", "pca_sign", "itq"]


def clustered_frames(n=400, n_clusters=16, latent=16, dim=48, frames=4, seed=0, dtype=np.float32):
    """Gaussian clusters in a low-dim latent, a random linear map to D, M noisy frames per video."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3.0, (n_clusters, latent))
    labels = rng.integers(0, n_clusters, n)
    z = centers[labels] + rng.normal(0, 0.5, (n, latent))
    video = z @ rng.normal(0, 1, (latent, dim)) + rng.normal(0, 0.2, (n, dim)) + 5.0  # offset: centring matters
    x = video[:, None, :] + rng.normal(0, 0.5, (n, frames, dim))
    return x.astype(dtype), labels


def batched(x, size):
    return lambda: (x[i : i + size] for i in range(0, len(x), size))


def mean_average_precision(codes, labels):
    """mAP over all queries, ranking every other item by brute-force Hamming distance (stable ties)."""
    dist = hamming_distances(codes, codes).astype(np.float64)
    np.fill_diagonal(dist, np.inf)
    aps = []
    for q in range(len(codes)):
        order = np.argsort(dist[q], kind="stable")[:-1]
        rel = labels[order] == labels[q]
        if rel.any():
            hits = np.cumsum(rel)
            aps.append(np.mean(hits[rel] / (np.flatnonzero(rel) + 1)))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def data():
    return clustered_frames()


# ------------------------------------------------------------------ quality and determinism


@pytest.mark.parametrize("name", MODELS)
def test_retrieval_far_better_than_random(name, data):
    x, labels = data
    model = build_model(name, 16).fit(batched(x, 64), seed=0)
    codes = model.encode(x)
    assert codes.dtype == np.int8 and codes.shape == (len(x), 16)
    assert set(np.unique(codes).tolist()) <= {-1, 1}
    rng = np.random.default_rng(1)
    random_map = mean_average_precision(rng.choice([-1, 1], size=codes.shape), labels)
    model_map = mean_average_precision(codes, labels)
    assert random_map < 0.15
    assert model_map > 0.7 and model_map > random_map + 0.5, f"{name}: mAP {model_map:.3f} (random {random_map:.3f})"


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_codes(name, data):
    x, _ = data
    a = build_model(name, 16).fit(batched(x, 50), seed=7)
    b = build_model(name, 16).fit(batched(x, 50), seed=7)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    assert a.version() == b.version()
    packed = a.encode_packed(x[:5])
    assert packed.dtype == np.uint8 and packed.shape == (5, 2)


def test_lsh_seed_matters_and_center_option(data):
    x, _ = data
    a = build_model("lsh", 16).fit(batched(x, 50), seed=1)
    b = build_model("lsh", 16).fit(batched(x, 50), seed=2)
    assert a.version() != b.version() and not np.array_equal(a.encode(x), b.encode(x))
    c = build_model("lsh", 16, center=False).fit(batched(x, 50), seed=1)
    assert np.all(c.mean_ == 0)
    # centring balances bits: the data is offset from the origin, so uncentred bits are lopsided
    assert np.abs(a.encode(x).mean(axis=0)).mean() < np.abs(c.encode(x).mean(axis=0)).mean()


def test_itq_loss_non_increasing_and_below_pca_sign(data):
    x, _ = data
    itq = build_model("itq", 16, n_iter=50).fit(batched(x, 64), seed=3)
    history = itq.loss_history
    assert history.shape == (51,)
    assert np.all(np.diff(history) <= 1e-9 * history[0]), history
    assert history[-1] < history[0]
    pooled = x.astype(np.float64).mean(axis=1)
    V = (pooled - itq.mean_) @ itq.components_
    pca_loss = quantization_loss(V)
    assert history[-1] <= pca_loss
    np.testing.assert_allclose(quantization_loss(V, itq.rotation_), history[-1], rtol=1e-10)
    np.testing.assert_allclose(itq.rotation_ @ itq.rotation_.T, np.eye(16), atol=1e-10)


def test_itq_reservoir_subsample_is_seeded(data):
    x, labels = data
    a = build_model("itq", 16, max_train=60).fit(batched(x, 25), seed=11)
    b = build_model("itq", 16, max_train=60).fit(batched(x, 25), seed=11)
    np.testing.assert_array_equal(a.encode(x), b.encode(x))
    assert mean_average_precision(a.encode(x), labels) > 0.7


def test_reservoir_keeps_a_uniform_sample_of_distinct_rows():
    counts = np.zeros(1000)
    for seed in range(40):
        res = _Reservoir(100, 1, np.random.default_rng(seed))
        for start in range(0, 1000, 37):
            res.update(np.arange(start, min(start + 37, 1000), dtype=np.float64)[:, None])
        sample = res.sample()[:, 0]
        assert sample.shape == (100,) and len(np.unique(sample)) == 100
        counts[sample.astype(int)] += 1
    # each row is kept with probability 0.1: early and late halves kept about equally often
    assert abs(counts[:500].sum() - counts[500:].sum()) < 0.2 * counts.sum()


# ------------------------------------------------------------------ PCA against a dense oracle


def anisotropic_frames(n=300, dim=12, frames=3, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    video = (rng.normal(size=(n, dim)) * np.linspace(5, 0.5, dim)) @ q.T + 2.0
    return (video[:, None, :] + rng.normal(0, 0.3, (n, frames, dim))).astype(np.float32)


def test_pca_sign_matches_dense_oracle():
    x = anisotropic_frames()
    model = PCASign(8).fit(batched(x, 32))
    pooled = x.astype(np.float64).mean(axis=1)
    evals, evecs = np.linalg.eigh(np.cov(pooled, rowvar=False))
    ref = evecs[:, np.argsort(evals)[::-1][:8]]
    flips = np.sign(np.sum(model.components_ * ref, axis=0))
    np.testing.assert_allclose(model.components_, ref * flips, atol=1e-8)
    np.testing.assert_allclose(model.eigenvalues_, np.sort(evals)[::-1][:8], rtol=1e-10)
    np.testing.assert_allclose(model.mean_, pooled.mean(axis=0), atol=1e-10)
    ref_codes = np.where((pooled - pooled.mean(axis=0)) @ ref > 0, 1, -1)
    np.testing.assert_array_equal(model.encode(x), ref_codes * flips.astype(np.int8))


def test_streaming_batch_size_does_not_change_pca():
    x = anisotropic_frames(n=120)
    fits = [PCASign(8).fit(batched(x, size)) for size in (1, 7, len(x))]
    for other in fits[1:]:
        np.testing.assert_allclose(other.mean_, fits[0].mean_, atol=1e-8)
        np.testing.assert_allclose(other.components_, fits[0].components_, atol=1e-8)
        np.testing.assert_allclose(other.eigenvalues_, fits[0].eigenvalues_, rtol=1e-8)


def test_streaming_moments_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (50, 4))
    m = StreamingMoments()
    for chunk in np.array_split(x, [1, 2, 10, 33]):
        m.update(chunk)
    np.testing.assert_allclose(m.mean, x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(m.covariance(), np.cov(x, rowvar=False), atol=1e-12)


def test_float16_batches_are_accepted(data):
    x, _ = data
    m16 = PCASign(8).fit(batched(x.astype(np.float16), 100))
    assert m16.encode(x.astype(np.float16)).shape == (len(x), 8)


# ------------------------------------------------------------------ save / load


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load_round_trip(name, where, data, tmp_path):
    x, _ = data
    model = build_model(name, 24).fit(batched(x, 100), seed=5)
    url = str(tmp_path / name) if where == "local" else f"memory://models-test/{name}"
    model.save(url)
    loaded = load_model(url)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    assert loaded.version() == model.version()
    assert (loaded.feature_dim, loaded.num_frames) == (48, 4)
    np.testing.assert_array_equal(loaded.encode(x), model.encode(x))
    assert type(model).load(url).version() == model.version()


def test_load_detects_corruption_and_wrong_class(data, tmp_path):
    x, _ = data
    build_model("pca_sign", 8).fit(batched(x, 100)).save(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="not a ITQ"):
        ITQ.load(str(tmp_path / "m"))
    weights = tmp_path / "m" / "weights.npz"
    weights.write_bytes(weights.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ValueError, match="checksum mismatch for weights.npz"):
        load_model(str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="not a saved vhindex model"):
        load_model(str(tmp_path / "nothing"))


# ------------------------------------------------------------------ errors


def test_registry_and_build_errors():
    assert {"lsh", "pca_sign", "itq"} <= set(MODEL_REGISTRY)
    assert all(issubclass(cls, HashModel) for cls in MODEL_REGISTRY.values())
    with pytest.raises(ValueError, match=r"unknown model name 'nope'.*'itq'.*'lsh'.*'pca_sign'"):
        build_model("nope", 16)
    with pytest.raises(ValueError, match="bad parameters for model 'lsh'"):
        build_model("lsh", 16, n_iter=3)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model("lsh", 12)
    with pytest.raises(ValueError, match="n_iter"):
        build_model("itq", 16, n_iter=-1)


@pytest.mark.parametrize("name", ["pca_sign", "itq"])
def test_bits_greater_than_dim(name):
    x = anisotropic_frames(n=20, dim=12)
    with pytest.raises(ValueError, match=r"bits=16 exceeds the feature dimension D=12.*bits <= 12"):
        build_model(name, 16).fit(batched(x, 10))


def test_encode_shape_errors(data):
    x, _ = data
    model = build_model("lsh", 8).fit(batched(x, 100), seed=0)
    with pytest.raises(ValueError, match="D=47 but the model was fitted on D=48"):
        model.encode(x[:, :, :47])
    with pytest.raises(ValueError, match="3 frames per video but the model was fitted on M=4"):
        model.encode(x[:, :3])
    with pytest.raises(ValueError, match=r"3-D \(B, M=4, D=48\).*frames\[:, None, :\]"):
        model.encode(x[:, 0])
    with pytest.raises(RuntimeError, match="not fitted"):
        build_model("lsh", 8).encode(x)


def test_fit_input_errors(data):
    x, _ = data
    with pytest.raises(TypeError, match="callable"):
        build_model("pca_sign", 8).fit([x])
    with pytest.raises(ValueError, match="no videos"):
        build_model("lsh", 8).fit(lambda: iter([]))
    with pytest.raises(ValueError, match="all batches must share M and D"):
        build_model("lsh", 8).fit(lambda: iter([x[:5], x[:5, :2]]))
    gen = (x[i : i + 100] for i in range(0, len(x), 100))
    with pytest.raises(ValueError, match="FRESH iterator"):
        build_model("itq", 8).fit(lambda: gen)

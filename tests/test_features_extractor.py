"""FrameFeatureExtractor on real videos: order, errors as rows, determinism, batching, oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("av")

from vhindex.features import FrameFeatureExtractor, VideoFeatures, build_backbone, sample_frames  # noqa: E402
from vhindex.testing.videos import make_corrupted_copy, real_video_paths, video_package, write_test_video  # noqa: E402

M, SIZE = 6, 128
NAMES = ("carphone_pristine", "perception_v1", "bikes")


@pytest.fixture(scope="module")
def videos() -> list[str]:
    paths = real_video_paths()
    missing = [n for n in NAMES if n not in paths]
    if missing:
        pytest.skip(f"real videos {missing} not installed ({', '.join(sorted({video_package(n) for n in missing}))})")
    return [paths[n] for n in NAMES]


@pytest.fixture(scope="module")
def extractor() -> FrameFeatureExtractor:
    return FrameFeatureExtractor(num_frames=M, image_size=SIZE, device="cpu", threads=2, batch_frames=16)


def test_results_in_order_with_errors_as_rows(videos, extractor, tmp_path):
    bad = make_corrupted_copy(videos[1], str(tmp_path / "cut.m4v"), "truncate")  # index at the end: won't open
    missing = str(tmp_path / "missing.mp4")
    sources = [videos[0], bad, videos[1], missing, videos[2]]
    results = extractor.extract(sources)
    assert [r.source for r in results] == sources
    assert [r.ok for r in results] == [True, False, True, False, True]
    for r in (results[0], results[2], results[4]):
        assert isinstance(r, VideoFeatures) and r.error is None and r.error_reason is None
        assert r.features.shape == (M, 1280) and r.features.dtype == np.float16
        assert np.isfinite(r.features).all() and r.features.any()
        assert r.decoded_frames > M and r.duration_s > 0 and r.seconds > 0
    assert results[1].features is None and results[1].error_reason == "open_failed" and bad in results[1].error
    assert results[3].error_reason == "not_found" and missing in results[3].error
    # Different videos, different features.
    assert not np.allclose(results[0].features, results[2].features, atol=0.05)


def test_features_equal_the_backbone_on_sampled_frames(videos):
    # Oracle: sample_frames + backbone.preprocess + forward, done by hand, in float32.
    ex = FrameFeatureExtractor(num_frames=M, image_size=SIZE, device="cpu", dtype="float32", batch_frames=5)
    got = ex.extract(videos[:2])
    net = build_backbone("efficientnet_lite0")
    for path, r in zip(videos[:2], got, strict=True):
        frames = sample_frames(path, M, size=SIZE).frames
        with torch.inference_mode():
            want = net(net.preprocess(torch.from_numpy(frames))).numpy()
        assert r.features.dtype == np.float32
        np.testing.assert_allclose(r.features, want, rtol=1e-3, atol=1e-4)


def test_deterministic_and_independent_of_batching(videos, extractor):
    once = extractor.extract([videos[0]])[0].features
    again = extractor.extract([videos[0]])[0].features
    np.testing.assert_array_equal(once, again)
    twice = extractor.extract([videos[0], videos[2], videos[0]])
    np.testing.assert_allclose(twice[0].features, twice[2].features, atol=1e-2)
    np.testing.assert_allclose(twice[0].features, once, atol=1e-2)

    big = FrameFeatureExtractor(num_frames=M, image_size=SIZE, device="cpu", batch_frames=256, decode_workers=0)
    tiny = FrameFeatureExtractor(num_frames=M, image_size=SIZE, device="cpu", batch_frames=4, decode_workers=3)
    a, b = big.extract(videos), tiny.extract(videos)
    for ra, rb in zip(a, b, strict=True):
        np.testing.assert_allclose(ra.features.astype(np.float32), rb.features.astype(np.float32), atol=1e-2)


def test_too_few_frames_and_non_finite_become_error_rows(videos, tmp_path, monkeypatch):
    short = write_test_video(str(tmp_path / "short.mp4"), np.full((3, 64, 64, 3), 90, np.uint8))
    ex = FrameFeatureExtractor(num_frames=4, image_size=64, device="cpu", min_frames=5)
    res = ex.extract([short, videos[0]])
    assert res[0].error_reason == "too_few_frames" and short in res[0].error
    assert res[1].ok

    real_forward = ex._forward
    calls = []

    def poisoned(frames):
        out = real_forward(frames)
        if not calls:  # the first pass: the first video's frames
            out[0, 0] = np.inf
        calls.append(len(frames))
        return out

    monkeypatch.setattr(ex, "_forward", poisoned)
    res = ex.extract([videos[0], videos[1]])
    assert res[0].error_reason == "non_finite" and videos[0] in res[0].error and res[0].features is None
    assert res[1].ok


def test_float16_overflow_is_reported(videos, monkeypatch):
    ex = FrameFeatureExtractor(num_frames=2, image_size=64, device="cpu")
    monkeypatch.setattr(ex, "_forward", lambda frames: np.full((len(frames), 1280), 1e6, np.float32))
    (res,) = ex.extract([videos[0]])
    assert res.error_reason == "non_finite"  # 1e6 does not fit float16


def test_describe_and_arguments(extractor):
    d = extractor.describe()
    assert d["backbone"] == "efficientnet_lite0" and d["weights"] == "bundled"
    assert (d["feature_dim"], d["num_frames"], d["image_size"], d["dtype"]) == (1280, M, SIZE, "float16")
    assert extractor.feature_dim == 1280 and extractor.backbone_name == "efficientnet_lite0"
    assert extractor.device == torch.device("cpu")
    assert FrameFeatureExtractor(num_frames=2).image_size == 224  # the backbone's input size
    with pytest.raises(TypeError, match="sequence"):
        extractor.extract("one.mp4")
    with pytest.raises(ValueError, match="dtype"):
        FrameFeatureExtractor(dtype="int8")
    with pytest.raises(ValueError, match="batch_frames"):
        FrameFeatureExtractor(batch_frames=0)
    with pytest.raises(ValueError, match="unknown backbone"):
        FrameFeatureExtractor("nope")
    assert extractor.extract([]) == []

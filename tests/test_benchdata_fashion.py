"""Fashion-MNIST video benchmark generator: idx loading, planning, rendering and building, on real data.

The data is the Debian package ``dataset-fashion-mnist``, extracted by ``make bench-sources`` under
``bench-work/sources/root`` (or installed system-wide, or under the roots in the
``VHINDEX_BENCH_SOURCES`` environment variable, ``os.pathsep``-separated). Tests that need it skip
when it is absent.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import struct

import numpy as np
import pytest

from vhindex.benchdata import fashion as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = [r for r in os.environ.get("VHINDEX_BENCH_SOURCES", "").split(os.pathsep) if r] + [
    os.path.join(REPO, "bench-work", "sources", "root")
]

# A small spec with the full preset's rendering knobs: enough clips to exercise planning.
SMALL = dataclasses.replace(F.FashionClipSpec(), train=200, query=60, database=120)
# Build tests: the tiny preset, shrunk further.
BUILD = dataclasses.replace(F.FashionClipSpec.preset("tiny"), train=5, query=4, database=6)


@pytest.fixture(scope="module")
def folder() -> str:
    try:
        return F.find_fashion_mnist(ROOTS)
    except FileNotFoundError as err:
        pytest.skip(f"Fashion-MNIST not available (run `make bench-sources`): {err}")


@pytest.fixture(scope="module")
def data(folder: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: F.load_fashion_mnist(folder, s) for s in ("train", "test")}


@pytest.fixture(scope="module")
def plans(data) -> dict[str, list[F.ClipPlan]]:
    return F.plan_clips(SMALL, data["train"][1], data["test"][1])


# ------------------------------------------------------------------------------------------ loading
def test_load_real_files(data) -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = data[split]
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        # Fashion-MNIST is exactly balanced; items are bright on black.
        assert np.bincount(labels).tolist() == [n // 10] * 10
        assert images[:, 0, 0].mean() < 10 and images.max() == 255
    assert len(F.CLASS_NAMES) == 10 and F.CLASS_NAMES[9] == "Ankle boot"


def _write_idx(path: str, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(f">I{len(dims)}I", magic, *dims) + payload)


def test_load_rejects_corrupt_files(tmp_path) -> None:
    images = str(tmp_path / "t10k-images-idx3-ubyte.gz")
    labels = str(tmp_path / "t10k-labels-idx1-ubyte.gz")
    _write_idx(labels, 0x801, (2,), bytes([1, 2]))
    _write_idx(images, 0x804, (2, 28, 28), bytes(2 * 28 * 28))  # wrong magic number
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: idx magic number 0x00000804"):
        F.load_fashion_mnist(str(tmp_path), "test")
    _write_idx(images, 0x803, (3, 28, 28), bytes(2 * 28 * 28))  # header promises 3 images, has 2
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: header says 3x28x28"):
        F.load_fashion_mnist(str(tmp_path), "test")
    with open(images, "wb") as f:  # not gzip at all
        f.write(b"not a gzip file")
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: not a readable gzip"):
        F.load_fashion_mnist(str(tmp_path), "test")
    _write_idx(images, 0x803, (2, 28, 28), bytes(2 * 28 * 28))
    _write_idx(labels, 0x801, (2,), bytes([1, 12]))  # label out of range
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: label 12 out of range"):
        F.load_fashion_mnist(str(tmp_path), "test")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        F.load_fashion_mnist(str(tmp_path), "train")


def test_find_reports_every_place(tmp_path) -> None:
    if os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("Fashion-MNIST is installed system-wide, so the search cannot fail")
    with pytest.raises(FileNotFoundError) as err:
        F.find_fashion_mnist([str(tmp_path)])
    msg = str(err.value)
    assert str(tmp_path / "usr/share/datasets/fashion-mnist") in msg
    assert "/usr/share/datasets/fashion-mnist" in msg and "make bench-sources" in msg
    assert "apt-get install dataset-fashion-mnist" in msg


# ----------------------------------------------------------------------------------------- planning
def test_spec_presets_and_validation() -> None:
    assert F.FashionClipSpec.preset("full") == F.FashionClipSpec()
    tiny = F.FashionClipSpec.preset("tiny")
    assert (tiny.train, tiny.query, tiny.database, tiny.frame_size, tiny.frames_per_clip) == (120, 40, 80, 64, 16)
    assert F.FashionClipSpec.from_dict(json.loads(json.dumps(tiny.to_dict()))) == tiny
    with pytest.raises(ValueError, match="unknown FashionClipSpec preset"):
        F.FashionClipSpec.preset("huge")
    with pytest.raises(ValueError, match="frame_size must be even"):
        F.FashionClipSpec(frame_size=63)
    with pytest.raises(ValueError, match="cannot hold 4 shots"):
        F.FashionClipSpec(frames_per_clip=8)


def test_plan_is_deterministic_per_seed(data, plans) -> None:
    again = F.plan_clips(SMALL, data["train"][1], data["test"][1])
    assert again == plans
    other = F.plan_clips(dataclasses.replace(SMALL, seed=1), data["train"][1], data["test"][1])
    assert [p.shots for p in other["query"]] != [p.shots for p in plans["query"]]


def test_plan_invariants(data, plans) -> None:
    train_labels, test_labels = data["train"][1], data["test"][1]
    used: dict[str, set[int]] = {}
    for split in F.SPLITS:
        split_plans = plans[split]
        assert len(split_plans) == SMALL.count(split)
        assert len({p.clip_id for p in split_plans}) == len(split_plans)
        source_labels = train_labels if split == "train" else test_labels
        images: list[int] = []
        for p in split_plans:
            assert p.split == split and p.clip_id.startswith({"train": "t", "query": "q", "database": "d"}[split])
            assert len(p.labels) in (1, 2) and list(p.labels) == sorted(set(p.labels))
            assert SMALL.shots[0] <= len(p.shots) <= SMALL.shots[1]
            assert sum(s.n_frames for s in p.shots) == SMALL.frames_per_clip
            assert all(s.n_frames >= SMALL.min_shot_frames for s in p.shots)
            items = [s for s in p.shots if s.kind == "item"]
            # Every label has an item shot, and every item shows an image of one of the labels.
            assert {s.label for s in items} == set(p.labels)
            for s in items:
                assert 0 <= s.image < len(source_labels) and source_labels[s.image] == s.label
            for s in p.shots:
                if s.kind == "distractor":
                    assert s.image == -1 and s.label == -1 and s.style in ("texture", "shapes", "title")
            images.extend(s.image for s in items)
        assert len(images) == len(set(images)), f"{split}: an image is used twice"
        used[split] = set(images)
    assert not used["query"] & used["database"]
    # Classes are balanced: primary labels cycle through shuffled blocks of all 10 classes, so each
    # class labels at least query/10 clips.
    counts = np.bincount([c for p in plans["query"] for c in p.labels], minlength=10)
    assert counts.min() >= SMALL.query // 10
    assert 0.1 < np.mean([len(p.labels) == 2 for p in plans["train"]]) < 0.5


def test_plan_refuses_too_many_clips(data) -> None:
    spec = dataclasses.replace(SMALL, train=10, query=3000, database=3000)
    with pytest.raises(ValueError, match=r"test set is too small for query\+database = 3000\+3000 .* needed, "
                                         r"1000 available"):
        F.plan_clips(spec, data["train"][1], data["test"][1])


# ---------------------------------------------------------------------------------------- rendering
def test_render_deterministic_and_shaped(data, plans) -> None:
    images = data["test"][0]
    plan = plans["query"][0]
    a = F.render_clip(plan, images, SMALL)
    assert a.shape == (SMALL.frames_per_clip, SMALL.frame_size, SMALL.frame_size, 3) and a.dtype == np.uint8
    assert np.array_equal(a, F.render_clip(plan, images, SMALL))
    assert not np.array_equal(a, F.render_clip(plans["query"][1], images, SMALL))
    assert a.std() > 5  # not a flat frame


def test_item_shots_show_the_item(data, plans) -> None:
    images = data["test"][0]
    blank = np.zeros_like(images)
    plan = next(p for p in plans["query"] if any(s.kind == "distractor" for s in p.shots))
    with_item = F.render_clip(plan, images, SMALL).astype(np.int16)
    without = F.render_clip(plan, blank, SMALL).astype(np.int16)
    start = 0
    for shot in plan.shots:
        sl = slice(start, start + shot.n_frames)
        diff = np.abs(with_item[sl] - without[sl]).max(axis=-1)  # (n, S, S)
        if shot.kind == "distractor":
            assert diff.max() == 0, "a distractor shot depends on the images"
        else:
            # The item covers a good part of every frame of its shot, and sits near the planned centre.
            covered = (diff > 20).mean(axis=(1, 2))
            assert covered.min() > 0.03, covered
            ys, xs = np.nonzero(diff[0] > 20)
            cx, cy = xs.mean() / SMALL.frame_size, ys.mean() / SMALL.frame_size
            assert abs(cx - shot.center0[0]) < 0.2 and abs(cy - shot.center0[1]) < 0.2
        start += shot.n_frames


# ----------------------------------------------------------------------------------------- building
def _file_hashes(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _mtimes(root: str) -> dict[str, int]:
    return {os.path.join(d, n): os.stat(os.path.join(d, n)).st_mtime_ns for d, _, ns in os.walk(root) for n in ns}


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory) -> tuple[str, dict[str, str]]:
    out = str(tmp_path_factory.mktemp("fashion") / "bench")
    messages: list[str] = []
    listings = F.build_fashion_clips(out, BUILD, roots=ROOTS, progress=messages.append)
    assert any("rendering" in m for m in messages)
    return out, listings


def test_build_files_and_listings(built, data) -> None:
    from vhindex.features import sample_frames
    from vhindex.pipelines.extract import read_listing

    out, listings = built
    expected = F.plan_clips(BUILD, data["train"][1], data["test"][1])
    assert set(listings) == set(F.SPLITS)
    for split, listing in listings.items():
        assert listing == os.path.join(out, split, "listing.csv")
        with open(listing) as f:
            assert f.readline().strip() == "uri,video_id,labels"
        inputs = read_listing(listing)
        assert [v.video_id for v in inputs] == [p.clip_id for p in expected[split]]
        assert [v.labels for v in inputs] == [p.labels for p in expected[split]]
        for v in inputs:
            assert v.uri == os.path.join(out, split, "videos", v.video_id + ".mp4")
        sampled = sample_frames(inputs[0].uri, 4, size=BUILD.frame_size)
        assert sampled.decoded_frames == BUILD.frames_per_clip and sampled.decode_error is None
        assert (sampled.width, sampled.height) == (BUILD.frame_size, BUILD.frame_size)
        assert sampled.frames.shape == (4, BUILD.frame_size, BUILD.frame_size, 3)
        assert os.path.isfile(os.path.join(out, split, "_done.json"))
    with open(os.path.join(out, "spec.json")) as f:
        meta = json.load(f)
    assert meta["complete"] and meta["version"] == F.GENERATOR_VERSION
    assert F.FashionClipSpec.from_dict(meta["spec"]) == BUILD
    assert meta["counts"] == {"train": 5, "query": 4, "database": 6} and len(meta["content_fingerprint"]) == 64


def test_build_decoded_frames_match_render(built, data) -> None:
    import av

    out, _ = built
    plan = F.plan_clips(BUILD, data["train"][1], data["test"][1])["query"][1]
    rendered = F.render_clip(plan, data["test"][0], BUILD).astype(np.float32)
    with av.open(os.path.join(out, "query", "videos", plan.clip_id + ".mp4")) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == BUILD.fps and stream.codec_context.name == "h264"
        decoded = np.stack([fr.to_ndarray(format="rgb24") for fr in c.decode(video=0)]).astype(np.float32)
    assert decoded.shape == rendered.shape
    assert np.abs(decoded - rendered).mean() < 12  # lossy (crf 23, 4:2:0) but the same pictures


def test_build_rerun_skips_and_other_spec_refused(built) -> None:
    out, listings = built
    before = _mtimes(out)
    messages: list[str] = []
    assert F.build_fashion_clips(out, BUILD, roots=ROOTS, progress=messages.append) == listings
    assert _mtimes(out) == before
    assert all("skipped" in m for m in messages) and len(messages) == 3
    with pytest.raises(ValueError, match=r"different spec \(spec fields \['seed'\] differ"):
        F.build_fashion_clips(out, dataclasses.replace(BUILD, seed=7), roots=ROOTS)


def test_build_resumes_missing_clips(built, tmp_path) -> None:
    import shutil

    src, _ = built
    out = str(tmp_path / "copy")
    shutil.copytree(src, out)
    reference = _file_hashes(out)
    victim = os.path.join(out, "database", "videos", "d00003.mp4")
    os.remove(victim)
    os.remove(os.path.join(out, "database", "_done.json"))
    before = _mtimes(out)
    F.build_fashion_clips(out, BUILD, roots=ROOTS)
    after = _mtimes(out)
    rewritten = sorted(os.path.relpath(p, out) for p in after if before.get(p) != after[p])
    assert rewritten == ["database/_done.json", "database/listing.csv", "database/videos/d00003.mp4"]
    assert _file_hashes(out) == reference


def test_build_workers_identical(built, tmp_path) -> None:
    src, _ = built
    out = str(tmp_path / "parallel")
    F.build_fashion_clips(out, BUILD, roots=ROOTS, workers=2)
    assert _file_hashes(out) == _file_hashes(src)


def test_build_refuses_foreign_folder(folder, tmp_path) -> None:
    (tmp_path / "query").mkdir()
    with pytest.raises(ValueError, match="no spec.json"):
        F.build_fashion_clips(str(tmp_path), BUILD, roots=ROOTS)
    with pytest.raises(ValueError, match="workers must be"):
        F.build_fashion_clips(str(tmp_path / "x"), BUILD, roots=ROOTS, workers=0)

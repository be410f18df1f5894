"""HDF5 / .mat import and export: every paper layout with tiny fake files, and round trips."""

from __future__ import annotations

import os

import fsspec
import h5py
import numpy as np
import pytest
import scipy.io

from vhindex.data import (
    PAPER_LAYOUTS,
    FrameDataset,
    export_h5_features,
    import_h5_features,
    import_paper_dataset,
    read_mat_labels,
    validate_dataset,
)

M, D, C = 2, 3, 4


def _feats(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, M, D)).astype(np.float32)


def _labels(n: int, seed: int) -> np.ndarray:
    lab = np.random.default_rng(seed + 100).random((n, C)) < 0.4
    return lab.astype(np.float64)  # MATLAB stores doubles


def _write_h5(path, feats, key="feats"):
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=feats)


def _write_mat(path, key, labels, v73: bool):
    if not v73:
        scipy.io.savemat(path, {key: labels})
        return
    # what MATLAB's save -v7.3 produces: HDF5 with a 512-byte header, column-major (so transposed)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset(key, data=labels.T)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file".ljust(116) + b"\0" * 8 + b"\0\x02IM")


def _make_sources(name: str, src, n_per_file: int = 5):
    """Fake released files for a layout; returns split -> (features, labels or None) oracles."""
    layout = PAPER_LAYOUTS[name]
    oracle = {}
    seed = 0
    for split, files in layout.splits.items():
        if files.shared_with:
            continue
        feats, labels = [], []
        for i, fname in enumerate(files.feats):
            n = n_per_file + i  # files of different sizes
            feats.append(_feats(n, seed))
            _write_h5(os.path.join(src, fname), feats[-1])
            seed += 1
        if files.labels:
            rows = [len(f) for f in feats]
            if len(files.labels) == 1:
                rows = [sum(rows)]
            for j, (fname, n) in enumerate(zip(files.labels, rows, strict=True)):
                labels.append(_labels(n, seed))
                key = files.labels_key or "labels_var"
                _write_mat(os.path.join(src, fname), key, labels[-1], v73=(seed + j) % 2 == 1)
                seed += 1
        oracle[split] = (np.concatenate(feats), np.concatenate(labels) if labels else None)
    for split, files in layout.splits.items():
        if files.shared_with:
            oracle[split] = oracle[files.shared_with]
    return oracle


@pytest.mark.parametrize("name", sorted(PAPER_LAYOUTS))
def test_import_every_paper_layout(tmp_path, name):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    oracle = _make_sources(name, str(src))
    manifests = import_paper_dataset(name, str(src), str(out), row_group_size=3, chunk_rows=4)
    layout = PAPER_LAYOUTS[name]
    assert sorted(manifests) == sorted(layout.splits) == ["database", "query", "train"]
    for split, (feats, labels) in oracle.items():
        ds = FrameDataset.open(str(out / split))
        owner = layout.splits[split].shared_with or split
        assert ds.num_videos == len(feats)
        assert ds.read_video_ids() == [f"{name}-{owner}-{i:07d}" for i in range(len(feats))]
        got = np.concatenate([b.features for b in ds.iter_batches(4)])
        np.testing.assert_array_equal(got, feats.astype(np.float16))
        if labels is None:
            assert ds.meta.num_classes is None and not ds.has_labels
        else:
            assert ds.meta.num_classes == C
            np.testing.assert_array_equal(ds.read_labels_multi_hot(), labels.astype(bool))
        validate_dataset(str(out / split))
    for split, files in layout.splits.items():
        if files.shared_with:  # written once: only a manifest pointing into the sibling folder
            assert os.listdir(out / split) == ["_manifest.json"]
            assert all(f.path.startswith(f"../{files.shared_with}/") for f in manifests[split].files)


def test_fcvid_query_is_the_database(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _make_sources("fcvid", str(src))
    import_paper_dataset("FCVID", str(src), str(tmp_path / "out"), splits=["query"])
    assert sorted(os.listdir(tmp_path / "out")) == ["database", "query"]  # the owner came along
    q = FrameDataset.open(str(tmp_path / "out" / "query"))
    db = FrameDataset.open(str(tmp_path / "out" / "database"))
    assert q.read_video_ids() == db.read_video_ids()


@pytest.mark.parametrize("mat_format", ["v5", "v7.3"])
def test_export_then_import_round_trip(tmp_path, mat_format):
    src = tmp_path / "src"
    src.mkdir()
    feats, labels = _feats(11, 1), _labels(11, 1)
    _write_h5(src / "f.h5", feats)
    _write_mat(src / "l.mat", "labels", labels, v73=False)
    import_h5_features(str(src / "f.h5"), str(tmp_path / "ds"), labels_url=str(src / "l.mat"), id_prefix="x-",
                       dtype="float32", row_group_size=4)
    export_h5_features(str(tmp_path / "ds"), str(tmp_path / "exp" / "f.h5"),
                       labels_out_url=str(tmp_path / "exp" / "l.mat"), mat_format=mat_format)
    with h5py.File(tmp_path / "exp" / "f.h5", "r") as f:
        np.testing.assert_array_equal(f["feats"][:], feats)
    if mat_format == "v5":
        np.testing.assert_array_equal(scipy.io.loadmat(tmp_path / "exp" / "l.mat")["labels"], labels)
    else:
        assert h5py.is_hdf5(tmp_path / "exp" / "l.mat")
        with open(tmp_path / "exp" / "l.mat", "rb") as f:
            assert f.read(19) == b"MATLAB 7.3 MAT-file"
        with h5py.File(tmp_path / "exp" / "l.mat", "r") as f:
            assert f["labels"].shape == (C, 11)  # column-major, as MATLAB stores it
    np.testing.assert_array_equal(read_mat_labels(str(tmp_path / "exp" / "l.mat"), "labels"), labels.astype(bool))
    import_h5_features(str(tmp_path / "exp" / "f.h5"), str(tmp_path / "ds2"),
                       labels_url=str(tmp_path / "exp" / "l.mat"), labels_key="labels", id_prefix="y-", dtype="float32")
    ds2 = FrameDataset.open(str(tmp_path / "ds2"))
    np.testing.assert_array_equal(np.concatenate([b.features for b in ds2.iter_batches()]), feats)
    np.testing.assert_array_equal(ds2.read_labels_multi_hot(), labels.astype(bool))
    assert ds2.read_video_ids()[:2] == ["y-0000000", "y-0000001"]


def test_import_errors_name_the_files(tmp_path):
    _write_h5(tmp_path / "f.h5", _feats(5, 0))
    _write_mat(tmp_path / "l.mat", "labels", _labels(6, 0), v73=False)
    with pytest.raises(ValueError, match=r"l\.mat: label matrix has shape \(6, 4\) but the features have 5 rows"):
        import_h5_features(str(tmp_path / "f.h5"), str(tmp_path / "a"), labels_url=str(tmp_path / "l.mat"), id_prefix="")
    with pytest.raises(KeyError, match=r"f\.h5 has no dataset 'x'.*\['feats'\]"):
        import_h5_features(str(tmp_path / "f.h5"), str(tmp_path / "b"), key="x", id_prefix="")
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.zeros((5, 2)), "b": np.zeros((5, 2))})
    with pytest.raises(KeyError, match="pass labels_key"):
        import_h5_features(str(tmp_path / "f.h5"), str(tmp_path / "c"), labels_url=str(tmp_path / "two.mat"), id_prefix="")
    scipy.io.savemat(tmp_path / "idx.mat", {"labels": np.full((5, 2), 3.0)})
    with pytest.raises(ValueError, match="holds the value 3.0; expected a multi-hot 0/1 matrix"):
        import_h5_features(str(tmp_path / "f.h5"), str(tmp_path / "d"), labels_url=str(tmp_path / "idx.mat"), id_prefix="")
    with pytest.raises(KeyError, match="unknown paper dataset 'kinetics'"):
        import_paper_dataset("kinetics", str(tmp_path), str(tmp_path / "e"))


@pytest.mark.integration
def test_import_and_export_on_s3(tmp_path, s3_server):
    so = s3_server.storage_options
    fs = fsspec.filesystem("s3", **so)
    feats, labels = _feats(7, 3), _labels(7, 3)
    _write_h5(tmp_path / "f.h5", feats)
    _write_mat(tmp_path / "l.mat", "labels", labels, v73=True)
    base = s3_server.url()
    fs.put_file(str(tmp_path / "f.h5"), f"{base}/src/f.h5")
    fs.put_file(str(tmp_path / "l.mat"), f"{base}/src/l.mat")
    import_h5_features(f"{base}/src/f.h5", f"{base}/ds", labels_url=f"{base}/src/l.mat", id_prefix="s-",
                       dtype="float32", storage_options=so, chunk_rows=3)
    ds = FrameDataset.open(f"{base}/ds", storage_options=so)
    np.testing.assert_array_equal(np.concatenate([b.features for b in ds.iter_batches()]), feats)
    np.testing.assert_array_equal(ds.read_labels_multi_hot(), labels.astype(bool))
    export_h5_features(f"{base}/ds", f"{base}/exp/f.h5", labels_out_url=f"{base}/exp/l.mat", storage_options=so)
    fs.get_file(f"{base}/exp/f.h5", str(tmp_path / "back.h5"))
    with h5py.File(tmp_path / "back.h5", "r") as f:
        np.testing.assert_array_equal(f["feats"][:], feats)

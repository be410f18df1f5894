"""validate_dataset: every kind of problem is reported with its file and row, all at once."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vhindex.data import (
    CodesDatasetMeta,
    CodesDatasetWriter,
    DatasetValidationError,
    FrameDatasetMeta,
    FrameDatasetWriter,
    validate_dataset,
)

M, D, C = 3, 4, 6


def _good(url, n=30, storage_options=None, nan_at=None):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((n, M, D)).astype(np.float32)
    if nan_at is not None:
        for row, frame, value in nan_at:
            feats[row, frame, 1] = value
    meta = FrameDatasetMeta(num_frames=M, feature_dim=D, dtype="float32", num_classes=C)
    with FrameDatasetWriter(url, meta, with_labels=True, rows_per_file=10, row_group_size=4,
                            storage_options=storage_options) as w:
        w.write([f"v{i}" for i in range(n)], feats, [[i % C] for i in range(n)])
    return w.manifest


def _var_part(path, ids, rows, labels=None):
    """A Parquet file as another tool would write it: variable list<list<float>> features."""
    cols = {"video_id": pa.array(ids, pa.string()),
            "features": pa.array(rows, type=pa.list_(pa.list_(pa.float32())))}
    if labels is not None:
        cols["labels"] = pa.array(labels, type=pa.list_(pa.int32()))
    pq.write_table(pa.table(cols), path)


def _fixed_part(path, ids, feats: np.ndarray):
    n, m, d = feats.shape
    values = pa.array(feats.reshape(-1))
    col = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(values, d), m)
    pq.write_table(pa.table({"video_id": pa.array(ids, pa.string()), "features": col}), path)


def _u(*parts) -> str:
    """The full URL validate_dataset uses to name a local file."""
    return "file://" + os.path.join(*map(str, parts))


def _problems(url, **kw) -> list[str]:
    with pytest.raises(DatasetValidationError) as info:
        validate_dataset(url, **kw)
    err = info.value
    assert isinstance(err, ValueError)
    assert len(err.problems) == err.report.num_problems or err.report.num_problems > len(err.problems)
    for p in err.problems:  # every problem is in the message
        assert str(p) in str(err)
    return [str(p) for p in err.problems]


def test_good_dataset_report(tmp_path):
    url = str(tmp_path / "ds")
    _good(url)
    report = validate_dataset(url)
    parts = sorted(p for p in os.listdir(url) if p.endswith(".parquet"))
    assert (report.num_files, report.num_rows) == (3, 30)
    assert report.num_bytes == sum(os.path.getsize(os.path.join(url, p)) for p in parts)
    assert (report.num_frames, report.feature_dim, report.dtype, report.num_classes) == (M, D, "float32", C)
    assert report.has_manifest and report.ok
    text = str(report)
    assert "files: 3  rows: 30" in text and "OK" in text


def test_good_folder_without_manifest(tmp_path):
    rows = np.arange(2 * M * D, dtype=np.float32).reshape(2, M, D).tolist()
    _var_part(tmp_path / "a.parquet", ["a", "b"], rows, [[0], [1, 2]])
    _var_part(tmp_path / "b.parquet", ["c", "d"], rows, [[], None])
    report = validate_dataset(str(tmp_path))
    assert not report.has_manifest
    assert (report.num_files, report.num_rows, report.num_frames, report.feature_dim) == (2, 4, M, D)


def test_wrong_dims_per_row_in_variable_lists(tmp_path):
    rows = np.zeros((5, M, D)).tolist()
    rows[3][1] = rows[3][1][:3]  # row 3, frame 1 has D=3
    rows[4] = rows[4][:2]  # row 4 has M=2
    _var_part(tmp_path / "a.parquet", [f"v{i}" for i in range(5)], rows)
    probs = _problems(str(tmp_path), expected_num_frames=M, expected_feature_dim=D)
    f = _u(tmp_path, "a.parquet")
    assert len(probs) == 2
    assert probs[0].startswith(f"{f}: row 3: column 'features': frame 1 has D=3 dims, expected 4")
    assert probs[1].startswith(f"{f}: row 4: column 'features': has M=2 frames, expected 3")
    # without expectations the first row is the reference
    probs = _problems(str(tmp_path))
    assert "row 3" in probs[0] and "D=3" in probs[0] and "row 4" in probs[1] and "M=2" in probs[1]


def test_fixed_size_type_mismatch_vs_manifest_and_expected(tmp_path):
    url = str(tmp_path / "ds")
    _good(url)
    part1 = _u(url, "part-00001.parquet")
    _fixed_part(os.path.join(url, "part-00001.parquet"), [f"v{i}" for i in range(10, 20)], np.zeros((10, M, D + 1), dtype=np.float32))
    with open(os.path.join(url, "_manifest.json")) as fh:
        manifest = json.load(fh)
    manifest["files"][1]["row_group_rows"] = [10]
    with open(os.path.join(url, "_manifest.json"), "w") as fh:
        json.dump(manifest, fh)
    probs = _problems(url)
    assert any(p.startswith(f"{part1}: column 'features': all frames have D=5 dims, expected 4 (feature_dim in the manifest)")
               for p in probs), probs
    assert any(part1 in p and "disagrees with" in p and "part-00000.parquet" in p and "D=5 vs 4" in p for p in probs)
    probs = _problems(url, expected_num_frames=2)
    assert any("records 3 but expected_num_frames=2" in p for p in probs)
    assert any(p.startswith(_u(url, "part-00000.parquet")) and "M=3 frames, expected 2 (expected_num_frames)" in p
               for p in probs)


def test_nan_and_inf_name_file_row_and_frame(tmp_path):
    url = str(tmp_path / "ds")
    _good(url, nan_at=[(0, 0, np.inf), (15, 2, np.nan)])
    probs = _problems(url)
    assert probs == [
        f"{_u(url, 'part-00000.parquet')}: row 0: column 'features': non-finite value (Inf) at frame 0",
        f"{_u(url, 'part-00001.parquet')}: row 5: column 'features': non-finite value (NaN) at frame 2",
    ]
    assert validate_dataset(url, check_values=False).ok


def test_duplicate_ids_within_and_across_files(tmp_path):
    rows = np.zeros((3, M, D)).tolist()
    _var_part(tmp_path / "a.parquet", ["x", "y", "x"], rows)
    _var_part(tmp_path / "b.parquet", ["z", "y", "w"], rows)
    a, b = _u(tmp_path, "a.parquet"), _u(tmp_path, "b.parquet")
    assert _problems(str(tmp_path)) == [
        f"{a}: row 2: column 'video_id': duplicate video id 'x', first seen in {a} row 0",
        f"{b}: row 1: column 'video_id': duplicate video id 'y', first seen in {a} row 1",
    ]


def test_missing_columns_and_null_ids(tmp_path):
    pq.write_table(pa.table({"video_id": ["a"], "feats": [[1.0]]}), tmp_path / "a.parquet")
    _var_part(tmp_path / "b.parquet", ["b", None], np.zeros((2, M, D)).tolist())
    probs = _problems(str(tmp_path))
    assert f"{_u(tmp_path, 'a.parquet')}: column 'features': missing column 'features'" in probs[0]
    assert probs[1] == f"{_u(tmp_path, 'b.parquet')}: row 1: column 'video_id': video_id is null"


def test_empty_and_unreadable_files(tmp_path):
    _var_part(tmp_path / "a.parquet", ["a"], np.zeros((1, M, D)).tolist())
    (tmp_path / "b.parquet").write_bytes(b"")
    (tmp_path / "c.parquet").write_bytes(b"not parquet at all")
    _var_part(tmp_path / "d.parquet", [], [])
    probs = _problems(str(tmp_path))
    assert probs[0] == f"{_u(tmp_path, 'b.parquet')}: empty file (0 bytes); remove it or re-write the dataset"
    assert probs[1].startswith(f"{_u(tmp_path, 'c.parquet')}: unreadable Parquet file")
    assert probs[2] == f"{_u(tmp_path, 'd.parquet')}: file has 0 rows; remove it or re-write the dataset"
    assert len(probs) == 3


def test_files_disagree_with_each_other(tmp_path):
    _fixed_part(tmp_path / "a.parquet", ["a"], np.zeros((1, M, D), dtype=np.float32))
    _fixed_part(tmp_path / "b.parquet", ["b"], np.zeros((1, M, D), dtype=np.float16))
    _fixed_part(tmp_path / "c.parquet", ["c"], np.zeros((1, M + 1, D), dtype=np.float32))
    probs = _problems(str(tmp_path))
    assert probs == [
        f"{_u(tmp_path, 'b.parquet')}: column 'features': disagrees with {_u(tmp_path, 'a.parquet')}: dtype=float16 vs float32",
        f"{_u(tmp_path, 'c.parquet')}: column 'features': disagrees with {_u(tmp_path, 'a.parquet')}: M=4 vs 3",
    ]


def test_manifest_disagrees_with_files(tmp_path):
    url = str(tmp_path / "ds")
    _good(url)
    path = os.path.join(url, "_manifest.json")
    with open(path) as fh:
        manifest = json.load(fh)
    manifest["files"][2]["num_rows"] = 11
    manifest["num_rows"] = 31
    manifest["files"].append({"path": "part-00009.parquet", "num_rows": 0, "row_group_rows": []})
    with open(path, "w") as fh:
        json.dump(manifest, fh)
    _var_part(os.path.join(url, "stray.parquet"), ["zz"], np.zeros((1, M, D)).tolist())
    probs = _problems(url)
    p2 = _u(url, "part-00002.parquet")
    assert f"{p2}: has 10 rows but _manifest.json lists 11" in probs
    assert f"{_u(url, 'part-00009.parquet')}: listed in _manifest.json but missing; re-write the dataset" in probs
    assert any(p.startswith(_u(url, "stray.parquet")) and "not listed" in p for p in probs)
    assert len(probs) == 3


def test_labels_out_of_range(tmp_path):
    rows = np.zeros((3, M, D)).tolist()
    _var_part(tmp_path / "a.parquet", ["a", "b", "c"], rows, [[0, 5], [6], [-1]])
    f = _u(tmp_path, "a.parquet")
    assert _problems(str(tmp_path), expected_num_classes=6) == [
        f"{f}: row 1: column 'labels': label 6 is out of range [0, 6)",
        f"{f}: row 2: column 'labels': label -1 is out of range [0, 6)",
    ]
    assert _problems(str(tmp_path)) == [f"{f}: row 2: column 'labels': label -1 is out of range [0, inf)"]


def test_all_problems_at_once_and_truncation(tmp_path):
    rows = np.zeros((4, M, D)).tolist()
    rows[1][0][0] = float("nan")
    _var_part(tmp_path / "a.parquet", ["a", "a", None, "b"], rows, [[0], [9], [], []])
    (tmp_path / "b.parquet").write_bytes(b"")
    probs = _problems(str(tmp_path), expected_num_classes=5)
    assert len(probs) == 5  # duplicate, null id, NaN, label, empty file
    with pytest.raises(DatasetValidationError) as info:
        validate_dataset(str(tmp_path), expected_num_classes=5, max_problems=2)
    assert len(info.value.problems) == 2 and info.value.report.num_problems == 5
    assert "and 3 more" in str(info.value)


def test_codes_dataset(tmp_path):
    url = str(tmp_path / "codes")
    with CodesDatasetWriter(url, CodesDatasetMeta(bits=16), row_group_size=3) as w:
        w.write(["a", "b", "c", "d"], np.zeros((4, 2), dtype=np.uint8))
    report = validate_dataset(url)
    assert report.kind == "codes" and report.num_rows == 4 and report.bits == 16
    pq.write_table(pa.table({"video_id": ["a"], "code": pa.array([b"abc"], pa.binary(3))}),
                   os.path.join(url, "part-00000.parquet"))
    probs = _problems(url)
    assert any("expected fixed_size_binary(2) for 16 bits" in p for p in probs)


def test_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        validate_dataset(str(tmp_path / "nope"))


@pytest.mark.integration
def test_validate_on_s3_and_memory(s3_server, memory_url):
    url = s3_server.url()
    _good(url, storage_options=s3_server.storage_options, nan_at=[(12, 1, np.nan)])
    probs = _problems(url, storage_options=s3_server.storage_options)
    assert probs == [f"{url}/part-00001.parquet: row 2: column 'features': non-finite value (NaN) at frame 1"]
    _good(memory_url)
    assert validate_dataset(memory_url).num_rows == 30

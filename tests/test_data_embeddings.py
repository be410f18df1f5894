"""Embeddings datasets (video_id + one dim-vector per video): round trips and errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vhindex.data import (
    EmbeddingDataset,
    EmbeddingDatasetMeta,
    EmbeddingDatasetWriter,
    FrameDataset,
    IncompleteDatasetError,
    embeddings_to_numpy,
)
from vhindex.data.schema import COL_EMBEDDING, COL_VIDEO_ID, FORMAT_EMBEDDINGS, embedding_schema


def _data(n: int, d: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"v{i:05d}" for i in range(n)], rng.standard_normal((n, d)).astype(np.float32)


def _write(url, ids, x, meta=None, storage_options=None, **kw):
    meta = meta or EmbeddingDatasetMeta(dim=x.shape[1], source="test", source_version="1")
    kw.setdefault("rows_per_file", 120)
    kw.setdefault("row_group_size", 50)
    with EmbeddingDatasetWriter(url, meta, storage_options=storage_options, **kw) as w:
        # uneven batches cross row-group and file boundaries
        for start in range(0, len(ids), 37):
            w.write(ids[start:start + 37], x[start:start + 37])
    return w.manifest


def test_meta_and_schema():
    meta = EmbeddingDatasetMeta(dim=8, dtype="float16", source="bth-teacher", source_version="abc")
    obj = json.loads(meta.to_json())
    assert obj["format"] == FORMAT_EMBEDDINGS
    assert EmbeddingDatasetMeta.from_dict(obj) == meta
    schema = embedding_schema(meta)
    assert schema.field(COL_VIDEO_ID).type == pa.string() and not schema.field(COL_VIDEO_ID).nullable
    assert schema.field(COL_EMBEDDING).type == pa.list_(pa.float16(), 8)
    assert not schema.field(COL_EMBEDDING).nullable
    with pytest.raises(ValueError, match="dim must be a positive int"):
        EmbeddingDatasetMeta(dim=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        EmbeddingDatasetMeta(dim=4, dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a vhindex embeddings dataset"):
        EmbeddingDatasetMeta.from_dict({"format": "vhindex.codes", "dim": 4})


@pytest.mark.parametrize("where", ["local", "memory"])
def test_round_trip(tmp_path, memory_url, where):
    url = str(tmp_path / "emb") if where == "local" else memory_url
    ids, x = _data(301, 12)
    manifest = _write(url, ids, x)
    assert manifest.num_rows == 301 and len(manifest.files) == 3
    assert manifest.files[0].row_group_rows == [50, 50, 20]
    ds = EmbeddingDataset.open(url)
    assert ds.num_videos == len(ds) == 301 and ds.dim == 12 and ds.meta.source == "test"
    got_ids, got = [], []
    for batch in ds.iter_batches(64):
        assert batch.embeddings.dtype == np.float32 and batch.embeddings.shape[1] == 12
        assert len(batch) <= 64
        got_ids += batch.video_ids
        got.append(batch.embeddings)
    assert got_ids == ids
    np.testing.assert_array_equal(np.concatenate(got), x)
    # read tasks cover the dataset in order, each read on its own
    tasks = ds.plan(num_tasks=4)
    assert len(tasks) == 4
    parts = [ds.read_rows(t) for t in tasks]
    assert sum((p.video_ids for p in parts), []) == ids
    np.testing.assert_array_equal(np.concatenate([p.embeddings for p in parts]), x)
    no_ids = ds.read_rows(tasks[1], with_ids=False)
    assert no_ids.video_ids is None and no_ids.embeddings.flags.c_contiguous
    np.testing.assert_array_equal(no_ids.embeddings, parts[1].embeddings)
    whole = ds.read_rows()
    np.testing.assert_array_equal(whole.embeddings, x)
    assert ds.read_video_ids() == ids


def test_float16_storage(tmp_path):
    ids, x = _data(40, 6)
    _write(str(tmp_path / "e"), ids, x, meta=EmbeddingDatasetMeta(dim=6, dtype="float16"))
    ds = EmbeddingDataset.open(str(tmp_path / "e"))
    got = ds.read_rows().embeddings
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="beyond float16"):
        with EmbeddingDatasetWriter(str(tmp_path / "f"), EmbeddingDatasetMeta(dim=2, dtype="float16")) as w:
            w.write(["a"], np.array([[1e6, 0.0]]))


def test_writer_errors(tmp_path):
    meta = EmbeddingDatasetMeta(dim=4)
    with EmbeddingDatasetWriter(str(tmp_path / "e"), meta) as w:
        with pytest.raises(ValueError, match=r"shape \(B, dim=4\)"):
            w.write(["a"], np.zeros((1, 5)))
        with pytest.raises(ValueError, match="numeric"):
            w.write(["a"], np.array([["x"] * 4]))
        with pytest.raises(ValueError, match="one id per row"):
            w.write(["a", "b"], np.zeros((1, 4)))
        w.write(["a"], np.zeros((1, 4)))
        with pytest.raises(ValueError, match="duplicate video id 'a'"):
            w.write(["a"], np.zeros((1, 4)))
    with pytest.raises(TypeError, match="EmbeddingDatasetMeta"):
        EmbeddingDatasetWriter(str(tmp_path / "g"), {"dim": 4})  # type: ignore[arg-type]
    with pytest.raises(FileExistsError, match="non-empty folder"):
        EmbeddingDatasetWriter(str(tmp_path / "e"), meta)


def test_reader_errors(tmp_path):
    with pytest.raises(IncompleteDatasetError, match="no _manifest.json"):
        EmbeddingDataset.open(str(tmp_path / "missing"))
    ids, x = _data(20, 4)
    _write(str(tmp_path / "e"), ids, x)
    # an embeddings dataset is not a frame dataset and vice versa
    with pytest.raises(ValueError, match="not a vhindex frame-feature dataset"):
        FrameDataset.open(str(tmp_path / "e"))
    with pytest.raises(ValueError, match="batch_size"):
        next(EmbeddingDataset.open(str(tmp_path / "e")).iter_batches(0))
    # NaN values: named by file and row when asked to check
    x[13, 2] = np.nan
    _write(str(tmp_path / "nan"), ids, x)
    ds = EmbeddingDataset.open(str(tmp_path / "nan"))
    assert np.isnan(ds.read_rows().embeddings[13, 2])
    with pytest.raises(ValueError, match=r"part-00000\.parquet: row 13: embedding has NaN"):
        ds.read_rows(check_finite=True)


def test_variable_length_lists_from_other_tools():
    ok = pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float32()))
    np.testing.assert_array_equal(embeddings_to_numpy(ok, 2), [[1, 2], [3, 4]])
    ragged = pa.array([[1.0, 2.0], [3.0]], type=pa.list_(pa.float32()))
    with pytest.raises(ValueError, match="f.parquet: row 11: features have 1 frames, expected dim=2"):
        embeddings_to_numpy(ragged, 2, where="f.parquet", row_offset=10)
    with pytest.raises(ValueError, match="row 1: embedding is null"):
        embeddings_to_numpy(pa.array([[1.0], None], type=pa.list_(pa.float32(), 1)), 1)
    with pytest.raises(ValueError, match="have 3 dims, expected dim=2"):
        embeddings_to_numpy(pa.array([[1.0, 2.0, 3.0]], type=pa.list_(pa.float32(), 3)), 2)


def test_modified_files_are_detected(tmp_path):
    ids, x = _data(100, 4)
    _write(str(tmp_path / "e"), ids, x)
    part = tmp_path / "e" / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table, part, row_group_size=1000)  # one row group instead of three
    with pytest.raises(ValueError, match="row groups but the manifest lists"):
        EmbeddingDataset.open(str(tmp_path / "e")).read_rows()

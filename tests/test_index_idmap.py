"""IdMap: positions in insertion order, errors naming the id, Parquet round trip."""

from __future__ import annotations

import numpy as np
import pytest

from vhindex.index import IdMap


def test_positions_and_lookups():
    m = IdMap(["a", "b"])
    np.testing.assert_array_equal(m.add(["c", "d"]), [2, 3])
    assert len(m) == 4 and "c" in m and "z" not in m
    np.testing.assert_array_equal(m.to_ints(["d", "a"]), [3, 0])
    assert m.to_ints(["d"]).dtype == np.int64
    ids = m.to_ids(np.array([[0, -1], [3, 2]]))
    assert ids.shape == (2, 2) and ids.tolist() == [["a", None], ["d", "c"]]


def test_errors_name_the_id():
    m = IdMap(["a"])
    with pytest.raises(KeyError, match="'nope'"):
        m.to_ints(["a", "nope"])
    with pytest.raises(ValueError, match="duplicate video id 'a'"):
        m.add(["x", "a"])
    with pytest.raises(ValueError, match="duplicate video id 'y'"):
        m.add(["y", "y"])
    assert len(m) == 1 and "x" not in m  # a failed add adds nothing
    with pytest.raises(TypeError, match="str"):
        m.add([3])
    with pytest.raises(IndexError, match="position 1 out of range"):
        m.to_ids([1])


def test_empty_map():
    m = IdMap()
    assert m.to_ids(np.full((2, 3), -1)).tolist() == [[None] * 3] * 2
    assert m.to_ints([]).shape == (0,)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load(tmp_path, where):
    url = str(tmp_path / "ids.parquet") if where == "local" else "memory://idmap-test/ids.parquet"
    m = IdMap([f"v{i:03d}" for i in range(50)] + ["ünïcode", ""])
    m.save(url)
    loaded = IdMap.load(url)
    assert loaded == m and loaded.to_ints(["ünïcode"]).tolist() == [50]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IdMap.load(str(tmp_path / "missing.parquet"))
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet"):
        IdMap.load(str(bad))

"""BinaryFlatIndex against a brute-force numpy oracle, with a tie-aware comparison; save/load."""

# ruff: noqa: E741  -- D, I are faiss's names for (distances, ids); kept on purpose
from __future__ import annotations

import numpy as np
import pytest

from vhindex.index import BinaryFlatIndex, IdMap, pack_codes, pad_distance
from vhindex.index.flat import INDEX_FILE, MANIFEST_FILE
from vhindex.index.testing import assert_same_knn, brute_force_knn


def clustered_codes(n: int, bits: int, rng: np.random.Generator, *, n_centers: int = 5, flip: float = 0.1):
    """{-1,+1} codes around a few random centres: realistic distance structure, many ties."""
    centers = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_centers, bits))
    codes = centers[rng.integers(0, n_centers, n)]
    flips = rng.random(codes.shape) < flip
    return np.where(flips, -codes, codes).astype(np.int8)


def duplicated_codes(n: int, bits: int, rng: np.random.Generator, *, distinct: int = 12):
    """Packed codes drawn from a small pool, so most distances are shared by many items."""
    pool = rng.integers(0, 256, size=(distinct, bits // 8), dtype=np.uint8)
    return pool[rng.integers(0, distinct, n)]


def make_index(codes, bits, **kw):
    ids = [f"vid-{i}" for i in range(len(codes))]
    index = BinaryFlatIndex(bits, **kw)
    index.add(ids, codes)
    return index, ids


# ------------------------------------------------------------------ the comparison helper itself


def test_assert_same_knn_accepts_tie_permutations_and_rejects_errors():
    # reference: full ranking of 6 items; distances 0,1,1,2,2,2
    D_ref = np.array([[0, 1, 1, 2, 2, 2]], dtype=np.int32)
    I_ref = np.array([[4, 0, 5, 1, 2, 3]])
    k = 4
    assert_same_knn(np.array([[0, 1, 1, 2]]), np.array([[4, 5, 0, 3]]), D_ref, I_ref)  # other tie at k-th
    with pytest.raises(AssertionError, match="distances"):
        assert_same_knn(np.array([[0, 1, 2, 2]]), np.array([[4, 0, 1, 2]]), D_ref, I_ref)
    with pytest.raises(AssertionError, match="below the k-th"):
        assert_same_knn(np.array([[0, 1, 1, 2]]), np.array([[4, 0, 1, 3]]), D_ref, I_ref)
    with pytest.raises(AssertionError, match="not at that distance"):
        assert_same_knn(np.array([[0, 1, 1, 2]]), np.array([[4, 0, 5, 7]]), D_ref, I_ref)
    with pytest.raises(AssertionError, match="repeated"):
        assert_same_knn(np.array([[0, 1, 1, 2]]), np.array([[4, 0, 5, 5]]), D_ref, I_ref)
    # with exactly k reference columns the k-th distance ties are restricted to those listed
    with pytest.raises(AssertionError, match="not at that distance"):
        assert_same_knn(np.array([[0, 1, 1, 2]]), np.array([[4, 0, 5, 3]]), D_ref[:, :k], I_ref[:, :k])


# ------------------------------------------------------------------ search vs oracle


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_search_many_ties(bits, k):
    rng = np.random.default_rng(bits * 100 + k)
    db = duplicated_codes(300, bits, rng)
    queries = np.concatenate([db[:10], duplicated_codes(10, bits, rng, distinct=30)])
    index, ids = make_index(db, bits)
    D, I = index.search(queries, k)
    assert D.dtype == np.int32 and I.dtype == np.int64 and D.shape == I.shape == (20, k)
    D_ref, I_ref = brute_force_knn(queries, db)
    assert_same_knn(D, I, D_ref, I_ref)
    # the same through video ids
    D2, vids = index.search_ids(queries, k)
    np.testing.assert_array_equal(D2, D)
    assert_same_knn(D2, vids, D_ref, index.idmap.to_ids(I_ref))


@pytest.mark.parametrize("bits", [64, 128, 256])
def test_search_structured_long_codes(bits):
    rng = np.random.default_rng(bits)
    db = clustered_codes(400, bits, rng)
    queries = clustered_codes(25, bits, rng)
    index, _ = make_index(db, bits, num_threads=1)
    D, I = index.search(queries, 10)
    assert_same_knn(D, I, *brute_force_knn(queries, db))
    # {-1,+1} queries and packed queries give the same answer
    D2, I2 = index.search(pack_codes(queries), 10)
    np.testing.assert_array_equal(D, D2)


def test_incremental_adds_match_single_add():
    rng = np.random.default_rng(1)
    db = duplicated_codes(100, 16, rng)
    index = BinaryFlatIndex(16)
    for start in range(0, 100, 33):
        index.add([f"vid-{i}" for i in range(start, min(start + 33, 100))], db[start : start + 33])
    assert index.ntotal == 100
    np.testing.assert_array_equal(index.reconstruct_codes(), db)
    assert_same_knn(*index.search(db[:7], 9), *brute_force_knn(db[:7], db))


def test_padding_when_k_exceeds_ntotal():
    codes = np.array([[0x80, 0x01], [0x00, 0x00], [0xFF, 0xFF]], dtype=np.uint8)
    index, _ = make_index(codes, 16)
    D, vids = index.search_ids(codes[:1], 5)
    assert D.tolist() == [[0, 2, 14, pad_distance(16), pad_distance(16)]] == [[0, 2, 14, 17, 17]]
    assert vids.tolist() == [["vid-0", "vid-1", "vid-2", None, None]]
    D, I = index.search(codes[:1], 5)
    assert I.tolist() == [[0, 1, 2, -1, -1]]
    assert_same_knn(D, I, *brute_force_knn(codes[:1], codes, 5))
    D, I = BinaryFlatIndex(16).search(codes, 2)
    assert (I == -1).all() and (D == 17).all()


def test_input_errors():
    index, _ = make_index(np.zeros((2, 2), dtype=np.uint8), 16)
    with pytest.raises(ValueError, match="16-bit index"):
        index.add(["x"], np.zeros((1, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="must match one to one"):
        index.add(["x", "y"], np.zeros((1, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="duplicate video id 'vid-1'"):
        index.add(["x", "vid-1"], np.zeros((2, 2), dtype=np.uint8))
    assert index.ntotal == len(index.idmap) == 2
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search(np.zeros((1, 2), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="16-bit index"):
        index.search(np.zeros((1, 8), dtype=np.int8), 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        BinaryFlatIndex(12)
    with pytest.raises(ValueError, match="num_threads"):
        BinaryFlatIndex(16, num_threads=0)


# ------------------------------------------------------------------ persistence


@pytest.mark.parametrize("where", ["local", "memory"])
def test_save_load_round_trip(tmp_path, where):
    url = str(tmp_path / "idx") if where == "local" else "memory://flat-index-test/idx"
    rng = np.random.default_rng(3)
    db = clustered_codes(200, 64, rng)
    index, _ = make_index(db, 64, model_version="abc123")
    index.save(url)
    loaded = BinaryFlatIndex.load(url)
    assert (loaded.bits, loaded.ntotal, loaded.model_version) == (64, 200, "abc123")
    assert loaded.idmap == index.idmap
    for a, b in zip(loaded.search_ids(db[:5], 7), index.search_ids(db[:5], 7), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded.add(["new"], db[:1])  # a loaded index stays usable
    assert loaded.search_ids(db[:1], 1)[0].tolist() == [[0]]


def test_corruption_and_incomplete_saves_are_detected(tmp_path):
    index, _ = make_index(clustered_codes(50, 32, np.random.default_rng(4)), 32)
    url = tmp_path / "idx"
    index.save(str(url))
    blob = bytearray((url / INDEX_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (url / INDEX_FILE).write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"checksum mismatch for {INDEX_FILE}"):
        BinaryFlatIndex.load(str(url))
    (url / MANIFEST_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        BinaryFlatIndex.load(str(url))


def test_idmap_positions_follow_faiss_positions():
    rng = np.random.default_rng(5)
    db = duplicated_codes(30, 8, rng, distinct=30)
    index, ids = make_index(db, 8)
    assert isinstance(index.idmap, IdMap)
    _, I = index.search(db, 1)
    D, vids = index.search_ids(db, 1)
    np.testing.assert_array_equal(vids[:, 0], index.idmap.to_ids(I[:, 0]))
    assert (D == 0).all()

"""Sharded index: exact merge vs a brute-force oracle, build/save/load with checksums, approximate
types (recall + honest distances), category-mask search vs a numpy oracle, gpu_flat."""

# ruff: noqa: E741  -- D, I are faiss's names for (distances, ids); kept on purpose
from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pytest

from vhindex.data import CodesDatasetMeta, CodesDatasetWriter
from vhindex.data.writer import DatasetManifest
from vhindex.index import (
    IndexSpec,
    MaskTable,
    ShardedIndex,
    ShardIndex,
    build_sharded_index,
    gpu_available,
    hamming_distances,
    masked_search,
    merge_topk,
    pad_distance,
    plan_index_shards,
    search_shards,
)
from vhindex.index.mask import masked_distances
from vhindex.index.testing import assert_same_knn, brute_force_knn

# ------------------------------------------------------------------ data helpers


def duplicated_codes(n: int, bits: int, rng: np.random.Generator, *, distinct: int = 15) -> np.ndarray:
    """Packed codes drawn from a small pool: most distances are shared by many items (ties)."""
    pool = rng.integers(0, 256, size=(distinct, bits // 8), dtype=np.uint8)
    return pool[rng.integers(0, distinct, n)]


def clustered_packed(n: int, bits: int, rng: np.random.Generator, *, centers: np.ndarray, flip: float) -> np.ndarray:
    """Packed codes around given {0,1} centres with each bit flipped with probability ``flip``."""
    base = centers[rng.integers(0, len(centers), n)]
    flips = rng.random(base.shape) < flip
    return np.packbits(base ^ flips, axis=1, bitorder="big")


def ids_for(n: int, prefix: str = "vid") -> list[str]:
    return [f"{prefix}-{i}" for i in range(n)]


def oracle(queries: np.ndarray, db: np.ndarray, ids: list[str], k: int | None = None):
    """Full brute-force ranking (padded to ``k`` columns), ids as an object array (``None`` for padding)."""
    D, I = brute_force_knn(queries, db, max(k or 0, len(db)))
    return D, np.array(ids + [None], dtype=object)[I]


def make_shards(db, ids, sizes, bits, spec=None, **kw) -> list[ShardIndex]:
    assert sum(sizes) == len(db)
    shards, start = [], 0
    for s, size in enumerate(sizes):
        shard = ShardIndex(bits, spec, shard_id=s, num_shards=len(sizes), **kw)
        # add in two batches to exercise incremental adds
        half = start + size // 2
        shard.add(ids[start:half], db[start:half])
        shard.add(ids[half:start + size], db[half:start + size])
        shards.append(shard)
        start += size
    return shards


def write_codes(url, codes, ids, *, bits=64, row_group_size=37, rows_per_file=300, so=None, model_version="m-v1"):
    meta = CodesDatasetMeta(bits=bits, model="itq", model_version=model_version)
    with CodesDatasetWriter(url, meta, rows_per_file=rows_per_file, row_group_size=row_group_size,
                            storage_options=so) as w:
        for start in range(0, len(ids), 100):
            w.write(ids[start:start + 100], codes[start:start + 100])
    return meta


def tie_aware_recall(D: np.ndarray, D_ref: np.ndarray, k: int) -> float:
    """Fraction of the true top-k found: hits whose (true) distance is <= the true k-th distance."""
    kth = D_ref[:, k - 1:k]
    return float(np.minimum((D[:, :k] <= kth).sum(axis=1), k).mean() / k)


# ------------------------------------------------------------------ IndexSpec


def test_index_spec_defaults_json_and_validation():
    spec = IndexSpec("hnsw", {"ef_search": 64})
    assert spec.params == {"M": 16, "ef_construction": 40, "ef_search": 64}
    assert IndexSpec.from_json(spec.to_json()) == spec and hash(IndexSpec.from_json(spec.to_json())) == hash(spec)
    assert IndexSpec.from_dict("flat") == IndexSpec() and IndexSpec().exact and not spec.exact
    assert IndexSpec("ivf").params == {"nlist": None, "nprobe": 32, "train_size": None, "seed": 0}
    assert json.loads(IndexSpec("multihash").to_json()) == {"type": "multihash",
                                                           "params": {"nhash": 4, "b": None, "nflip": 2}}
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        IndexSpec("annoy")
    with pytest.raises(ValueError, match=r"unknown param\(s\) \['efSearch'\]"):
        IndexSpec("hnsw", {"efSearch": 10})
    with pytest.raises(ValueError, match="nprobe must be an int >= 1"):
        IndexSpec("ivf", {"nprobe": 0})
    with pytest.raises(ValueError, match="M must be an int"):
        IndexSpec("hnsw", {"M": 2.5})
    with pytest.raises(ValueError, match="unknown param"):
        IndexSpec("flat", {"nlist": 3})
    with pytest.raises(ValueError, match=r"nhash \* b <= bits"):
        ShardIndex(64, IndexSpec("multihash", {"nhash": 3, "b": 24}))
    with pytest.raises(ValueError, match="unknown index spec key"):
        IndexSpec.from_dict({"type": "flat", "parms": {}})


# ------------------------------------------------------------------ merge_topk


def test_merge_topk_ties_padding_and_errors():
    a = (np.array([[1, 3, 17]], dtype=np.int32), np.array([["a", "b", None]], dtype=object))
    b = (np.array([[1, 2]], dtype=np.int32), np.array([["c", "d"]], dtype=object))
    D, I = merge_topk([a, b], 4, 16)
    assert D.tolist() == [[1, 1, 2, 3]] and I.tolist() == [["a", "c", "d", "b"]]  # tie: shard 0 first
    D, I = merge_topk([b, a], 4, 16)
    assert I.tolist() == [["c", "a", "d", "b"]]  # shard order decides ties
    D, I = merge_topk([b, (np.array([[1, 3]]), [["a", "b"]])], 4, 16)  # plain lists of str ids work too
    assert I.tolist() == [["c", "a", "d", "b"]] and I.dtype == object
    D, I = merge_topk([a, b], 7, 16)
    assert D.tolist() == [[1, 1, 2, 3, 17, 17, 17]] and I.tolist() == [["a", "c", "d", "b", None, None, None]]
    # integer ids pad with -1
    D, I = merge_topk([(np.array([[0, 9]]), np.array([[5, -1]])), (np.array([[2, 9]]), np.array([[7, -1]]))], 3, 8)
    assert D.tolist() == [[0, 2, 9]] and I.tolist() == [[5, 7, -1]]
    # nq = 0
    D, I = merge_topk([(np.zeros((0, 3), np.int32), np.zeros((0, 3), object))] * 2, 5, 16)
    assert D.shape == I.shape == (0, 5)
    with pytest.raises(ValueError, match="at least one"):
        merge_topk([], 3, 16)
    with pytest.raises(ValueError, match="distance 2147483647"):  # faiss's own padding slipped through
        merge_topk([(np.array([[1, 2**31 - 1]]), np.array([["a", None]], dtype=object))], 2, 16)
    with pytest.raises(ValueError, match="distance 17 with id 'x'"):
        merge_topk([(np.array([[1, 17]]), np.array([["a", "x"]], dtype=object))], 2, 16)
    with pytest.raises(ValueError, match="mix video ids"):
        merge_topk([a, (np.array([[1]]), np.array([[3]]))], 2, 16)
    with pytest.raises(ValueError, match="query rows"):
        merge_topk([a, (np.zeros((2, 1), np.int32), np.full((2, 1), "x", dtype=object))], 2, 16)


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
@pytest.mark.parametrize("bits", [16, 64])
def test_sharded_flat_equals_single_brute_force(num_shards, bits):
    rng = np.random.default_rng(num_shards * 1000 + bits)
    n = 240
    db = duplicated_codes(n, bits, rng)
    ids = ids_for(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=num_shards - 1, replace=False))
    sizes = np.diff(np.concatenate([[0], cuts, [n]])).tolist()
    shards = make_shards(db, ids, sizes, bits)
    queries = np.concatenate([db[:8], duplicated_codes(8, bits, rng, distinct=40)])
    for k in (1, 5, 37, n, n + 25):
        D, I = search_shards(shards, queries, k)
        assert D.shape == I.shape == (16, k) and D.dtype == np.int32 and I.dtype == object
        assert_same_knn(D, I, *oracle(queries, db, ids, k))
        if k > n:
            assert (D[:, n:] == pad_distance(bits)).all() and (I[:, n:] == None).all()  # noqa: E711
    D, I = search_shards(shards, queries[:0], 4)
    assert D.shape == I.shape == (0, 4)


def test_merge_rejects_a_wrong_shard_answer():
    """The oracle comparison can fail: drop one shard's best hit and the merged result differs."""
    rng = np.random.default_rng(5)
    db = duplicated_codes(120, 16, rng, distinct=60)
    ids = ids_for(120)
    shards = make_shards(db, ids, [40, 40, 40], 16)
    queries = db[[3, 50, 100]]
    results = [s.search(queries, 5) for s in shards]
    d, i = results[1]
    results[1] = (np.concatenate([d[:, 1:], np.full((3, 1), 17, np.int32)], axis=1),
                  np.concatenate([i[:, 1:], np.full((3, 1), None, dtype=object)], axis=1))
    with pytest.raises(AssertionError):
        assert_same_knn(*merge_topk(results, 5, 16), *oracle(queries, db, ids))


# ------------------------------------------------------------------ ShardIndex basics


def test_shard_index_reconstruct_contains_and_errors():
    rng = np.random.default_rng(2)
    db = rng.integers(0, 256, (50, 8), dtype=np.uint8)
    ids = ids_for(50)
    for spec in (IndexSpec(), IndexSpec("hnsw"), IndexSpec("ivf", {"nlist": 4}), IndexSpec("multihash")):
        shard = make_shards(db, ids, [50], 64, spec)[0]
        assert len(shard) == 50 and shard.contains("vid-7") and not shard.contains("nope")
        np.testing.assert_array_equal(shard.reconstruct(["vid-7", "vid-0"]), db[[7, 0]])
        np.testing.assert_array_equal(shard.reconstruct("vid-9"), db[[9]])
        np.testing.assert_array_equal(shard.codes(), db)
        # search by video id: the video itself comes back first at distance 0
        D, I = shard.search(shard.reconstruct(["vid-11"]), 3)
        assert D[0, 0] == 0 and I[0, 0] == "vid-11"
        with pytest.raises(KeyError, match="'nope'"):
            shard.reconstruct(["vid-1", "nope"])
    shard = ShardIndex(64)
    with pytest.raises(ValueError, match="64-bit index"):
        shard.add(["x"], np.zeros((1, 4), np.uint8))
    with pytest.raises(ValueError, match="one to one"):
        shard.add(["x", "y"], np.zeros((1, 8), np.uint8))
    with pytest.raises(ValueError, match="k must be a positive int"):
        shard.search(np.zeros((1, 8), np.uint8), 0)
    with pytest.raises(ValueError, match="shard_id < num_shards"):
        ShardIndex(64, shard_id=2, num_shards=2)
    D, I = shard.search(np.zeros((2, 8), np.uint8), 3)  # empty shard: all padding
    assert (D == 65).all() and (I == None).all()  # noqa: E711
    with pytest.raises(ValueError, match="not search-time params"):
        ShardIndex(64, IndexSpec("hnsw")).set_search_params(M=8)


# ------------------------------------------------------------------ approximate types


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(11)
    bits, n = 64, 6000
    centers = rng.integers(0, 2, (300, bits), dtype=np.uint8)
    db = clustered_packed(n, bits, rng, centers=centers, flip=0.15)
    # fresh queries from the same clusters (true 10th-neighbour distance ~16 bits)
    return bits, db, ids_for(n), clustered_packed(200, bits, rng, centers=centers, flip=0.15)


# recall measured on this data (3 shards of 2000): hnsw ef 128 1.000, ivf (auto nlist 179) nprobe 32
# 0.976, multihash 4x16 nflip 2 0.791; thresholds sit a little below
@pytest.mark.parametrize(("spec", "min_recall"), [
    (IndexSpec("hnsw", {"ef_search": 128}), 0.97),
    (IndexSpec("ivf", {"nprobe": 32}), 0.93),
    (IndexSpec("multihash", {"nflip": 2}), 0.72),
])
def test_approximate_types_recall_and_true_distances(clustered, spec, min_recall):
    bits, db, ids, queries = clustered
    shards = make_shards(db, ids, [2000, 2000, 2000], bits, spec, num_threads=1)
    k = 10
    D, I = search_shards(shards, queries, k)
    D_ref, _ = brute_force_knn(queries, db)
    found = I != None  # noqa: E711
    assert found.mean() > 0.9
    # the approximate index never lies about distances: each one is the true distance of its id
    pos = {v: j for j, v in enumerate(ids)}
    true = np.full(D.shape, pad_distance(bits), dtype=np.int32)
    for r, c in zip(*np.nonzero(found), strict=True):
        true[r, c] = int(hamming_distances(queries[r:r + 1], db[pos[I[r, c]]:pos[I[r, c]] + 1])[0, 0])
    np.testing.assert_array_equal(D, true)
    assert (np.diff(D, axis=1) >= 0).all()
    for row in I:
        real = [x for x in row if x is not None]
        assert len(set(real)) == len(real)
    recall = tie_aware_recall(D, D_ref, k)
    print(f"{spec.type} recall@10 = {recall:.3f}")
    assert recall >= min_recall, f"{spec.type} recall@10 {recall:.3f} < {min_recall}"
    # weaker search params give weaker recall (the params reach faiss)
    weak = {"hnsw": {"ef_search": 1}, "ivf": {"nprobe": 1}, "multihash": {"nflip": 0}}[spec.type]
    for s in shards:
        s.set_search_params(**weak)
    assert tie_aware_recall(search_shards(shards, queries, k)[0], D_ref, k) < recall


def test_ivf_nlist_too_large_is_a_clear_error():
    shard = ShardIndex(64, IndexSpec("ivf", {"nlist": 50}))
    shard.add(ids_for(10), np.zeros((10, 8), np.uint8))
    with pytest.raises(ValueError, match="nlist=50 needs at least 50 codes"):
        shard.search(np.zeros((1, 8), np.uint8), 1)


# ------------------------------------------------------------------ building from a codes dataset


@pytest.fixture
def codes_dataset(tmp_path):
    rng = np.random.default_rng(21)
    n = 1000
    codes = duplicated_codes(n, 64, rng, distinct=80)
    ids = ids_for(n, "yt")
    url = str(tmp_path / "codes")
    write_codes(url, codes, ids)
    return url, codes, ids


def test_build_sharded_index_from_codes_dataset(tmp_path, codes_dataset):
    url, codes, ids = codes_dataset
    out = str(tmp_path / "index")
    m = build_sharded_index(url, out, 4)
    assert m.num_shards == 4 and m.total_count == 1000 and m.model_version == "m-v1" and m.model == "itq"
    assert max(m.counts) - min(m.counts) <= 37  # balanced to within one row group
    assert sorted(os.listdir(out)) == ["_manifest.json", "shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    assert sorted(os.listdir(os.path.join(out, "shard-00000"))) == ["_manifest.json", "codes.npy", "ids.parquet"]
    index = ShardedIndex.open(out)
    assert index.info()["counts"] == m.counts and index.info()["model_version"] == "m-v1"
    assert index.index_version == m.index_version and len(index.index_version) == 16
    shards = index.load_all()
    got_ids = [v for s in shards for v in s.idmap.ids]
    assert got_ids == ids  # every id kept, shards in dataset order
    assert all(s.model_version == "m-v1" and s.num_shards == 4 for s in shards)
    queries = np.concatenate([codes[:10], duplicated_codes(5, 64, np.random.default_rng(0))])
    for k in (1, 10, 1100):
        assert_same_knn(*index.search(queries, k), *oracle(queries, codes, ids, k))
    np.testing.assert_array_equal(index.reconstruct(["yt-999", "yt-0"]), codes[[999, 0]])
    with pytest.raises(KeyError, match="'nope'"):
        index.reconstruct(["nope"])
    # same content, exact type: the same index_version; another layout: another version
    assert build_sharded_index(url, str(tmp_path / "again"), 4).index_version == m.index_version
    assert build_sharded_index(url, str(tmp_path / "three"), 3).index_version != m.index_version
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_sharded_index(url, out, 4)
    m2 = build_sharded_index(url, out, 2, overwrite=True)
    assert ShardedIndex.open(out).num_shards == 2 and m2.num_shards == 2


def test_plan_index_shards_fewer_row_groups_than_shards(tmp_path):
    url = str(tmp_path / "small")
    write_codes(url, np.zeros((30, 8), np.uint8), ids_for(30), row_group_size=10)  # 3 row groups
    assert [t.num_rows for t in plan_index_shards(url, 3)] == [10, 10, 10]
    with pytest.raises(ValueError, match="only 3 non-empty row groups.*allow_fewer_shards"):
        plan_index_shards(url, 5)
    assert len(plan_index_shards(url, 5, allow_fewer_shards=True)) == 3
    m = build_sharded_index(url, str(tmp_path / "idx"), 5, allow_fewer_shards=True)
    assert m.num_shards == 3 and m.counts == [10, 10, 10]
    with pytest.raises(ValueError, match="num_shards must be a positive int"):
        plan_index_shards(url, 0)


def test_duplicate_id_across_shards_is_named(tmp_path):
    rng = np.random.default_rng(4)
    a_ids, b_ids = ids_for(50, "a"), ids_for(49, "b") + ["a-3"]
    write_codes(str(tmp_path / "A"), rng.integers(0, 256, (50, 8), dtype=np.uint8), a_ids, row_group_size=25)
    write_codes(str(tmp_path / "B"), rng.integers(0, 256, (50, 8), dtype=np.uint8), b_ids, row_group_size=25)
    # a dataset whose manifest lists both datasets' files (a supported layout: paths may be ../other/...)
    parts = []
    for name in ("A", "B"):
        with open(tmp_path / name / "_manifest.json") as f:
            man = DatasetManifest.from_dict(json.load(f))
        for fi in man.files:
            fi.path = f"../{name}/{fi.path}"
            parts.append(fi)
    combined = DatasetManifest(meta=man.meta, files=parts, num_rows=100)
    os.makedirs(tmp_path / "C")
    with open(tmp_path / "C" / "_manifest.json", "w") as f:
        json.dump(combined.to_dict(), f)
    with pytest.raises(ValueError, match=r"duplicate video id 'a-3': in shard 0 and shard 1"):
        build_sharded_index(str(tmp_path / "C"), str(tmp_path / "idx"), 2)
    assert not os.path.exists(tmp_path / "idx" / "_manifest.json")  # no openable index was left


# ------------------------------------------------------------------ save / load, tampering


@pytest.mark.parametrize("where", ["local", "memory"])
@pytest.mark.parametrize("spec", [IndexSpec(), IndexSpec("hnsw"), IndexSpec("ivf", {"nlist": 8}),
                                  IndexSpec("multihash")], ids=lambda s: s.type)
def test_save_load_round_trip(tmp_path, memory_url, where, spec):
    rng = np.random.default_rng(8)
    codes = duplicated_codes(300, 64, rng, distinct=100)
    ids = ids_for(300)
    src = str(tmp_path / "codes") if where == "local" else f"{memory_url}/codes"
    out = str(tmp_path / "idx") if where == "local" else f"{memory_url}/idx"
    write_codes(src, codes, ids, row_group_size=50)
    m = build_sharded_index(src, out, 3, spec=spec, threads=1)  # one thread: deterministic HNSW graphs
    index = ShardedIndex.open(out)
    assert index.spec == spec and index.manifest == m
    files = sorted(fsspec.core.url_to_fs(index.shard_url(1))[0].ls(
        fsspec.core.url_to_fs(index.shard_url(1))[1], detail=False))
    assert any(f.endswith("index.faiss") for f in files) == (not spec.exact)
    queries = codes[:20]
    # the loaded shards answer exactly like freshly built ones
    fresh = make_shards(codes, ids, m.counts, 64, spec, num_threads=1)
    D0, I0 = search_shards(fresh, queries, 10)
    D1, I1 = index.search(queries, 10)
    np.testing.assert_array_equal(D1, D0)
    if spec.exact:
        assert_same_knn(D1, I1, *oracle(queries, codes, ids))
    else:
        assert (D1[:, 0] == 0).all()
    # a standalone shard round trip too
    shard = index.load_shard(2)
    shard.save(f"{out}/copy")
    again = ShardIndex.load(f"{out}/copy")
    assert again.idmap == shard.idmap and again.spec == shard.spec and again.shard_id == 2
    np.testing.assert_array_equal(again.codes(), codes[m.counts[0] + m.counts[1]:])


def test_tampering_and_incomplete_writes_are_refused(tmp_path, codes_dataset):
    url, codes, ids = codes_dataset
    out = tmp_path / "idx"
    build_sharded_index(url, str(out), 3)
    # a changed shard file: checksum error naming the file
    path = out / "shard-00001" / "codes.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    index = ShardedIndex.open(str(out))
    index.load_shard(0)
    with pytest.raises(ValueError, match=r"checksum mismatch for codes\.npy in .*shard-00001"):
        index.load_shard(1)
    with pytest.raises(ValueError, match=r"checksum mismatch for codes\.npy"):
        ShardIndex.load(str(out / "shard-00001"))
    # a shard manifest changed after the build (even if self-consistent): the top manifest's hash catches it
    mpath = out / "shard-00002" / "_manifest.json"
    man = json.loads(mpath.read_text())
    man["model_version"] = "other"
    mpath.write_text(json.dumps(man))
    ShardIndex.load(str(out / "shard-00002"))  # alone it still loads...
    with pytest.raises(ValueError, match=r"_manifest\.json in .*shard-00002.*recorded"):
        index.load_shard(2)  # ...but not as part of this index
    # an edited top manifest
    top = out / "_manifest.json"
    good = top.read_text()
    bad = json.loads(good)
    bad["shards"][0]["manifest_sha256"] = "0" * 64
    top.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="index_version"):
        ShardedIndex.open(str(out))
    bad = json.loads(good)
    bad["total_count"] += 1
    top.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="total_count"):
        ShardedIndex.open(str(out))
    # a missing top manifest (a build that did not finish)
    top.unlink()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        ShardedIndex.open(str(out))
    (out / "shard-00000" / "_manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="save did not finish"):
        ShardIndex.load(str(out / "shard-00000"))
    build_sharded_index(url, str(tmp_path / "again"), 2)
    with pytest.raises(IndexError, match="out of range"):
        ShardedIndex.open(str(tmp_path / "again")).load_shard(2)


# ------------------------------------------------------------------ category mask


@pytest.fixture(scope="module")
def mask_table():
    rng = np.random.default_rng(31)
    bits = rng.random((6, 64)) < 0.5
    bits[0] = True  # category 0: plain Hamming
    bits[5] = False
    bits[5, :3] = True  # category 5: only three bits count
    return MaskTable(bits)


def masked_oracle(queries, db, cats, table, ids, k=None):
    """Full ranking by the numpy masked distance, padded to ``k`` columns."""
    dist = masked_distances(queries, db, cats, table)
    order = np.argsort(dist, axis=1, kind="stable")
    D = np.take_along_axis(dist, order, axis=1)
    I = np.array(ids, dtype=object)[order]
    extra = max(0, (k or 0) - len(db))
    return (np.pad(D, ((0, 0), (0, extra)), constant_values=table.bits + 1),
            np.pad(I, ((0, 0), (0, extra)), constant_values=None))


@pytest.mark.parametrize("spec", [IndexSpec(), IndexSpec("hnsw")], ids=lambda s: s.type)
def test_masked_sharded_search_equals_numpy_oracle(mask_table, spec):
    rng = np.random.default_rng(33)
    db = duplicated_codes(400, 64, rng, distinct=150)
    ids = ids_for(400)
    shards = make_shards(db, ids, [130, 170, 100], 64, spec, mask_cache_size=3)
    queries = np.concatenate([db[:12], duplicated_codes(12, 64, rng)])
    cats = rng.integers(0, 6, len(queries))
    cats[:6] = [0, 5, 5, 1, 2, 3]
    D_ref, I_ref = masked_oracle(queries, db, cats, mask_table, ids)
    for k in (1, 10, 450):
        D, I = search_shards(shards, queries, k, categories=cats, mask_table=mask_table)
        assert_same_knn(D, I, *masked_oracle(queries, db, cats, mask_table, ids, k))
    assert D[1, 0] == 0 and D[1, 10] <= 3  # category 5 compares only 3 bits
    # category 0 (all ones) is the plain Hamming distance
    D0, I0 = search_shards(shards, queries, 10, categories=np.zeros(len(queries), int), mask_table=mask_table)
    assert_same_knn(D0, I0, *oracle(queries, db, ids))
    # the LRU serves a repeated category (6 categories cycling through 3 slots never hit)
    hits = shards[0].mask_cache.hits
    D1, _ = search_shards(shards, queries, 10, categories=np.zeros(len(queries), int), mask_table=mask_table)
    np.testing.assert_array_equal(D1, D0)
    assert shards[0].mask_cache.hits == hits + 1 and len(shards[0].mask_cache) == 3
    # the oracle comparison can fail: plain Hamming results are not masked results
    with pytest.raises(AssertionError):
        assert_same_knn(*search_shards(shards, queries, 10), D_ref, I_ref)


def test_masked_search_on_arrays_and_errors(mask_table, tmp_path):
    rng = np.random.default_rng(34)
    db = rng.integers(0, 256, (60, 8), dtype=np.uint8)
    q = db[:4]
    D, P = masked_search(db, q, [1, 2, 3, 4], 70, mask_table)
    ref = masked_distances(q, db, [1, 2, 3, 4], mask_table)
    order = np.argsort(ref, axis=1, kind="stable")
    assert_same_knn(D[:, :60], P[:, :60], np.take_along_axis(ref, order, axis=1), order)
    assert (D[:, 60:] == 65).all() and (P[:, 60:] == -1).all()
    shard = make_shards(db, ids_for(60), [60], 64)[0]
    with pytest.raises(ValueError, match="is for 64-bit codes.*holds 128-bit"):
        ShardIndex(128).search(np.zeros((1, 16), np.uint8), 3, categories=[0], mask_table=mask_table)
    with pytest.raises(ValueError, match="category 6 of query 1 is out of range.*6 categories"):
        shard.search(q[:2], 3, categories=[0, 6], mask_table=mask_table)
    with pytest.raises(ValueError, match="category -1 of query 0"):
        shard.search(q[:1], 3, categories=[-1], mask_table=mask_table)
    with pytest.raises(ValueError, match="one category per query"):
        shard.search(q[:2], 3, categories=[0], mask_table=mask_table)
    with pytest.raises(ValueError, match="must be integers"):
        shard.search(q[:1], 3, categories=[0.5], mask_table=mask_table)
    with pytest.raises(ValueError, match="needs both"):
        shard.search(q[:1], 3, categories=[0])


@pytest.mark.parametrize("ext", ["npy", "parquet"])
def test_mask_table_save_load(tmp_path, memory_url, mask_table, ext):
    for url in (str(tmp_path / f"masks.{ext}"), f"{memory_url}/masks.{ext}"):
        mask_table.save(url)
        loaded = MaskTable.load(url, bits=64)
        assert loaded == mask_table and loaded.version == mask_table.version
        with pytest.raises(ValueError, match="is for 64-bit codes"):
            MaskTable.load(url, bits=128)
    path = tmp_path / f"masks.{ext}"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"checksum mismatch for masks\.{ext}"):
        MaskTable.load(str(path))
    os.unlink(str(path) + ".manifest.json")
    with pytest.raises(FileNotFoundError, match="verify=False"):
        MaskTable.load(str(path))


def test_mask_table_construction():
    bare = np.packbits(np.eye(16, dtype=bool), axis=1, bitorder="big")
    t = MaskTable(bare)
    assert t.num_categories == 16 and t.bits == 16 and t.kept_bits().tolist() == [1] * 16
    w = np.array([[0.1, -5, 0.2, 3, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]], dtype=float)
    t = MaskTable.from_classifier_weights(w, 0.25)  # keep the 2 largest |w| bits per class
    assert np.unpackbits(t.masks, axis=1).tolist() == [[0, 1, 0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    with pytest.raises(ValueError, match="ratio"):
        MaskTable.from_classifier_weights(w, 0.0)
    with pytest.raises(ValueError, match="empty"):
        MaskTable(np.zeros((0, 8), np.uint8))
    with pytest.raises(ValueError, match="packed uint8"):
        MaskTable(np.zeros((2, 8), np.int64))


def test_mask_table_bare_npy(tmp_path):
    table = MaskTable(np.ones((3, 8), dtype=bool))
    np.save(tmp_path / "m.npy", np.ones((3, 8), dtype=bool))
    assert MaskTable.load(str(tmp_path / "m.npy"), verify=False) == table
    with pytest.raises(ValueError, match=r"\.npy or \.parquet"):
        MaskTable.load(str(tmp_path / "m.bin"))


# ------------------------------------------------------------------ gpu_flat


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_gpu_flat_without_gpu_is_a_clear_error(tmp_path):
    spec = IndexSpec("gpu_flat")  # the spec itself is fine anywhere
    assert spec.params == {"device": 0} and spec.exact
    with pytest.raises(RuntimeError, match="gpu_flat.*(CPU-only|sees 0 GPU)"):
        ShardIndex(64, spec)
    url = str(tmp_path / "codes")
    write_codes(url, np.zeros((5, 8), np.uint8), ids_for(5))
    with pytest.raises(RuntimeError, match="gpu_flat"):
        build_sharded_index(url, str(tmp_path / "idx"), 1, spec=spec)
    assert not os.path.exists(tmp_path / "idx")


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs faiss with GPU support and a GPU")
def test_gpu_flat_is_exact(tmp_path, mask_table):
    rng = np.random.default_rng(41)
    db = duplicated_codes(500, 64, rng, distinct=100)
    ids = ids_for(500)
    shards = make_shards(db, ids, [200, 300], 64, IndexSpec("gpu_flat"))
    queries = db[:20]
    assert_same_knn(*search_shards(shards, queries, 10), *oracle(queries, db, ids))
    assert_same_knn(*search_shards(shards, queries, 600), *oracle(queries, db, ids))
    cats = rng.integers(0, 6, 20)
    assert_same_knn(*search_shards(shards, queries, 10, categories=cats, mask_table=mask_table),
                    *masked_oracle(queries, db, cats, mask_table, ids))
    big = ShardIndex(64, IndexSpec("gpu_flat"))
    big.add(ids_for(2100, "z"), np.zeros((2100, 8), np.uint8))
    with pytest.raises(ValueError, match="k <= 2048"):
        big.search(queries, 3000)
    url = str(tmp_path / "codes")
    write_codes(url, db, ids)
    build_sharded_index(url, str(tmp_path / "idx"), 2, spec=IndexSpec("gpu_flat"))
    index = ShardedIndex.open(str(tmp_path / "idx"))
    assert_same_knn(*index.search(queries, 10), *oracle(queries, db, ids))

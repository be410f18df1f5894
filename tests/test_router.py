# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""The router's Serve-free parts (cluster.router): request gate, query -> code, fan-out + merge.

Plain asyncio with fake shards that search real faiss indexes; oracle: numpy brute force over all codes
(tie-aware). No Ray, no Serve: these are the parts :class:`cluster.serve.Router` is wired from.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import faiss
import numpy as np
import pytest

from cluster.router import (
    BatchRequest,
    FanOut,
    QueryResolver,
    RequestError,
    RequestGate,
    SearchRequest,
    VersionNotLoaded,
    check_video_url,
    hits,
    json_depth,
)
from vhindex.config import ServeSection
from vhindex.index.codes import code_to_hex
from vhindex.index.testing import assert_same_knn, brute_force_knn

BITS = 64


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value.status, info.value.message


# ----------------------------------------------------------------------------------- request gate


def test_gate_auth_limits_json_and_validation():
    token = "s3cret"
    gate = RequestGate(ServeSection(max_body_bytes=200, max_k=50, max_batch=3),
                       hashlib.sha256(token.encode()).hexdigest())
    gate.check_auth({"authorization": f"Bearer {token}"})
    assert _status(gate.check_auth, {})[0] == 401
    assert _status(gate.check_auth, {"authorization": "Bearer wrong"})[0] == 401
    assert _status(gate.check_auth, {"authorization": token})[0] == 401  # the scheme is required
    RequestGate(ServeSection()).check_auth({})  # no token configured: open
    # declared and actual body size
    assert _status(gate.check_declared_length, {"content-length": "201"}) == \
        (413, "request body of 201 bytes exceeds the limit of 200 bytes")
    gate.check_declared_length({"content-length": "200"})
    assert _status(gate.parse, b"x" * 201, SearchRequest)[0] == 413
    # not JSON, nested too deeply (a client error, never a 500), invalid fields (named)
    status, msg = _status(gate.parse, b"{not json", SearchRequest)
    assert status == 400 and msg.startswith("malformed JSON body")
    deep = RequestGate(ServeSection(max_body_bytes=1_000_000))
    assert _status(deep.parse, b"[" * 50_000 + b"]" * 50_000, SearchRequest) == \
        (400, "malformed JSON body: nested 50000 levels deep, more than the limit of 16")
    # the depth is counted before parsing; brackets inside strings do not count
    shallow = RequestGate(ServeSection(max_body_bytes=10_000, max_json_depth=3))
    assert _status(shallow.parse, b'{"code": [[["00"]]]}', SearchRequest)[0] == 400
    assert shallow.parse(b'{"video_id": "[[[[[[\\"{{{{", "k": 2}', SearchRequest).video_id == '[[[[[["{{{{'
    assert [json_depth(t) for t in (b"", b"1", b"[]", b'[{"a": [1, {"b": "]]]]"}]}]', b"[[" * 7 + b"]]" * 7)] == \
        [0, 0, 1, 4, 14]
    status, msg = _status(gate.parse, json.dumps({"code": "00", "video_id": "v"}).encode(), SearchRequest)
    assert status == 422 and "exactly one of 'code'" in msg
    status, msg = _status(gate.parse, json.dumps({"code": "00", "kk": 3}).encode(), SearchRequest)
    assert status == 422 and "kk" in msg
    req = gate.parse(json.dumps({"video_id": "v1", "k": 7}).encode(), SearchRequest)
    assert (req.video_id, req.k, req.code) == ("v1", 7, None)
    batch = gate.parse(json.dumps({"queries": [{"code": "ff"}], "k": 2}).encode(), BatchRequest)
    assert len(batch.queries) == 1 and batch.k == 2
    # k and batch bounds
    assert gate.check_k(50) == 50
    assert _status(gate.check_k, 0) == (400, "k must be between 1 and 50, got 0")
    assert _status(gate.check_k, 51)[0] == 400
    gate.check_batch(3)
    assert _status(gate.check_batch, 4) == (400, "at most 3 queries per batch, got 4")


def test_video_urls_must_lie_under_an_allowed_prefix():
    allowed = ["s3://bucket/videos/", "https://cdn.example.com/v/"]
    check_video_url("s3://bucket/videos/a/b.mp4", allowed)
    check_video_url("https://cdn.example.com/v/x.webm", allowed)
    for url, why in [("s3://bucket/videos/../secret.mp4", "segments"), ("s3://bucket/videos/./a.mp4", "segments"),
                     ("s3://bucket/other/a.mp4", "not under an allowed prefix"), ("/etc/passwd", "not under"),
                     ("file:///etc/passwd", "not under"), ("s3://bucket/videos\\..\\x", "backslashes"),
                     ("s3://bucket/videos/a\nb", "control characters"), ("s3://bucket/videosX/a.mp4", "not under")]:
        with pytest.raises(RequestError, match=why) as info:
            check_video_url(url, allowed)
        assert info.value.status == 403
    with pytest.raises(RequestError, match="reads no URLs"):
        check_video_url("s3://bucket/videos/a.mp4", [])


# ----------------------------------------------------------------------------------- query -> code


def test_resolver_parses_hex_looks_up_ids_and_encodes_features():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(3, BITS // 8), dtype=np.uint8)
    shard_of = {"a": 0, "b": 1, "c": 1}
    calls: list[list[str]] = []

    async def reconstruct(ids):
        calls.append(list(ids))
        return [[codes[0].tobytes() if v == "a" else None for v in ids],
                [codes[1 + "bc".index(v)].tobytes() if shard_of.get(v) == 1 else None for v in ids]]

    async def encoder_info():
        return {"num_frames": 2, "feature_dim": 3}

    async def encode(frames):
        assert frames.shape[1:] == (2, 3) and frames.dtype == np.float32
        return np.stack([np.full(BITS // 8, int(f.sum()) % 256, np.uint8) for f in frames])

    resolver = QueryResolver(reconstruct, encoder_info, encode, has_mask_table=False)
    queries = [SearchRequest(code=code_to_hex(codes[2])), SearchRequest(video_id="b"),
               SearchRequest(features=[[1, 1, 1], [1, 1, 2]]), SearchRequest(video_id="a")]
    out = asyncio.run(resolver.codes(queries, BITS))
    assert np.array_equal(out[0], codes[2]) and np.array_equal(out[1], codes[1])
    assert np.array_equal(out[2], np.full(BITS // 8, 7, np.uint8)) and np.array_equal(out[3], codes[0])
    assert calls == [["b", "a"]]  # one lookup round for every id of the request

    def fails(queries, resolver=resolver) -> tuple[int, str]:
        with pytest.raises(RequestError) as info:
            asyncio.run(resolver.codes(queries, BITS))
        return info.value.status, info.value.message

    assert fails([SearchRequest(code="zz")])[0] == 400
    assert fails([SearchRequest(code="00" * 4)]) [0] == 400  # wrong length for 64 bits
    assert fails([SearchRequest(video_id="nope")]) == (404, "queries[0].video_id: 'nope' is not in the index")
    status, msg = fails([SearchRequest(features=[[1, 2, 3]])])
    assert status == 400 and "expected 2 frames x 3 dims, got shape [1, 3]" in msg
    status, msg = fails([SearchRequest(features=[[1, 2, 3], [1, 2]])])  # ragged rows: a 400, never a 500
    assert status == 400 and "rows of different lengths" in msg
    assert fails([SearchRequest(features=[[1e39, 0, 0], [0, 0, 0]])])[1] == "queries[0].features: NaN or Inf values"
    assert fails([SearchRequest(features=[[1, 2, float("nan")], [0, 0, 0]])]) == \
        (400, "queries[0].features: NaN or Inf values")
    assert fails([SearchRequest(code=code_to_hex(codes[0]), category=1)])[1].endswith("no category mask table")
    no_model = QueryResolver(reconstruct)
    assert fails([SearchRequest(features=[[0, 0, 0]] * 2)], no_model)[0] == 400

    async def one_shard_down(ids):
        return [RuntimeError("shard 0 died"), [None for _ in ids]]

    status, msg = fails([SearchRequest(video_id="a")], QueryResolver(one_shard_down))
    assert status == 404 and "(shards [0] did not answer)" in msg


# ----------------------------------------------------------------------------------- fan-out + merge


def _sharded(n: int = 600, shards: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, size=(10, BITS // 8), dtype=np.uint8)
    codes = centres[rng.integers(0, 10, size=n)] ^ np.packbits(rng.random((n, BITS)) < 0.1, axis=1)
    codes[n // 2: n // 2 + 20] = codes[0]  # exact duplicates across shards: ties at every distance
    ids = np.array([f"v{i:04d}" for i in range(n)], dtype=object)
    parts = []
    for s in range(shards):
        sel = np.arange(s, n, shards)
        index = faiss.IndexBinaryFlat(BITS)
        index.add(codes[sel])
        parts.append((index, ids[sel]))
    return codes, ids, parts


def _shard_search(parts, down=(), bad_request=None):
    async def search_shard(s, packed, k, categories, version):
        await asyncio.sleep(0.001 * (len(parts) - s))  # answers arrive out of shard order
        if s in down:
            raise ConnectionError(f"shard {s} is down")
        if bad_request is not None and categories is not None:
            raise bad_request
        index, names = parts[s]
        D, pos = index.search(packed, min(k, index.ntotal))
        dist = np.full((len(packed), k), BITS + 1, np.int32)
        out = np.full((len(packed), k), None, dtype=object)
        dist[:, :D.shape[1]], out[:, :D.shape[1]] = D, names[pos]
        return dist, out, version

    return search_shard


def test_fanout_merges_to_the_exact_top_k_and_reports_missing_shards():
    codes, ids, parts = _sharded()
    rng = np.random.default_rng(2)
    queries = codes[rng.integers(0, len(codes), 30)] ^ rng.integers(0, 2, (30, BITS // 8), dtype=np.uint8)
    D_ref, pos = brute_force_knn(queries, codes)
    fan = FanOut(_shard_search(parts), len(parts))
    for k in (1, 10, 57):
        res = asyncio.run(fan(queries, k, None, "v1", BITS))
        assert res["missing"] == [] and res["version"] == "v1"
        assert_same_knn(res["dist"], res["ids"], D_ref, ids[pos])
    assert fan.counters == {"fanouts": 3, "queries": 90}
    # a shard down: partial, and the exact top-k of the other shards
    res = asyncio.run(FanOut(_shard_search(parts, down={1}), len(parts))(queries, 10, None, "v1", BITS))
    assert res["missing"] == [1]
    keep = np.array([i % 3 != 1 for i in range(len(codes))])
    D_keep, pos_keep = brute_force_knn(queries, codes[keep])
    assert_same_knn(res["dist"], res["ids"], D_keep, ids[keep][pos_keep])
    # every shard down: 503; the caller's mistake on a shard (LookupError): 400, not a missing shard
    with pytest.raises(RequestError) as info:
        asyncio.run(FanOut(_shard_search(parts, down={0, 1, 2}), 3)(queries, 10, None, "v1", BITS))
    assert info.value.status == 503 and "shards [0, 1, 2]" in info.value.message
    lookup = FanOut(_shard_search(parts, bad_request=LookupError("this service has no category mask table")), 3)
    with pytest.raises(RequestError) as info:
        asyncio.run(lookup(queries, 10, np.zeros(30, np.int64), "v1", BITS))
    assert (info.value.status, info.value.message) == (400, "this service has no category mask table")
    # a replica without the asked version counts as missing (the handle path retries it elsewhere)
    mid_swap = FanOut(_shard_search(parts, bad_request=VersionNotLoaded("v2 not loaded")), 3)
    with pytest.raises(RequestError) as info:
        asyncio.run(mid_swap(queries, 10, np.zeros(30, np.int64), "v1", BITS))
    assert info.value.status == 503


def test_fanout_refuses_an_answer_from_another_index_version():
    _, _, parts = _sharded(60)
    inner = _shard_search(parts)

    async def stale(s, packed, k, categories, version):
        dist, out, _ = await inner(s, packed, k, categories, version)
        return dist, out, "v0" if s == 2 else version

    with pytest.raises(RuntimeError, match="shard 2 answered index version v0, asked v1"):
        asyncio.run(FanOut(stale, 3)(np.zeros((1, BITS // 8), np.uint8), 5, None, "v1", BITS))


def test_hits_drop_empty_slots():
    assert hits(np.array([3, 5, 65]), np.array(["a", "b", None], dtype=object)) == \
        [{"video_id": "a", "distance": 3}, {"video_id": "b", "distance": 5}]

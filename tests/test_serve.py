# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""The Ray Serve query service over real HTTP on 127.0.0.1 (cluster.serve).

Oracle: numpy brute-force Hamming ranking over all codes (tie-aware comparison). Real parts: a
local Ray, Serve's HTTP proxy, one deployment per shard, replicas killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from vhindex.data.schema import CodesDatasetMeta
from vhindex.data.writer import CodesDatasetWriter
from vhindex.index.codes import code_to_hex
from vhindex.index.testing import assert_same_knn, brute_force_knn

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray")]

BITS = 64
TOKEN_ENV = "VHINDEX_TEST_TOKEN"


def _codes(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, size=(20, BITS // 8), dtype=np.uint8)
    codes = centres[rng.integers(0, 20, size=n)].copy()
    flips = rng.random((n, BITS)) < 0.08
    codes ^= np.packbits(flips, axis=1)
    codes[n // 2: n // 2 + 40] = codes[0]  # many exact duplicates -> ties at every distance
    return [f"vid-{seed}-{i:05d}" for i in range(n)], codes


def _write_codes(url: Path, ids: list[str], codes: np.ndarray, version: str) -> None:
    with CodesDatasetWriter(str(url), CodesDatasetMeta(bits=BITS, model="itq", model_version=version),
                            rows_per_file=700, row_group_size=100) as w:
        w.write(ids, codes)


def _build(tmp: Path, name: str, ids: list[str], codes: np.ndarray, shards: int, version: str = "v1") -> str:
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    _write_codes(tmp / f"{name}-codes", ids, codes, version)
    build_sharded_index(str(tmp / f"{name}-codes"), str(tmp / name), shards, spec=IndexSpec("flat", {}))
    return str(tmp / name)


def _settings(index: str, ports: tuple[int, int], **kw):
    from vhindex.config import ServeSection

    base = dict(index=index, port=ports[0], direct_port=ports[1], shard_cpus=0.1, router_cpus=0.1, app_name="t",
                route_prefix="/")
    base.update(kw)
    return ServeSection.model_validate(base)


def _as_arrays(results: list[list[dict]], k: int) -> tuple[np.ndarray, np.ndarray]:
    D = np.full((len(results), k), BITS + 1, dtype=np.int32)
    I = np.full((len(results), k), None, dtype=object)
    for r, hits in enumerate(results):
        for c, h in enumerate(hits):
            D[r, c], I[r, c] = h["distance"], h["video_id"]
    return D, I


def _oracle(ids: list[str], codes: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    D, pos = brute_force_knn(queries, codes)  # full ranking: judges ties at the k-th distance
    names = np.array(ids, dtype=object)
    return D, names[pos]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    ids, codes = _codes(3000, seed=1)
    return tmp, ids, codes


def _deploy(settings, via: str = "direct") -> str:
    """Deploy; the base URL of the router replica's own port (``direct``) or of Serve's proxy."""
    from cluster.serve import deploy, direct_endpoints

    deploy(settings)
    proxy = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(proxy + "/healthz", timeout=5, headers=_auth(settings)).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("service not healthy within 60 s")
    if via == "proxy":
        return proxy
    direct = direct_endpoints(settings.app_name)
    assert len(direct) == settings.router_replicas, direct
    port = int(direct[0].rsplit(":", 1)[1])
    assert settings.direct_port <= port < settings.direct_port + 100, (port, settings.direct_port)
    from cluster.serve import service_url

    assert service_url(settings) == direct[0]
    return direct[0]


def _auth(settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {os.environ[TOKEN_ENV]}"} if settings.auth_token_env else {}


def _wait_for_data_plane(base: str, shards: int, replicas: int = 1, timeout_s: float = 30) -> None:
    """Query until the router knows every shard replica's direct endpoint (found in the background)."""
    deadline = time.monotonic() + timeout_s
    probe = {"code": "00" * (BITS // 8), "k": 1}
    while True:
        requests.post(base + "/search", json=probe, timeout=30)
        endpoints = requests.get(base + "/info", timeout=10).json()["data_plane"]["endpoints"]
        if all(endpoints.get(str(s), 0) >= replicas for s in range(shards)):
            return
        assert time.monotonic() < deadline, f"data plane endpoints never found: {endpoints}"
        time.sleep(0.2)


@pytest.mark.parametrize(("shards", "batching", "data_plane"),
                         [(1, "adaptive", True), (3, "adaptive", True), (3, "serve_batch", True),
                          (3, "adaptive", False)])
def test_answers_equal_brute_force_over_all_codes(ray_serve, corpus, shards, batching, data_plane):
    tmp, ids, codes = corpus
    index = _build(tmp, f"idx{shards}-{batching}-{data_plane}", ids, codes, shards)
    settings = _settings(index, ray_serve, batching=batching, data_plane=data_plane)
    direct = _deploy(settings)
    if data_plane:
        _wait_for_data_plane(direct, shards)
    before = requests.get(direct + "/info", timeout=10).json()["router_counters"]
    rng = np.random.default_rng(7)
    queries = codes[rng.integers(0, len(codes), size=25)] ^ rng.integers(0, 2, size=(25, BITS // 8), dtype=np.uint8)
    D_ref, I_ref = _oracle(ids, codes, queries)
    # the router replica's own port (fast path) and Serve's proxy give the same answers
    for base, k in [(direct, 1), (direct, 10), (direct, 57), (f"http://127.0.0.1:{settings.port}", 10)]:
        # single queries, sent concurrently (they share shard fan-outs through the router's batching)
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda q, k=k, base=base: requests.post(
                base + "/search", json={"code": code_to_hex(q), "k": k}, timeout=30), queries))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies if r.status_code != 200][:2]
        bodies = [r.json() for r in replies]
        assert not any(b["partial"] for b in bodies)
        D, I = _as_arrays([b["results"] for b in bodies], k)
        assert_same_knn(D, I, D_ref, I_ref)
        # the same queries as one batch
        r = requests.post(base + "/search/batch", json={"queries": [{"code": code_to_hex(q)} for q in queries], "k": k},
                          timeout=30)
        assert r.status_code == 200, r.text
        D, I = _as_arrays(r.json()["results"], k)
        assert_same_knn(D, I, D_ref, I_ref)
    # k above the number of codes: every code once, then nothing
    r = requests.post(base + "/search", json={"code": code_to_hex(queries[0]), "k": 1000}, timeout=30)
    assert r.status_code == 200 and len(r.json()["results"]) == 1000
    # by video id: the video itself (and its exact duplicates) at distance 0
    r = requests.post(base + "/search", json={"video_id": ids[5], "k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    D_ref5, I_ref5 = _oracle(ids, codes, codes[5:6])
    D, I = _as_arrays([r.json()["results"]], 3)
    assert_same_knn(D, I, D_ref5, I_ref5)
    info = requests.get(base + "/info", timeout=10).json()
    assert info["num_shards"] == shards and info["bits"] == BITS and sum(info["counts"]) == len(ids)
    assert info["serving_version"] == info["index_version"]
    assert info["batching"] == batching and info["serve_mode"]["direct_ingress"] is True
    assert info["router_counters"]["queries"] >= 8 * len(queries)  # 4 rounds of singles + 4 batches, all fanned out
    # which transport carried the shard searches: all direct once the endpoints are known, else all handles
    calls = {key: info["router_counters"][key] - before[key] for key in ("direct_calls", "handle_calls")}
    assert info["data_plane"]["enabled"] is data_plane
    if data_plane:
        assert calls["direct_calls"] >= 8 * shards and calls["handle_calls"] == 0, calls
        assert info["router_counters"]["direct_failures"] == 0
    else:
        assert calls["direct_calls"] == 0 and calls["handle_calls"] >= 8 * shards, calls


def test_bad_requests_get_clear_4xx_and_the_service_keeps_serving(ray_serve, corpus, monkeypatch):
    tmp, ids, codes = corpus
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    index = _build(tmp, "idx-auth", ids, codes, 2)
    settings = _settings(index, ray_serve, auth_token_env=TOKEN_ENV, max_k=100, max_batch=5, max_body_bytes=20_000)
    from cluster.serve import deploy

    base = f"http://127.0.0.1:{settings.port}"
    deploy(settings)  # reads the token from the environment here; replicas get only its hash
    auth = {"Authorization": "Bearer s3cret-token"}
    deadline = time.monotonic() + 60
    while requests.get(base + "/healthz", headers=auth, timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    good = {"code": code_to_hex(codes[0]), "k": 5}

    def post(path: str, body=None, *, data=None, headers=auth):
        return requests.post(base + path, json=body, data=data, headers=headers, timeout=30)

    cases = [
        (post("/search", {"code": "ab" * 7, "k": 5}), 400, "16 hex"),
        (post("/search", {"code": "zz" * 8, "k": 5}), 400, "hex"),
        (post("/search", {"video_id": "no-such-video", "k": 5}), 404, "no-such-video"),
        (post("/search", {**good, "k": 0}), 400, "k must be between 1 and 100"),
        (post("/search", {**good, "k": 101}), 400, "k must be between 1 and 100"),
        (post("/search", data=b"{not json", headers={**auth, "Content-Type": "application/json"}), 400, "malformed JSON"),
        (post("/search", {"code": code_to_hex(codes[0]), "video_id": ids[0]}), 422, "exactly one"),
        (post("/search", {**good, "colour": "red"}), 422, "colour"),
        (post("/search", {"features": [[0.0] * 4] * 2, "k": 3}), 400, "model"),
        (post("/search/batch", {"queries": [{"code": good["code"]}] * 6, "k": 3}), 400, "at most 5 queries"),
        (post("/search", {**good, "pad": "x" * 30_000}), 413, "exceeds the limit"),
        (post("/search", good, headers={}), 401, "bearer token"),
        (post("/search", good, headers={"Authorization": "Bearer wrong"}), 401, "bearer token"),
        (requests.get(base + "/info", timeout=10), 401, "bearer token"),
    ]
    for reply, status, text in cases:
        assert reply.status_code == status, (status, reply.status_code, reply.text)
        assert text in reply.json()["error"], (text, reply.json())
    ok = post("/search", good)
    assert ok.status_code == 200 and ok.json()["results"][0]["distance"] == 0


def _replica_pids(deployment: str, app: str = "t") -> list[int]:
    from ray import serve

    handle = serve.get_deployment_handle(deployment, app)
    return sorted({r["pid"] for r in handle.broadcast("loaded_versions").results(timeout_s=30)})


@pytest.mark.slow
def test_killing_a_replica_under_load_gives_no_wrong_answers(ray_serve, corpus):
    tmp, ids, codes = corpus
    index = _build(tmp, "idx-kill", ids, codes, 2)
    base = _deploy(_settings(index, ray_serve, replicas=2, shard_timeout_s=5.0, retries=2))
    deadline = time.monotonic() + 60
    while len(_replica_pids("Shard0")) < 2:
        assert time.monotonic() < deadline, "second replica never came up"
        time.sleep(0.5)
    _wait_for_data_plane(base, 2, replicas=2)  # the kill must hit live direct connections
    rng = np.random.default_rng(3)
    queries = codes[rng.integers(0, len(codes), size=400)]
    D_ref, I_ref = _oracle(ids, codes, queries)
    outcomes: list[tuple[int, object]] = []

    def one(i: int) -> None:
        try:
            r = requests.post(base + "/search", json={"code": code_to_hex(queries[i]), "k": 10}, timeout=60)
            outcomes.append((i, r.json() if r.status_code == 200 else r.status_code))
        except requests.RequestException as err:
            outcomes.append((i, repr(err)))

    killer = threading.Timer(1.0, lambda: os.kill(_replica_pids("Shard0")[0], signal.SIGKILL))
    killer.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(len(queries))))
    killer.join()
    good = [(i, o) for i, o in outcomes if isinstance(o, dict) and not o["partial"]]
    assert len(good) >= 0.99 * len(queries), [o for _, o in outcomes if not isinstance(o, dict)][:5]
    rows = [i for i, _ in good]
    D, I = _as_arrays([o["results"] for _, o in good], 10)
    assert_same_knn(D, I, D_ref[rows], I_ref[rows])  # no wrong answers among the successes
    counters = requests.get(base + "/info", timeout=10).json()["router_counters"]
    # the direct data plane carried the load; calls that met the dead replica (a reset connection, or no
    # endpoint left until the next refresh) went through the Serve handle -- which one depends on timing
    assert counters["direct_calls"] > 0, counters


def test_hot_swap_serves_one_version_at_a_time(ray_serve, corpus, tmp_path):
    tmp, ids, codes = corpus
    ids2, codes2 = _codes(2500, seed=2)
    v1 = _build(tmp, "swap-v1", ids, codes, 2, version="m1")
    v2 = _build(tmp, "swap-v2", ids2, codes2, 2, version="m2")
    base = _deploy(_settings(v1, ray_serve))
    version1 = requests.get(base + "/info", timeout=10).json()["index_version"]
    rng = np.random.default_rng(5)
    queries = rng.integers(0, 256, size=(60, BITS // 8), dtype=np.uint8)
    oracles = {}
    stop = threading.Event()
    seen: list[tuple[str, np.ndarray, np.ndarray, int]] = []
    errors: list[object] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            q = i % len(queries)
            r = requests.post(base + "/search", json={"code": code_to_hex(queries[q]), "k": 5}, timeout=30)
            if r.status_code != 200 or r.json()["partial"]:
                errors.append(r.text)
            else:
                body = r.json()
                D, I = _as_arrays([body["results"]], 5)
                seen.append((body["index_version"], D, I, q))
            i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    from cluster.serve import deploy

    deploy(_settings(v2, ray_serve))  # same shard count: in-place reconfiguration, no restart
    deadline = time.monotonic() + 90
    while requests.get(base + "/info", timeout=10).json()["serving_version"] == version1:
        assert time.monotonic() < deadline, "the router never switched to the new version"
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    version2 = requests.get(base + "/info", timeout=10).json()["index_version"]
    assert version2 != version1
    oracles[version1] = _oracle(ids, codes, queries)
    oracles[version2] = _oracle(ids2, codes2, queries)
    versions = [v for v, *_ in seen]
    assert version1 in versions and version2 in versions
    # answers follow the version they report, and never go back once switched
    first_new = versions.index(version2)
    assert version1 not in versions[first_new + 10:], "old version answered long after the switch"
    for v, D, I, q in seen:
        D_ref, I_ref = oracles[v]
        assert_same_knn(D, I, D_ref[q:q + 1], I_ref[q:q + 1])


@pytest.mark.slow
def test_a_shard_without_live_replicas_makes_answers_partial(ray_serve, corpus):
    tmp, ids, codes = corpus
    index = _build(tmp, "idx-gone", ids, codes, 3)
    base = _deploy(_settings(index, ray_serve, shard_timeout_s=1.0, retries=1))
    shard_dir = Path(index) / "shard-00001"
    hidden = Path(index) / "hidden-shard-00001"
    pids = _replica_pids("Shard1")
    shutil.move(shard_dir, hidden)  # replacements cannot load the shard: it stays down
    try:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        r = requests.post(base + "/search", json={"code": code_to_hex(codes[0]), "k": 10}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["partial"] is True and body["missing_shards"] == [1]
        # the answer is the exact top-k of the remaining shards
        from vhindex.index.sharded import ShardedIndex

        sh = ShardedIndex.open(index)
        keep = set(sh.load_shard(0).idmap.ids) | set(sh.load_shard(2).idmap.ids)
        assert 0 < len(keep) < len(ids)
        sel = [i for i, v in enumerate(ids) if v in keep]
        D_ref, I_ref = _oracle([ids[i] for i in sel], codes[sel], codes[:1])
        D, I = _as_arrays([body["results"]], 10)
        assert_same_knn(D, I, D_ref, I_ref)
        health = requests.get(base + "/healthz", timeout=30)
        assert health.status_code == 503 and health.json()["missing_shards"] == [1]
    finally:
        shutil.move(hidden, shard_dir)


def test_every_returned_url_answers_and_every_socket_is_on_loopback(ray_serve, corpus):
    """Issue 14: on a machine with a routable interface, Serve advertises replicas at the node address
    while they bind ``serve.host``; only URLs where a server listens may come back, all on loopback."""
    import psutil
    import ray
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    from cluster.serve import direct_endpoints, service_url

    tmp, ids, codes = corpus
    settings = _settings(_build(tmp, "idx-urls", ids, codes, 2), ray_serve, router_replicas=2)
    _deploy(settings)
    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    bound = str(ray.get(controller.get_http_config.remote()).host)
    assert bound == "127.0.0.1"
    urls = direct_endpoints(settings.app_name) + [service_url(settings), f"http://127.0.0.1:{settings.port}"]
    assert len(set(urls)) == settings.router_replicas + 1, urls  # both router replicas and the proxy
    for url in urls:
        assert requests.utils.urlparse(url).hostname == bound, url
        assert requests.get(url + "/healthz", timeout=10).status_code == 200, url
    _wait_for_data_plane(urls[0], shards=2)
    # the sockets behind them: direct ingress (every router replica) and each shard's data plane
    data = [serve.get_deployment_handle(f"Shard{i}", settings.app_name).data_endpoint.remote().result(timeout_s=30)
            for i in range(2)]
    assert all(d["host"] == "127.0.0.1" for d in data), data
    ports = {int(u.rsplit(":", 1)[1]) for u in urls[:-2]} | {int(d["port"]) for d in data}
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]
    assert {c.laddr.port for c in listening} == ports, (listening, ports)
    assert all(c.laddr.ip in ("127.0.0.1", "::ffff:127.0.0.1") for c in listening), listening


def test_serve_config_file_is_valid_for_serve_and_vhindex():
    import yaml

    from vhindex.config import serve_settings

    path = Path(__file__).resolve().parents[1] / "configs" / "serve" / "local.yaml"
    doc = yaml.safe_load(path.read_text())
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(doc)  # what `serve deploy` validates
    s = serve_settings(str(path), ["replicas=2"], index="/data/index")
    assert (s.host, s.port, s.replicas, s.index) == ("127.0.0.1", 8000, 2, "/data/index")
    assert json.loads(json.dumps(doc))["applications"][0]["import_path"] == "cluster.serve:build_app"


def test_feature_queries_are_encoded_by_the_served_model(ray_serve, tmp_path):
    from vhindex.models import build_model, load_model

    rng = np.random.default_rng(11)
    frames = rng.standard_normal((600, 5, 72)).astype(np.float32)
    model = build_model("itq", BITS)
    model.fit(lambda: iter([frames]), seed=0)
    model.save(str(tmp_path / "model"))
    model = load_model(str(tmp_path / "model"))
    ids = [f"f{i:04d}" for i in range(len(frames))]
    packed = model.encode_packed(frames)
    with CodesDatasetWriter(str(tmp_path / "codes"), CodesDatasetMeta(bits=BITS, model="itq",
                                                                      model_version=model.version()),
                            row_group_size=100) as w:
        w.write(ids, packed)
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    build_sharded_index(str(tmp_path / "codes"), str(tmp_path / "index"), 2, spec=IndexSpec("flat", {}))
    base = _deploy(_settings(str(tmp_path / "index"), ray_serve, model=str(tmp_path / "model")))
    query = frames[7] + 0.05 * rng.standard_normal(frames[7].shape).astype(np.float32)
    by_feat = requests.post(base + "/search", json={"features": query.tolist(), "k": 8}, timeout=60)
    assert by_feat.status_code == 200, by_feat.text
    by_code = requests.post(base + "/search", json={"code": code_to_hex(model.encode_packed(query[None])[0]), "k": 8},
                            timeout=60)
    assert by_feat.json()["results"] == by_code.json()["results"]
    D_ref, I_ref = _oracle(ids, packed, model.encode_packed(query[None]))
    D, I = _as_arrays([by_feat.json()["results"]], 8)
    assert_same_knn(D, I, D_ref, I_ref)
    wrong = requests.post(base + "/search", json={"features": [[0.0] * 72] * 4, "k": 8}, timeout=60)
    assert wrong.status_code == 400 and "expected 5 frames x 72 dims" in wrong.json()["error"]
    # a model that did not make the indexed codes is refused when the app is built
    other = build_model("itq", BITS)
    other.fit(lambda: iter([frames[::-1] * 2.0]), seed=1)
    other.save(str(tmp_path / "other"))
    from cluster.serve import build_app

    with pytest.raises(ValueError, match="did not make the indexed codes"):
        build_app(_settings(str(tmp_path / "index"), ray_serve, model=str(tmp_path / "other")).model_dump())


def test_a_dvhcm_index_searches_under_the_learned_mask_end_to_end(ray_serve, tmp_path):
    """`vhindex build-index --model <dvhcm>` attaches the model's category masks; the service then searches a
    feature query under its *predicted* category's mask (the paper's retrieval), an explicit category under
    that category's, and a code query without category by plain Hamming -- each equal to a numpy oracle."""
    import torch

    from vhindex.app.cli import main as cli_main
    from vhindex.index.mask import MaskTable
    from vhindex.models import build_model, load_model

    torch.manual_seed(0)
    rng = np.random.default_rng(12)
    frames = rng.standard_normal((500, 4, 16)).astype(np.float32)
    build_model("dvhcm", BITS, num_frames=4, feature_dim=16, num_classes=6, hidden=16, mask_ratio=0.5).save(
        str(tmp_path / "model"))
    model = load_model(str(tmp_path / "model"))
    ids = [f"d{i:04d}" for i in range(len(frames))]
    packed = model.encode_packed(frames)
    with CodesDatasetWriter(str(tmp_path / "codes"), CodesDatasetMeta(bits=BITS, model="dvhcm",
                                                                      model_version=model.version()),
                            row_group_size=100) as w:
        w.write(ids, packed)
    assert cli_main(["build-index", "--codes", str(tmp_path / "codes"), "--out", str(tmp_path / "index"),
                     "--shards", "2", "--model", str(tmp_path / "model")]) == 0
    attached = MaskTable.load(str(tmp_path / "index" / "masks.npy"))
    assert attached == model.category_masks() and attached.kept_bits().tolist() == [BITS // 2] * 6
    base = _deploy(_settings(str(tmp_path / "index"), ray_serve, model=str(tmp_path / "model")))  # no mask_table

    def oracle(query_code: np.ndarray, category: int | None, k: int = 10):
        bits_q = np.unpackbits(query_code)
        diff = np.unpackbits(packed, axis=1) != bits_q
        if category is not None:
            diff &= np.unpackbits(attached.masks[category]).astype(bool)
        dist = diff.sum(axis=1)
        order = np.argsort(dist, kind="stable")
        return dist, np.sort(dist)[:k], order

    for row in (3, 77, 250):
        query = frames[row] + 0.1 * rng.standard_normal(frames[row].shape).astype(np.float32)
        code = model.encode_packed(query[None])[0]
        predicted = int(model.classify(query[None])[0])
        auto = requests.post(base + "/search", json={"features": query.tolist(), "k": 10}, timeout=60)
        assert auto.status_code == 200, auto.text
        assert auto.json()["category"] == predicted
        dist, want, _ = oracle(code, predicted)
        got = auto.json()["results"]
        assert [h["distance"] for h in got] == want.tolist()
        assert all(dist[ids.index(h["video_id"])] == h["distance"] for h in got)
        other = (predicted + 1) % 6
        explicit = requests.post(base + "/search", json={"features": query.tolist(), "k": 10, "category": other},
                                 timeout=60).json()
        assert explicit["category"] == other
        assert [h["distance"] for h in explicit["results"]] == oracle(code, other)[1].tolist()
        plain = requests.post(base + "/search", json={"code": code_to_hex(code), "k": 10}, timeout=60).json()
        assert "category" not in plain and [h["distance"] for h in plain["results"]] == oracle(code, None)[1].tolist()

# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""Online adds and deletes through the service (serve.updates) against brute force over the acknowledged state.

Oracle: numpy brute-force Hamming over the base codes with every acknowledged update applied (each client
owns a disjoint set of ids, so the final state does not depend on how their requests interleave).
Real parts: a local Ray, Serve over HTTP, 3 shard deployments, the update log on local disk, a shard
replica killed with SIGKILL (it replays the log when Serve restarts it).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest
import requests
from serve_helpers import wait_healthy  # tests/ is on sys.path (pytest rootdir conftest)

from vhindex.data.schema import CodesDatasetMeta
from vhindex.data.writer import CodesDatasetWriter
from vhindex.index.codes import code_to_hex
from vhindex.index.sharded import IndexSpec, build_sharded_index
from vhindex.index.testing import assert_same_knn, brute_force_knn

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("ray")]

BITS = 32


def _base_index(tmp_path, rng: np.random.Generator, n: int, row_group_size: int) -> tuple[list[str], np.ndarray]:
    """``n`` random codes (ids ``b0000``...) as a codes dataset and a 3-shard flat index under ``tmp_path/index``."""
    codes = rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)
    ids = [f"b{i:04d}" for i in range(n)]
    with CodesDatasetWriter(str(tmp_path / "codes"), CodesDatasetMeta(bits=BITS, model="itq", model_version="v"),
                            row_group_size=row_group_size) as w:
        w.write(ids, codes)
    build_sharded_index(str(tmp_path / "codes"), str(tmp_path / "index"), 3, spec=IndexSpec("flat", {}))
    return ids, codes


def _clear_apps() -> None:
    """Both tests serve at route prefix "/": remove whatever app an earlier test left running."""
    from ray import serve

    for name in list(serve.status().applications):
        serve.delete(name)


def test_concurrent_adds_deletes_and_queries_equal_brute_force(ray_serve, tmp_path):
    from ray import serve

    _clear_apps()
    from cluster.serve import deploy
    from vhindex.config import ServeSection

    rng = np.random.default_rng(0)
    n = 900
    ids, codes = _base_index(tmp_path, rng, n, row_group_size=100)
    settings = ServeSection.model_validate(dict(
        index=str(tmp_path / "index"), port=ray_serve[0], direct_port=ray_serve[1], shard_cpus=0.1, router_cpus=0.1,
        app_name="up", route_prefix="/", updates=True, update_poll_s=0.2, max_k=2000))
    deploy(settings)
    base = wait_healthy(f"http://127.0.0.1:{settings.port}")
    state = {v: c.tobytes() for v, c in zip(ids, codes, strict=True)}
    lock = threading.Lock()
    errors: list[str] = []

    def client(c: int) -> None:
        r = random.Random(c)
        mine = ids[c::4][:100]  # base ids this client may replace or delete
        s = requests.Session()
        for j in range(150):
            roll = r.random()
            if roll < 0.45:
                vid = f"c{c}-{j}" if r.random() < 0.6 or not mine else r.choice(mine)
                code = r.randbytes(BITS // 8)
                reply = s.post(base + "/videos", json={"videos": [{"video_id": vid, "code": code.hex()}]}, timeout=30)
                if reply.status_code != 200:
                    errors.append(reply.text)
                    continue
                with lock:
                    state[vid] = code
                if vid not in mine:
                    mine.append(vid)
                # read your writes: the id answers with its new code right away
                got = s.post(base + "/search", json={"video_id": vid, "k": 1}, timeout=30).json()
                if not got.get("results") or got["results"][0]["distance"] != 0:
                    errors.append(f"read-your-writes failed for {vid}: {got}")
            elif roll < 0.75 and mine:
                vid = mine.pop(r.randrange(len(mine)))
                reply = (s.delete(base + f"/videos/{vid}", timeout=30) if r.random() < 0.5 else
                         s.post(base + "/videos/delete", json={"video_ids": [vid]}, timeout=30))
                if reply.status_code != 200:
                    errors.append(reply.text)
                    continue
                with lock:
                    state.pop(vid, None)
                gone = s.post(base + "/search", json={"video_id": vid, "k": 1}, timeout=30)
                if gone.status_code != 404:
                    errors.append(f"deleted {vid} still answers: {gone.status_code} {gone.text}")
            else:
                q = r.randbytes(BITS // 8)
                reply = s.post(base + "/search", json={"code": q.hex(), "k": 5}, timeout=30)
                if reply.status_code != 200:
                    errors.append(reply.text)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]

    def check_exact() -> None:
        all_ids = sorted(state)
        all_codes = np.stack([np.frombuffer(state[v], np.uint8) for v in all_ids])
        q = np.concatenate([all_codes[rng.integers(0, len(all_ids), 10)],
                            rng.integers(0, 256, size=(10, BITS // 8), dtype=np.uint8)])
        D_ref, pos = brute_force_knn(q, all_codes)
        I_ref = np.array(all_ids, dtype=object)[pos]
        for k in (10, 100):
            body = requests.post(base + "/search/batch", json={"queries": [{"code": code_to_hex(x)} for x in q],
                                                               "k": k}, timeout=60).json()
            D = np.array([[h["distance"] for h in r] for r in body["results"]], dtype=np.int32)
            I = np.array([[h["video_id"] for h in r] for r in body["results"]], dtype=object)
            assert_same_knn(D, I, D_ref, I_ref)
        total = sum(requests.get(base + "/info", timeout=10).json()["counts"])
        assert total == n  # the base counts (the info of the built index); the live count is the oracle's

    check_exact()
    # a shard replica killed: Serve restarts it, it replays the log, answers stay exact
    handle = serve.get_deployment_handle("Shard1", "up")
    pid = handle.broadcast("loaded_versions").results(timeout_s=30)[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        try:
            pids = [r["pid"] for r in handle.broadcast("loaded_versions").results(timeout_s=10)]
            if pids and pid not in pids and requests.get(base + "/healthz", timeout=5).status_code == 200:
                break
        except Exception:  # noqa: BLE001 -- restarting
            pass
        assert time.monotonic() < deadline, "shard replica did not come back"
        time.sleep(0.5)
    check_exact()
    # bad update requests
    for body, status, text in [({"videos": [{"video_id": "x", "code": "zz"}]}, 400, "videos[0].code"),
                               ({"videos": []}, 422, "videos"), ({"video_ids": []}, 422, "video_ids")]:
        path = "/videos" if "videos" in body else "/videos/delete"
        reply = requests.post(base + path, json=body, timeout=30)
        assert reply.status_code == status and text in reply.json()["error"], (body, reply.text)


def test_compaction_swaps_in_under_load_with_exact_answers(ray_serve, tmp_path):
    """Updates, `vhindex index compact`, a hot swap to the compacted index while queries run: every answer
    equals brute force over the acknowledged state, the serving version switches once, updates keep working."""
    from cluster.serve import deploy
    from vhindex.app.cli import main as cli_main
    from vhindex.config import ServeSection

    _clear_apps()
    rng = np.random.default_rng(1)
    ids, codes = _base_index(tmp_path, rng, 600, row_group_size=50)
    log_url = str(tmp_path / "log")

    def settings_for(index: str) -> ServeSection:
        return ServeSection.model_validate(dict(
            index=index, port=ray_serve[0], direct_port=ray_serve[1], shard_cpus=0.1, router_cpus=0.1, app_name="cp",
            route_prefix="/", updates=True, update_log=log_url, max_k=2000))

    deploy(settings_for(str(tmp_path / "index")))
    base = wait_healthy(f"http://127.0.0.1:{ray_serve[0]}")
    state = {v: c.tobytes() for v, c in zip(ids, codes, strict=True)}
    r = random.Random(2)
    for j in range(60):
        if r.random() < 0.6:
            vid, code = (f"n{j}" if r.random() < 0.7 else r.choice(ids)), r.randbytes(BITS // 8)
            assert requests.post(base + "/videos", json={"videos": [{"video_id": vid, "code": code.hex()}]},
                                 timeout=30).status_code == 200
            state[vid] = code
        else:
            vid = r.choice(sorted(state))
            assert requests.delete(base + f"/videos/{vid}", timeout=30).status_code == 200
            state.pop(vid)
    old_version = requests.get(base + "/info", timeout=10).json()["serving_version"]
    assert cli_main(["index", "compact", "--index", str(tmp_path / "index"), "--log", log_url,
                     "--out", str(tmp_path / "index-2")]) == 0
    all_ids = sorted(state)
    all_codes = np.stack([np.frombuffer(state[v], np.uint8) for v in all_ids])
    q = np.concatenate([all_codes[rng.integers(0, len(all_ids), 8)],
                        rng.integers(0, 256, size=(8, BITS // 8), dtype=np.uint8)])
    D_ref, pos = brute_force_knn(q, all_codes)
    I_ref = np.array(all_ids, dtype=object)[pos]
    versions, bad = [], []
    stop = threading.Event()

    def load() -> None:
        s = requests.Session()
        while not stop.is_set():
            body = s.post(base + "/search/batch", json={"queries": [{"code": code_to_hex(x)} for x in q], "k": 20},
                          timeout=60).json()
            versions.append(body["index_version"])
            D = np.array([[h["distance"] for h in row] for row in body["results"]], dtype=np.int32)
            I = np.array([[h["video_id"] for h in row] for row in body["results"]], dtype=object)
            try:
                assert_same_knn(D, I, D_ref, I_ref)
            except AssertionError as err:
                bad.append((body["index_version"], str(err)[:300]))

    t = threading.Thread(target=load)
    t.start()
    deploy(settings_for(str(tmp_path / "index-2")))  # the hot swap
    deadline = time.monotonic() + 90
    while requests.get(base + "/info", timeout=10).json()["serving_version"] == old_version:
        assert time.monotonic() < deadline, "the compacted version was never served"
        time.sleep(0.3)
    time.sleep(1.0)
    stop.set()
    t.join()
    assert not bad, bad[:3]
    switches = sum(1 for a, b in zip(versions, versions[1:], strict=False) if a != b)
    assert switches == 1 and versions[0] == old_version and versions[-1] != old_version, (switches, versions[:3])
    # updates after the swap land on the compacted base
    assert requests.post(base + "/videos", json={"videos": [{"video_id": "after", "code": "00" * (BITS // 8)}]},
                         timeout=30).status_code == 200
    got = requests.post(base + "/search", json={"video_id": "after", "k": 1}, timeout=30).json()
    assert got["results"][0]["distance"] == 0

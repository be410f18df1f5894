# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""The query service on a multi-node Ray cluster, with whole nodes lost (issue 19).

A private cluster on 127.0.0.1 (:mod:`tests.ray_cluster`): a head that holds Serve's controller,
its proxy and the router (custom resource ``ingress``), and worker nodes that hold the shard
replicas (``index_host``). The index lives on the S3-compatible server (moto), so a replica
rescheduled on another node loads it from there. A node is lost by SIGKILL to its whole process
group (raylet, agents, replicas): no drain, no goodbye.

Oracle: numpy brute-force Hamming ranking (tie-aware comparison), over all codes or over the
shards that answered.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from tests.ray_cluster import FAST_NODE_DEATH, RayCluster
from vhindex.data.schema import CodesDatasetMeta
from vhindex.data.writer import CodesDatasetWriter
from vhindex.index.codes import code_to_hex
from vhindex.index.testing import assert_same_knn, brute_force_knn

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("rayhead")]

BITS = 64
SHARDS = 2


@pytest.fixture(scope="module")
def cluster(private_ray):
    """Head (router, proxy, controller) + worker nodes node_a, node_b (shard hosts); nodes die in ~3 s."""
    pytest.importorskip("psutil")
    rc = RayCluster.start(head_cpus=2, head_resources={"ingress": 1}, system_config=FAST_NODE_DEATH)
    try:
        for name in ("node_a", "node_b"):
            rc.add_node(name, num_cpus=1, resources={"index_host": 1})
        rc.connect()
        yield rc
    finally:
        from ray import serve

        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001 -- the cluster goes away next in any case
            pass
        rc.stop()
    left = rc.pids()
    assert not left, f"processes of the test cluster survived stop(): {sorted(left)}"


@pytest.fixture(scope="module")
def corpus(s3_server, tmp_path_factory):
    """3,000 codes (many ties), as a 2-shard flat index on S3."""
    from vhindex.index.sharded import IndexSpec, ShardedIndex, build_sharded_index

    rng = np.random.default_rng(7)
    centres = rng.integers(0, 256, size=(20, BITS // 8), dtype=np.uint8)
    codes = centres[rng.integers(0, 20, size=3000)].copy()
    codes ^= np.packbits(rng.random((3000, BITS)) < 0.08, axis=1)
    ids = [f"vid-{i:05d}" for i in range(3000)]
    local = tmp_path_factory.mktemp("mn-serve") / "codes"
    with CodesDatasetWriter(str(local), CodesDatasetMeta(bits=BITS, model="itq", model_version="v1"),
                            rows_per_file=1000, row_group_size=250) as w:
        w.write(ids, codes)
    url = f"{s3_server.url()}/mn-index"  # a fresh prefix per session use
    so = s3_server.storage_options
    build_sharded_index(str(local), url, SHARDS, spec=IndexSpec("flat", {}), so=so)
    sh = ShardedIndex.open(url, so)
    members = [set(sh.load_shard(s).idmap.ids) for s in range(SHARDS)]
    return url, so, ids, codes, members


_SERVE_PORT: list[int] = []  # Serve's HTTP port is fixed when Serve first starts on the cluster


def _settings(index: str, so: dict, **kw):
    from tests.ray_head import RayHead
    from vhindex.config import ServeSection

    if not _SERVE_PORT:
        _SERVE_PORT.append(RayHead.free_port())
    base = dict(index=index, storage_options=so, port=_SERVE_PORT[0], app_name="mn", route_prefix="/",
                proxy_location="HeadOnly", fast_path=False, shard_cpus=0.1, router_cpus=0.1,
                router_resources={"ingress": 0.01}, shard_timeout_s=1.0, retries=1)
    base.update(kw)
    return ServeSection.model_validate(base)


def _deploy(settings) -> str:
    from cluster.serve import deploy
    from tests.serve_helpers import wait_healthy

    deploy(settings)
    return wait_healthy(f"http://127.0.0.1:{settings.port}", timeout_s=120)


def _replicas(shard: int) -> list[dict]:
    """``loaded_versions`` of every live replica of a shard (pid, node_id, ...)."""
    from ray import serve

    handle = serve.get_deployment_handle(f"Shard{shard}", "mn")
    return handle.broadcast("loaded_versions").results(timeout_s=30)


def _replicas_when(shard: int, count: int):
    """A condition for :func:`_wait`: the shard's replicas once ``count`` of them run with an index loaded."""
    def cond() -> list[dict] | None:
        reps = _replicas(shard)
        return reps if len(reps) == count and all(r["current"] for r in reps) else None
    return cond


def _wait(cond, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        out = cond()
        if out:
            return out
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(poll_s)


def _oracle(ids: list[str], codes: np.ndarray, queries: np.ndarray, keep: set[str] | None = None):
    sel = [i for i, v in enumerate(ids) if keep is None or v in keep]
    D, pos = brute_force_knn(queries, codes[sel])
    return D, np.array([ids[i] for i in sel], dtype=object)[pos]


def _hits(body: dict, k: int) -> tuple[np.ndarray, np.ndarray]:
    D = np.full((1, k), BITS + 1, dtype=np.int32)
    I = np.full((1, k), None, dtype=object)
    for c, h in enumerate(body["results"]):
        D[0, c], I[0, c] = h["distance"], h["video_id"]
    return D, I


def _is_exact(body: dict, D_ref: np.ndarray, I_ref: np.ndarray, k: int) -> bool:
    try:
        assert_same_knn(*_hits(body, k), D_ref, I_ref)
        return True
    except AssertionError:
        return False


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _peer_pids(base: str) -> dict[int, set[int]]:
    """Replica pids the router's data plane holds connections for, per shard (a search first: the router
    refreshes its endpoints as it searches)."""
    requests.post(base + "/search", json={"code": "00" * (BITS // 8), "k": 1}, timeout=30)
    peers = requests.get(base + "/info", timeout=30).json()["data_plane"]["peers"]
    return {int(s): {p["pid"] for p in v} for s, v in peers.items()}


def test_two_replicas_of_a_shard_sit_on_two_nodes_and_losing_one_node_loses_no_answer(cluster, corpus):
    """max_replicas_per_node=1 puts a shard's 2 replicas on 2 nodes; one node SIGKILLed under load: every
    answer complete and exact; a node that joins later takes the lost replicas (index read from S3), and
    the router's data plane connects to them."""
    from ray import serve

    url, so, ids, codes, _ = corpus
    nodes = {n.node_id: name for name, n in cluster.nodes.items()}
    base = _deploy(_settings(url, so, replicas=2, max_replicas_per_node=1, shard_resources={"index_host": 0.01},
                             shard_timeout_s=2.0, retries=2))
    for s in range(SHARDS):
        reps = _wait(_replicas_when(s, 2), 60, f"2 replicas of shard {s}")
        assert {nodes.get(r["node_id"]) for r in reps} == {"node_a", "node_b"}, reps
    _wait(lambda: all(len(p) == 2 for p in _peer_pids(base).values()), 30,
          "the router's data plane reaches both replicas of every shard")

    rng = np.random.default_rng(3)
    queries = codes[rng.integers(0, len(codes), size=200)]
    D_ref, I_ref = _oracle(ids, codes, queries)
    outcomes: list[tuple[int, str]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = worker
        with requests.Session() as http:
            while not stop.is_set():
                q = i % len(queries)
                try:
                    r = http.post(base + "/search", json={"code": code_to_hex(queries[q]), "k": 10}, timeout=30)
                    if r.status_code != 200:
                        outcomes.append((q, f"http {r.status_code}"))
                    elif r.json()["partial"]:
                        outcomes.append((q, "partial"))
                    else:
                        outcomes.append((q, "ok" if _is_exact(r.json(), D_ref[q:q + 1], I_ref[q:q + 1], 10) else "wrong"))
                except requests.RequestException as err:
                    outcomes.append((q, repr(err)))
                i += 4

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    cluster.kill_node("node_a")
    cluster.wait_nodes(alive=2, timeout=60)  # head + node_b: the GCS has declared node_a dead
    time.sleep(3.0)  # keep the load on after the death was noticed (replicas being replaced)
    stop.set()
    for t in threads:
        t.join()
    verdicts = [v for _, v in outcomes]
    assert verdicts.count("wrong") == 0, [o for o in outcomes if o[1] == "wrong"][:3]
    assert len(verdicts) >= 200, f"too few requests under load to judge: {len(verdicts)}"
    ok = verdicts.count("ok") / len(verdicts)
    assert ok >= 0.999, (ok, [o for o in outcomes if o[1] != "ok"][:5])

    # node_a's replicas cannot go to node_b (one per node): they wait for a node, then load from S3 there
    t_join = time.monotonic()
    node_c = cluster.add_node("node_c", num_cpus=1, resources={"index_host": 1})
    for s in range(SHARDS):
        reps = _wait(_replicas_when(s, 2), 120, f"shard {s} back to 2 replicas")
        assert {r["node_id"] for r in reps} == {cluster.nodes["node_b"].node_id, node_c.node_id}, reps
    replicated_s = time.monotonic() - t_join
    new_pids = {s: {r["pid"] for r in _replicas(s) if r["node_id"] == node_c.node_id} for s in range(SHARDS)}
    _wait(lambda: all(new_pids[s] <= _peer_pids(base)[s] for s in range(SHARDS)), 30,
          "the router's data plane reaches the new replicas")
    counters0 = requests.get(base + "/info", timeout=30).json()["router_counters"]
    for q in range(40):
        r = requests.post(base + "/search", json={"code": code_to_hex(queries[q]), "k": 10}, timeout=30)
        assert r.status_code == 200 and not r.json()["partial"], r.text
        assert_same_knn(*_hits(r.json(), 10), D_ref[q:q + 1], I_ref[q:q + 1])
    counters1 = requests.get(base + "/info", timeout=30).json()["router_counters"]
    assert counters1["direct_calls"] - counters0["direct_calls"] >= 40 * SHARDS, (counters0, counters1)
    assert counters1["direct_failures"] == counters0["direct_failures"], (counters0, counters1)
    print(f"\n[multinode] node loss under load: {len(verdicts)} requests, {ok:.4%} complete+exact; "
          f"replicas back {replicated_s:.1f} s after a node joined")
    serve.delete("mn")


def test_losing_the_node_of_a_shards_only_replica_gives_partial_answers_then_recovers(cluster, corpus):
    """One replica per shard, each on its own node (index_host 0.6 of 1), a third node idle. SIGKILL the
    node of shard 0: answers say partial, name shard 0 within the shard deadline and are the exact top-k
    of shard 1; Serve then restarts shard 0 on the idle node (from S3) and answers are complete again."""
    from ray import serve

    url, so, ids, codes, members = corpus
    if "node_d" not in cluster.nodes:
        cluster.add_node("node_d", num_cpus=1, resources={"index_host": 1})
    settings = _settings(url, so, replicas=1, shard_resources={"index_host": 0.6}, shard_timeout_s=1.0, retries=1)
    base = _deploy(settings)
    names = {n.node_id: name for name, n in cluster.nodes.items()}
    on = {s: names[_replicas(s)[0]["node_id"]] for s in range(SHARDS)}
    assert len(set(on.values())) == SHARDS, on  # index_host 0.6: one shard replica per node
    victim = on[0]
    q = codes[5:6]
    D_all, I_all = _oracle(ids, codes, q)
    D_rest, I_rest = _oracle(ids, codes, q, keep=members[1])
    r = requests.post(base + "/search", json={"code": code_to_hex(q[0]), "k": 10}, timeout=30)
    assert_same_knn(*_hits(r.json(), 10), D_all, I_all)

    victim_pid = _replicas(0)[0]["pid"]
    t_kill = time.monotonic()
    cluster.kill_node(victim)
    assert not _alive(victim_pid), "the replica outlived its node"
    partial_seen, latencies, recovered_at, trace = 0, [], None, []
    deadline = t_kill + 120
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        r = requests.post(base + "/search", json={"code": code_to_hex(q[0]), "k": 10}, timeout=30)
        took = time.monotonic() - t0
        trace.append((round(t0 - t_kill, 2), round(took, 2), r.json().get("partial") if r.status_code == 200 else r.status_code))
        assert r.status_code == 200, r.text
        body = r.json()
        if body["partial"]:
            assert body["missing_shards"] == [0], body
            assert_same_knn(*_hits(body, 10), D_rest, I_rest)  # never a wrong top-k: the exact top-k of shard 1
            latencies.append(took)
            partial_seen += 1
        else:
            assert_same_knn(*_hits(body, 10), D_all, I_all)
            if partial_seen:
                recovered_at = time.monotonic()
                break
        time.sleep(0.1)
    assert partial_seen, "no partial answer after the node of shard 0 was killed"
    assert recovered_at is not None, "shard 0 never came back on a surviving node"
    # within the shard deadline: (retries + 1) attempts of shard_timeout_s each, plus HTTP and scheduling slack
    assert max(latencies) < settings.shard_timeout_s * (settings.retries + 1) + 2.0, latencies
    rep = _replicas(0)
    assert len(rep) == 1 and names[rep[0]["node_id"]] not in (victim, on[1]), (rep, on)
    _wait(lambda: _peer_pids(base)[0] == {rep[0]["pid"]}, 30, "the data plane reaches the new replica of shard 0")
    print(f"\n[multinode] only replica's node lost: {partial_seen} partial answers (max {max(latencies):.2f} s), "
          f"complete again {recovered_at - t_kill:.1f} s after the kill; (start, took, partial): {trace}")
    serve.delete("mn")

"""Benchmark: the query service when a whole Ray node is lost -- answers during the loss, time to recover.

A multi-node Ray cluster on 127.0.0.1 (:mod:`tests.ray_cluster`: a head holding Serve's controller,
proxy and router, plus worker nodes holding the shard replicas), a 2-shard flat index of 3,000 64-bit
codes on moto's S3 server. A node is lost by SIGKILL to all of its processes. Per failure-detection
setting -- Ray's defaults (a node is declared dead after 5 missed health checks 3 s apart) and the
tests' ``FAST_NODE_DEATH`` (3 x 1 s) -- two scenarios:

* ``only replica``: one replica per shard, each on its own node, a third node idle. The node of shard 0
  is killed while one client sends a query every 0.1 s: time to the first partial answer, how long the
  partial answers take, and the time from the kill to the first complete, exact answer (Serve has
  started shard 0 on the idle node, which loaded it from S3 -- full recovery).
* ``two replicas``: two replicas per shard on two nodes (``max_replicas_per_node: 1``), 4 client
  threads; one node is killed and the load continues 10 s after the node is declared dead:
  complete-and-exact answers / all answers, and the p50 / p99 / max latency.

    .venv/bin/python benchmarks/bench_node_loss.py --report benchmarks/results/bench_node_loss.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.runtime import loopback_ray_env  # noqa: E402

os.environ.update(loopback_ray_env())  # before Ray is imported (see tests/ray_cluster.py)
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pct(v: list[float], q: float) -> float:
    """Nearest-rank quantile."""
    s = sorted(v)
    return s[min(len(s) - 1, max(0, int(np.ceil(q * len(s))) - 1))]


def _s3() -> tuple[object, dict]:
    import boto3
    from moto.server import ThreadedMotoServer

    from cluster.runtime import free_ports

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[k] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    port = free_ports(1)[0]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="bench")
    so = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    return server, so


def _index(so: dict, tmp: Path) -> tuple[str, list[str], np.ndarray, list[set[str]]]:
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.index.sharded import IndexSpec, ShardedIndex, build_sharded_index

    rng = np.random.default_rng(7)
    centres = rng.integers(0, 256, size=(20, 8), dtype=np.uint8)
    codes = centres[rng.integers(0, 20, size=3000)].copy()
    codes ^= np.packbits(rng.random((3000, 64)) < 0.08, axis=1)
    ids = [f"vid-{i:05d}" for i in range(3000)]
    with CodesDatasetWriter(str(tmp / "codes"), CodesDatasetMeta(bits=64, model="itq", model_version="v1"),
                            rows_per_file=1000, row_group_size=250) as w:
        w.write(ids, codes)
    url = f"s3://bench/index-{int(time.time() * 1000)}"
    build_sharded_index(str(tmp / "codes"), url, 2, spec=IndexSpec("flat", {}), so=so)
    sh = ShardedIndex.open(url, so)
    return url, ids, codes, [set(sh.load_shard(s).idmap.ids) for s in range(2)]


def scenario_only_replica(rc, url, so, ids, codes, members) -> dict:
    import requests

    from tests.test_multinode_serve import _deploy, _hits, _oracle, _replicas, _settings
    from vhindex.index.codes import code_to_hex
    from vhindex.index.testing import assert_same_knn

    settings = _settings(url, so, replicas=1, shard_resources={"index_host": 0.6}, shard_timeout_s=1.0, retries=1)
    base = _deploy(settings)
    names = {n.node_id: name for name, n in rc.nodes.items()}
    victim = names[_replicas(0)[0]["node_id"]]
    q = codes[5:6]
    d_all, i_all = _oracle(ids, codes, q)
    d_rest, i_rest = _oracle(ids, codes, q, keep=members[1])
    t_kill = time.monotonic()
    rc.kill_node(victim)
    first_partial = recovered = None
    partial_took: list[float] = []
    wrong = 0
    while time.monotonic() - t_kill < 180:
        t0 = time.monotonic()
        body = requests.post(base + "/search", json={"code": code_to_hex(q[0]), "k": 10}, timeout=60).json()
        took = time.monotonic() - t0
        try:
            if body["partial"]:
                assert body["missing_shards"] == [0]
                assert_same_knn(*_hits(body, 10), d_rest, i_rest)
                first_partial = first_partial if first_partial is not None else t0 - t_kill
                partial_took.append(took)
            else:
                assert_same_knn(*_hits(body, 10), d_all, i_all)
                if partial_took:
                    recovered = time.monotonic() - t_kill
                    break
        except AssertionError:
            wrong += 1
        time.sleep(0.1)
    from ray import serve

    serve.delete(settings.app_name)
    return {"first_partial_s": first_partial, "partial_answers": len(partial_took),
            "partial_max_s": max(partial_took) if partial_took else None, "recovered_s": recovered, "wrong": wrong}


def scenario_two_replicas(rc, url, so, ids, codes) -> dict:
    import requests

    from tests.test_multinode_serve import _deploy, _is_exact, _oracle, _replicas, _replicas_when, _settings, _wait
    from vhindex.index.codes import code_to_hex

    settings = _settings(url, so, replicas=2, max_replicas_per_node=1, shard_resources={"index_host": 0.01},
                         shard_timeout_s=2.0, retries=2)
    base = _deploy(settings)
    for s in range(2):
        _wait(_replicas_when(s, 2), 120, f"2 replicas of shard {s}")
    names = {n.node_id: name for name, n in rc.nodes.items()}
    victim = names[_replicas(0)[0]["node_id"]]
    rng = np.random.default_rng(3)
    queries = codes[rng.integers(0, len(codes), size=200)]
    d_ref, i_ref = _oracle(ids, codes, queries)
    outcomes: list[tuple[str, float]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        i = worker
        with requests.Session() as http:
            while not stop.is_set():
                q = i % len(queries)
                t0 = time.monotonic()
                try:
                    r = http.post(base + "/search", json={"code": code_to_hex(queries[q]), "k": 10}, timeout=60)
                    body = r.json() if r.status_code == 200 else None
                    verdict = ("http" if body is None else "partial" if body["partial"] else
                               "ok" if _is_exact(body, d_ref[q:q + 1], i_ref[q:q + 1], 10) else "wrong")
                except requests.RequestException:
                    verdict = "error"
                outcomes.append((verdict, time.monotonic() - t0))
                i += 4

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    time.sleep(3.0)
    alive_before = len(rc.alive_node_ids())
    t_kill = time.monotonic()
    rc.kill_node(victim)
    detected = rc.wait_nodes(alive=alive_before - 1, timeout=120)
    time.sleep(10.0)
    stop.set()
    for t in threads:
        t.join()
    from ray import serve

    serve.delete(settings.app_name)
    lat = [s for _, s in outcomes]
    verdicts = [v for v, _ in outcomes]
    return {"requests": len(outcomes), "ok_fraction": verdicts.count("ok") / len(outcomes),
            "wrong": verdicts.count("wrong"), "partial": verdicts.count("partial"),
            "errors": len(outcomes) - verdicts.count("ok") - verdicts.count("wrong") - verdicts.count("partial"),
            "declared_dead_s": detected, "window_s": time.monotonic() - t_kill,
            "p50_ms": 1000 * pct(lat, 0.5), "p99_ms": 1000 * pct(lat, 0.99), "max_ms": 1000 * max(lat)}


def run(mode: str, so: dict, tmp: Path) -> dict:
    import tempfile

    from tests.ray_cluster import FAST_NODE_DEATH, RayCluster

    system_config = FAST_NODE_DEATH if mode == "fast" else None
    rc = RayCluster.start(head_cpus=2, head_resources={"ingress": 1}, system_config=system_config)
    try:
        for name in ("node_a", "node_b", "node_c"):
            rc.add_node(name, num_cpus=1, resources={"index_host": 1})
        rc.connect()
        url, ids, codes, members = _index(so, Path(tempfile.mkdtemp(dir=tmp)))
        out = {"only_replica": scenario_only_replica(rc, url, so, ids, codes, members)}
        rc.add_node("node_d", num_cpus=1, resources={"index_host": 1})  # back to three shard hosts
        out["two_replicas"] = scenario_two_replicas(rc, url, so, ids, codes)
        return out
    finally:
        from ray import serve

        try:
            serve.shutdown()
        except Exception:  # noqa: BLE001
            pass
        rc.stop()


def main() -> None:
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["default", "fast"], choices=["default", "fast"])
    p.add_argument("--report", default=None, help="write a Markdown report here")
    args = p.parse_args()
    server, so = _s3()
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in args.modes:
                results[mode] = run(mode, so, Path(tmp))
                print(mode, results[mode], flush=True)
    finally:
        server.stop()
    lines = [f"# Node loss in the query service ({dt.date.today()}, {platform.node()}, {os.cpu_count()} CPUs, "
             f"{platform.processor() or platform.machine()})", "",
             "`.venv/bin/python benchmarks/bench_node_loss.py --report benchmarks/results/bench_node_loss.md`", "",
             "| node-death detection | only replica lost: first partial | partial answers took (max) | full recovery "
             "after the kill | wrong |", "| --- | --- | --- | --- | --- |"]
    labels = {"default": "Ray default (3 s x 5)", "fast": "FAST_NODE_DEATH (1 s x 3)"}
    for mode, r in results.items():
        o = r["only_replica"]
        lines.append(f"| {labels[mode]} | {o['first_partial_s']:.2f} s | {o['partial_max_s']:.2f} s "
                     f"({o['partial_answers']} answers) | {o['recovered_s']:.1f} s | {o['wrong']} |")
    lines += ["", "| node-death detection | two replicas, one node lost: requests | complete + exact | partial | "
              "errors | wrong | declared dead after | p50 / p99 / max |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for mode, r in results.items():
        t = r["two_replicas"]
        lines.append(f"| {labels[mode]} | {t['requests']} in {t['window_s']:.0f} s | {t['ok_fraction']:.4%} | "
                     f"{t['partial']} | {t['errors']} | {t['wrong']} | {t['declared_dead_s']:.1f} s | "
                     f"{t['p50_ms']:.0f} / {t['p99_ms']:.0f} / {t['max_ms']:.0f} ms |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        Path(args.report).write_text(text)


if __name__ == "__main__":
    main()

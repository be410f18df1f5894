"""Benchmark: the Ray Serve query service over HTTP vs in-process faiss, side by side in one run.

Builds (once, cached in ``--work``) 700,000 seeded clustered 64-bit codes as a codes dataset and a
4-shard flat index, serves it on a local Ray (router + 4 shard deployments, 127.0.0.1) with the product
defaults (``serve.fast_path``: Serve throughput-optimized, queries sent to the router replica's own port;
adaptive batching), then measures:

* single-query latency: ``--single`` sequential ``POST /search`` (k = 10) on one keep-alive
  ``http.client`` connection; every ``--requests-every``-th query is also sent through ``requests``
  (interleaved) to show what a heavier client adds on the shared cores;
* sustained throughput at concurrency ``--concurrency`` (16): an asyncio client (aiohttp) keeps that
  many requests in flight for ``--seconds``; qps and the latency percentiles under load;
* ``POST /search/batch`` with 1,000 queries per request: queries/s;
* in-process faiss ``IndexBinaryFlat`` over all 700,000 codes (1 and 2 threads) on the same queries;
* with ``--compare`` (default), in the same run: the same service through Serve's HTTP proxy, and the
  router redeployed with ``@serve.batch`` instead of adaptive batching (shorter runs).

Every HTTP answer's distances are checked against in-process faiss. Usage::

    python benchmarks/bench_serve.py --work bench-work/serve
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _codes(n: int, bits: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, size=(2_000, bits // 8), dtype=np.uint8)
    codes = centres[rng.integers(0, len(centres), size=n)]
    return codes ^ np.packbits(rng.random((n, bits)) < 0.15, axis=1)


class _LeanClient:
    """One keep-alive HTTP/1.1 connection (``http.client``): the lightest standard client.

    The client shares the 2 cores with the service; ``requests`` spends ~1 ms of Python per call
    (measured side by side in every run), which is the client's cost, not the service's.
    """

    def __init__(self, url: str) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def post_json(self, path: str, body: bytes) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def close(self) -> None:
        self.conn.close()


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def _load(base: str, payloads: list[bytes], concurrency: int, seconds: float) -> tuple[int, list[float], int]:
    import aiohttp

    done, lat, errors = 0, [], 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker(w: int) -> None:
            nonlocal done, errors
            i = w
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                async with session.post(base + "/search", data=payloads[i % len(payloads)],
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                lat.append(1000 * (time.perf_counter() - t0))
                done += 1
                i += concurrency

        await asyncio.gather(*[worker(w) for w in range(concurrency)])
    return done, lat, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", default="bench-work/serve")
    p.add_argument("--n", type=int, default=700_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--single", type=int, default=1_000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--batch", type=int, default=1_000)
    p.add_argument("--batch-requests", type=int, default=5)
    p.add_argument("--requests-every", type=int, default=3,
                   help="also time every n-th single query through `requests` (interleaved, for the comparison)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", default="benchmarks/results/bench_serve.md", help="markdown output ('' for none)")
    p.add_argument("--fast-path", choices=["on", "off"], default="on",
                   help="serve.fast_path (Serve throughput-optimized + direct ingress), the product default")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure, in the same run, the Serve proxy path and @serve.batch batching")
    p.add_argument("--compare-single", type=int, default=300)
    p.add_argument("--compare-seconds", type=float, default=6.0)
    p.add_argument("--via", choices=["direct", "proxy"], default="direct",
                   help="query the router replica's own port (fast path) or Serve's HTTP proxy")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # faiss on a loaded 2-core box: spin-waiting hurts

    import faiss
    import requests

    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import deploy, direct_endpoints, serve_cluster_env
    from vhindex.config import ServeSection
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.index.codes import code_to_hex
    from vhindex.index.sharded import IndexSpec, ShardedIndex, build_sharded_index

    work = Path(args.work).resolve()
    codes = _codes(args.n, args.bits, args.seed)
    ids = [f"v{i:07d}" for i in range(args.n)]
    index_url = str(work / f"index-{args.n}-{args.bits}-{args.shards}")
    if not (Path(index_url) / "_manifest.json").exists():
        codes_url = str(work / f"codes-{args.n}-{args.bits}")
        if not (Path(codes_url) / "_manifest.json").exists():
            with CodesDatasetWriter(codes_url, CodesDatasetMeta(bits=args.bits, model="bench"),
                                    rows_per_file=200_000, row_group_size=10_000) as w:
                w.write(ids, codes)
        t0 = time.perf_counter()
        build_sharded_index(codes_url, index_url, args.shards, spec=IndexSpec("flat", {}))
        print(f"built {args.shards}-shard index in {time.perf_counter() - t0:.1f}s")
    assert ShardedIndex.open(index_url).info()["total_count"] == args.n

    rng = np.random.default_rng(args.seed + 1)
    queries = codes[rng.integers(0, args.n, size=max(args.single, args.batch))] ^ np.packbits(
        rng.random((max(args.single, args.batch), args.bits)) < 0.05, axis=1)

    # in-process reference: one IndexBinaryFlat over everything
    flat = faiss.IndexBinaryFlat(args.bits)
    flat.add(codes)
    inproc = {}
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        flat.search(queries[:10], args.k)
        t0 = time.perf_counter()
        D_ref, _ = flat.search(queries[: args.batch], args.k)
        inproc[threads] = args.batch / (time.perf_counter() - t0)
    faiss.omp_set_num_threads(1)
    single_inproc = []
    for q in queries[:200]:
        t0 = time.perf_counter()
        flat.search(q[None], args.k)
        single_inproc.append(1000 * (time.perf_counter() - t0))

    port, direct_port = free_ports(2)
    settings = ServeSection(index=index_url, port=port, direct_port=direct_port, shard_cpus=0.25, router_cpus=0.25,
                            faiss_threads=1, app_name="bench", fast_path=args.fast_path == "on", direct_drain_s=1.0)
    started = connect_ray(env=serve_cluster_env(settings))
    t0 = time.perf_counter()
    deploy(settings)
    proxy = f"http://127.0.0.1:{port}"
    session = requests.Session()
    while session.get(proxy + "/healthz", timeout=30).status_code != 200:
        time.sleep(0.2)
    up_s = time.perf_counter() - t0
    endpoints = direct_endpoints(settings.app_name) if settings.fast_path else []
    base = endpoints[0] if endpoints and args.via == "direct" else proxy
    def measure(url: str, n_single: int, seconds: float) -> dict:
        """Sequential single queries (answers checked), then `--concurrency` clients for `seconds`."""
        lean = _LeanClient(url)
        for pl in payloads[:50]:  # warm-up
            lean.post_json("/search", pl)
            session.post(url + "/search", data=pl, headers={"Content-Type": "application/json"})
        lat, lat_requests, bad = [], [], 0
        for i, pl in enumerate(payloads[:n_single]):
            t0 = time.perf_counter()
            status, body = lean.post_json("/search", pl)
            lat.append(1000 * (time.perf_counter() - t0))
            got = [h["distance"] for h in json.loads(body)["results"]]
            bad += got != D_ref[i].tolist() if i < args.batch else 0
            if i % args.requests_every == 0:  # the same query again through `requests`, interleaved
                t0 = time.perf_counter()
                r = session.post(url + "/search", data=pl, headers={"Content-Type": "application/json"})
                lat_requests.append(1000 * (time.perf_counter() - t0))
                bad += [h["distance"] for h in r.json()["results"]] != D_ref[i].tolist() if i < args.batch else 0
        lean.close()
        before = session.get(url + "/info", timeout=30).json()["router_counters"]
        n_done, lat_load, n_errors = asyncio.run(_load(url, payloads, args.concurrency, seconds))
        after = session.get(url + "/info", timeout=30).json()["router_counters"]
        moved = {key: after[key] - before[key] for key in ("direct_calls", "handle_calls")}
        return {"lat": lat, "lat_requests": lat_requests, "wrong": bad, "transport": moved, "qps": n_done / seconds, "lat_load": lat_load, "errors": n_errors,
                "per_fanout": (after["queries"] - before["queries"]) / max(1, after["fanouts"] - before["fanouts"])}

    payloads = [json.dumps({"code": code_to_hex(q), "k": args.k}).encode() for q in queries[: args.single]]
    compared: list[tuple[str, dict]] = []
    try:
        main_run = measure(base, args.single, args.seconds)
        lat, lat_load, done, errors, per_fanout = (main_run["lat"], main_run["lat_load"], main_run["qps"] * args.seconds,
                                                   main_run["errors"], main_run["per_fanout"])
        wrong = main_run["wrong"]
        batch_qps = []
        body = json.dumps({"queries": [{"code": code_to_hex(q)} for q in queries[: args.batch]], "k": args.k})
        for _ in range(args.batch_requests):
            t0 = time.perf_counter()
            r = session.post(base + "/search/batch", data=body, headers={"Content-Type": "application/json"})
            batch_qps.append(args.batch / (time.perf_counter() - t0))
            res = r.json()["results"]
            wrong += sum([h["distance"] for h in hits] != D_ref[i].tolist() for i, hits in enumerate(res))
        if args.compare and base != proxy:
            # the same deployment through Serve's HTTP proxy (one more hop)
            compared.append(("same service via the Serve proxy", measure(proxy, args.compare_single,
                                                                          args.compare_seconds)))
            # Ray Serve's @serve.batch instead of adaptive batching (the router restarts with it)
            deploy(settings.model_copy(update={"batching": "serve_batch"}))
            other = direct_endpoints(settings.app_name)[0]
            while session.get(other + "/healthz", timeout=30).status_code != 200:
                time.sleep(0.2)
            compared.append((f"@serve.batch (wait {settings.batch_wait_s * 1000:g} ms), router port",
                             measure(other, args.compare_single, args.compare_seconds)))
            # shard searches through Serve handles (gRPC) only, without the direct data plane
            if settings.data_plane:
                deploy(settings.model_copy(update={"data_plane": False}))
                other = direct_endpoints(settings.app_name)[0]
                while session.get(other + "/healthz", timeout=30).status_code != 200:
                    time.sleep(0.2)
                compared.append(("data_plane: false (Serve handles only), router port",
                                 measure(other, args.compare_single, args.compare_seconds)))
        wrong += sum(c["wrong"] for _, c in compared)
    finally:
        from ray import serve

        serve.shutdown()
        if started:
            import ray

            ray.shutdown()

    best_batch = max(batch_qps)
    lines: list[str] = []
    say = lines.append
    say("```")
    say(f"bench_serve  {dt.datetime.now().isoformat(timespec='seconds')}")
    say(f"machine: {platform.machine()} cpus={os.cpu_count()} python {platform.python_version()} "
          f"faiss {faiss.__version__} load={os.getloadavg()}")
    say(f"{args.n:,} x {args.bits}-bit codes, {args.shards} shards (flat), 1 replica each, k={args.k}; "
          f"service up in {up_s:.1f}s; client on the same 2-core machine")
    say(f"fast_path={settings.fast_path}, data_plane={settings.data_plane}, queries sent to {'the router replica port' if base != proxy else 'the Serve proxy'}"
          f" ({base})")
    say(f"single-query HTTP latency ({args.single} sequential): p50 {_pct(lat, 50):.2f} ms  p99 {_pct(lat, 99):.2f} ms  "
          f"(in-process faiss single query p50 {statistics.median(single_inproc):.2f} ms); client: http.client, "
          f"one keep-alive connection")
    say(f"  same queries interleaved through `requests` ({len(main_run['lat_requests'])}): "
          f"p50 {_pct(main_run['lat_requests'], 50):.2f} ms  p99 {_pct(main_run['lat_requests'], 99):.2f} ms "
          f"(the difference is client-side Python on the shared cores)")
    say(f"concurrency {args.concurrency}, {args.seconds:.0f}s: {done / args.seconds:,.0f} queries/s, "
          f"p50 {_pct(lat_load, 50):.2f} ms  p99 {_pct(lat_load, 99):.2f} ms, {errors} errors; "
          f"{per_fanout:.1f} queries per shard fan-out; shard calls under load: {main_run['transport']['direct_calls']:,} "
          f"direct, {main_run['transport']['handle_calls']:,} via Serve handles")
    for label, c in compared:
        say(f"  compared -- {label}: single p50 {_pct(c['lat'], 50):.2f} ms  p99 {_pct(c['lat'], 99):.2f} ms "
              f"({len(c['lat'])} sequential); concurrency {args.concurrency}: {c['qps']:,.0f} queries/s, "
              f"p50 {_pct(c['lat_load'], 50):.2f} ms  p99 {_pct(c['lat_load'], 99):.2f} ms, {c['errors']} errors; "
              f"{c['per_fanout']:.1f} queries per fan-out")
    say(f"/search/batch ({args.batch} queries/request): {best_batch:,.0f} queries/s best of {args.batch_requests} "
          f"(median {statistics.median(batch_qps):,.0f})")
    say(f"in-process faiss IndexBinaryFlat, same {args.batch} queries: 1 thread {inproc[1]:,.0f} q/s, "
          f"2 threads {inproc[2]:,.0f} q/s")
    say(f"batch ratio service / in-process: {best_batch / inproc[1]:.2f} (vs 1 thread), "
          f"{best_batch / max(inproc.values()):.2f} (vs best)")
    say(f"answers checked against in-process faiss: {wrong} wrong")
    say("```")
    text = "\n".join(lines)
    print(text)
    if args.report:
        header = (f"# `{' '.join(['python benchmarks/bench_serve.py', *(argv if argv is not None else sys.argv[1:])])}`\n\n"
                  "Written by the benchmark itself (the latest run; earlier runs are in git history). "
                  "Read single numbers as +-1 ms: the 2-core machine is shared and noisy.\n\n")
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(header + text + "\n")
        print(f"wrote {args.report}")
    return 0 if wrong == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())

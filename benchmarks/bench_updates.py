"""Benchmark: online inserts while serving, and query latency under that insert load vs idle.

A local Ray with Serve's fast path serves a 4-shard flat index of ``--codes`` random 64-bit codes with
``serve.updates`` on. In one run, per log location (local disk, then moto's S3 server on 127.0.0.1):

* ``idle``: ``--queries`` single ``POST /search`` queries one after another (k = 10);
* ``load``: ``--writers`` client threads post ``POST /videos`` batches of ``--batch`` new videos for
  ``--seconds`` (each acknowledged only once durable in the update log and pushed to the shards), while
  the same query loop runs; inserts/s = videos acknowledged / seconds.

    .venv/bin/python benchmarks/bench_updates.py --report benchmarks/results/bench_updates.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pct(v: list[float], q: float) -> float:
    """Nearest-rank quantile."""
    s = sorted(v)
    return s[min(len(s) - 1, max(0, int(np.ceil(q * len(s))) - 1))]


def _writer(base: str, w: int, writers: int, batch: int, rate: float | None, seconds: float, tag: str,
            results: object) -> None:
    """A writer process: batches of new videos for ``seconds`` (paced to ``rate`` inserts/s over all writers)."""
    import requests

    ws = requests.Session()
    wr = np.random.default_rng(100 + w)
    acked = failed = j = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        if rate is not None:  # pace: batch j of this writer is due at start + j * interval
            due = start + j * batch * writers / rate
            if time.perf_counter() < due:
                time.sleep(min(0.05, due - time.perf_counter()))
                continue
        codes = wr.integers(0, 256, size=(batch, 8), dtype=np.uint8)
        body = {"videos": [{"video_id": f"{tag}-w{w}-{j}-{i}", "code": c.tobytes().hex()} for i, c in enumerate(codes)]}
        j += 1
        r = ws.post(base + "/videos", json=body, timeout=60)
        if r.status_code == 200:
            acked += r.json()["acknowledged"]
        else:
            failed += 1
    results.put((acked, failed, time.perf_counter() - start))


def run(base: str, args: argparse.Namespace, tag: str) -> dict:
    """Idle queries, then queries under insert load; returns the numbers."""
    import requests

    rng = np.random.default_rng(1)
    s = requests.Session()

    def queries(n: int) -> list[float]:
        out = []
        for _ in range(n):
            q = rng.integers(0, 256, size=8, dtype=np.uint8).tobytes().hex()
            t0 = time.perf_counter()
            r = s.post(base + "/search", json={"code": q, "k": 10}, timeout=30)
            out.append(1000 * (time.perf_counter() - t0))
            r.raise_for_status()
        return out

    queries(50)  # warm-up
    fresh = queries(args.queries)

    def load(rate: float | None, with_queries: bool) -> tuple[int, int, float, list[float]]:
        """Writers for --seconds (``rate``: inserts/s in all, else as fast as they can), queries meanwhile.

        The writers run in their own processes -- other clients -- so their Python work does not hold this
        process's GIL while it times queries."""
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        results = ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(base, w, args.writers, args.batch, rate, args.seconds,
                                                   f"{tag}-{rate}", results)) for w in range(args.writers)]
        for pr in procs:
            pr.start()
        lat: list[float] = []
        if with_queries:
            time.sleep(2.0)  # the writers' interpreters start, then the insert load builds up
            lat = queries(args.queries)
        got = [results.get(timeout=args.seconds + 120) for _ in procs]
        for pr in procs:
            pr.join()
        seconds = max(g[2] for g in got)
        return sum(g[0] for g in got), sum(g[1] for g in got), seconds, lat

    inserted, failed, seconds, _ = load(None, False)
    # idle and loaded on the same index: the saturated phase above grew it (a bigger delta costs every search
    # a little), so the idle baseline is taken now, right before the paced phase, and again right after it
    time.sleep(1.0)
    idle = queries(args.queries)
    paced, paced_failed, paced_seconds, loaded = load(args.rate, True)
    time.sleep(1.0)
    idle_after = queries(args.queries)
    return {"tag": tag, "fresh_p50": pct(fresh, .5), "idle_p50": pct(idle, .5), "idle_p99": pct(idle, .99),
            "idle_after_p50": pct(idle_after, .5), "load_p50": pct(loaded, .5),
            "load_p99": pct(loaded, .99), "inserts": inserted, "seconds": seconds, "inserts_per_s": inserted / seconds,
            "failures": failed + paced_failed, "paced_per_s": paced / paced_seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--work", default="bench-work/updates")
    p.add_argument("--codes", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--writers", type=int, default=2)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=500.0, help="inserts/s of the latency-under-load phase")
    p.add_argument("--report", default=None)
    args = p.parse_args(argv)

    import shutil

    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import deploy, serve_cluster_env, service_url
    from vhindex.config import ServeSection
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    work = Path(args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with CodesDatasetWriter(str(work / "codes"), CodesDatasetMeta(bits=64, model="itq", model_version="v"),
                            row_group_size=10_000) as w:
        w.write([f"v{i:07d}" for i in range(args.codes)], rng.integers(0, 256, size=(args.codes, 8), dtype=np.uint8))
    build_sharded_index(str(work / "codes"), str(work / "index"), 4, spec=IndexSpec("flat", {}))

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    import subprocess

    s3_port = free_ports(1)[0]
    # moto's server in its own process: inside this one it would share the GIL with the client being timed
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import boto3
    import requests

    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"http://127.0.0.1:{s3_port}", timeout=2)
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", region_name="us-east-1").create_bucket(Bucket="log")
    s3_options = {"key": "bench", "secret": "bench", "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{s3_port}",
                                                                      "region_name": "us-east-1"}}
    port, direct_port = free_ports(2)
    base_settings = dict(index=str(work / "index"), port=port, direct_port=direct_port, shard_cpus=0.1,
                         router_cpus=0.1, updates=True, max_batch=1000)
    started = connect_ray(env=serve_cluster_env(ServeSection(**base_settings)))
    results = []
    try:
        for tag, extra in (("local disk", {"update_log": str(work / "log")}),
                           ("S3 (moto server)", {"update_log": "s3://log/updates", "storage_options": s3_options})):
            settings = ServeSection(**base_settings, **extra, app_name="bench-updates")
            deploy(settings)
            results.append(run(service_url(settings), args, tag.split()[0]))
            results[-1]["tag"] = tag
    finally:
        from ray import serve

        serve.shutdown()
        if started:
            import ray

            ray.shutdown()
        moto.terminate()
        moto.wait(30)
    lines = [f"# Online inserts while serving ({dt.date.today().isoformat()})", "",
             f"`.venv/bin/python benchmarks/bench_updates.py --writers {args.writers} --batch {args.batch} --seconds "
             f"{args.seconds:g} --rate {args.rate:g}`", "",
             f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; index "
             f"{args.codes:,} x 64-bit codes, 4 flat shards, local Ray, fast path, client on the same machine. "
             f"Throughput: {args.writers} writer processes posting batches of {args.batch} new videos as fast as they "
             f"can for {args.seconds:g} s (acknowledged = durable in the log and pushed to the shards). Latency, on "
             f"the index as the saturated phase left it (its delta holds those inserts): {args.queries} single "
             f"queries (k = 10) idle, then {args.queries} while the writers insert {args.rate:g} videos/s, then "
             f"{args.queries} idle again; the ratio is under load / idle before. `fresh`: p50 on the index before any "
             "insert.", "",
             "| update log | inserts/s acknowledged durable (saturated) | failed batches | paced load | query p50 fresh / "
             "idle / under load / idle after (ms) | p99 idle / under load (ms) | p50 ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['tag']} | **{r['inserts_per_s']:,.0f}** ({r['inserts']:,} in {r['seconds']:.1f} s) | "
                     f"{r['failures']} | {r['paced_per_s']:,.0f}/s | {r['fresh_p50']:.1f} / {r['idle_p50']:.1f} / "
                     f"{r['load_p50']:.1f} / {r['idle_after_p50']:.1f} | "
                     f"{r['idle_p99']:.1f} / {r['load_p99']:.1f} | **{r['load_p50'] / r['idle_p50']:.2f}x** |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the product path of the anchor graph at YFCC scale: Parquet embeddings -> Dask -> graph.

Writes ``--n`` seeded blob embeddings (the data of ``bench_kmeans.py``: ``--k`` true centres
~ N(0, I_d), points = centre + 0.5 N(0, I_d); mean squared distance to the true centres = d / 4)
as an embeddings dataset, then runs :func:`cluster.graph.build_graph` on a local Dask cluster
(``--workers`` processes x 1 thread) and reports the phase timings, the k-means objective
(inertia / N), and the peak RSS of the driver and of every Dask worker (sampled with psutil).

    python benchmarks/bench_build_graph.py                      # 700,000 x 256, k = 2,000
    python benchmarks/bench_build_graph.py --n 50000 --k 200    # quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kmeans import make_data  # noqa: E402

from cluster.graph import build_graph  # noqa: E402
from vhindex.data import EmbeddingDatasetMeta, EmbeddingDatasetWriter  # noqa: E402


class _PeakSampler(threading.Thread):
    """Samples the RSS of this process's children (the Dask workers) every 0.2 s."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_children_gb = 0.0
        self.peak_total_gb = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.is_set():
            try:
                kids = me.children(recursive=True)
                rss_kids = sum(p.memory_info().rss for p in kids if p.is_running())
                peak_kid = max((p.memory_info().rss for p in kids), default=0)
            except psutil.Error:
                continue
            self.peak_children_gb = max(self.peak_children_gb, peak_kid / 2**30)
            self.peak_total_gb = max(self.peak_total_gb, (rss_kids + me.memory_info().rss) / 2**30)
            time.sleep(0.2)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=700_000)
    p.add_argument("--k", type=int, default=2_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--a", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows-per-chunk", type=int, default=50_000)
    p.add_argument("--out", default=None, help="work folder (default: a temporary folder, deleted afterwards)")
    args = p.parse_args(argv)

    work = args.out or tempfile.mkdtemp(prefix="vhindex-bench-graph-")
    emb_url, graph_url = os.path.join(work, "embeddings"), os.path.join(work, "graph")
    try:
        t0 = time.perf_counter()
        x, _ = make_data(args.n, args.k, args.d, args.seed)
        meta = EmbeddingDatasetMeta(dim=args.d, source="bench-blobs")
        with EmbeddingDatasetWriter(emb_url, meta, rows_per_file=100_000, row_group_size=10_000, overwrite=True) as w:
            for lo in range(0, args.n, 100_000):
                w.write([f"v{i:07d}" for i in range(lo, min(args.n, lo + 100_000))], x[lo : lo + 100_000])
        write_s = time.perf_counter() - t0
        del x
        driver_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sampler = _PeakSampler()
        sampler.start()
        t0 = time.perf_counter()
        manifest = build_graph(emb_url, graph_url, k=args.k, a=args.a, seed=args.seed, n_workers=args.workers,
                               threads_per_worker=1, rows_per_chunk=args.rows_per_chunk, overwrite=True)
        total_s = time.perf_counter() - t0
        sampler.stop()
        driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)

    timings = manifest.timings
    print("### bench_build_graph\n")
    print(f"- date: {dt.datetime.now().isoformat(timespec='seconds')}; machine: {platform.machine()}, "
          f"{os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.2f}")
    print(f"- data: N={args.n:,} x d={args.d} float32 embeddings (Parquet, written in {write_s:.1f} s), "
          f"k={args.k:,}, a={args.a}, rule=bth, seed={args.seed}; Dask LocalCluster {args.workers} workers x 1 thread, "
          f"{manifest.num_chunks} chunks of <= {args.rows_per_chunk:,} rows")
    print(f"- reference objective (true centres): {args.d / 4:.3f}\n")
    print("| phase | seconds |\n| --- | ---: |")
    for name in ("connect", "kmeans", "nearest", "graph", "write"):
        if name in timings:
            print(f"| {name} | {timings[name]:.1f} |")
    print(f"| **total build_graph** | **{total_s:.1f}** |\n")
    print(f"- k-means objective (inertia / N): {manifest.inertia / manifest.num_videos:.3f} after "
          f"{len(manifest.inertia_history)} passes")
    print(f"- peak RSS: driver {driver_peak:.0f} MiB (before build {driver_before:.0f} MiB); largest worker "
          f"{sampler.peak_children_gb:.2f} GiB; driver + workers together {sampler.peak_total_gb:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

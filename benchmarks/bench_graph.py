"""Benchmark the anchor graph: nearest anchors, graph construction and pair sampling at FCVID-x15 scale.

Data (as in the k-means benchmark of environment.md section 5): ``--centres`` true centres
~ N(0, 1)^d, points = centre + 0.5 N(0, 1), generated per block, float32. Anchors are a seeded
random subset of the points (their quality does not matter for timing).

Timed stages:

(a) the 5 nearest anchors of every video (faiss ``IndexFlatL2``, chunked, ``--threads`` threads);
(b) ``AnchorGraph.from_neighbors`` (bandwidths, softmax weights, column sums, inverted lists);
(c) ``PairSampler.sample`` throughput over ``--items`` random items in batches of ``--batch``, for
    each of ``--backends`` (``numba``: compiled attempt loop, once per ``--sampler-threads`` value,
    its one-off JIT compile timed separately by ``PairSampler.warmup()`` and excluded from the
    throughput -- the first numba sampler pays it, later ones find the kernels compiled;
    ``numpy``: vectorised, one thread). Every configuration samples the same items.

Usage::

    python benchmarks/bench_graph.py                         # 700,000 x 256, 2,000 anchors
    python benchmarks/bench_graph.py --n 100000 --items 300000

Prints a markdown block with timings, peak RSS (``ru_maxrss``) and machine info.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import sys
import time

import numpy as np


def _rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


def _make_data(n: int, d: int, centres: int, seed: int, block: int = 50_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32)
    x = np.empty((n, d), np.float32)
    for start in range(0, n, block):
        m = min(block, n - start)
        x[start : start + m] = c[rng.integers(0, centres, m)]
        x[start : start + m] += 0.5 * rng.standard_normal((m, d), dtype=np.float32)
    return x


def _numba_version() -> str:
    try:
        import numba
    except ImportError:
        return "absent"
    return numba.__version__


def _graph_nbytes(g) -> int:
    total = 0
    for lv in g.levels.values():
        for a in (lv.ids, lv.z, lv.w, lv.colsum, lv.indptr, lv.members):
            total += 0 if a is None else a.nbytes
    arrays, _ = g.to_arrays()
    total += sum(a.nbytes for a in arrays.values())
    total += sum(a.nbytes for a in g._exact_share.values())
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=700_000, help="videos")
    p.add_argument("--d", type=int, default=256, help="embedding dimension")
    p.add_argument("--k", type=int, default=2_000, help="anchors")
    p.add_argument("--centres", type=int, default=2_000, help="true centres of the synthetic data")
    p.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads")
    p.add_argument("--chunk", type=int, default=65_536, help="rows per faiss search call")
    p.add_argument("--items", type=int, default=2_000_000, help="items to sample partners for")
    p.add_argument("--batch", type=int, default=65_536, help="sampler batch size")
    p.add_argument("--backends", default="numba,numpy", help="comma-separated PairSampler backends to time")
    p.add_argument("--sampler-threads", default="1,2", help="comma-separated thread counts for the numba backend")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import faiss

    from vhindex.graph.anchor_graph import AnchorGraph
    from vhindex.graph.pairs import PairSampler

    faiss.omp_set_num_threads(args.threads)
    rss0 = _rss_mb()
    t = time.perf_counter()
    x = _make_data(args.n, args.d, args.centres, args.seed)
    anchors = x[np.random.default_rng(args.seed + 1).choice(args.n, args.k, replace=False)].copy()
    t_data = time.perf_counter() - t
    rss_data = _current_rss_mb()

    # (a) nearest anchors
    t = time.perf_counter()
    index = faiss.IndexFlatL2(args.d)
    index.add(anchors)
    ids = np.empty((args.n, 5), np.int64)
    sq = np.empty((args.n, 5), np.float32)
    for start in range(0, args.n, args.chunk):
        dd, ii = index.search(x[start : start + args.chunk], 5)
        sq[start : start + len(dd)] = dd
        ids[start : start + len(ii)] = ii
    t_nn = time.perf_counter() - t
    rss_nn = _rss_mb()

    # (b) graph
    t = time.perf_counter()
    g = AnchorGraph.from_neighbors(ids, sq, args.k)
    t_graph = time.perf_counter() - t
    rss_graph = _rss_mb()
    del x

    # (c) sampler, per backend (same items for each)
    runs = []
    configs = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        threads = [int(v) for v in args.sampler_threads.split(",")] if backend == "numba" else [1]
        configs += [(backend, th) for th in threads]
    for backend, threads in configs:
        t = time.perf_counter()
        sampler = PairSampler(g, seed=args.seed, backend=backend, threads=threads)
        t_init = time.perf_counter() - t
        t_compile = sampler.warmup()
        rng = np.random.default_rng(args.seed + 2)
        done = 0
        pos = 0
        t = time.perf_counter()
        while done < args.items:
            b = min(args.batch, args.items - done)
            partners, s = sampler.sample(rng.integers(0, args.n, b))
            pos += int((s > 0).sum())
            done += b
        t_pairs = time.perf_counter() - t
        runs.append((sampler, t_init, t_compile, t_pairs, pos))
    rss_end = _rss_mb()

    lens3 = np.diff(g.levels[3].indptr)
    lens5 = np.diff(g.levels[5].indptr)
    print(f"### bench_graph ({dt.datetime.now().isoformat(timespec='seconds')})\n")
    print(f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
          f"numba {_numba_version()}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    print(f"- data: N={args.n:,} x d={args.d}, k={args.k:,} anchors (random subset), {args.centres:,} true centres; "
          f"generated in {t_data:.1f} s")
    print("\n| stage | time | note |\n|---|---|---|")
    print(f"| (a) 5 nearest anchors, faiss IndexFlatL2, {args.threads} threads | {t_nn:.2f} s | chunks of {args.chunk:,} |")
    print(f"| (b) AnchorGraph.from_neighbors | {t_graph:.2f} s | sigma_s = "
          + ", ".join(f"{g.levels[s].bandwidth:.3f}" for s in (3, 4, 5)) + " |")
    print(f"| (a)+(b) | **{t_nn + t_graph:.2f} s** | goal <= 60 s |")
    for sampler, t_init, t_compile, t_pairs, _ in runs:
        print(f"| (c) PairSampler backend={sampler.backend}, threads={sampler.threads}, {args.items:,} items, batches of {args.batch:,} | "
              f"{t_pairs:.2f} s | **{args.items / t_pairs:,.0f} pairs/s** (goal >= 1,000,000); setup {t_init:.2f} s, "
              f"JIT compile {t_compile:.2f} s (excluded) |")
    print()
    for sampler, _, _, _, pos in runs:
        st = sampler.stats
        print(f"- sampler {sampler.backend}/{sampler.threads} thread(s): {pos / args.items:.4f} positives; "
              f"{st['attempts'] / args.items:.2f} attempts per item; {st['scans']:,} exact scans; "
              f"{st['fallback']:,} tag-0 fallbacks; {st['no_positive']:,} without positive"
              + (f"; packed kernel arrays {(sampler._fast.cids.nbytes + sampler._fast.czw.nbytes) / 2**20:.0f} MiB"
                 if sampler._fast is not None else ""))
    print(f"- inverted lists: s=3 mean {lens3.mean():.0f} (max {lens3.max():,}, empty {int((lens3 == 0).sum())}); "
          f"s=5 mean {lens5.mean():.0f} (max {lens5.max():,}, empty {int((lens5 == 0).sum())})")
    print(f"- graph arrays: {_graph_nbytes(g) / 2**20:.0f} MiB ({_graph_nbytes(g) / args.n:.0f} B/video)")
    print(f"- RSS MiB: start {rss0:.0f}; after data {rss_data:.0f} (embeddings {args.n * args.d * 4 / 2**20:.0f}); "
          f"peak after (a) {rss_nn:.0f}; peak after (b) {rss_graph:.0f}; peak at end {rss_end:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

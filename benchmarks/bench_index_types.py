"""Benchmark: shard index types (flat / hnsw / ivf / multihash) at 700,000 x 64-bit codes.

Data: seeded clustered codes -- ``--centers`` random 64-bit centres, every code = a uniformly drawn
centre with each bit flipped with probability ``--flip``; queries are fresh draws from the same
clusters (not database members). For each type and thread count one :class:`ShardIndex` holds all
codes; the table reports

* build: seconds for ``add`` + building the faiss structure (HNSW insertion, IVF k-means + add),
* batch ms/q: wall time of one ``search(queries, k)`` over ``--nq`` queries divided by ``--nq``,
* single ms/q: median over ``--single`` one-query calls (the service's unbatched path),
* recall@k: tie-aware (a hit counts when its distance <= the true k-th distance; the distances
  returned by every type are checked to be the true Hamming distances),
* masked ms/q: category-mask search (exact, one category, the masked index already cached).

Timings on a shared 2-core VM are indicative only.

Examples:
    python benchmarks/bench_index_types.py                               # full size, 1 and 2 threads
    python benchmarks/bench_index_types.py --n 100000 --types flat,hnsw --threads 1
"""

# ruff: noqa: E741  -- D, I are faiss's names for (distances, ids); kept on purpose
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from vhindex.index import IndexSpec, MaskTable, ShardIndex
from vhindex.index.codes import hamming_distances

SPECS = {
    "flat": IndexSpec("flat"),
    "hnsw": IndexSpec("hnsw", {"M": 16, "ef_construction": 40, "ef_search": 128}),
    "ivf": IndexSpec("ivf", {"nprobe": 32}),
    "multihash": IndexSpec("multihash", {"nhash": 4, "b": 16, "nflip": 2}),
}


def make_codes(n: int, bits: int, centers: np.ndarray, flip: float, seed: int, block: int = 100_000) -> np.ndarray:
    """Packed clustered codes, generated seeded per block."""
    out = np.empty((n, bits // 8), dtype=np.uint8)
    for b, lo in enumerate(range(0, n, block)):
        hi = min(n, lo + block)
        rng = np.random.default_rng([seed, b])
        base = centers[rng.integers(0, len(centers), hi - lo)]
        out[lo:hi] = np.packbits(base ^ (rng.random(base.shape) < flip), axis=1, bitorder="big")
    return out


def true_kth(queries: np.ndarray, db: np.ndarray, k: int, block: int = 50) -> np.ndarray:
    """The true k-th smallest distance per query (numpy, blocked)."""
    out = np.empty(len(queries), dtype=np.int32)
    for lo in range(0, len(queries), block):
        d = hamming_distances(queries[lo:lo + block], db)
        out[lo:lo + block] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=700_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--centers", type=int, default=2000)
    p.add_argument("--flip", type=float, default=0.15)
    p.add_argument("--nq", type=int, default=1000)
    p.add_argument("--single", type=int, default=50)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--types", default="flat,hnsw,ivf,multihash")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    centers = rng.integers(0, 2, (args.centers, args.bits), dtype=np.uint8)
    t0 = time.perf_counter()
    db = make_codes(args.n, args.bits, centers, args.flip, args.seed + 1)
    queries = make_codes(args.nq, args.bits, centers, args.flip, args.seed + 2)
    ids = [f"v{i}" for i in range(args.n)]
    pos = {v: i for i, v in enumerate(ids)}
    kth = true_kth(queries, db, args.k)
    print(f"data: {args.n} x {args.bits} bits, {args.centers} centres, flip {args.flip}, nq {args.nq}, "
          f"mean true {args.k}-th distance {kth.mean():.1f} ({time.perf_counter() - t0:.1f} s to generate)")
    table = MaskTable(np.random.default_rng(args.seed + 3).random((4, args.bits)) < 0.6)

    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        for name in args.types.split(","):
            spec = SPECS[name]
            shard = ShardIndex(args.bits, spec, num_threads=threads)
            t = time.perf_counter()
            shard.add(ids, db)
            shard.search(queries[:1], 1)  # builds the faiss structure of lazy types
            build = time.perf_counter() - t
            t = time.perf_counter()
            D, I = shard.search(queries, args.k)
            batch = (time.perf_counter() - t) / args.nq * 1e3
            singles = []
            for q in range(min(args.single, args.nq)):
                t = time.perf_counter()
                shard.search(queries[q:q + 1], args.k)
                singles.append((time.perf_counter() - t) * 1e3)
            # honesty: returned distances are true distances
            r, c = np.nonzero(I != None)  # noqa: E711
            sample = np.random.default_rng(0).choice(len(r), size=min(2000, len(r)), replace=False)
            for j in sample:
                x = db[pos[I[r[j], c[j]]]:pos[I[r[j], c[j]]] + 1]
                assert hamming_distances(queries[r[j]:r[j] + 1], x)[0, 0] == D[r[j], c[j]], "distance mismatch"
            recall = float(np.minimum((D <= kth[:, None]).sum(axis=1), args.k).mean() / args.k)
            cats = np.zeros(args.nq, dtype=np.int64)
            shard.search(queries[:1], args.k, categories=cats[:1], mask_table=table)  # warm the mask cache
            t = time.perf_counter()
            shard.search(queries, args.k, categories=cats, mask_table=table)
            masked = (time.perf_counter() - t) / args.nq * 1e3
            rows.append((name, threads, build, batch, statistics.median(singles), recall, masked))
            print(f"  {name:9s} threads={threads} build {build:7.2f} s  batch {batch:7.4f} ms/q  "
                  f"single {statistics.median(singles):7.3f} ms/q  recall@{args.k} {recall:.3f}  "
                  f"masked {masked:7.4f} ms/q", flush=True)
            del shard

    print()
    print(f"| type | threads | build s | batch ms/q | single ms/q | recall@{args.k} | masked batch ms/q |")
    print("|---|---|---|---|---|---|---|")
    for name, threads, build, batch, single, recall, masked in rows:
        print(f"| {name} | {threads} | {build:.2f} | {batch:.4f} | {single:.3f} | {recall:.3f} | {masked:.4f} |")


if __name__ == "__main__":
    main()

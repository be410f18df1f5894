"""Benchmark: category-mask search (DVHCM eq. 8) against the plain exact search, on one thread.

A database of ``--n`` random codes, a DVHCM-shaped mask table (``--categories`` rows keeping ``--ratio`` of the
bits), ``--queries`` queries whose categories are drawn over the table. Timed side by side in one process:

* ``plain``: faiss ``IndexBinaryFlat`` over the database (what an unmasked query costs);
* ``masked, cold``: :func:`vhindex.index.mask.masked_search` with an empty cache -- every category met for
  the first time masks the database once (one vectorised AND) and builds its masked flat index;
* ``masked, warm``: the same queries again with the per-category indexes cached (the service's steady state
  when the categories fit the LRU, ``MaskedIndexCache(max_size)``).

Every masked answer is checked against :func:`vhindex.index.mask.masked_distances` on a sample of queries.

    .venv/bin/python benchmarks/bench_masked_search.py --report benchmarks/results/bench_masked_search.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vhindex.index.mask import MaskedIndexCache, MaskTable, masked_distances, masked_search  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--categories", type=int, default=10)
    p.add_argument("--ratio", type=float, default=0.7)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--report", default="")
    args = p.parse_args(argv)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    db = rng.integers(0, 256, size=(args.n, args.bits // 8), dtype=np.uint8)
    q = rng.integers(0, 256, size=(args.queries, args.bits // 8), dtype=np.uint8)
    cats = rng.integers(0, args.categories, size=args.queries)
    table = MaskTable.from_classifier_weights(rng.standard_normal((args.categories, args.bits)), args.ratio)

    flat = faiss.IndexBinaryFlat(args.bits)
    flat.add(db)
    t0 = time.perf_counter()
    flat.search(q, args.k)
    plain = time.perf_counter() - t0
    cache = MaskedIndexCache(max_size=args.categories)
    t0 = time.perf_counter()
    masked_search(db, q, cats, args.k, table, cache=cache, num_threads=1)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    got_d, _ = masked_search(db, q, cats, args.k, table, cache=cache, num_threads=1)
    warm = time.perf_counter() - t0
    sample = np.arange(0, args.queries, max(1, args.queries // 20))
    want = np.sort(masked_distances(q[sample], db, cats[sample], table), axis=1)[:, :args.k]
    assert np.array_equal(got_d[sample], want), "masked search differs from the brute-force masked distances"

    per_q = {name: 1000 * s / args.queries for name, s in (("plain", plain), ("cold", cold), ("warm", warm))}
    lines = [
        f"# Category-mask search ({dt.datetime.now().isoformat(timespec='seconds')})", "",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, 1 faiss thread; command: "
        f"`python benchmarks/bench_masked_search.py {' '.join(argv or sys.argv[1:])}`", "",
        f"{args.n:,} random {args.bits}-bit codes, {args.queries} queries over {args.categories} categories, mask ratio "
        f"{args.ratio} ({table.kept_bits().tolist()[0]} of {args.bits} bits kept), top-{args.k}; masked answers "
        "checked against the brute-force masked distances.", "",
        "| search | ms / query | vs plain |", "|---|---:|---:|",
        f"| plain (faiss IndexBinaryFlat) | {per_q['plain']:.3f} | 1.00 |",
        f"| masked, cold cache (each category masks the database once) | {per_q['cold']:.3f} | "
        f"{per_q['cold'] / per_q['plain']:.2f} |",
        f"| masked, warm cache | {per_q['warm']:.3f} | {per_q['warm'] / per_q['plain']:.2f} |", ""]
    text = "\n".join(lines)
    print(text)
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

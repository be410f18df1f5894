"""Benchmark the evaluation: mAP@K and the PR curve on FCVID-sized seeded synthetic codes.

FCVID protocol shape by default: 45,600 queries = the 45,600-video database (the query is not
removed), 64-bit codes, 239 classes. Codes are class prototypes with random bit flips, so rankings
have realistic structure and ties; labels are one class per video plus sometimes a second one.

Usage::

    python benchmarks/bench_eval.py                    # full FCVID size
    python benchmarks/bench_eval.py --n-db 5000 --n-query 5000 --bits 16

Prints a markdown block with timings, peak RSS (``ru_maxrss``) before and after, and machine info.
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


def make_data(n_db: int, n_query: int, bits: int, classes: int, flip: float, seed: int):
    """Seeded FCVID-like data: packed codes and multi-hot labels; queries are the first DB rows."""
    rng = np.random.default_rng(seed)
    primary = rng.integers(0, classes, n_db)
    labels = np.zeros((n_db, classes), dtype=bool)
    labels[np.arange(n_db), primary] = True
    second = rng.random(n_db) < 0.1
    labels[np.flatnonzero(second), rng.integers(0, classes, int(second.sum()))] = True
    protos = rng.random((classes, bits)) < 0.5
    bits_arr = protos[primary] ^ (rng.random((n_db, bits)) < flip)
    db = np.packbits(bits_arr, axis=1)
    if n_query > n_db:
        raise SystemExit(f"--n-query {n_query} > --n-db {n_db}: queries are taken from the database")
    return db, db[:n_query], labels, labels[:n_query]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-query", type=int, default=45_600)
    p.add_argument("--n-db", type=int, default=45_600)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--classes", type=int, default=239)
    p.add_argument("--flip", type=float, default=0.25, help="bit-flip probability around the class prototype")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol", default="paper", choices=("paper", "standard"))
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40, 60, 80, 100])
    p.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: from the budget)")
    p.add_argument("--memory-budget-mb", type=int, default=256)
    p.add_argument("--skip-pr", action="store_true", help="do not time the PR curve")
    args = p.parse_args(argv)

    from vhindex.eval import map_at_k, pr_curve
    from vhindex.eval.topk import _HAVE_FAISS_HAMMINGS, auto_chunk_size

    budget = args.memory_budget_mb * 2**20
    db, q, db_l, q_l = make_data(args.n_db, args.n_query, args.bits, args.classes, args.flip, args.seed)
    base_peak, base_now = _rss_mb(), _current_rss_mb()

    t0 = time.perf_counter()
    maps = map_at_k(
        db, q, db_l, q_l, ks=args.ks, protocol=args.protocol, chunk_size=args.chunk_size, memory_budget=budget
    )
    t_map = time.perf_counter() - t0
    peak_map = _rss_mb()

    t_pr = peak_pr = None
    if not args.skip_pr:
        t0 = time.perf_counter()
        pr = pr_curve(db, q, db_l, q_l, chunk_size=args.chunk_size, memory_budget=budget)
        t_pr = time.perf_counter() - t0
        peak_pr = _rss_mb()

    chunk = args.chunk_size or auto_chunk_size(args.n_query, args.n_db, budget)
    print("### vhindex eval benchmark\n")
    print(f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"os.cpu_count()={os.cpu_count()}, usable cpus={len(os.sched_getaffinity(0))}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"- python {platform.python_version()}, numpy {np.__version__}, "
        f"distances: {'faiss.hammings' if _HAVE_FAISS_HAMMINGS else 'numpy bitwise_count'}"
    )
    print(
        f"- data: {args.n_query} queries (inside the DB) vs {args.n_db} database items, {args.bits} bits, "
        f"{args.classes} classes, seed {args.seed}; memory budget {args.memory_budget_mb} MiB "
        f"(map chunk {chunk} queries)"
    )
    print()
    print("| step | seconds | peak RSS (MiB) |")
    print("| --- | ---: | ---: |")
    print(f"| baseline (data in memory; current RSS {base_now:.0f}) | - | {base_peak:.0f} |")
    print(f"| map_at_k ({args.protocol}, ks {','.join(map(str, args.ks))}) | {t_map:.2f} | {peak_map:.0f} |")
    if t_pr is not None:
        print(f"| pr_curve (radius 0..{args.bits}) | {t_pr:.2f} | {peak_pr:.0f} |")
    print()
    print("| K | " + " | ".join(str(k) for k in maps) + " |")
    print("| --- |" + " ---: |" * len(maps))
    print("| mAP@K | " + " | ".join(f"{v:.4f}" for v in maps.values()) + " |")
    if t_pr is not None:
        r2 = min(2, args.bits)
        print(f"\nPR at radius {r2}: precision {pr.precision[r2]:.4f}, recall {pr.recall[r2]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

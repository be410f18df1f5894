"""Benchmark: stream a synthetic frame-feature dataset to storage, then validate it.

Reports the time of each step, throughput, bytes written, and the resident memory before the
work and at its peak (``resource.getrusage(...).ru_maxrss``). The generator, the writer and the
validator all stream, so peak memory must stay far below the dataset size (goal: <= 2 GB for
``bench-700k``: 700,000 x 25 x 256 float16, about 9 GB of features).

Examples:
    python benchmarks/bench_synth.py --preset bench-700k             # temp dir under /tmp, deleted after
    python benchmarks/bench_synth.py --preset demo --split database --num-videos 20000
    python benchmarks/bench_synth.py --out s3://bucket/synth --keep  # any fsspec URL
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time

from vhindex import fs as vfs
from vhindex.data.synth import SPLIT_CODES, SYNTH_PRESETS, write_synthetic
from vhindex.data.validate import validate_dataset


def _rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench-700k", choices=sorted(SYNTH_PRESETS))
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_CODES))
    parser.add_argument("--num-videos", type=int, default=None, help="override the split size of the preset")
    parser.add_argument("--out", default=None, help="output URL (default: a temporary folder under /tmp, deleted afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the output (a temporary folder is otherwise deleted)")
    parser.add_argument("--rows-per-file", type=int, default=50_000)
    parser.add_argument("--row-group-size", type=int, default=1_000)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--no-validate", action="store_true", help="skip validate_dataset")
    parser.add_argument("--no-check-values", action="store_true", help="validate structure only (no value scan)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    spec = SYNTH_PRESETS[args.preset]
    if args.num_videos is not None:
        spec = dataclasses.replace(spec, **{args.split: args.num_videos})
    n = spec.split_size(args.split)
    tmp_dir = None
    out = args.out
    if out is None:
        tmp_dir = tempfile.mkdtemp(prefix="vhindex-bench-synth-", dir="/tmp")
        out = tmp_dir
    raw_gb = n * spec.num_frames * spec.feature_dim * (2 if spec.dtype == "float16" else 4) / 1e9
    report: dict = {
        "preset": args.preset, "split": args.split, "videos": n, "num_frames": spec.num_frames,
        "feature_dim": spec.feature_dim, "dtype": spec.dtype, "raw_feature_gb": round(raw_gb, 2),
        "out": out, "rows_per_file": args.rows_per_file, "row_group_size": args.row_group_size,
        "chunk_size": args.chunk_size, "rss_before_mb": round(_rss_mb(), 1),
    }
    print(f"writing {n:,} videos x {spec.num_frames} x {spec.feature_dim} {spec.dtype} "
          f"(~{raw_gb:.2f} GB raw) to {out}", flush=True)
    try:
        t0 = time.perf_counter()
        write_synthetic(
            spec, out, splits=[args.split], rows_per_file=args.rows_per_file,
            row_group_size=args.row_group_size, chunk_size=args.chunk_size, progress=args.progress,
        )
        t_write = time.perf_counter() - t0
        fs, root = vfs.url_to_fs(out)
        split_path = vfs.join(fs, root, args.split)
        written = sum(fs.sizes(fs.find(split_path)))
        report.update({
            "write_s": round(t_write, 1), "write_videos_per_s": round(n / t_write),
            "write_mb_per_s": round(written / 2**20 / t_write, 1), "bytes_on_disk_gb": round(written / 1e9, 2),
            "peak_rss_after_write_mb": round(_peak_rss_mb(), 1),
        })
        if not args.no_validate:
            t0 = time.perf_counter()
            result = validate_dataset(
                vfs.unstrip(fs, split_path), expected_num_frames=spec.num_frames,
                expected_feature_dim=spec.feature_dim, check_values=not args.no_check_values,
            )
            t_val = time.perf_counter() - t0
            report.update({"validate_s": round(t_val, 1), "validate_videos_per_s": round(n / t_val),
                           "validation": str(result)[:300]})
        report["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        report["peak_rss_ok_2gb"] = report["peak_rss_mb"] <= 2048
    finally:
        if tmp_dir is not None and not args.keep:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            report["deleted_output"] = True
    print(json.dumps(report, indent=2), flush=True)
    return 0 if report.get("peak_rss_ok_2gb") else 1


if __name__ == "__main__":
    sys.exit(main())

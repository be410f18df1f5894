"""Real-data retrieval quality: every method x code length on both real-data benchmarks.

``python jobs/bench_quality.py --config configs/bench/quality.yaml [key=value ...]`` -- the same as
``vhindex bench quality``; see :mod:`vhindex.benchdata.quality`. Needs the benchmark sources:
``vhindex bench sources`` (or ``make bench-sources``) first.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (2: configuration error)."""
    from vhindex.benchdata.quality import run_quality_bench
    from vhindex.config import load_job_config

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_job_config(argv, default_config="configs/bench/quality.yaml",
                          description=(__doc__ or "").splitlines()[0], job="bench_quality")
    try:
        run_quality_bench(cfg, command="python jobs/bench_quality.py " + " ".join(argv))
    except (ValueError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

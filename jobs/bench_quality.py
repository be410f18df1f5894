"""Real-data retrieval quality: every method x code length on both real-data benchmarks.

``python jobs/bench_quality.py --config configs/bench/quality.yaml [key=value ...]`` -- the same as
``vhindex bench quality``; needs the benchmark sources (``vhindex bench sources`` or ``make bench-sources``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (2: configuration error)."""
    from vhindex.app.jobs import bench_quality_main

    return bench_quality_main(argv, description=(__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())

"""Encode a frame-feature dataset to codes with a Ray Data actor pool: ``python jobs/encode.py --config ...``.

Runs under ``ray job submit --working-dir . -- python jobs/encode.py --config configs/encode/example.yaml ...``
(on the job's cluster) or as plain ``python jobs/encode.py ...`` (a local Ray on 127.0.0.1, or in-process
with ``encode.pipeline.engine=local``). Sharded and resumable: re-running the same command skips
finished shards; see :mod:`vhindex.pipelines`.

Exit codes: 0 complete and per-video errors within ``encode.pipeline.max_error_fraction``;
1 failed shards (re-run to retry them) or too many per-video errors; 2 configuration error
(missing or conflicting URLs, an output folder holding another job's output).
"""

from __future__ import annotations

import json
import logging
import sys

log = logging.getLogger("jobs.encode")


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    from vhindex.config import load_job_config
    from vhindex.pipelines.jobs import run_from_config

    cfg = load_job_config(argv, default_config="configs/encode/example.yaml", description=(__doc__ or "").splitlines()[0],
                          job="encode")
    try:
        report = run_from_config("encode", cfg, stream=sys.stdout)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print("REPORT " + json.dumps(report.to_dict(), sort_keys=True), flush=True)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())

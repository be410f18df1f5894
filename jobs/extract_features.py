"""Extract frame features from videos with a Ray Data actor pool: ``python jobs/extract_features.py --config ...``.

Runs under ``ray job submit --working-dir . -- python jobs/extract_features.py --config configs/extract/example.yaml ...``
(on the job's cluster) or as plain ``python jobs/extract_features.py ...`` (a local Ray on 127.0.0.1, or in-process
with ``extract.pipeline.engine=local``). Sharded and resumable: re-running the same command skips
finished shards; see :mod:`vhindex.pipelines`.

Exit codes: 0 complete and per-video errors within ``extract.pipeline.max_error_fraction``;
1 failed shards (re-run to retry them) or too many per-video errors; 2 configuration error
(missing or conflicting URLs, an output folder holding another job's output).
"""

from __future__ import annotations

import json
import logging
import sys

log = logging.getLogger("jobs.extract")


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    from vhindex.config import load_job_config
    from vhindex.pipelines.jobs import run_from_config

    cfg = load_job_config(argv, default_config="configs/extract/example.yaml", description=(__doc__ or "").splitlines()[0],
                          job="extract")
    try:
        report = run_from_config("extract", cfg, stream=sys.stdout)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print("REPORT " + json.dumps(report.to_dict(), sort_keys=True), flush=True)
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())

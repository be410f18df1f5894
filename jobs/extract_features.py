"""Extract frame features from videos with a Ray Data actor pool: ``python jobs/extract_features.py --config ...``.

Runs under ``ray job submit --working-dir . -- python jobs/extract_features.py --config configs/extract/example.yaml ...``
(on the job's cluster) or as plain ``python jobs/extract_features.py ...`` (a local Ray on 127.0.0.1, or in-process
with ``extract.pipeline.engine=local``). Sharded and resumable: re-running the same command skips
finished shards; see :mod:`vhindex.pipelines`.

Exit codes: see :func:`vhindex.app.jobs.pipeline_job_main`.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    from vhindex.app.jobs import pipeline_job_main

    return pipeline_job_main("extract", argv, description=(__doc__ or "").splitlines()[0],
                             default_config="configs/extract/example.yaml")


if __name__ == "__main__":
    sys.exit(main())

"""Entry point: build the anchor graph (``python jobs/build_graph.py --config configs/graph/demo.yaml [overrides]``).

Thin by design: parse config -> log the resolved config -> :func:`cluster.graph.build_graph` ->
exit code. Under ``ray job submit`` pass ``graph.address=ray`` to run the maps as Dask-on-Ray
tasks on the job's Ray cluster (the driver connects with ``ray.init(address="auto")``, i.e. to
``$RAY_ADDRESS`` set by the job, or reuses an existing connection); with ``graph.address`` null a
local Dask cluster is started; ``tcp://host:8786`` uses a running Dask scheduler.
"""

from __future__ import annotations

import logging
import sys

from vhindex.config import load_job_config

log = logging.getLogger("jobs.build_graph")


def main(argv: list[str] | None = None) -> int:
    cfg = load_job_config(argv, default_config="configs/graph/demo.yaml", description=__doc__.splitlines()[0],
                          job="build_graph")
    from cluster.graph import build_graph_from_config

    try:
        manifest = build_graph_from_config(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("graph build failed: %s", err)
        return 1
    log.info("anchor graph done: k=%d a=%d N=%d d=%d inertia=%.6g timings=%s", manifest.k, manifest.a,
             manifest.num_videos, manifest.d, manifest.inertia, manifest.timings)
    return 0


if __name__ == "__main__":
    sys.exit(main())

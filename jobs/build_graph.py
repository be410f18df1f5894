"""Entry point: build the anchor graph (``python jobs/build_graph.py --config configs/graph/demo.yaml [overrides]``).

Thin by design: parse config -> log the resolved config -> :func:`cluster.graph.build_graph` ->
exit code. Under ``ray job submit`` pass ``graph.address=ray`` to run the maps as Dask-on-Ray
tasks on the job's Ray cluster (the driver connects with ``ray.init(address="auto")``, i.e. to
``$RAY_ADDRESS`` set by the job, or reuses an existing connection); with ``graph.address`` null a
local Dask cluster is started; ``tcp://host:8786`` uses a running Dask scheduler.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vhindex.config import ConfigError, load_config

log = logging.getLogger("jobs.build_graph")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/graph/demo.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    log.info("resolved config:\n%s", cfg.to_yaml())
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

"""Build the anchor graph: ``python jobs/build_graph.py --config configs/graph/demo.yaml [overrides]``.

Under ``ray job submit`` pass ``graph.address=ray`` to run the maps as Dask-on-Ray tasks on the job's
Ray cluster; with ``graph.address`` null a local Dask cluster is started; ``tcp://host:8786`` uses a
running Dask scheduler; ``graph.executor=sequential`` builds in-process. Exit code 1 on failure.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    from vhindex.app.jobs import build_graph_main

    return build_graph_main(argv, description=(__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())

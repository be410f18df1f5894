"""Build a sharded binary index from a codes dataset: ``python jobs/build_index.py --config ...``.

Runs as plain ``python`` or under ``ray job submit --working-dir . -- python jobs/build_index.py ...``
(a streamed pass over the codes; no cluster needed); the same as ``vhindex index sharded``. Exit
codes: 0 built; 1 failure; 2 configuration error (missing URL, an existing index at ``index.out``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Build the index; returns the process exit code."""
    from vhindex.app.jobs import build_index_main

    return build_index_main(argv, description=(__doc__ or "").splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())

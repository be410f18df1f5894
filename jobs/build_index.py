"""Build a sharded binary index from a codes dataset: ``python jobs/build_index.py --config ...``.

Runs as plain ``python`` or under ``ray job submit --working-dir . -- python jobs/build_index.py ...``
(the work is a streamed pass over the codes; no cluster needed). The index folder gets one
sub-folder per shard and a ``_manifest.json`` written last; ``cluster.serve`` serves it.

Exit codes: 0 built; 1 failure; 2 configuration error (missing URL, an existing index at ``index.out``).
"""

from __future__ import annotations

import json
import logging
import sys

log = logging.getLogger("jobs.build_index")


def main(argv: list[str] | None = None) -> int:
    """Build the index; returns the process exit code."""
    from vhindex.config import load_job_config

    cfg = load_job_config(argv, default_config="configs/index/example.yaml",
                          description=(__doc__ or "").splitlines()[0], job="build_index")
    ix = cfg.index
    missing = [f"index.{k}" for k in ("codes", "out") if getattr(ix, k) is None]
    if missing:
        print(f"config error: {', '.join(missing)}: required (fsspec URL)", file=sys.stderr)
        return 2
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    try:
        spec = IndexSpec(ix.type, dict(ix.params))
        manifest = build_sharded_index(ix.codes, ix.out, ix.num_shards, spec=spec,
                                       so=ix.storage_options or None, threads=ix.threads)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    info = manifest if isinstance(manifest, dict) else getattr(manifest, "__dict__", {"manifest": str(manifest)})
    print("RESULT " + json.dumps(info, default=str, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

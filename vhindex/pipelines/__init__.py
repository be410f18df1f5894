"""Sharded, resumable batch jobs: frame-feature extraction and encoding to codes.

The pure parts live here (shard plans, processors, the driver and an in-process engine);
``cluster.data`` runs the same processors on a Ray Data actor pool.
"""

from vhindex.pipelines.encode import EncodeJob, EncodeShardProcessor, versioned_codes_url
from vhindex.pipelines.runner import JobReport, ShardedJob, ShardOutcome, run_local, run_sharded_job
from vhindex.pipelines.shards import ItemError, ShardedOutput, ShardSpec, ShardStats

__all__ = [
    "EncodeJob",
    "EncodeShardProcessor",
    "ItemError",
    "JobReport",
    "ShardOutcome",
    "ShardSpec",
    "ShardStats",
    "ShardedJob",
    "ShardedOutput",
    "run_local",
    "run_sharded_job",
    "versioned_codes_url",
]

"""Ray Data engine for sharded jobs (extraction, encoding): one actor pool, model loaded once per actor.

The driver turns the pending shards into a Ray dataset with one block per shard and maps it with a
callable-class actor pool (``compute=ActorPoolStrategy``, ``batch_size=1``): each actor builds its
:class:`~vhindex.pipelines.runner.ShardProcessor` once (loads the CNN or the hashing model), then
processes shard after shard, writing each shard's outputs straight to storage (no data flows
through the driver) and returning only the shard's stats, which the driver streams for progress.

Failure semantics:

* an actor that dies (killed, OOM, node lost) is restarted by Ray and its in-flight shard retried
  (``max_restarts=-1``, ``max_task_retries=-1``); the retry removes the shard's marker and rewrites
  the shard folder, so every video still ends in exactly one row;
* an exception inside a shard (storage error, corrupt model file) is caught in the actor and reported
  as a failed shard; the job goes on with the other shards and a re-run retries the failed ones;
* per-video problems (undecodable files) never fail a shard: they become error rows.

Pitfall handled here: on a 2-CPU cluster an actor pool that reserves every CPU starves Ray Data's
own tasks and hangs; the pool size is capped so that at least one CPU stays free.
"""

from __future__ import annotations

import json
import logging
import math
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vhindex.pipelines.runner import Engine, ShardOutcome, ShardProcessor
from vhindex.pipelines.shards import ShardSpec, ShardStats

__all__ = ["ShardActor", "ray_engine"]

logger = logging.getLogger(__name__)


class ShardActor:
    """Ray Data callable class: builds the processor once, then processes one shard per row.

    Args:
        factory: zero-argument callable building the processor (pickled to the actor).
    """

    def __init__(self, factory: Callable[[], ShardProcessor]) -> None:
        self.processor = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Process the shards of the batch (one per row); return one JSON result per shard."""
        results = []
        for text in batch["spec"]:
            spec = ShardSpec.from_json(str(text))
            try:
                stats = self.processor.process(spec)
                results.append(json.dumps({"name": spec.name, "stats": stats.to_dict()}))
            except Exception as err:  # noqa: BLE001 -- reported per shard; a re-run retries it
                logger.error("shard %s failed: %s", spec.name, traceback.format_exc())
                results.append(json.dumps({"name": spec.name, "error": f"{type(err).__name__}: {err}"}))
        return {"result": np.array(results, dtype=object)}


def _pool_size(cfg: Any, gpus_per_actor: float) -> tuple[int, int]:
    """(min, max) actors, capped so the CPUs reserved by actors leave one CPU to Ray Data's tasks."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    cap = max(1, math.floor((cpus - 1.0) / cfg.cpus_per_actor)) if cpus > cfg.cpus_per_actor else 1
    if gpus_per_actor > 0:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        cap = min(cap, max(1, math.floor(gpus / gpus_per_actor)))
    hi = min(cfg.actors, cap)
    if hi < cfg.actors:
        logger.warning("actor pool capped at %d (asked %d): %.0f CPUs, %.2f per actor, one CPU kept for Ray Data's "
                       "read/write tasks", hi, cfg.actors, cpus, cfg.cpus_per_actor)
    return min(cfg.min_actors, hi), hi


def _cpus_per_actor(cfg: Any) -> float:
    """The actor's CPU reservation, at most the cluster's CPUs minus one (else the pool hangs)."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return min(cfg.cpus_per_actor, max(cpus - 1.0, 0.25)) if cpus > 1 else min(cfg.cpus_per_actor, 0.5)


def ray_engine(cfg: Any) -> Engine:
    """An engine (see :func:`vhindex.pipelines.run_sharded_job`) running shards on a Ray Data actor pool.

    Args:
        cfg: a :class:`vhindex.config.PipelineSection` (address, actors, CPUs / GPUs per actor).

    Ray is joined as :func:`cluster.runtime.connect_ray` does (the job's cluster under ``ray job
    submit``, else a local Ray on 127.0.0.1) unless ``cfg.address`` names one; a local Ray started
    here is shut down at the end.
    """

    def engine(factory: Callable[[], ShardProcessor], specs: Sequence[ShardSpec],
               on_outcome: Callable[[ShardOutcome], None]) -> None:
        import ray

        from cluster.runtime import connect_ray

        started = False
        if not ray.is_initialized() and cfg.address:
            ray.init(address=cfg.address)
        else:
            started = connect_ray()
        try:
            gpus = cfg.gpus_per_actor
            if gpus == "auto":
                gpus = 1.0 if float(ray.cluster_resources().get("GPU", 0.0)) > 0 else 0.0
            lo, hi = _pool_size(cfg, float(gpus))
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False  # the driver prints its own progress lines
            ctx.max_errored_blocks = 0  # a shard's own failure is caught in the actor, never here
            ds = ray.data.from_items([{"spec": s.to_json()} for s in specs], override_num_blocks=len(specs))
            mapped = ds.map_batches(
                ShardActor, fn_constructor_kwargs={"factory": factory}, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
                # Ray Data's actor pools default to max_restarts=-1 / max_task_retries=-1: a dead actor is
                # restarted and its in-flight shard retried (passing them again is deprecated in 2.60).
                num_cpus=_cpus_per_actor(cfg), num_gpus=float(gpus) or None,
                # one actor per node before two on any (a lost node takes fewer actors), on the nodes
                # that have cfg.resources
                scheduling_strategy="SPREAD", **({"resources": dict(cfg.resources)} if cfg.resources else {}))
            seen: set[str] = set()
            for row in mapped.iter_rows():
                res = json.loads(str(row["result"]))
                if res["name"] in seen:  # cannot happen with Ray Data's exactly-once outputs; guard anyway
                    raise RuntimeError(f"Ray Data returned shard {res['name']} twice")
                seen.add(res["name"])
                if "stats" in res:
                    on_outcome(ShardOutcome(res["name"], stats=ShardStats.from_dict(res["stats"])))
                else:
                    on_outcome(ShardOutcome(res["name"], error=res["error"]))
        finally:
            if started:
                ray.shutdown()

    return engine

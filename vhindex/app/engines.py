"""The one place that picks where work runs: Ray or in-process engines, graph executors, training backends.

Everything else in ``vhindex`` takes these as injected arguments (an :data:`~vhindex.pipelines.runner.Engine`,
a graph executor factory); only this layer (:mod:`vhindex.app`) imports ``cluster``, lazily.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, TextIO

from vhindex.pipelines.configured import encode_job_from_config, extract_job_from_config
from vhindex.pipelines.runner import Engine, JobReport, run_local, run_sharded_job

__all__ = ["graph_executor", "run_from_config", "select_engine"]


def select_engine(pipeline: Any) -> tuple[Engine, str]:
    """The engine of a :class:`vhindex.config.PipelineSection`: ``ray`` (actor pool), ``local`` or ``auto``.

    Raises:
        ImportError: ``engine: ray`` without Ray installed (the message names the extra to install).
    """
    name = pipeline.engine
    if name == "auto":
        name = "ray" if importlib.util.find_spec("ray") is not None else "local"
    if name == "local":
        return run_local, "local"
    if importlib.util.find_spec("ray") is None:
        raise ImportError("pipeline.engine=ray needs Ray: pip install -c constraints.txt 'vhindex[ray]' "
                          "(or set pipeline.engine=local)")
    from cluster.data import ray_engine

    return ray_engine(pipeline), "ray"


def graph_executor(section: Any, connection: Any = None) -> Any:
    """The executor factory for :func:`vhindex.graph.stage.build_graph` that ``section`` (a
    :class:`vhindex.config.GraphSection`) asks for: in-process (``executor: sequential``), or Dask /
    Dask-on-Ray (``executor: dask``, on ``address`` -- or on ``connection`` when given)."""
    if section.executor == "sequential" and connection is None:
        import functools

        from vhindex.graph.stage import sequential_executor

        return functools.partial(sequential_executor, num_threads=section.threads_per_worker)
    from cluster.graph import dask_executor_factory

    return dask_executor_factory(section, connection)


def run_from_config(kind: str, cfg: Any, stream: TextIO | None = sys.stderr) -> JobReport:
    """Build the ``kind`` (``extract`` / ``encode``) job from ``cfg`` and run it on the configured engine."""
    section = getattr(cfg, kind)
    job = extract_job_from_config(cfg) if kind == "extract" else encode_job_from_config(cfg)
    engine, name = select_engine(section.pipeline)
    return run_sharded_job(job, engine, engine_name=name, max_error_fraction=section.pipeline.max_error_fraction,
                           progress_every_s=section.pipeline.progress_every_s, stream=stream)

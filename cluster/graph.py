"""The anchor graph on a cluster: Dask (or Dask-on-Ray) executors for :mod:`vhindex.graph.stage`.

The graph stage itself is pure and lives in the core (:func:`vhindex.graph.stage.build_graph`); this
module only runs its per-chunk maps where the data lies and reduces the small results on the client
**in chunk order**, so every executor gives the same bits as
:class:`vhindex.graph.sequential.SequentialExecutor` for the same chunking:

* :class:`DaskExecutor` -- a :class:`~vhindex.graph.interfaces.GraphExecutor` on a
  ``distributed.Client``: one task per chunk, centroids broadcast once per call, chunks kept in
  worker memory between k-means iterations (never on the client).
* :class:`DaskOnRayExecutor` -- the same maps as ``dask.delayed`` tasks computed with
  ``ray.util.dask.ray_dask_get`` on a Ray cluster.
* :func:`connect` -- a local ``LocalCluster``, an existing Dask scheduler, or Ray.
* :func:`dask_executor_factory` -- what the app layer hands to ``build_graph`` for ``graph.executor: dask``.

Dask and Ray are imported lazily (inside functions), so importing this module needs neither.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from vhindex.graph.interfaces import AssignStats

__all__ = ["DaskExecutor", "DaskOnRayExecutor", "RayDask", "connect", "dask_executor_factory", "make_executor"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- pure per-chunk task bodies
# Module-level functions (importable by workers), each a pure function of its arguments.


def _load_chunk(source: Any, i: int) -> np.ndarray:
    return source.load_chunk(i)


def _chunk(source: Any, i: int, cached: np.ndarray | None) -> np.ndarray:
    return cached if cached is not None else source.load_chunk(i)


def _assign_task(source: Any, i: int, centroids: np.ndarray, num_threads: int | None, row_offset: int,
                 cached: np.ndarray | None = None) -> AssignStats:
    from vhindex.graph.kmeans import assign_stats

    return assign_stats(_chunk(source, i, cached), centroids, num_threads, chunk=i, row_offset=row_offset)


def _nearest_task(source: Any, i: int, centroids: np.ndarray, a: int, num_threads: int | None,
                  cached: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    from vhindex.graph.kmeans import nearest_k

    return nearest_k(_chunk(source, i, cached), centroids, a, num_threads)


def _take_task(source: Any, i: int, local_rows: np.ndarray, cached: np.ndarray | None = None) -> np.ndarray:
    return np.ascontiguousarray(_chunk(source, i, cached)[local_rows])


def _sum_in_order(parts: Sequence[AssignStats], k: int, d: int) -> AssignStats:
    """Sum per-chunk stats left to right, starting from zeros (the reduction every executor uses)."""
    total = AssignStats.zeros(k, d)
    for part in parts:
        total = total + part
    return total


def _check_centroids(centroids: np.ndarray, dim: int) -> np.ndarray:
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if c.ndim != 2 or c.shape[1] != dim:
        raise ValueError(f"centroids must have shape (k, d={dim}), got {c.shape}")
    return c


def _offsets(source: Any) -> np.ndarray:
    """``(num_chunks + 1,)`` int64 global row offsets of the chunks."""
    sizes = [int(source.chunk_rows(i)) for i in range(source.num_chunks())]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


def _group_rows(source: Any, rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Split sorted global row indices into ``(chunk index, local rows)`` pairs, in chunk order."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1:
        raise ValueError(f"rows must be a 1-D array of row indices, got shape {rows.shape}")
    if rows.size and (rows[0] < 0 or rows[-1] >= source.num_rows or np.any(np.diff(rows) <= 0)):
        raise ValueError(f"rows must be sorted, unique and in [0, {source.num_rows})")
    offsets = _offsets(source)
    chunk_of = np.searchsorted(offsets, rows, side="right") - 1
    out = []
    for c in np.unique(chunk_of):
        sel = rows[chunk_of == c]
        out.append((int(c), sel - offsets[c]))
    return out


# ------------------------------------------------------------------------------------ executors


class DaskExecutor:
    """A :class:`~vhindex.graph.interfaces.GraphExecutor` running one Dask task per chunk.

    Each call broadcasts the centroids to the workers once (``client.scatter(broadcast=True)``),
    maps a pure function over the chunks and gathers the small per-chunk results, which are
    reduced on the client in chunk order -- so results equal
    :class:`~vhindex.graph.sequential.SequentialExecutor`'s bit for bit for the same source and
    ``num_threads``. Chunk data never travels to the client: with ``cache_chunks`` (default) the
    chunks are loaded once into worker memory (as futures) and later tasks run where they lie;
    without, every task re-reads its chunk from storage.

    Args:
        source: the chunk source (must pickle; e.g. :class:`vhindex.graph.source.ParquetChunkSource`).
        client: a connected ``distributed.Client``.
        num_threads: threads per task for the assignment (``1`` matches one-thread workers).
        cache_chunks: keep loaded chunks in worker memory across calls (release with :meth:`close`).
    """

    def __init__(self, source: Any, client: Any, num_threads: int | None = 1, *, cache_chunks: bool = True) -> None:
        self.source = source
        self.client = client
        self.num_threads = num_threads
        self.cache_chunks = cache_chunks
        self._source_future: Any = None
        self._chunk_futures: list[Any] | None = None

    @property
    def name(self) -> str:
        """What ran the maps (recorded in the graph manifest)."""
        return f"dask ({getattr(self.client, 'scheduler', None) and self.client.scheduler.address})"

    # -- plumbing ---------------------------------------------------------------------------------
    def _src(self) -> Any:
        if self._source_future is None:
            self._source_future = self.client.scatter(self.source, broadcast=True, hash=False)
        return self._source_future

    def _cached(self) -> list[Any]:
        n = self.source.num_chunks()
        if not self.cache_chunks:
            return [None] * n
        if self._chunk_futures is None:
            self._chunk_futures = self.client.map(_load_chunk, [self._src()] * n, range(n), pure=False)
        return self._chunk_futures

    def _map(self, func: Any, chunk_ids: Sequence[int], *args: Any, per_chunk: Sequence[Any] = ()) -> list[Any]:
        """``func(source, i, *args, *[p[i] for p in per_chunk], cached_chunk_i)`` for each chunk, gathered in order."""
        cached = self._cached()
        futures = self.client.map(
            func,
            [self._src()] * len(chunk_ids),
            list(chunk_ids),
            *[[a] * len(chunk_ids) for a in args],
            *[[p[i] for i in chunk_ids] for p in per_chunk],
            [cached[i] for i in chunk_ids],
            pure=False,
        )
        try:
            return self.client.gather(futures)
        finally:
            for f in futures:
                f.release()

    def close(self) -> None:
        """Release the chunks and the source held in worker memory."""
        for f in self._chunk_futures or []:
            f.release()
        self._chunk_futures = None
        if self._source_future is not None:
            self._source_future.release()
            self._source_future = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- GraphExecutor ------------------------------------------------------------------------------
    def assign_reduce(self, centroids: np.ndarray, chunk_ids: Sequence[int] | None = None) -> AssignStats:
        """Assignment stats of the given chunks (all when ``None``), summed in chunk order."""
        c = _check_centroids(centroids, self.source.dim)
        ids = list(range(self.source.num_chunks())) if chunk_ids is None else [int(i) for i in chunk_ids]
        cf = self.client.scatter(c, broadcast=True, hash=False)
        try:
            parts = self._map(_assign_task, ids, cf, self.num_threads, per_chunk=[_offsets(self.source)[:-1].tolist()])
        finally:
            cf.release()
        return _sum_in_order(parts, c.shape[0], c.shape[1])

    def take_rows(self, rows: np.ndarray) -> np.ndarray:
        """The rows with these global indices (sorted, unique), ``(len(rows), d)`` float32."""
        groups = _group_rows(self.source, rows)
        if not groups:
            return np.zeros((0, self.source.dim), np.float32)
        cached = self._cached()
        futures = self.client.map(
            _take_task, [self._src()] * len(groups), [c for c, _ in groups], [r for _, r in groups],
            [cached[c] for c, _ in groups], pure=False,
        )
        parts = self.client.gather(futures)
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    def nearest(self, centroids: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """Each row's ``a`` nearest centroids ``(ids (N, a) int32, sqdists (N, a) float32)``, row order."""
        c = _check_centroids(centroids, self.source.dim)
        cf = self.client.scatter(c, broadcast=True, hash=False)
        try:
            parts = self._map(_nearest_task, list(range(self.source.num_chunks())), cf, int(a), self.num_threads)
        finally:
            cf.release()
        return _concat_nearest(parts, int(a))


def _concat_nearest(parts: Sequence[tuple[np.ndarray, np.ndarray]], a: int) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros((0, a), np.int32), np.zeros((0, a), np.float32)
    ids = np.concatenate([p[0] for p in parts]).astype(np.int32, copy=False)
    dists = np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False)
    return ids, dists


class RayDask:
    """Handle yielded by :func:`connect` for ``address="ray"``: Dask graphs computed on Ray.

    Attributes:
        started_ray: whether :func:`connect` started Ray (and shuts it down on exit).
    """

    def __init__(self, started_ray: bool) -> None:
        self.started_ray = started_ray

    def compute(self, *delayed_objs: Any) -> tuple[Any, ...]:
        """``dask.compute(*objs, scheduler=ray_dask_get)``."""
        import dask
        from ray.util.dask import ray_dask_get

        return dask.compute(*delayed_objs, scheduler=ray_dask_get)


class DaskOnRayExecutor:
    """The :class:`DaskExecutor` maps as ``dask.delayed`` tasks computed with ``ray_dask_get``.

    Centroids and the source enter each graph once (one Ray object each, shared by every task);
    every task reads its chunk where it runs (no caching between calls); results are reduced on
    the driver in chunk order, as in every executor.

    Args:
        source: the chunk source (must pickle).
        ray_dask: the :class:`RayDask` handle from :func:`connect` (Ray must be initialised).
        num_threads: threads per task for the assignment.
    """

    def __init__(self, source: Any, ray_dask: RayDask | None = None, num_threads: int | None = 1) -> None:
        self.source = source
        self.ray_dask = ray_dask or RayDask(started_ray=False)
        self.num_threads = num_threads

    #: what ran the maps (recorded in the graph manifest)
    name = "dask-on-ray"

    def _map(self, func: Any, chunk_ids: Sequence[int], *args: Any, per_chunk: Sequence[Any] = ()) -> list[Any]:
        import dask

        src = dask.delayed(self.source, traverse=False)
        shared = [dask.delayed(x, traverse=False) if isinstance(x, np.ndarray) else x for x in args]
        tasks = [dask.delayed(func, pure=True)(src, i, *shared, *[p[i] for p in per_chunk]) for i in chunk_ids]
        return list(self.ray_dask.compute(*tasks))

    def close(self) -> None:
        """Nothing to release (no chunk cache)."""

    def __enter__(self) -> DaskOnRayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def assign_reduce(self, centroids: np.ndarray, chunk_ids: Sequence[int] | None = None) -> AssignStats:
        """See :meth:`DaskExecutor.assign_reduce`."""
        c = _check_centroids(centroids, self.source.dim)
        ids = list(range(self.source.num_chunks())) if chunk_ids is None else [int(i) for i in chunk_ids]
        offsets = _offsets(self.source)
        parts = self._map(_assign_task, ids, c, self.num_threads, per_chunk=[offsets[:-1].tolist()])
        return _sum_in_order(parts, c.shape[0], c.shape[1])

    def take_rows(self, rows: np.ndarray) -> np.ndarray:
        """See :meth:`DaskExecutor.take_rows`."""
        import dask

        groups = _group_rows(self.source, rows)
        if not groups:
            return np.zeros((0, self.source.dim), np.float32)
        src = dask.delayed(self.source, traverse=False)
        tasks = [dask.delayed(_take_task, pure=True)(src, c, r) for c, r in groups]
        return np.ascontiguousarray(np.concatenate(self.ray_dask.compute(*tasks)), dtype=np.float32)

    def nearest(self, centroids: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`DaskExecutor.nearest`."""
        c = _check_centroids(centroids, self.source.dim)
        parts = self._map(_nearest_task, list(range(self.source.num_chunks())), c, int(a), self.num_threads)
        return _concat_nearest(parts, int(a))


# ------------------------------------------------------------------------------------- connecting


@contextlib.contextmanager
def connect(
    address: str | None,
    *,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    memory_limit: str | int | None = "auto",
    ray_address: str | None = None,
    timeout: float = 60.0,
) -> Iterator[Any]:
    """Connect to where the graph maps run; a context manager that cleans up what it started.

    Args:
        address: ``None`` -- start a fresh ``LocalCluster`` (``n_workers`` processes x
            ``threads_per_worker`` threads, on 127.0.0.1, no dashboard) and yield its
            ``distributed.Client``; ``"ray"`` -- Dask-on-Ray: use the current Ray connection, or
            ``ray.init(address=ray_address or $RAY_ADDRESS or "auto")`` (as inside ``ray job
            submit``), and yield a :class:`RayDask`; anything else (``tcp://host:8786``) -- the
            address of a running Dask scheduler, yield a ``distributed.Client`` connected to it.
        n_workers: workers of the local cluster.
        threads_per_worker: threads per local worker.
        memory_limit: per-worker memory limit of the local cluster.
        ray_address: Ray cluster address for ``address="ray"`` when Ray is not initialised yet.
        timeout: seconds to wait for the scheduler connection.

    Yields:
        A ``distributed.Client`` or a :class:`RayDask`.
    """
    if address == "ray":
        import ray

        from cluster import require

        require("dask", "dask")
        started = False
        if not ray.is_initialized():
            target = ray_address or os.environ.get("RAY_ADDRESS") or "auto"
            logger.info("connecting to Ray at %s for Dask-on-Ray", target)
            ray.init(address=target)
            started = True
        try:
            yield RayDask(started_ray=started)
        finally:
            if started:
                ray.shutdown()
        return

    from cluster import require

    require("distributed", "dask")
    from distributed import Client, LocalCluster

    if address is None:
        with _quiet_distributed(), LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            memory_limit=memory_limit,
        ) as local, Client(local, timeout=timeout) as client:
            logger.info("started a local Dask cluster: %d workers x %d threads", n_workers, threads_per_worker)
            yield client
        return
    with Client(address, timeout=timeout) as client:
        logger.info("connected to the Dask scheduler at %s", address)
        yield client


@contextlib.contextmanager
def _quiet_distributed() -> Iterator[None]:
    """Keep the in-process scheduler's INFO chatter out of the output unless we log at DEBUG."""
    dist = logging.getLogger("distributed")
    previous = dist.level
    if not logger.isEnabledFor(logging.DEBUG):
        dist.setLevel(max(previous, logging.WARNING))
    try:
        yield
    finally:
        dist.setLevel(previous)


def make_executor(source: Any, connection: Any, num_threads: int | None = 1) -> DaskExecutor | DaskOnRayExecutor:
    """The executor for what :func:`connect` yielded (a ``distributed.Client`` or a :class:`RayDask`)."""
    if isinstance(connection, RayDask):
        return DaskOnRayExecutor(source, connection, num_threads=num_threads)
    return DaskExecutor(source, connection, num_threads=num_threads)


def dask_executor_factory(section: Any, connection: Any = None) -> Callable[[Any], Any]:
    """The executor factory of ``graph.executor: dask`` for :func:`vhindex.graph.stage.build_graph`.

    Opens (only when called, i.e. when the graph must be built) a connection per ``section.address``
    (:func:`connect`; or reuses ``connection``, a ``distributed.Client`` / :class:`RayDask`) and an
    executor over the given chunk source with ``section.threads_per_worker`` threads per task.
    """

    @contextlib.contextmanager
    def open_executor(source: Any) -> Iterator[DaskExecutor | DaskOnRayExecutor]:
        with contextlib.ExitStack() as stack:
            conn = connection
            if conn is None:
                conn = stack.enter_context(connect(section.address, n_workers=section.n_workers,
                                                   threads_per_worker=section.threads_per_worker))
            yield stack.enter_context(make_executor(source, conn, num_threads=section.threads_per_worker))

    return open_executor

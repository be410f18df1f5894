"""The anchor graph on a cluster: Dask (or Dask-on-Ray) k-means anchors and nearest anchors.

The math lives in :mod:`vhindex.graph` (pure); this module runs its per-chunk maps where the data
lies and reduces the small results on the client **in chunk order**, so every executor gives the
same bits as :class:`vhindex.graph.sequential.SequentialExecutor` for the same chunking:

* :class:`ParquetChunkSource` -- an embeddings dataset (:class:`vhindex.data.EmbeddingDataset`)
  split into read tasks (row-group ranges planned from the manifest); a worker reads only its
  chunk's row groups through fsspec.
* :class:`DaskExecutor` -- a :class:`~vhindex.graph.interfaces.GraphExecutor` on a
  ``distributed.Client``: one task per chunk, centroids broadcast once per call, chunks kept in
  worker memory between k-means iterations (never on the client).
* :class:`DaskOnRayExecutor` -- the same maps as ``dask.delayed`` tasks computed with
  ``ray.util.dask.ray_dask_get`` on a Ray cluster.
* :func:`connect` -- a local ``LocalCluster``, an existing Dask scheduler, or Ray.
* :func:`build_graph` / :func:`load_graph` -- the stage: k-means -> nearest ``a`` anchors per
  video -> :class:`~vhindex.graph.anchor_graph.AnchorGraph`, written as

  ============================  ==============================================================
  ``anchors.parquet``           ``anchor_id`` int32, ``centroid`` fixed_size_list<float, d>,
                                ``count`` int64 (videos assigned in the last k-means pass)
  ``neighbors/part-*.parquet``  ``video_id`` string, ``anchor_ids`` fixed_size_list<int32, a>,
                                ``sqdists`` fixed_size_list<float, a> (nearest first), and
                                ``weights_s{s}`` fixed_size_list<float, s>: the rule's softmax
                                weights of level s, aligned with ``anchor_ids[:, :s]``
  ``graph.json``                the manifest (:class:`GraphManifest`), written **last**
  ============================  ==============================================================

Dask and Ray are imported lazily (inside functions), so importing this module needs neither.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import vhindex
from vhindex import fs as vfs
from vhindex.data import EmbeddingDataset, EmbeddingDatasetMeta, EmbeddingDatasetWriter, ReadTask
from vhindex.data.writer import DatasetManifest
from vhindex.graph.interfaces import AssignStats

__all__ = [
    "GRAPH_FORMAT",
    "DaskExecutor",
    "DaskOnRayExecutor",
    "GraphManifest",
    "ParquetChunkSource",
    "RayDask",
    "build_graph",
    "build_graph_from_config",
    "connect",
    "load_graph",
    "make_executor",
    "write_synthetic_embeddings",
]

logger = logging.getLogger(__name__)

GRAPH_FORMAT = "vhindex.graph"
GRAPH_FORMAT_VERSION = 1
GRAPH_MANIFEST = "graph.json"
ANCHORS_FILE = "anchors.parquet"
NEIGHBORS_DIR = "neighbors"
NEIGHBOR_PART = "part-{index:05d}.parquet"


# ------------------------------------------------------------------------------------ chunk source


class ParquetChunkSource:
    """A :class:`~vhindex.graph.interfaces.ChunkSource` over an embeddings dataset.

    The chunks are the dataset's read tasks (contiguous row-group ranges, planned with
    :func:`vhindex.data.planner.plan_tasks` so that no chunk exceeds ``rows_per_chunk`` rows
    unless a single row group does). The object holds only the URL, the storage options, the
    manifest and the plan -- no open files -- so it pickles cheaply to Dask / Ray workers, and
    :meth:`load_chunk` reads exactly that chunk's row groups where the worker runs.

    Args:
        url: fsspec URL of the embeddings dataset.
        storage_options: fsspec options (credentials, endpoint) for ``url``.
        rows_per_chunk: upper bound on rows per chunk (row groups are never split).
        check_finite: make :meth:`load_chunk` refuse NaN / Inf values (naming chunk, file, row).

    Raises:
        vhindex.data.IncompleteDatasetError: when the dataset has no manifest.
        ValueError: when it is not an embeddings dataset or has no rows.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        rows_per_chunk: int = 50_000,
        *,
        check_finite: bool = True,
    ) -> None:
        if isinstance(rows_per_chunk, bool) or not isinstance(rows_per_chunk, int) or rows_per_chunk <= 0:
            raise ValueError(f"rows_per_chunk must be a positive int, got {rows_per_chunk!r}")
        ds = EmbeddingDataset.open(url, storage_options)
        if ds.num_videos == 0:
            raise ValueError(f"embeddings dataset {url} is empty (0 videos); nothing to build a graph from")
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.rows_per_chunk = rows_per_chunk
        self.check_finite = check_finite
        self.manifest: dict[str, Any] = ds.manifest.to_dict()
        self.meta: EmbeddingDatasetMeta = ds.meta
        self.num_rows: int = ds.num_videos
        self.dim: int = ds.meta.dim
        self.tasks: list[ReadTask] = ds.plan(max_rows_per_task=rows_per_chunk)
        self._dataset: EmbeddingDataset | None = None  # per-process cache, never pickled

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_dataset"] = None
        return state

    def _open(self) -> EmbeddingDataset:
        if self._dataset is None:
            fs, root = vfs.url_to_fs(self.url, self.storage_options or None)
            manifest = DatasetManifest.from_dict(self.manifest, source=f"{self.url} (planned manifest)")
            self._dataset = EmbeddingDataset(self.url, fs, root, manifest)
        return self._dataset

    def num_chunks(self) -> int:
        """Number of chunks (read tasks)."""
        return len(self.tasks)

    def chunk_rows(self, i: int) -> int:
        """Rows of chunk ``i`` (from the manifest, no IO)."""
        return self.tasks[self._check_index(i)].num_rows

    def chunk_offsets(self) -> np.ndarray:
        """``(num_chunks + 1,)`` int64 global row offsets of the chunks."""
        return np.concatenate([[0], np.cumsum([t.num_rows for t in self.tasks])]).astype(np.int64)

    def load_chunk(self, i: int) -> np.ndarray:
        """Chunk ``i`` as a C-contiguous ``(rows, dim)`` float32 array, read from its row groups only.

        Raises:
            ValueError: naming the chunk, the file and the row on NaN / Inf (with
                ``check_finite``), a null or malformed embedding, or files changed since planning.
        """
        task = self.tasks[self._check_index(i)]
        try:
            batch = self._open().read_rows(task, with_ids=False, check_finite=self.check_finite)
        except ValueError as err:
            raise ValueError(f"chunk {i} of {self.url}: {err}") from err
        return batch.embeddings

    def read_video_ids(self) -> list[str]:
        """All video ids in dataset (= row) order; read on the caller (ids only)."""
        ids = self._open().read_video_ids()
        if len(ids) != self.num_rows:
            raise ValueError(f"{self.url}: read {len(ids)} video ids but the manifest lists {self.num_rows}")
        return ids

    def manifest_hash(self) -> str:
        """SHA-256 of the dataset manifest (canonical JSON)."""
        return _sha256_json(self.manifest)

    def content_signature(self) -> str:
        """Manifest hash plus each part file's size and ETag / modification time.

        Two reads of an unchanged dataset give the same signature; re-writing the files changes
        it even when the manifest comes out identical.
        """
        ds = self._open()
        stats = []
        for i in range(len(ds.manifest.files)):
            url = ds.file_url(i)
            fs, path = vfs.url_to_fs(url, self.storage_options or None)
            info = fs.info(path)
            stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") \
                or info.get("created")
            stats.append([info.get("size"), str(stamp)])
        return _sha256_json({"manifest": self.manifest, "files": stats})

    def _check_index(self, i: int) -> int:
        if not 0 <= int(i) < len(self.tasks):
            raise IndexError(f"chunk index {i} out of range [0, {len(self.tasks)}) for {self.url}")
        return int(i)

    def __repr__(self) -> str:
        return f"ParquetChunkSource({self.url!r}, rows={self.num_rows}, dim={self.dim}, chunks={len(self.tasks)})"


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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
        source: the chunk source (must pickle; e.g. :class:`ParquetChunkSource`).
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


# ------------------------------------------------------------------------------------------- stage


@dataclasses.dataclass
class GraphManifest:
    """Contents of ``graph.json`` (written last: a folder without it holds no complete graph).

    Attributes:
        k: anchors; a: nearest anchors per video; d: embedding dims; num_videos: N.
        rule: the anchor-graph rule; rule_params: its parameters as given; graph_params: the built
            graph's description (``AnchorGraph.to_arrays()[1]``: resolved parameters and the
            bandwidth sigma of every level), used to rebuild and check it on load.
        seed: k-means seed; kmeans: k-means parameters; inertia / inertia_history: final and per
            iteration; counts: videos per anchor (last assignment pass).
        embeddings_url / embeddings_manifest_hash / embeddings_signature: the input and its identity.
        rows_per_chunk / num_chunks: the chunking (results are bit-identical for a fixed chunking).
        neighbor_files: ``[{"path", "num_rows"}]`` of ``neighbors/``; neighbor_columns: their columns.
        fingerprint: hash of everything that determines the outputs (a re-run with the same one skips).
        timings: seconds per phase; executor: what ran the maps; vhindex_version.
    """

    k: int
    a: int
    d: int
    num_videos: int
    rule: str
    rule_params: dict[str, Any]
    graph_params: dict[str, Any]
    seed: int
    kmeans: dict[str, Any]
    inertia: float
    inertia_history: list[float]
    counts: list[int]
    embeddings_url: str
    embeddings_manifest_hash: str
    embeddings_signature: str
    rows_per_chunk: int
    num_chunks: int
    neighbor_files: list[dict[str, Any]]
    neighbor_columns: list[str]
    fingerprint: str
    timings: dict[str, float]
    executor: str
    vhindex_version: str = vhindex.__version__
    format: str = GRAPH_FORMAT
    format_version: int = GRAPH_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: Any, source: str = GRAPH_MANIFEST) -> GraphManifest:
        """Parse :meth:`to_dict` output; ``source`` names the file in errors."""
        if not isinstance(obj, dict) or obj.get("format") != GRAPH_FORMAT:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            raise ValueError(f"{source} is not a vhindex graph manifest (format={got!r}, expected {GRAPH_FORMAT!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in obj and f.default is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{source} lacks keys {missing}; re-build the graph")
        return cls(**{k: v for k, v in obj.items() if k in names})


def _jsonable(value: Any) -> Any:
    """numpy scalars / arrays -> plain JSON values (for rule parameters and sigma values)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_synthetic_embeddings(
    url: str,
    *,
    num_videos: int,
    dim: int,
    num_clusters: int,
    noise: float = 0.3,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
    row_group_size: int = 500,
) -> EmbeddingDataset:
    """Write (or reuse) a seeded clustered embeddings dataset: centres ~ N(0, 1), points = centre + noise.

    Reused when a complete dataset with the same parameters exists at ``url`` (the parameters are
    recorded in ``meta.source_version``); otherwise (re)written.
    """
    spec = {"num_videos": num_videos, "dim": dim, "num_clusters": num_clusters, "noise": noise, "seed": seed}
    version = _sha256_json(spec)[:16]
    with contextlib.suppress(FileNotFoundError, ValueError):
        ds = EmbeddingDataset.open(url, storage_options)
        if ds.meta.source == "synthetic" and ds.meta.source_version == version:
            logger.info("reusing synthetic embeddings at %s", url)
            return ds
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)).astype(np.float32)
    meta = EmbeddingDatasetMeta(dim=dim, dtype="float32", source="synthetic", source_version=version)
    with EmbeddingDatasetWriter(url, meta, rows_per_file=max(row_group_size * 4, 1), row_group_size=row_group_size,
                                storage_options=storage_options, overwrite=True) as writer:
        for start in range(0, num_videos, 10_000):
            n = min(10_000, num_videos - start)
            labels = rng.integers(0, num_clusters, n)
            x = centres[labels] + noise * rng.standard_normal((n, dim)).astype(np.float32)
            writer.write([f"video-{start + i:07d}" for i in range(n)], x)
    logger.info("wrote %d synthetic embeddings (d=%d, %d clusters) to %s", num_videos, dim, num_clusters, url)
    return EmbeddingDataset.open(url, storage_options)


def _executor_name(executor: Any) -> str:
    if isinstance(executor, DaskOnRayExecutor):
        return "dask-on-ray"
    if isinstance(executor, DaskExecutor):
        return f"dask ({getattr(executor.client, 'scheduler', None) and executor.client.scheduler.address})"
    return type(executor).__name__


def build_graph(
    embeddings_url: str,
    out_url: str,
    *,
    k: int = 2000,
    a: int = 5,
    rule: str = "bth",
    rule_params: dict[str, Any] | None = None,
    n_iter: int = 20,
    init: str = "k-means++",
    mode: str = "full",
    init_sample: int | None = None,
    tol: float = 1e-4,
    batch_chunks: int | None = None,
    seed: int = 0,
    address: str | None = None,
    storage_options: dict[str, Any] | None = None,
    out_storage_options: dict[str, Any] | None = None,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    rows_per_chunk: int = 50_000,
    connection: Any = None,
    executor: Any = None,
    neighbors_rows_per_file: int = 100_000,
    overwrite: bool = False,
) -> GraphManifest:
    """Build the anchor graph of an embeddings dataset and write it to ``out_url``.

    K-means (:func:`vhindex.graph.kmeans.fit_kmeans`, driven through the executor) -> each video's
    ``a`` nearest anchors (one map over the chunks) -> :meth:`AnchorGraph.from_neighbors` on the
    client (``O(N a)``) -> ``anchors.parquet``, ``neighbors/part-*.parquet``, then ``graph.json``.
    Deterministic for a seed and chunking. When ``graph.json`` exists with the same fingerprint
    (parameters + the input's content signature) nothing is recomputed ("complete, skipping").

    Args:
        embeddings_url: the embeddings dataset (:class:`vhindex.data.EmbeddingDataset`).
        out_url: the graph folder (any fsspec URL).
        k: anchors (k-means centroids).
        a: nearest anchors kept per video (``bth`` needs 5).
        rule: the graph rule (``bth``, ``nph``, ``gaussian``; see ``AnchorGraph``).
        rule_params: the rule's parameters.
        n_iter: k-means iterations (at most).
        init: k-means initialisation (``k-means++``, ``k-means||``, ``random``).
        mode: ``full`` (Lloyd) or ``minibatch``.
        init_sample: rows of the k-means++ sample (None: ``fit_kmeans``'s default).
        tol: relative inertia change that stops k-means.
        batch_chunks: chunks per mini-batch step (``mode="minibatch"``).
        seed: the k-means seed.
        address: where the maps run (see :func:`connect`); ignored with ``connection`` / ``executor``.
        storage_options: fsspec options for ``embeddings_url`` (and ``out_url`` unless
            ``out_storage_options`` is given).
        out_storage_options: fsspec options for ``out_url`` when they differ.
        n_workers: workers of the local Dask cluster (``address=None``).
        threads_per_worker: threads per local worker; also each task's faiss ``num_threads``.
        rows_per_chunk: upper bound on rows per map task.
        connection: an existing ``distributed.Client`` or :class:`RayDask` to use.
        executor: a ready :class:`~vhindex.graph.interfaces.GraphExecutor` over the same dataset
            (e.g. a ``SequentialExecutor``); its source's chunking is used.
        neighbors_rows_per_file: rows per ``neighbors/`` part file.
        overwrite: rebuild even when a matching graph exists.

    Returns:
        The :class:`GraphManifest` (also written as ``graph.json``).

    Raises:
        ValueError: ``k`` larger than the number of videos, ``a > k``, NaN / Inf embeddings
            (naming chunk, file and row), an empty dataset, bad parameters.
        vhindex.data.IncompleteDatasetError: the embeddings dataset has no manifest.
    """
    from vhindex.graph.anchor_graph import AnchorGraph
    from vhindex.graph.kmeans import fit_kmeans

    for name, value in (("k", k), ("a", a), ("n_iter", n_iter), ("rows_per_chunk", rows_per_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if a > k:
        raise ValueError(f"a={a} nearest anchors per video but only k={k} anchors; use a <= k")
    rule_params = dict(rule_params or {})
    _check_rule(rule, rule_params, a)
    out_so = out_storage_options if out_storage_options is not None else storage_options
    source = executor.source if executor is not None else ParquetChunkSource(embeddings_url, storage_options,
                                                                               rows_per_chunk)
    if source.num_rows < k:
        raise ValueError(
            f"k={k} anchors but the embeddings dataset {embeddings_url} has only N={source.num_rows} videos; "
            "lower k (graph.k) to at most the number of videos"
        )
    kmeans_params = {"n_iter": n_iter, "init": init, "mode": mode, "init_sample": init_sample, "tol": tol,
                     "batch_chunks": batch_chunks}
    manifest_hash = source.manifest_hash() if hasattr(source, "manifest_hash") else ""
    signature = source.content_signature() if hasattr(source, "content_signature") else manifest_hash
    chunking = [int(source.chunk_rows(i)) for i in range(source.num_chunks())]
    fingerprint = _sha256_json({
        "format_version": GRAPH_FORMAT_VERSION, "k": k, "a": a, "rule": rule, "rule_params": _jsonable(rule_params),
        "seed": seed, "kmeans": kmeans_params, "chunking": chunking, "embeddings": signature,
    })

    fs, root = vfs.url_to_fs(out_url, out_so)
    manifest_path = vfs.join(fs, root, GRAPH_MANIFEST)
    if not overwrite and fs.exists(manifest_path):
        try:
            old = GraphManifest.from_dict(vfs.read_json(fs, manifest_path), source=vfs.unstrip(fs, manifest_path))
        except ValueError as err:
            logger.warning("ignoring unreadable %s (%s); rebuilding", manifest_path, err)
            old = None
        if old is not None and old.fingerprint == fingerprint and _outputs_present(fs, root, old):
            print(f"graph at {out_url} is complete, skipping (fingerprint {fingerprint[:12]})")
            logger.info("graph at %s complete, skipping", out_url)
            return old
    _clear_outputs(fs, root, manifest_path)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if executor is None:
            if connection is None:
                connection = stack.enter_context(connect(address, n_workers=n_workers,
                                                         threads_per_worker=threads_per_worker))
            executor = stack.enter_context(make_executor(source, connection, num_threads=threads_per_worker))
        timings["connect"] = time.perf_counter() - t0
        logger.info("k-means: N=%d d=%d k=%d over %d chunks on %s", source.num_rows, source.dim, k,
                    source.num_chunks(), _executor_name(executor))
        t = time.perf_counter()
        km = fit_kmeans(executor, k, seed=seed, **_kmeans_kwargs(kmeans_params))
        timings["kmeans"] = time.perf_counter() - t
        t = time.perf_counter()
        anchor_ids, sqdists = executor.nearest(km.centroids, a)
        timings["nearest"] = time.perf_counter() - t
        executor_name = _executor_name(executor)
    t = time.perf_counter()
    graph = AnchorGraph.from_neighbors(anchor_ids, sqdists, k, rule=rule, **rule_params)
    timings["graph"] = time.perf_counter() - t

    t = time.perf_counter()
    video_ids = _read_video_ids(source)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    counts = np.asarray(km.counts, dtype=np.int64)
    _write_anchors(fs, vfs.join(fs, root, ANCHORS_FILE), centroids, counts)
    extra = _graph_columns(graph, anchor_ids)
    files, columns = _write_neighbors(fs, root, video_ids, anchor_ids, sqdists, extra, neighbors_rows_per_file)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    manifest = GraphManifest(
        k=k, a=a, d=int(source.dim), num_videos=int(source.num_rows), rule=rule,
        rule_params=_jsonable(rule_params), graph_params=_graph_meta(graph), seed=seed,
        kmeans=kmeans_params, inertia=float(km.inertia),
        inertia_history=[float(v) for v in km.inertia_history], counts=counts.tolist(),
        embeddings_url=embeddings_url, embeddings_manifest_hash=manifest_hash, embeddings_signature=signature,
        rows_per_chunk=int(getattr(source, "rows_per_chunk", max(chunking))), num_chunks=len(chunking),
        neighbor_files=files, neighbor_columns=columns, fingerprint=fingerprint,
        timings={key: round(v, 4) for key, v in timings.items()}, executor=executor_name,
    )
    vfs.write_json_atomic(fs, manifest_path, manifest.to_dict())  # last: marks the graph complete
    logger.info("wrote anchor graph (k=%d, a=%d, N=%d) to %s in %.1fs", k, a, source.num_rows, out_url,
                timings["total"])
    return manifest


def _check_rule(rule: str, rule_params: dict[str, Any], a: int) -> None:
    """Fail before k-means when the rule cannot be built from ``a`` anchors per video."""
    from vhindex.graph.anchor_graph import RULES

    if rule not in RULES:
        raise ValueError(f"unknown graph rule {rule!r}; use one of {list(RULES)}")
    need = 5 if rule == "bth" else int(rule_params.get("a", 3))
    if a < need:
        raise ValueError(f"rule {rule!r} needs {need} nearest anchors per video but a={a}; set a >= {need}")


def _kmeans_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """The k-means parameters ``fit_kmeans`` accepts (``None`` = its default)."""
    return {key: value for key, value in params.items() if value is not None}


def _read_video_ids(source: Any) -> list[str]:
    if hasattr(source, "read_video_ids"):
        return source.read_video_ids()
    return [str(i) for i in range(source.num_rows)]


def _outputs_present(fs: Any, root: str, manifest: GraphManifest) -> bool:
    """Whether every file the manifest lists is still there (else the graph is rebuilt)."""
    paths = [ANCHORS_FILE] + [f["path"] for f in manifest.neighbor_files]
    missing = [p for p in paths if not fs.exists(vfs.join(fs, root, *p.split("/")))]
    if missing:
        logger.warning("graph at %s lists missing files %s; rebuilding", vfs.unstrip(fs, root), missing)
    return not missing


def _clear_outputs(fs: Any, root: str, manifest_path: str) -> None:
    """Remove an old graph (manifest first, so a half-removed graph never reads as complete)."""
    if fs.exists(manifest_path):
        fs.rm(manifest_path)
    anchors = vfs.join(fs, root, ANCHORS_FILE)
    if fs.exists(anchors):
        fs.rm(anchors)
    neighbors = vfs.join(fs, root, NEIGHBORS_DIR)
    if fs.exists(neighbors):
        for entry in fs.ls(neighbors, detail=False):
            if str(entry).endswith(".parquet"):
                fs.rm(entry)
    fs.makedirs(neighbors, exist_ok=True)


def _graph_meta(graph: Any) -> dict[str, Any]:
    """The graph's JSON description (rule, resolved params, bandwidth sigma of every level, ...)."""
    _, meta = graph.to_arrays()
    return _jsonable(meta)


def _graph_columns(graph: Any, anchor_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The rule's per-video weights as ``weights_s{s}`` ``(N, s)`` columns, aligned with ``anchor_ids[:, :s]``.

    Each level keeps its weights ordered by anchor id; they are put back into nearest-first order
    here so that column ``c`` of ``weights_s{s}`` belongs to ``anchor_ids[:, c]``.
    """
    out: dict[str, np.ndarray] = {}
    for s_, level in sorted(getattr(graph, "levels", {}).items()):
        z = np.asarray(getattr(level, "z", None))
        s = int(s_)
        if z.ndim != 2 or z.shape != (anchor_ids.shape[0], s) or s > anchor_ids.shape[1]:
            continue
        order = np.argsort(anchor_ids[:, :s], axis=1, kind="stable")
        if not np.array_equal(np.take_along_axis(anchor_ids[:, :s], order, axis=1), level.ids):
            logger.warning("graph level s=%d is not aligned with the anchor lists; not storing its weights", s)
            continue
        nearest_first = np.empty_like(z)
        np.put_along_axis(nearest_first, order, z, axis=1)
        out[f"weights_s{s}"] = nearest_first
    return out


def _fixed_list(arr: np.ndarray, value_type: pa.DataType) -> pa.FixedSizeListArray:
    arr = np.ascontiguousarray(arr)
    return pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), type=value_type), arr.shape[1])


def _write_anchors(fs: Any, path: str, centroids: np.ndarray, counts: np.ndarray) -> None:
    k, d = centroids.shape
    table = pa.table(
        {
            "anchor_id": pa.array(np.arange(k, dtype=np.int32)),
            "centroid": _fixed_list(centroids, pa.float32()),
            "count": pa.array(counts.astype(np.int64)),
        },
        schema=pa.schema([
            pa.field("anchor_id", pa.int32(), nullable=False),
            pa.field("centroid", pa.list_(pa.float32(), d), nullable=False),
            pa.field("count", pa.int64(), nullable=False),
        ], metadata={b"vhindex": json.dumps({"format": GRAPH_FORMAT, "k": k, "d": d}).encode()}),
    )
    with fs.open(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def _write_neighbors(
    fs: Any, root: str, video_ids: list[str], anchor_ids: np.ndarray, sqdists: np.ndarray,
    extra: dict[str, np.ndarray], rows_per_file: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    n = len(video_ids)
    if anchor_ids.shape[0] != n:
        raise ValueError(f"nearest anchors for {anchor_ids.shape[0]} rows but {n} video ids were read; "
                         "the embeddings dataset changed during the build -- re-run")
    files = []
    columns = ["video_id", "anchor_ids", "sqdists", *extra]
    for index, start in enumerate(range(0, n, rows_per_file)):
        stop = min(n, start + rows_per_file)
        data = {
            "video_id": pa.array(video_ids[start:stop], type=pa.string()),
            "anchor_ids": _fixed_list(anchor_ids[start:stop].astype(np.int32), pa.int32()),
            "sqdists": _fixed_list(sqdists[start:stop].astype(np.float32), pa.float32()),
        }
        for name, arr in extra.items():
            value_type = pa.from_numpy_dtype(arr.dtype)
            data[name] = _fixed_list(arr[start:stop], value_type)
        name = f"{NEIGHBORS_DIR}/{NEIGHBOR_PART.format(index=index)}"
        with fs.open(vfs.join(fs, root, *name.split("/")), "wb") as fh:
            pq.write_table(pa.table(data), fh, compression="zstd")
        files.append({"path": name, "num_rows": stop - start})
    return files, columns


def load_graph(
    out_url: str, storage_options: dict[str, Any] | None = None, *, expected_dim: int | None = None,
) -> tuple[np.ndarray, Any, list[str], GraphManifest]:
    """Load a graph written by :func:`build_graph`.

    Args:
        out_url: the graph folder.
        storage_options: fsspec options.
        expected_dim: the embedding dimension the caller will use the anchors with (e.g. its
            embeddings dataset's ``dim``); a mismatch is an error.

    Returns:
        ``(anchors (k, d) float32, AnchorGraph, video_ids (N, in row order), GraphManifest)``.

    Raises:
        FileNotFoundError: when there is no ``graph.json`` (no complete graph at ``out_url``).
        ValueError: when the files disagree with the manifest or ``expected_dim`` differs.
    """
    from vhindex.graph.anchor_graph import AnchorGraph

    fs, root = vfs.url_to_fs(out_url, storage_options)
    manifest_path = vfs.join(fs, root, GRAPH_MANIFEST)
    if not fs.exists(manifest_path):
        raise FileNotFoundError(
            f"no complete anchor graph at {out_url}: {GRAPH_MANIFEST} is missing (the build did not finish); "
            "run `vhindex graph` to build it"
        )
    manifest = GraphManifest.from_dict(vfs.read_json(fs, manifest_path), source=vfs.unstrip(fs, manifest_path))
    if expected_dim is not None and expected_dim != manifest.d:
        raise ValueError(
            f"the anchors at {out_url} have d={manifest.d} dims but the embeddings have dim={expected_dim}; "
            "build the graph from these embeddings (or use the embeddings the graph was built from: "
            f"{manifest.embeddings_url})"
        )
    anchors_path = vfs.join(fs, root, ANCHORS_FILE)
    with fs.open(anchors_path, "rb") as fh:
        table = pq.read_table(fh)
    centroid_type = table.schema.field("centroid").type
    width = centroid_type.list_size if pa.types.is_fixed_size_list(centroid_type) else -1
    if table.num_rows != manifest.k or width != manifest.d:
        raise ValueError(f"{vfs.unstrip(fs, anchors_path)} holds {table.num_rows} anchors of {width} dims but "
                         f"{GRAPH_MANIFEST} says k={manifest.k}, d={manifest.d}; re-build the graph")
    anchors = np.ascontiguousarray(
        table.column("centroid").combine_chunks().flatten().to_numpy().reshape(manifest.k, manifest.d),
        dtype=np.float32,
    )
    ids: list[str] = []
    anchor_ids = np.empty((manifest.num_videos, manifest.a), np.int32)
    sqdists = np.empty((manifest.num_videos, manifest.a), np.float32)
    row = 0
    for f in manifest.neighbor_files:
        with fs.open(vfs.join(fs, root, *f["path"].split("/")), "rb") as fh:
            part = pq.read_table(fh, columns=["video_id", "anchor_ids", "sqdists"])
        n = part.num_rows
        if n != f["num_rows"] or row + n > manifest.num_videos:
            raise ValueError(f"{f['path']} in {out_url} has {n} rows, {GRAPH_MANIFEST} lists {f['num_rows']}; "
                             "re-build the graph")
        ids.extend(part.column("video_id").to_pylist())
        anchor_ids[row:row + n] = part.column("anchor_ids").combine_chunks().flatten().to_numpy().reshape(n, -1)
        sqdists[row:row + n] = part.column("sqdists").combine_chunks().flatten().to_numpy().reshape(n, -1)
        row += n
    if row != manifest.num_videos:
        raise ValueError(f"{out_url}: neighbors hold {row} rows, {GRAPH_MANIFEST} lists {manifest.num_videos}")
    graph = AnchorGraph.from_arrays({"anchor_ids": anchor_ids, "sqdists": sqdists}, manifest.graph_params)
    return anchors, graph, ids, manifest


def build_graph_from_config(cfg: Any, *, connection: Any = None) -> GraphManifest:
    """Run :func:`build_graph` with a :class:`vhindex.config.Config` (its ``graph`` and ``run`` sections).

    With ``graph.embeddings`` null and ``graph.synth`` set, seeded synthetic embeddings are
    written (or reused) at ``<run.output_dir>/embeddings`` first.
    """
    g = cfg.graph
    so = g.storage_options or None
    out = g.out or f"{cfg.run.output_dir.rstrip('/')}/graph"
    embeddings = g.embeddings
    if embeddings is None:
        if g.synth is None:
            raise ValueError("graph.embeddings is required: the URL of the embeddings dataset "
                             "(or set graph.synth to synthesize one for a demo)")
        embeddings = f"{cfg.run.output_dir.rstrip('/')}/embeddings"
        write_synthetic_embeddings(embeddings, num_videos=g.synth.num_videos, dim=g.synth.dim,
                                   num_clusters=g.synth.num_clusters, noise=g.synth.noise, seed=cfg.run.seed,
                                   storage_options=so)
    return build_graph(
        embeddings, out, k=g.k, a=g.a, rule=g.rule, rule_params=dict(g.rule_params),
        n_iter=g.kmeans.n_iter, init=g.kmeans.init, mode=g.kmeans.mode, init_sample=g.kmeans.init_sample,
        tol=g.kmeans.tol, batch_chunks=g.kmeans.batch_chunks, seed=cfg.run.seed, address=g.address, storage_options=so, n_workers=g.n_workers,
        threads_per_worker=g.threads_per_worker, rows_per_chunk=g.rows_per_chunk, connection=connection,
    )

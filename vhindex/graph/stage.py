"""The anchor-graph stage: k-means anchors -> each video's nearest anchors -> the graph, on disk.

Pure (no Dask, no Ray): :func:`build_graph` takes the :class:`~vhindex.config.GraphSection` (the
algorithm and the chunking) and an injected executor (where the maps run): the in-process
:func:`sequential_executor`, or the Dask / Dask-on-Ray executors of ``cluster.graph`` picked by the
app layer. Every executor reduces in chunk order, so all give the same bits. Output folder:

============================  ==============================================================
``anchors.parquet``           ``anchor_id`` int32, ``centroid`` fixed_size_list<float, d>,
                              ``count`` int64 (videos assigned in the last k-means pass)
``neighbors/part-*.parquet``  ``video_id`` string, ``anchor_ids`` fixed_size_list<int32, a>,
                              ``sqdists`` fixed_size_list<float, a> (nearest first), and
                              ``weights_s{s}`` fixed_size_list<float, s>: the rule's softmax
                              weights of level s, aligned with ``anchor_ids[:, :s]``
``graph.json``                the manifest (:class:`GraphManifest`), written **last**
============================  ==============================================================

:func:`load_graph` reads it back (checked against the manifest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import vhindex
from vhindex import fs as vfs
from vhindex.config import Config, GraphSection
from vhindex.data import EmbeddingDataset, EmbeddingDatasetMeta, EmbeddingDatasetWriter
from vhindex.graph.interfaces import GraphExecutor
from vhindex.graph.sequential import SequentialExecutor
from vhindex.graph.source import ParquetChunkSource, sha256_json

__all__ = [
    "GRAPH_FORMAT",
    "ExecutorFactory",
    "GraphManifest",
    "build_graph",
    "graph_urls",
    "load_graph",
    "sequential_executor",
    "write_synthetic_embeddings",
]

logger = logging.getLogger(__name__)

GRAPH_FORMAT = "vhindex.graph"
GRAPH_FORMAT_VERSION = 1
GRAPH_MANIFEST = "graph.json"
ANCHORS_FILE = "anchors.parquet"
NEIGHBORS_DIR = "neighbors"
NEIGHBOR_PART = "part-{index:05d}.parquet"


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
    version = sha256_json(spec)[:16]
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


#: what builds a graph: a ready executor, or a factory that opens one over a chunk source (only
#: called when the graph must be (re)built, so a complete graph never starts a cluster)
ExecutorFactory = Callable[[Any], AbstractContextManager[GraphExecutor]]


@contextlib.contextmanager
def sequential_executor(source: Any, num_threads: int | None = 1) -> Iterator[SequentialExecutor]:
    """An :data:`ExecutorFactory` running every map in this process (small data, tests)."""
    yield SequentialExecutor(source, num_threads=num_threads)


def build_graph(
    section: GraphSection,
    executor: GraphExecutor | ExecutorFactory,
    *,
    embeddings_url: str,
    out_url: str,
    seed: int,
    storage_options: dict[str, Any] | None = None,
    neighbors_rows_per_file: int = 100_000,
    overwrite: bool = False,
) -> GraphManifest:
    """Build the anchor graph of an embeddings dataset and write it to ``out_url``.

    K-means (:func:`vhindex.graph.kmeans.fit_kmeans`, driven through the executor) -> each video's
    ``section.nearest_anchors`` nearest anchors (one map over the chunks) -> :meth:`AnchorGraph.from_neighbors`
    on the client (``O(N a)``) -> ``anchors.parquet``, ``neighbors/part-*.parquet``, then ``graph.json``.
    Deterministic for a seed and chunking, whatever the executor (all reduce in chunk order). When
    ``graph.json`` exists with the same fingerprint (parameters + the input's content signature)
    nothing is recomputed ("complete, skipping") and no executor is opened.

    Args:
        section: the algorithm -- ``anchors`` (k), ``nearest_anchors`` (a), ``rule``, ``rule_params``,
            ``kmeans`` -- and the chunking (``rows_per_chunk``). Placement is the executor's business.
        executor: a :class:`~vhindex.graph.interfaces.GraphExecutor` over this dataset (its source's
            chunking is used), or an :data:`ExecutorFactory` (``source -> context manager``), e.g.
            :func:`sequential_executor` or ``cluster.graph.dask_executor_factory(section)``.
        embeddings_url: the embeddings dataset (:class:`vhindex.data.EmbeddingDataset`).
        out_url: the graph folder (any fsspec URL).
        seed: the k-means seed.
        storage_options: fsspec options for both URLs (default ``section.storage_options``).
        neighbors_rows_per_file: rows per ``neighbors/`` part file.
        overwrite: rebuild even when a matching graph exists.

    Returns:
        The :class:`GraphManifest` (also written as ``graph.json``).

    Raises:
        ValueError: more anchors than videos, ``nearest_anchors > anchors``, NaN / Inf embeddings
            (naming chunk, file and row), an empty dataset, bad parameters.
        vhindex.data.IncompleteDatasetError: the embeddings dataset has no manifest.
    """
    from vhindex.graph.anchor_graph import AnchorGraph
    from vhindex.graph.kmeans import fit_kmeans

    k, a, rule = section.anchors, section.nearest_anchors, section.rule
    so = storage_options if storage_options is not None else (section.storage_options or None)
    rule_params = dict(section.rule_params)
    _check_rule(rule, rule_params, a)
    ready = executor if hasattr(executor, "assign_reduce") else None
    source = ready.source if ready is not None else ParquetChunkSource(embeddings_url, so, section.rows_per_chunk)
    if source.num_rows < k:
        raise ValueError(
            f"graph.anchors={k} but the embeddings dataset {embeddings_url} has only N={source.num_rows} videos; "
            "lower graph.anchors to at most the number of videos"
        )
    km_section = section.kmeans
    kmeans_params = {"n_iter": km_section.n_iter, "init": km_section.init, "mode": km_section.mode,
                     "init_sample": km_section.init_sample, "tol": km_section.tol,
                     "batch_chunks": km_section.batch_chunks}
    manifest_hash = source.manifest_hash() if hasattr(source, "manifest_hash") else ""
    signature = source.content_signature() if hasattr(source, "content_signature") else manifest_hash
    chunking = [int(source.chunk_rows(i)) for i in range(source.num_chunks())]
    fingerprint = sha256_json({
        "format_version": GRAPH_FORMAT_VERSION, "k": k, "a": a, "rule": rule, "rule_params": _jsonable(rule_params),
        "seed": seed, "kmeans": kmeans_params, "chunking": chunking, "embeddings": signature,
    })

    fs, root = vfs.url_to_fs(out_url, so)
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
        ex = ready if ready is not None else stack.enter_context(executor(source))  # type: ignore[operator]
        timings["connect"] = time.perf_counter() - t0
        executor_name = str(getattr(ex, "name", type(ex).__name__))
        logger.info("k-means: N=%d d=%d k=%d over %d chunks on %s", source.num_rows, source.dim, k,
                    source.num_chunks(), executor_name)
        t = time.perf_counter()
        km = fit_kmeans(ex, k, seed=seed, **_kmeans_kwargs(kmeans_params))
        timings["kmeans"] = time.perf_counter() - t
        t = time.perf_counter()
        anchor_ids, sqdists = ex.nearest(km.centroids, a)
        timings["nearest"] = time.perf_counter() - t
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
        raise ValueError(f"rule {rule!r} needs {need} nearest anchors per video but graph.nearest_anchors={a}; "
                         f"set it to at least {need}")


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


def graph_urls(cfg: Config) -> tuple[str, str]:
    """``(embeddings URL, graph folder URL)`` of ``vhindex graph`` / ``jobs/build_graph.py``.

    With ``graph.embeddings`` null and ``graph.synth`` set, seeded synthetic embeddings are written
    (or reused) at ``<run.output_dir>/embeddings`` first.

    Raises:
        ValueError: ``graph.embeddings`` null without ``graph.synth``.
    """
    g = cfg.graph
    out = g.out or f"{cfg.run.output_dir.rstrip('/')}/graph"
    embeddings = g.embeddings
    if embeddings is None:
        if g.synth is None:
            raise ValueError("graph.embeddings is required: the URL of the embeddings dataset "
                             "(or set graph.synth to synthesize one for a demo)")
        embeddings = f"{cfg.run.output_dir.rstrip('/')}/embeddings"
        write_synthetic_embeddings(embeddings, num_videos=g.synth.num_videos, dim=g.synth.dim,
                                   num_clusters=g.synth.num_clusters, noise=g.synth.noise, seed=cfg.run.seed,
                                   storage_options=g.storage_options or None)
    return embeddings, out

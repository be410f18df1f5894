"""The anchor-graph stage (vhindex.graph.stage) on the Dask / Dask-on-Ray executors (cluster.graph)
against the in-process reference.

A real ``distributed.LocalCluster`` (2 workers x 1 thread, 127.0.0.1, no dashboard) is shared by
the module. Every executor must give the *same bits* as ``SequentialExecutor`` for the same
chunking and ``num_threads=1``: the per-chunk maps are the same pure functions and the small
results are reduced in chunk order on the client.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

# Ray on a shared box: no auth-token file, no usage stats (connect_ray pins it to loopback).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

pytest.importorskip("distributed")

from cluster.graph import DaskExecutor, connect, dask_executor_factory, make_executor  # noqa: E402
from vhindex.config import GraphSection  # noqa: E402
from vhindex.data import EmbeddingDatasetMeta, EmbeddingDatasetWriter, IncompleteDatasetError  # noqa: E402
from vhindex.graph.anchor_graph import AnchorGraph  # noqa: E402
from vhindex.graph.kmeans import fit_kmeans  # noqa: E402
from vhindex.graph.sequential import SequentialExecutor  # noqa: E402
from vhindex.graph.source import ParquetChunkSource  # noqa: E402
from vhindex.graph.stage import GraphManifest, load_graph  # noqa: E402
from vhindex.graph.stage import build_graph as build_graph_stage  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
N, D, CLUSTERS = 3000, 32, 25
ROWS_PER_CHUNK = 600  # row groups of 250 -> chunks of 500 rows (2 row groups), some crossing files
KM = {"n_iter": 6, "init": "k-means++", "tol": 0.0}


def build_graph(url: str, out: str, *, k: int = 2000, a: int = 5, rule: str = "bth", rows_per_chunk: int = 50_000,
                seed: int = 0, connection=None, storage_options=None, **kmeans) -> GraphManifest:
    """The stage with the algorithm in a GraphSection and the maps on ``connection`` (a Dask client / RayDask)."""
    section = GraphSection.model_validate({"anchors": k, "nearest_anchors": min(max(a, 5), k), "rule": rule,
                                           "rows_per_chunk": rows_per_chunk, "kmeans": kmeans})
    if section.nearest_anchors != a:  # the checks under test live in build_graph itself, not only in the config
        section = section.model_construct(**{**dict(section), "nearest_anchors": a})
    return build_graph_stage(section, dask_executor_factory(section, connection), embeddings_url=url, out_url=out,
                             seed=seed, storage_options=storage_options)


def _clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32) * 3
    return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)).astype(np.float32)).astype(np.float32)


def _write(url: str, x: np.ndarray, storage_options=None, row_group_size=250, rows_per_file=1250) -> list[str]:
    ids = [f"vid-{i:05d}" for i in range(len(x))]
    meta = EmbeddingDatasetMeta(dim=x.shape[1], source="test")
    with EmbeddingDatasetWriter(url, meta, rows_per_file=rows_per_file, row_group_size=row_group_size,
                                storage_options=storage_options) as w:
        for s in range(0, len(x), 700):
            w.write(ids[s:s + 700], x[s:s + 700])
    return ids


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x = _clustered(N, D, CLUSTERS, seed=1)
    url = str(tmp_path_factory.mktemp("emb") / "embeddings")
    ids = _write(url, x)
    return url, x, ids


@pytest.fixture(scope="module")
def client():
    with connect(None, n_workers=2, threads_per_worker=1) as c:
        yield c


@pytest.fixture(scope="module")
def source(data):
    return ParquetChunkSource(data[0], rows_per_chunk=ROWS_PER_CHUNK)


@pytest.fixture(scope="module")
def sequential_fit(source):
    return fit_kmeans(SequentialExecutor(source, num_threads=1), 20, seed=0, **KM)


def _assert_same_stats(a, b):
    assert np.array_equal(a.sums, b.sums) and np.array_equal(a.counts, b.counts)
    assert a.inertia == b.inertia and a.num_points == b.num_points


# ------------------------------------------------------------------------------------- executors


def test_chunk_source_reads_planned_row_groups(data, source):
    url, x, _ = data
    assert (source.num_rows, source.dim, source.num_chunks()) == (N, D, 6)
    assert [source.chunk_rows(i) for i in range(6)] == [500] * 6
    # chunk 2 spans files 0 and 1 (1250 rows per file)
    assert len(source.tasks[2].pieces) == 2
    clone = pickle.loads(pickle.dumps(source))
    assert clone._dataset is None and len(pickle.dumps(source)) < 20_000
    off = source.chunk_offsets()
    for i in range(source.num_chunks()):
        chunk = clone.load_chunk(i)
        assert chunk.dtype == np.float32 and chunk.flags.c_contiguous
        np.testing.assert_array_equal(chunk, x[off[i]:off[i + 1]])
    assert source.read_video_ids()[:2] == ["vid-00000", "vid-00001"]
    with pytest.raises(IndexError, match="out of range"):
        source.load_chunk(6)


def test_dask_executor_is_bit_identical_to_sequential(client, source, data):
    x = data[1]
    seq = SequentialExecutor(source, num_threads=1)
    rng = np.random.default_rng(3)
    centroids = x[rng.choice(N, 20, replace=False)] + 0.1
    with DaskExecutor(source, client, num_threads=1) as dex:
        _assert_same_stats(dex.assign_reduce(centroids), seq.assign_reduce(centroids))
        _assert_same_stats(dex.assign_reduce(centroids, [4, 1]), seq.assign_reduce(centroids, [4, 1]))
        rows = np.array([0, 499, 500, 1249, 1250, 2999])
        np.testing.assert_array_equal(dex.take_rows(rows), seq.take_rows(rows))
        for got, want in zip(dex.nearest(centroids, 5), seq.nearest(centroids, 5), strict=True):
            assert got.dtype == want.dtype and np.array_equal(got, want)
        # without the worker-side chunk cache (every task re-reads its row groups)
        nocache = DaskExecutor(source, client, num_threads=1, cache_chunks=False)
        _assert_same_stats(nocache.assign_reduce(centroids), seq.assign_reduce(centroids))
        with pytest.raises(ValueError, match=r"shape \(k, d=32\)"):
            dex.assign_reduce(centroids[:, :5])
    # connecting by address to a running scheduler (here: the module's cluster) works the same
    with connect(client.scheduler.address) as other, DaskExecutor(source, other, num_threads=1) as dex:
        _assert_same_stats(dex.assign_reduce(centroids), seq.assign_reduce(centroids))


def test_fit_kmeans_on_dask_equals_sequential(client, source, sequential_fit):
    # Exactly equal (no tolerance): same chunks, same per-chunk kernel with 1 faiss thread, same
    # float64 reduction order -> the same inertia at every step -> the same Lloyd path.
    with make_executor(source, client, num_threads=1) as dex:
        dask_fit = fit_kmeans(dex, 20, seed=0, **KM)
        assert np.array_equal(dask_fit.centroids, sequential_fit.centroids)
        assert np.array_equal(dask_fit.counts, sequential_fit.counts)
        assert dask_fit.inertia_history == sequential_fit.inertia_history
        ids, sq = dex.nearest(dask_fit.centroids, 5)
    sids, ssq = SequentialExecutor(source, num_threads=1).nearest(sequential_fit.centroids, 5)
    assert np.array_equal(ids, sids) and np.array_equal(sq, ssq)


# ------------------------------------------------------------------------------------------ stage


def test_build_graph_end_to_end(client, data, source, sequential_fit, tmp_path, capsys):
    url, _, vids = data
    out = str(tmp_path / "graph")
    params = dict(k=20, a=5, rows_per_chunk=ROWS_PER_CHUNK, seed=0, connection=client, **KM)
    manifest = build_graph(url, out, **params)
    assert (manifest.k, manifest.a, manifest.d, manifest.num_videos, manifest.rule) == (20, 5, D, N, "bth")
    assert set(manifest.graph_params["bandwidths"]) == {"3", "4", "5"}  # the BTH sigma values
    assert sum(manifest.counts) == N and len(manifest.inertia_history) == KM["n_iter"] + 1
    assert manifest.embeddings_url == url and len(manifest.embeddings_manifest_hash) == 64
    assert manifest.vhindex_version and set(manifest.timings) >= {"kmeans", "nearest", "graph", "write", "total"}
    # files
    anchors_tab = pq.read_table(tmp_path / "graph" / "anchors.parquet")
    assert anchors_tab.column_names == ["anchor_id", "centroid", "count"]
    assert anchors_tab.schema.field("centroid").type.list_size == D
    part = pq.read_table(tmp_path / "graph" / "neighbors" / "part-00000.parquet")
    assert part.column_names[:3] == ["video_id", "anchor_ids", "sqdists"]
    assert {"weights_s3", "weights_s4", "weights_s5"} <= set(part.column_names)
    w5 = np.stack(part.column("weights_s5").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(w5.sum(axis=1), 1.0, rtol=1e-5)  # softmax over the 5 anchors
    on_disk = json.loads((tmp_path / "graph" / "graph.json").read_text())
    assert GraphManifest.from_dict(on_disk) == manifest
    # load round trip; equal to the graph built sequentially from the same seed
    anchors, graph, ids, loaded = load_graph(out, expected_dim=D)
    assert loaded == manifest and ids == vids
    assert np.array_equal(anchors, sequential_fit.centroids)
    sids, ssq = SequentialExecutor(source, num_threads=1).nearest(sequential_fit.centroids, 5)
    reference = AnchorGraph.from_neighbors(sids, ssq, 20, rule="bth")
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, N, 20_000), rng.integers(0, N, 20_000)
    i[:50] = j[:50] = np.arange(50)  # some diagonal pairs
    assert np.array_equal(graph.tags(i, j), reference.tags(i, j))
    assert (reference.tags(i, j) != 0).any()
    # a re-run with the same parameters skips; another seed rebuilds
    capsys.readouterr()
    again = build_graph(url, out, **params)
    assert "complete, skipping" in capsys.readouterr().out and again == manifest
    (tmp_path / "graph" / "neighbors" / "part-00000.parquet").unlink()  # a lost output file -> rebuilt
    rebuilt = build_graph(url, out, **params)
    assert "skipping" not in capsys.readouterr().out
    assert dataclasses.replace(rebuilt, timings={}) == dataclasses.replace(manifest, timings={})  # deterministic
    assert (tmp_path / "graph" / "neighbors" / "part-00000.parquet").exists()
    other = build_graph(url, out, **{**params, "seed": 1})
    assert "skipping" not in capsys.readouterr().out
    assert other.fingerprint != manifest.fingerprint
    assert not np.array_equal(load_graph(out)[0], anchors)


def test_embeddings_on_s3(client, s3_server, data, sequential_fit):
    so = s3_server.storage_options
    url = s3_server.url("emb")
    _write(url, data[1], storage_options=so)
    out = s3_server.url("graph")
    manifest = build_graph(url, out, k=20, a=5, rows_per_chunk=ROWS_PER_CHUNK, seed=0, connection=client,
                           storage_options=so, **KM)
    anchors, _, ids, _ = load_graph(out, so)
    # same data and chunking as the local dataset -> the same anchors, bit for bit
    assert np.array_equal(anchors, sequential_fit.centroids) and len(ids) == N
    assert manifest.embeddings_url.startswith("s3://")


@pytest.mark.xdist_group("ray")
def test_dask_on_ray_gives_the_same_anchors(tmp_path, shared_ray):
    x = _clustered(400, 8, 6, seed=5)
    url = str(tmp_path / "emb")
    _write(url, x, row_group_size=100, rows_per_file=200)
    src = ParquetChunkSource(url, rows_per_chunk=100)
    ref = fit_kmeans(SequentialExecutor(src, num_threads=1), 6, seed=0, n_iter=3, init="k-means++", tol=0.0)
    with connect("ray") as conn:
        assert not conn.started_ray  # reuses the connection made above (the shared local Ray)
        manifest = build_graph(url, str(tmp_path / "graph"), k=6, a=5, rows_per_chunk=100, seed=0,
                               n_iter=3, tol=0.0, connection=conn)
    assert manifest.executor == "dask-on-ray"
    anchors, _, _, _ = load_graph(str(tmp_path / "graph"))
    assert np.array_equal(anchors, ref.centroids)


# ----------------------------------------------------------------------------------------- errors


def test_bad_inputs_give_clear_errors(client, data, tmp_path):
    url = data[0]
    out = str(tmp_path / "g")
    with pytest.raises(ValueError, match=r"graph.anchors=5000 but the embeddings dataset .* has only N=3000"):
        build_graph(url, out, k=5000, connection=client)
    with pytest.raises(ValueError, match=r"rule 'bth' needs 5 nearest anchors per video but graph.nearest_anchors=3"):
        build_graph(url, out, k=20, a=3, connection=client)
    with pytest.raises(IncompleteDatasetError, match="no _manifest.json"):
        build_graph(str(tmp_path / "nowhere"), out, k=20, connection=client)
    empty = str(tmp_path / "empty")
    EmbeddingDatasetWriter(empty, EmbeddingDatasetMeta(dim=4)).close()
    with pytest.raises(ValueError, match="is empty"):
        build_graph(empty, out, k=5, connection=client)
    # NaN in the data: the error (raised on a worker) names the chunk, the file and the row
    x = _clustered(600, 4, 3, seed=2)
    x[437, 1] = np.nan
    bad = str(tmp_path / "nan")
    _write(bad, x, row_group_size=100, rows_per_file=300)
    with pytest.raises(ValueError, match=r"chunk 1 of .*nan: .*part-00001\.parquet: row 137: embedding has NaN"):
        build_graph(bad, out, k=5, a=5, rows_per_chunk=300, connection=client, n_iter=2)
    with pytest.raises(FileNotFoundError, match="graph.json is missing"):
        load_graph(out)


def test_load_checks_the_dimension(client, tmp_path):
    x = _clustered(300, 6, 4, seed=3)
    url = str(tmp_path / "emb")
    _write(url, x, row_group_size=100, rows_per_file=300)
    out = str(tmp_path / "g")
    build_graph(url, out, k=8, a=5, rows_per_chunk=100, connection=client, n_iter=2)
    with pytest.raises(ValueError, match=r"anchors at .* have d=6 dims but the embeddings have dim=32"):
        load_graph(out, expected_dim=32)
    assert load_graph(out, expected_dim=6)[0].shape == (8, 6)


# -------------------------------------------------------------------------------------- CLI / job


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def test_cli_and_job_on_the_demo_config(tmp_path):
    small = ["graph.synth.num_videos=600", "graph.anchors=12", "graph.rows_per_chunk=200", "graph.kmeans.n_iter=3"]
    out = tmp_path / "run"
    proc = _run("-m", "vhindex.app.cli", "graph", "--config", "configs/graph/demo.yaml", f"run.output_dir={out}", *small)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "anchor graph: k=12 anchors, a=5 per video, N=600" in proc.stdout
    manifest = json.loads((out / "graph" / "graph.json").read_text())
    assert manifest["k"] == 12 and manifest["num_videos"] == 600
    # the job on the same outputs: parses, logs the resolved config, finds the graph complete
    proc = _run("jobs/build_graph.py", "--config", "configs/graph/demo.yaml", f"run.output_dir={out}", *small)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resolved config" in proc.stderr and "complete, skipping" in proc.stdout
    # a bad config is exit code 2; a missing input is exit code 1 with the reason
    proc = _run("jobs/build_graph.py", "--config", "configs/graph/demo.yaml", "graph.anchors=0")
    assert proc.returncode == 2 and "graph.anchors" in proc.stderr
    proc = _run("-m", "vhindex.app.cli", "graph", "--config", "configs/graph/fcvid.yaml", f"run.output_dir={out}")
    assert proc.returncode == 1 and "graph.embeddings is required" in proc.stderr

"""Extraction, encoding and the Dask-on-Ray anchor graph on a multi-node Ray cluster, a node lost mid-run (issue 19).

One private cluster for the module (:mod:`tests.ray_cluster`): a head with no CPUs (this process is
the jobs' driver there) and two worker nodes, ``node_a`` and ``node_b``, with 2 CPUs each, so every
actor and task runs on a worker node. Inputs and outputs live on the S3-compatible server (moto),
never on a node's disk. A node is lost by SIGKILL to all of its processes at once.

Oracles: the extractor run in this process (features), the model encoding in this process
(codes, bit for bit), the sequential k-means on the same chunks (centroids, bit for bit).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.ray_cluster import FAST_NODE_DEATH, RayCluster
from tests.test_pipelines_extract import PARAMS, _check_against_oracle, _exactly_once, clips, oracle  # noqa: F401
from vhindex.pipelines import run_sharded_job
from vhindex.pipelines.shards import SHARDS_DIR, STATS_NAME

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("rayhead")]

WORKERS = ("node_a", "node_b")


@pytest.fixture(scope="module")
def cluster(private_ray):
    """Head with 0 CPUs + node_a, node_b (2 CPUs each); a killed node is declared dead in ~3 s.

    Each test that kills a node adds a fresh one afterwards, so every test starts with two workers.
    """
    pytest.importorskip("psutil")
    rc = RayCluster.start(head_cpus=0, system_config=FAST_NODE_DEATH)
    try:
        for name in WORKERS:
            rc.add_node(name, num_cpus=2, resources={"worker": 1})
        rc.connect()
        yield rc
    finally:
        rc.stop()
    left = rc.pids()
    assert not left, f"processes of the test cluster survived stop(): {sorted(left)}"


def _live_workers(rc: RayCluster) -> list[str]:
    alive = rc.alive_node_ids()
    return [name for name, n in rc.nodes.items() if n.node_id in alive]


def _replace_lost_node(rc: RayCluster) -> None:
    """Bring the cluster back to two live worker nodes (a fresh node per loss)."""
    while len(_live_workers(rc)) < 2:
        rc.add_node(f"node_{len(rc.nodes) + 1}", num_cpus=2, resources={"worker": 1})
    rc.wait_nodes(alive=3, timeout=60)


def _markers(fs, out_url: str) -> list[dict]:
    import json

    root = out_url.split("://", 1)[1]
    fs.invalidate_cache()
    return [json.loads(fs.cat(p)) for p in fs.glob(f"{root}/{SHARDS_DIR}/*/{STATS_NAME}")]


def _run_in_thread(fn) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # noqa: BLE001 -- re-raised in the test thread
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _kill_mid_job(rc: RayCluster, fs, out_url: str, thread: threading.Thread, result: dict, total: int,
                  timeout_s: float = 240) -> tuple[str, int]:
    """Wait until shards finished on two nodes (the actors are spread), then kill the node that finished the
    first one. Returns (the node killed, shards finished at that moment)."""
    names = {n.node_id: name for name, n in rc.nodes.items()}
    deadline = time.monotonic() + timeout_s
    while True:
        done = _markers(fs, out_url)
        nodes = {m["node"] for m in done}
        if len(nodes) >= 2:
            break
        assert thread.is_alive(), (result, [(m["shard"], m["node"][:8], m["worker"]) for m in done])
        assert time.monotonic() < deadline, f"shards not finished on two nodes within {timeout_s} s: {nodes}"
        time.sleep(0.05)
    assert nodes <= {rc.nodes[w].node_id for w in _live_workers(rc)}, (nodes, names)
    victim = names[done[0]["node"]]
    rc.kill_node(victim)
    done_at_kill = len(_markers(fs, out_url))
    assert done_at_kill < total, "every shard finished before the kill; make the job longer"
    return victim, done_at_kill


def test_extraction_finishes_on_the_remaining_node_with_every_video_in_exactly_one_row(
        cluster, clips, oracle, s3_server):  # noqa: F811 (the fixtures imported above)
    """Real videos on S3, 21 one-video shards on a 2-actor pool spread over 2 nodes; one node SIGKILLed
    mid-job: the job completes, and every video is in exactly one row, equal to the in-process extractor."""
    import fsspec

    from cluster.data import ray_engine
    from vhindex.config import PipelineSection
    from vhindex.pipelines.extract import ExtractJob, VideoInput, read_listing

    so = s3_server.storage_options
    fs = fsspec.filesystem("s3", **so)
    prefix = s3_server.url()
    for path in sorted(Path(clips).iterdir()):
        fs.put(str(path), f"{prefix}/videos/{path.name}")
    copies = 3
    inputs = [VideoInput(f"{v.video_id}__c{c}", v.uri) for c in range(copies)
              for v in read_listing(f"{prefix}/videos", storage_options=so)]
    out = f"{prefix}/feats"
    job = ExtractJob(inputs, out, PARAMS, videos_per_shard=1, storage_options=so)
    total = len(job.plan())
    engine = ray_engine(PipelineSection(actors=2, min_actors=2, cpus_per_actor=1.0, resources={"worker": 0.01}))
    thread, result = _run_in_thread(lambda: run_sharded_job(job, engine, engine_name="ray", max_error_fraction=0.5,
                                                            stream=None))
    victim, done_at_kill = _kill_mid_job(cluster, fs, out, thread, result, total)
    thread.join(timeout=400)
    assert not thread.is_alive() and "error" not in result, result
    report = result["value"]
    assert report.complete and report.ok == 5 * copies and report.errors == 2 * copies and report.exit_code == 0
    feats, errors = _exactly_once(job)
    for c in range(copies):
        suffix = f"__c{c}"
        _check_against_oracle({k[:-len(suffix)]: v for k, v in feats.items() if k.endswith(suffix)},
                              {k[:-len(suffix)]: v for k, v in errors.items() if k.endswith(suffix)}, oracle)
    survivor = next(w for w in WORKERS if w != victim) if victim in WORKERS else None
    late = [m for m in _markers(fs, out) if m["finished_at"] > 0]
    assert len(late) == total
    if survivor:
        assert any(m["node"] == cluster.nodes[survivor].node_id for m in late)
    print(f"\n[multinode] extraction: node {victim} lost after {done_at_kill}/{total} shards; job complete")
    _replace_lost_node(cluster)


def test_encoding_finishes_on_the_remaining_node_with_the_same_codes(cluster, s3_server, tmp_path):
    """400 videos' frame features on S3, 80 shards on 2 actors on 2 nodes; one node SIGKILLed mid-job: the
    codes equal the in-process encoding bit for bit, one row per video."""
    import fsspec

    from cluster.data import ray_engine
    from tests.test_pipelines_encode import _fit, _write_frames
    from vhindex.config import PipelineSection
    from vhindex.data import CodesDataset, FrameDataset
    from vhindex.inprocess import encode_in_memory
    from vhindex.models import load_model
    from vhindex.pipelines import EncodeJob

    so = s3_server.storage_options
    fs = fsspec.filesystem("s3", **so)
    prefix = s3_server.url()
    frames = _write_frames(tmp_path / "frames", 400, seed=4)
    model = _fit("itq", frames, tmp_path / "itq")
    fs.put(str(tmp_path / "frames"), f"{prefix}/frames", recursive=True)
    fs.put(model, f"{prefix}/itq", recursive=True)
    job = EncodeJob(f"{prefix}/frames", f"{prefix}/itq", out_root=f"{prefix}/codes", rows_per_shard=5, threads=1,
                    storage_options=so)
    total = len(job.plan())
    engine = ray_engine(PipelineSection(actors=2, min_actors=2, cpus_per_actor=1.0, resources={"worker": 0.01}))
    thread, result = _run_in_thread(lambda: run_sharded_job(job, engine, engine_name="ray", stream=None))
    victim, done_at_kill = _kill_mid_job(cluster, fs, job.output.url, thread, result, total)
    thread.join(timeout=400)
    assert not thread.is_alive() and "error" not in result, result
    report = result["value"]
    assert report.complete and report.ok == 400 and report.errors == 0 and report.exit_code == 0
    ids, codes = CodesDataset.open(job.output.url, so).read_all()
    want_ids, want_codes = encode_in_memory(load_model(model), FrameDataset.open(str(tmp_path / "frames")))
    assert ids == want_ids and np.array_equal(codes, want_codes)
    print(f"\n[multinode] encoding: node {victim} lost after {done_at_kill}/{total} shards; codes equal")
    _replace_lost_node(cluster)


def test_kmeans_on_dask_on_ray_gives_the_same_centroids_after_a_node_is_lost(cluster, s3_server, tmp_path):
    """The anchor graph's k-means as Dask-on-Ray tasks over 24 chunks on S3; a worker node SIGKILLed while
    iterations run: the centroids (and nearest anchors) equal the sequential oracle's, bit for bit."""
    from cluster.graph import connect
    from tests.test_cluster_graph import _clustered, _write, build_graph
    from vhindex.graph.kmeans import fit_kmeans
    from vhindex.graph.sequential import SequentialExecutor
    from vhindex.graph.source import ParquetChunkSource
    from vhindex.graph.stage import load_graph

    so = s3_server.storage_options
    x = _clustered(4800, 16, 24, seed=9)
    local = str(tmp_path / "emb")
    _write(local, x, row_group_size=200, rows_per_file=1200)
    prefix = s3_server.url()  # a fresh prefix: other tests of the session use the same bucket
    url = f"{prefix}/emb"
    import fsspec

    fsspec.filesystem("s3", **so).put(local, url, recursive=True)
    km = dict(n_iter=30, tol=0.0)
    ref = fit_kmeans(SequentialExecutor(ParquetChunkSource(local, rows_per_chunk=200), num_threads=1), 24, seed=0,
                     init="k-means++", **km)

    victim = "node_a" if "node_a" in _live_workers(cluster) else _live_workers(cluster)[0]
    victim_id = cluster.nodes[victim].node_id
    out = f"{prefix}/graph"

    def build():
        with connect("ray") as conn:
            return build_graph(url, out, k=24, a=5, rows_per_chunk=200, seed=0, connection=conn,
                               storage_options=so, **km)

    from ray.util.state import list_tasks

    def tasks_on_victim() -> list:
        return list_tasks(address=cluster.head.dashboard_url, filters=[("node_id", "=", victim_id)], limit=10_000,
                          raise_on_missing_output=False)

    before = {t.task_id for t in tasks_on_victim()}  # earlier tests' tasks on that node do not count
    t0 = time.monotonic()
    thread, result = _run_in_thread(build)
    deadline = time.monotonic() + 120
    while len({t.task_id for t in tasks_on_victim()} - before) < 5:  # kill once it ran k-means tasks, mid-run
        assert thread.is_alive(), f"the graph finished before the victim ran 5 tasks; make it longer: {result}"
        assert time.monotonic() < deadline, "no k-means task ran on the victim node within 120 s"
        time.sleep(0.3)
    killed_after = time.monotonic() - t0
    assert thread.is_alive(), f"the graph finished before the kill; make it longer: {result}"
    cluster.kill_node(victim)
    thread.join(timeout=400)
    took = time.monotonic() - t0
    assert not thread.is_alive() and "error" not in result, result
    assert result["value"].executor == "dask-on-ray"
    on_victim = [t for t in tasks_on_victim() if t.task_id not in before]
    anchors, _, ids, _ = load_graph(out, so)
    assert np.array_equal(anchors, ref.centroids) and len(ids) == 4800
    print(f"\n[multinode] dask-on-ray k-means: node {victim} lost {killed_after:.1f} s into a {took:.1f} s run, "
          f"{len(on_victim)} tasks had run there; centroids equal")
    _replace_lost_node(cluster)

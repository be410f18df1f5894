"""`ray job submit jobs/train_dkph.py` on a multi-node Ray cluster, the training worker's node lost (issue 19).

A private cluster on 127.0.0.1 (:mod:`tests.ray_cluster`): a head with no CPUs (the job's driver runs
there and needs none) and 1-CPU worker nodes, so the single Ray Train worker always sits on a worker
node. The run folder -- synthetic data, checkpoints, model, codes -- is on the S3-compatible server
(moto). A node is lost by SIGKILL to all of its processes at once.

1. ``train.max_failures=0``: the training worker's node is killed mid-teacher -> the job FAILS and its
   error names the lost node.
2. The same command resubmitted with ``train.max_failures=1``: it resumes after the last checkpoint on S3;
   the worker's node is killed again mid-student -> Ray Train restarts the worker group on a surviving
   node, which resumes from the checkpoint; the job succeeds.
3. Oracle: the same recipe run uninterrupted in one process (``train.backend=local``, local folder):
   the codes of the query and database splits and the student's weights are equal, bit for bit.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.ray_cluster import FAST_NODE_DEATH, RayCluster, _node_processes

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("rayhead")]

REPO = Path(__file__).resolve().parents[1]
DEMO = "configs/train/demo.yaml"
SCHEDULE = ["train.teacher_epochs=6", "train.epochs=4", "train.batch_size=8"]


@pytest.fixture(scope="module")
def cluster(private_ray, s3_server):
    """Head (0 CPUs) + node_a, node_b (1 CPU each); started after the S3 server so that every process of the
    cluster -- the job's driver too -- has its credentials in the environment."""
    pytest.importorskip("psutil")
    pytest.importorskip("torch")
    rc = RayCluster.start(head_cpus=0, system_config=FAST_NODE_DEATH)
    try:
        for name in ("node_a", "node_b"):
            rc.add_node(name, num_cpus=1)
        rc.connect()
        yield rc
    finally:
        rc.stop()
    left = rc.pids()
    assert not left, f"processes of the test cluster survived stop(): {sorted(left)}"


def _storage_overrides(so: dict) -> list[str]:
    return [f"run.storage_options.key={so['key']}", f"run.storage_options.secret={so['secret']}",
            f"run.storage_options.client_kwargs.endpoint_url={so['client_kwargs']['endpoint_url']}",
            f"run.storage_options.client_kwargs.region_name={so['client_kwargs']['region_name']}"]


def _trainer_node(rc: RayCluster, timeout_s: float = 120) -> str:
    """The worker node running the Ray Train worker (found by its process)."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = rc.alive_node_ids()
        for name, node in rc.nodes.items():
            if node.node_id not in alive:
                continue
            for proc in _node_processes(node.proc):
                try:
                    if "RayTrainWorker" in " ".join(proc.cmdline()):
                        return name
                except psutil.Error:
                    continue
        time.sleep(0.1)
    raise AssertionError(f"no Ray Train worker process on any node within {timeout_s} s")


def _wait_epoch(fs, ckpt: str, epoch: int, job: str, rc: RayCluster, timeout_s: float = 300) -> int:
    """Wait until the stage checkpoint at ``ckpt`` holds ``epoch`` (or later) while the job runs."""
    deadline = time.monotonic() + timeout_s
    next_check = 0.0
    while True:
        fs.invalidate_cache()
        if fs.exists(f"{ckpt}/latest.json"):
            got = json.loads(fs.cat(f"{ckpt}/latest.json"))["epoch"]
            if got >= epoch:
                return got
        if time.monotonic() > next_check:
            status = rc.head.job_status(job)
            assert status in ("PENDING", "RUNNING"), status + _logs(rc, job)[-3000:]
            assert time.monotonic() < deadline, f"{ckpt} did not reach epoch {epoch} within {timeout_s} s"
            next_check = time.monotonic() + 1.0
        time.sleep(0.05)


def _logs(rc: RayCluster, job: str) -> str:
    return rc.head.ray("job", "logs", "--address", rc.head.dashboard_url, job).stdout


def _wait_done(rc: RayCluster, job: str, timeout_s: float = 400) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := rc.head.job_status(job)) in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, f"job {job} still {status} after {timeout_s} s"
        time.sleep(0.5)
    return status


def test_a_lost_training_node_fails_the_job_or_restarts_from_the_s3_checkpoint(cluster, s3_server, tmp_path):
    import fsspec

    so = s3_server.storage_options
    fs = fsspec.filesystem("s3", **so)
    run = f"{s3_server.url()}/train-run"  # a fresh prefix: the bucket is shared by the session
    root = run.split("://", 1)[1]
    entry = ["python", "jobs/train_dkph.py", "--config", DEMO, f"run.output_dir={run}", "train.backend=ray",
             *SCHEDULE, *_storage_overrides(so)]

    # 1) max_failures=0: the node is lost mid-teacher -> the job fails, naming the node
    first = f"vhindex-mn-{uuid.uuid4().hex[:8]}"
    sub = cluster.head.submit_job([*entry, "train.max_failures=0"], working_dir=REPO, submission_id=first,
                                  extra_args=["--no-wait"], timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    _wait_epoch(fs, f"{root}/teacher/ckpt", 0, first, cluster)
    victim = _trainer_node(cluster)
    victim_id = cluster.nodes[victim].node_id
    t_kill = time.monotonic()
    cluster.kill_node(victim)
    assert _wait_done(cluster, first) == "FAILED"
    failed_after = time.monotonic() - t_kill
    logs = _logs(cluster, first)
    assert "Ray Train stage 'teacher'" in logs and victim_id in logs, logs[-4000:]
    killed_at = json.loads(fs.cat(f"{root}/teacher/ckpt/latest.json"))["epoch"]
    assert killed_at < 5, "the teacher finished before the kill; make it longer"
    cluster.add_node("node_c", num_cpus=1)  # back to two worker nodes

    # 2) resubmitted with max_failures=1: resumes from S3; the node is lost mid-student -> restart, success
    second = f"vhindex-mn-{uuid.uuid4().hex[:8]}"
    sub = cluster.head.submit_job([*entry, "train.max_failures=1"], working_dir=REPO, submission_id=second,
                                  extra_args=["--no-wait"], timeout=120)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    _wait_epoch(fs, f"{root}/student/ckpt", 0, second, cluster)
    victim2 = _trainer_node(cluster)
    t_kill2 = time.monotonic()
    cluster.kill_node(victim2)
    assert _wait_done(cluster, second) == "SUCCEEDED", _logs(cluster, second)[-5000:]
    recovered_after = time.monotonic() - t_kill2
    logs = _logs(cluster, second)
    assert f"resuming after epoch {killed_at}" in logs, logs[-4000:]  # the teacher, from the first job's checkpoint
    assert "dkph: resuming at epoch" in logs, logs[-4000:]  # the restarted worker group, from the checkpoint
    for stage, epochs in (("teacher", 6), ("student", 4)):
        assert json.loads(fs.cat(f"{root}/{stage}/ckpt/latest.json"))["epoch"] == epochs - 1

    # 3) the oracle: the same recipe, uninterrupted, in one process with the Ray workers' environment (one
    #    intra-op thread: another thread count sums in another order and moves the last bits of the weights)
    import subprocess
    import sys

    from tests.ray_head import ray_env
    from vhindex.data import CodesDataset
    from vhindex.models import load_model

    local = tmp_path / "oracle"
    proc = subprocess.run([sys.executable, "jobs/train_dkph.py", "--config", DEMO, "--no-progress",
                           f"run.output_dir={local}", "train.backend=local", *SCHEDULE], cwd=REPO, env=ray_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for split in ("query", "database"):
        ids, codes = CodesDataset.open(f"{run}/codes/{split}", so).read_all()
        want_ids, want_codes = CodesDataset.open(str(local / "codes" / split)).read_all()
        assert ids == want_ids and np.array_equal(codes, want_codes), split
    got, want = load_model(f"{run}/model", so), load_model(str(local / "model"))
    for (name, a), (_, b) in zip(got.net.state_dict().items(), want.net.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and bool((a == b).all()), f"student weight {name} differs"
    print(f"\n[multinode] train: max_failures=0 job failed {failed_after:.1f} s after its node was lost (named "
          f"{victim_id[:12]}); resubmitted job, node lost mid-student, finished {recovered_after:.1f} s after "
          "the kill; codes and weights equal the uninterrupted run")

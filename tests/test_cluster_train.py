"""jobs/train_dkph.py and cluster.train: config errors (exit 2), kill + resume, and `ray job submit` on a private head."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.job_helpers import sigkill_after_first_checkpoint
from tests.ray_head import RayHead, ray_env

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "train_dkph.py"
DEMO = "configs/train/demo.yaml"


def _run_job(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = ray_env()
    return subprocess.run([sys.executable, str(JOB), "--config", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _main(argv: list[str]) -> int:
    """``jobs/train_dkph.py``'s ``main`` in this process (faster than a subprocess for the config checks)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_dkph_job", JOB)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> str:
    """The demo config's synthetic frame datasets (train / query / database) in a folder."""
    from vhindex.config import load_config
    from vhindex.data.synth import ensure_synthetic

    url = str(tmp_path_factory.mktemp("tiny-data"))
    ensure_synthetic(load_config(REPO / DEMO), url)
    return url


# ------------------------------------------------------------------------------ config errors -> exit 2


def test_bad_bits_exits_2_naming_the_key(tmp_path):
    proc = _run_job(DEMO, f"run.output_dir={tmp_path}", "model.bits=12", timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.bits" in proc.stderr and "multiple of 8" in proc.stderr
    assert not (tmp_path / "teacher").exists()


@pytest.mark.parametrize("case", ["feature_dim", "num_frames", "missing_path", "partial_urls", "paper_without_data"])
def test_data_problems_exit_2_before_training(case, tiny_data, tmp_path, capsys):
    urls = [f"data.train={tiny_data}/train", f"data.query={tiny_data}/query", f"data.database={tiny_data}/database"]
    config, extra, key = DEMO, [], ""
    if case == "feature_dim":
        extra, key = [*urls, "model.params.feature_dim=32"], "model.params.feature_dim=32"
    elif case == "num_frames":
        extra, key = [*urls, "model.params.num_frames=25"], "model.params.num_frames=25"
    elif case == "missing_path":
        extra, key = [f"data.train={tmp_path}/nope", *urls[1:]], "data.train"
    elif case == "partial_urls":
        extra, key = urls[:1], "data.query, data.database"
    else:
        config, key = "configs/train/fcvid.yaml", "data.train, data.query, data.database: required"
    rc = _main(["--config", config, f"run.output_dir={tmp_path}/run", *extra])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert key in err, err
    assert not (tmp_path / "run" / "teacher").exists()  # nothing trained


def test_unknown_config_key_exits_2(tmp_path, capsys):
    assert _main(["--config", DEMO, f"run.output_dir={tmp_path}", "train.epochz=3"]) == 2
    assert "train.epochz" in capsys.readouterr().err


# ------------------------------------------------------------------------------ kill + resume


def _epoch_lines(stdout: str, stage: str) -> list[int]:
    return [int(m) for m in re.findall(rf"^{stage} epoch (\d+)/\d+:", stdout, flags=re.MULTILINE)]


@pytest.mark.slow
def test_killed_job_resumes_after_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    teacher_epochs = 20
    args = [str(JOB), "--config", DEMO, f"run.output_dir={out}", "train.backend=local",
            f"train.teacher_epochs={teacher_epochs}", "train.batch_size=16", "train.epochs=2"]
    pointer = out / "teacher" / "ckpt" / "latest.json"
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 180
        while not pointer.exists():
            assert proc.poll() is None, f"the job exited ({proc.returncode}) before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        first_out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(pointer.read_text())["epoch"]  # 0-based, read after the kill: final
    assert killed_at < teacher_epochs - 1, "the teacher finished before the kill; make it longer"
    assert not (out / "teacher" / "_stage.json").exists()

    second = subprocess.run([sys.executable, *args], cwd=REPO, env=ray_env(), capture_output=True, text=True,
                            timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    # the resumed run starts at the epoch after the last checkpoint (1-based in the log lines) ...
    assert f"teacher: resuming at epoch {killed_at + 2}/{teacher_epochs}" in second.stdout, second.stdout[:2000]
    ran = _epoch_lines(second.stdout, "teacher")
    assert ran == list(range(killed_at + 2, teacher_epochs + 1)), ran
    # ... and the metrics history has every epoch exactly once
    history = [json.loads(line) for line in (out / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == list(range(teacher_epochs))
    assert json.loads(pointer.read_text())["epoch"] == teacher_epochs - 1
    assert "stages={'teacher': 'ran'" in second.stdout
    assert (out / "eval" / "results.json").exists() and (out / "model").exists()

    # a third run finds everything complete
    third = _run_job(*args[2:])
    assert third.returncode == 0, third.stderr[-3000:]
    assert "'teacher': 'skipped'" in third.stdout and "'student': 'skipped'" in third.stdout
    assert "'eval': 'skipped'" in third.stdout


# ------------------------------------------------------------------------------ ray job submit


def _processes(head: RayHead, *needles: str) -> list:
    import psutil

    found = []
    for pid in head.pids():
        try:
            proc = psutil.Process(pid)
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if all(n in cmdline for n in needles):
            found.append(proc)
    return found


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("rayhead")
def test_ray_job_submit_killed_and_resubmitted_resumes_on_ray_train(tmp_path):
    """`ray job submit` on a private head; SIGKILL the job's driver mid-teacher; the same submission resumes."""
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    out = tmp_path / "run"
    # the driver is killed right after the first checkpoint (~1 s per epoch here), so 6 epochs leave
    # room for the kill and keep the resumed run short (each epoch is a Ray Train report + checkpoint)
    teacher_epochs = 6
    entry = ["python", "jobs/train_dkph.py", "--config", DEMO, f"run.output_dir={out}",
             f"train.teacher_epochs={teacher_epochs}", "train.batch_size=8"]
    pointer = out / "teacher" / "ckpt" / "latest.json"
    t0 = time.monotonic()
    head = RayHead.start(num_cpus=2)
    try:
        assert head.pids(), "no processes found for the head's temp dir"
        # 1) submit without waiting, kill the driver once the teacher has a checkpoint
        first_id = f"vhindex-test-{uuid.uuid4().hex[:8]}"
        sub = head.submit_job(entry, working_dir=REPO, submission_id=first_id, extra_args=["--no-wait"], timeout=120)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        deadline = time.monotonic() + 240
        next_check = 0.0
        while not pointer.exists():
            if time.monotonic() > next_check:  # the job must still be running (not every 10 ms: HTTP)
                assert time.monotonic() < deadline, "no teacher checkpoint within 240 s"
                status = head.job_status(first_id)
                assert status in ("PENDING", "RUNNING"), \
                    status + head.ray("job", "logs", "--address", head.dashboard_url, first_id).stdout[-3000:]
                next_check = time.monotonic() + 1.0
            time.sleep(0.01)
        t_kill = time.monotonic()
        drivers = _processes(head, "jobs/train_dkph.py", f"run.output_dir={out}")
        assert drivers, "the job's driver process was not found"
        for proc in drivers:
            proc.kill()
        while head.job_status(first_id) in ("PENDING", "RUNNING"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # the job's Train controller / workers die with their driver; wait so that no two runs overlap
        while _processes(head, "RayTrainWorker") or _processes(head, "TrainController"):
            assert time.monotonic() < deadline, "the killed job's Ray Train workers did not go away"
            time.sleep(0.2)
        killed_at = json.loads(pointer.read_text())["epoch"]
        print(f"killed the driver at {t_kill - t0:.1f}s after the head started; cleaned up after "
              f"{time.monotonic() - t_kill:.1f}s; last checkpoint: epoch {killed_at}")
        assert killed_at < teacher_epochs - 1, "the teacher finished before the kill; make it longer"

        # 2) the same submission again: resumes after the last checkpoint and finishes
        job_id = f"vhindex-test-{uuid.uuid4().hex[:8]}"
        proc = head.submit_job(entry, working_dir=REPO, submission_id=job_id, timeout=400)
        text = proc.stdout + proc.stderr
        assert f"Job '{job_id}' succeeded" in text, text[-5000:]
        assert head.job_status(job_id) == "SUCCEEDED"
        print(f"resubmitted job done at {time.monotonic() - t0:.1f}s")
    finally:
        head.stop()
    left = head.pids()
    assert not left, f"processes of the test Ray head survived: {sorted(left)}"

    assert f"Ray Train stage teacher: 1 worker(s) (gpu=False), run 'teacher' at {out}/ray, resuming after epoch " \
           f"{killed_at}" in text, text[-5000:]
    assert f"teacher: resuming at epoch {killed_at + 2}/{teacher_epochs}" in text  # printed by the worker's loop
    # the stages ran on Ray Train (not in the job driver) and wrote everything
    result = re.search(r"RESULT model=(\S+) eval=(\S+) stages=(\{.*?\})", text)
    assert result, text[-3000:]
    assert "'teacher': 'ray'" in result.group(3) and "'student': 'ray'" in result.group(3)
    for stage, epochs in (("teacher", teacher_epochs), ("student", 3)):
        assert json.loads((out / stage / "ckpt" / "latest.json").read_text())["epoch"] == epochs - 1
        history = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in history] == list(range(epochs))
        assert all(m["world_size"] == 1 for m in history)
    for split in ("query", "database"):
        assert (out / "codes" / split / "_manifest.json").exists()
    assert json.loads((out / "eval" / "results.json").read_text())
    assert (out / "model").is_dir()
    # Ray's own copy of the newest checkpoint (bookkeeping; the fsspec one is the resume source)
    ray_ckpts = sorted((out / "ray" / "dkph").glob("dkph-epoch-*"))
    assert ray_ckpts and (ray_ckpts[-1] / "latest.json").exists(), list((out / "ray").rglob("*"))[:20]


def test_ray_storage_and_paths(tmp_path, monkeypatch, private_ray):  # "auto" = local only when not attached
    from cluster.train import absolutize_paths, ray_storage, resolve_backend
    from vhindex.config import load_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = absolutize_paths(load_config(REPO / DEMO, ["run.output_dir=rel/run", "data.train=d/train"]))
    assert cfg.run.output_dir == str(tmp_path / "rel" / "run") and cfg.data.train == str(tmp_path / "d" / "train")
    assert ray_storage(cfg) == (str(tmp_path / "rel" / "run" / "ray"), None)
    with pytest.raises(ValueError, match="in-memory"):
        ray_storage(load_config(REPO / DEMO, ["run.output_dir=memory://x"]))
    assert resolve_backend(cfg) == "local"
    assert resolve_backend(load_config(REPO / DEMO, ["train.backend=ray"])) == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    if __import__("importlib").util.find_spec("ray") is not None:
        assert resolve_backend(cfg) == "ray"
    assert resolve_backend(load_config(REPO / DEMO, ["train.backend=local"])) == "local"


# ------------------------------------------------------------------------------ contrastive models

TINY_GCMH = ["model.name=gcmh", "model.bits=16",
             # its own anchor count and within-group kNN partners: the rebuilt graph must resume exactly too
             "model.params={num_frames: 8, feature_dim: 64, width: 32, depth: 1, heads: 2, dec_width: 16, "
             "neighbour_anchors: 6, neighbour_k: 2}",
             "train.batch_size=32", "train.lr=1.0e-3", "train.backend=local"]


TINY_MCMSH = ["model.name=mcmsh", "model.bits=16", "train.batch_size=32", "train.lr=1.0e-3", "train.backend=local"]
TINY_NPH = ["model.name=nph", "model.bits=16", "model.params.memory=32", "model.params.lstm_hidden=32",
            "model.params.key_dim=32", "train.batch_size=32", "train.lr=1.0e-3", "train.backend=local"]
TINY_DVHCM = ["model.name=dvhcm", "model.bits=16", "model.params={num_frames: 8, feature_dim: 64, num_classes: 8, hidden: 32}",
              "train.batch_size=32", "train.lr=1.0e-2", "train.backend=local"]
NEW_MODELS = {  # model -> (its settings, the loss terms its metrics must carry)
    "dvhcm": (TINY_DVHCM, {"loss_ce", "loss_intra"}),
    "nph": (TINY_NPH, {"loss_s", "loss_vr", "loss_nr"}),
    "gcmh": (TINY_GCMH, {"loss_recon", "loss_contrast", "loss_neighbour", "loss_balance", "loss_decorrelation"}),
    "mcmsh": (TINY_MCMSH, {"loss_cluster", "loss_sim", "loss_q", "loss_quad"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEW_MODELS))
def test_killed_job_of_a_new_model_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, name):
    """The new models train through the one loop: SIGKILL after a checkpoint, re-run, and the final model is
    bit-identical to a run that was never interrupted (same version hash)."""
    settings, terms = NEW_MODELS[name]
    epochs = 12
    out = tmp_path / "killed"
    args = [str(JOB), "--config", DEMO, f"run.output_dir={out}", *settings, f"train.epochs={epochs}"]
    pointer = out / name / "student" / "ckpt" / "latest.json"
    killed_at = sigkill_after_first_checkpoint([sys.executable, *args], pointer, cwd=REPO, env=ray_env())
    assert killed_at < epochs - 1, "the run finished before the kill; make it longer"
    resumed = _run_job(DEMO, f"run.output_dir={out}", *settings, f"train.epochs={epochs}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{name}: resuming at epoch {killed_at + 2}/{epochs}" in resumed.stdout, resumed.stdout[-3000:]
    assert "'student': 'ran'" in resumed.stdout
    history = [json.loads(x) for x in (out / name / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == list(range(epochs))
    assert terms <= set(history[-1])
    straight = _run_job(DEMO, f"run.output_dir={tmp_path / 'straight'}", *settings, f"train.epochs={epochs}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    from vhindex.models import load_model

    a, b = load_model(str(out / name / "model")), load_model(str(tmp_path / "straight" / name / "model"))
    assert a.version() == b.version()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_conmh_trains_on_ray_train(tmp_path, shared_ray):
    """ConMH's training stage runs as a Ray Train TorchTrainer stage (the RAY_STAGES entry) on a local Ray."""
    from cluster.train import run_training_job
    from vhindex.config import load_config

    cfg = load_config(REPO / DEMO, [f"run.output_dir={tmp_path}", "model.name=conmh", "model.bits=16",
                                    "model.params={num_frames: 8, feature_dim: 64, width: 32, depth: 1, heads: 2, "
                                    "dec_width: 16, dec_heads: 2}", "train.epochs=2", "train.backend=ray"])
    result = run_training_job(cfg, progress=False)
    assert result.model == "conmh" and result.stages["student"] == "ray", result.stages
    assert 0.0 < result.map_at_k[5] <= 1.0
    history = [json.loads(x) for x in (tmp_path / "conmh" / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in history] == [0, 1] and all(m["world_size"] == 1 for m in history)

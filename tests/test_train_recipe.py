"""The training recipes end to end on tiny synthetic data: teacher -> embeddings -> graph -> student -> mAP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vhindex.config import ConfigError, load_config
from vhindex.data import CodesDataset, EmbeddingDataset, FrameDataset
from vhindex.models import load_model
from vhindex.train import recipes
from vhindex.train.recipes import PartnerFrames, check_datasets, run_bth_recipe, run_dkph_recipe, train_teacher

DEMO = Path(__file__).resolve().parents[1] / "configs" / "train" / "demo.yaml"
TINY = [  # M=8, D=64, d=32, 16 bits, 2 + 2 epochs; 16 anchors (with 8 the bth rule on 5 nearest
    # anchors links every pair of the 256 videos: no negatives, the pair sampler refuses)
    "model.params.num_frames=8", "model.params.feature_dim=64", "model.params.hidden=32", "model.params.ffn=64", "model.bits=16",
    "train.teacher_epochs=2", "train.epochs=2", "graph.anchors=16", "graph.executor=sequential",
    "train.pair_backend=numpy", "train.device=cpu", "train.batch_size=64", "eval.plots=false",
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the CI box is small and shared: intra-op threads only add contention for these tiny nets
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _cfg(out: Path | str, *extra: str):
    return load_config(DEMO, [*TINY, f"run.output_dir={out}", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    cfg = _cfg(out)
    return cfg, out, run_dkph_recipe(cfg, progress=False)


def test_recipe_end_to_end(finished):
    cfg, out, res = finished
    assert res.stages == {"teacher": "ran", "embeddings": "ran", "graph": "ran", "student": "ran", "eval": "ran"}
    model = load_model(str(out / "model"))
    assert model.name == "dkph" and model.bits == 16 and model.get_config()["hidden"] == 32
    for split, n in (("query", 64), ("database", 256)):
        ids, codes = CodesDataset.open(res.codes[split]).read_all()
        assert len(ids) == n and codes.shape == (n, 2)
    report = json.loads((out / "eval" / "results.json").read_text())
    assert set(report) == {"dkph-16"} and set(report["dkph-16"]["map_at_k"]) == {"5", "10", "20"}
    assert 0.0 < res.map_at_k[5] <= 1.0 and list(res.map_at_k) == [5, 10, 20]
    emb = EmbeddingDataset.open(str(out / "teacher" / "embeddings"))
    assert emb.dim == 32 and emb.read_video_ids() == FrameDataset.open(str(out / "data" / "train")).read_video_ids()
    for stage, epochs in (("teacher", 2), ("student", 2)):
        lines = (out / stage / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == list(range(epochs))
    student_metrics = json.loads(lines[-1])
    assert {"loss_total", "loss_recon", "loss_tsim", "loss_bsim", "lr", "videos_per_s"} <= set(student_metrics)
    assert (out / "graph" / "graph.json").exists()


def test_rerun_skips_completed_stages(finished):
    cfg, out, first = finished
    again = run_dkph_recipe(cfg, progress=False)
    assert set(again.stages.values()) == {"skipped"}, again.stages
    assert again.map_at_k == first.map_at_k and again.seconds < 5


def test_bth_baseline_reuses_teacher_and_graph(finished):
    cfg, out, _ = finished
    res = run_bth_recipe(cfg, progress=False)
    assert res.stages["teacher"] == res.stages["embeddings"] == res.stages["graph"] == "skipped"
    assert res.stages["student"] == "ran" and res.model_url.endswith("/bth/model")
    assert load_model(res.model_url).name == "bth"
    assert json.loads((out / "bth" / "eval" / "results.json").read_text()).keys() == {"bth-16"}


def test_teacher_resume_is_identical_to_a_straight_run(finished, tmp_path):
    cfg, out, _ = finished
    data = [f"data.{s}={out}/data/{s}" for s in ("train", "query", "database")]
    straight, _ = train_teacher(_cfg(tmp_path / "a", *data), progress=False)
    train_teacher(_cfg(tmp_path / "b", *data, "train.teacher_epochs=1"), progress=False)
    resumed, result = train_teacher(_cfg(tmp_path / "b", *data), progress=False)
    assert result.resumed and result.start_epoch == 1
    sa, sb = straight.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a checkpoint made with other settings is refused, naming what differs
    with pytest.raises(ValueError, match="different settings.*hidden"):
        train_teacher(_cfg(tmp_path / "b", *data, "model.params.hidden=16", "train.teacher_epochs=3"), progress=False)


def test_partner_frames_in_memory_and_by_row_group_agree(finished):
    _, out, _ = finished
    ds = FrameDataset.open(str(out / "data" / "train"))
    rows = np.array([0, 255, 3, 64, 64, 130])
    mem, disk = PartnerFrames(ds, 1 << 30), PartnerFrames(ds, 0, cache_row_groups=2)
    assert mem.in_memory and not disk.in_memory
    truth = np.concatenate([b.features for b in ds.iter_batches(256)])[rows]
    np.testing.assert_array_equal(mem.get(rows), truth)
    np.testing.assert_array_equal(disk.get(rows), truth)


# ------------------------------------------------------------------------------ clear errors before training


def _data_overrides(out: Path) -> list[str]:
    return [f"data.{s}={out}/data/{s}" for s in ("train", "query", "database")]


def test_frame_shape_mismatch_names_both(finished, tmp_path):
    _, out, _ = finished
    with pytest.raises(ValueError, match=r"M=8 frames x D=64 dims.*model.params.num_frames=9, model.params.feature_dim=64"):
        check_datasets(_cfg(tmp_path, *_data_overrides(out), "model.params.num_frames=9"))


def test_bits_must_be_a_multiple_of_8():
    with pytest.raises(ConfigError) as info:
        load_config(DEMO, ["model.bits=12"])
    assert info.value.problems[0][0] == "model.bits" and "multiple of 8" in info.value.problems[0][1]


def test_missing_dataset_paths_name_the_key(finished, tmp_path):
    _, out, _ = finished
    with pytest.raises(FileNotFoundError, match="data.train"):
        check_datasets(_cfg(tmp_path, f"data.train={tmp_path}/nope", f"data.query={out}/data/query",
                            f"data.database={out}/data/database"))
    with pytest.raises(ValueError, match="data.query, data.database"):
        check_datasets(_cfg(tmp_path, f"data.train={out}/data/train"))


def test_too_many_anchors(finished, tmp_path):
    _, out, _ = finished
    with pytest.raises(ValueError, match="graph.anchors=1000"):
        check_datasets(_cfg(tmp_path, *_data_overrides(out), "graph.anchors=1000"))


def test_graph_and_training_ids_must_match(finished, tmp_path):
    cfg, out, _ = finished
    datasets = check_datasets(cfg)
    wrong = dict(datasets, train=datasets["database"])  # same size, other videos
    with pytest.raises(ValueError, match="first differ at row 0"):
        recipes.train_student(_cfg(tmp_path), wrong, graph_url=str(out / "graph"), progress=False)


def test_student_evaluates_every_epoch_when_asked(finished, tmp_path):
    _, out, _ = finished
    cfg = _cfg(tmp_path, *_data_overrides(out), "train.eval_every=1", "train.teacher_epochs=1")
    res = run_dkph_recipe(cfg, progress=True)
    lines = [json.loads(x) for x in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1] and all("eval_map@5" in x for x in lines)
    assert lines[-1]["eval_map@5"] == pytest.approx(res.map_at_k[5])


def test_student_hash_input_mean_is_threaded_to_the_model(finished, tmp_path):
    cfg, out, _ = finished
    mean_cfg = _cfg(tmp_path, *_data_overrides(out), "train.epochs=1", "model.params.hash_input=mean")
    model, result = recipes.train_student(mean_cfg, graph_url=str(out / "graph"), progress=False)
    assert result is not None and model.hash_input == "mean" and model.net.hash.in_features == 32
    loaded = load_model(str(tmp_path / "model"))
    assert loaded.get_config()["hash_input"] == "mean" and loaded.version() == model.version()
    marker = json.loads((tmp_path / "student" / "_stage.json").read_text())
    assert marker["inputs"]["hash_input"] == "mean"
    # the released default stays out of the stage inputs and the model config (old markers / versions still match)
    assert "hash_input" not in load_model(str(out / "model")).get_config()
    assert "hash_input" not in json.loads((out / "student" / "_stage.json").read_text())["inputs"]
    # a checkpoint of the mean variant is not resumed as the flattened one
    with pytest.raises(ValueError, match="different settings.*hash_input"):
        recipes.train_student(_cfg(tmp_path, *_data_overrides(out), "train.epochs=2"), graph_url=str(out / "graph"),
                              progress=False)


def test_vhindex_graph_and_training_build_the_same_graph(finished, tmp_path):
    """One place for the graph settings: `vhindex graph` (here on a local Dask cluster) with the training
    config's `graph` section, on the teacher's embeddings, writes the graph training built in-process."""
    import subprocess
    import sys

    from vhindex.graph.stage import load_graph

    cfg, out, _ = finished
    pytest.importorskip("distributed")
    args = [f"--config={DEMO}", *TINY, f"run.output_dir={out}", f"graph.embeddings={out}/teacher/embeddings",
            f"graph.out={tmp_path}/graph", "graph.executor=dask", "graph.n_workers=1"]
    proc = subprocess.run([sys.executable, "-m", "vhindex", "graph", *args], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a_train, g_train, ids_train, m_train = load_graph(str(out / "graph"))
    a_cli, g_cli, ids_cli, m_cli = load_graph(str(tmp_path / "graph"))
    assert m_cli.executor.startswith("dask") and m_train.executor == "SequentialExecutor"
    assert m_cli.fingerprint == m_train.fingerprint and (m_cli.k, m_cli.a) == (cfg.graph.anchors, cfg.graph.nearest_anchors)
    assert np.array_equal(a_cli, a_train) and ids_cli == ids_train
    for s in g_train.levels:
        assert np.array_equal(g_cli.levels[s].ids, g_train.levels[s].ids)
        assert np.array_equal(g_cli.levels[s].z, g_train.levels[s].z)

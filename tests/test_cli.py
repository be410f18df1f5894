"""The `vhindex` console script end to end: demo, synth/validate, fit/encode/index/query/eval."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vhindex.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vhindex.app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


# The demo's learned students on the tiny preset: a small net, 1-2 epochs, few anchors (seconds).
SMALL_DKPH = ("demo.learned=[dkph]", "demo.learned_params={dkph: {hidden: 32, ffn: 64}}", "train.teacher_epochs=1", "train.epochs=2", "graph.anchors=16",
              "train.pair_backend=numpy")


@pytest.mark.integration  # the demo ends by serving on a local Ray
@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = _cli("demo", "--config", "configs/demo.yaml", "synth.preset=tiny", f"run.output_dir={out}",
                "demo.bits=[16, 32]", "demo.learned_bits=null", "demo.example_queries=2", *SMALL_DKPH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    for name in ("lsh-16", "pca_sign-32", "itq-32", "dkph-16", "dkph-32"):
        assert name in text
    assert "Example queries" in text and "hamming" in text
    # ... and ends by serving the best index with Ray Serve and querying it over HTTP
    assert "Serving" in text and "POST /search" in text and "answers equal the in-process index" in text
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results) == {f"{m}-{b}" for m in ("lsh", "pca_sign", "itq", "dkph") for b in (16, 32)}
    # DKPH went through the train recipe: one shared teacher + graph, one student per code length.
    learned = out / "learned"
    for stage in ("teacher", "teacher/embeddings", "graph", "dkph-16/student", "dkph-32/student"):
        assert (learned / stage).is_dir(), stage
    assert (out / "models" / "dkph-32").is_dir() and (out / "codes" / "dkph-32" / "query").is_dir()
    for r in results.values():
        maps = {int(k): v for k, v in r["map_at_k"].items()}
        assert 0.0 < maps[5] <= 1.0
    assert (out / "eval" / "map_vs_k.png").stat().st_size > 1000
    assert (out / "eval" / "pr_curves.png").stat().st_size > 1000
    assert (out / "index").is_dir()
    # A re-run reuses the complete synthetic dataset and the trained teacher / student (stage markers).
    proc = _cli("demo", "--config", "configs/demo.yaml", "synth.preset=tiny", f"run.output_dir={out}",
                "demo.bits=[16]", "demo.methods=[lsh]", "demo.learned_bits=[16]", "demo.example_queries=0",
                *SMALL_DKPH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "reusing synthetic dataset" in proc.stdout
    assert "teacher (reused" in proc.stdout
    reran = json.loads((out / "eval" / "results.json").read_text())
    assert reran["dkph-16"]["map_at_k"] == results["dkph-16"]["map_at_k"]
    # Data from another generator version / spec (different spec_hash) is rebuilt, not reused.
    spec_file = out / "data" / "synth_spec.json"
    spec = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps({**spec, "spec_hash": "stale"}))
    proc = _cli("demo", "--config", "configs/demo.yaml", "synth.preset=tiny", f"run.output_dir={out}",
                "demo.bits=[16]", "demo.methods=[lsh]", "demo.learned=[]", "demo.example_queries=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "synthesizing" in proc.stdout and "reusing" not in proc.stdout
    assert json.loads(spec_file.read_text())["spec_hash"] == spec["spec_hash"]


def test_stage_commands_chain(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["synth", "--config", "configs/demo.yaml", "synth.preset=tiny", f"--out={data}"]) == 0
    assert main(["validate", str(data / "train")]) == 0
    model = tmp_path / "model"
    assert main(["fit", "--config", "configs/baselines/fcvid-itq.yaml", f"data.train={data / 'train'}",
                 "model.bits=32", f"--out={model}"]) == 0
    for split in ("query", "database"):
        assert main(["encode", "--model", str(model), "--frames", str(data / split),
                     "--out", str(tmp_path / "codes" / split), "--engine", "local"]) == 0
    assert main(["index", "flat", "--codes", str(tmp_path / "codes" / "database"), "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["query", "--index", str(tmp_path / "index"), "--video-id", "database-0000003", "-k", "4"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and hits[0]["hamming"] == 0
    assert "database-0000003" in [h["video_id"] for h in hits if h["hamming"] == 0]
    assert main(["eval", "--db-codes", str(tmp_path / "codes" / "database"),
                 "--query-codes", str(tmp_path / "codes" / "query"), "--db-frames", str(data / "database"),
                 "--query-frames", str(data / "query"), "--name", "itq-32", "--out", str(tmp_path / "eval"),
                 "eval.ks=[5, 20]"]) == 0
    table = capsys.readouterr().out
    assert "itq-32" in table
    res = json.loads((tmp_path / "eval" / "results.json").read_text())["itq-32"]
    assert 0.0 < float(res["map_at_k"]["5"]) <= 1.0


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["demo", "model.bits=12"]) == 2
    assert "model.bits" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing")]) != 0
    err = capsys.readouterr().err
    assert "missing" in err
    with pytest.raises(SystemExit):
        main(["query", "--index", str(tmp_path)])  # needs --code or --video-id


def test_train_command_and_the_paper_configs(tmp_path, capsys):
    """`vhindex train` runs the training recipe (what jobs/train_dkph.py runs) with the code length as an
    override; a paper config without its datasets exits 2 naming them; both index formats build."""
    out = tmp_path / "run"
    rc = main(["train", "--config", "configs/train/demo.yaml", "--no-progress", f"run.output_dir={out}",
               "model.bits=32", "train.teacher_epochs=1", "train.epochs=1", "train.backend=local"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    text = capsys.readouterr().out
    assert f"RESULT model={out}/model" in text and "mAP@5=" in text
    from vhindex.models import load_model

    model = load_model(str(out / "model"))
    assert (model.name, model.bits) == ("dkph", 32)
    # the BTH student of the same config, by name
    assert main(["train", "--config", "configs/train/demo.yaml", "--no-progress", f"run.output_dir={out}",
                 "model.name=bth", "model.bits=32", "train.teacher_epochs=1", "train.epochs=1",
                 "train.backend=local"]) == 0
    assert load_model(str(out / "bth" / "model")).name == "bth"
    capsys.readouterr()
    for name in ("fcvid", "activitynet", "yfcc"):
        assert main(["train", "--config", f"configs/train/{name}.yaml", "model.bits=16",
                     f"run.output_dir={tmp_path / name}", "train.backend=local"]) == 2
        assert "data.train, data.query, data.database: required" in capsys.readouterr().err
    # a moved key names its replacement
    assert main(["train", "--config", "configs/train/demo.yaml", "train.bits=16"]) == 2
    assert "train.bits: this key moved: use model.bits instead" in capsys.readouterr().err
    # the two index formats, by name
    assert main(["index", "sharded", "--codes", str(out / "codes" / "database"), "--out", str(tmp_path / "sharded"),
                 "--shards", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_shards"] == 1 and sum(info["counts"]) == 256
    assert main(["index", "flat", "--codes", str(out / "codes" / "database"), "--out", str(tmp_path / "flat")]) == 0
    assert "indexed 256 codes of 32 bits" in capsys.readouterr().out


def test_demo_trains_gcmh_without_a_teacher(tmp_path):
    """The demo's default learned model: GCMH trains in one stage (no teacher), its row joins the table."""
    from vhindex.app.demo import run_demo
    from vhindex.config import load_config

    out = tmp_path / "run"
    cfg = load_config("configs/demo.yaml", ["synth.preset=tiny", f"run.output_dir={out}", "demo.bits=[16]",
                                            "demo.learned_bits=null", "demo.example_queries=0", "demo.serve=false",
                                            "demo.learned_params={gcmh: {width: 32, depth: 1, heads: 2, dec_width: 16, "
                                            "dec_heads: 2, neighbour_start: 1}}", "demo.learned_train={gcmh: {epochs: 2}}",
                                            "graph.anchors=16"])
    lines = []

    class Out:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    result = run_demo(cfg, out=Out())
    assert set(result.results) == {f"{m}-16" for m in ("lsh", "pca_sign", "itq", "gcmh")}
    assert 0.0 < result.results["gcmh-16"].map_at_k[5] <= 1.0
    text = "".join(lines)
    assert "learned models ['gcmh'] at [16] bits: gcmh 2 epochs" in text and "teacher" not in text
    assert (out / "learned" / "gcmh-16" / "gcmh" / "model").is_dir()
    assert not (out / "learned" / "teacher").exists()

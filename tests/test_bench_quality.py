"""The real-data benchmark runner: its ranking metrics against oracles, and a tiny end-to-end build."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from vhindex.benchdata.quality import leave_one_out_metrics, map_at_k_from_relevance, ranked_relevance
from vhindex.eval import evaluate, stable_topk_hamming
from vhindex.index.codes import pack_codes


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_map_from_rankings_equals_evaluate(protocol: str) -> None:
    """The ranking-based mAP@K (used for float and UTS rows) equals vhindex.eval on code rankings."""
    rng = np.random.default_rng(3)
    bits, nq, nd, c = 16, 40, 300, 6
    q = pack_codes(np.where(rng.random((nq, bits)) < 0.5, -1, 1).astype(np.int8))
    d = pack_codes(np.where(rng.random((nd, bits)) < 0.5, -1, 1).astype(np.int8))
    ql = rng.random((nq, c)) < 0.25
    dl = rng.random((nd, c)) < 0.25
    ks = [1, 5, 20, 100]
    want = evaluate(d, q, dl, ql, ks=ks, protocol=protocol, pr=False, precision_ns=[]).map_at_k
    _, idx = stable_topk_hamming(q, d, max(ks))
    got = map_at_k_from_relevance(ranked_relevance(idx, ql, dl), ks, protocol)
    assert got.keys() == want.keys()
    for k in ks:
        assert got[k] == pytest.approx(want[k], abs=1e-12), k


def test_map_from_relevance_hand_computed() -> None:
    rel = np.array([[True, False, True, False], [False, False, False, False]])
    paper = map_at_k_from_relevance(rel, [1, 4], "paper")
    standard = map_at_k_from_relevance(rel, [1, 4], "standard")
    # query 0: hits at ranks 1 and 3 -> P@1 = 1, P@3 = 2/3
    assert paper[1] == pytest.approx((1.0 + 0.0) / 2)
    assert paper[4] == pytest.approx(((1 + 2 / 3) / 4 + 0.0) / 2)
    assert standard[4] == pytest.approx(((1 + 2 / 3) / 2 + 0.0) / 2)
    # a ranking shorter than K is padded with non-relevant items, -1 entries are never relevant
    short = ranked_relevance(np.array([[0, -1]]), np.array([[True]]), np.array([[True]]))
    assert short.tolist() == [[True, False]]
    with pytest.raises(ValueError, match="protocol"):
        map_at_k_from_relevance(rel, [1], "other")


def test_leave_one_out_metrics_hand_computed() -> None:
    groups = np.array([0, 0, 1, 1, 0])
    rankings = [np.array([2, 1, 4, 3]),   # group 0: relevant 1, 4 at ranks 2, 3 -> AP (1/2 + 2/3) / 2
                np.array([0, 4, 2, 3]),   # AP 1
                np.array([3, 0, 1, 4]),   # AP 1
                np.array([0, 1, 4, 2]),   # relevant 2 at rank 4 -> AP 1/4
                np.array([3, 2, 1, 0])]   # relevant at 3, 4 -> (1/3 + 2/4) / 2
    m = leave_one_out_metrics(rankings, groups)
    aps = [(1 / 2 + 2 / 3) / 2, 1.0, 1.0, 0.25, (1 / 3 + 2 / 4) / 2]
    assert m["map"] == pytest.approx(np.mean(aps))
    assert m["top1"] == pytest.approx(2 / 5)
    assert m["queries"] == 5
    with pytest.raises(ValueError, match="itself"):
        leave_one_out_metrics([np.array([0, 1])], np.array([0, 0]))


# ------------------------------------------------------------------------------ tiny end-to-end build


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny build of both benchmarks (configs/bench/tiny.yaml) through the real pipeline."""
    from vhindex.benchdata.fashion import find_fashion_mnist
    from vhindex.benchdata.quality import run_quality_bench
    from vhindex.benchdata.sources import default_roots
    from vhindex.config import load_config

    pytest.importorskip("av")
    try:
        find_fashion_mnist(default_roots())
    except FileNotFoundError as err:
        pytest.skip(f"Fashion-MNIST not found (run `make bench-sources`): {err}")
    tmp = tmp_path_factory.mktemp("bench")
    cfg = load_config("configs/bench/tiny.yaml", [f"bench.work={tmp}/work", f"bench.report={tmp}/report.md",
                                                  "bench.sources=[]"])
    lines: list[str] = []
    out = run_quality_bench(cfg, log=lines.append)
    return cfg, out, tmp, lines


@pytest.mark.slow
def test_tiny_build_reports_every_method_bits_and_protocol(tiny_run) -> None:
    cfg, out, tmp, _ = tiny_run
    b = cfg.bench
    from vhindex.benchdata.quality import SUPERVISED, SUPERVISED_ROWS

    unsupervised = [m for m in b.methods if m not in SUPERVISED]
    assert "dvhcm" in b.methods  # the supervised section is exercised
    supervised_rows = [r.format(m) for m in b.methods if m in SUPERVISED for r in SUPERVISED_ROWS]
    rows = ["float mean-pool (cosine)", *unsupervised, *(f"uts frame-level {m}" for m in b.frame_methods)]
    uts_rows = ["frame lsh: Lite0 features", "frame lsh: UTS teacher (Lite0 + PCA fc)", "frame lsh: UTS student"]
    assert sorted(out.fashion) == sorted(rows + supervised_rows)
    # no class labels there: the supervised model is fashion-only; UTS's teacher-student rows are near-dup only
    student_rows = ["float mean-pool: UTS student features", *(f"{m}: UTS student features"
                                                                 for m in b.uts_video_methods)]
    assert b.uts_video_methods == ["itq", "gcmh"]
    assert sorted(out.neardup) == sorted(rows + uts_rows + student_rows)
    for row in student_rows:
        assert sorted(out.neardup[row]) == ([0] if row.startswith("float") else b.bits), row
        assert all(0.0 <= v <= 1.0 for c in out.neardup[row].values() for v in c["map"] + c["top1"])
        assert f"| {row} |" in (tmp / "report.md").read_text()
    # the learned video-level run over the student's features trained in the UTS run's folder, apart from Lite0's
    assert list((tmp / "work" / "neardup" / "uts").glob("*/video_models/*/seed0/runs/gcmh-16*/gcmh/student"))
    for row in uts_rows:
        assert sorted(out.neardup[row]) == b.uts_bits
        assert all(0.0 <= v <= 1.0 for c in out.neardup[row].values() for v in c["map"] + c["top1"])
        assert f"| {row} |" in (tmp / "report.md").read_text()
    # the student's features came from the extraction job with the trained uts_student backbone
    from vhindex.data import FrameDataset

    student = next((tmp / "work" / "neardup" / "uts").glob("*/seed0/features"))
    feats = FrameDataset.open(str(student))
    assert feats.meta.feature_dim == 32 and feats.meta.extractor.startswith("uts_student")
    assert feats.read_video_ids() == FrameDataset.open(f"{tmp}/work/neardup/features/all").read_video_ids()
    for row in rows + supervised_rows:
        want_bits = [0] if row.startswith("float") else list(b.bits)
        assert sorted(out.fashion[row]) == want_bits, row
        if row in rows:
            assert sorted(out.neardup[row]) == want_bits, row
        for cell in out.fashion[row].values():
            for protocol in ("paper", "standard"):
                assert sorted(cell[protocol]) == b.ks
                assert all(0.0 <= v <= 1.0 for vs in cell[protocol].values() for v in vs)
        for cell in out.neardup.get(row, {}).values():
            assert all(0.0 <= v <= 1.0 for v in cell["map"] + cell["top1"])
    # real content, not noise: mean-pooled features of near-duplicates find their family
    assert out.neardup["float mean-pool (cosine)"][0]["top1"][0] >= 0.9
    report = (tmp / "report.md").read_text()
    assert "paper protocol" in report and "standard protocol" in report and "partial" not in report
    for row in rows + supervised_rows:
        assert f"| {row} |" in report
    assert "### Supervised: trained on the training clips' labels" in report and "masked / plain" in report
    saved = json.loads((tmp / "report.json").read_text())
    assert saved["neardup"]["lsh"]["16"]["map"] == out.neardup["lsh"][16]["map"]
    for name in ("fashion", "neardup_map", "neardup_top1"):
        assert (tmp / f"report_{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _literal_rankings(codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    bits = np.unpackbits(codes, axis=1).astype(np.int32)
    qbits = np.unpackbits(queries, axis=1).astype(np.int32)
    dist = (qbits[:, None, :] != bits[None, :, :]).sum(axis=2)
    return np.argsort(dist, axis=1, kind="stable")


@pytest.mark.slow
def _literal_leave_one_out(codes: np.ndarray, groups: np.ndarray) -> tuple[list[float], list[bool]]:
    """Per video: AP over the ranking of every other video (relevant = same group) and whether the first is relevant."""
    order = _literal_rankings(codes, codes)
    aps, top1 = [], []
    for i in range(len(codes)):
        relevant = [groups[j] == groups[i] for j in order[i] if j != i]
        hits, ap = 0, 0.0
        for r, rel in enumerate(relevant, start=1):
            if rel:
                hits += 1
                ap += hits / r
        aps.append(ap / sum(relevant))
        top1.append(relevant[0])
    return aps, top1


def test_tiny_lsh_numbers_equal_a_literal_recomputation(tiny_run) -> None:
    """LSH-16's table entries recomputed from the extracted features with loops written from the definitions."""
    from vhindex.data import FrameDataset
    from vhindex.inprocess import encode_in_memory, fit_model

    cfg, out, tmp, _ = tiny_run
    work = f"{tmp}/work"
    # near-duplicates: leave-one-out over every video
    ds = FrameDataset.open(f"{work}/neardup/features/all")
    groups = ds.read_labels_multi_hot().argmax(axis=1)
    _, codes = encode_in_memory(fit_model("lsh", 16, ds, seed=cfg.bench.seeds[0]), ds)
    aps, top1 = _literal_leave_one_out(codes, groups)
    assert out.neardup["lsh"][16]["map"][0] == pytest.approx(np.mean(aps), abs=1e-12)
    assert out.neardup["lsh"][16]["top1"][0] == pytest.approx(np.mean(top1), abs=1e-12)
    # the video-level ITQ row over the UTS student's features: ITQ fitted on those features, ranked the same way
    student = FrameDataset.open(str(next((tmp / "work" / "neardup" / "uts").glob("*/seed0/features"))))
    _, codes = encode_in_memory(fit_model("itq", 16, student, seed=cfg.bench.seeds[0]), student)
    aps, _ = _literal_leave_one_out(codes, groups)
    assert out.neardup["itq: UTS student features"][16]["map"][0] == pytest.approx(np.mean(aps), abs=1e-12)
    # fashion: paper-protocol AP@K (divided by K), relevance = a shared label
    train, q, db = (FrameDataset.open(f"{work}/fashion/features/{s}") for s in ("train", "query", "database"))
    model = fit_model("lsh", 16, train, seed=cfg.bench.seeds[0])
    _, qc = encode_in_memory(model, q)
    _, dc = encode_in_memory(model, db)
    c = max(q.meta.num_classes, db.meta.num_classes)
    ql, dl = q.read_labels_multi_hot(c), db.read_labels_multi_hot(c)
    order = _literal_rankings(dc, qc)
    for k in cfg.bench.ks:
        aps = []
        for i in range(len(qc)):
            hits, ap = 0, 0.0
            for r, j in enumerate(order[i][:k], start=1):
                if (ql[i] & dl[j]).any():
                    hits += 1
                    ap += hits / r
            aps.append(ap / k)
        assert out.fashion["lsh"][16]["paper"][k][0] == pytest.approx(np.mean(aps), abs=1e-12), k


@pytest.mark.slow
def test_tiny_rerun_reuses_the_build_and_gives_the_same_numbers(tiny_run) -> None:
    from vhindex.benchdata.quality import run_quality_bench

    cfg, out, tmp, _ = tiny_run
    clip = next((tmp / "work" / "fashion" / "videos" / "query" / "videos").iterdir())
    mtime = clip.stat().st_mtime_ns
    lines: list[str] = []
    again = run_quality_bench(cfg, log=lines.append)
    assert clip.stat().st_mtime_ns == mtime
    assert not any(": rendering " in line for line in lines)  # every split reported "already built"
    assert again.fashion == out.fashion
    assert again.neardup == out.neardup


@pytest.mark.slow
def test_tiny_learned_models_choose_their_epoch_on_the_validation_split(tiny_run) -> None:
    """Every learned model trains on the training clips minus a carved validation split and keeps its best
    validation epoch; the report states the rule and the choices, and the test query / database are untouched."""
    cfg, out, tmp, _ = tiny_run
    b = cfg.bench
    val = out.info["fashion"]["validation"]
    assert (val["queries"], val["database"]) == (b.validation_queries, b.validation_database)
    assert val["train"] == out.info["fashion"]["videos"]["train"] - b.validation_queries - b.validation_database
    sel = out.info["fashion"]["selection"]
    from vhindex.benchdata.quality import LEARNED

    assert "mcmsh" in LEARNED and sorted(sel) == sorted(m for m in b.methods if m in LEARNED)
    for per_bits in sel.values():
        for bits in b.bits:
            chosen = per_bits[str(bits)][str(b.seeds[0])]
            assert 1 <= chosen["best_epoch"] <= len(chosen["curve"])
            assert chosen["best_val"] == max(chosen["curve"]) and len(chosen["code_stats"]) == len(chosen["curve"])
    report = (tmp / "report.md").read_text()
    assert "**Selection rule.**" in report and "never used for any choice" in report
    from vhindex.data import FrameDataset

    work = f"{b.work}/fashion/features"
    carved = {s: FrameDataset.open(f"{work}/validation/{s}").read_video_ids() for s in ("train", "query", "database")}
    assert not set(carved["train"]) & (set(carved["query"]) | set(carved["database"]))
    assert set().union(*carved.values()) == set(FrameDataset.open(f"{work}/train").read_video_ids())


@pytest.mark.slow
def test_merge_combines_runs_split_by_method_and_by_code_length(tiny_run, tmp_path) -> None:
    """`vhindex bench merge`: runs that each hold some (method, bits) cells merge cell by cell; a later file's cell
    wins; files over other benchmark data are refused."""
    from vhindex.benchdata.quality import _int_keys, merge_reports

    cfg, out, tmp, _ = tiny_run
    full = json.loads((tmp / "report.json").read_text())
    lo, hi = str(cfg.bench.bits[0]), str(cfg.bench.bits[-1])
    part_a = copy.deepcopy(full)  # every row, but the lsh row only at the lowest code length
    part_a["fashion"]["lsh"] = {lo: full["fashion"]["lsh"][lo]}
    part_b = copy.deepcopy(full)  # only lsh, at the highest code length, with a changed number
    part_b["fashion"] = {"lsh": {hi: copy.deepcopy(full["fashion"]["lsh"][hi])}}
    part_b["neardup"] = {}
    part_b["fashion"]["lsh"][hi]["paper"]["20"] = [0.123]
    paths = []
    for name, obj in (("a", part_a), ("b", part_b)):
        paths.append(str(tmp_path / f"{name}.json"))
        Path(paths[-1]).write_text(json.dumps(obj))
    mcfg = cfg.model_copy(update={"bench": cfg.bench.model_copy(update={"report": str(tmp_path / "m.md"),
                                                                        "plots": False})})
    merged = merge_reports(paths, mcfg, "test")
    assert sorted(merged.fashion["lsh"]) == sorted({int(lo), int(hi)})
    assert merged.fashion["lsh"][int(lo)]["paper"] == _int_keys(full["fashion"]["lsh"][lo]["paper"])
    assert merged.fashion["lsh"][int(hi)]["paper"][20] == [0.123]
    assert merged.fashion["itq"] == {int(b): _int_keys(c) for b, c in full["fashion"]["itq"].items()}
    text = (tmp_path / "m.md").read_text()
    assert "| lsh |" in text and "seeds per cell" in text
    other = copy.deepcopy(full)
    other["info"]["fashion"]["videos"] = {"train": 1, "query": 1, "database": 1}
    Path(tmp_path / "c.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="not the same data"):
        merge_reports([paths[0], str(tmp_path / "c.json")], mcfg, "test")
    # runs split by seed: --combine adds the later file's seed to the cell instead of replacing it
    seed1 = copy.deepcopy(full)
    seed1["fashion"] = {"conmh": {lo: copy.deepcopy(full["fashion"]["conmh"][lo])}}
    seed1["fashion"]["conmh"][lo]["paper"]["20"] = [0.321]
    seed1["neardup"] = {}
    seed1["info"]["fashion"]["selection"] = {"conmh": {lo: {"1": full["info"]["fashion"]["selection"]["conmh"][lo]["0"]}}}
    Path(tmp_path / "s1.json").write_text(json.dumps(seed1))
    Path(tmp_path / "full.json").write_text(json.dumps(full))
    both = merge_reports([str(tmp_path / "full.json"), str(tmp_path / "s1.json")], mcfg, "test", combine_rows=["conmh"])
    assert both.fashion["conmh"][int(lo)]["paper"][20] == full["fashion"]["conmh"][lo]["paper"]["20"] + [0.321]
    assert len(both.fashion["conmh"][int(lo)]["paper"][5]) == 2  # every K gained the seed
    assert sorted(both.info["fashion"]["selection"]["conmh"][lo]) == ["0", "1"]
    assert both.fashion["lsh"] == {int(b): _int_keys(c) for b, c in full["fashion"]["lsh"].items()}  # not combined
    replaced = merge_reports([str(tmp_path / "full.json"), str(tmp_path / "s1.json")], mcfg, "test")
    assert replaced.fashion["conmh"][int(lo)]["paper"][20] == [0.321]  # without --combine the later cell wins
    with pytest.raises(ValueError, match=r"seed\(s\) \['0'\]"):
        merge_reports([str(tmp_path / "full.json")] * 2, mcfg, "test", combine_rows=["conmh"])


@pytest.mark.slow
def test_method_train_layers_and_the_near_duplicate_override(tiny_run) -> None:
    """train < {bench}_train < method_train < neardup_method_train (near-duplicates only), per method."""
    from vhindex.benchdata.quality import _Runner
    from vhindex.config import load_config
    from vhindex.data import FrameDataset

    cfg, _, tmp, _ = tiny_run
    cfg = load_config("configs/bench/tiny.yaml", [
        f"bench.work={cfg.bench.work}", "train.lr=0.5", "bench.fashion_train={epochs: 7}",
        "bench.neardup_train={epochs: 9, batch_size: 8}",
        "bench.method_train={gcmh: {epochs: 3, lr: 0.25}}", "bench.neardup_method_train={gcmh: {epochs: 5}}"])
    runner = _Runner(cfg, lambda _: None, "test", engines=lambda _: (None, "local"))
    urls = {b: {s: f"{cfg.bench.work}/{b}/features/{'train' if b == 'fashion' else 'all'}"
                for s in ("train", "query", "database")} for b in ("fashion", "neardup")}

    def train(bench: str, method: str) -> tuple:
        c = runner._train_config(bench, seed=0, out_dir=str(tmp / "cfg"), urls=urls[bench],
                                 ds=FrameDataset.open(urls[bench]["train"]), bits=16, method=method)
        return c.train.epochs, c.train.lr, c.train.batch_size

    assert train("fashion", "gcmh") == (3, 0.25, cfg.train.batch_size)
    assert train("neardup", "gcmh") == (5, 0.25, 8)
    assert train("fashion", "conmh") == (7, 0.5, cfg.train.batch_size)
    assert train("neardup", "conmh") == (9, 0.5, 8)


@pytest.mark.slow
def test_tiny_dvhcm_mask_row_equals_a_literal_recomputation(tiny_run) -> None:
    """The `+ category mask` row recomputed with loops from eq. 8 (predicted category, masked Hamming, stable ties)."""
    from vhindex.benchdata.quality import map_at_k_from_relevance
    from vhindex.data import FrameDataset
    from vhindex.inprocess import encode_in_memory
    from vhindex.models import load_model

    cfg, out, tmp, _ = tiny_run
    work = Path(cfg.bench.work)
    bits = cfg.bench.bits[0]
    model_dirs = sorted(work.glob(f"fashion/models/*/seed0/runs/dvhcm-{bits}-*/dvhcm/model"))
    assert len(model_dirs) == 1, model_dirs
    model = load_model(str(model_dirs[0]))
    q, db = (FrameDataset.open(str(work / "fashion" / "features" / s)) for s in ("query", "database"))
    n = max(q.meta.num_classes, db.meta.num_classes)
    ql, dl = q.read_labels_multi_hot(n), db.read_labels_multi_hot(n)
    _, qc = encode_in_memory(model, q)
    _, dc = encode_in_memory(model, db)
    frames = np.concatenate([fb.features for fb in q.iter_batches(4096, columns=("video_id", "features"))])
    cats = model.classify(frames)
    ratio = out.info["fashion"]["mask_ratio"][str(bits)]["0"]["ratio"]  # chosen on the validation split
    scores = out.info["fashion"]["mask_ratio"][str(bits)]["0"]["validation"]
    assert sorted(scores) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert scores[ratio] == max(scores.values()) and all(r <= ratio for r in scores if scores[r] == scores[ratio])
    masks = np.unpackbits(model.category_masks(ratio).masks, axis=1).astype(bool)
    qb, dbb = np.unpackbits(qc, axis=1).astype(bool), np.unpackbits(dc, axis=1).astype(bool)
    relevance = []
    for i in range(len(qb)):
        dist = [int(((qb[i] != dbb[j]) & masks[cats[i]]).sum()) for j in range(len(dbb))]
        order = sorted(range(len(dbb)), key=lambda j: (dist[j], j))
        relevance.append([bool((ql[i] & dl[j]).any()) for j in order[:max(cfg.bench.ks)]])
    want = map_at_k_from_relevance(np.array(relevance), cfg.bench.ks, "paper")
    got = out.fashion["dvhcm (supervised) + category mask"][bits]["paper"]
    for k in cfg.bench.ks:
        assert got[k][0] == pytest.approx(want[k], abs=1e-12), k


def test_uts_video_methods_are_checked_before_anything_runs() -> None:
    """bench.uts_video_methods: an unknown or supervised name, or no UTS student to run on, is a clear error."""
    from vhindex.benchdata.quality import _check_methods
    from vhindex.config import load_config

    def cfg(*overrides: str):
        return load_config("configs/bench/tiny.yaml", list(overrides))

    _check_methods(cfg())  # the tiny build's [itq, gcmh] pass
    with pytest.raises(ValueError, match=r"bench.uts_video_methods: unknown model name 'nope'"):
        _check_methods(cfg("bench.uts_video_methods=[nope]"))
    with pytest.raises(ValueError, match=r"bench.uts_video_methods: 'dvhcm' trains on class labels"):
        _check_methods(cfg("bench.uts_video_methods=[dvhcm]"))
    with pytest.raises(ValueError, match=r"needs bench.uts_student: true"):
        _check_methods(cfg("bench.uts_student=false"))


def test_merge_new_rows_only_adds_rows_and_keeps_the_earlier_cells(tmp_path) -> None:
    """`bench merge --new-rows-only`: a later file's new rows (and their selection) are added; a row the earlier
    file has keeps its cells and selection even where the later file holds another value for it."""
    from vhindex.benchdata.quality import merge_reports
    from vhindex.config import load_config

    def cell(v: float) -> dict:
        return {"paper": {"20": [v]}, "standard": {"20": [v]}}

    info = {"spec": {"preset": "x"}, "videos": {"train": 4}}
    main = {"fashion": {"itq": {"64": cell(0.45)}}, "neardup": {},
            "info": {"fashion": {**info, "selection": {"gcmh": {"64": {"0": {"epoch": 3}}}}}}, "timings": {"a": 1.0}}
    zoo = {"fashion": {"itq": {"64": cell(0.40), "16": cell(0.30)}, "mcmsh": {"64": cell(0.51)}}, "neardup": {},
           "info": {"fashion": {**info, "selection": {"gcmh": {"64": {"0": {"epoch": 9}}},
                                                      "mcmsh": {"64": {"0": {"epoch": 7}}}},
                                "mask_ratio": {"64": 0.7}}}, "timings": {"a": 2.0}}
    paths = []
    for name, obj in (("main", main), ("zoo", zoo)):
        paths.append(str(tmp_path / f"{name}.json"))
        Path(paths[-1]).write_text(json.dumps(obj))
    cfg = load_config("configs/bench/tiny.yaml", [f"bench.report={tmp_path}/m.md", "bench.plots=false",
                                                  "bench.ks=[20]"])
    merged = merge_reports(paths, cfg, "test", new_rows_only=True)
    assert merged.fashion["itq"] == {64: {"paper": {20: [0.45]}, "standard": {20: [0.45]}}}  # kept, 16 not added
    assert merged.fashion["mcmsh"][64]["paper"][20] == [0.51]
    sel = merged.info["fashion"]["selection"]
    assert sel["gcmh"]["64"]["0"]["epoch"] == 3 and sel["mcmsh"]["64"]["0"]["epoch"] == 7
    assert merged.info["fashion"]["mask_ratio"] == {"64": 0.7} and merged.timings["a"] == 3.0
    assert "| mcmsh | 64 |" in (tmp_path / "m.md").read_text()
    # without the flag the later file wins cell by cell
    assert merge_reports(paths, cfg, "test").fashion["itq"][64]["paper"][20] == [0.40]

"""The real-data quality benchmark runner: every method x code length on both real-data benchmarks.

``vhindex bench quality --config configs/bench/quality.yaml`` (or ``python jobs/bench_quality.py``)
runs, each step skipped when its output is already complete under ``bench.work``:

1. **Fashion clips** (:mod:`vhindex.benchdata.fashion`): render the train / query / database clips to
   video files, featurise every split with the extraction pipeline (:class:`~vhindex.pipelines.extract.ExtractJob`),
   train every method on the (unlabelled) training split, encode query and database, and score
   mAP@K under both protocols (``paper``: AP@K divided by K, as the published code; ``standard``:
   divided by the relevant items retrieved). Relevance = sharing a label.
2. **Near-duplicates** (:mod:`vhindex.benchdata.neardup`): make the variants of the real source
   videos, featurise them, train every method on the same videos (unsupervised: the family labels
   are never seen by a learner), and score **leave-one-out** retrieval: every video queries all the
   others; relevant = the same source family. Metrics: mAP over the full ranking and top-1 accuracy.
3. **UTS frame-level retrieval** (:class:`vhindex.index.FrameLevelIndex`, Algorithm 1 of the UTS
   paper) with per-frame LSH / ITQ codes, on both benchmarks.
4. **References** without hashing: cosine similarity of the mean-pooled float features, so the
   tables show what binarisation costs.

Each method is trained once per seed and code length; BTH and DKPH share one teacher, its
embeddings and the anchor graph per seed (the teacher runs at ``train.teacher_bits``). The report
(markdown, ``results.json`` and PNG plots beside it) is rewritten after each benchmark.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vhindex.config import Config, ExtractSection, config_from_dict
from vhindex.data import FrameDataset

__all__ = [
    "BenchOutcome",
    "carve_validation",
    "merge_reports",
    "leave_one_out_metrics",
    "map_at_k_from_relevance",
    "ranked_relevance",
    "run_quality_bench",
]

SPLITS = ("train", "query", "database")
LEARNED = ("bth", "dkph", "mcmsh", "nph", "conmh", "gcmh", "dvhcm")
#: learned from the training clips' labels (fashion only; reported in a section of their own)
SUPERVISED = ("dvhcm",)
#: the two fashion rows of a supervised method: plain Hamming ranking, and under its category mask
SUPERVISED_ROWS = ("{} (supervised)", "{} (supervised) + category mask")
TEACHER_STUDENTS = ("bth", "dkph", "mcmsh", "nph")
#: methods whose ``method_params`` / ``method_train`` are in a seed folder's tag (those that existed when the
#: tag was introduced; cached runs keep their folders); later methods hash their settings into the run name
_TAGGED_METHODS = ("bth", "dkph", "mcmsh", "conmh", "gcmh")  # share one teacher and anchor graph per seed
#: ablation switches of a tagged method: they change neither the shared teacher nor the graph, so they stay out of
#: the seed folder's tag and key the method's own run folder instead (an ablation reuses the seed's teacher)
_ABLATION_KEYS = {"mcmsh": ("gates",)}
Log = Callable[[str], None]


# ------------------------------------------------------------------------------ metrics on rankings


def map_at_k_from_relevance(relevance: np.ndarray, ks: Sequence[int], protocol: str) -> dict[int, float]:
    """mAP@K from the relevance of each query's ranked list (the :mod:`vhindex.eval` definitions).

    Args:
        relevance: ``bool (nq, L)``: relevance of rank 1..L of each query, ``L >= max(ks)``
            (shorter rankings padded with ``False``).
        ks: cut-offs.
        protocol: ``"paper"`` (AP@K = sum over relevant ranks r <= K of P@r, divided by K) or
            ``"standard"`` (the same sum divided by the relevant items in the top K; 0 when none).

    Returns:
        ``{K: mAP@K}``.
    """
    if protocol not in ("paper", "standard"):
        raise ValueError(f"protocol must be 'paper' or 'standard', got {protocol!r}")
    rel = np.asarray(relevance, dtype=bool)
    kmax = max(ks)
    if rel.shape[1] < kmax:
        rel = np.pad(rel, ((0, 0), (0, kmax - rel.shape[1])))
    hits = np.cumsum(rel[:, :kmax], axis=1)
    prec_at_hit = np.where(rel[:, :kmax], hits / np.arange(1, kmax + 1), 0.0)
    csum = np.cumsum(prec_at_hit, axis=1)
    out = {}
    for k in ks:
        if protocol == "paper":
            ap = csum[:, k - 1] / k
        else:
            n = hits[:, k - 1]
            ap = np.divide(csum[:, k - 1], n, out=np.zeros(len(n)), where=n > 0)
        out[int(k)] = float(ap.mean()) if len(ap) else 0.0
    return out


def ranked_relevance(ranked: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Relevance (shares a label) of ranked database indices; ``-1`` entries are not relevant.

    Args:
        ranked: ``int (nq, L)`` database indices, best first (``-1`` = padding).
        query_labels: multi-hot ``(nq, C)``.
        db_labels: multi-hot ``(N, C)``.
    """
    ranked = np.asarray(ranked)
    safe = np.where(ranked >= 0, ranked, 0)
    shared = (np.asarray(db_labels, dtype=bool)[safe] & np.asarray(query_labels, dtype=bool)[:, None, :]).any(axis=2)
    return shared & (ranked >= 0)


def leave_one_out_metrics(rankings: Sequence[np.ndarray], groups: np.ndarray) -> dict[str, float]:
    """Near-duplicate metrics: each video ranks all the others; relevant = same group.

    Args:
        rankings: per query ``i``, the indices of every *other* video, best first.
        groups: ``int (N,)`` group (source family) of each video.

    Returns:
        ``{"map": mean AP over the full ranking (divided by the group's other members), "top1":
        fraction of queries whose first result is in their group, "queries": N}``. Queries alone
        in their group are skipped.
    """
    groups = np.asarray(groups)
    aps, top1 = [], []
    for i, order in enumerate(rankings):
        order = np.asarray(order)
        if np.any(order == i):
            raise ValueError(f"ranking of query {i} contains the query itself")
        rel = groups[order] == groups[i]
        n_rel = int((groups == groups[i]).sum()) - 1
        if n_rel == 0:
            continue
        hits = np.cumsum(rel)
        aps.append(float((rel * hits / np.arange(1, len(rel) + 1)).sum() / n_rel))
        top1.append(bool(rel[0]) if len(rel) else False)
    return {"map": float(np.mean(aps)) if aps else 0.0, "top1": float(np.mean(top1)) if top1 else 0.0,
            "queries": len(aps)}


def _loo_code_rankings(codes: np.ndarray) -> list[np.ndarray]:
    """Leave-one-out rankings by Hamming distance, ties by index (self removed)."""
    from vhindex.eval import stable_topk_hamming

    n = len(codes)
    _, idx = stable_topk_hamming(codes, codes, n)
    return [row[row != i] for i, row in enumerate(idx)]


def _loo_float_rankings(feats: np.ndarray) -> list[np.ndarray]:
    """Leave-one-out rankings by cosine similarity of mean-pooled features, ties by index."""
    x = _mean_pooled_unit(feats)
    out = []
    for i in range(len(x)):
        order = np.argsort(-(x @ x[i]), kind="stable")
        out.append(order[order != i])
    return out


def _mean_pooled_unit(feats: np.ndarray) -> np.ndarray:
    x = feats.astype(np.float32).mean(axis=1)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _float_topk(q: np.ndarray, db: np.ndarray, k: int, chunk: int = 256) -> np.ndarray:
    """Top-``k`` database indices per query by cosine of mean-pooled features (bounded memory)."""
    qx, dx = _mean_pooled_unit(q), _mean_pooled_unit(db)
    out = np.empty((len(qx), min(k, len(dx))), dtype=np.int64)
    for s in range(0, len(qx), chunk):
        sims = qx[s:s + chunk] @ dx.T
        out[s:s + chunk] = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return out


# ------------------------------------------------------------------------------ runner


@dataclasses.dataclass
class BenchOutcome:
    """What :func:`run_quality_bench` measured (also written to ``results.json``).

    Attributes:
        fashion: ``{row: {bits: {"paper": {K: [per seed]}, "standard": {K: [...]}}}}``; the float
            reference row uses bits ``0``.
        neardup: ``{row: {bits: {"map": [per seed], "top1": [per seed]}}}``.
        timings: ``{step: seconds}``.
        info: dataset sizes and settings.
    """

    fashion: dict[str, dict[int, dict[str, Any]]] = dataclasses.field(default_factory=dict)
    neardup: dict[str, dict[int, dict[str, list[float]]]] = dataclasses.field(default_factory=dict)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Runner:
    def __init__(self, cfg: Config, log: Log, command: str, engines: Callable[[Any], tuple[Any, str]]) -> None:
        from vhindex.benchdata.sources import default_roots

        self.cfg = cfg
        self.engines = engines
        self.b = cfg.bench
        self.work = self.b.work.rstrip("/")
        self.roots = default_roots(self.b.sources)
        self.log = log
        self.command = command
        self.out = BenchOutcome()
        self._previous: dict[str, Any] | None = None
        self.t_start = time.perf_counter()

    # -------------------------------------------------------------- helpers

    def _timed(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        self.out.timings[name] = self.out.timings.get(name, 0.0) + time.perf_counter() - t0
        return result

    def _extract(self, listing: str, out: str, section: ExtractSection, key: str) -> FrameDataset:
        from vhindex.pipelines.configured import extract_job
        from vhindex.pipelines.runner import run_sharded_job

        job = extract_job(section, listing, out, key=key)
        engine, name = self.engines(section.pipeline)
        report = run_sharded_job(job, engine, engine_name=name, max_error_fraction=section.pipeline.max_error_fraction,
                                 progress_every_s=section.pipeline.progress_every_s, stream=sys.stdout)
        if report.exit_code != 0:
            raise RuntimeError(f"feature extraction of {listing} into {out} failed: {report.ok} ok, {report.errors} "
                               f"errors {report.error_counts}, failed shards {report.shards_failed}")
        if report.errors:
            self.log(f"  {report.errors} video(s) could not be featurised: {report.error_counts}")
        return FrameDataset.open(out)

    def _train_config(self, bench: str, *, seed: int, out_dir: str, urls: dict[str, str], ds: FrameDataset, bits: int,
                      method: str = "dkph", extra_params: dict[str, Any] | None = None) -> Config:
        """The training config of ``method`` (a learned model) on one benchmark: its ``bench.method_params``
        (``num_frames`` / ``feature_dim`` from the data), the ``train`` section with the benchmark's and the
        method's overrides, and ``graph.anchors`` scaled to the training set (:attr:`BenchSection.anchors_per_video`)."""
        d = self.cfg.model_dump(mode="json")
        train = {**d["train"], **getattr(self.b, f"{bench}_train"), **self.b.method_train.get(method, {}),
                 **(self.b.neardup_method_train.get(method, {}) if bench == "neardup" else {})}
        n_train = FrameDataset.open(urls["train"]).num_videos
        # at least 2a anchors (the graph keeps a nearest anchors per video), at most one per video
        g = self.cfg.graph
        anchors = min(n_train, max(2 * g.nearest_anchors, min(g.anchors, int(self.b.anchors_per_video * n_train))))
        params = dict(self.b.method_params.get(method, {}))
        d["run"] = {**d["run"], "seed": seed, "output_dir": out_dir}
        d["data"] = {**d["data"], **{s: urls[s] for s in SPLITS}}
        d["model"] = {"name": method, "bits": bits,
                      "params": {**params, "num_frames": ds.meta.num_frames, "feature_dim": ds.meta.feature_dim,
                                 **(extra_params or {})}}
        d["graph"] = {**d["graph"], "anchors": anchors}
        d["train"] = {**train, "eval_every": 0}
        return config_from_dict(d, source=f"bench quality ({bench}, {method})")

    def _models(self, bench: str, urls: dict[str, str], seed: int, learn_urls: dict[str, str] | None = None,
                validation: tuple[FrameDataset, FrameDataset] | None = None, *,
                methods: Sequence[str] | None = None, models_root: str | None = None) -> Any:
        """Yield ``(method, bits, model)`` for every video-level method and code length of one seed.

        Baselines fit on ``urls["train"]``. Learned models train on ``learn_urls`` (default ``urls``) and,
        with ``validation`` (queries, database carved from the training clips), keep their best epoch
        on it; the choice is recorded in ``self.out.info[bench]["selection"]``. ``methods`` (default
        ``bench.methods``) and ``models_root`` (default ``<work>/<bench>/models``: where the runs live) let
        the same training run on other features of the benchmark (the UTS student's).
        """
        learn_urls = learn_urls or urls
        from vhindex.inprocess import fit_model
        from vhindex.train.recipes import (
            build_teacher_graph,
            check_datasets,
            student_params,
            train_bth,
            train_mcmsh,
            train_nph,
            train_student,
            train_teacher,
            write_teacher_embeddings,
        )

        train = FrameDataset.open(urls["train"])
        # one folder per training setting: a changed schedule trains afresh instead of hitting a stale checkpoint
        # Methods added later (not in _TAGGED_METHODS) are keyed by their own run folder instead, so adding one
        # (or changing its parameters) does not move the teacher, graph and other methods' runs to a new folder.
        settings = {"train": {**self.cfg.train.model_dump(mode="json"), **getattr(self.b, f"{bench}_train")},
                    "graph": self.cfg.graph.model_dump(mode="json"), "anchors_per_video": self.b.anchors_per_video,
                    "method_params": {m: {k: v for k, v in p.items() if k not in _ABLATION_KEYS.get(m, ())}
                                      for m, p in self.b.method_params.items() if m in _TAGGED_METHODS},
                    "method_train": {m: p for m, p in self.b.method_train.items() if m in _TAGGED_METHODS}}
        if bench == "neardup" and self.b.neardup_method_train:  # absent: the tag of the runs made before it existed
            settings["neardup_method_train"] = {m: p for m, p in self.b.neardup_method_train.items()
                                                if m in _TAGGED_METHODS}
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
        seed_dir = f"{models_root or f'{self.work}/{bench}/models'}/{tag}/seed{seed}"
        graph = None
        for bits in self.b.bits:
            for method in self.b.methods if methods is None else methods:
                if method not in LEARNED:
                    model = self._timed(f"{bench} train {method}", lambda m=method, k=bits: fit_model(
                        m, k, train, seed=seed, batch_size=self.cfg.data.batch_size))
                    yield method, bits, model
                    continue
                if method in SUPERVISED:
                    if bench != "fashion":  # trained on class labels: the fashion clips' (near-dups have none)
                        continue
                    from vhindex.train.supervised import train_dvhcm

                    scfg = self._train_config(bench, seed=seed, out_dir=f"{seed_dir}/runs/{self._run_name(bench, method, bits)}",
                                              urls=learn_urls, ds=train, bits=bits, method=method,
                                              extra_params={"num_classes": int(train.meta.num_classes or 0)})
                    model, _ = self._timed(f"{bench} train {method}", lambda c=scfg: train_dvhcm(
                        c, check_datasets(c), progress=False, validation=validation))
                    self._record_selection(bench, method, bits, seed, f"{scfg.run.output_dir}/{method}/student")
                    yield method, bits, model
                    continue
                if method not in TEACHER_STUDENTS:  # ConMH / GCMH: one stage, no teacher
                    from vhindex.train.contrastive import (
                        build_neighbour_graph,
                        train_contrastive_student,
                        uses_feature_graph,
                    )

                    ccfg = self._train_config(bench, seed=seed, out_dir=f"{seed_dir}/runs/{self._run_name(bench, method, bits)}",
                                              urls=learn_urls, ds=train, bits=bits, method=method)

                    def fit_contrastive(c: Config = ccfg) -> Any:
                        datasets = check_datasets(c)
                        if c.model.name == "gcmh" and uses_feature_graph(student_params(c)):
                            build_neighbour_graph(c, datasets["train"])
                        return train_contrastive_student(c, datasets, progress=False, validation=validation)[0]

                    model = self._timed(f"{bench} train {method}", fit_contrastive)
                    self._record_selection(bench, method, bits, seed, f"{ccfg.run.output_dir}/{method}/student")
                    yield method, bits, model
                    continue
                if graph is None:
                    tcfg = self._train_config(bench, seed=seed, out_dir=seed_dir, urls=learn_urls, ds=train, bits=bits,
                                              method=method)
                    datasets = check_datasets(tcfg)

                    def teacher_graph(tcfg: Config = tcfg, datasets: dict = datasets) -> str:
                        teacher, _ = train_teacher(tcfg, datasets, progress=False)
                        return build_teacher_graph(tcfg, write_teacher_embeddings(tcfg, teacher, datasets["train"]))

                    graph = self._timed(f"{bench} train teacher+graph", teacher_graph)
                vcfg = self._train_config(bench, seed=seed, out_dir=f"{seed_dir}/runs/{self._run_name(bench, method, bits)}",
                                          urls=learn_urls, ds=train, bits=bits, method=method)
                trainer = {"bth": train_bth, "dkph": train_student, "mcmsh": train_mcmsh, "nph": train_nph}[method]
                model, _ = self._timed(f"{bench} train {method}", lambda t=trainer, c=vcfg, g=graph: t(
                    c, check_datasets(c), graph_url=g, progress=False, validation=validation))
                prefix = vcfg.run.output_dir + ("" if method == "dkph" else f"/{method}")
                self._record_selection(bench, method, bits, seed, f"{prefix}/student")
                yield method, bits, model

    def _run_name(self, bench: str, method: str, bits: int) -> str:
        """``<method>-<bits>``; for a method outside :data:`_TAGGED_METHODS` also a hash of its parameters and
        schedule (the seed folder's tag does not cover them), so an ablation trains in a folder of its own."""
        if method in _TAGGED_METHODS:
            ablation = {k: v for k, v in self.b.method_params.get(method, {}).items()
                        if k in _ABLATION_KEYS.get(method, ())}
            if not ablation:
                return f"{method}-{bits}"
            return f"{method}-{bits}-{hashlib.sha256(json.dumps(ablation, sort_keys=True).encode()).hexdigest()[:8]}"
        own = {"params": self.b.method_params.get(method, {}), "train": self.b.method_train.get(method, {})}
        if bench == "neardup" and method in self.b.neardup_method_train:
            own["neardup_train"] = self.b.neardup_method_train[method]
        return f"{method}-{bits}-{hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()[:8]}"

    def _record_selection(self, bench: str, method: str, bits: int, seed: int, stage_url: str) -> None:
        """The validation choice a training stage recorded in its marker (best epoch, curve), if any."""
        from vhindex.train.common import _read_stage

        marker = _read_stage(stage_url, None) or {}
        if "selection" in marker:
            sel = self.out.info.setdefault(bench, {}).setdefault("selection", {})
            sel.setdefault(method, {}).setdefault(str(bits), {})[str(seed)] = marker["selection"]

    def _frame_model(self, method: str, bits: int, train: FrameDataset, seed: int) -> Any:
        """A per-frame hasher (UTS: frames binarised independently): ``method`` fitted on single frames."""
        from vhindex.inprocess import frame_batches
        from vhindex.models import build_model

        d = train.meta.feature_dim
        model = build_model(method, bits)
        model.fit(lambda: (b.reshape(-1, 1, d) for b in frame_batches(train, self.cfg.data.batch_size)), seed=seed)
        return model

    @staticmethod
    def _frame_codes(model: Any, feats: np.ndarray) -> np.ndarray:
        b, m, d = feats.shape
        return model.encode_packed(feats.reshape(b * m, 1, d)).reshape(b, m, -1)

    # -------------------------------------------------------------- fashion

    def fashion(self) -> None:
        from vhindex.benchdata.fashion import FashionClipSpec, build_fashion_clips
        from vhindex.eval import evaluate
        from vhindex.index import FrameLevelIndex
        from vhindex.inprocess import encode_in_memory

        spec = _replace_spec(FashionClipSpec.preset(self.b.fashion_preset), self.b.fashion_overrides, "fashion")
        self.log(f"[fashion] rendering clips ({self.b.fashion_preset}: {spec.train}/{spec.query}/{spec.database})")
        listings = self._timed("fashion render", lambda: build_fashion_clips(
            f"{self.work}/fashion/videos", spec, roots=self.roots, workers=self.b.render_workers, progress=self.log))
        urls = {s: f"{self.work}/fashion/features/{s}" for s in SPLITS}
        ds = {}
        for s in SPLITS:
            self.log(f"[fashion] extracting features: {s}")
            ds[s] = self._timed(f"fashion extract {s}", lambda s=s: self._extract(
                listings[s], urls[s], self.b.fashion_extract, "bench.fashion_extract"))
        q, db = ds["query"], ds["database"]
        n_classes = max(q.meta.num_classes or 0, db.meta.num_classes or 0)
        ql, dl = q.read_labels_multi_hot(n_classes), db.read_labels_multi_hot(n_classes)
        ks = [k for k in self.b.ks if k <= db.num_videos]
        self.out.info["fashion"] = {"spec": dataclasses.asdict(spec), "videos": {s: ds[s].num_videos for s in SPLITS},
                                    "num_frames": q.meta.num_frames, "feature_dim": q.meta.feature_dim,
                                    "extractor": q.meta.extractor, "ks": ks}
        rows = self.out.fashion

        def record(row: str, bits: int, paper: dict[int, float], standard: dict[int, float]) -> None:
            cell = rows.setdefault(row, {}).setdefault(bits, {"paper": {}, "standard": {}})
            for k in ks:
                cell["paper"].setdefault(k, []).append(paper[k])
                cell["standard"].setdefault(k, []).append(standard[k])
            self.log(f"  fashion {row:<22s} {bits:3d} bits  mAP@{ks[min(1, len(ks) - 1)]} paper "
                     f"{paper[ks[min(1, len(ks) - 1)]]:.4f}  standard {standard[ks[min(1, len(ks) - 1)]]:.4f}")

        qf, df = _read_features(q), _read_features(db)
        rel = ranked_relevance(_float_topk(qf, df, max(ks)), ql, dl)
        record("float mean-pool (cosine)", 0, map_at_k_from_relevance(rel, ks, "paper"),
               map_at_k_from_relevance(rel, ks, "standard"))
        learn_urls, validation = urls, None
        if self.b.validation_queries and self.b.validation_database and any(m in LEARNED for m in self.b.methods):
            learn_urls = self._timed("fashion validation split", lambda: carve_validation(
                urls["train"], f"{self.work}/fashion/features/validation", self.b.validation_queries,
                self.b.validation_database))
            validation = (FrameDataset.open(learn_urls["query"]), FrameDataset.open(learn_urls["database"]))
            self.out.info["fashion"]["validation"] = {"train": FrameDataset.open(learn_urls["train"]).num_videos,
                                                      "queries": self.b.validation_queries,
                                                      "database": self.b.validation_database,
                                                      "rule": "best epoch by validation mAP@20 (paper protocol)"}
        for seed in self.b.seeds:
            for method, bits, model in self._models("fashion", urls, seed, learn_urls, validation):
                def score(model: Any = model) -> tuple[Any, Any]:
                    qi, qc = encode_in_memory(model, q)
                    di, dc = encode_in_memory(model, db)
                    assert qi == q.read_video_ids() and di == db.read_video_ids()
                    return tuple(evaluate(dc, qc, dl, ql, ks=ks, protocol=p, pr=False, precision_ns=[]).map_at_k
                                 for p in ("paper", "standard"))
                paper, standard = self._timed(f"fashion eval {method}", score)
                if method in SUPERVISED:
                    plain_row, mask_row = (r.format(method) for r in SUPERVISED_ROWS)
                    record(plain_row, bits, paper, standard)
                    record(mask_row, bits, *self._timed(
                        f"fashion eval {method} + mask", lambda m=model, b=bits, s=seed: _masked_maps(
                            m, q, db, qf, ql, dl, ks, self.out.info["fashion"], b, s, validation)))
                    continue
                record(method, bits, paper, standard)
            for method in self.b.frame_methods:
                for bits in self.b.bits:
                    def uts(method: str = method, bits: int = bits, seed: int = seed) -> tuple[dict, dict]:
                        fm = self._frame_model(method, bits, ds["train"], seed)
                        index = FrameLevelIndex(bits)
                        index.add(db.read_video_ids(), self._frame_codes(fm, df))
                        pos = {v: i for i, v in enumerate(db.read_video_ids())}
                        res = index.search_batch(list(self._frame_codes(fm, qf)), max(ks), top_n=self.b.uts_top_n)
                        ranked = np.full((len(res), max(ks)), -1, dtype=np.int64)
                        for i, (ids, _) in enumerate(res):
                            ranked[i, :len(ids)] = [pos[v] for v in ids]
                        r = ranked_relevance(ranked, ql, dl)
                        return map_at_k_from_relevance(r, ks, "paper"), map_at_k_from_relevance(r, ks, "standard")
                    paper, standard = self._timed(f"fashion uts-{method}", uts)
                    record(f"uts frame-level {method}", bits, paper, standard)

    # -------------------------------------------------------------- near-duplicates

    def neardup(self) -> None:
        from vhindex.benchdata.neardup import NearDupSpec, build_neardup
        from vhindex.index import FrameLevelIndex
        from vhindex.index.frames import rank_videos_leave_one_out
        from vhindex.inprocess import encode_in_memory

        spec = _replace_spec(NearDupSpec.preset(self.b.neardup_preset), self.b.neardup_overrides, "neardup")
        self.log(f"[neardup] making variants ({self.b.neardup_preset})")
        listing = self._timed("neardup variants", lambda: build_neardup(
            f"{self.work}/neardup/videos", spec, roots=self.roots, workers=self.b.render_workers, progress=self.log))
        url = f"{self.work}/neardup/features/all"
        self.log("[neardup] extracting features")
        ds = self._timed("neardup extract", lambda: self._extract(listing, url, self.b.neardup_extract,
                                                                 "bench.neardup_extract"))
        ids = ds.read_video_ids()
        labels = ds.read_labels_multi_hot()
        if (labels.sum(axis=1) != 1).any():
            raise ValueError(f"{url}: every near-duplicate video needs exactly one family label")
        groups = labels.argmax(axis=1)
        feats = _read_features(ds)
        self.out.info["neardup"] = {"spec": dataclasses.asdict(spec), "videos": len(ids),
                                    "families": int(len(np.unique(groups))), "num_frames": ds.meta.num_frames,
                                    "feature_dim": ds.meta.feature_dim, "extractor": ds.meta.extractor}
        rows = self.out.neardup

        def record(row: str, bits: int, m: dict[str, float]) -> None:
            cell = rows.setdefault(row, {}).setdefault(bits, {"map": [], "top1": []})
            cell["map"].append(m["map"])
            cell["top1"].append(m["top1"])
            self.log(f"  neardup {row:<22s} {bits:3d} bits  mAP {m['map']:.4f}  top-1 {m['top1']:.4f}")

        record("float mean-pool (cosine)", 0, leave_one_out_metrics(_loo_float_rankings(feats), groups))
        urls = {s: url for s in SPLITS}  # unsupervised: trained on the very videos it indexes
        for seed in self.b.seeds:
            for method, bits, model in self._models("neardup", urls, seed):
                _, codes = encode_in_memory(model, ds)
                record(method, bits, leave_one_out_metrics(_loo_code_rankings(codes), groups))
            for method in self.b.frame_methods:
                for bits in self.b.bits:
                    def uts(method: str = method, bits: int = bits, seed: int = seed) -> dict[str, float]:
                        fm = self._frame_model(method, bits, ds, seed)
                        codes = self._frame_codes(fm, feats)
                        index = FrameLevelIndex(bits)
                        index.add(ids, codes)
                        ranked = rank_videos_leave_one_out(index, ids, list(codes), top_n=self.b.uts_top_n)
                        pos = {v: i for i, v in enumerate(ids)}
                        return leave_one_out_metrics([np.array([pos[v] for v in r]) for r in ranked], groups)
                    record(f"uts frame-level {method}", bits, self._timed(f"neardup uts-{method}", uts))
            if self.b.uts_student:
                self._uts_rows(listing, ds, feats, groups, seed, record)

    def _uts_rows(self, listing: str, ds: FrameDataset, feats: np.ndarray, groups: np.ndarray, seed: int,
                  record: Callable[[str, int, dict[str, float]], None]) -> None:
        """UTS (seed 003) on the near-duplicates: the teacher-student network trained on the families' canonical
        sources (``__original``; the variants are never seen), then frame codes by LSH at ``bench.uts_bits`` of
        (a) the Lite0 features, (b) the teacher's (Lite0 + the PCA fc, applied to the same stored features), (c)
        the student's (the extraction job with backbone ``uts_student``), each searched leave-one-out by the
        frame-level pipeline (Algorithm 1)."""
        from vhindex.benchdata.neardup import ORIGINAL
        from vhindex.config import load_config
        from vhindex.index import FrameLevelIndex
        from vhindex.index.frames import rank_videos_leave_one_out
        from vhindex.models import build_model
        from vhindex.pipelines.extract import read_listing
        from vhindex.train.uts import run_uts_recipe

        sources = [v for v in read_listing(listing) if v.video_id.endswith("__" + ORIGINAL)]
        if not sources:
            raise ValueError(f"{listing}: no canonical source (__{ORIGINAL}) videos for UTS to train on")
        root = f"{self.work}/neardup/uts"
        Path(root).mkdir(parents=True, exist_ok=True)
        src_listing = f"{root}/sources.csv"
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")  # quoted: a path may hold a comma
        writer.writerows([("uri", "video_id"), *((v.uri, v.video_id) for v in sources)])
        text = buf.getvalue()
        if not Path(src_listing).exists() or Path(src_listing).read_text() != text:
            Path(src_listing).write_text(text)
        e = self.b.neardup_extract
        overrides = [*self.b.uts_overrides, f"extract.listing={src_listing}", f"run.seed={seed}",
                     "train.backend=local", f"extract.image_size={e.image_size}"]
        tag = hashlib.sha256(json.dumps([Path(self.b.uts_config).read_text(), self.b.uts_overrides, e.image_size]
                                        ).encode()).hexdigest()[:10]
        ucfg = load_config(self.b.uts_config, [*overrides, f"run.output_dir={root}/{tag}/seed{seed}"])
        result = self._timed("neardup train uts", lambda: run_uts_recipe(ucfg, progress=False))
        with np.load(f"{ucfg.run.output_dir}/uts/teacher/teacher.npz") as z:
            weight, bias = z["weight"], z["bias"]
        student_section = e.model_copy(update={"backbone": "uts_student",
                                               "weights": f"{result.model_url}/weights.pt"})
        student_ds = self._timed("neardup extract uts student", lambda: self._extract(
            listing, f"{ucfg.run.output_dir}/features", student_section, "bench.neardup_extract (uts_student)"))
        if student_ds.read_video_ids() != ds.read_video_ids():
            raise RuntimeError("the UTS student's features do not cover the benchmark's videos in order")
        variants = {"frame lsh: Lite0 features": feats,
                    "frame lsh: UTS teacher (Lite0 + PCA fc)": (feats @ weight.T + bias).astype(np.float32),
                    "frame lsh: UTS student": _read_features(student_ds)}
        ids = ds.read_video_ids()
        pos = {v: i for i, v in enumerate(ids)}
        for row, frame_feats in variants.items():
            for bits in self.b.uts_bits:
                def score(frame_feats: np.ndarray = frame_feats, bits: int = bits) -> dict[str, float]:
                    b_, m_, d_ = frame_feats.shape
                    lsh = build_model("lsh", bits)
                    lsh.fit(lambda: iter([frame_feats.reshape(-1, 1, d_)]), seed=seed)
                    codes = lsh.encode_packed(frame_feats.reshape(b_ * m_, 1, d_)).reshape(b_, m_, -1)
                    index = FrameLevelIndex(bits)
                    index.add(ids, codes)
                    ranked = rank_videos_leave_one_out(index, ids, list(codes), top_n=self.b.uts_top_n)
                    return leave_one_out_metrics([np.array([pos[v] for v in r]) for r in ranked], groups)
                record(row, bits, self._timed(f"neardup {row}", score))
        if self.b.uts_video_methods:
            self._uts_video_rows(student_ds, f"{root}/{tag}/video_models", groups, seed, record)

    def _uts_video_rows(self, student_ds: FrameDataset, models_root: str, groups: np.ndarray, seed: int,
                        record: Callable[[str, int, dict[str, float]], None]) -> None:
        """Video-level codes over the UTS student's features (``bench.uts_video_methods`` at ``bench.bits``).

        The student (trained on the families' sources, no labels) replaces the Lite0 features under the same
        video-level methods, trained like their Lite0 rows (unsupervised, on the very videos they index);
        the runs live under ``models_root`` (the UTS run's folder), apart from the Lite0 runs."""
        from vhindex.inprocess import encode_in_memory

        student_feats = _read_features(student_ds)
        record("float mean-pool: UTS student features", 0,
               leave_one_out_metrics(_loo_float_rankings(student_feats), groups))
        urls = {s: student_ds.url for s in SPLITS}
        for method, bits, model in self._models("neardup", urls, seed, methods=self.b.uts_video_methods,
                                                models_root=models_root):
            _, codes = encode_in_memory(model, student_ds)
            record(f"{method}: UTS student features", bits, leave_one_out_metrics(_loo_code_rankings(codes), groups))

    # -------------------------------------------------------------- report

    def _with_earlier_rows(self) -> BenchOutcome:
        """This run's outcome plus the rows of methods it did not run, kept from the previous report of the same
        benchmark data (``--methods`` runs a subset: the other rows stay)."""
        path = Path(self.b.report)
        prev_path = path.parent / (path.stem + ".json")
        if self._previous is None:
            try:
                self._previous = json.loads(prev_path.read_text()) if prev_path.exists() else {}
            except (OSError, ValueError):
                self._previous = {}
        out = copy.deepcopy(self.out)
        for bench in ("fashion", "neardup"):
            old_info = self._previous.get("info", {}).get(bench, {})
            new_info = out.info.get(bench, {})
            if not old_info or old_info.get("spec") != new_info.get("spec") or old_info.get("videos") != new_info.get(
                    "videos"):
                continue  # other data: nothing to keep
            rows = getattr(out, bench)
            for row, cells in self._previous.get(bench, {}).items():
                if row not in rows:
                    rows[row] = {int(bits): _int_keys(cell) for bits, cell in cells.items()}
        return out

    def report(self, final: bool) -> str:
        merged = self._with_earlier_rows()
        text = render_report(merged, self.cfg, self.command, time.perf_counter() - self.t_start)
        if not final:
            text += "\n(partial: still running)\n"
        path = Path(self.b.report)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        (path.parent / (path.stem + ".json")).write_text(json.dumps(merged.to_dict(), indent=1, default=str))
        if self.b.plots and final:
            write_plots(merged, path.parent / path.stem)
        return text


def merge_reports(parts: Sequence[str], cfg: Config, command: str, combine_rows: Sequence[str] = (), *,
                  new_rows_only: bool = False) -> BenchOutcome:
    """Merge ``results.json`` files of runs over the same benchmark data (e.g. one process per method) into the
    report at ``cfg.bench.report`` (markdown, JSON, plots): cells are merged per (method row, code length), a later
    file's cell winning (so runs split by method or by code length combine); timings and selections are combined.

    ``combine_rows``: rows whose cells *add* a later file's seeds to the earlier ones instead of being replaced
    (runs split by seed). A fashion cell of such a row whose seed the earlier files' selection records already
    hold raises ``ValueError`` (the same seed twice); near-duplicate cells carry no per-seed record and are
    appended unchecked.

    ``new_rows_only``: a later file only *adds* rows (and their selection records and settings) that the earlier
    files do not have; the rows already there keep their cells (e.g. to add the separately run models of the
    zoo to the main report without the 3-seed reruns of a baseline those runs carry replacing its cells).

    Raises ``ValueError`` when two files hold different benchmark data (spec or video counts)."""
    merged = BenchOutcome()
    combine = set(combine_rows)
    for path in parts:
        obj = json.loads(Path(path).read_text())
        for bench in ("fashion", "neardup"):
            info = obj.get("info", {}).get(bench)
            if not info:
                continue
            mine = merged.info.setdefault(bench, {})
            rows = getattr(merged, bench)
            keep = set(rows) if new_rows_only else set()  # rows an earlier file holds and this one may not touch
            for key in ("spec", "videos"):
                if key in mine and key in info and mine[key] != info[key]:
                    raise ValueError(f"{path}: its {bench} {key} differs from the files before it; not the same data")
            selection = {**mine.get("selection", {})}
            for method, per_bits in info.get("selection", {}).items():
                if new_rows_only and (method in keep or method in mine.get("selection", {})):
                    continue
                for bits, per_seed in per_bits.items():
                    earlier = selection.setdefault(method, {}).setdefault(bits, {})
                    if method in combine:
                        twice = sorted(set(earlier) & set(per_seed))
                        if twice:
                            raise ValueError(f"{path}: {bench} {method} at {bits} bits has seed(s) {twice} that an "
                                             "earlier file already holds; combine runs of other seeds only")
                        earlier.update(per_seed)
                    else:
                        selection[method][bits] = dict(per_seed)
            if new_rows_only:
                for key, value in info.items():
                    mine.setdefault(key, value)
            else:
                mine.update(info)
            if selection:
                mine["selection"] = selection
            for row, cells in obj.get(bench, {}).items():
                if row in keep:
                    continue
                for bits, cell in cells.items():
                    cell, have = _int_keys(cell), rows.setdefault(row, {})
                    if row in combine and int(bits) in have:
                        _append_cell(have[int(bits)], cell)
                    else:
                        have[int(bits)] = cell
        for step, sec in obj.get("timings", {}).items():
            merged.timings[step] = merged.timings.get(step, 0.0) + float(sec)
    report = Path(cfg.bench.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(merged, cfg, command, sum(merged.timings.values()), merged=True))
    (report.parent / (report.stem + ".json")).write_text(json.dumps(merged.to_dict(), indent=1, default=str))
    if cfg.bench.plots:
        write_plots(merged, report.parent / report.stem)
    return merged


def _append_cell(into: dict[str, Any], cell: dict[str, Any]) -> None:
    """Append ``cell``'s per-seed values to ``into`` (same metrics), in place."""
    for metric, values in cell.items():
        if isinstance(values, dict):
            for k, vs in values.items():
                into.setdefault(metric, {}).setdefault(k, []).extend(vs)
        else:
            into.setdefault(metric, []).extend(values)


def carve_validation(train_url: str, out: str, n_query: int, n_database: int, seed: int = 0) -> dict[str, str]:
    """A validation split carved from the labelled training clips: ``{"train", "query", "database"}`` dataset
    URLs under ``out`` (the rest of the clips, ``n_query`` validation queries, ``n_database`` validation database
    clips; a seeded permutation, written once and reused). Learned models train on ``train`` and choose their
    epoch on the other two; the test query / database are never read for it."""
    from vhindex.data import FrameDatasetWriter

    urls = {"train": f"{out}/train", "query": f"{out}/query", "database": f"{out}/database"}
    stamp = Path(out) / "_split.json"
    want = {"source": FrameDataset.open(train_url).manifest.to_dict().get("created_at"), "n_query": n_query,
            "n_database": n_database, "seed": seed}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return urls
    ds = FrameDataset.open(train_url)
    feats, ids, labels = [], [], []
    for fb in ds.iter_batches(4096, columns=("video_id", "features", "labels")):
        feats.append(np.asarray(fb.features))
        ids.extend(fb.video_ids)
        labels.extend(fb.labels)
    if n_query + n_database >= len(ids):
        raise ValueError(f"bench.validation_queries + validation_database = {n_query + n_database} leaves no "
                         f"training clip of the {len(ids)}")
    x = np.concatenate(feats)
    perm = np.random.default_rng([seed, 7]).permutation(len(ids))
    parts = {"query": perm[:n_query], "database": perm[n_query:n_query + n_database],
             "train": np.sort(perm[n_query + n_database:])}
    # written aside, then moved into place: runners started side by side (one per method) never read a
    # half-written split; the first to finish wins, the others' identical copies are dropped
    tmp = Path(f"{out}.tmp-{os.getpid()}")
    for name, rows in parts.items():
        with FrameDatasetWriter(str(tmp / name), ds.meta, with_labels=True, row_group_size=256, overwrite=True) as w:
            for s in range(0, len(rows), 1024):
                sel = rows[s:s + 1024]
                w.write([ids[i] for i in sel], x[sel], [labels[i] for i in sel])
    (tmp / "_split.json").write_text(json.dumps(want))
    import shutil

    if Path(out).exists():
        if stamp.exists() and json.loads(stamp.read_text()) == want:
            shutil.rmtree(tmp)
            return urls
        shutil.rmtree(out)  # an older split (other sizes or data)
    try:
        os.rename(tmp, out)
    except OSError:  # another runner moved its identical split in first
        shutil.rmtree(tmp, ignore_errors=True)
    return urls


def _int_keys(cell: Any) -> Any:
    """A results.json cell with its K keys back as ints (``{"paper": {"20": [...]}}`` -> ``{20: [...]}``)."""
    if isinstance(cell, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in cell.items()}
    return cell


def _check_methods(cfg: Config) -> None:
    """Fail before any rendering on a method name the registry does not know (names listed)."""
    from vhindex.models import MODEL_REGISTRY

    known = sorted(MODEL_REGISTRY)
    for key, names in (("bench.methods", cfg.bench.methods), ("bench.frame_methods", cfg.bench.frame_methods),
                       ("bench.uts_video_methods", cfg.bench.uts_video_methods)):
        for name in names:
            if name not in known:
                raise ValueError(f"{key}: unknown model name {name!r}; known models: {known}")
            if key == "bench.frame_methods" and name in LEARNED:
                raise ValueError(f"{key}: {name!r} is a video-level model; frame-level hashers: "
                                 f"{[n for n in known if n not in LEARNED]}")
            if key == "bench.uts_video_methods" and name in SUPERVISED:
                raise ValueError(f"{key}: {name!r} trains on class labels; the near-duplicates have none")
    if cfg.bench.uts_video_methods and not cfg.bench.uts_student:
        raise ValueError("bench.uts_video_methods needs bench.uts_student: true (they run on the student's features)")


def _replace_spec(spec: Any, overrides: dict[str, Any], name: str) -> Any:
    """``spec`` with ``overrides`` applied (YAML lists become the tuples the spec fields hold)."""
    fields = {f.name for f in dataclasses.fields(spec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"bench.{name}_overrides: unknown field(s) {unknown}; known: {sorted(fields)}")
    return dataclasses.replace(spec, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


def _read_features(ds: FrameDataset) -> np.ndarray:
    from vhindex.inprocess import frame_batches

    parts = list(frame_batches(ds))
    return np.concatenate(parts) if parts else np.zeros((0, ds.meta.num_frames, ds.meta.feature_dim), np.float16)


def _cell(values: Sequence[float]) -> str:
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return "-"
    return f"{v.mean():.3f}" if len(v) == 1 else f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"


#: the category-mask ratios tried on the validation split (1.0 = no mask)
MASK_RATIOS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _masked_ranking(qc: np.ndarray, dc: np.ndarray, categories: np.ndarray, table: Any, depth: int) -> np.ndarray:
    """Top-``depth`` database positions per query under the category-mask distance (ties: lower position first,
    as :func:`vhindex.eval.evaluate`)."""
    from vhindex.index.mask import masked_distances

    ranked = np.empty((len(qc), depth), dtype=np.int64)
    for start in range(0, len(qc), 256):  # (256, N) distances at a time
        dist = masked_distances(qc[start:start + 256], dc, categories[start:start + 256], table)
        ranked[start:start + 256] = np.argsort(dist, axis=1, kind="stable")[:, :depth]
    return ranked


def _choose_mask_ratio(model: Any, validation: tuple[FrameDataset, FrameDataset] | None) -> tuple[float, dict]:
    """The mask ratio with the best validation mAP@20 (paper protocol; ties: the larger ratio), and every ratio's
    score; without a validation split, the model's own ``mask_ratio``."""
    from vhindex.inprocess import encode_in_memory

    if validation is None:
        return float(model.mask_ratio), {}
    vq, vdb = validation
    n = max(vq.meta.num_classes or 0, vdb.meta.num_classes or 0)
    vql, vdl = vq.read_labels_multi_hot(n), vdb.read_labels_multi_hot(n)
    _, qc = encode_in_memory(model, vq)
    _, dc = encode_in_memory(model, vdb)
    categories = model.classify(_read_features(vq))
    k = min(20, vdb.num_videos)
    scores = {r: map_at_k_from_relevance(ranked_relevance(_masked_ranking(qc, dc, categories, model.category_masks(r),
                                                                          k), vql, vdl), [k], "paper")[k]
              for r in MASK_RATIOS}
    best = max(scores, key=lambda r: (round(scores[r], 12), r))
    return best, scores


def _masked_maps(model: Any, q: FrameDataset, db: FrameDataset, q_frames: np.ndarray, ql: np.ndarray,
                 dl: np.ndarray, ks: list[int], info: dict[str, Any], bits: int, seed: int,
                 validation: tuple[FrameDataset, FrameDataset] | None) -> tuple[dict, dict]:
    """mAP of a classifying model (DVHCM) with each query ranked under its predicted category's mask, both
    protocols. The mask ratio is chosen on the validation split (:func:`_choose_mask_ratio`) and recorded in
    ``info["mask_ratio"]``; the masked search is timed against the plain flat search into
    ``info["masked_search"][bits]``."""
    import faiss

    from vhindex.index.mask import masked_search
    from vhindex.inprocess import encode_in_memory

    ratio, scores = _choose_mask_ratio(model, validation)
    info.setdefault("mask_ratio", {}).setdefault(str(bits), {})[str(seed)] = {"ratio": ratio, "validation": scores}
    _, qc = encode_in_memory(model, q)
    _, dc = encode_in_memory(model, db)
    categories = model.classify(q_frames)
    table = model.category_masks(ratio)
    rel = ranked_relevance(_masked_ranking(qc, dc, categories, table, max(ks)), ql, dl)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        flat = faiss.IndexBinaryFlat(bits)
        flat.add(dc)
        t0 = time.perf_counter()
        flat.search(qc, max(ks))
        plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        masked_search(dc, qc, categories, max(ks), table)
        masked = time.perf_counter() - t0
    finally:
        faiss.omp_set_num_threads(threads)
    info.setdefault("masked_search", {})[str(bits)] = {"plain_ms": 1000 * plain / len(qc),
                                                       "masked_ms": 1000 * masked / len(qc)}
    return map_at_k_from_relevance(rel, ks, "paper"), map_at_k_from_relevance(rel, ks, "standard")


def _row_order(rows: dict[str, Any]) -> list[str]:
    first = [r for r in rows if r.startswith("float")]
    return first + [r for r in rows if not r.startswith("float")]


def render_report(out: BenchOutcome, cfg: Config, command: str, seconds: float, *, merged: bool = False) -> str:
    """The markdown report: settings, the fashion mAP tables, the near-duplicate table, timings. ``merged``: the
    cells come from several runs (``vhindex bench merge``), so the seeds are stated per cell, not from ``cfg``."""
    b = cfg.bench
    seeds = ("seeds per cell (a ± cell is the mean ± sample std of several seeds, any other cell one seed)"
             if merged else f"seeds {b.seeds}")
    lines = [f"# Real-data retrieval quality ({dt.datetime.now().isoformat(timespec='seconds')})", "",
             f"machine: {platform.node()}, {os.cpu_count()} CPUs; command: `{command}`; "
             f"{seeds}; total {seconds:.0f} s", ""]
    t = cfg.train
    from vhindex.models import model_params

    hidden = model_params("dkph", {k: v for k, v in b.method_params.get("dkph", {}).items() if k == "hidden"})["hidden"]
    lines += [f"Learned models: d={hidden}, teacher {t.teacher_epochs} epochs at {t.teacher_bits or 'K'} bits, "
              f"students {t.epochs} epochs, batch {t.batch_size}, lr {t.lr}, anchors min({cfg.graph.anchors}, "
              f"{b.anchors_per_video} x training videos)"
              + "".join(f"; {n} benchmark: {o}" for n, o in (("fashion", b.fashion_train), ("near-duplicate",
                                                                                      b.neardup_train)) if o)
              + f". UTS: top-N = {b.uts_top_n} frames per query frame."
              + "".join(f" {m}: {b.method_params.get(m, {})}, train {b.method_train.get(m, {})}"
                        + (f", near-duplicate train {b.neardup_method_train[m]}" if m in b.neardup_method_train else "")
                        + "." for m in b.methods if m in LEARNED and (b.method_params.get(m) or b.method_train.get(m))),
              ""]
    if out.fashion:
        info = out.info.get("fashion", {})
        ks = info.get("ks", b.ks)
        lines += ["## Fashion-MNIST clips (labelled; relevance = a shared label)", "",
                  f"videos {info.get('videos')}, M={info.get('num_frames')}, D={info.get('feature_dim')} "
                  f"({info.get('extractor')}). Mean ± sample std over seeds where several ran.", ""]
        val = info.get("validation")
        if val:
            lines += [f"**Selection rule.** Learned models train on {val['train']} of the training clips and keep the "
                      f"epoch with the best validation mAP@20 (paper protocol) on {val['queries']} queries against "
                      f"{val['database']} database clips carved (seeded) from the *training* clips; query and database "
                      "are never used for any choice. Baselines and the float reference use every training clip.", ""]
            sel = info.get("selection", {})
            if sel:
                lines += ["| learned method | bits | chosen epoch per seed | best validation mAP@20 per seed |",
                          "|---|---|---|---|"]
                for m, per_bits in sel.items():
                    for bits_, per_seed in sorted(per_bits.items(), key=lambda kv: int(kv[0])):
                        runs = [per_seed[x] for x in sorted(per_seed, key=int)]
                        epochs = ", ".join(str(r["best_epoch"]) for r in runs)
                        scores = ", ".join(f"{r['best_val']:.4f}" for r in runs)
                        lines.append(f"| {m} | {bits_} | {epochs} | {scores} |")
                lines.append("")
        for protocol in ("paper", "standard"):
            lines += [f"### mAP@K, {protocol} protocol", "",
                      "| method | bits | " + " | ".join(f"mAP@{k}" for k in ks) + " |",
                      "|---|---|" + "---|" * len(ks)]
            for row in _row_order(out.fashion):
                if "(supervised)" in row:
                    continue
                for bits, cell in sorted(out.fashion[row].items()):
                    lines.append(f"| {row} | {bits or 'float'} | "
                                 + " | ".join(_cell(cell[protocol].get(k, [])) for k in ks) + " |")
            lines.append("")
        supervised = [r for r in _row_order(out.fashion) if "(supervised)" in r]
        if supervised:
            lines += ["### Supervised: trained on the training clips' labels", "",
                      "DVHCM learns from the class labels of the training clips (the unsupervised rows above never see "
                      "them); `+ category mask`: each query is ranked under the mask of its *predicted* category "
                      "(DVHCM eq. 8), with the mask ratio chosen per model on the validation split (mAP@20, paper "
                      f"protocol; ratios {list(MASK_RATIOS)}, 1.0 = no mask).", ""]
            chosen = info.get("mask_ratio", {})
            if chosen:
                lines += ["| bits | chosen ratio per seed |", "|---|---|"]
                for bits_, per_seed in sorted(chosen.items(), key=lambda kv: int(kv[0])):
                    lines.append(f"| {bits_} | " + ", ".join(f"{per_seed[x]['ratio']:.1f}"
                                                               for x in sorted(per_seed, key=int)) + " |")
                lines.append("")
            for protocol in ("paper", "standard"):
                lines += [f"mAP@K, {protocol} protocol:", "",
                          "| method | bits | " + " | ".join(f"mAP@{k}" for k in ks) + " |",
                          "|---|---|" + "---|" * len(ks)]
                for row in supervised:
                    for bits, cell in sorted(out.fashion[row].items()):
                        lines.append(f"| {row} | {bits} | "
                                     + " | ".join(_cell(cell[protocol].get(k, [])) for k in ks) + " |")
                lines.append("")
            speed = info.get("masked_search", {})
            if speed:
                lines += ["Search speed over the database codes (all queries, one thread; masked = the category-mask "
                          "distance through `vhindex.index.mask.masked_search`, plain = faiss `IndexBinaryFlat`):", "",
                          "| bits | plain ms / query | masked ms / query | masked / plain |", "|---|---|---|---|"]
                for bits_, v in sorted(speed.items(), key=lambda kv: int(kv[0])):
                    lines.append(f"| {bits_} | {v['plain_ms']:.4f} | {v['masked_ms']:.4f} | "
                                 f"{v['masked_ms'] / max(v['plain_ms'], 1e-9):.2f} |")
                lines.append("")
    if out.neardup:
        info = out.info.get("neardup", {})
        # the configured lengths plus any a row has (UTS's frame rows: 64 / 256 / 512)
        nd_bits = sorted(set(b.bits) | {int(k) for cells in out.neardup.values() for k in cells if int(k)})
        lines += ["## Near-duplicates of real videos (leave-one-out; relevant = same source family)", "",
                  f"{info.get('videos')} videos in {info.get('families')} families, M={info.get('num_frames')}, "
                  f"D={info.get('feature_dim')} ({info.get('extractor')}).", "",
                  "| method | " + " | ".join(f"{k or 'float'} bits mAP / top-1" if k else "float mAP / top-1"
                                            for k in [0] + nd_bits) + " |",
                  "|---|" + "---|" * (1 + len(nd_bits))]
        for row in _row_order(out.neardup):
            cells = []
            for bits in [0] + nd_bits:
                c = out.neardup[row].get(bits)
                cells.append(f"{_cell(c['map'])} / {_cell(c['top1'])}" if c else "")
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
        if any(row.endswith(": UTS student features") for row in out.neardup):
            lines += ["Rows `...: UTS student features`: the same video-level method over the features of UTS's "
                      "student CNN (trained without labels on the families' `__original` sources; the variants are "
                      "never seen) instead of the Lite0 features; like every row here it is trained on the very "
                      "videos it indexes.", ""]
    if out.timings:
        lines += ["## Seconds per step (2-core machine; train = every code length and seed together)", "",
                  "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in out.timings.items()]
        lines.append("")
    return "\n".join(lines)


def write_plots(out: BenchOutcome, prefix: Path) -> list[Path]:
    """PNG plots: fashion mAP@20 (paper) and near-duplicate mAP / top-1 against code length per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    panels: list[tuple[str, dict[str, Any], Callable[[Any], list[float]], str]] = []
    if out.fashion:
        ks = out.info.get("fashion", {}).get("ks", [20])
        k = 20 if 20 in ks else ks[0]
        panels.append((f"fashion clips: mAP@{k} (paper)", out.fashion, lambda c, k=k: c["paper"].get(k, []),
                       "fashion"))
    if out.neardup:
        panels.append(("near-duplicates: mAP", out.neardup, lambda c: c["map"], "neardup_map"))
        panels.append(("near-duplicates: top-1 accuracy", out.neardup, lambda c: c["top1"], "neardup_top1"))
    for title, rows, get, name in panels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in _row_order(rows):
            cells = rows[row]
            if set(cells) == {0}:
                ax.axhline(float(np.mean(get(cells[0]))), color="grey", linestyle="--", label=row)
                continue
            bits = sorted(k for k in cells if k)
            ax.plot(bits, [float(np.mean(get(cells[x]))) for x in bits], marker="o", label=row)
        ax.set_xscale("log", base=2)
        ticks = sorted({k for cells in rows.values() for k in cells if k})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("bits")
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = Path(f"{prefix}_{name}.png")
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def run_quality_bench(cfg: Config, *, log: Log | None = None, command: str = "vhindex bench quality",
                      engines: Callable[[Any], tuple[Any, str]] | None = None) -> BenchOutcome:
    """Run the configured real-data benchmarks (``cfg.bench``) and write the report; see the module docstring.

    Args:
        cfg: the config (``bench`` section; ``model``, ``train`` and ``graph`` for the learned models).
        log: progress lines (default: print).
        command: the command line recorded in the report.
        engines: ``PipelineSection -> (engine, name)`` for the feature extraction (the app layer passes
            :func:`vhindex.app.engines.select_engine`); None: in-process (``run_local``) whatever the section says.

    Returns:
        The measured :class:`BenchOutcome` (also in ``<report>.json``).
    """
    _check_methods(cfg)
    if engines is None:
        from vhindex.pipelines.runner import run_local

        def engines(_pipeline: Any) -> tuple[Any, str]:
            return run_local, "local"

    runner = _Runner(cfg, log or (lambda m: print(m, flush=True)), command, engines)
    for bench in cfg.bench.benchmarks:
        getattr(runner, bench)()
        runner.report(final=False)
    text = runner.report(final=True)
    runner.log("\n" + text)
    runner.log(f"report written to {cfg.bench.report}")
    return runner.out

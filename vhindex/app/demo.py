"""``vhindex demo``: the whole single-machine pipeline on an embedded synthetic dataset.

synthesize (or reuse) a dataset -> fit each baseline at each code length -> (``demo.learned``)
train the learned students with the :mod:`vhindex.train` recipe -> encode query and database
splits to codes datasets -> mAP@K table -> build a binary index with the best code of the largest
length -> answer example queries -> write results (JSON, markdown, PNG plots) into the run folder.

Learned students (DKPH, BTH) share one teacher, its embeddings and one anchor graph (built in this
process, no Dask cluster) under ``<output_dir>/learned``; each student trains under
``<output_dir>/learned/<name>``. Every stage is skipped when complete (``_stage.json``), so a re-run
with the same settings only re-encodes and re-evaluates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from vhindex.config import Config, config_from_dict
from vhindex.data import CodesDataset, FrameDataset
from vhindex.data.synth import ensure_synthetic
from vhindex.eval import evaluate, markdown_table, write_report
from vhindex.index import BinaryFlatIndex
from vhindex.inprocess import encode_dataset, fit_model, labels_for

log = logging.getLogger(__name__)

SPLITS = ("train", "query", "database")
LEARNED = ("gcmh", "conmh", "dkph", "bth")
TEACHER_STUDENTS = ("dkph", "bth")  # share one teacher and graph
DEMO_TEACHER_BITS = 64  # teacher code length when train.teacher_bits is null (independent of the students')


@dataclass
class DemoResult:
    """Outputs of a demo run (also written to ``<output_dir>/eval``)."""

    table_markdown: str
    results: dict = field(default_factory=dict)
    best_method: str = ""
    seconds: float = 0.0


def learned_config(cfg: Config, data_url: str) -> Config:
    """The :mod:`vhindex.train` config of the demo's learned students.

    The demo's ``model`` (the students' architecture, ``model.params``), ``train`` and ``graph``
    sections, with: the run folder ``<output_dir>/learned``; the demo's frame datasets as ``data.*``;
    ``model.params.num_frames`` / ``feature_dim`` taken from the data (so any ``synth`` preset works);
    the anchor graph built in this process (``graph.executor: sequential``); and
    ``train.teacher_bits`` fixed (default: :data:`DEMO_TEACHER_BITS`) so one teacher serves every
    code length, and a re-run with other code lengths reuses it.

    Args:
        cfg: the demo configuration.
        data_url: folder of the demo's ``train`` / ``query`` / ``database`` frame datasets.

    Returns:
        The validated config (``model.name`` / ``model.bits`` are set per student by :class:`LearnedTrainer`).
    """
    so = cfg.run.storage_options
    meta = FrameDataset.open(f"{data_url}/train", so).meta
    data = cfg.model_dump(mode="json")
    data["run"]["output_dir"] = f"{cfg.run.output_dir.rstrip('/')}/learned"
    data["data"].update({s: f"{data_url}/{s}" for s in SPLITS})
    data["data"]["storage_options"] = so
    # the teacher (dkph / bth) takes the architecture of the first teacher student listed
    first = next((m for m in cfg.demo.learned if m in TEACHER_STUDENTS), "dkph")
    data["model"] = {"name": first, "bits": data["model"]["bits"],
                     "params": {**cfg.demo.learned_params.get(first, {}), "num_frames": meta.num_frames,
                                "feature_dim": meta.feature_dim}}
    data["graph"]["executor"] = "sequential"
    data["train"].update(teacher_bits=cfg.train.teacher_bits or DEMO_TEACHER_BITS)
    return config_from_dict(data, source="demo (learned students)")


def student_config(cfg: Config, demo: Any, kind: str, bits: int, output_dir: str) -> Config:
    """``cfg`` (a :func:`learned_config`) for model ``kind`` at ``bits`` in ``output_dir``: its
    ``demo.learned_params`` (a teacher student: the shared architecture plus its own switches) and its
    ``demo.learned_train`` over the train section."""
    from vhindex.models import model_params

    data = cfg.model_dump(mode="json")
    data["run"]["output_dir"] = output_dir
    takes = model_params(kind)
    shape = {k: data["model"]["params"][k] for k in ("num_frames", "feature_dim")}
    params = {**demo.learned_params.get(kind, {}), **shape}
    if kind in TEACHER_STUDENTS:  # the teacher's architecture, then this student's own switches
        params = {**{k: v for k, v in data["model"]["params"].items() if k in takes}, **params}
    data["model"] = {"name": kind, "bits": bits, "params": {k: v for k, v in params.items() if k in takes}}
    data["train"] = {**data["train"], **demo.learned_train.get(kind, {})}
    return config_from_dict(data, source=f"demo ({kind}-{bits})")


class LearnedTrainer:
    """Trains the demo's learned students; the teacher, embeddings and graph are built once, on first use.

    Args:
        cfg: the demo configuration.
        data_url: folder of the demo's frame datasets.
        out: progress stream (None: quiet).
    """

    def __init__(self, cfg: Config, data_url: str, out: TextIO | None = None) -> None:
        self.demo = cfg.demo
        self.cfg = learned_config(cfg, data_url)
        self.out = out
        self._datasets: dict[str, FrameDataset] | None = None
        self._graph: str | None = None

    def _prepare(self) -> tuple[dict[str, FrameDataset], str]:
        from vhindex.train.recipes import (
            build_teacher_graph,
            check_datasets,
            student_params,
            train_teacher,
            write_teacher_embeddings,
        )

        if self._datasets is None or self._graph is None:
            cfg, t = self.cfg, self.cfg.train
            self._datasets = check_datasets(cfg)
            t0 = time.perf_counter()
            teacher, res = train_teacher(cfg, self._datasets, progress=False)
            emb = write_teacher_embeddings(cfg, teacher, self._datasets["train"])
            self._graph = build_teacher_graph(cfg, emb)
            what = "reused" if res is None else f"trained {t.teacher_epochs} epochs"
            _say(self.out, f"  teacher ({what}, d={student_params(cfg)['hidden']}, {t.teacher_bits} bits) + "
                           f"embeddings + graph ({cfg.graph.anchors} anchors) {time.perf_counter() - t0:5.1f}s")
        return self._datasets, self._graph

    def fit(self, kind: str, bits: int) -> Any:
        """Train (or reuse) the ``kind`` student (``"dkph"`` / ``"bth"``) at ``bits``; return the HashModel."""
        from vhindex.train.recipes import train_bth, train_student

        if kind not in LEARNED:
            raise ValueError(f"demo.learned: unknown learned model {kind!r}; choose from {list(LEARNED)}")
        cfg = student_config(self.cfg, self.demo, kind, bits, f"{self.cfg.run.output_dir}/{kind}-{bits}")
        if kind not in TEACHER_STUDENTS:  # one stage, no teacher
            from vhindex.train.common import check_datasets
            from vhindex.train.contrastive import train_contrastive_student

            if self._datasets is None:
                self._datasets = check_datasets(cfg)
            return train_contrastive_student(cfg, self._datasets, progress=False)[0]
        datasets, graph = self._prepare()
        trainer = train_student if kind == "dkph" else train_bth
        model, _ = trainer(cfg, datasets, graph_url=graph, progress=False)
        return model


def run_demo(cfg: Config, out: TextIO | None = None) -> DemoResult:
    """Run the demo pipeline described in the module docstring; print progress to ``out``."""
    t_start = time.perf_counter()
    so = cfg.run.storage_options
    root = cfg.run.output_dir.rstrip("/")
    data_url = f"{root}/data"
    ensure_synthetic(cfg, data_url, out)
    train, query, database = (FrameDataset.open(f"{data_url}/{s}", so) for s in SPLITS)
    num_classes = database.meta.num_classes

    learned_bits = cfg.demo.learned_lengths()
    learner = LearnedTrainer(cfg, data_url, out) if learned_bits else None
    if learner is not None:
        t = learner.cfg.train
        schedule = []
        for m in cfg.demo.learned:
            epochs = cfg.demo.learned_train.get(m, {}).get("epochs", t.epochs)
            schedule.append(f"{m} {epochs} epochs" + (f" after a {t.teacher_epochs}-epoch teacher"
                                                      if m in TEACHER_STUDENTS else ""))
        _say(out, f"learned models {cfg.demo.learned} at {learned_bits} bits: {', '.join(schedule)}")
    results = {}
    for bits in cfg.demo.bits:
        methods = [*cfg.demo.methods, *(cfg.demo.learned if bits in learned_bits else ())]
        for method in methods:
            name = f"{method}-{bits}"
            t0 = time.perf_counter()
            if learner is not None and method in cfg.demo.learned:
                model = learner.fit(method, bits)
            else:
                model = fit_model(method, bits, train, seed=cfg.run.seed, batch_size=cfg.data.batch_size)
            model.save(f"{root}/models/{name}", so)
            codes = {}
            for split, frames in (("query", query), ("database", database)):
                url = f"{root}/codes/{name}/{split}"
                encode_dataset(model, frames, url, batch_size=cfg.data.batch_size, storage_options=so, overwrite=True)
                ids, packed = CodesDataset.open(url, so).read_all()
                codes[split] = (ids, packed, labels_for(ids, frames, num_classes))
            results[name] = evaluate(
                codes["database"][1], codes["query"][1], codes["database"][2], codes["query"][2],
                ks=cfg.eval.ks, protocol=cfg.eval.protocol, pr=cfg.eval.pr_curve,
                precision_ns=cfg.eval.precision_ns,
            )
            _say(out, f"  {name:<14s} fit+encode+eval {time.perf_counter() - t0:5.1f}s   "
                      f"mAP@{cfg.eval.ks[0]} = {results[name].map_at_k[cfg.eval.ks[0]]:.4f}")

    table = markdown_table(results)
    _say(out, f"\nmAP@K ({cfg.eval.protocol} protocol), {query.num_videos} queries vs {database.num_videos} videos:\n")
    _say(out, table)

    eval_dir = f"{root}/eval"
    write_report(results, eval_dir, storage_options=so, plots=cfg.eval.plots)

    # Index the best code of the largest length and answer a few queries with it.
    top_bits = max(cfg.demo.bits)
    first_k = cfg.eval.ks[0]
    best = max((n for n in results if n.endswith(f"-{top_bits}")), key=lambda n: results[n].map_at_k[first_k])
    db_ids, db_codes = CodesDataset.open(f"{root}/codes/{best}/database", so).read_all()
    index = BinaryFlatIndex(top_bits)
    index.add(db_ids, db_codes)
    index.save(f"{root}/index/{best}", so)
    index = BinaryFlatIndex.load(f"{root}/index/{best}", so)
    q_ids, q_codes = CodesDataset.open(f"{root}/codes/{best}/query", so).read_all()
    q_labels = labels_for(q_ids, query, num_classes)
    db_labels = labels_for(db_ids, database, num_classes)
    db_pos = {v: i for i, v in enumerate(db_ids)}
    n_show = min(cfg.demo.example_queries, len(q_ids))
    if n_show:
        _say(out, f"\nExample queries against the {best} index ({index.ntotal} videos, saved to {root}/index/{best}):")
        rng = np.random.default_rng(cfg.run.seed)
        for qi in rng.choice(len(q_ids), size=n_show, replace=False):
            dist, hit_ids = index.search_ids(q_codes[qi : qi + 1], cfg.demo.show_top)
            qlab = set(np.flatnonzero(q_labels[qi]).tolist())
            _say(out, f"  query {q_ids[qi]} labels {sorted(qlab)}")
            for d, vid in zip(dist[0], hit_ids[0], strict=False):
                dlab = set(np.flatnonzero(db_labels[db_pos[vid]]).tolist())
                mark = "relevant" if qlab & dlab else "-"
                _say(out, f"    {vid:<18s} hamming {int(d):3d}  labels {sorted(dlab)}  {mark}")

    if cfg.demo.serve and n_show:
        _serve_and_query(cfg, root, so, best, index, q_ids, q_codes, out)

    seconds = time.perf_counter() - t_start
    _say(out, f"\nresults in {eval_dir} (results.json, results.md, plots); demo took {seconds:.1f}s")
    return DemoResult(table_markdown=table, results=results, best_method=best, seconds=seconds)


def _serve_and_query(cfg: Config, root: str, so: dict | None, best: str, index: BinaryFlatIndex, q_ids: list[str],
                     q_codes: np.ndarray, out: TextIO | None) -> None:
    """Shard the best index, serve it with Ray Serve on a local Ray (127.0.0.1) and query it over HTTP.

    The HTTP answers are checked against the in-process index (same distances); a mismatch raises.
    """
    import importlib.util
    import json
    import urllib.request

    if importlib.util.find_spec("ray") is None:
        _say(out, "\n(serving skipped: Ray Serve is not installed -- pip install -c constraints.txt 'vhindex[ray]')")
        return
    from cluster.runtime import connect_ray, free_ports
    from cluster.serve import deploy, serve_cluster_env, service_url
    from vhindex.config import ServeSection
    from vhindex.index.codes import code_to_hex
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    t0 = time.perf_counter()
    url = f"{root}/serve-index/{best}"
    from vhindex.index.sharded import ShardedIndex

    try:
        ShardedIndex.open(url, so)
    except FileNotFoundError:
        build_sharded_index(f"{root}/codes/{best}/database", url, cfg.demo.serve_shards, spec=IndexSpec("flat", {}),
                            so=so, allow_fewer_shards=True)  # tiny presets have fewer row groups than shards
    port, direct_port = free_ports(2)
    settings = ServeSection(index=url, storage_options=so or {}, port=port, direct_port=direct_port, shard_cpus=0.25,
                            router_cpus=0.25, app_name="vhindex-demo", direct_drain_s=0.5)
    started = connect_ray(env=serve_cluster_env(settings))
    from ray import serve

    try:
        deploy(settings)
        # the router replica's own port (fast path) when this Ray runs it, else Serve's proxy
        base = service_url(settings)

        def post(path: str, body: dict) -> dict:
            req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())

        with urllib.request.urlopen(base + "/info", timeout=60) as resp:
            info = json.loads(resp.read())
        _say(out, f"\nServing {best} with Ray Serve at {base} ({info['num_shards']} shards, {sum(info['counts'])} "
                  f"videos, index version {info['index_version']}; up in {time.perf_counter() - t0:.1f}s):")
        rng = np.random.default_rng(cfg.run.seed + 1)
        for qi in rng.choice(len(q_ids), size=min(cfg.demo.example_queries, len(q_ids)), replace=False):
            t1 = time.perf_counter()
            body = post("/search", {"code": code_to_hex(q_codes[qi]), "k": cfg.demo.show_top})
            ms = 1000 * (time.perf_counter() - t1)
            want, _ = index.search(q_codes[qi: qi + 1], cfg.demo.show_top)
            got = [h["distance"] for h in body["results"]]
            if got != want[0].tolist():
                raise RuntimeError(f"HTTP answer {got} differs from the in-process index {want[0].tolist()}")
            hits = ", ".join(f"{h['video_id']} ({h['distance']})" for h in body["results"])
            _say(out, f"  POST /search {{code of {q_ids[qi]}, k: {cfg.demo.show_top}}} -> {hits}  [{ms:.1f} ms]")
        by_id = post("/search", {"video_id": body["results"][0]["video_id"], "k": 3})
        _say(out, f"  POST /search {{video_id: {body['results'][0]['video_id']}, k: 3}} -> "
                  + ", ".join(f"{h['video_id']} ({h['distance']})" for h in by_id["results"]))
        _say(out, "  answers equal the in-process index")
        if cfg.demo.video:
            from vhindex.app.video_demo import run_video_demo

            serve.delete(settings.app_name)  # frees its CPUs for the video application on a small machine
            run_video_demo(cfg, root, so, out, port=settings.port)
    finally:
        serve.shutdown()
        if started:
            import ray

            ray.shutdown()


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)

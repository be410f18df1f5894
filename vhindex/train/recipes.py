"""Training recipes: teacher -> teacher embeddings -> anchor graph -> student -> codes -> mAP report.

All stages stream the frame datasets from Parquet (:meth:`FrameDataset.iter_batches`) and run
the shared loop (:func:`vhindex.train.loop.run_training`). Run folder (``run.output_dir``)::

    data/{train,query,database}      synthetic frame datasets (only when data.* URLs are null)
    teacher/ckpt, teacher/metrics.jsonl, teacher/model     BTH net trained with reconstruction only
    teacher/embeddings               mean-pooled teacher hidden states (EmbeddingDataset, d dims)
    graph/                           anchors + nearest anchors (vhindex.graph.stage.build_graph)
    student/ckpt, student/metrics.jsonl                    DKPH training
    model/                           the DKPH HashModel (load with vhindex.models.load_model)
    codes/{query,database}           codes datasets;  eval/  results.json, results.md, plots
    bth/...                          the same student / model / codes / eval layout for the BTH baseline

Every stage writes ``_stage.json`` (its inputs: the config values it depends on and the versions
of its upstream outputs) **after** its outputs; a re-run skips a stage whose marker matches, and
a training stage with a checkpoint resumes from it. A checkpoint made with different settings (not
just a different number of epochs) is refused with an error naming the differences.

Pairs and partner frames. Per epoch a :class:`~vhindex.graph.PairSampler` seeded from
``(run.seed, epoch)`` draws each item's partner (graph row order == embeddings order == training
dataset order, checked by id). Partner frames are looked up by row position: when the training
features fit in ``train.partner_cache_bytes`` they are loaded once into memory; otherwise each
batch reads the row groups that hold its partners (an LRU of a few row groups), so memory stays
bounded by a few row groups whatever the dataset size.

Shuffling. Each epoch visits the row groups in a seeded random order and mixes videos in a
shuffle buffer of ``train.shuffle_buffer`` videos (a full shuffle when the buffer holds the set).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np
import torch

from vhindex.config import Config
from vhindex.data import (
    EmbeddingDatasetMeta,
    EmbeddingDatasetWriter,
    FrameDataset,
)
from vhindex.graph.stage import ExecutorFactory
from vhindex.models.learned import BTH, DKPH, resolve_device
from vhindex.models.losses import bth_loss, dkph_loss, mcmsh_loss, nph_loss, teacher_loss
from vhindex.models.mixer import MCMSH
from vhindex.models.nets import mask_frames
from vhindex.models.nph import NPH
from vhindex.train.common import (
    ARCH_PARAMS,
    STUDENTS,
    TEACHER_STUDENTS,
    BestEpoch,
    PartnerFrames,
    RecipeResult,
    _Batch,
    _check_resumable,
    _evaluate,
    _hash,
    _loop_spec,
    _root,
    _so,
    _stage_done,
    _tensor,
    _TrainStream,
    _write_stage,
    check_datasets,
    finish_recipe,
    graph_manifest_text,
    student_params,
)
from vhindex.train.loop import TrainResult, run_training

__all__ = [
    "RecipeResult",
    "check_datasets",
    "run_bth_recipe",
    "run_dkph_recipe",
    "run_recipe",
    "train_bth",
    "train_mcmsh",
    "train_nph",
    "train_student",
    "train_teacher",
    "write_teacher_embeddings",
]

logger = logging.getLogger(__name__)

#: MCMSH's own switches (besides the shared architecture), recorded in its stage marker
MCMSH_FLAGS = ("mlp_dropout", "expansion", "gates", "r_token", "r_channel", "use_quad")
#: NPH's own switches (``num_anchors`` comes from the graph, not from ``model.params``)
NPH_FLAGS = ("neighbours", "memory", "lstm_hidden", "key_dim", "nph_dropout", "attention", "use_ls", "use_nr")


def teacher_url_for(graph_url: str) -> str:
    """The teacher whose embeddings a graph was built from: ``<root>/teacher/model`` beside ``<root>/graph``
    (the layout :func:`run_recipe` and the benchmark runner write)."""
    return f"{graph_url.rstrip('/').rsplit('/', 1)[0]}/teacher/model"


def _student_prefix(cfg: Config, kind: str) -> str:
    """Where a student's folders go: the run root for DKPH (the flagship), ``<run>/<kind>`` for the others."""
    return _root(cfg) if kind == "dkph" else f"{_root(cfg)}/{kind}"


def _arch(cfg: Config, bits: int) -> dict[str, Any]:
    params = student_params(cfg)
    return {"bits": bits, **{k: params[k] for k in ARCH_PARAMS}}


# ------------------------------------------------------------------------------ data checks


# ------------------------------------------------------------------------------ teacher


def train_teacher(cfg: Config, datasets: dict[str, FrameDataset] | None = None, *, progress: bool = True,
                  **loop_kwargs: Any) -> tuple[BTH, TrainResult | None]:
    """Train the teacher: a BTH-architecture net with the reconstruction loss only; save it.

    Masked frames in, all frames reconstructed (:func:`~vhindex.models.losses.teacher_loss`).
    Output: ``<run>/teacher/model`` (+ ``ckpt/``, ``metrics.jsonl``). Skips when complete.

    Args:
        cfg: the configuration (``train``, ``run``, ``data``).
        datasets: already opened datasets (from :func:`check_datasets`).
        progress: console progress.
        **loop_kwargs: passed to :func:`run_training` (``rank``, ``world_size``, ``report``, ...).

    Returns:
        ``(teacher model, TrainResult or None when skipped)``.
    """
    datasets = datasets or check_datasets(cfg)
    t, so = cfg.train, _so(cfg)
    bits = t.teacher_bits or cfg.model.bits
    stage = f"{_root(cfg)}/teacher"
    inputs = {"stage": "teacher", **_arch(cfg, bits), "epochs": t.teacher_epochs, "seed": cfg.run.seed,
              "train": _hash(datasets["train"].manifest.to_dict()), "mask_prob": t.mask_prob, "batch_size": t.batch_size,
              "lr": [t.lr, t.lr_decay, t.lr_decay_every, t.lr_min], "shuffle_buffer": t.shuffle_buffer}
    device = resolve_device(t.device)
    if _stage_done(stage, so, inputs):
        return BTH.load(f"{stage}/model", so).to(device), None  # type: ignore[return-value]
    _check_resumable(stage, so, inputs)
    torch.manual_seed(cfg.run.seed)
    model = BTH(device=device, **_arch(cfg, bits))
    stream = _TrainStream(datasets["train"], t.batch_size, cfg.run.seed, t.shuffle_buffer)

    def step(net, batch: _Batch, gen):
        frames = _tensor(batch.frames, device)
        out = net(mask_frames(frames, gen, t.mask_prob))
        return teacher_loss(out, frames)

    result = run_training(_loop_spec(cfg, t.teacher_epochs, "teacher"), module=model.net, step_fn=step,
                          batches=stream.epoch, ckpt_url=f"{stage}/ckpt", storage_options=so,
                          metrics_url=stage, device=device, progress=progress, **loop_kwargs)
    if loop_kwargs.get("rank", 0) == 0:
        model.save(f"{stage}/model", so)
        _write_stage(stage, so, inputs, model_version=model.version())
    return model, result


def write_teacher_embeddings(cfg: Config, teacher: BTH, train: FrameDataset, *, out_url: str | None = None) -> str:
    """Mean-pooled teacher hidden states (d dims) of every training video, in dataset order.

    Written to ``<run>/teacher/embeddings`` (an :class:`~vhindex.data.EmbeddingDataset`); skipped
    when complete for this teacher version.

    Returns:
        The embeddings URL.
    """
    return _write_embeddings(cfg, teacher, train, out_url)[0]


def _write_embeddings(cfg: Config, teacher: BTH, train: FrameDataset, out_url: str | None) -> tuple[str, bool]:
    so = _so(cfg)
    url = out_url or f"{_root(cfg)}/teacher/embeddings"
    inputs = {"stage": "embeddings", "teacher": teacher.version(), "train": _hash(train.manifest.to_dict())}
    if _stage_done(url, so, inputs):
        return url, False
    meta = EmbeddingDatasetMeta(dim=student_params(cfg)["hidden"], source="bth-teacher",
                                source_version=teacher.version())
    with EmbeddingDatasetWriter(url, meta, storage_options=so, overwrite=True) as writer:
        for fb in train.iter_batches(max(cfg.train.batch_size, 1024), columns=("video_id", "features")):
            writer.write(fb.video_ids, teacher.latent_features(np.asarray(fb.features)))
    _write_stage(url, so, inputs)
    return url, True


def build_teacher_graph(cfg: Config, embeddings_url: str, *, executor: ExecutorFactory | None = None) -> str:
    """Anchor graph of the teacher embeddings at ``<run>/graph`` (:func:`vhindex.graph.stage.build_graph`).

    Every graph setting comes from the ``graph`` section (anchors, nearest anchors, rule, k-means,
    chunking). ``executor`` is where the maps run, injected by the caller (the app layer picks the
    Dask / Dask-on-Ray ones, :func:`vhindex.app.engines.graph_executor`); without one,
    ``graph.executor: sequential`` builds in this process.

    Raises:
        ValueError: ``graph.executor: dask`` without an injected executor.
    """
    from vhindex.graph.stage import build_graph, sequential_executor

    if executor is None:
        if cfg.graph.executor != "sequential":
            raise ValueError("graph.executor=dask: pass the executor (vhindex.app.engines.graph_executor(cfg.graph)) "
                             "or set graph.executor=sequential to build the graph in this process")
        executor = functools.partial(sequential_executor, num_threads=cfg.graph.threads_per_worker)
    out = f"{_root(cfg)}/graph"
    build_graph(cfg.graph, executor, embeddings_url=embeddings_url, out_url=out, seed=cfg.run.seed,
                storage_options=_so(cfg))
    return out


# ------------------------------------------------------------------------------ students


def _load_graph_for(cfg: Config, graph_url: str, train: FrameDataset) -> tuple[np.ndarray, Any, np.ndarray, str]:
    from vhindex.graph.stage import load_graph

    anchors, graph, ids, manifest = load_graph(graph_url, _so(cfg), expected_dim=student_params(cfg)["hidden"])
    train_ids = train.read_video_ids()
    if ids != train_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, train_ids, strict=False)) if a != b), min(len(ids),
                                                                                                      len(train_ids)))
        raise ValueError(
            f"the graph at {graph_url} lists {len(ids)} videos but data.train ({train.url}) has {len(train_ids)}; "
            f"they first differ at row {first}: the graph must be built from embeddings of this training set, "
            "in its order -- delete the graph and teacher/embeddings folders and re-run")
    nearest = np.ascontiguousarray(graph.anchor_ids[:, 0], dtype=np.int64)
    return anchors, graph, nearest, manifest.fingerprint


def _train_pairs(cfg: Config, kind: str, datasets: dict[str, FrameDataset], graph_url: str, *,
                 progress: bool, validation: tuple[FrameDataset, FrameDataset] | None = None,
                 **loop_kwargs: Any) -> tuple[DKPH | BTH, TrainResult | None, str]:
    from vhindex.graph import PairSampler

    t, so = cfg.train, _so(cfg)
    train = datasets["train"]
    prefix = _student_prefix(cfg, kind)
    stage, model_url = f"{prefix}/student", f"{prefix}/model"
    anchors_np, graph, nearest, graph_fp = _load_graph_for(cfg, graph_url, train)
    params = student_params(cfg, kind)
    flags: dict[str, Any] = {}
    if kind == "dkph":
        flags = {"temporal": params["temporal"], "use_tsim": params["use_tsim"], "use_bsim": params["use_bsim"]}
        if params["hash_input"] != "flatten":  # absent when released, so existing stage markers still match
            flags["hash_input"] = params["hash_input"]
    elif kind == "mcmsh":
        flags = {k: params[k] for k in MCMSH_FLAGS}
        flags["gates"] = list(flags["gates"])
    elif kind == "nph":
        flags = {k: params[k] for k in NPH_FLAGS}
    weights = {"gamma1": t.gamma1, "gamma2": t.gamma2} if kind == "dkph" else {}
    bits = cfg.model.bits
    inputs = {"stage": kind, **_arch(cfg, bits), **flags, **weights, "epochs": t.epochs, "seed": cfg.run.seed,
              "graph": graph_fp, "mask_prob": t.mask_prob, "batch_size": t.batch_size,
              "lr": [t.lr, t.lr_decay, t.lr_decay_every, t.lr_min], "shuffle_buffer": t.shuffle_buffer,
              "pair_backend": t.pair_backend}
    teacher = None
    if kind == "nph":  # NPH carries the frozen teacher and the anchors: encoding a video needs its neighbourhood
        teacher_url = teacher_url_for(graph_url)
        try:
            teacher = BTH.load(teacher_url, so)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"nph: no teacher at {teacher_url} (the graph at {graph_url} must sit beside "
                                    "the teacher/ folder it was built from; run the recipe's teacher stage)") from err
        inputs["teacher"] = teacher.version()
    if validation is not None:  # the saved model is the best validation epoch's (absent otherwise: old markers match)
        inputs["select"] = {"on": "val_map@20", "query": validation[0].url, "database": validation[1].url}
    device = resolve_device(t.device)
    cls = {"dkph": DKPH, "bth": BTH, "mcmsh": MCMSH, "nph": NPH}[kind]
    if _stage_done(stage, so, inputs):
        return cls.load(model_url, so).to(device), None, model_url  # type: ignore[return-value]
    _check_resumable(stage, so, inputs)
    torch.manual_seed(cfg.run.seed)
    if kind == "nph":
        model = NPH(device=device, **_arch(cfg, bits), **flags, num_anchors=int(anchors_np.shape[0]))
        model.attach_neighbourhood(teacher.get_weights(), anchors_np)  # type: ignore[union-attr]
    else:
        model = cls(device=device, **_arch(cfg, bits), **flags)
    anchors = _tensor(anchors_np, device)
    partners_src = PartnerFrames(train, t.partner_cache_bytes)
    stream = _TrainStream(train, t.batch_size, cfg.run.seed, t.shuffle_buffer)

    def sampler_for(epoch: int) -> PairSampler:
        if kind == "mcmsh":  # the hash layer's tanh sharpens epoch by epoch (saved with the weights)
            model.net.set_alpha(epoch)
        return PairSampler(graph, np.random.SeedSequence([cfg.run.seed, epoch, 2]), backend=t.pair_backend)

    def step(net, batch: _Batch, gen):
        partners, s = batch.sampler.sample(batch.positions)
        f1 = _tensor(batch.frames, device)
        f2 = _tensor(partners_src.get(partners), device)
        if kind == "nph":  # no frame masking in NPH; S comes from the nearest anchors the net computes
            return nph_loss(net(f1), net(f2), f1, f2, **model.loss_kwargs())
        out1 = net(mask_frames(f1, gen, t.mask_prob))
        out2 = net(mask_frames(f2, gen, t.mask_prob))
        c1 = anchors[torch.from_numpy(nearest[batch.positions]).to(device)]
        c2 = anchors[torch.from_numpy(nearest[partners]).to(device)]
        s_t = torch.from_numpy(s).to(device)
        if kind == "mcmsh":
            quad: dict[str, Any] = {}
            if params["use_quad"]:  # a neighbour and two non-neighbours per video: three more forward passes
                pos, neg1, neg2, has_pos = batch.sampler.sample_quadruplets(batch.positions)
                quad = {name: net(mask_frames(_tensor(partners_src.get(rows), device), gen, t.mask_prob))["h"]
                        for name, rows in (("h_pos", pos), ("h_neg1", neg1), ("h_neg2", neg2))}
                quad["quad_mask"] = torch.from_numpy(has_pos).to(device)
            return mcmsh_loss(out1, out2, s_t, c1, c2, **quad)
        if kind == "dkph":
            return dkph_loss(out1, out2, f1, f2, s_t, c1, c2, gamma1=t.gamma1, gamma2=t.gamma2,
                             use_tsim=params["use_tsim"], use_bsim=params["use_bsim"])
        return bth_loss(out1, out2, f1, f2, s_t, c1, c2)

    eval_fn, eval_every, selector = None, t.eval_every, None
    if validation is not None:
        selector = eval_fn = BestEpoch(model, *validation, state_url=f"{stage}/select", storage_options=so)
        eval_every = 1
    elif t.eval_every:
        def eval_fn(_net, _epoch):  # noqa: ANN001
            res = _evaluate(cfg, model, datasets, pr=False)
            return {f"map@{k}": v for k, v in res.map_at_k.items()}

    result = run_training(_loop_spec(cfg, t.epochs, kind), module=model.net, step_fn=step,
                          batches=lambda e: stream.epoch(e, sampler_for), ckpt_url=f"{stage}/ckpt",
                          storage_options=so, metrics_url=stage, eval_fn=eval_fn, eval_every=eval_every,
                          device=device, progress=progress, **loop_kwargs)
    extra = {}
    if selector is not None:
        selector.restore()
        extra["selection"] = selector.summary()
    if loop_kwargs.get("rank", 0) == 0:
        model.save(model_url, so)
        _write_stage(stage, so, inputs, model_version=model.version(), **extra)
    return model, result, model_url


def train_student(cfg: Config, datasets: dict[str, FrameDataset] | None = None, graph_url: str | None = None, *,
                  progress: bool = True, validation: tuple[FrameDataset, FrameDataset] | None = None,
                  **loop_kwargs: Any) -> tuple[DKPH, TrainResult | None]:
    """Train the DKPH student on graph pairs (dkph_loss, ablation flags from ``cfg.train``); save to ``<run>/model``.

    Returns:
        ``(DKPH model, TrainResult or None when skipped)``.
    """
    datasets = datasets or check_datasets(cfg)
    model, result, _ = _train_pairs(cfg, "dkph", datasets, graph_url or f"{_root(cfg)}/graph", progress=progress,
                                    validation=validation, **loop_kwargs)
    return model, result  # type: ignore[return-value]


def train_mcmsh(cfg: Config, datasets: dict[str, FrameDataset] | None = None, graph_url: str | None = None, *,
                progress: bool = True, validation: tuple[FrameDataset, FrameDataset] | None = None,
                **loop_kwargs: Any) -> tuple[MCMSH, TrainResult | None]:
    """Train MCMSH (mcmsh_loss over the same graph, anchors and pairs); save to ``<run>/mcmsh/model``.

    Returns:
        ``(MCMSH model, TrainResult or None when skipped)``.
    """
    datasets = datasets or check_datasets(cfg)
    model, result, _ = _train_pairs(cfg, "mcmsh", datasets, graph_url or f"{_root(cfg)}/graph", progress=progress,
                                    validation=validation, **loop_kwargs)
    return model, result  # type: ignore[return-value]


def train_nph(cfg: Config, datasets: dict[str, FrameDataset] | None = None, graph_url: str | None = None, *,
              progress: bool = True, validation: tuple[FrameDataset, FrameDataset] | None = None,
              **loop_kwargs: Any) -> tuple[NPH, TrainResult | None]:
    """Train NPH (nph_loss; the teacher beside the graph and the graph's anchors are frozen into the model);
    save to ``<run>/nph/model``.

    Returns:
        ``(NPH model, TrainResult or None when skipped)``.
    """
    datasets = datasets or check_datasets(cfg)
    model, result, _ = _train_pairs(cfg, "nph", datasets, graph_url or f"{_root(cfg)}/graph", progress=progress,
                                    validation=validation, **loop_kwargs)
    return model, result  # type: ignore[return-value]


def train_bth(cfg: Config, datasets: dict[str, FrameDataset] | None = None, graph_url: str | None = None, *,
              progress: bool = True, validation: tuple[FrameDataset, FrameDataset] | None = None,
              **loop_kwargs: Any) -> tuple[BTH, TrainResult | None]:
    """Train the BTH baseline (bth_loss, same graph and pairs); save to ``<run>/bth/model``.

    Returns:
        ``(BTH model, TrainResult or None when skipped)``.
    """
    datasets = datasets or check_datasets(cfg)
    model, result, _ = _train_pairs(cfg, "bth", datasets, graph_url or f"{_root(cfg)}/graph", progress=progress,
                                    validation=validation, **loop_kwargs)
    return model, result  # type: ignore[return-value]


# ------------------------------------------------------------------------------ the recipe


def run_recipe(cfg: Config, *, model: str | None = None, graph_executor: ExecutorFactory | None = None,
               progress: bool = True, out=None) -> RecipeResult:
    """teacher -> embeddings -> graph -> student (``model`` or ``model.name``) -> encode -> mAP report
    (BTH / DKPH); ConMH / GCMH train in one stage (:func:`vhindex.train.contrastive.run_contrastive_recipe`).

    Each stage is skipped when its output is complete; a killed run resumes from its checkpoints.

    Args:
        cfg: the configuration.
        model: ``"dkph"`` or ``"bth"`` (default ``cfg.model.name``).
        graph_executor: where the graph's maps run (see :func:`build_teacher_graph`); None with
            ``graph.executor: sequential`` builds it in this process.
        progress: console progress of the training loops.
        out: text stream for synthetic-data messages (None: quiet).

    Returns:
        A :class:`RecipeResult`.

    Raises:
        ValueError / FileNotFoundError: configuration and data problems, before any training.
    """
    kind = model or cfg.model.name
    if kind == "uts":  # pixels in: the frames of extract.listing, not a feature dataset
        from vhindex.train.uts import run_uts_recipe

        return run_uts_recipe(cfg, progress=progress)  # type: ignore[return-value]
    if kind not in STUDENTS:
        raise ValueError(f"model.name: unknown student {kind!r}; choose one of {list(STUDENTS)} or uts")
    datasets = check_datasets(cfg, out)
    if kind not in TEACHER_STUDENTS:  # ConMH / GCMH / DVHCM: single stage, no teacher
        from vhindex.train.contrastive import run_contrastive_recipe
        from vhindex.train.supervised import SUPERVISED, run_supervised_recipe

        if kind != cfg.model.name:
            raise ValueError(f"run_recipe(model={kind!r}) with model.name={cfg.model.name!r}: set model.name={kind}")
        if kind in SUPERVISED:
            return run_supervised_recipe(cfg, datasets, progress=progress)
        return run_contrastive_recipe(cfg, datasets, graph_executor=graph_executor, progress=progress)
    t0 = time.perf_counter()
    stages: dict[str, str] = {}
    teacher, res = train_teacher(cfg, datasets, progress=progress)
    stages["teacher"] = "skipped" if res is None else "ran"
    embeddings, ran = _write_embeddings(cfg, teacher, datasets["train"], None)
    stages["embeddings"] = "ran" if ran else "skipped"
    before = _graph_manifest_text(cfg)
    graph_url = build_teacher_graph(cfg, embeddings, executor=graph_executor)
    stages["graph"] = "skipped" if before is not None and before == _graph_manifest_text(cfg) else "ran"
    student, res = _train_pairs(cfg, kind, datasets, graph_url, progress=progress)[:2]
    stages["student"] = "skipped" if res is None else "ran"
    return finish_recipe(cfg, kind, student, datasets, _student_prefix(cfg, kind), stages, t0)


def _graph_manifest_text(cfg: Config) -> bytes | None:
    return graph_manifest_text(f"{_root(cfg)}/graph", _so(cfg))


def run_dkph_recipe(cfg: Config, **kwargs: Any) -> RecipeResult:
    """:func:`run_recipe` with the DKPH student (outputs at the run root: ``model``, ``codes``, ``eval``)."""
    return run_recipe(cfg, model="dkph", **kwargs)


def run_bth_recipe(cfg: Config, **kwargs: Any) -> RecipeResult:
    """:func:`run_recipe` with the BTH baseline student (outputs under ``<run>/bth``)."""
    return run_recipe(cfg, model="bth", **kwargs)

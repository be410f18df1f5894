"""Training of the masked-video contrastive hashers (ConMH, GCMH) with the one training loop.

Single stage, no teacher network. Every step takes a batch of training clips, draws two masked views
with disjoint visible frames (:func:`~vhindex.models.contrastive.two_view_masks`, from the loop's
seeded generator) and minimises the model's loss (:func:`~vhindex.models.losses.conmh_loss`,
:func:`~vhindex.models.losses.gcmh_loss`).

GCMH also needs the anchor graph of the training clips: the graph stage
(:func:`vhindex.graph.stage.build_graph`, ``graph`` section, injected executor) runs on the clips'
L2-normalised mean-pooled frame features, written as an embeddings dataset at
``<run>/gcmh/embeddings`` (the "teacher" here is the feature extractor itself: no second network to
train). Each step pairs every clip with a random *other* clip that shares its nearest anchor
(:class:`AnchorNeighbours`, seeded from ``(run.seed, epoch)``) -- the anchor-graph positives -- and
adds their contrastive term.

Run folder (``run.output_dir``)::

    <model>/embeddings, <model>/graph   (gcmh only)
    <model>/student/ckpt, metrics.jsonl, _stage.json
    <model>/model                        the saved HashModel
    <model>/codes/{query,database}, <model>/eval
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from vhindex.config import Config
from vhindex.data import EmbeddingDatasetMeta, EmbeddingDatasetWriter, FrameDataset
from vhindex.models.contrastive import two_view_masks
from vhindex.models.learned import resolve_device
from vhindex.models.losses import conmh_loss, gcmh_loss
from vhindex.train.common import (
    BestEpoch,
    PartnerFrames,
    RecipeResult,
    _check_resumable,
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

__all__ = ["CONTRASTIVE", "AnchorKnnNeighbours", "AnchorNeighbours", "model_neighbours", "uses_feature_graph", "build_neighbour_graph", "contrastive_step", "run_contrastive_recipe",
           "train_contrastive", "train_contrastive_student", "write_pooled_embeddings"]

logger = logging.getLogger(__name__)

#: the models this module trains (``model.name``)
CONTRASTIVE = ("conmh", "gcmh")


class AnchorNeighbours:
    """A random other clip sharing each clip's nearest anchor (the clip itself when it is alone there).

    Args:
        nearest: ``(N,)`` nearest anchor of every training clip (row order = the training dataset).
    """

    def __init__(self, nearest: np.ndarray) -> None:
        nearest = np.asarray(nearest, dtype=np.int64)
        self.nearest = nearest
        self.order = np.argsort(nearest, kind="stable")
        k = int(nearest.max()) + 1 if nearest.size else 0
        sorted_ids = nearest[self.order]
        self.start = np.searchsorted(sorted_ids, np.arange(k), side="left")
        self.stop = np.searchsorted(sorted_ids, np.arange(k), side="right")

    def sample(self, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One neighbour row per position (never the clip itself unless it is alone at its anchor)."""
        positions = np.asarray(positions, dtype=np.int64)
        a = self.nearest[positions]
        lo, hi = self.start[a], self.stop[a]
        size = hi - lo
        # uniform among the group's other members: draw one of the first size - 1 slots; if that slot
        # holds the clip itself, take the one slot left out of the draw instead
        pick = lo + rng.integers(0, np.maximum(size - 1, 1))
        rows = self.order[pick]
        clash = (rows == positions) & (size > 1)
        rows[clash] = self.order[hi[clash] - 1]  # the drawn slot was the clip: take the slot left out
        return rows


class AnchorKnnNeighbours(AnchorNeighbours):
    """A random one of each clip's ``k`` most similar clips *within its anchor group* (cosine of the
    L2-normalised embeddings; the clip itself when it is alone there).

    The anchor group alone pairs a clip with any of its members, many of them far from it (about two
    pairs in three share a label on the fashion clips, docs/quality.md); its nearest members are
    purer. Restricting the search to the group keeps the cost at ``sum(group size ** 2)`` -- never
    N x N -- and the memory at N x k neighbour ids plus one group's similarities at a time (a group
    larger than ``block`` rows is searched ``block`` query rows at a time).

    Args:
        nearest: ``(N,)`` nearest anchor of every training clip.
        emb: ``(N, d)`` L2-normalised embeddings (the ones the anchors were fitted on).
        k: neighbours kept per clip (fewer when the group is smaller than ``k + 1``).
        block: query rows per similarity block.
    """

    def __init__(self, nearest: np.ndarray, emb: np.ndarray, k: int, block: int = 4096) -> None:
        super().__init__(nearest)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape[0] != self.nearest.shape[0]:
            raise ValueError(f"emb has {emb.shape[0]} rows but nearest has {self.nearest.shape[0]}")
        n = len(self.nearest)
        self.knn = np.tile(np.arange(n, dtype=np.int64)[:, None], (1, k))  # alone -> itself
        self.count = np.ones(n, dtype=np.int64)
        for lo, hi in zip(self.start, self.stop, strict=True):
            members = self.order[lo:hi]
            size = len(members)
            if size < 2:
                continue
            kk = min(k, size - 1)
            g = emb[members]
            for b in range(0, size, block):
                sims = g[b:b + block] @ g.T
                rows = np.arange(sims.shape[0])
                sims[rows, b + rows] = -np.inf  # never the clip itself
                # the kk largest, most similar first; ties broken by group order (stable, deterministic)
                top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
                self.knn[members[b:b + block], :kk] = members[top]
                self.count[members[b:b + block]] = kk

    def sample(self, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One of the ``k`` nearest group members per position, uniformly."""
        positions = np.asarray(positions, dtype=np.int64)
        pick = rng.integers(0, self.count[positions])
        return self.knn[positions, pick]


def model_neighbours(model: Any, train: FrameDataset, anchors: int, *, seed: int, kmeans: Any,
                     rows_per_chunk: int = 50_000, batch_size: int = 1024, k: int = 0) -> AnchorNeighbours:
    """GCMH's self-distilled anchor graph: the anchors of the *current model's* embeddings of the training
    clips (:meth:`latent_features`: mean encoder state, every frame visible), k-means through the core
    graph machinery in this process (:func:`vhindex.graph.kmeans.fit_kmeans` on an
    :class:`~vhindex.graph.sequential.ArrayChunkSource`), and every clip's nearest anchor.

    The model is the teacher of its own next epochs, as DKPH's teacher is of its student: its
    neighbours are far purer than the raw features' (docs/quality.md). Deterministic for the
    weights and seed, so a resumed run rebuilds the same graph. ``k > 0``: each clip's partners are its
    ``k`` nearest members of its group (:class:`AnchorKnnNeighbours`) instead of the whole group.
    Memory: N x width float32 (+ N x k ids).
    """
    from vhindex.graph.kmeans import fit_kmeans
    from vhindex.graph.sequential import ArrayChunkSource, SequentialExecutor

    parts = [model.latent_features(np.asarray(fb.features, dtype=np.float32))
             for fb in train.iter_batches(batch_size, columns=("video_id", "features"))]
    emb = np.concatenate(parts)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
    executor = SequentialExecutor(ArrayChunkSource(emb, rows_per_chunk), num_threads=1)
    km = fit_kmeans(executor, min(anchors, len(emb)), seed=seed, n_iter=kmeans.n_iter, init=kmeans.init,
                    mode=kmeans.mode, tol=kmeans.tol)
    ids, _ = executor.nearest(km.centroids, 1)
    return AnchorKnnNeighbours(ids[:, 0], emb, k) if k > 0 else AnchorNeighbours(ids[:, 0])


def write_pooled_embeddings(train: FrameDataset, url: str, storage_options: dict[str, Any] | None,
                            batch_size: int = 2048) -> str:
    """The L2-normalised mean over frames of every training clip's features, as an embeddings dataset at
    ``url`` (dataset order). Skipped when a complete one for this dataset is there."""
    from vhindex.data import EmbeddingDataset

    version = train.manifest.to_dict().get("created_at", "") + str(train.num_videos)
    try:
        done = EmbeddingDataset.open(url, storage_options)
        if done.meta.source == "mean-pooled-frames" and done.meta.source_version == version:
            return url
    except (FileNotFoundError, ValueError):
        pass
    meta = EmbeddingDatasetMeta(dim=train.meta.feature_dim, source="mean-pooled-frames", source_version=version)
    with EmbeddingDatasetWriter(url, meta, storage_options=storage_options, overwrite=True) as writer:
        for fb in train.iter_batches(batch_size, columns=("video_id", "features")):
            pooled = np.asarray(fb.features, dtype=np.float32).mean(axis=1)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True) + 1e-12
            writer.write(fb.video_ids, pooled)
    return url


def contrastive_step(model: Any, net: torch.nn.Module, frames: torch.Tensor, generator: torch.Generator,
                     neighbour_frames: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The loss of one batch of clips ``(B, M, D)`` for ``model`` (a ConMH / GCMH HashModel; its config holds
    the recipe), ``net`` its (possibly wrapped) network; ``neighbour_frames`` are the anchor-graph
    positives of GCMH (one clip per row of ``frames``)."""
    r = model.recipe
    b, m, _ = frames.shape
    (vis1, msk1), (vis2, msk2) = two_view_masks(b, m, r["mask_ratio"], generator)
    dev = frames.device
    v1 = net(frames, vis1.to(dev), msk1.to(dev))
    v2 = net(frames, vis2.to(dev), msk2.to(dev))
    if model.name == "conmh":
        return conmh_loss(v1, v2, temperature=r["temperature"], tau_plus=r["tau_plus"],
                          contrast_weight=r["contrast_weight"])
    nb = None
    if neighbour_frames is not None and r["neighbour_weight"] > 0:
        (visn, mskn), _ = two_view_masks(b, m, r["mask_ratio"], generator)
        nb = net(neighbour_frames, visn.to(dev), mskn.to(dev))
    return gcmh_loss(v1, v2, nb, temperature=r["temperature"], tau_plus=r["tau_plus"],
                     contrast_weight=r["contrast_weight"], neighbour_weight=r["neighbour_weight"],
                     balance_weight=r["balance_weight"], decorrelation_weight=r["decorrelation_weight"])


def train_contrastive(cfg: Config, model: Any, train: FrameDataset, stage_url: str, *,
                      neighbours: AnchorNeighbours | None = None, partner_frames: Any = None,
                      eval_fn: Any = None, progress: bool = True, **loop_kwargs: Any) -> TrainResult:
    """Train ``model`` (ConMH / GCMH, built by the caller) on ``train`` with the one loop.

    Checkpoints, metrics and resume under ``stage_url`` (``ckpt/``, ``metrics.jsonl``); the schedule
    is the ``train`` section's (Adam, step decay). GCMH's anchor-graph positives come from
    ``neighbours`` with their frames read through ``partner_frames`` (a
    :class:`vhindex.train.common.PartnerFrames`).

    Args:
        cfg: the configuration (``train`` schedule, ``run.seed``).
        model: the HashModel to train (its ``.net`` is optimised in place).
        train: the training clips.
        stage_url: folder of this stage's checkpoints and metrics.
        neighbours: GCMH's anchor neighbours (None: no neighbour term).
        partner_frames: frames of training rows by position (needed with ``neighbours``).
        eval_fn: ``eval_fn(net, epoch) -> {name: value}`` (e.g. validation mAP, :class:`BestEpoch`); with
            one, it runs after every epoch.
        progress: console progress.
        **loop_kwargs: passed to :func:`~vhindex.train.loop.run_training` (Ray Train hooks).

    Returns:
        The loop's :class:`~vhindex.train.loop.TrainResult`.
    """
    t = cfg.train
    device = resolve_device(t.device)
    stream = _TrainStream(train, t.batch_size, cfg.run.seed, t.shuffle_buffer)
    r = model.recipe
    self_graph = model.name == "gcmh" and r.get("neighbour_weight", 0) > 0 and r.get("neighbour_source") == "model"
    current: dict[str, Any] = {"neighbours": neighbours}
    if self_graph and partner_frames is None:
        partner_frames = PartnerFrames(train, t.partner_cache_bytes)

    def step(net: torch.nn.Module, batch: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
        frames = _tensor(batch.frames, device)
        nb = None
        if current["neighbours"] is not None:
            rows = current["neighbours"].sample(batch.positions, batch.sampler)  # the epoch's seeded rng
            nb = _tensor(partner_frames.get(rows), device)
        return contrastive_step(model, net, frames, gen, nb)

    def epoch_rng(epoch: int) -> np.random.Generator:
        # From (seed, epoch) alone, so a resumed run draws the same neighbours as one that never stopped. The
        # self-distilled graph is rebuilt here at the start of every epoch from the weights it starts with
        # (restored from the checkpoint on resume): exact resume, at the cost of one encoding pass + k-means.
        if self_graph and epoch >= r["neighbour_start"]:
            was_training = model.net.training
            # GCMH's own anchor count (neighbour_anchors) when set: its groups trade purity for variety on
            # their own, apart from the teacher graph's graph.anchors (docs/quality.md)
            anchors = r.get("neighbour_anchors") or cfg.graph.anchors
            current["neighbours"] = model_neighbours(model, train, anchors, seed=cfg.run.seed + epoch,
                                                     kmeans=cfg.graph.kmeans, rows_per_chunk=cfg.graph.rows_per_chunk,
                                                     k=r.get("neighbour_k", 0))
            model.net.train(was_training)
        return np.random.default_rng([cfg.run.seed, epoch, 3])

    return run_training(_loop_spec(cfg, t.epochs, model.name), module=model.net, step_fn=step,
                        batches=lambda e: stream.epoch(e, epoch_rng), ckpt_url=f"{stage_url}/ckpt", storage_options=cfg.run.storage_options
                        or None, metrics_url=stage_url, eval_fn=eval_fn, eval_every=1 if eval_fn else 0, device=device,
                        progress=progress, **loop_kwargs)


# ------------------------------------------------------------------------------ the recipe


def uses_feature_graph(params: dict[str, Any]) -> bool:
    """Whether GCMH ``params`` need the graph stage on the input features (built before training)."""
    return params.get("neighbour_weight", 0) > 0 and params.get("neighbour_source") == "features"


def _model_root(cfg: Config, kind: str) -> str:
    return f"{_root(cfg)}/{kind}"


def build_neighbour_graph(cfg: Config, train: FrameDataset, *, executor: Any = None) -> str:
    """GCMH's anchor graph of the training clips' mean-pooled features at ``<run>/gcmh/graph`` (skipped when
    complete); the ``graph`` section says how (anchors, k-means, chunking), ``executor`` where (None:
    ``graph.executor: sequential`` in this process)."""
    import functools

    from vhindex.graph.stage import build_graph, sequential_executor

    root = _model_root(cfg, "gcmh")
    emb = write_pooled_embeddings(train, f"{root}/embeddings", _so(cfg))
    if executor is None:
        if cfg.graph.executor != "sequential":
            raise ValueError("graph.executor=dask: pass the executor (vhindex.app.engines.graph_executor(cfg.graph)) "
                             "or set graph.executor=sequential to build the graph in this process")
        executor = functools.partial(sequential_executor, num_threads=cfg.graph.threads_per_worker)
    out = f"{root}/graph"
    build_graph(cfg.graph, executor, embeddings_url=emb, out_url=out, seed=cfg.run.seed, storage_options=_so(cfg))
    return out


def _neighbours(cfg: Config, train: FrameDataset) -> tuple[AnchorNeighbours, str]:
    from vhindex.graph.stage import load_graph

    url = f"{_model_root(cfg, 'gcmh')}/graph"
    _, graph, ids, manifest = load_graph(url, _so(cfg))
    if ids != train.read_video_ids():
        raise ValueError(f"the graph at {url} was not built from data.train ({train.url}) in its order; delete "
                         f"{_model_root(cfg, 'gcmh')}/graph and re-run")
    return AnchorNeighbours(np.asarray(graph.anchor_ids[:, 0])), manifest.fingerprint


def train_contrastive_student(cfg: Config, datasets: dict[str, FrameDataset] | None = None, *,
                              progress: bool = True, validation: tuple[FrameDataset, FrameDataset] | None = None,
                              **loop_kwargs: Any) -> tuple[Any, Any]:
    """Train (or reuse) the ConMH / GCMH model of ``model.name`` / ``model.bits`` / ``model.params``; save it
    to ``<run>/<model>/model``. GCMH needs its graph first (:func:`build_neighbour_graph`).

    With ``validation`` (queries, database carved from the *training* data), the saved model is the epoch
    with the best validation mAP@20 (:class:`~vhindex.train.common.BestEpoch`). Also the stage function
    Ray Train workers run (``cluster.train``): ``**loop_kwargs`` are the hooks.

    Returns:
        ``(model, TrainResult or None when the stage was already complete)``.
    """
    from vhindex.models import build_model, load_model

    datasets = datasets or check_datasets(cfg)
    kind, t, so = cfg.model.name, cfg.train, _so(cfg)
    if kind not in CONTRASTIVE:
        raise ValueError(f"model.name: {kind!r} is not one of the contrastive models {list(CONTRASTIVE)}")
    root = _model_root(cfg, kind)
    stage, model_url = f"{root}/student", f"{root}/model"
    params = student_params(cfg)
    train = datasets["train"]
    neighbours, graph_fp = None, None
    if uses_feature_graph(params):
        neighbours, graph_fp = _neighbours(cfg, train)
    inputs = {"stage": kind, "bits": cfg.model.bits, "params": params, "epochs": t.epochs, "seed": cfg.run.seed,
              "train": _hash(train.manifest.to_dict()), "graph": graph_fp, "batch_size": t.batch_size,
              "lr": [t.lr, t.lr_decay, t.lr_decay_every, t.lr_min], "shuffle_buffer": t.shuffle_buffer}
    if validation is not None:
        inputs["select"] = {"on": "val_map@20", "query": validation[0].url, "database": validation[1].url}
    device = resolve_device(t.device)
    if _stage_done(stage, so, inputs):
        return load_model(model_url, so).to(device), None
    _check_resumable(stage, so, inputs)
    torch.manual_seed(cfg.run.seed)
    model = build_model(kind, cfg.model.bits, device=device, **params)
    partners = PartnerFrames(train, t.partner_cache_bytes) if neighbours is not None else None
    selector = BestEpoch(model, *validation, state_url=f"{stage}/select", storage_options=so) \
        if validation is not None else None
    result = train_contrastive(cfg, model, train, stage, neighbours=neighbours, partner_frames=partners,
                               eval_fn=selector, progress=progress, **loop_kwargs)
    extra = {}
    if selector is not None:
        selector.restore()
        extra["selection"] = selector.summary()
    if loop_kwargs.get("rank", 0) == 0:
        model.save(model_url, so)
        _write_stage(stage, so, inputs, model_version=model.version(), **extra)
    return model, result


def run_contrastive_recipe(cfg: Config, datasets: dict[str, FrameDataset], *, graph_executor: Any = None,
                           progress: bool = True) -> RecipeResult:
    """(GCMH: pooled embeddings -> anchor graph ->) train -> encode query / database -> mAP report, under
    ``<run>/<model>``; every stage skipped when complete. Called by :func:`vhindex.train.recipes.run_recipe`."""
    import time

    t0 = time.perf_counter()
    kind = cfg.model.name
    stages: dict[str, str] = {}
    if kind == "gcmh":
        if uses_feature_graph(student_params(cfg)):
            before = _graph_text(cfg)
            build_neighbour_graph(cfg, datasets["train"], executor=graph_executor)
            stages["graph"] = "skipped" if before is not None and before == _graph_text(cfg) else "ran"
    model, res = train_contrastive_student(cfg, datasets, progress=progress)
    stages["student"] = "skipped" if res is None else "ran"
    return finish_recipe(cfg, kind, model, datasets, _model_root(cfg, kind), stages, t0)


def _graph_text(cfg: Config) -> bytes | None:
    return graph_manifest_text(f"{_model_root(cfg, 'gcmh')}/graph", _so(cfg))

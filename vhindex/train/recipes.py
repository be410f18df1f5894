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

import collections
import dataclasses
import functools
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vhindex import fs as vfs
from vhindex.config import Config
from vhindex.data import (
    EmbeddingDatasetMeta,
    EmbeddingDatasetWriter,
    FrameDataset,
    IncompleteDatasetError,
    ReadTask,
)
from vhindex.eval import EvalResult, evaluate, write_report
from vhindex.graph.stage import ExecutorFactory
from vhindex.models.base import model_params
from vhindex.models.learned import BTH, DKPH, resolve_device
from vhindex.models.losses import bth_loss, dkph_loss, teacher_loss
from vhindex.models.nets import mask_frames
from vhindex.train.loop import LoopSpec, TrainResult, run_training

__all__ = [
    "RecipeResult",
    "check_datasets",
    "run_bth_recipe",
    "run_dkph_recipe",
    "run_recipe",
    "train_bth",
    "train_student",
    "train_teacher",
    "write_teacher_embeddings",
]

logger = logging.getLogger(__name__)

STAGE_FILE = "_stage.json"
SPLITS = ("train", "query", "database")


@dataclasses.dataclass
class RecipeResult:
    """What a recipe produced.

    Attributes:
        run_dir: the run folder.
        model: ``"dkph"`` or ``"bth"``.
        model_url: the saved HashModel.
        codes: ``{"query": url, "database": url}``.
        eval_url: folder of ``results.json`` / ``results.md``.
        result: the :class:`~vhindex.eval.EvalResult` (mAP@K, P@N, PR).
        stages: ``{stage: "ran" | "skipped"}`` in order.
        seconds: wall time.
    """

    run_dir: str
    model: str
    model_url: str
    codes: dict[str, str]
    eval_url: str
    result: EvalResult
    stages: dict[str, str]
    seconds: float

    @property
    def map_at_k(self) -> dict[int, float]:
        """mAP@K of the final model."""
        return self.result.map_at_k


# ------------------------------------------------------------------------------ helpers


def _root(cfg: Config) -> str:
    return cfg.run.output_dir.rstrip("/")


def _so(cfg: Config) -> dict[str, Any] | None:
    return cfg.run.storage_options or None


def _data_so(cfg: Config) -> dict[str, Any] | None:
    return cfg.data.storage_options or None  # defaults to run.storage_options (vhindex.config)


#: model.params shared by the student and the teacher (a BTH network of the same shape)
ARCH_PARAMS = ("num_frames", "feature_dim", "hidden", "layers", "heads", "ffn", "dropout")
#: the students this recipe trains (``model.name``)
STUDENTS = ("dkph", "bth")


def student_params(cfg: Config, kind: str | None = None) -> dict[str, Any]:
    """The parameters of student ``kind`` (default ``model.name``): ``model.params`` over its constructor defaults.

    ``model.params`` was validated against ``model.name``; for another student (the demo trains DKPH
    and BTH from one config) only the parameters that student takes are used -- the architecture
    (:data:`ARCH_PARAMS`) is shared, DKPH's switches are DKPH's own.

    Raises:
        ValueError: the student is not one this recipe trains.
    """
    kind = kind or cfg.model.name
    if kind not in STUDENTS:
        raise ValueError(f"model.name: training needs a learned student, one of {list(STUDENTS)}; got "
                         f"{kind!r} (fit baselines with `vhindex fit`)")
    defaults = model_params(kind)
    return {**defaults, **{k: v for k, v in cfg.model.params.items() if k in defaults}}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _arch(cfg: Config, bits: int) -> dict[str, Any]:
    params = student_params(cfg)
    return {"bits": bits, **{k: params[k] for k in ARCH_PARAMS}}


def _read_stage(url: str, so: dict | None) -> dict[str, Any] | None:
    fs, root = vfs.url_to_fs(url, so)
    path = vfs.join(fs, root, STAGE_FILE)
    return vfs.read_json(fs, path) if fs.exists(path) else None


def _write_stage(url: str, so: dict | None, inputs: dict[str, Any], **extra: Any) -> None:
    fs, root = vfs.url_to_fs(url, so)
    vfs.write_json_atomic(fs, vfs.join(fs, root, STAGE_FILE), {"inputs": inputs, **extra})


def _stage_done(url: str, so: dict | None, inputs: dict[str, Any]) -> dict[str, Any] | None:
    marker = _read_stage(url, so)
    return marker if marker is not None and marker.get("inputs") == inputs else None


def _check_resumable(stage_url: str, so: dict | None, inputs: dict[str, Any]) -> None:
    """Refuse a checkpoint folder made with other settings (epochs may differ: training extends)."""
    fs, root = vfs.url_to_fs(stage_url, so)
    path = vfs.join(fs, root, "ckpt", "inputs.json")
    strip = {k: v for k, v in inputs.items() if k != "epochs"}
    if fs.exists(path):
        old = {k: v for k, v in vfs.read_json(fs, path).items() if k != "epochs"}
        if old != strip:
            diff = sorted(k for k in set(old) | set(strip) if old.get(k) != strip.get(k))
            raise ValueError(
                f"{vfs.unstrip(fs, path)}: the checkpoint there was made with different settings ({diff}); "
                "use a new run.output_dir, or delete that stage folder to train from scratch")
    else:
        vfs.write_json_atomic(fs, path, inputs)


# ------------------------------------------------------------------------------ data checks


def _dataset_urls(cfg: Config, out=None) -> dict[str, str]:
    """The frame dataset URLs; all null -> synthesize ``synth`` data into ``<run>/data``."""
    urls = {s: getattr(cfg.data, s) for s in SPLITS}
    if all(u is None for u in urls.values()):
        from vhindex.data.synth import ensure_synthetic

        data_url = f"{_root(cfg)}/data"
        ensure_synthetic(cfg, data_url, out)
        return {s: f"{data_url}/{s}" for s in SPLITS}
    missing = [f"data.{s}" for s, u in urls.items() if u is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: missing dataset URL(s); set every one of data.train, data.query, "
                         "data.database (or leave all three null to synthesize the `synth` preset)")
    return urls  # type: ignore[return-value]


def check_datasets(cfg: Config, out=None) -> dict[str, FrameDataset]:
    """Open the train / query / database datasets and check them against the model -- before training.

    Raises:
        FileNotFoundError: naming the config key of a dataset URL with no complete dataset.
        ValueError: when ``model.name`` is not a student, a dataset's M / D differ from
            ``model.params.num_frames`` / ``model.params.feature_dim`` (both named), bits are not a
            multiple of 8, or there are fewer training videos than ``graph.anchors``.
    """
    t = cfg.train
    arch = student_params(cfg)
    for key, bits in (("model.bits", cfg.model.bits), ("train.teacher_bits", t.teacher_bits)):
        if bits is not None and (bits <= 0 or bits % 8):
            raise ValueError(f"{key}: code length must be a positive multiple of 8, got {bits}")
    urls = _dataset_urls(cfg, out)
    so = _data_so(cfg)
    datasets = {}
    for split, url in urls.items():
        try:
            datasets[split] = FrameDataset.open(url, so)
        except (FileNotFoundError, IncompleteDatasetError) as err:
            raise FileNotFoundError(f"data.{split}: no complete frame dataset at {url!r} ({err})") from None
    for split, ds in datasets.items():
        m, d = ds.meta.num_frames, ds.meta.feature_dim
        if (m, d) != (arch["num_frames"], arch["feature_dim"]):
            raise ValueError(
                f"data.{split} ({ds.url}) has M={m} frames x D={d} dims but the model is configured for "
                f"model.params.num_frames={arch['num_frames']}, model.params.feature_dim={arch['feature_dim']}; "
                f"set them to {m} and {d}")
    n = datasets["train"].num_videos
    if cfg.graph.anchors > n:
        raise ValueError(f"graph.anchors={cfg.graph.anchors} but data.train has only {n} videos; lower graph.anchors")
    if n == 0:
        raise ValueError(f"data.train ({datasets['train'].url}) is empty")
    return datasets


# ------------------------------------------------------------------------------ batch stream


@dataclasses.dataclass
class _Batch:
    positions: np.ndarray  # (B,) int64 rows of the training dataset
    video_ids: list[str]
    frames: np.ndarray  # (B, M, D)
    sampler: Any = None  # the epoch's PairSampler (student stages)

    def __len__(self) -> int:
        return len(self.positions)


class _TrainStream:
    """Seeded per-epoch shuffled batches of a training dataset, with global row positions."""

    def __init__(self, ds: FrameDataset, batch_size: int, seed: int, shuffle_buffer: int) -> None:
        self.ds, self.batch_size, self.seed, self.shuffle_buffer = ds, batch_size, seed, shuffle_buffer
        self.tasks = ds.plan(max_rows_per_task=1)  # one row group per task (row groups are never split)
        self.offsets = np.concatenate([[0], np.cumsum([t.num_rows for t in self.tasks])]).astype(np.int64)

    def epoch(self, epoch: int, sampler_factory=None) -> Iterator[_Batch]:
        rng = np.random.default_rng([self.seed, epoch, 1])
        order = rng.permutation(len(self.tasks)) if self.shuffle_buffer else np.arange(len(self.tasks))
        sampler = sampler_factory(epoch) if sampler_factory is not None else None
        buf_pos: list[np.ndarray] = []
        buf_ids: list[str] = []
        buf_x: list[np.ndarray] = []
        size = 0
        bs = self.batch_size

        def flush(final: bool) -> Iterator[_Batch]:
            nonlocal buf_pos, buf_ids, buf_x, size
            pos, x = np.concatenate(buf_pos), np.concatenate(buf_x)
            ids = np.asarray(buf_ids, dtype=object)
            perm = rng.permutation(size) if self.shuffle_buffer else np.arange(size)
            n_out = size if final else (size // bs) * bs
            for s in range(0, n_out, bs):
                sel = perm[s:min(s + bs, n_out)]
                yield _Batch(pos[sel], ids[sel].tolist(), x[sel], sampler)
            keep = perm[n_out:]
            buf_pos, buf_ids, buf_x, size = [pos[keep]], ids[keep].tolist(), [x[keep]], len(keep)

        limit = max(self.shuffle_buffer, bs)
        for ti in order:
            task = self.tasks[int(ti)]
            row = int(self.offsets[ti])
            for fb in self.ds.iter_batches(max(task.num_rows, 1), columns=("video_id", "features"), tasks=[task]):
                n = len(fb)
                buf_pos.append(np.arange(row, row + n, dtype=np.int64))
                buf_ids.extend(fb.video_ids)
                buf_x.append(np.asarray(fb.features))
                size += n
                row += n
            if size >= limit:
                yield from flush(final=False)
        if size:
            yield from flush(final=True)


class PartnerFrames:
    """Frames of training videos by row position: in memory when small, else by row group.

    Args:
        ds: the training dataset.
        budget_bytes: load all features (as float32) when they take at most this many bytes.
        cache_row_groups: row groups kept (LRU) when reading on demand.
    """

    def __init__(self, ds: FrameDataset, budget_bytes: int, cache_row_groups: int = 8) -> None:
        self.ds = ds
        m, d = ds.meta.num_frames, ds.meta.feature_dim
        self.in_memory = ds.num_videos * m * d * 4 <= budget_bytes
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._cache_size = cache_row_groups
        self.tasks = ds.plan(max_rows_per_task=1)
        self.offsets = np.concatenate([[0], np.cumsum([t.num_rows for t in self.tasks])]).astype(np.int64)
        self._all: np.ndarray | None = None
        if self.in_memory:
            self._all = np.empty((ds.num_videos, m, d), np.float32)
            row = 0
            for fb in ds.iter_batches(4096, columns=("video_id", "features")):
                self._all[row:row + len(fb)] = fb.features
                row += len(fb)

    def _group(self, g: int) -> np.ndarray:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        task: ReadTask = self.tasks[g]
        parts = [fb.features for fb in self.ds.iter_batches(task.num_rows, columns=("video_id", "features"),
                                                             tasks=[task])]
        arr = np.concatenate(parts).astype(np.float32, copy=False)
        self._cache[g] = arr
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return arr

    def get(self, positions: np.ndarray) -> np.ndarray:
        """``(len(positions), M, D)`` float32 frames of these training rows."""
        positions = np.asarray(positions, dtype=np.int64)
        if self._all is not None:
            return self._all[positions]
        out = np.empty((len(positions), self.ds.meta.num_frames, self.ds.meta.feature_dim), np.float32)
        groups = np.searchsorted(self.offsets, positions, side="right") - 1
        for g in np.unique(groups):
            sel = np.flatnonzero(groups == g)
            out[sel] = self._group(int(g))[positions[sel] - self.offsets[g]]
        return out


def _tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    # Arrow-backed arrays are read-only; np.require copies only when needed
    return torch.from_numpy(np.require(x, np.float32, ["C", "W"])).to(device)


def _loop_spec(cfg: Config, epochs: int, name: str) -> LoopSpec:
    t = cfg.train
    return LoopSpec(epochs=epochs, lr=t.lr, lr_decay=t.lr_decay, lr_decay_every=t.lr_decay_every, lr_min=t.lr_min,
                    seed=cfg.run.seed, ckpt_every=t.ckpt_every, name=name)


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
                 progress: bool, **loop_kwargs: Any) -> tuple[DKPH | BTH, TrainResult | None, str]:
    from vhindex.graph import PairSampler

    t, so = cfg.train, _so(cfg)
    train = datasets["train"]
    prefix = _root(cfg) if kind == "dkph" else f"{_root(cfg)}/bth"
    stage, model_url = f"{prefix}/student", f"{prefix}/model"
    anchors_np, graph, nearest, graph_fp = _load_graph_for(cfg, graph_url, train)
    params = student_params(cfg, kind)
    flags: dict[str, Any] = {}
    if kind == "dkph":
        flags = {"temporal": params["temporal"], "use_tsim": params["use_tsim"], "use_bsim": params["use_bsim"]}
        if params["hash_input"] != "flatten":  # absent when released, so existing stage markers still match
            flags["hash_input"] = params["hash_input"]
    weights = {"gamma1": t.gamma1, "gamma2": t.gamma2} if kind == "dkph" else {}
    bits = cfg.model.bits
    inputs = {"stage": kind, **_arch(cfg, bits), **flags, **weights, "epochs": t.epochs, "seed": cfg.run.seed,
              "graph": graph_fp, "mask_prob": t.mask_prob, "batch_size": t.batch_size,
              "lr": [t.lr, t.lr_decay, t.lr_decay_every, t.lr_min], "shuffle_buffer": t.shuffle_buffer,
              "pair_backend": t.pair_backend}
    device = resolve_device(t.device)
    cls = DKPH if kind == "dkph" else BTH
    if _stage_done(stage, so, inputs):
        return cls.load(model_url, so).to(device), None, model_url  # type: ignore[return-value]
    _check_resumable(stage, so, inputs)
    torch.manual_seed(cfg.run.seed)
    model = cls(device=device, **_arch(cfg, bits), **flags)
    anchors = _tensor(anchors_np, device)
    partners_src = PartnerFrames(train, t.partner_cache_bytes)
    stream = _TrainStream(train, t.batch_size, cfg.run.seed, t.shuffle_buffer)

    def sampler_for(epoch: int) -> PairSampler:
        return PairSampler(graph, np.random.SeedSequence([cfg.run.seed, epoch, 2]), backend=t.pair_backend)

    def step(net, batch: _Batch, gen):
        partners, s = batch.sampler.sample(batch.positions)
        f1 = _tensor(batch.frames, device)
        f2 = _tensor(partners_src.get(partners), device)
        out1 = net(mask_frames(f1, gen, t.mask_prob))
        out2 = net(mask_frames(f2, gen, t.mask_prob))
        c1 = anchors[torch.from_numpy(nearest[batch.positions]).to(device)]
        c2 = anchors[torch.from_numpy(nearest[partners]).to(device)]
        s_t = torch.from_numpy(s).to(device)
        if kind == "dkph":
            return dkph_loss(out1, out2, f1, f2, s_t, c1, c2, gamma1=t.gamma1, gamma2=t.gamma2,
                             use_tsim=params["use_tsim"], use_bsim=params["use_bsim"])
        return bth_loss(out1, out2, f1, f2, s_t, c1, c2)

    eval_fn = None
    if t.eval_every:
        def eval_fn(_net, _epoch):  # noqa: ANN001
            res = _evaluate(cfg, model, datasets, pr=False)
            return {f"map@{k}": v for k, v in res.map_at_k.items()}

    result = run_training(_loop_spec(cfg, t.epochs, kind), module=model.net, step_fn=step,
                          batches=lambda e: stream.epoch(e, sampler_for), ckpt_url=f"{stage}/ckpt",
                          storage_options=so, metrics_url=stage, eval_fn=eval_fn, eval_every=t.eval_every,
                          device=device, progress=progress, **loop_kwargs)
    if loop_kwargs.get("rank", 0) == 0:
        model.save(model_url, so)
        _write_stage(stage, so, inputs, model_version=model.version())
    return model, result, model_url


def train_student(cfg: Config, datasets: dict[str, FrameDataset] | None = None, graph_url: str | None = None, *,
                  progress: bool = True, **loop_kwargs: Any) -> tuple[DKPH, TrainResult | None]:
    """Train the DKPH student on graph pairs (dkph_loss, ablation flags from ``cfg.train``); save to ``<run>/model``.

    Returns:
        ``(DKPH model, TrainResult or None when skipped)``.
    """
    datasets = datasets or check_datasets(cfg)
    model, result, _ = _train_pairs(cfg, "dkph", datasets, graph_url or f"{_root(cfg)}/graph", progress=progress,
                                    **loop_kwargs)
    return model, result  # type: ignore[return-value]


def train_bth(cfg: Config, datasets: dict[str, FrameDataset] | None = None, graph_url: str | None = None, *,
              progress: bool = True, **loop_kwargs: Any) -> tuple[BTH, TrainResult | None]:
    """Train the BTH baseline (bth_loss, same graph and pairs); save to ``<run>/bth/model``.

    Returns:
        ``(BTH model, TrainResult or None when skipped)``.
    """
    datasets = datasets or check_datasets(cfg)
    model, result, _ = _train_pairs(cfg, "bth", datasets, graph_url or f"{_root(cfg)}/graph", progress=progress,
                                    **loop_kwargs)
    return model, result  # type: ignore[return-value]


# ------------------------------------------------------------------------------ encode + eval


def _evaluate(cfg: Config, model, datasets: dict[str, FrameDataset], *, pr: bool) -> EvalResult:
    from vhindex.inprocess import encode_in_memory, labels_for

    q, db = datasets["query"], datasets["database"]
    qi, qc = encode_in_memory(model, q, cfg.data.batch_size)
    di, dc = encode_in_memory(model, db, cfg.data.batch_size)
    n = db.meta.num_classes
    return evaluate(dc, qc, labels_for(di, db, n), labels_for(qi, q, n), ks=cfg.eval.ks, protocol=cfg.eval.protocol,
                    pr=pr, precision_ns=cfg.eval.precision_ns)


def _encode_and_report(cfg: Config, model, datasets: dict[str, FrameDataset], prefix: str,
                       name: str) -> tuple[dict[str, str], str, EvalResult, bool]:
    from vhindex.data import CodesDataset
    from vhindex.inprocess import encode_dataset, labels_for

    so = _so(cfg)
    codes = {s: f"{prefix}/codes/{s}" for s in ("query", "database")}
    eval_url = f"{prefix}/eval"
    inputs = {"stage": "eval", "model": model.version(), "ks": cfg.eval.ks, "protocol": cfg.eval.protocol,
              "precision_ns": cfg.eval.precision_ns, "pr": cfg.eval.pr_curve,
              "data": {s: _hash(datasets[s].manifest.to_dict()) for s in ("query", "database")}}
    marker = _stage_done(eval_url, so, inputs)
    if marker is not None:
        result = EvalResult.from_dict(marker["result"])  # JSON sorted the keys as strings: restore K order
        result = dataclasses.replace(result, map_at_k=dict(sorted(result.map_at_k.items())),
                                     precision_at_n=dict(sorted(result.precision_at_n.items())))
        return codes, eval_url, result, False
    for split, url in codes.items():
        encode_dataset(model, datasets[split], url, batch_size=cfg.data.batch_size, storage_options=so,
                       overwrite=True)
    n = datasets["database"].meta.num_classes
    qi, qc = CodesDataset.open(codes["query"], so).read_all()
    di, dc = CodesDataset.open(codes["database"], so).read_all()
    ql, dl = labels_for(qi, datasets["query"], n), labels_for(di, datasets["database"], n)
    result = evaluate(dc, qc, dl, ql, ks=cfg.eval.ks, protocol=cfg.eval.protocol, pr=cfg.eval.pr_curve,
                      precision_ns=cfg.eval.precision_ns)
    write_report({name: result}, eval_url, storage_options=so, plots=cfg.eval.plots)
    _write_stage(eval_url, so, inputs, result=result.to_dict())
    return codes, eval_url, result, True


# ------------------------------------------------------------------------------ the recipe


def run_recipe(cfg: Config, *, model: str | None = None, graph_executor: ExecutorFactory | None = None,
               progress: bool = True, out=None) -> RecipeResult:
    """teacher -> embeddings -> graph -> student (``model`` or ``model.name``) -> encode -> mAP report.

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
    if kind not in STUDENTS:
        raise ValueError(f"model.name: unknown student {kind!r}; choose one of {list(STUDENTS)}")
    t0 = time.perf_counter()
    stages: dict[str, str] = {}
    datasets = check_datasets(cfg, out)
    teacher, res = train_teacher(cfg, datasets, progress=progress)
    stages["teacher"] = "skipped" if res is None else "ran"
    embeddings, ran = _write_embeddings(cfg, teacher, datasets["train"], None)
    stages["embeddings"] = "ran" if ran else "skipped"
    before = _graph_manifest_text(cfg)
    graph_url = build_teacher_graph(cfg, embeddings, executor=graph_executor)
    stages["graph"] = "skipped" if before is not None and before == _graph_manifest_text(cfg) else "ran"
    student, res = _train_pairs(cfg, kind, datasets, graph_url, progress=progress)[:2]
    stages["student"] = "skipped" if res is None else "ran"
    prefix = _root(cfg) if kind == "dkph" else f"{_root(cfg)}/bth"
    name = f"{kind}-{cfg.model.bits}"
    codes, eval_url, result, ran = _encode_and_report(cfg, student, datasets, prefix, name)
    stages["eval"] = "ran" if ran else "skipped"
    logger.info("%s: mAP@%d = %.4f (%s)", name, cfg.eval.ks[0], result.map_at_k[cfg.eval.ks[0]], eval_url)
    return RecipeResult(run_dir=_root(cfg), model=kind, model_url=f"{prefix}/model", codes=codes, eval_url=eval_url,
                        result=result, stages=stages, seconds=time.perf_counter() - t0)


def _graph_manifest_text(cfg: Config) -> bytes | None:
    fs, root = vfs.url_to_fs(f"{_root(cfg)}/graph", _so(cfg))
    path = vfs.join(fs, root, "graph.json")
    return fs.cat(path) if fs.exists(path) else None


def run_dkph_recipe(cfg: Config, **kwargs: Any) -> RecipeResult:
    """:func:`run_recipe` with the DKPH student (outputs at the run root: ``model``, ``codes``, ``eval``)."""
    return run_recipe(cfg, model="dkph", **kwargs)


def run_bth_recipe(cfg: Config, **kwargs: Any) -> RecipeResult:
    """:func:`run_recipe` with the BTH baseline student (outputs under ``<run>/bth``)."""
    return run_recipe(cfg, model="bth", **kwargs)

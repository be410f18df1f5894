"""What the training recipes share: run-folder helpers, stage markers, the batch stream, partner frames,
dataset checks' URL rule, and the encode + evaluate stage.

Used by :mod:`vhindex.train.recipes` (BTH / DKPH) and :mod:`vhindex.train.contrastive` (ConMH / GCMH).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vhindex import fs as vfs
from vhindex.config import Config
from vhindex.data import FrameDataset, IncompleteDatasetError, ReadTask
from vhindex.eval import EvalResult, evaluate, write_report
from vhindex.models.base import model_params
from vhindex.train.loop import LoopSpec

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


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


#: model.params shared by the student and the teacher (a BTH network of the same shape)
ARCH_PARAMS = ("num_frames", "feature_dim", "hidden", "layers", "heads", "ffn", "dropout")
#: the students the recipes train (``model.name``): BTH / DKPH here (teacher -> graph -> student), the
#: masked contrastive models in :mod:`vhindex.train.contrastive`
STUDENTS = ("dkph", "bth", "mcmsh", "nph", "conmh", "gcmh", "dvhcm")
TEACHER_STUDENTS = ("dkph", "bth", "mcmsh", "nph")


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


class BestEpoch:
    """Selects the training epoch on a validation split: the loop's ``eval_fn`` (``eval_every=1``) scores the
    model's codes on ``query`` against ``database`` (mAP@``k``, paper protocol, relevance = a shared label)
    after every epoch and keeps a copy of the best epoch's weights; :meth:`restore` puts them back.

    The validation split must be carved from the training data (never the test query / database):
    ``vhindex bench quality`` carves it from the labelled training clips.

    With ``state_url`` the selection survives a kill: the best weights go to ``best-<epoch>.pt`` whenever
    they improve, then the curve to ``selection.json`` after every epoch (older best files are deleted
    after it), and a new instance on the same folder picks both up, so a resumed run chooses among *all*
    its epochs, as one that never stopped does. An epoch evaluated but not checkpointed before the kill
    is dropped from the curve and evaluated again when the loop re-runs it; if it was the best, the
    re-run takes its place (training resumes exactly, so it scores the same).

    Args:
        model: the HashModel being trained (its ``.net`` is what the loop optimises).
        query: validation queries (with labels).
        database: validation database (with labels).
        k: mAP@k.
        state_url: folder for the selection state (None: in memory only).
        storage_options: fsspec options of ``state_url``.
    """

    def __init__(self, model: Any, query: FrameDataset, database: FrameDataset, k: int = 20,
                 state_url: str | None = None, storage_options: dict[str, Any] | None = None) -> None:
        self.model, self.query, self.database, self.k = model, query, database, k
        n = max(query.meta.num_classes or 0, database.meta.num_classes or 0)
        self.q_labels, self.db_labels = query.read_labels_multi_hot(n), database.read_labels_multi_hot(n)
        self.curve: list[float] = []
        self.stats: list[dict[str, Any]] = []
        self.best_epoch, self.best_score = -1, float("-inf")
        self._state: dict[str, torch.Tensor] | None = None
        self._fs = self._root = None
        if state_url is not None:
            self._fs, self._root = vfs.url_to_fs(state_url, storage_options)
            path = vfs.join(self._fs, self._root, "selection.json")
            if self._fs.exists(path):
                saved = vfs.read_json(self._fs, path)
                if saved.get("k") != k:
                    raise ValueError(f"{vfs.unstrip(self._fs, path)}: selection state for mAP@{saved.get('k')}, "
                                     f"not mAP@{k}; use a new run folder")
                self.curve, self.stats = list(saved["curve"]), list(saved["stats"])
                self.best_epoch, self.best_score = int(saved["best_epoch"]), float(saved["best_score"])

    def _best_path(self, epoch: int) -> str:
        return vfs.join(self._fs, self._root, f"best-{epoch:05d}.pt")

    def __call__(self, _net: Any, epoch: int) -> dict[str, float]:
        from vhindex.inprocess import encode_in_memory

        if len(self.curve) > epoch:  # epochs evaluated before a kill, not checkpointed: they run again
            del self.curve[epoch:], self.stats[epoch:]
            if self.best_epoch >= epoch:  # its weights are re-made by the re-run (same score, exact resume)
                self.best_epoch, self.best_score, self._state = -1, float("-inf"), None
        _, qc = encode_in_memory(self.model, self.query)
        _, dc = encode_in_memory(self.model, self.database)
        score = float(evaluate(dc, qc, self.db_labels, self.q_labels, ks=[self.k], protocol="paper", pr=False,
                               precision_ns=[]).map_at_k[self.k])
        from vhindex.eval.codes import code_statistics

        self.curve.append(score)
        self.stats.append(code_statistics(dc))  # collapse / balance / correlation of the validation database
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            self._state = {k: v.detach().clone() for k, v in self.model.net.state_dict().items()}
            if self._fs is not None:
                import io

                buf = io.BytesIO()
                torch.save(self._state, buf)
                vfs.write_bytes_atomic(self._fs, self._best_path(epoch), buf.getvalue())
        if self._fs is not None:  # after the weights: the curve never names a best epoch whose file is missing
            vfs.write_json_atomic(self._fs, vfs.join(self._fs, self._root, "selection.json"), {
                "k": self.k, "curve": self.curve, "stats": self.stats, "best_epoch": self.best_epoch,
                "best_score": self.best_score})
            keep = self._best_path(self.best_epoch)
            for path in self._fs.glob(vfs.join(self._fs, self._root, "best-*.pt")):
                if path.rstrip("/").split("/")[-1] != keep.rstrip("/").split("/")[-1]:
                    self._fs.rm(path)
        return {f"val_map@{self.k}": score}

    def restore(self) -> None:
        """Load the best epoch's weights into the model (no-op before any evaluation)."""
        state = self._state
        if state is None and self._fs is not None and self.best_epoch >= 0:
            with self._fs.open(self._best_path(self.best_epoch), "rb") as f:
                state = torch.load(f, map_location="cpu", weights_only=True)
        if state is not None:
            self.model.net.load_state_dict(state)

    def summary(self) -> dict[str, Any]:
        """``{"best_epoch" (1-based), "best_val", "curve", "code_stats"}`` (one entry per epoch)."""
        return {"best_epoch": self.best_epoch + 1, "best_val": round(self.best_score, 4),
                "curve": [round(v, 4) for v in self.curve],
                "code_stats": [{k: round(v, 4) if isinstance(v, float) else v for k, v in st.items()}
                               for st in self.stats]}


def graph_manifest_text(url: str, storage_options: dict[str, Any] | None) -> bytes | None:
    """The bytes of the graph manifest at ``url`` (None when there is none): compared before and after a
    graph stage to tell "ran" from "skipped"."""
    fs, root = vfs.url_to_fs(url, storage_options)
    path = vfs.join(fs, root, "graph.json")
    return fs.cat(path) if fs.exists(path) else None


def finish_recipe(cfg: Config, kind: str, model: Any, datasets: dict[str, FrameDataset], prefix: str,
                  stages: dict[str, str], t0: float) -> RecipeResult:
    """The recipes' last stage: encode query / database with ``model`` under ``prefix``, score, report."""
    import time

    name = f"{kind}-{cfg.model.bits}"
    codes, eval_url, result, ran = _encode_and_report(cfg, model, datasets, prefix, name)
    stages["eval"] = "ran" if ran else "skipped"
    logger.info("%s: mAP@%d = %.4f (%s)", name, cfg.eval.ks[0], result.map_at_k[cfg.eval.ks[0]], eval_url)
    return RecipeResult(run_dir=_root(cfg), model=kind, model_url=f"{prefix}/model", codes=codes, eval_url=eval_url,
                        result=result, stages=stages, seconds=time.perf_counter() - t0)

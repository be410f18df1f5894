"""Sharded encoding: a frame-feature dataset -> a codes dataset, one shard per read task.

Re-encoding a corpus after a model change writes the new codes *beside* the old ones:
:func:`versioned_codes_url` names the output folder after the model (``<root>/dkph-64b-<version>``),
and :class:`~vhindex.pipelines.shards.ShardedOutput` refuses to write into a folder that holds
another job's output.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vhindex import fs as vfs
from vhindex.data.planner import Piece, ReadTask
from vhindex.data.reader import FrameDataset
from vhindex.data.schema import CodesDatasetMeta
from vhindex.data.writer import CodesDatasetWriter
from vhindex.pipelines.runner import ShardedJob, ShardProcessor
from vhindex.pipelines.shards import ItemError, ShardedOutput, ShardSpec, ShardStats, fingerprint_hash

__all__ = ["EncodeJob", "EncodeShardProcessor", "versioned_codes_url"]


def versioned_codes_url(root: str, model_name: str, bits: int, version: str) -> str:
    """``<root>/<model>-<bits>b-<version>``: one folder per model version under a codes root."""
    return root.rstrip("/") + f"/{model_name}-{bits}b-{version}"


def _task_to_item(task: ReadTask) -> dict[str, Any]:
    return {"task_id": task.task_id, "num_rows": task.num_rows,
            "pieces": [[p.file_index, p.row_group_start, p.row_group_stop] for p in task.pieces]}


def _item_to_task(item: dict[str, Any]) -> ReadTask:
    return ReadTask(task_id=int(item["task_id"]), num_rows=int(item["num_rows"]),
                    pieces=tuple(Piece(int(a), int(b), int(c)) for a, b, c in item["pieces"]))


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        try:
            import faiss

            faiss.omp_set_num_threads(threads)
        except ImportError:  # pragma: no cover - faiss is a core dependency
            pass


class EncodeShardProcessor:
    """Loads the model once; encodes shards (read tasks of the frame dataset) to codes shards.

    A video whose features are not finite (NaN/Inf) becomes an error row (``non_finite``) instead
    of a meaningless code.
    """

    def __init__(self, frames_url: str, model_url: str, out_url: str, *, storage_options: dict[str, Any] | None,
                 batch_size: int, threads: int | None, device: str, fingerprint: str) -> None:
        from vhindex.models import load_model

        _set_threads(threads)
        self.frames = FrameDataset.open(frames_url, storage_options)
        self.model = load_model(model_url, storage_options)
        if hasattr(self.model, "to"):
            self.model.to(device)
        self.meta = CodesDatasetMeta(bits=self.model.bits, model=self.model.name, model_version=self.model.version())
        self.output = ShardedOutput(out_url, storage_options)
        self.batch_size = batch_size
        self.fingerprint = fingerprint
        self.storage_options = storage_options

    def process(self, spec: ShardSpec) -> ShardStats:
        """Encode the shard's read task and write its codes, error rows and marker."""
        t0 = time.monotonic()
        (item,) = spec.items
        task = _item_to_task(item)
        shard_url = self.output.begin_shard(spec.name)
        errors: list[ItemError] = []
        ok = 0
        with CodesDatasetWriter(shard_url, self.meta, rows_per_file=max(spec.num_inputs, 1),
                                row_group_size=min(max(spec.num_inputs, 1), 65_536),
                                storage_options=self.storage_options, overwrite=True) as writer:
            row = 0
            for batch in self.frames.iter_batches(self.batch_size, columns=("video_id", "features"), tasks=[task]):
                feats = batch.features
                # One summing pass instead of a full boolean mask: NaN/Inf anywhere makes a row's sum
                # non-finite; only such rows (or rows whose sum overflowed) get the exact per-value check.
                finite = np.isfinite(feats.sum(axis=(1, 2), dtype=np.float64))
                for i in np.flatnonzero(~finite):
                    finite[i] = bool(np.isfinite(feats[i]).all())
                if not finite.all():
                    for i in np.flatnonzero(~finite):
                        errors.append(ItemError(batch.video_ids[i], f"{self.frames.url} task {task.task_id} row {row + i}",
                                                "non_finite", "frame features contain NaN or Inf"))
                    keep = np.flatnonzero(finite)
                    ids = [batch.video_ids[i] for i in keep]
                    feats = feats[keep]
                else:
                    ids = batch.video_ids
                if ids:
                    writer.write(ids, self.model.encode_packed(feats))
                    ok += len(ids)
                row += len(batch)
        if row != spec.num_inputs:
            raise RuntimeError(f"{spec.name}: read {row} rows from {self.frames.url} but the plan says {spec.num_inputs}")
        reasons: dict[str, int] = {}
        for e in errors:
            reasons[e.reason] = reasons.get(e.reason, 0) + 1
        seconds = time.monotonic() - t0
        stats = ShardStats(shard=spec.name, fingerprint=self.fingerprint, inputs=spec.num_inputs, ok=ok,
                           errors=len(errors), error_counts=reasons, seconds=seconds, finished_at=time.time(),
                           worker=f"{socket.gethostname()}:{os.getpid()}",
                           extra={"videos_per_second": spec.num_inputs / max(seconds, 1e-9),
                                  "model_version": self.meta.model_version})
        self.output.finish_shard(stats, errors)
        return stats


class EncodeJob(ShardedJob):
    """Encode ``frames_url`` with the model at ``model_url`` into a codes dataset at ``out_url``.

    Args:
        frames_url: frame-feature dataset.
        model_url: saved model (any :class:`~vhindex.models.HashModel`).
        out_url: output folder; None -> ``versioned_codes_url(out_root, ...)``.
        out_root: codes root used when ``out_url`` is None.
        storage_options: fsspec options for all three.
        batch_size: videos per model call.
        rows_per_shard: upper bound on videos per shard (row groups are never split).
        threads: torch / faiss threads in each worker (None: unchanged).
        device: where learned models run (``auto``: CUDA when present).

    Raises:
        ValueError: the model expects another frame shape than the dataset holds, or neither
            ``out_url`` nor ``out_root`` is given.
    """

    kind = "encode"

    def __init__(self, frames_url: str, model_url: str, out_url: str | None = None, *, out_root: str | None = None,
                 storage_options: dict[str, Any] | None = None, batch_size: int = 1024,
                 rows_per_shard: int = 50_000, threads: int | None = None, device: str = "auto") -> None:
        from vhindex.models import load_model

        self.frames_url, self.model_url = frames_url, model_url
        self.storage_options = dict(storage_options or {})
        self.frames = FrameDataset.open(frames_url, self.storage_options)
        model = load_model(model_url, self.storage_options)
        self._check_shape(model)
        self.model_name, self.bits, self.version = model.name, model.bits, model.version()
        if out_url is None:
            if out_root is None:
                raise ValueError("encode: set encode.out or encode.out_root (the codes root for versioned folders)")
            out_url = versioned_codes_url(out_root, self.model_name, self.bits, self.version)
        super().__init__(ShardedOutput(out_url, self.storage_options))
        self.batch_size, self.rows_per_shard, self.threads, self.device = batch_size, rows_per_shard, threads, device

    def _check_shape(self, model: Any) -> None:
        m, d = self.frames.meta.num_frames, self.frames.meta.feature_dim
        if not model.is_fitted:
            raise ValueError(f"model {self.model_url} is not fitted; fit or train it before encoding")
        if (model.num_frames, model.feature_dim) != (m, d):
            raise ValueError(f"model {self.model_url} was fitted on frames M={model.num_frames} x D={model.feature_dim} "
                             f"but {self.frames_url} holds M={m} x D={d}; encode features made like the training data")

    def fingerprint(self) -> dict[str, Any]:
        """Input dataset (URL + manifest hash), model (URL + content version) and the shard size."""
        manifest = json.dumps(self.frames.manifest.to_dict(), sort_keys=True).encode()
        return {"frames": self.frames_url, "frames_manifest_sha256": vfs.sha256_hex(manifest),
                "model": self.model_url, "model_version": self.version, "bits": self.bits,
                "rows_per_shard": self.rows_per_shard}

    def plan(self) -> list[ShardSpec]:
        """One shard per read task of the frame dataset (at most ``rows_per_shard`` rows each)."""
        tasks = self.frames.plan(max_rows_per_task=self.rows_per_shard)
        return [ShardSpec(index=t.task_id, items=(_task_to_item(t),), num_inputs=t.num_rows) for t in tasks]

    def processor_factory(self) -> Callable[[], ShardProcessor]:
        """A picklable factory of :class:`EncodeShardProcessor` (the model is loaded in the worker)."""
        return functools.partial(
            EncodeShardProcessor, self.frames_url, self.model_url, self.output.url,
            storage_options=self.storage_options, batch_size=self.batch_size, threads=self.threads,
            device=self.device, fingerprint=fingerprint_hash(self.fingerprint()))

    def dataset_meta(self) -> dict[str, Any]:
        """Codes metadata: bits, model name and version."""
        return json.loads(CodesDatasetMeta(bits=self.bits, model=self.model_name, model_version=self.version).to_json())

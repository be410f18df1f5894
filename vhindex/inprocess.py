"""In-process end-to-end stages: fit a model, encode a dataset to codes, evaluate codes.

These are the single-machine versions of the pipeline stages; ``cluster`` runs the same core
pieces on Ray and Dask. Everything streams: datasets are read in batches, never whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from vhindex.data import (
    CodesDataset,
    CodesDatasetMeta,
    CodesDatasetWriter,
    FrameDataset,
)
from vhindex.models import HashModel, build_model

log = logging.getLogger(__name__)


def frame_batches(dataset: FrameDataset, batch_size: int = 1024) -> Iterator[np.ndarray]:
    """Iterate over a dataset's frame features only, as ``(B, M, D)`` arrays."""
    for batch in dataset.iter_batches(batch_size, columns=("video_id", "features")):
        yield batch.features


def fit_model(
    name: str,
    bits: int,
    train: FrameDataset,
    *,
    params: dict | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> HashModel:
    """Build the model ``name`` at ``bits`` bits and fit it on the streamed training dataset."""
    model = build_model(name, bits, **(params or {}))
    t0 = time.perf_counter()
    model.fit(lambda: frame_batches(train, batch_size), seed=seed)
    log.info("fitted %s-%d on %d videos in %.1fs", name, bits, train.num_videos, time.perf_counter() - t0)
    return model


@dataclass(frozen=True)
class EncodeStats:
    """What :func:`encode_dataset` did."""

    videos: int
    seconds: float

    @property
    def videos_per_second(self) -> float:
        return self.videos / self.seconds if self.seconds > 0 else float("inf")


def encode_dataset(
    model: HashModel,
    frames: FrameDataset,
    out_url: str,
    *,
    batch_size: int = 1024,
    storage_options: dict | None = None,
    overwrite: bool = False,
) -> EncodeStats:
    """Encode every video of ``frames`` with ``model`` into a codes dataset at ``out_url``.

    Exactly one output row per input video, in input order.
    """
    meta = CodesDatasetMeta(bits=model.bits, model=model.name, model_version=model.version())
    t0 = time.perf_counter()
    n = 0
    with CodesDatasetWriter(out_url, meta, storage_options=storage_options, overwrite=overwrite) as writer:
        for batch in frames.iter_batches(batch_size, columns=("video_id", "features")):
            writer.write(batch.video_ids, model.encode_packed(batch.features))
            n += len(batch.video_ids)
    if n != frames.num_videos:
        raise RuntimeError(f"encoded {n} videos but {frames.url} holds {frames.num_videos}")
    return EncodeStats(videos=n, seconds=time.perf_counter() - t0)


def encode_in_memory(model: HashModel, frames: FrameDataset, batch_size: int = 1024) -> tuple[list[str], np.ndarray]:
    """Encode a dataset to ``(video_ids, packed codes)`` in memory (codes are small: N x K/8 bytes)."""
    ids: list[str] = []
    parts = []
    for batch in frames.iter_batches(batch_size, columns=("video_id", "features")):
        ids.extend(batch.video_ids)
        parts.append(model.encode_packed(batch.features))
    codes = np.concatenate(parts) if parts else np.zeros((0, model.bits // 8), np.uint8)
    return ids, codes


def labels_for(video_ids: list[str], frames: FrameDataset, num_classes: int | None = None) -> np.ndarray:
    """Multi-hot labels ``(len(video_ids), C)`` for ``video_ids``, looked up in a frame dataset.

    Raises a ValueError naming missing ids (codes whose video is not in the labelled dataset).
    """
    all_ids = frames.read_video_ids()
    labels = frames.read_labels_multi_hot(num_classes)
    position = {vid: i for i, vid in enumerate(all_ids)}
    missing = [v for v in video_ids if v not in position]
    if missing:
        raise ValueError(
            f"{len(missing)} video id(s) have no labels in {frames.url}, e.g. {missing[:3]}; "
            "evaluate codes against the frame dataset they were encoded from"
        )
    return labels[np.fromiter((position[v] for v in video_ids), dtype=np.int64, count=len(video_ids))]


def load_codes_with_labels(
    codes_url: str, frames_url: str, *, num_classes: int | None = None, storage_options: dict | None = None
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read a codes dataset and attach the labels of its videos from their frame dataset."""
    ids, codes = CodesDataset.open(codes_url, storage_options).read_all()
    frames = FrameDataset.open(frames_url, storage_options)
    return ids, codes, labels_for(ids, frames, num_classes)

"""Supervised training: DVHCM on labelled training videos (classification + intra-pair loss), one stage.

Run folder (``run.output_dir``)::

    dvhcm/student/ckpt, dvhcm/student/metrics.jsonl     the loop's checkpoints and metrics
    dvhcm/model                                         the DVHCM HashModel (mask ratio in its config)
    dvhcm/codes, dvhcm/eval                             codes and the mAP report (plain Hamming ranking)

The labels of ``data.train`` are read once as a multi-hot ``(N, C)`` matrix (``N * C`` bytes: 45 MB for
FCVID's 45K videos and 239 classes) and looked up by each batch's row positions. Every other piece is the
shared loop's (seeded shuffling, checkpoints, exact resume, Ray Train hooks).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from vhindex.config import Config
from vhindex.data import FrameDataset
from vhindex.models.dvhcm import DVHCM, intra_pair_split
from vhindex.models.learned import resolve_device
from vhindex.models.losses import dvhcm_loss
from vhindex.train.common import (
    BestEpoch,
    RecipeResult,
    _Batch,
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
    student_params,
)
from vhindex.train.loop import TrainResult, run_training

__all__ = ["SUPERVISED", "label_targets", "run_supervised_recipe", "train_dvhcm"]

logger = logging.getLogger(__name__)

#: the supervised models (they need ``data.train`` with labels)
SUPERVISED = ("dvhcm",)


def label_targets(train: FrameDataset, num_classes: int) -> np.ndarray:
    """Each training video's label distribution ``(N, C)`` float32 (multi-hot row / its count; a zero row for
    an unlabelled video, which then trains the intra-pair term only).

    Raises:
        ValueError: the dataset has no labels column or no labelled video, or a label is outside
            ``[0, num_classes)`` (named with its video and row).
    """
    if not train.has_labels:
        raise ValueError(f"dvhcm is supervised: data.train ({train.url}) has no labels column; write the training "
                         "features with labels (vhindex import-h5 --labels ..., or the extractor's label column)")
    multi_hot = train.read_labels_multi_hot(num_classes)
    counts = multi_hot.sum(axis=1)
    if not counts.any():
        raise ValueError(f"data.train ({train.url}): no video has a label; DVHCM's classification loss needs labels")
    unlabelled = int((counts == 0).sum())
    if unlabelled:
        logger.info("dvhcm: %d of %d training videos have no label (intra-pair loss only)", unlabelled, len(counts))
    return (multi_hot / np.maximum(counts, 1)[:, None]).astype(np.float32)


def train_dvhcm(cfg: Config, datasets: dict[str, FrameDataset] | None = None, *, progress: bool = True,
                validation: tuple[FrameDataset, FrameDataset] | None = None,
                **loop_kwargs: Any) -> tuple[DVHCM, TrainResult | None]:
    """Train (or reuse) DVHCM on ``data.train``'s labels; save to ``<run>/dvhcm/model``.

    Each step splits every video's frames into an intra-pair (two disjoint random halves, drawn from the
    loop's seeded generator) and minimises :func:`~vhindex.models.losses.dvhcm_loss`. With ``validation``
    the saved model is the epoch of best validation mAP@20 (plain Hamming ranking).

    Returns:
        ``(model, TrainResult or None when the stage was already complete)``.

    Raises:
        ValueError: ``model.name`` is not ``dvhcm``, or the training labels are missing / out of range.
    """
    from vhindex.models import load_model

    datasets = datasets or check_datasets(cfg)
    if cfg.model.name not in SUPERVISED:
        raise ValueError(f"model.name: {cfg.model.name!r} is not one of the supervised models {list(SUPERVISED)}")
    t, so = cfg.train, _so(cfg)
    root = f"{_root(cfg)}/dvhcm"
    stage, model_url = f"{root}/student", f"{root}/model"
    params = student_params(cfg)
    train = datasets["train"]
    targets = label_targets(train, int(params["num_classes"]))
    inputs = {"stage": "dvhcm", "bits": cfg.model.bits, "params": params, "epochs": t.epochs, "seed": cfg.run.seed,
              "train": _hash(train.manifest.to_dict()), "batch_size": t.batch_size,
              "lr": [t.lr, t.lr_decay, t.lr_decay_every, t.lr_min], "shuffle_buffer": t.shuffle_buffer}
    if validation is not None:
        inputs["select"] = {"on": "val_map@20", "query": validation[0].url, "database": validation[1].url}
    device = resolve_device(t.device)
    if _stage_done(stage, so, inputs):
        return load_model(model_url, so).to(device), None  # type: ignore[return-value]
    _check_resumable(stage, so, inputs)
    torch.manual_seed(cfg.run.seed)
    model = DVHCM(cfg.model.bits, device=device, **params)
    stream = _TrainStream(train, t.batch_size, cfg.run.seed, t.shuffle_buffer)
    loss_kwargs = model.loss_kwargs()

    def step(net: torch.nn.Module, batch: _Batch, gen: torch.Generator) -> dict[str, torch.Tensor]:
        frames = _tensor(batch.frames, device)
        first, second = intra_pair_split(len(batch), frames.shape[1], gen, device)
        y = torch.from_numpy(targets[batch.positions]).to(device)
        return dvhcm_loss(net(frames, first), net(frames, second), y, **loss_kwargs)

    selector = BestEpoch(model, *validation, state_url=f"{stage}/select", storage_options=so) \
        if validation is not None else None
    result = run_training(_loop_spec(cfg, t.epochs, "dvhcm"), module=model.net, step_fn=step, batches=stream.epoch,
                          ckpt_url=f"{stage}/ckpt", storage_options=so, metrics_url=stage, eval_fn=selector,
                          eval_every=1 if selector else 0, device=device, progress=progress, **loop_kwargs)
    extra = {}
    if selector is not None:
        selector.restore()
        extra["selection"] = selector.summary()
    if loop_kwargs.get("rank", 0) == 0:
        model.save(model_url, so)
        _write_stage(stage, so, inputs, model_version=model.version(), **extra)
    return model, result


def run_supervised_recipe(cfg: Config, datasets: dict[str, FrameDataset], *, progress: bool = True) -> RecipeResult:
    """train -> encode query / database -> mAP report under ``<run>/dvhcm`` (each stage skipped when complete).
    Called by :func:`vhindex.train.recipes.run_recipe` for ``model.name: dvhcm``."""
    t0 = time.perf_counter()
    model, res = train_dvhcm(cfg, datasets, progress=progress)
    stages = {"student": "skipped" if res is None else "ran"}
    return finish_recipe(cfg, "dvhcm", model, datasets, f"{_root(cfg)}/dvhcm", stages, t0)

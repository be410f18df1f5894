"""One training loop for every torch hashing model: schedule, seeding, checkpoints, resume, metrics.

:func:`run_training` drives a module through epochs of a batch stream with a model-specific
``step_fn`` (forward + loss); everything else is shared:

* **Schedule** (the released BTH / DKPH one): Adam, ``lr = max(lr0 * decay ** (epoch // every), lr_min)``
  set at the start of every epoch (:func:`lr_at`); defaults 3e-4, 0.9, 20, 1e-4.
* **Seeding**: ``torch.manual_seed`` and a ``torch.Generator`` handed to ``step_fn`` (for frame
  masking) are seeded from ``(spec.seed, rank)``; the global numpy RNG is seeded too. On CPU the
  same seed gives identical losses and weights. Streams that need their own numpy randomness
  (pair sampling) should derive it from ``(seed, epoch)`` -- then it needs no saved state.
* **Checkpoints** (rank 0, every ``ckpt_every`` epochs and after the last one) at any fsspec URL::

      <ckpt_url>/epoch-00003.pt   torch.save of {model, optimizer, epoch, step, rng, metrics, spec}
      <ckpt_url>/latest.json      {"epoch", "file", "sha256", "bytes", "step"}  -- written LAST

  Each file is written atomically (:func:`vhindex.fs.write_bytes_atomic`); only the newest
  ``keep_checkpoints`` files are kept. The RNG states (torch, the masking generator, numpy) are
  captured right after the epoch's last step -- evaluation runs between a snapshot and its
  restore -- so a run resumed from epoch ``e`` is bit-identical to one that never stopped.
* **Resume**: when ``latest.json`` exists, model / optimizer / RNG states and the metrics history
  are restored and training continues at the next epoch (nothing runs if all epochs are done).
* **Metrics**: one JSON object per epoch (``epoch``, ``step``, ``lr``, ``loss_<name>`` means,
  ``seconds``, ``videos``, ``videos_per_s``, ``eval_<name>`` when evaluated) in
  ``<metrics_url>/metrics.jsonl`` (rank 0; the whole file is rewritten atomically each epoch, so
  object stores work and a resumed run never repeats an epoch); a tqdm bar on rank 0.
* **Distributed hooks**: ``prepare_module`` (e.g. DDP wrapping), ``report(metrics, ckpt_dir)``
  once per epoch on every rank (Ray Train's ``ray.train.report``; rank 0 passes a local folder
  holding this epoch's checkpoint when one was written), and batch sharding: every rank walks the
  same stream and keeps every ``world_size``-th batch (a trailing incomplete round is dropped so
  that every rank makes the same number of steps -- DDP would hang otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from vhindex import fs as vfs

__all__ = [
    "CHECKPOINT_FORMAT",
    "LATEST_FILE",
    "METRICS_FILE",
    "LoopSpec",
    "TrainResult",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "run_training",
    "shard_batches",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "vhindex.train.checkpoint"
CHECKPOINT_VERSION = 1
LATEST_FILE = "latest.json"
METRICS_FILE = "metrics.jsonl"
_CKPT_NAME = "epoch-{epoch:05d}.pt"

StepFn = Callable[[nn.Module, Any, torch.Generator], dict[str, torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    """What :func:`run_training` does, independent of the model.

    Attributes:
        epochs: total epochs (a resumed run stops at the same total).
        lr: initial Adam learning rate (released: 3e-4).
        lr_decay: multiplicative decay per ``lr_decay_every`` epochs (released: 0.9).
        lr_decay_every: epochs between decays (released: 20).
        lr_min: floor of the learning rate (released: 1e-4).
        seed: seed of torch, the masking generator and numpy.
        ckpt_every: write a checkpoint every this many epochs (the last epoch always gets one).
        keep_checkpoints: newest checkpoint files kept (older ones are deleted).
        weight_decay: Adam weight decay (released: defined but not used, so 0).
        grad_clip: clip the global gradient norm to this value (None: no clipping, as released).
        name: label of the progress bar and log lines.
    """

    epochs: int
    lr: float = 3e-4
    lr_decay: float = 0.9
    lr_decay_every: int = 20
    lr_min: float = 1e-4
    seed: int = 0
    ckpt_every: int = 1
    keep_checkpoints: int = 2
    weight_decay: float = 0.0
    grad_clip: float | None = None
    name: str = "train"

    def __post_init__(self) -> None:
        problems = []
        for key in ("epochs", "lr_decay_every", "ckpt_every", "keep_checkpoints"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "epochs" else 1):
                problems.append(f"{key} must be a {'non-negative' if key == 'epochs' else 'positive'} int, got {value!r}")
        for key in ("lr", "lr_decay"):
            if not (isinstance(getattr(self, key), (int, float)) and getattr(self, key) > 0):
                problems.append(f"{key} must be > 0, got {getattr(self, key)!r}")
        if not (isinstance(self.lr_min, (int, float)) and self.lr_min >= 0):
            problems.append(f"lr_min must be >= 0, got {self.lr_min!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        if problems:
            raise ValueError("invalid LoopSpec: " + "; ".join(problems))


def lr_at(spec: LoopSpec, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): ``max(lr * lr_decay ** (epoch // lr_decay_every), lr_min)``."""
    return max(spec.lr * spec.lr_decay ** (epoch // spec.lr_decay_every), spec.lr_min)


@dataclasses.dataclass
class TrainResult:
    """What :func:`run_training` did.

    Attributes:
        metrics: one dict per finished epoch (including epochs restored from a checkpoint).
        start_epoch: first epoch run by this call (``> 0`` after a resume).
        epochs_run: epochs trained by this call.
        steps: optimizer steps in total (all epochs so far).
        resumed: whether a checkpoint was restored.
        checkpoint: URL of the newest checkpoint file, or None.
        seconds: wall time of this call.
    """

    metrics: list[dict[str, Any]]
    start_epoch: int
    epochs_run: int
    steps: int
    resumed: bool
    checkpoint: str | None
    seconds: float

    @property
    def final_losses(self) -> dict[str, float]:
        """``loss_*`` values of the last epoch (empty when no epoch finished)."""
        if not self.metrics:
            return {}
        return {k: v for k, v in self.metrics[-1].items() if k.startswith("loss_")}


# ------------------------------------------------------------------------------ batch sharding


def shard_batches(batches: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Rank ``rank``'s share of a batch stream: batches ``rank, rank + world_size, ...``.

    Batches come in rounds of ``world_size``; this rank's batch of a round is yielded only once
    the round is complete, so an incomplete last round is dropped on every rank alike and all
    ranks make the same number of steps. Holds at most one batch.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if world_size == 1:
        yield from batches
        return
    mine: Any = None
    dropped = 0
    for i, batch in enumerate(batches):
        pos = i % world_size
        if pos == rank:
            mine = batch
        if pos == world_size - 1:
            yield mine
            mine = None
            dropped = 0
        else:
            dropped += 1
    if dropped:
        logger.debug("rank %d: dropped a last incomplete round of %d batch(es)", rank, dropped)


def _batch_len(batch: Any) -> int:
    try:
        return len(batch)
    except TypeError:
        return 0


# ------------------------------------------------------------------------------ checkpoints


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(ckpt_url: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The ``latest.json`` pointer at ``ckpt_url`` (``epoch``, ``file``, ``sha256``, ...), or None."""
    fs, root = vfs.url_to_fs(ckpt_url, storage_options)
    path = vfs.join(fs, root, LATEST_FILE)
    if not fs.exists(path):
        return None
    pointer = vfs.read_json(fs, path)
    if not isinstance(pointer, dict) or "file" not in pointer or "epoch" not in pointer:
        raise ValueError(f"{vfs.unstrip(fs, path)} is not a checkpoint pointer (no 'file' / 'epoch'); "
                         "delete it to start over")
    return pointer


def load_checkpoint(ckpt_url: str, storage_options: dict | None = None, *,
                    map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """Load the newest checkpoint at ``ckpt_url`` (verified against ``latest.json``), or None.

    Returns:
        The checkpoint dict: ``model`` (state dict), ``optimizer``, ``epoch`` (last finished,
        0-based), ``step``, ``rng``, ``metrics``, ``spec``.

    Raises:
        ValueError: when the file's checksum differs from the pointer or it is not a checkpoint.
        FileNotFoundError: when the pointer names a missing file.
    """
    pointer = latest_checkpoint(ckpt_url, storage_options)
    if pointer is None:
        return None
    fs, root = vfs.url_to_fs(ckpt_url, storage_options)
    path = vfs.join(fs, root, pointer["file"])
    try:
        with fs.open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{ckpt_url}/{LATEST_FILE} points to {pointer['file']}, which is missing; "
                                f"delete {LATEST_FILE} to start over") from None
    if pointer.get("sha256") and vfs.sha256_hex(data) != pointer["sha256"]:
        raise ValueError(f"checkpoint {vfs.unstrip(fs, path)} does not match the sha256 in {LATEST_FILE}; "
                         "it is corrupt -- delete it and its pointer to restart from scratch")
    ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{vfs.unstrip(fs, path)} is not a vhindex training checkpoint")
    return ckpt


def _write_checkpoint(ckpt_url: str, storage_options: dict | None, payload: dict[str, Any], keep: int,
                      local_copy: str | None) -> str:
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    name = _CKPT_NAME.format(epoch=payload["epoch"])
    fs, root = vfs.url_to_fs(ckpt_url, storage_options)
    fs.makedirs(root, exist_ok=True)
    vfs.write_bytes_atomic(fs, vfs.join(fs, root, name), data)
    pointer = {"epoch": payload["epoch"], "step": payload["step"], "file": name, "sha256": vfs.sha256_hex(data),
               "bytes": len(data), "format": CHECKPOINT_FORMAT}
    vfs.write_json_atomic(fs, vfs.join(fs, root, LATEST_FILE), pointer)  # last: marks the checkpoint complete
    if local_copy is not None:
        with open(os.path.join(local_copy, name), "wb") as fh:
            fh.write(data)
        with open(os.path.join(local_copy, LATEST_FILE), "w") as fh:
            json.dump(pointer, fh)
    # prune old checkpoint files (never the one just written)
    old = sorted(p for p in fs.ls(root, detail=False)
                 if os.path.basename(str(p)).startswith("epoch-") and str(p).endswith(".pt"))
    for p in old[:-keep] if keep else []:
        if os.path.basename(str(p)) != name:
            fs.rm(p)
    return vfs.unstrip(fs, vfs.join(fs, root, name))


def _write_metrics(metrics_url: str, storage_options: dict | None, history: list[dict[str, Any]]) -> None:
    fs, root = vfs.url_to_fs(metrics_url, storage_options)
    path = root if root.endswith(".jsonl") else vfs.join(fs, root, METRICS_FILE)
    text = "".join(json.dumps(m, sort_keys=True) + "\n" for m in history)
    vfs.write_bytes_atomic(fs, path, text.encode())


def read_metrics(metrics_url: str, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """The per-epoch metrics :func:`run_training` wrote under ``metrics_url`` (folder or ``*.jsonl``); ``[]`` when
    there are none yet."""
    fs, root = vfs.url_to_fs(metrics_url, storage_options)
    path = root if root.endswith(".jsonl") else vfs.join(fs, root, METRICS_FILE)
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]


# ------------------------------------------------------------------------------ the loop


def run_training(
    spec: LoopSpec,
    *,
    module: nn.Module,
    step_fn: StepFn,
    batches: Callable[[int], Iterable[Any]],
    ckpt_url: str | None,
    storage_options: dict | None = None,
    metrics_url: str | None = None,
    eval_fn: Callable[[nn.Module, int], dict[str, Any]] | None = None,
    eval_every: int = 0,
    report: Callable[[dict[str, Any], str | None], None] | None = None,
    prepare_module: Callable[[nn.Module], nn.Module] | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train ``module`` for ``spec.epochs`` epochs (resuming from ``ckpt_url`` when it holds a checkpoint).

    Args:
        spec: schedule, seed and checkpoint cadence.
        module: the network (its initial weights are the caller's; seed before building it).
        step_fn: ``step_fn(module, batch, generator) -> {"total": loss, ...}``; runs the forward
            pass and the loss of one batch (``"total"`` is back-propagated, every entry is logged
            as ``loss_<name>``). ``generator`` is the loop's seeded ``torch.Generator`` (CPU) for
            masking; ``module`` is the prepared (e.g. DDP-wrapped) module.
        batches: ``batches(epoch)`` returns a fresh iterable of batches for that epoch; the same
            epoch must give the same stream (for resume and for all ranks). ``len(batch)``, when
            defined, counts videos for the throughput metric.
        ckpt_url: folder URL for checkpoints (None: no checkpoints, no resume).
        storage_options: fsspec options for ``ckpt_url`` and ``metrics_url``.
        metrics_url: folder (or ``*.jsonl`` file) URL for the JSON-lines metrics (None: none).
        eval_fn: ``eval_fn(module, epoch) -> {name: number}`` run on rank 0 every ``eval_every``
            epochs and after the last epoch (the module is in eval mode, without gradients).
        eval_every: epochs between evaluations (0: only after the last epoch, if ``eval_fn``).
        report: called once per epoch on every rank with ``(metrics, checkpoint dir or None)``; on
            rank 0 the directory is a temporary local folder holding this epoch's checkpoint file
            and ``latest.json`` (removed after the call).
        prepare_module: wraps the module after it is moved to ``device`` (e.g. DDP).
        rank: this worker's rank.
        world_size: number of workers.
        device: where the module lives.
        progress: show a tqdm bar per epoch on rank 0.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: on a bad ``rank`` / ``world_size`` or a ``step_fn`` without a finite ``"total"``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if eval_every < 0:
        raise ValueError(f"eval_every must be >= 0, got {eval_every}")
    t_start = time.perf_counter()
    device = torch.device(device)
    base = module.to(device)
    seeds = np.random.SeedSequence([spec.seed, rank]).generate_state(3)
    torch.manual_seed(int(seeds[0]))
    np.random.seed(int(seeds[1]))
    generator = torch.Generator().manual_seed(int(seeds[2]))
    net = prepare_module(base) if prepare_module is not None else base
    optimizer = torch.optim.Adam(net.parameters(), lr=lr_at(spec, 0), weight_decay=spec.weight_decay)

    history: list[dict[str, Any]] = []
    start_epoch, step, resumed, last_ckpt = 0, 0, False, None
    ckpt = load_checkpoint(ckpt_url, storage_options, map_location=device) if ckpt_url else None
    if ckpt is not None:
        base.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        _set_rng_state(ckpt["rng"], generator)
        history = list(ckpt.get("metrics", []))
        start_epoch, step, resumed = int(ckpt["epoch"]) + 1, int(ckpt["step"]), True
        last_ckpt = f"{ckpt_url.rstrip('/')}/{_CKPT_NAME.format(epoch=ckpt['epoch'])}"
        logger.info("%s: resumed from %s (epoch %d done, step %d)", spec.name, ckpt_url, ckpt["epoch"], step)
        if rank == 0 and progress and start_epoch < spec.epochs:
            print(f"{spec.name}: resuming at epoch {start_epoch + 1}/{spec.epochs} from {ckpt_url}", flush=True)

    for epoch in range(start_epoch, spec.epochs):
        lr = lr_at(spec, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        net.train()
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        count = videos = steps_this_epoch = 0
        bar = None
        stream = shard_batches(batches(epoch), rank, world_size)
        if rank == 0 and progress:
            from tqdm.auto import tqdm

            bar = tqdm(stream, desc=f"{spec.name} epoch {epoch + 1}/{spec.epochs}", unit="batch", leave=False)
            stream = bar
        for batch in stream:
            optimizer.zero_grad(set_to_none=True)
            losses = step_fn(net, batch, generator)
            total = losses.get("total") if isinstance(losses, dict) else None
            if not isinstance(total, torch.Tensor):
                raise ValueError(f"step_fn must return a dict with a 'total' loss tensor, got {type(losses).__name__}"
                                 f"{sorted(losses) if isinstance(losses, dict) else ''}")
            value = float(total.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{spec.name}: non-finite loss {value} at epoch {epoch}, step {step}; "
                                         "lower the learning rate or check the input features for NaN/Inf")
            total.backward()
            if spec.grad_clip is not None:
                nn.utils.clip_grad_norm_(net.parameters(), spec.grad_clip)
            optimizer.step()
            n = _batch_len(batch) or 1
            for key, val in losses.items():
                sums[key] = sums.get(key, 0.0) + float(val.detach()) * n
            count += n
            videos += _batch_len(batch)
            steps_this_epoch += 1
            step += 1
            if bar is not None:
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        rng_after_epoch = _rng_state(generator)
        metrics: dict[str, Any] = {"epoch": epoch, "step": step, "lr": lr, "steps": steps_this_epoch,
                                   "seconds": round(seconds, 4), "videos": videos,
                                   "videos_per_s": round(videos / seconds, 2) if seconds > 0 else None,
                                   "rank": rank, "world_size": world_size}
        metrics.update({f"loss_{k}": v / max(count, 1) for k, v in sums.items()})
        last = epoch == spec.epochs - 1
        if eval_fn is not None and rank == 0 and (last or (eval_every and (epoch + 1) % eval_every == 0)):
            net.eval()
            with torch.no_grad():
                result = eval_fn(base, epoch)
            metrics.update({f"eval_{k}": v for k, v in (result or {}).items()})
            _set_rng_state(rng_after_epoch, generator)  # evaluation must not shift the training streams
        history.append(metrics)
        if rank == 0:
            logger.info("%s epoch %d/%d: %s", spec.name, epoch + 1, spec.epochs,
                        " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith(("loss_", "eval_"))
                                 and isinstance(v, (int, float))))
        write_ckpt = ckpt_url is not None and rank == 0 and (last or (epoch + 1) % spec.ckpt_every == 0)
        with tempfile.TemporaryDirectory(prefix="vhindex-ckpt-") if (write_ckpt and report) \
                else contextlib.nullcontext() as tmp:
            if write_ckpt:
                payload = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "epoch": epoch,
                           "step": step, "model": base.state_dict(), "optimizer": optimizer.state_dict(),
                           "rng": rng_after_epoch, "metrics": history, "spec": dataclasses.asdict(spec)}
                last_ckpt = _write_checkpoint(ckpt_url, storage_options, payload, spec.keep_checkpoints, tmp)
            if rank == 0 and metrics_url is not None:
                _write_metrics(metrics_url, storage_options, history)
            if report is not None:
                report(dict(metrics), tmp)
        if rank == 0 and progress:
            losses_txt = " ".join(f"{k[5:]}={v:.4f}" for k, v in metrics.items() if k.startswith("loss_"))
            evals_txt = " ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                 if k.startswith("eval_") and isinstance(v, float))
            print(f"{spec.name} epoch {epoch + 1}/{spec.epochs}: {losses_txt} lr={lr:.2e} "
                  f"{metrics['videos_per_s'] or 0:.0f} videos/s {evals_txt}".rstrip(), flush=True)

    return TrainResult(metrics=history, start_epoch=start_epoch, epochs_run=max(spec.epochs - start_epoch, 0),
                       steps=step, resumed=resumed, checkpoint=last_ckpt, seconds=time.perf_counter() - t_start)


"""UTS teacher-student training (seed 003) on video frames: pixels in, a student CNN whose frame features
LSH turns into frame codes.

``model.name: uts`` with ``jobs/train_dkph.py`` / ``vhindex train`` (or the ``uts`` Ray Train stage). The frames
come from the videos of ``extract.listing``, decoded as the extraction job decodes them (``extract.num_frames``
uniformly sampled frames per video, ``extract.image_size`` centre crops), so that the trained student sees at
training time what it sees when it extracts features later. Stages under ``<run>/uts`` (each skipped when
complete, the student resumed from its checkpoint after a kill):

    frames/    frames.npy (N, S, S, 3) uint8, ids.json, _stage.json   decoded training frames; per-video decode
                                                                       failures counted and named in the marker
    teacher/   teacher.npz (weight, bias), targets.npy (N, D*)        the frozen teacher: EfficientNet-Lite0 + the
                                                                       PCA fc (eq. 1-3) fitted on these frames; its
                                                                       outputs on the plain frames, computed once
    student/   ckpt/, metrics.jsonl, _stage.json                       the shared loop (eq. 8 per batch)
    model/     weights.pt, model.json                                  the student as backbone ``uts_student``
    frame_model/                                                       LSH at ``model.bits`` fitted on the student's
                                                                       features of the training frames (M = 1)
    summary.json                                                       losses, failures, where everything is

Using it: extract with ``extract.backbone: uts_student``, ``extract.weights: <run>/uts/model/weights.pt`` (the
Ray Data extraction job), then ``vhindex index frames --frames <those features> --model <run>/uts/frame_model``
for the frame-level retrieval of :mod:`vhindex.index.frames` (Algorithm 1).

Choices where the paper leaves room (``vhindex.models.uts`` has the network's):

* ``D*`` (the PCA width) is 256 by default (the paper does not say); at most the training frames - 1.
* Online augmentation: a random-resized crop (area fraction U(``crop_scale``, 1), random position) and a
  rotation U(-``rotation``, ``rotation``) degrees, as one affine resampling with reflection padding (no black
  corners for the student to key on), then colour distortion: brightness, contrast and saturation factors each
  U(1 - ``colour``, 1 + ``colour``). All drawn from the loop's seeded generator, so a resumed run is exact.
* ``s`` and ``s*`` are two forward passes of the student (BN statistics per view, as two batches).
* The student starts from the teacher backbone's weights (ImageNet Lite0): its kept blocks are the teacher's.
* No validation split: the frames have no labels and the paper trains a fixed schedule; so does vhindex.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vhindex import fs as vfs
from vhindex.config import Config
from vhindex.models.uts import check_uts_params
from vhindex.train.common import _check_resumable, _hash, _loop_spec, _read_stage, _root, _so, _stage_done, _write_stage
from vhindex.train.loop import TrainResult, read_metrics, run_training

__all__ = ["UTSResult", "augment_frames", "check_uts_inputs", "prepare_uts", "run_uts_recipe",
           "train_uts", "uts_params"]

logger = logging.getLogger(__name__)

#: frames per student/teacher forward pass are ``train.batch_size``; a batch needs this many for eq. 6-7's ranks
_MIN_BATCH = 4


def uts_params(cfg: Config) -> dict[str, Any]:
    """``model.params`` over :data:`vhindex.models.uts.UTS_DEFAULTS` (checked: see
    :func:`vhindex.models.uts.check_uts_params`)."""
    return check_uts_params(cfg.model.params)


def check_uts_inputs(cfg: Config) -> None:
    """Every configuration problem of a UTS run, before anything is decoded or trained.

    Raises:
        ValueError: ``extract.listing`` unset, a backbone other than EfficientNet-Lite0 (the student is built from
            it), bad ``model.params``, ``model.bits`` not a positive multiple of 8, or a batch too small.
        FileNotFoundError: the listing does not exist.
    """
    from vhindex.pipelines.extract import read_listing

    if cfg.model.name != "uts":
        raise ValueError(f"model.name: {cfg.model.name!r} is not uts")
    if cfg.model.bits <= 0 or cfg.model.bits % 8:
        raise ValueError(f"model.bits: code length must be a positive multiple of 8, got {cfg.model.bits}")
    e = cfg.extract
    if not e.listing:
        raise ValueError("extract.listing: UTS trains on video frames; give the listing of its training videos")
    if e.backbone != "efficientnet_lite0":
        raise ValueError(f"extract.backbone: UTS's student is EfficientNet-Lite0 with a new last block; got "
                         f"{e.backbone!r} (set extract.backbone: efficientnet_lite0)")
    if cfg.train.batch_size < _MIN_BATCH:
        raise ValueError(f"train.batch_size: UTS needs at least {_MIN_BATCH} frames per batch, got {cfg.train.batch_size}")
    uts_params(cfg)
    read_listing(e.listing, storage_options=e.storage_options or None, extensions=e.extensions)


def _image_size(cfg: Config) -> int:
    return int(cfg.extract.image_size or 224)


def _save_npy(url: str, so: dict | None, array: np.ndarray) -> None:
    fs, path = vfs.url_to_fs(url, so)
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    vfs.write_bytes_atomic(fs, path, buf.getvalue())


def _load_npy(url: str, so: dict | None) -> np.ndarray:
    fs, path = vfs.url_to_fs(url, so)
    with fs.open(path, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def _decode_frames(cfg: Config, p: dict[str, Any]) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """The training frames of ``extract.listing``: ``(frames, video ids, failures)``; a video that does not
    decode is a failure row (named, with its error), not fatal unless too many fail."""
    from vhindex.features.video import VideoDecodeError, sample_frames
    from vhindex.pipelines.extract import read_listing

    e = cfg.extract
    so = e.storage_options or None
    inputs = read_listing(e.listing, storage_options=so, extensions=e.extensions)
    if p["max_videos"] is not None and p["max_videos"] < len(inputs):
        keep = np.sort(np.random.default_rng(cfg.run.seed).choice(len(inputs), int(p["max_videos"]), replace=False))
        inputs = [inputs[i] for i in keep]
    frames, ids, failures = [], [], []
    for item in inputs:
        try:
            sampled = sample_frames(item.uri, e.num_frames, size=_image_size(cfg), storage_options=so,
                                    min_frames=e.min_frames)
        except (VideoDecodeError, OSError, ValueError) as err:
            failures.append({"video_id": item.video_id, "uri": item.uri, "error": f"{type(err).__name__}: {err}"})
            logger.warning("uts: skipping %s (%s): %s", item.video_id, item.uri, err)
            continue
        frames.append(sampled.frames)
        ids.append(item.video_id)
    limit = e.pipeline.max_error_fraction
    if not frames or len(failures) > limit * len(inputs):
        raise RuntimeError(f"uts: {len(failures)} of {len(inputs)} training videos failed to decode (limit "
                           f"{limit:.2%} of extract.pipeline.max_error_fraction); first: {failures[:3]}")
    return np.concatenate(frames), ids, failures


def _teacher_backbone(cfg: Config) -> Any:
    from vhindex.features.backbones import build_backbone

    return build_backbone("efficientnet_lite0", weights=cfg.extract.weights,
                          storage_options=cfg.extract.storage_options or None)


@torch.no_grad()
def _backbone_features(backbone: Any, frames: np.ndarray, batch: int, device: torch.device) -> np.ndarray:
    backbone = backbone.to(device).eval()
    out = [backbone(backbone.preprocess(torch.from_numpy(frames[i:i + batch]).to(device))).float().cpu().numpy()
           for i in range(0, len(frames), batch)]
    return np.concatenate(out)


def prepare_uts(cfg: Config) -> dict[str, Any]:
    """The frames and teacher stages (each skipped when complete); returns their stage markers.

    Raises:
        RuntimeError: too many training videos fail to decode.
        ValueError: fewer training frames than ``out_dim + 1`` (the PCA needs them).
    """
    from vhindex.models.learned import resolve_device
    from vhindex.models.uts import pca_fc

    check_uts_inputs(cfg)
    p, so, root = uts_params(cfg), _so(cfg), f"{_root(cfg)}/uts"
    e = cfg.extract
    frames_in = {"listing": e.listing, "num_frames": e.num_frames, "image_size": _image_size(cfg),
                 "min_frames": e.min_frames, "max_videos": p["max_videos"], "seed": cfg.run.seed}
    marker = _stage_done(f"{root}/frames", so, frames_in)
    if marker is None:
        t0 = time.perf_counter()
        frames, ids, failures = _decode_frames(cfg, p)
        _save_npy(f"{root}/frames/frames.npy", so, frames)
        _write_stage(f"{root}/frames", so, frames_in, videos=len(ids), frames=len(frames), failures=failures,
                     ids=ids, seconds=round(time.perf_counter() - t0, 2))
        marker = _read_stage(f"{root}/frames", so)
        logger.info("uts: decoded %d frames of %d videos (%d failed)", len(frames), len(ids), len(failures))
    n_frames = int(marker["frames"])
    if p["out_dim"] > n_frames - 1:
        raise ValueError(f"model.params.out_dim={p['out_dim']}: the PCA needs more training frames than that "
                         f"(have {n_frames}); lower out_dim or add videos")
    teacher_in = {"frames": _hash(marker["inputs"]), "out_dim": p["out_dim"], "weights": e.weights}
    tmarker = _stage_done(f"{root}/teacher", so, teacher_in)
    if tmarker is None:
        t0 = time.perf_counter()
        frames = _load_npy(f"{root}/frames/frames.npy", so)
        feats = _backbone_features(_teacher_backbone(cfg), frames, int(p["teacher_batch"]),
                                   resolve_device(cfg.train.device))
        weight, bias = pca_fc(feats, int(p["out_dim"]))
        fs, path = vfs.url_to_fs(f"{root}/teacher/teacher.npz", so)
        buf = io.BytesIO()
        np.savez(buf, weight=weight, bias=bias)
        vfs.write_bytes_atomic(fs, path, buf.getvalue())
        _save_npy(f"{root}/teacher/targets.npy", so, (feats @ weight.T + bias).astype(np.float32))
        _write_stage(f"{root}/teacher", so, teacher_in, seconds=round(time.perf_counter() - t0, 2))
        tmarker = _read_stage(f"{root}/teacher", so)
    return {"frames": marker, "teacher": tmarker}


def augment_frames(frames: torch.Tensor, gen: torch.Generator, *, rotation: float, crop_scale: float,
                   colour: float) -> torch.Tensor:
    """UTS's online augmentation of ``(B, S, S, 3)`` uint8 frames -> ``(B, 3, S, S)`` float in ``[0, 1]``
    (random-resized crop + rotation as one affine resampling, then brightness / contrast / saturation).

    The random numbers come from ``gen`` (a CPU generator) whatever the frames' device, so a run is repeatable.
    """
    b = frames.shape[0]
    x = frames.permute(0, 3, 1, 2).float().div(255.0)
    r = torch.rand(b, 8, generator=gen).to(x.device)
    side = torch.sqrt(crop_scale + (1.0 - crop_scale) * r[:, 0])          # crop side (fraction of the frame)
    angle = torch.deg2rad((2 * r[:, 1] - 1) * rotation)
    tx, ty = (2 * r[:, 2] - 1) * (1 - side), (2 * r[:, 3] - 1) * (1 - side)  # crop centre, inside the frame
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    factor = (1 - colour + 2 * colour * r[:, 4:7]).view(b, 3, 1, 1, 1)
    x = x * factor[:, 0]                                                     # brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * factor[:, 1] + mean                                     # contrast
    grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * factor[:, 2] + grey                                     # saturation
    return x.clamp_(0.0, 1.0)


def _student(cfg: Config, p: dict[str, Any]) -> Any:
    from vhindex.features.backbones import UTSStudentBackbone

    return UTSStudentBackbone.from_lite0(_teacher_backbone(cfg), int(p["out_dim"]), int(p["width"]))


def _student_inputs(cfg: Config, p: dict[str, Any], prepared: dict[str, Any]) -> dict[str, Any]:
    t = cfg.train
    return {"stage": "uts", "params": {k: v for k, v in p.items() if k != "teacher_batch"},
            "teacher": _hash(prepared["teacher"]["inputs"]), "epochs": t.epochs, "seed": cfg.run.seed,
            "batch_size": t.batch_size, "lr": [t.lr, t.lr_decay, t.lr_decay_every, t.lr_min]}


def train_uts(cfg: Config, datasets: Any = None, *, progress: bool = True,
              **loop_kwargs: Any) -> tuple[Any, TrainResult | None]:
    """Train (or reuse) the UTS student through the shared loop; save it to ``<run>/uts/model``.

    Runs :func:`prepare_uts` first (skipped when done). Each step: a batch of training frames, their augmented
    view (:func:`augment_frames`, seeded by the loop's generator), the student on both, the teacher's
    precomputed outputs, :func:`vhindex.models.uts.uts_loss` (eq. 8). ``datasets`` is ignored (the Ray Train
    stage signature); the frames come from ``extract.listing``.

    Returns:
        ``(student backbone, TrainResult or None when the stage was already complete)``.
    """
    from vhindex.features.backbones import UTSStudentBackbone
    from vhindex.models.learned import resolve_device
    from vhindex.models.uts import uts_loss

    del datasets
    prepared = prepare_uts(cfg)
    p, so, root, t = uts_params(cfg), _so(cfg), f"{_root(cfg)}/uts", cfg.train
    stage = f"{root}/student"
    inputs = _student_inputs(cfg, p, prepared)
    device = resolve_device(t.device)
    if _stage_done(stage, so, inputs):
        return UTSStudentBackbone.load(f"{root}/model", so).to(device), None
    _check_resumable(stage, so, inputs)
    frames = _load_npy(f"{root}/frames/frames.npy", so)
    targets = torch.from_numpy(_load_npy(f"{root}/teacher/targets.npy", so))
    torch.manual_seed(cfg.run.seed)
    student = _student(cfg, p)
    n, batch = len(frames), min(t.batch_size, len(frames))
    alpha, beta, lambdas = float(p["alpha"]), float(p["beta"]), tuple(float(v) for v in p["lambdas"])

    def batches(epoch: int) -> list[np.ndarray]:
        order = np.random.default_rng([cfg.run.seed, epoch]).permutation(n)
        chunks = [order[i:i + batch] for i in range(0, n, batch)]
        return [c for c in chunks if len(c) >= _MIN_BATCH]  # eq. 6-7 rank a batch; a 1-3 frame tail cannot

    def step(net: torch.nn.Module, idx: np.ndarray, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(frames[idx]).to(device)
        aug = augment_frames(x, gen, rotation=float(p["rotation"]), crop_scale=float(p["crop_scale"]),
                             colour=float(p["colour"]))
        s = net(student.normalise(aug))
        s_plain = net(student.preprocess(x))
        return uts_loss(s, s_plain, targets[idx].to(device), alpha=alpha, beta=beta, lambdas=lambdas)

    result = run_training(_loop_spec(cfg, t.epochs, "uts"), module=student, step_fn=step, batches=batches,
                          ckpt_url=f"{stage}/ckpt", storage_options=so, metrics_url=stage, device=device,
                          progress=progress, **loop_kwargs)
    student.eval()
    if loop_kwargs.get("rank", 0) == 0:
        student.save(f"{root}/model", so, info={"image_size": _image_size(cfg), "num_frames": cfg.extract.num_frames,
                                                 "params": inputs["params"], "epochs": t.epochs})
        _write_stage(stage, so, inputs, version=student.weights_id)
    return student, result


@dataclasses.dataclass
class UTSResult:
    """What :func:`run_uts_recipe` produced (the fields ``vhindex train`` prints, as for the other recipes).

    Attributes:
        run_dir: the run folder.
        model: ``"uts"``.
        model_url: the student (backbone ``uts_student``: ``<run>/uts/model/weights.pt``).
        frame_model_url: LSH at ``model.bits`` over the student's features (a frame model, M = 1).
        eval_url: ``<run>/uts/summary.json`` (losses, decode failures, teacher-student agreement).
        stages: ``{stage: "ran" | "skipped"}``.
        seconds: wall time.
        summary: the contents of ``summary.json``.
    """

    run_dir: str
    model: str
    model_url: str
    frame_model_url: str
    eval_url: str
    stages: dict[str, str]
    seconds: float
    summary: dict[str, Any]

    @property
    def map_at_k(self) -> dict[int, float]:
        """Empty: UTS's training frames have no labels (its retrieval quality is the benchmark's frame rows)."""
        return {}


def run_uts_recipe(cfg: Config, *, progress: bool = True) -> UTSResult:
    """frames -> teacher -> student (the loop) -> LSH frame model -> ``summary.json``, each stage skipped when
    complete. What ``vhindex train`` runs for ``model.name: uts``."""
    from vhindex.models import build_model, load_model
    from vhindex.models.learned import resolve_device

    t0 = time.perf_counter()
    root, so = f"{_root(cfg)}/uts", _so(cfg)
    before = {s: _read_stage(f"{root}/{s}", so) for s in ("frames", "teacher", "student")}
    student, res = train_uts(cfg, progress=progress)
    after = {s: _read_stage(f"{root}/{s}", so) for s in ("frames", "teacher", "student")}
    stages = {s: "skipped" if before[s] is not None and before[s] == after[s] else "ran" for s in ("frames", "teacher")}
    stages["student"] = "skipped" if res is None else "ran"
    p = uts_params(cfg)
    frame_in = {"student": after["student"]["version"] if after["student"] else None, "bits": cfg.model.bits,
                "seed": cfg.run.seed}
    frame_url = f"{root}/frame_model"
    if _stage_done(f"{root}/frame_stage", so, frame_in) is None:
        device = resolve_device(cfg.train.device)
        feats = _backbone_features(student, _load_npy(f"{root}/frames/frames.npy", so), int(p["teacher_batch"]),
                                   device)
        lsh = build_model("lsh", cfg.model.bits)
        lsh.fit(lambda: iter([feats[:, None, :]]), seed=cfg.run.seed)
        lsh.save(frame_url, so)
        _write_stage(f"{root}/frame_stage", so, frame_in)
        stages["frame_model"] = "ran"
    else:
        stages["frame_model"] = "skipped"
    load_model(frame_url, so)  # it must load: what `vhindex index frames --model` will do
    history = read_metrics(f"{root}/student", so)
    summary = {"videos": after["frames"]["videos"], "frames": after["frames"]["frames"],
               "failures": after["frames"]["failures"], "student": f"{root}/model/weights.pt",
               "frame_model": frame_url, "last_epoch": history[-1] if history else None,
               "use": {"extract.backbone": "uts_student", "extract.weights": f"{root}/model/weights.pt",
                       "extract.image_size": _image_size(cfg)}}
    fs, path = vfs.url_to_fs(f"{root}/summary.json", so)
    vfs.write_json_atomic(fs, path, summary)
    return UTSResult(run_dir=_root(cfg), model="uts", model_url=f"{root}/model", frame_model_url=frame_url,
                     eval_url=f"{root}/summary.json", stages=stages, seconds=time.perf_counter() - t0,
                     summary=summary)


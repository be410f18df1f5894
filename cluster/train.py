"""Ray Train for the training recipes: the same loop, run by ``ray.train.torch.TorchTrainer`` workers.

The training math and the loop live in :mod:`vhindex.train` (pure, single process). This module
only runs a recipe *stage* (the teacher, the DKPH student, the BTH baseline) inside a
``TorchTrainer``: every worker calls the recipe's stage function -- e.g.
:func:`vhindex.train.recipes.train_student` -- which calls the one
:func:`vhindex.train.loop.run_training` loop with Ray's hooks:

* ``prepare_module = ray.train.torch.prepare_model`` (moves to the worker's device; DDP when
  ``world_size > 1``),
* ``rank`` / ``world_size`` from ``ray.train.get_context()`` (each rank keeps every
  ``world_size``-th batch of the same seeded stream),
* ``report``: once per epoch on every rank; rank 0 attaches the epoch's checkpoint
  (``ray.train.report(metrics, checkpoint=Checkpoint.from_directory(dir))``), the others report
  metrics only.

``ScalingConfig(num_workers=train.num_workers, use_gpu=train.use_gpu, resources_per_worker={"CPU": 1})``
and ``RunConfig(name=<stage>, storage_path=<run.output_dir>/ray)`` -- the run name is the stage
(``teacher``, ``dkph``, ``bth``) and the storage path lies inside the run folder, so a run folder
maps to stable Ray run names.

**Resume -- one source of truth.** The checkpoints that count are the loop's own fsspec
checkpoints, ``<run>/<stage>/ckpt/latest.json`` + ``epoch-*.pt`` (checksummed, written by rank 0,
identical for in-process and Ray runs). Every worker's loop resumes from them, so re-running the
same config -- same run folder, hence the same ``RunConfig(name, storage_path)`` -- continues at
the epoch after the last checkpoint, whether the previous attempt was killed, failed or ran
in-process. The copy reported to Ray (``<run>/ray/<stage>/checkpoint_*``, only the newest one is
kept) is for Ray's bookkeeping (``Result.checkpoint``, dashboard); ``ray.train.get_checkpoint()`` is
*not* read. Worker failures inside one ``fit`` are retried ``max_failures`` times
(``FailureConfig``), each retry resuming from the fsspec checkpoint the same way.

Storage: ``run.output_dir`` must be reachable from every worker -- a local absolute path on a
single machine, an object store (``s3://...``) or a shared file system on a cluster;
``memory://`` is refused. Relative local paths are made absolute on the driver.

Ray is imported lazily (inside functions), so importing this module needs no Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from cluster.runtime import connect_ray, free_ports  # noqa: F401  (re-exported: older imports use cluster.train)

__all__ = [
    "RAY_STAGES",
    "RayStageResult",
    "absolutize_paths",
    "connect_ray",
    "fit_on_ray",
    "ray_storage",
    "resolve_backend",
    "run_recipe_on_ray",
    "run_training_job",
    "train_with_ray",
]

logger = logging.getLogger(__name__)

#: Stage name -> name of the stage function in :mod:`vhindex.train.recipes` (called in the workers).
RAY_STAGES = {"teacher": "recipes:train_teacher", "dkph": "recipes:train_student", "bth": "recipes:train_bth",
              "mcmsh": "recipes:train_mcmsh", "nph": "recipes:train_nph",
              "conmh": "contrastive:train_contrastive_student", "gcmh": "contrastive:train_contrastive_student",
              "dvhcm": "supervised:train_dvhcm", "uts": "uts:train_uts"}


@dataclasses.dataclass
class RayStageResult:
    """What :func:`train_with_ray` did.

    Attributes:
        stage: the stage (``teacher``, ``dkph``, ``bth``).
        run_name: the Ray Train run name (``RunConfig.name``).
        storage_path: ``RunConfig.storage_path`` (path on ``storage_filesystem`` for URLs).
        ckpt_url: the loop's checkpoint folder (the resume source of truth).
        start_epoch: first epoch trained by this fit (0-based; ``> 0`` after a resume).
        last_epoch: last finished epoch after the fit (-1: none).
        epochs_run: epochs trained by this fit.
        ray_checkpoint: path of the newest checkpoint Ray recorded, or None.
        metrics: the stage's metrics history (``metrics.jsonl``), one dict per epoch.
        seconds: wall time of the fit.
    """

    stage: str
    run_name: str
    storage_path: str
    ckpt_url: str
    start_epoch: int
    last_epoch: int
    epochs_run: int
    ray_checkpoint: str | None
    metrics: list[dict[str, Any]]
    seconds: float


# ------------------------------------------------------------------------------ config helpers


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def absolutize_paths(cfg: Any) -> Any:
    """A copy of ``cfg`` whose local relative paths (run folder, data URLs) are absolute.

    Ray workers (and ``ray job submit`` drivers, whose working directory is a temporary copy of
    the repo) do not share the submitting shell's working directory.
    """
    from vhindex.config import config_from_dict

    data = cfg.model_dump(mode="json")
    changed = False
    for section, key in (("run", "output_dir"), ("data", "train"), ("data", "query"), ("data", "database"),
                         ("extract", "listing"), ("extract", "weights")):
        value = data[section][key]
        if isinstance(value, str) and value and not _is_url(value):
            local = value[len("file://"):] if value.startswith("file://") else value
            absolute = os.path.abspath(os.path.expanduser(local))
            if absolute != value:
                data[section][key] = absolute
                changed = True
    return config_from_dict(data, "absolutized config") if changed else cfg


def ray_storage(cfg: Any) -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for ``RunConfig``: ``<run.output_dir>/ray``.

    A local path gives ``(absolute path, None)``; a URL gives the path on a
    ``pyarrow.fs.PyFileSystem`` wrapping the fsspec file system (so ``run.storage_options`` --
    endpoint, credentials -- apply to Ray's checkpoint uploads too).

    Raises:
        ValueError: for ``memory://`` (not visible to other processes).
    """
    out = cfg.run.output_dir.rstrip("/")
    if out.startswith("memory://"):
        raise ValueError(f"run.output_dir={out!r}: Ray Train workers run in other processes and cannot see an "
                         "in-memory file system; use a local path, a shared file system or an object store")
    if not _is_url(out):
        local = out[len("file://"):] if out.startswith("file://") else out
        return os.path.join(os.path.abspath(local), "ray"), None
    import pyarrow.fs as pafs

    from vhindex import fs as vfs

    fs, root = vfs.url_to_fs(out, cfg.run.storage_options or None)
    return f"{root.rstrip('/')}/ray", pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _stage_ckpt_url(cfg: Any, stage: str) -> str:
    root = cfg.run.output_dir.rstrip("/")
    if stage in ("conmh", "gcmh", "dvhcm", "uts"):  # contrastive / supervised / UTS: <run>/<model>/student
        return f"{root}/{stage}/student/ckpt"
    return {"teacher": f"{root}/teacher/ckpt", "dkph": f"{root}/student/ckpt",
            "bth": f"{root}/bth/student/ckpt", "mcmsh": f"{root}/mcmsh/student/ckpt",
            "nph": f"{root}/nph/student/ckpt"}[stage]


def _stage_metrics(cfg: Any, stage: str) -> list[dict[str, Any]]:
    from vhindex.train.loop import read_metrics

    return read_metrics(_stage_ckpt_url(cfg, stage).rsplit("/", 1)[0], cfg.run.storage_options or None)


def _last_epoch(cfg: Any, stage: str) -> int:
    from vhindex.train.loop import latest_checkpoint

    pointer = latest_checkpoint(_stage_ckpt_url(cfg, stage), cfg.run.storage_options or None)
    return -1 if pointer is None else int(pointer["epoch"])


# ------------------------------------------------------------------------------ Ray connection


def resolve_backend(cfg: Any) -> str:
    """``"ray"`` or ``"local"`` for ``cfg.train.backend`` (``auto``: see :class:`vhindex.config.TrainSection`).

    Raises:
        ImportError: when ``train.backend`` is ``ray`` and Ray is not installed.
    """
    import importlib.util

    backend = getattr(cfg.train, "backend", "auto")
    have_ray = importlib.util.find_spec("ray") is not None
    if backend == "ray":
        if not have_ray:
            from cluster import require

            require("ray", "ray")
        return "ray"
    if backend == "local":
        return "local"
    if not have_ray:
        return "local"
    import sys

    attached = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    return "ray" if attached or os.environ.get("RAY_ADDRESS") or cfg.train.num_workers > 1 else "local"


# ------------------------------------------------------------------------------ the worker side


def _worker_hooks(stage: str) -> dict[str, Any]:
    """The loop hooks of this Ray Train worker (``prepare_module``, ``report``, ``rank``, ``world_size``)."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()

    def report(metrics: dict[str, Any], ckpt_dir: str | None) -> None:
        clean = {k: v for k, v in metrics.items() if v is not None}
        name = f"{stage}-epoch-{int(metrics.get('epoch', 0)):05d}"
        if rank == 0 and ckpt_dir is not None:
            ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir),
                             checkpoint_dir_name=name, delete_local_checkpoint_after_upload=False)
        else:
            ray.train.report(clean, checkpoint_dir_name=name)

    return {"prepare_module": ray.train.torch.prepare_model, "report": report, "rank": rank,
            "world_size": world_size}


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer: rebuild the config, call the stage function."""
    import ray.train.torch

    from vhindex.config import config_from_dict

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data = dict(loop_config["config"])
    train = dict(data["train"])
    train["device"] = str(ray.train.torch.get_device()) if train.get("use_gpu") else "cpu"
    data["train"] = train
    cfg = config_from_dict(data, f"Ray Train worker config ({loop_config['stage']})")
    stage_fn: Callable[..., Any] = loop_config["stage_fn"]
    stage_fn(cfg, progress=loop_config["progress"], **_worker_hooks(loop_config["stage"]))


# ------------------------------------------------------------------------------ the driver side


def train_with_ray(
    cfg: Any,
    *,
    stage_fn: Callable[..., Any],
    stage: str,
    run_name: str | None = None,
    max_failures: int = 0,
    progress: bool = True,
) -> RayStageResult:
    """Run one training stage in a ``TorchTrainer`` on the connected Ray cluster.

    Each worker calls ``stage_fn(cfg, progress=..., prepare_module=..., report=..., rank=...,
    world_size=...)`` -- a recipe stage function that forwards those keyword arguments to
    :func:`vhindex.train.loop.run_training` (see the module docstring for the hooks and the resume
    semantics).

    Args:
        cfg: the configuration (:class:`vhindex.config.Config`); relative local paths are made
            absolute here.
        stage_fn: a module-level (picklable) function, e.g.
            :func:`vhindex.train.recipes.train_student`.
        stage: ``teacher``, ``dkph`` or ``bth`` (checkpoint folder and default run name).
        run_name: ``RunConfig.name`` (default: ``stage``); keep it stable to resume.
        max_failures: worker-group restarts within this fit (``FailureConfig.max_failures``).
        progress: the loop's per-epoch lines / tqdm bar on rank 0 (in the worker logs).

    Returns:
        A :class:`RayStageResult`.

    Raises:
        ValueError: unknown ``stage`` or unusable ``run.output_dir`` (``memory://``).
        RuntimeError: when Ray is not initialized, or the training failed (with Ray's error).

    The driver needs no CPU: ``ray job submit`` gives the entrypoint ``--entrypoint-num-cpus 0``
    by default, and each worker takes exactly one (leave headroom: on a 2-CPU head use 1 worker).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if stage not in RAY_STAGES:
        raise ValueError(f"unknown training stage {stage!r}; choose from {sorted(RAY_STAGES)}")
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialized; call cluster.runtime.connect_ray() first")
    cfg = absolutize_paths(cfg)
    t = cfg.train
    storage_path, storage_fs = ray_storage(cfg)
    name = run_name or stage
    before = _last_epoch(cfg, stage)
    cpus = ray.cluster_resources().get("CPU", 0)
    if t.num_workers > cpus:  # not an error: an autoscaling cluster may still grow
        logger.warning("train.num_workers=%d workers x 1 CPU exceed the Ray cluster's %g CPUs right now; the "
                       "trainer waits until they fit (lower train.num_workers if the cluster cannot grow)",
                       t.num_workers, cpus)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"config": cfg.model_dump(mode="json"), "stage": stage, "stage_fn": stage_fn,
                           "progress": progress},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    logger.info("Ray Train stage %s: %d worker(s) (gpu=%s), run %r at %s, resuming after epoch %d",
                stage, t.num_workers, t.use_gpu, name, storage_path, before)
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except Exception as err:  # ray.train.TrainingFailedError and friends
        raise RuntimeError(f"Ray Train stage {stage!r} (run {name!r} at {storage_path}) failed: {err}") from err
    after = _last_epoch(cfg, stage)
    ckpt = getattr(result, "checkpoint", None)
    return RayStageResult(stage=stage, run_name=name, storage_path=storage_path,
                          ckpt_url=_stage_ckpt_url(cfg, stage), start_epoch=before + 1, last_epoch=after,
                          epochs_run=max(after - before, 0), ray_checkpoint=getattr(ckpt, "path", None),
                          metrics=_stage_metrics(cfg, stage), seconds=time.perf_counter() - t0)


def fit_on_ray(cfg: Any, stage: str, **kwargs: Any) -> RayStageResult:
    """:func:`train_with_ray` with the recipe's stage function (:data:`RAY_STAGES`)."""
    import importlib

    if stage not in RAY_STAGES:
        raise ValueError(f"unknown training stage {stage!r}; choose from {sorted(RAY_STAGES)}")
    module, func = RAY_STAGES[stage].split(":")
    stage_fn = getattr(importlib.import_module(f"vhindex.train.{module}"), func)
    return train_with_ray(cfg, stage_fn=stage_fn, stage=stage, **kwargs)


def _fit_if_needed(cfg: Any, stage: str, **kwargs: Any) -> RayStageResult | None:
    """:func:`fit_on_ray` unless the stage's checkpoint already holds its last epoch.

    What is left of such a stage (saving the model and its marker from the checkpoint) is cheap
    and runs on the driver, which saves starting a worker group.
    """
    epochs = cfg.train.teacher_epochs if stage == "teacher" else cfg.train.epochs
    last = _last_epoch(cfg, stage)
    if last >= epochs - 1:
        logger.info("stage %s: the checkpoint holds epoch %d of %d, nothing to train on Ray", stage, last + 1, epochs)
        return None
    return fit_on_ray(cfg, stage, **kwargs)


def run_recipe_on_ray(cfg: Any, *, model: str | None = None, progress: bool = True, out: Any = None,
                      max_failures: int = 0, graph_executor: Any = None) -> Any:
    """The DKPH / BTH recipe with both training stages on Ray Train; the light stages on the driver.

    teacher (Ray) -> teacher embeddings -> anchor graph -> student (Ray) -> codes -> mAP report.
    The data checks (and synthetic data) run first, on the driver, so configuration problems are
    reported before any worker starts. The recipe's own stage markers make the driver-side calls
    skip what the workers already finished; the final :func:`vhindex.train.recipes.run_recipe`
    call only encodes and evaluates.

    Args:
        cfg: the configuration.
        model: ``dkph`` or ``bth`` (default ``model.name``).
        progress: per-epoch lines in the worker logs.
        out: text stream for synthetic-data messages.
        max_failures: worker-group restarts per stage.
        graph_executor: where the graph stage's maps run (see
            :func:`vhindex.train.recipes.build_teacher_graph`).

    Returns:
        The :class:`vhindex.train.recipes.RecipeResult`; ``stages`` says ``"ray"`` for a training
        stage that trained epochs on Ray (``"skipped"`` when it was already complete).

    Raises:
        ValueError / FileNotFoundError: configuration or data problems (before any training).
        RuntimeError: a Ray Train stage failed.
    """
    from vhindex.train import recipes

    kind = model or cfg.model.name
    if kind == "uts":  # frames and teacher on the driver, the student on Ray Train, the LSH frame model here
        from vhindex.train.uts import prepare_uts

        cfg = absolutize_paths(cfg)
        ray_storage(cfg)
        t0 = time.perf_counter()
        prepare_uts(cfg)
        done = _fit_if_needed(cfg, "uts", progress=progress, max_failures=max_failures)
        result = recipes.run_recipe(cfg, model="uts", progress=progress, out=out)
        if done is not None and done.epochs_run:
            result.stages = {**result.stages, "student": "ray"}
        result.seconds = time.perf_counter() - t0
        return result
    if kind not in recipes.STUDENTS:
        raise ValueError(f"model.name: unknown student {kind!r}; choose one of {list(recipes.STUDENTS)}")
    cfg = absolutize_paths(cfg)
    ray_storage(cfg)  # refuse memory:// before anything runs
    t0 = time.perf_counter()
    datasets = recipes.check_datasets(cfg, out)
    if kind not in recipes.TEACHER_STUDENTS:  # ConMH / GCMH / DVHCM: one training stage on Ray, the rest here
        from vhindex.train import contrastive

        if kind == "gcmh" and contrastive.uses_feature_graph(recipes.student_params(cfg)):
            contrastive.build_neighbour_graph(cfg, datasets["train"], executor=graph_executor)
        done = _fit_if_needed(cfg, kind, progress=progress, max_failures=max_failures)
        result = recipes.run_recipe(cfg, model=kind, graph_executor=graph_executor, progress=progress, out=out)
        if done is not None and done.epochs_run:
            result.stages = {**result.stages, "student": "ray"}
        result.seconds = time.perf_counter() - t0
        return result
    ran: dict[str, RayStageResult | None] = {}
    ran["teacher"] = _fit_if_needed(cfg, "teacher", progress=progress, max_failures=max_failures)
    teacher, res = recipes.train_teacher(cfg, datasets, progress=progress)  # loads the model the workers saved
    if res is not None and res.epochs_run:
        logger.warning("the teacher stage marker was missing after the Ray run; trained %d epoch(s) in-process",
                       res.epochs_run)
    embeddings = recipes.write_teacher_embeddings(cfg, teacher, datasets["train"])
    recipes.build_teacher_graph(cfg, embeddings, executor=graph_executor)
    ran[kind] = _fit_if_needed(cfg, kind, progress=progress, max_failures=max_failures)
    result = recipes.run_recipe(cfg, model=kind, graph_executor=graph_executor, progress=progress, out=out)
    stages = dict(result.stages)
    for name, key in (("teacher", "teacher"), (kind, "student")):
        done = ran[name]
        stages[key] = "ray" if done is not None and done.epochs_run else stages.get(key, "skipped")
    result.stages = stages
    result.seconds = time.perf_counter() - t0
    return result


def run_training_job(cfg: Any, *, progress: bool = True, out: Any = None, graph_executor: Any = None) -> Any:
    """What ``vhindex train`` / ``jobs/train_dkph.py`` run: the recipe on Ray (``train.backend``) or in-process.

    Args:
        cfg: the configuration.
        progress: per-epoch progress lines.
        out: text stream for synthetic-data messages.
        graph_executor: where the graph stage's maps run (the app layer picks it from ``graph``).

    Returns:
        The :class:`vhindex.train.recipes.RecipeResult`.
    """
    from vhindex.train import recipes

    if resolve_backend(cfg) == "local":
        logger.info("training in-process (train.backend=%s)", getattr(cfg.train, "backend", "auto"))
        return recipes.run_recipe(absolutize_paths(cfg), graph_executor=graph_executor, progress=progress, out=out)
    import ray

    started = connect_ray()
    try:
        return run_recipe_on_ray(cfg, progress=progress, out=out, graph_executor=graph_executor,
                                 max_failures=cfg.train.max_failures)
    finally:
        if started:
            ray.shutdown()

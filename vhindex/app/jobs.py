"""What ``jobs/*.py`` run (the entrypoints of ``ray job submit`` and ``python jobs/<name>.py``).

Each ``*_main(argv)`` parses ``--config FILE`` plus dotted overrides, runs, prints a ``RESULT`` /
``REPORT`` line and returns the process exit code: 0 success; 1 a failure while running; 2 a
configuration or data-check error (the message names the config key), before any work.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, TextIO

from vhindex.config import Config, ConfigError, load_job_config

__all__ = ["build_graph_main", "build_index_main", "demo_main", "pipeline_job_main", "run_training",
           "train_main", "bench_quality_main"]

log = logging.getLogger("vhindex.app.jobs")


def pipeline_job_main(kind: str, argv: list[str] | None, *, description: str, default_config: str) -> int:
    """``jobs/extract_features.py`` / ``jobs/encode.py``: config -> run -> ``REPORT`` line -> exit code.

    Exit codes: 0 complete and within the error threshold; 1 failed shards or too many per-video
    errors; 2 configuration error (missing or conflicting URLs, a folder holding another job's output).
    """
    from vhindex.app.engines import run_from_config

    cfg = load_job_config(argv, default_config=default_config, description=description, job=kind)
    try:
        report = run_from_config(kind, cfg, stream=sys.stdout)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print("REPORT " + json.dumps(report.to_dict(), sort_keys=True), flush=True)
    return report.exit_code


def _check_synthetic_fallback(cfg: Config) -> None:
    """Refuse all-null ``data.*`` when the ``synth`` preset cannot fit the model (a paper config without data).

    With ``data.train`` / ``query`` / ``database`` all null the recipe synthesizes the ``synth``
    preset; for the paper configs (M x D = 25 x 4096 or 30 x 2048) that is never what was meant,
    so say which keys are missing instead of writing a synthetic dataset first.
    """
    if any(getattr(cfg.data, s) is not None for s in ("train", "query", "database")):
        return
    from vhindex.data.synth import synth_spec_from_config
    from vhindex.train.recipes import student_params

    spec = synth_spec_from_config(cfg)
    p = student_params(cfg)
    if (spec.num_frames, spec.feature_dim) != (p["num_frames"], p["feature_dim"]):
        raise ValueError(
            f"data.train, data.query, data.database: required for model.params.num_frames={p['num_frames']} x "
            f"model.params.feature_dim={p['feature_dim']} -- with the three URLs null the synthetic preset "
            f"synth.preset={cfg.synth.preset!r} ({spec.num_frames} x {spec.feature_dim}) would be used; set the "
            "dataset URLs (vhindex import-h5 writes them from the released files), or for synthetic data set "
            f"model.params.num_frames={spec.num_frames} model.params.feature_dim={spec.feature_dim}")


def run_training(cfg: Config, *, progress: bool = True, out: TextIO = sys.stdout) -> int:
    """``vhindex train`` / ``jobs/train_dkph.py``: validate (config keys, then the datasets against the
    model, before any training) -> the recipe on Ray Train or in-process (``train.backend``) -> exit code.

    Under ``ray job submit`` the working directory is a temporary copy of the repo: relative
    ``run.output_dir`` / data paths are made absolute there (with a warning). Re-running the same
    command resumes: finished stages are skipped, a killed training stage continues after its last
    checkpoint.
    """
    from cluster.train import absolutize_paths, resolve_backend
    from vhindex.app.engines import graph_executor

    relative_out = "://" not in cfg.run.output_dir and not os.path.isabs(cfg.run.output_dir)
    cfg = absolutize_paths(cfg)
    logging.getLogger().setLevel(cfg.run.log_level)
    if relative_out and os.environ.get("RAY_JOB_ID"):
        log.warning("run.output_dir is relative: under `ray job submit` it resolves to %s, inside the job's "
                    "temporary working directory; pass an absolute path or a URL", cfg.run.output_dir)
    try:
        backend = resolve_backend(cfg)
    except ImportError as err:
        print(f"config error: train.backend: {err}", file=sys.stderr)
        return 2
    log.info("resolved config (backend=%s):\n%s", backend, cfg.to_yaml())

    from vhindex.train.recipes import check_datasets

    try:
        if cfg.model.name == "uts":  # trains on the frames of extract.listing
            from vhindex.train.uts import check_uts_inputs

            check_uts_inputs(cfg)
        else:
            _check_synthetic_fallback(cfg)
            check_datasets(cfg, out)  # every data / shape problem, before any training
        if backend == "ray":
            from cluster.train import ray_storage

            ray_storage(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    from cluster.train import run_training_job

    try:
        result = run_training_job(cfg, progress=progress, out=out, graph_executor=graph_executor(cfg.graph))
    except KeyboardInterrupt:
        log.error("interrupted; re-run the same command to resume from the last checkpoint")
        return 1
    except Exception as err:  # noqa: BLE001 -- any training failure is exit code 1, with its message
        log.exception("training failed: %s", err)
        return 1
    maps = " ".join(f"mAP@{k}={v:.4f}" for k, v in result.map_at_k.items())
    log.info("%s done in %.1fs: stages=%s model=%s eval=%s %s", result.model, result.seconds, result.stages,
             result.model_url, result.eval_url, maps)
    print(f"RESULT model={result.model_url} eval={result.eval_url} stages={result.stages} {maps}", flush=True)
    return 0


def train_main(argv: list[str] | None, *, description: str) -> int:
    """``jobs/train_dkph.py``: ``--config`` + overrides (+ ``--no-progress``) -> :func:`run_training`."""
    import argparse

    from vhindex.config import ConfigError, load_config

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default="configs/train/demo.yaml", help="YAML config file")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress lines")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return run_training(cfg, progress=not args.no_progress)


def build_graph_main(argv: list[str] | None, *, description: str) -> int:
    """``jobs/build_graph.py``: the anchor graph of ``graph`` (Dask, Dask-on-Ray or in-process)."""
    cfg = load_job_config(argv, default_config="configs/graph/demo.yaml", description=description, job="build_graph")
    try:
        manifest = build_graph_from_config(cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("graph build failed: %s", err)
        return 1
    log.info("anchor graph done: k=%d a=%d N=%d d=%d inertia=%.6g timings=%s", manifest.k, manifest.a,
             manifest.num_videos, manifest.d, manifest.inertia, manifest.timings)
    return 0


def build_graph_from_config(cfg: Config) -> Any:
    """:func:`vhindex.graph.stage.build_graph` on the executor ``cfg.graph`` asks for; the manifest."""
    from vhindex.app.engines import graph_executor
    from vhindex.graph.stage import build_graph, graph_urls

    embeddings, out = graph_urls(cfg)
    return build_graph(cfg.graph, graph_executor(cfg.graph), embeddings_url=embeddings, out_url=out,
                       seed=cfg.run.seed)


def build_index_main(argv: list[str] | None, *, description: str) -> int:
    """``jobs/build_index.py``: a sharded index (``index`` section) -> ``RESULT`` line with its manifest."""
    cfg = load_job_config(argv, default_config="configs/index/example.yaml", description=description,
                          job="build_index")
    ix = cfg.index
    missing = [f"index.{k}" for k in ("codes", "out") if getattr(ix, k) is None]
    if missing:
        print(f"config error: {', '.join(missing)}: required (fsspec URL)", file=sys.stderr)
        return 2
    from vhindex.index.sharded import IndexSpec, build_sharded_index

    try:
        manifest = build_sharded_index(ix.codes, ix.out, ix.num_shards, spec=IndexSpec(ix.type, dict(ix.params)),
                                       so=ix.storage_options or None, threads=ix.threads)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    info = manifest if isinstance(manifest, dict) else getattr(manifest, "__dict__", {"manifest": str(manifest)})
    from vhindex.app.masks import attach_model_masks
    from vhindex.index.sharded import ShardedIndex

    try:
        mask_url = attach_model_masks(ix, int(ShardedIndex.open(ix.out, ix.storage_options or None).info()["bits"]))
    except (ConfigError, ValueError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if mask_url:
        info = {**info, "mask_table": mask_url}
    print("RESULT " + json.dumps(info, default=str, sort_keys=True), flush=True)
    return 0


def demo_main(argv: list[str] | None, *, description: str) -> int:
    """``jobs/demo.py``: the demo pipeline."""
    from vhindex.app.demo import run_demo

    cfg = load_job_config(argv, default_config="configs/demo.yaml", description=description, job="demo")
    run_demo(cfg, out=sys.stdout)
    return 0


def bench_quality_main(argv: list[str] | None, *, description: str) -> int:
    """``jobs/bench_quality.py``: the real-data quality benchmarks (2: configuration error)."""
    from vhindex.app.engines import select_engine
    from vhindex.benchdata.quality import run_quality_bench

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_job_config(argv, default_config="configs/bench/quality.yaml", description=description,
                          job="bench_quality")
    try:
        run_quality_bench(cfg, command="python jobs/bench_quality.py " + " ".join(argv), engines=select_engine)
    except (ValueError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    return 0

"""Entry point: train DKPH (teacher -> graph -> student -> codes -> mAP): ``python jobs/train_dkph.py --config ...``.

Thin by design: parse ``--config`` + dotted overrides -> validate (config keys, then the datasets
against ``train.num_frames`` / ``train.feature_dim``, before any training) -> log the resolved
config -> run the recipe -> exit code.

Where it trains (``train.backend``): ``ray`` runs the teacher and student stages as Ray Train
``TorchTrainer`` runs (:mod:`cluster.train`) on the current Ray cluster -- the one of
``ray job submit`` (``$RAY_ADDRESS``) or else a local Ray; ``local`` trains in-process; ``auto``
(default) picks Ray when ``$RAY_ADDRESS`` is set or ``train.num_workers > 1``. Examples::

    python jobs/train_dkph.py --config configs/train/demo.yaml run.output_dir=$PWD/runs/dkph-demo
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_dkph.py --config configs/train/fcvid-64.yaml run.output_dir=s3://bucket/fcvid-64 \\
        data.train=s3://bucket/fcvid/train data.query=s3://bucket/fcvid/query data.database=s3://bucket/fcvid/database

Under ``ray job submit`` the working directory is a temporary copy of the repo: give
``run.output_dir`` (and data paths) as absolute paths or URLs. Re-running the same command resumes:
finished stages are skipped, a killed training stage continues after its last checkpoint.

Exit codes: 0 success, 1 training / runtime failure, 2 configuration or data-check error (the
message names the config key).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

log = logging.getLogger("jobs.train_dkph")


def _check_synthetic_fallback(cfg: Any) -> None:
    """Refuse all-null ``data.*`` when the ``synth`` preset cannot fit the model (a paper config without data).

    With ``data.train`` / ``query`` / ``database`` all null the recipe synthesizes the ``synth``
    preset; for the paper configs (M x D = 25 x 4096 or 30 x 2048) that is never what was meant,
    so say which keys are missing instead of writing a synthetic dataset first.
    """
    if any(getattr(cfg.data, s) is not None for s in ("train", "query", "database")):
        return
    from vhindex.demo import synth_spec_from_config

    spec = synth_spec_from_config(cfg)
    t = cfg.train
    if (spec.num_frames, spec.feature_dim) != (t.num_frames, t.feature_dim):
        raise ValueError(
            f"data.train, data.query, data.database: required for train.num_frames={t.num_frames} x "
            f"train.feature_dim={t.feature_dim} -- with the three URLs null the synthetic preset "
            f"synth.preset={cfg.synth.preset!r} ({spec.num_frames} x {spec.feature_dim}) would be used; set the "
            "dataset URLs (vhindex import-h5 writes them from the released files), or for synthetic data set "
            f"train.num_frames={spec.num_frames} train.feature_dim={spec.feature_dim}")


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns the process exit code (0 ok, 1 failure, 2 config error)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--config", default="configs/train/demo.yaml", help="YAML config file")
    parser.add_argument("--no-progress", action="store_true", help="no per-epoch progress lines")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vhindex.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from cluster.train import absolutize_paths, resolve_backend

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
        _check_synthetic_fallback(cfg)
        check_datasets(cfg, sys.stdout)  # every data / shape problem, before any training
        if backend == "ray":
            from cluster.train import ray_storage

            ray_storage(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    from cluster.train import run_training_job

    try:
        result = run_training_job(cfg, progress=not args.no_progress, out=sys.stdout)
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


if __name__ == "__main__":
    sys.exit(main())

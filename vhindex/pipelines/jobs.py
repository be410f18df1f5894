"""Config -> job -> engine -> report: the shared front of ``vhindex extract|encode`` and ``jobs/*.py``."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any, TextIO

from vhindex.pipelines.encode import EncodeJob
from vhindex.pipelines.extract import ExtractJob, ExtractorParams
from vhindex.pipelines.runner import Engine, JobReport, run_local, run_sharded_job

__all__ = ["encode_job_from_config", "extract_job", "extract_job_from_config", "job_main", "run_from_config", "select_engine"]


def select_engine(pipeline: Any) -> tuple[Engine, str]:
    """The engine of a :class:`vhindex.config.PipelineSection`: ``ray`` (actor pool), ``local`` or ``auto``.

    Raises:
        ImportError: ``engine: ray`` without Ray installed (the message names the extra to install).
    """
    name = pipeline.engine
    if name == "auto":
        name = "ray" if importlib.util.find_spec("ray") is not None else "local"
    if name == "local":
        return run_local, "local"
    if importlib.util.find_spec("ray") is None:
        raise ImportError("pipeline.engine=ray needs Ray: pip install -c constraints.txt 'vhindex[ray]' "
                          "(or set pipeline.engine=local)")
    from cluster.pipelines import ray_engine

    return ray_engine(pipeline), "ray"


def extract_job_from_config(cfg: Any) -> ExtractJob:
    """An :class:`ExtractJob` from ``cfg.extract`` (listing and out are required)."""
    return extract_job(cfg.extract)


def extract_job(e: Any, listing: str | None = None, out: str | None = None, *, key: str = "extract") -> ExtractJob:
    """An :class:`ExtractJob` from an :class:`vhindex.config.ExtractSection`.

    Args:
        e: the section (extractor settings, shard size, storage options).
        listing: overrides ``e.listing``.
        out: overrides ``e.out``.
        key: the section's config path, named in errors.
    """
    urls = {"listing": listing or e.listing, "out": out or e.out}
    missing = [k for k, v in urls.items() if v is None]
    if missing:
        raise ValueError(f"{key}.{missing[0]}: required (fsspec URL)" + (f"; also {key}.{missing[1]}" if len(missing) > 1 else ""))
    params = ExtractorParams(backbone=e.backbone, weights=e.weights, num_frames=e.num_frames, image_size=e.image_size,
                             dtype=e.dtype, batch_frames=e.batch_frames, decode_workers=e.decode_workers,
                             threads=e.threads, device=e.device, min_frames=e.min_frames)
    return ExtractJob(urls["listing"], urls["out"], params, videos_per_shard=e.videos_per_shard,
                      storage_options=e.storage_options, extensions=e.extensions)


def encode_job_from_config(cfg: Any) -> EncodeJob:
    """An :class:`EncodeJob` from ``cfg.encode`` (frames, model and out or out_root are required)."""
    e = cfg.encode
    for key in ("frames", "model"):
        if getattr(e, key) is None:
            raise ValueError(f"encode.{key}: required (fsspec URL)")
    if e.out is None and e.out_root is None:
        raise ValueError("encode.out_root: required (codes root; each model version gets its own folder), "
                         "or set encode.out")
    return EncodeJob(e.frames, e.model, e.out, out_root=e.out_root, storage_options=e.storage_options,
                     batch_size=e.batch_size, rows_per_shard=e.rows_per_shard, threads=e.threads, device=e.device)


def run_from_config(kind: str, cfg: Any, stream: TextIO | None = sys.stderr) -> JobReport:
    """Build the ``kind`` (``extract`` / ``encode``) job from ``cfg`` and run it on the configured engine."""
    section = getattr(cfg, kind)
    job = extract_job_from_config(cfg) if kind == "extract" else encode_job_from_config(cfg)
    engine, name = select_engine(section.pipeline)
    return run_sharded_job(job, engine, engine_name=name, max_error_fraction=section.pipeline.max_error_fraction,
                           progress_every_s=section.pipeline.progress_every_s, stream=stream)


def job_main(kind: str, argv: list[str] | None, *, description: str, default_config: str) -> int:
    """The whole of ``jobs/extract_features.py`` / ``jobs/encode.py``: config -> run -> ``REPORT`` line -> exit code.

    Exit codes: 0 complete and within the error threshold; 1 failed shards or too many per-video
    errors; 2 configuration error (missing or conflicting URLs, a folder holding another job's output).
    """
    import json

    from vhindex.config import load_job_config

    cfg = load_job_config(argv, default_config=default_config, description=description, job=kind)
    try:
        report = run_from_config(kind, cfg, stream=sys.stdout)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    print("REPORT " + json.dumps(report.to_dict(), sort_keys=True), flush=True)
    return report.exit_code

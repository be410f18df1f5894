"""Sharded jobs from configuration sections: the :class:`ExtractJob` / :class:`EncodeJob` a config asks for.

Pure (which engine runs them is the app layer's choice, :mod:`vhindex.app.engines`).
"""

from __future__ import annotations

from typing import Any

from vhindex.pipelines.encode import EncodeJob
from vhindex.pipelines.extract import ExtractJob, ExtractorParams

__all__ = ["encode_job_from_config", "extract_job", "extract_job_from_config"]


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
                             threads=e.threads, device=e.device, min_frames=e.min_frames,
                             runtime=e.runtime)
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

"""Sharded extraction: a listing of video URIs -> a frame-feature dataset (one shard per N videos).

Listings (:func:`read_listing`):

* a folder URL: every file below it whose extension is in ``extensions``; ids are the relative
  paths without extension (``cats/001.mp4`` -> ``cats/001``);
* ``.txt``: one URI per line (blank lines and ``#`` comments skipped);
* ``.csv`` (header ``uri[,video_id][,labels]``, labels separated by ``;``), ``.jsonl``
  (``{"uri", "video_id"?, "labels"?}``) or ``.parquet`` (columns ``uri``, ``video_id``?,
  ``labels``? as list<int>).

Relative URIs are resolved against the listing's folder. Without a ``video_id`` the id is the URI
relative to the deepest folder holding every input, without the extension. Duplicate URIs or ids
are refused before any work, naming both lines.

Each input video ends in exactly one row: a feature row in the dataset, or an error row in its
shard's ``_errors.jsonl`` (undecodable, truncated to fewer than ``min_frames`` frames, non-finite
features), counted by reason in the job report.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import os
import posixpath
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from vhindex import fs as vfs
from vhindex.data.schema import FrameDatasetMeta
from vhindex.data.writer import FrameDatasetWriter
from vhindex.pipelines.runner import ShardedJob, ShardProcessor
from vhindex.pipelines.shards import ItemError, ShardedOutput, ShardSpec, ShardStats, fingerprint_hash

__all__ = ["DEFAULT_EXTENSIONS", "ExtractJob", "ExtractShardProcessor", "ExtractorParams", "VideoInput", "read_listing"]

DEFAULT_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv")


@dataclasses.dataclass(frozen=True)
class VideoInput:
    """One input video: its id, its URI and optional class labels."""

    video_id: str
    uri: str
    labels: tuple[int, ...] | None = None


def _is_url(s: str) -> bool:
    return "://" in s


def _resolve_uri(uri: str, base_url: str) -> str:
    if _is_url(uri) or os.path.isabs(uri):
        return uri
    if _is_url(base_url):
        return posixpath.normpath(posixpath.join(base_url, uri)).replace(":/", "://", 1)
    return os.path.normpath(os.path.join(base_url, uri))


def _strip_ext(path: str) -> str:
    root, _ = posixpath.splitext(path)
    return root


def _derive_ids(uris: list[str]) -> list[str]:
    """Ids from URIs: relative to the deepest common folder, without extension."""
    paths = [u.split("://", 1)[-1].replace("\\", "/") for u in uris]
    common = posixpath.commonpath([posixpath.dirname(p) or "." for p in paths]) if paths else ""
    out = []
    for p in paths:
        rel = posixpath.relpath(p, common) if common not in ("", ".") else p
        out.append(_strip_ext(rel).lstrip("/"))
    return out


def _parse_labels(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        parts = [p for p in value.replace(",", ";").split(";") if p.strip()]
        value = parts
    try:
        labels = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: labels must be integers (';'-separated in CSV), got {value!r}") from None
    if any(v < 0 for v in labels):
        raise ValueError(f"{where}: labels must be >= 0, got {list(labels)}")
    return labels


def read_listing(url: str, *, storage_options: dict[str, Any] | None = None,
                 extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> list[VideoInput]:
    """Read the inputs of an extraction job (formats in the module docstring), in listing order.

    Raises:
        FileNotFoundError: the listing does not exist.
        ValueError: a malformed line (named with its line number), a duplicate URI or id, or no inputs.
    """
    fs, path = vfs.url_to_fs(url, storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"extract.listing: {url} does not exist")
    rows: list[tuple[str, str | None, tuple[int, ...] | None, str]] = []  # uri, id, labels, where
    if fs.isdir(path):
        exts = tuple(e.lower() for e in extensions)
        found = sorted(p for p in fs.find(path) if p.lower().endswith(exts))
        root = path.rstrip("/")
        for p in found:
            rel = p[len(root):].lstrip("/").replace("\\", "/")
            rows.append((vfs.unstrip(fs, p) if not vfs.is_local(fs) else p, _strip_ext(rel), None, f"{url}/{rel}"))
    else:
        base = url.rsplit("/", 1)[0] if _is_url(url) else os.path.dirname(os.path.abspath(path))
        name = path.lower()
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            with fs.open(path, "rb") as f:
                table = pq.read_table(f)
            if "uri" not in table.column_names:
                raise ValueError(f"{url}: a Parquet listing needs a 'uri' column, has {table.column_names}")
            cols = {c: table.column(c).to_pylist() for c in ("uri", "video_id", "labels") if c in table.column_names}
            for i in range(table.num_rows):
                rows.append((cols["uri"][i], cols.get("video_id", [None] * table.num_rows)[i],
                             _parse_labels(cols.get("labels", [None] * table.num_rows)[i], f"{url} row {i}"),
                             f"{url} row {i}"))
        else:
            with fs.open(path, "rb") as f:
                text = f.read().decode("utf-8")
            if name.endswith(".csv"):
                reader = csv.DictReader(io.StringIO(text))
                if not reader.fieldnames or "uri" not in reader.fieldnames:
                    raise ValueError(f"{url}: a CSV listing needs a header with a 'uri' column, got {reader.fieldnames}")
                for lineno, rec in enumerate(reader, start=2):
                    where = f"{url}:{lineno}"
                    rows.append((rec["uri"] or "", rec.get("video_id") or None, _parse_labels(rec.get("labels"), where),
                                 where))
            elif name.endswith(".jsonl") or name.endswith(".json"):
                for lineno, line in enumerate(text.splitlines(), start=1):
                    if not line.strip():
                        continue
                    where = f"{url}:{lineno}"
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{where}: not valid JSON ({err})") from None
                    if not isinstance(rec, dict) or not isinstance(rec.get("uri"), str):
                        raise ValueError(f"{where}: each line must be an object with a string 'uri', got {line[:80]!r}")
                    rows.append((rec["uri"], rec.get("video_id"), _parse_labels(rec.get("labels"), where), where))
            else:
                for lineno, line in enumerate(text.splitlines(), start=1):
                    s = line.strip()
                    if s and not s.startswith("#"):
                        rows.append((s, None, None, f"{url}:{lineno}"))
        rows = [(_resolve_uri(u, base) if u else u, v, lab, w) for u, v, lab, w in rows]
    if not rows:
        raise ValueError(f"extract.listing: {url} lists no videos" +
                         (f" (no files ending in {list(extensions)})" if fs.isdir(path) else ""))
    for uri, _vid, _lab, where in rows:
        if not uri:
            raise ValueError(f"{where}: empty uri")
    derived = _derive_ids([r[0] for r in rows])
    inputs: list[VideoInput] = []
    seen_uri: dict[str, str] = {}
    seen_id: dict[str, str] = {}
    for (uri, vid, labels, where), auto_id in zip(rows, derived, strict=True):
        vid = str(vid) if vid not in (None, "") else auto_id
        if uri in seen_uri:
            raise ValueError(f"{where}: duplicate uri {uri!r} (first at {seen_uri[uri]}); list every video once")
        if vid in seen_id:
            raise ValueError(f"{where}: duplicate video_id {vid!r} (first at {seen_id[vid]}); give unique ids "
                             "(a 'video_id' column) when file names repeat")
        seen_uri[uri], seen_id[vid] = where, where
        inputs.append(VideoInput(vid, uri, labels))
    return inputs


@dataclasses.dataclass(frozen=True)
class ExtractorParams:
    """Keyword arguments of :class:`vhindex.features.FrameFeatureExtractor` (what the features depend on
    plus how the work is run)."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None
    num_frames: int = 25
    image_size: int | None = None
    dtype: str = "float16"
    batch_frames: int = 256
    decode_workers: int = 2
    threads: int | None = None
    device: str = "auto"
    min_frames: int = 1
    runtime: str = "auto"

    def build(self, storage_options: dict[str, Any] | None, device: str | None = None) -> Any:
        """The extractor (``device`` overrides :attr:`device`)."""
        from vhindex.features import FrameFeatureExtractor

        return FrameFeatureExtractor(
            self.backbone, weights=self.weights, num_frames=self.num_frames, image_size=self.image_size,
            device=device or self.device, batch_frames=self.batch_frames, dtype=self.dtype,
            decode_workers=self.decode_workers, threads=self.threads, storage_options=storage_options,
            min_frames=self.min_frames, runtime=self.runtime)


class ExtractShardProcessor:
    """Loads the backbone once; turns a shard of videos into a frame-feature shard plus error rows."""

    #: videos decoded and featurised per call (bounds the decoded frames held in memory)
    CHUNK = 16

    def __init__(self, params: ExtractorParams, meta_json: str, with_labels: bool, out_url: str, *,
                 storage_options: dict[str, Any] | None, fingerprint: str) -> None:
        self.extractor = params.build(storage_options)
        self.meta = FrameDatasetMeta.from_dict(json.loads(meta_json))
        if self.extractor.feature_dim != self.meta.feature_dim:
            raise RuntimeError(f"backbone gives {self.extractor.feature_dim}-d features, the job expects "
                               f"{self.meta.feature_dim}")
        self.with_labels = with_labels
        self.output = ShardedOutput(out_url, storage_options)
        self.storage_options = storage_options
        self.fingerprint = fingerprint

    def process(self, spec: ShardSpec) -> ShardStats:
        """Decode + featurise the shard's videos; write features, error rows and the marker."""
        t0 = time.monotonic()
        items = [VideoInput(str(v), str(u), tuple(lab) if lab is not None else None) for v, u, lab in spec.items]
        shard_url = self.output.begin_shard(spec.name)
        errors: list[ItemError] = []
        ok = frames = 0
        with FrameDatasetWriter(shard_url, self.meta, with_labels=self.with_labels,
                                rows_per_file=max(len(items), 1), row_group_size=max(min(len(items), 256), 1),
                                storage_options=self.storage_options, overwrite=True) as writer:
            for start in range(0, len(items), self.CHUNK):
                chunk = items[start:start + self.CHUNK]
                results = self.extractor.extract([v.uri for v in chunk])
                good = [(v, r) for v, r in zip(chunk, results, strict=True) if r.ok]
                for v, r in zip(chunk, results, strict=True):
                    if not r.ok:
                        errors.append(ItemError(v.video_id, v.uri, r.error_reason or "error", r.error or ""))
                    frames += r.decoded_frames
                if good:
                    import numpy as np

                    feats = np.stack([r.features for _, r in good])
                    labels = [list(v.labels or ()) for v, _ in good] if self.with_labels else None
                    writer.write([v.video_id for v, _ in good], feats, labels)
                    ok += len(good)
        reasons: dict[str, int] = {}
        for e in errors:
            reasons[e.reason] = reasons.get(e.reason, 0) + 1
        seconds = time.monotonic() - t0
        stats = ShardStats(
            shard=spec.name, fingerprint=self.fingerprint, inputs=len(items), ok=ok, errors=len(errors),
            error_counts=reasons, seconds=seconds, finished_at=time.time(), worker=f"{socket.gethostname()}:{os.getpid()}",
            extra={"decoded_frames": frames, "sampled_frames": ok * self.meta.num_frames,
                   "frames_per_second": ok * self.meta.num_frames / max(seconds, 1e-9),
                   "videos_per_second": len(items) / max(seconds, 1e-9), "device": str(self.extractor.device),
                   "runtime": self.extractor.runtime})
        self.output.finish_shard(stats, errors)
        return stats


class ExtractJob(ShardedJob):
    """Extract frame features of the videos in ``listing`` into a frame-feature dataset at ``out_url``.

    Args:
        listing: listing URL (see :func:`read_listing`) or an already-read list of :class:`VideoInput`.
        out_url: output dataset folder.
        params: extractor parameters.
        videos_per_shard: videos per shard (the unit of resume and of work per actor call).
        storage_options: fsspec options (videos, listing, output).
        extensions: extensions taken from a folder listing.
    """

    kind = "extract"

    def __init__(self, listing: str | Sequence[VideoInput], out_url: str, params: ExtractorParams, *,
                 videos_per_shard: int = 256, storage_options: dict[str, Any] | None = None,
                 extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> None:
        if isinstance(videos_per_shard, bool) or not isinstance(videos_per_shard, int) or videos_per_shard <= 0:
            raise ValueError(f"videos_per_shard must be a positive int, got {videos_per_shard!r}")
        self.storage_options = dict(storage_options or {})
        if isinstance(listing, str):
            self.listing_url = listing
            self.inputs = read_listing(listing, storage_options=self.storage_options, extensions=extensions)
        else:
            self.listing_url = "<in-memory>"
            self.inputs = list(listing)
            if len({v.video_id for v in self.inputs}) != len(self.inputs):
                raise ValueError("duplicate video ids in the inputs")
        self.params = params
        self.videos_per_shard = videos_per_shard
        # feature size and weights identity (torch: no ONNX export in the driver just to describe)
        probe = dataclasses.replace(params, runtime="torch").build(self.storage_options, device="cpu")
        self._describe = probe.describe()
        self._feature_dim = int(probe.feature_dim)
        del probe
        self.with_labels = any(v.labels is not None for v in self.inputs)
        super().__init__(ShardedOutput(out_url, self.storage_options))

    def _meta(self) -> FrameDatasetMeta:
        # Labelled listings record C = largest label + 1, so the dataset evaluates without extra arguments.
        labels = [max(v.labels) for v in self.inputs if v.labels]
        return FrameDatasetMeta(num_frames=self.params.num_frames, feature_dim=self._feature_dim,
                                dtype=self.params.dtype,  # type: ignore[arg-type]
                                extractor=str(self._describe.get("backbone", self.params.backbone)),
                                extractor_version=json.dumps(self._describe, sort_keys=True),
                                num_classes=max(labels) + 1 if labels else None)

    def fingerprint(self) -> dict[str, Any]:
        """Inputs (hash of ids, URIs, labels), what the features depend on, and the shard size."""
        listing = json.dumps([[v.video_id, v.uri, list(v.labels) if v.labels else None] for v in self.inputs])
        return {"listing": self.listing_url, "inputs_sha256": vfs.sha256_hex(listing.encode()),
                "videos": len(self.inputs), "extractor": self._describe, "min_frames": self.params.min_frames,
                "videos_per_shard": self.videos_per_shard}

    def plan(self) -> list[ShardSpec]:
        """Consecutive runs of ``videos_per_shard`` inputs, in listing order."""
        n = self.videos_per_shard
        return [ShardSpec(index=i // n, items=tuple([v.video_id, v.uri, list(v.labels) if v.labels is not None
                                                     else None] for v in self.inputs[i:i + n]),
                          num_inputs=len(self.inputs[i:i + n]))
                for i in range(0, len(self.inputs), n)]

    def processor_factory(self) -> Callable[[], ShardProcessor]:
        """A picklable factory of :class:`ExtractShardProcessor` (the backbone loads in the worker)."""
        return functools.partial(ExtractShardProcessor, self.params, self._meta().to_json(), self.with_labels,
                                 self.output.url, storage_options=self.storage_options,
                                 fingerprint=fingerprint_hash(self.fingerprint()))

    def dataset_meta(self) -> dict[str, Any]:
        """Frame dataset metadata (M, D, dtype, extractor description)."""
        return json.loads(self._meta().to_json())

"""Sharded job outputs: deterministic shard folders, a completion marker per shard, resume, finalise.

Extraction (videos -> frame features) and encoding (frame features -> codes) are split into
*shards* -- a fixed, deterministic partition of the inputs planned by the driver. Every shard is
processed by exactly one worker at a time and written to its own folder, which is a complete vhindex
dataset on its own (part file + ``_manifest.json``)::

    <out>/
      _job.json                       what produced this folder (fingerprint); written first
      shards/shard-00000/part-00000.parquet
      shards/shard-00000/_manifest.json
      shards/shard-00000/_errors.jsonl  one JSON line per input that failed (video id, source, reason)
      shards/shard-00000/_stats.json    counts and timings -- the shard's completion marker, written LAST
      ...
      _job_stats.json                 totals, per-shard stats, error counts by reason
      _manifest.json                  the whole dataset (lists every shard's part files); written LAST

Why this gives *exactly once*: a shard's inputs are fixed by the plan, its folder name is fixed by
its index, and a retried shard (actor killed, job killed and re-run) first removes its marker and
then overwrites its folder. The driver reads a shard as done only when its marker exists and names
the same job fingerprint; the top-level manifest is written only when every shard is done, after
checking that ok + error rows equal the shard's inputs. Readers refuse a folder without
``_manifest.json``, so a half-finished job is never mistaken for a dataset.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vhindex import fs as vfs
from vhindex.data.schema import MANIFEST_NAME
from vhindex.data.writer import DatasetManifest, FileInfo

__all__ = [
    "ERRORS_NAME",
    "JOB_FILE",
    "SHARDS_DIR",
    "STATS_NAME",
    "SUMMARY_NAME",
    "ItemError",
    "ShardSpec",
    "ShardStats",
    "ShardedOutput",
    "fingerprint_hash",
]

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"
JOB_FILE = "_job.json"
STATS_NAME = "_stats.json"
ERRORS_NAME = "_errors.jsonl"
SUMMARY_NAME = "_job_stats.json"


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """A short stable hash of a job fingerprint (JSON with sorted keys)."""
    return vfs.sha256_hex(json.dumps(fingerprint, sort_keys=True, default=str).encode())[:16]


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One unit of work: a fixed slice of the job's inputs.

    Attributes:
        index: position in the plan; names the shard folder (``shard-00042``).
        items: JSON-able work items (extraction: ``[video_id, uri, labels]``; encoding: a read task).
        num_inputs: videos in the shard (what ok + error rows must add up to).
    """

    index: int
    items: tuple[Any, ...]
    num_inputs: int

    @property
    def name(self) -> str:
        """Folder name of the shard."""
        return f"shard-{self.index:05d}"

    def to_json(self) -> str:
        """Serialise (to ship the spec to a Ray actor as a plain string)."""
        return json.dumps({"index": self.index, "items": list(self.items), "num_inputs": self.num_inputs})

    @classmethod
    def from_json(cls, text: str) -> ShardSpec:
        """Inverse of :meth:`to_json`."""
        obj = json.loads(text)
        return cls(index=int(obj["index"]), items=tuple(obj["items"]), num_inputs=int(obj["num_inputs"]))


@dataclasses.dataclass
class ItemError:
    """An input that produced no output row (one line of ``_errors.jsonl``).

    Attributes:
        video_id: the video's id.
        source: where it came from (video URI, or the frame-dataset file and row).
        reason: short machine-readable tag (``open_failed``, ``no_frames``, ``non_finite`` ...).
        message: human-readable detail.
    """

    video_id: str
    source: str
    reason: str
    message: str


def ray_node_id() -> str:
    """The Ray node this process runs on, or "" outside a Ray worker (never imports Ray itself)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return ""
    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 -- only a label in the marker
        return ""


@dataclasses.dataclass
class ShardStats:
    """Counts and timings of one finished shard (contents of its ``_stats.json`` marker).

    Attributes:
        shard: shard folder name.
        fingerprint: hash of the job that wrote it (a marker of another job is not "done").
        inputs: videos planned for the shard.
        ok: output rows written.
        errors: error rows written (``ok + errors == inputs``).
        error_counts: errors by reason.
        seconds: wall time of the shard.
        finished_at: UNIX time the marker was written.
        worker: host:pid of the process that wrote it.
        node: the Ray node id of that process ("" outside Ray).
        extra: processor-specific figures (frames decoded, model version, ...).
    """

    shard: str
    fingerprint: str
    inputs: int
    ok: int
    errors: int
    error_counts: dict[str, int]
    seconds: float
    finished_at: float
    worker: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    node: str = dataclasses.field(default_factory=lambda: ray_node_id())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> ShardStats:
        """Inverse of :meth:`to_dict`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in fields})


class ShardedOutput:
    """The folder of a sharded job (layout in the module docstring).

    Args:
        url: output folder (fsspec URL).
        storage_options: fsspec options.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self.fs, self.root = vfs.url_to_fs(url, self.storage_options)

    # -- paths ----------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return vfs.join(self.fs, self.root, *parts)

    def shard_url(self, name: str) -> str:
        """Full URL of a shard's folder."""
        return vfs.unstrip(self.fs, self._path(SHARDS_DIR, name))

    def is_complete(self) -> bool:
        """True once the top-level ``_manifest.json`` exists (the job finished)."""
        self.refresh()
        return self.fs.exists(self._path(MANIFEST_NAME))

    def refresh(self) -> None:
        """Forget cached listings of the output folder. Other processes (the actors) write the shards: an
        object-store filesystem that listed the folder earlier in this process (s3fs caches listings, and
        fsspec shares one instance per set of options) would otherwise call their new files missing."""
        vfs.forget_listings(self.fs, self.root)

    # -- job start ------------------------------------------------------------------------------
    def start(self, kind: str, fingerprint: dict[str, Any]) -> bool:
        """Claim the folder for this job, or recognise it as this job's earlier (partial) output.

        Args:
            kind: job kind (``extract``, ``encode``), recorded in ``_job.json``.
            fingerprint: everything that determines the output (inputs, parameters).

        Returns:
            True when the folder already holds this job's complete output (nothing to do).

        Raises:
            FileExistsError: the folder holds another job's output, or unrelated files.
        """
        job_path = self._path(JOB_FILE)
        want = {"kind": kind, "fingerprint": fingerprint, "fingerprint_hash": fingerprint_hash(fingerprint)}
        if self.fs.exists(job_path):
            have = vfs.read_json(self.fs, job_path)
            if have.get("fingerprint_hash") != want["fingerprint_hash"] or have.get("kind") != kind:
                diff = sorted(k for k in set(fingerprint) | set(have.get("fingerprint", {}))
                              if fingerprint.get(k) != have.get("fingerprint", {}).get(k))
                raise FileExistsError(
                    f"{self.url} holds the output of a different {have.get('kind', '?')} job (differs in: "
                    f"{', '.join(diff) or 'kind'}); write to a new location -- outputs are never overwritten")
            return self.is_complete()
        try:
            entries = self.fs.ls(self.root, detail=False) if self.fs.isdir(self.root) else []
        except FileNotFoundError:
            entries = []
        if entries:
            raise FileExistsError(
                f"refusing to write into {self.url}: it is not empty ({len(entries)} entries) and was not started "
                "by a vhindex sharded job; choose a new location")
        self.fs.makedirs(self.root, exist_ok=True)
        vfs.write_json_atomic(self.fs, job_path, {**want, "started_at": time.time()})
        return False

    # -- per shard (workers) --------------------------------------------------------------------
    def begin_shard(self, name: str) -> str:
        """Invalidate a shard before (re)writing it: remove its marker first, then its error file.

        Returns:
            The shard folder URL (write the shard's dataset there with ``overwrite=True``).
        """
        for fname in (STATS_NAME, ERRORS_NAME):
            path = self._path(SHARDS_DIR, name, fname)
            if self.fs.exists(path):
                self.fs.rm(path)
        return self.shard_url(name)

    def finish_shard(self, stats: ShardStats, errors: Sequence[ItemError]) -> None:
        """Write the shard's error rows, then its ``_stats.json`` marker (last)."""
        if stats.ok + stats.errors != stats.inputs or stats.errors != len(errors):
            raise RuntimeError(
                f"{stats.shard}: {stats.ok} ok + {stats.errors} errors != {stats.inputs} inputs "
                f"(or {len(errors)} error rows); refusing to mark the shard done")
        lines = "".join(json.dumps(dataclasses.asdict(e), sort_keys=True) + "\n" for e in errors)
        vfs.write_bytes_atomic(self.fs, self._path(SHARDS_DIR, stats.shard, ERRORS_NAME), lines.encode())
        vfs.write_json_atomic(self.fs, self._path(SHARDS_DIR, stats.shard, STATS_NAME), stats.to_dict())

    # -- driver ---------------------------------------------------------------------------------
    def _read_stats(self, name: str) -> ShardStats | None:
        path = self._path(SHARDS_DIR, name, STATS_NAME)
        try:
            return ShardStats.from_dict(vfs.read_json(self.fs, path))
        except FileNotFoundError:
            return None

    def _map(self, fn: Any, names: Sequence[str]) -> list[Any]:
        # Object stores answer one small GET in tens of ms: read thousands of markers concurrently.
        if vfs.is_local(self.fs) or len(names) < 8:
            return [fn(n) for n in names]
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(fn, names))

    def completed(self, specs: Iterable[ShardSpec], fingerprint: dict[str, Any]) -> dict[str, ShardStats]:
        """The shards of ``specs`` already finished by this job (marker present, same fingerprint)."""
        want = fingerprint_hash(fingerprint)
        self.refresh()
        shards_root = self._path(SHARDS_DIR)
        try:
            # one listing instead of one existence check per shard
            present = {p.rstrip("/").replace("\\", "/").split("/")[-2] for p in self.fs.find(shards_root)
                       if p.endswith(STATS_NAME)}
        except FileNotFoundError:
            present = set()
        names = [s.name for s in specs if s.name in present]
        done = {}
        for name, stats in zip(names, self._map(self._read_stats, names), strict=True):
            if stats is not None and stats.fingerprint == want:
                done[name] = stats
        return done

    def finalize(self, specs: Sequence[ShardSpec], stats: dict[str, ShardStats], meta: dict[str, Any],
                 summary: dict[str, Any]) -> DatasetManifest:
        """Compose the dataset manifest from every shard's and write it (last), after the summary.

        Args:
            specs: the whole plan (every shard must be in ``stats``).
            stats: finished shards by name.
            meta: dataset metadata every shard's manifest must carry.
            summary: job totals written to ``_job_stats.json``.

        Raises:
            RuntimeError: a shard is missing, its counts disagree with its manifest, or its
                metadata differs from ``meta``.
        """
        missing = [s.name for s in specs if s.name not in stats]
        if missing:
            raise RuntimeError(f"{self.url}: {len(missing)} shards not finished (first: {missing[:5]})")
        self.refresh()

        def shard_manifest(name: str) -> DatasetManifest:
            path = self._path(SHARDS_DIR, name, MANIFEST_NAME)
            return DatasetManifest.from_dict(vfs.read_json(self.fs, path), source=vfs.unstrip(self.fs, path))

        files: list[FileInfo] = []
        for spec, man in zip(specs, self._map(shard_manifest, [s.name for s in specs]), strict=True):
            st = stats[spec.name]
            if man.num_rows != st.ok or st.ok + st.errors != spec.num_inputs:
                raise RuntimeError(
                    f"{self.shard_url(spec.name)}: manifest has {man.num_rows} rows, marker says {st.ok} ok + "
                    f"{st.errors} errors for {spec.num_inputs} inputs; delete the shard's {STATS_NAME} and re-run")
            if man.meta != meta:
                raise RuntimeError(f"{self.shard_url(spec.name)}: dataset metadata {man.meta} differs from the job's {meta}")
            prefix = f"{SHARDS_DIR}/{spec.name}/"
            files.extend(FileInfo(path=prefix + f.path, num_rows=f.num_rows, row_group_rows=list(f.row_group_rows))
                         for f in man.files)
        manifest = DatasetManifest(meta=meta, files=files, num_rows=sum(f.num_rows for f in files))
        vfs.write_json_atomic(self.fs, self._path(SUMMARY_NAME), summary)
        vfs.write_json_atomic(self.fs, self._path(MANIFEST_NAME), manifest.to_dict())
        return manifest

    def read_errors(self, specs: Sequence[ShardSpec] | None = None) -> list[ItemError]:
        """All error rows of the job (of ``specs``, or every shard present)."""
        self.refresh()
        if specs is None:
            try:
                names = sorted({p.replace("\\", "/").split("/")[-2] for p in self.fs.find(self._path(SHARDS_DIR))
                                if p.endswith(ERRORS_NAME)})
            except FileNotFoundError:
                names = []
        else:
            names = [s.name for s in specs]
        out: list[ItemError] = []
        for name in names:
            path = self._path(SHARDS_DIR, name, ERRORS_NAME)
            if not self.fs.exists(path):
                continue
            with self.fs.open(path, "rb") as f:
                out.extend(ItemError(**json.loads(line)) for line in f.read().decode().splitlines() if line.strip())
        return out

    def read_summary(self) -> dict[str, Any]:
        """The ``_job_stats.json`` of a finished job."""
        self.refresh()
        return vfs.read_json(self.fs, self._path(SUMMARY_NAME))

"""A living index: online adds and deletes over a built sharded index, through a write-ahead log.

The built index (:mod:`vhindex.index.sharded`) stays immutable; updates go to an **update log** at any
fsspec URL and every shard applies them on top of its base:

* **Durable before acknowledged.** :meth:`UpdateLog.append` writes one immutable object per batch
  (``<log>/<writer>/<seq>.json``; atomic: a local file is written under a temporary name and renamed, an
  object store ``put`` is all or nothing) and returns only after the write returned. A batch is therefore
  either entirely in the log or not at all; a writer that dies before the write returns leaves nothing.
* **One order, whoever writes.** Every update carries a stamp ``(time_ns, writer, seq)`` from a hybrid
  logical clock (never behind the writer's previous stamp). For each video id the update with the
  largest stamp wins (last writer wins), so applying a batch twice, or batches of different writers in
  any order, gives the same state: replicas that replay the log on start and replicas that received the
  batch directly agree.
* **Routing.** A video lives on the shard that a stable hash of its id picks (:func:`shard_of`), or, for
  videos of the base index, where the build put them. An ``add`` is applied by *every* shard: the
  hashed shard stores the code, every other shard hides any base copy of the id (so a re-added id is
  replaced, never duplicated); a ``delete`` hides the id everywhere.
* **Search.** :class:`LiveShard` asks the base for ``k`` plus the number of base videos it hides, drops
  the hidden ones, searches its delta (the codes added since the base was built) exactly, and merges:
  the answer is the exact top-``k`` of the shard's current videos.

Compaction (a new base built from base + delta, hot-swapped in) and the service's endpoints build on
these parts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from vhindex.fs import is_local, join, url_to_fs

__all__ = ["COMPACTION_FILE", "LiveShard", "Update", "UpdateLog", "compact", "read_compaction", "shard_of",
           "truncate_log"]

#: what a compacted index records about the updates it folded in (written before its top manifest)
COMPACTION_FILE = "_compaction.json"

Stamp = tuple[int, str, int]
#: stamp of every video of the base index (older than any update)
BASE_STAMP: Stamp = (0, "", 0)


def shard_of(video_id: str, num_shards: int) -> int:
    """The shard a video added online lives on: a stable hash of its id (the same on every machine)."""
    return int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big") % int(num_shards)


@dataclasses.dataclass(frozen=True)
class Update:
    """One update: ``op`` ``"add"`` (with the packed ``code``) or ``"delete"``, and its stamp."""

    op: str
    video_id: str
    code: bytes | None
    stamp: Stamp

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "id": self.video_id, "code": None if self.code is None else self.code.hex(),
                "stamp": list(self.stamp)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Update:
        s = obj["stamp"]
        return cls(str(obj["op"]), str(obj["id"]), None if obj["code"] is None else bytes.fromhex(obj["code"]),
                   (int(s[0]), str(s[1]), int(s[2])))


class UpdateLog:
    """The write-ahead log of index updates (module docs).

    Args:
        url: the log's folder (any fsspec URL; conventionally ``<index>/_updates``).
        storage_options: fsspec options.
        writer: this writer's name (unique among concurrent writers; default a random one). Its batches
            go to ``<url>/<writer>/``.
        bits: code length; adds must carry ``bits / 8`` bytes.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, writer: str | None = None,
                 bits: int, list_every: int = 20) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url, storage_options)
        self.writer = writer or uuid.uuid4().hex[:12]
        if not self.writer.isalnum():
            raise ValueError(f"writer must be alphanumeric, got {self.writer!r}")
        self.bits = int(bits)
        self._lock = threading.Lock()
        self._seq = self._last_seq()
        self._clock = 0
        self._read: dict[str, int] = {}  # writer -> last batch seq read
        # a known writer's new batches are found by reading the next numbers (two small reads a poll, whatever
        # the size of the log); every `list_every` reads its folder is listed instead, which finds batches after
        # a gap of two or more numbers (writes that failed)
        self.list_every = max(1, int(list_every))
        self._reads = 0
        # a shard replica reads from its follower thread and, to catch up before a search, from another
        self._read_lock = threading.Lock()

    def _batches(self, writer: str) -> list[tuple[int, str]]:
        """``(seq, path)`` of a writer's batch objects, in order (temporary files left out)."""
        folder = join(self.fs, self.root, writer)
        try:
            names = self.fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        out = []
        for path in names:
            name = os.path.basename(path)
            stem = name.split(".")[0]
            if name == f"{stem}.json" and stem.isdigit():
                out.append((int(stem), join(self.fs, self.root, writer, name)))
        return sorted(out)

    def _last_seq(self) -> int:
        return max((seq for seq, _ in self._batches(self.writer)), default=0)

    @property
    def read_through(self) -> dict[str, int]:
        """Per writer, the last batch :meth:`read_new` has read."""
        return dict(self._read)

    def _stamp(self) -> Stamp:
        self._clock = max(time.time_ns(), self._clock + 1)
        return (self._clock, self.writer, self._seq)

    def append(self, ops: Sequence[tuple[str, str, bytes | None]]) -> list[Update]:
        """Write one batch durably; the updates, stamped, once the write returned.

        Args:
            ops: ``("add", video_id, packed code)`` or ``("delete", video_id, None)``.

        Raises:
            ValueError: an unknown op, an empty id, or a code of the wrong length (nothing is written).
            OSError and the like: the storage refused the write -- nothing is acknowledged.
        """
        for op, vid, code in ops:
            if op not in ("add", "delete"):
                raise ValueError(f"update op must be 'add' or 'delete', got {op!r} (video {vid!r})")
            if not isinstance(vid, str) or not vid:
                raise ValueError(f"update video id must be a non-empty str, got {vid!r}")
            if op == "add" and (not isinstance(code, (bytes, bytearray)) or len(code) != self.bits // 8):
                raise ValueError(f"add of {vid!r}: code must be {self.bits // 8} bytes ({self.bits} bits)")
        if not ops:
            return []
        with self._lock:
            self._seq += 1
            seq = self._seq
            updates = []
            for op, vid, code in ops:
                stamp = self._stamp()
                updates.append(Update(op, vid, bytes(code) if op == "add" else None, (stamp[0], stamp[1], seq)))
            body = json.dumps({"writer": self.writer, "seq": seq, "updates": [u.to_json() for u in updates]})
            path = join(self.fs, self.root, self.writer, f"{seq:012d}.json")
            # A failed write never gives its number back: the write may have landed even though it
            # reported an error (an object store's reply lost on the way back), and reusing the number
            # would overwrite that batch under readers that already read it. Gaps are harmless.
            self._write(path, body.encode())
        return updates

    def _write(self, path: str, data: bytes) -> None:
        if is_local(self.fs):
            # a temporary name, flushed to disk, then renamed: the batch appears whole or not at all
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        else:  # an object store: one put, all or nothing
            self.fs.pipe_file(path, data)

    def mark_read(self, writer: str, seq: int) -> None:
        """Note that batch ``seq`` of ``writer`` arrived another way (pushed by the router), so :meth:`read_new`
        need not read it again -- only when it is the next one: a gap is still read from the log."""
        with self._read_lock:
            if self._read.get(writer, 0) == seq - 1:
                self._read[writer] = seq

    def read_new(self, *, full: bool = False) -> list[Update]:
        """Every update of batches not read before by this object (all writers), in stamp order.

        ``full``: list every writer's folder now (finds batches behind any gap) instead of reading the next
        numbers of the writers already known (the cheap way; a listing happens every ``list_every`` calls).
        """
        with self._read_lock:
            self._reads += 1
            return self._read_new(full or self._reads % self.list_every == 0)

    def _next_batches(self, writer: str, last: int) -> list[tuple[int, bytes]]:
        """Batches ``last + 1, last + 2, ...`` of a writer by reading them, past gaps of one number."""
        out: list[tuple[int, bytes]] = []
        seq, misses = last + 1, 0
        while misses < 2:
            try:
                data = self.fs.cat_file(join(self.fs, self.root, writer, f"{seq:012d}.json"))
            except FileNotFoundError:
                misses += 1
            else:
                out.append((seq, data))
                misses = 0
            seq += 1
        return out

    def _read_new(self, full: bool) -> list[Update]:
        self.fs.invalidate_cache(self.root)
        try:
            writers = [os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False)]
        except FileNotFoundError:
            return []
        out: list[Update] = []
        for w in writers:
            if not w.isalnum():
                continue
            last = self._read.get(w)
            if last is None or full:  # a writer not seen before, or the periodic listing
                self.fs.invalidate_cache(join(self.fs, self.root, w))
                found = []
                for seq, path in self._batches(w):
                    if seq > (last or 0):
                        with self.fs.open(path, "rb") as f:
                            found.append((seq, f.read()))
            else:
                found = self._next_batches(w, last)
            for seq, data in found:
                out.extend(Update.from_json(u) for u in json.loads(data)["updates"])
                last = seq
            self._read[w] = last or 0
        out.sort(key=lambda u: u.stamp)
        return out


class LiveShard:
    """One shard of a living index: its base :class:`~vhindex.index.sharded.ShardIndex` plus the updates.

    The delta (videos stored here by updates) is a faiss ``IndexBinaryFlat`` that only grows: a replaced or
    deleted delta video is marked dead and left out of answers by over-asking, like the hidden base
    videos, so applying an update never rebuilds anything.

    Args:
        base: the shard as built.
        shard_id: its number.
        num_shards: shards of the index (for :func:`shard_of`).
    """

    def __init__(self, base: Any, shard_id: int, num_shards: int, *, compaction: dict[str, Any] | None = None) -> None:
        import faiss

        self.base = base
        # a compacted base already holds the updates up to a watermark; it remembers their stamps so that an
        # older update seen later (a slow writer) cannot undo a newer one that was folded in
        self.folded: dict[str, int] = {} if compaction is None else {w: int(q) for w, q in compaction["through"].items()}
        self.bits = int(base.bits)
        self.shard_id, self.num_shards = int(shard_id), int(num_shards)
        self.stamps: dict[str, Stamp] = {}  # id -> stamp of the latest update applied
        if compaction is not None:
            self.stamps.update({v: (int(t[0]), str(t[1]), int(t[2])) for v, t in compaction["stamps"].items()})
        self.hidden: set[str] = set()  # base ids hidden by a later update
        self._hidden_mask = np.zeros(len(base), dtype=bool)  # the same, by base position
        self._delta = faiss.IndexBinaryFlat(self.bits)
        self._delta_ids: list[str] = []  # delta position -> id
        self._delta_ids_array: np.ndarray | None = None  # the same as an object array (rebuilt after adds, not per search)
        self._delta_pos: dict[str, int] = {}  # live delta id -> position
        self._dead = np.zeros(0, dtype=bool)  # delta position superseded or deleted
        self._n_dead = 0
        # updates arrive on another thread (the log follower) while searches run
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self.count

    @property
    def count(self) -> int:
        """Videos this shard holds now."""
        return len(self.base) - len(self.hidden) + len(self._delta_pos)

    @property
    def delta_size(self) -> int:
        """Videos stored here by updates (the part a compaction would fold into the base)."""
        return len(self._delta_pos)

    def apply(self, updates: Iterable[Update]) -> int:
        """Apply updates (any order, any repeats: the largest stamp per id wins); how many changed the state."""
        with self._lock:
            return self._apply(updates)

    def _grow_dead(self) -> None:
        if len(self._dead) < len(self._delta_ids):  # doubling: amortised O(1) per add
            grown = np.zeros(max(len(self._delta_ids), 2 * len(self._dead)), dtype=bool)
            grown[: len(self._dead)] = self._dead
            self._dead = grown

    def _kill(self, video_id: str) -> None:
        pos = self._delta_pos.pop(video_id, None)
        if pos is not None:
            self._grow_dead()
            self._dead[pos] = True
            self._n_dead += 1

    def _apply(self, updates: Iterable[Update]) -> int:
        changed = 0
        new_codes: list[np.ndarray] = []
        for u in updates:
            if u.stamp[2] <= self.folded.get(u.stamp[1], 0) or u.stamp <= self.stamps.get(u.video_id, BASE_STAMP):
                continue  # folded into the base, or older than what is applied
            self.stamps[u.video_id] = u.stamp
            changed += 1
            self._kill(u.video_id)
            if u.op == "add" and shard_of(u.video_id, self.num_shards) == self.shard_id:
                self._delta_pos[u.video_id] = len(self._delta_ids)
                self._delta_ids.append(u.video_id)
                new_codes.append(np.frombuffer(u.code, dtype=np.uint8))
            if self.base.contains(u.video_id) and u.video_id not in self.hidden:
                self.hidden.add(u.video_id)
                self._hidden_mask[int(self.base.idmap.to_ints([u.video_id])[0])] = True
        if new_codes:
            # positions were handed out in order above; the faiss index takes the codes in the same order
            added = np.ascontiguousarray(np.stack(new_codes))
            self._delta.add(added)
            self._delta_ids_array = None
            self._grow_dead()
        return changed

    def contains(self, video_id: str) -> bool:
        """Whether the shard holds ``video_id`` now."""
        return video_id in self._delta_pos or (self.base.contains(video_id) and video_id not in self.hidden)

    def code_of(self, video_id: str) -> bytes | None:
        """The current packed code of ``video_id`` here, or None."""
        with self._lock:
            pos = self._delta_pos.get(video_id)
            if pos is not None:
                return bytes(self._delta.reconstruct(pos))
            if self.base.contains(video_id) and video_id not in self.hidden:
                return bytes(self.base.reconstruct([video_id])[0])
            return None

    def reconstruct(self, video_ids: Sequence[str]) -> np.ndarray:
        """Packed codes ``(n, bits/8)`` of ``video_ids`` (like ``ShardIndex.reconstruct``); KeyError for one not here."""
        out = []
        for vid in video_ids:
            code = self.code_of(vid)
            if code is None:
                raise KeyError(f"video id {vid!r} is not in this shard")
            out.append(np.frombuffer(code, dtype=np.uint8))
        return np.stack(out) if out else np.zeros((0, self.bits // 8), dtype=np.uint8)

    def search(self, queries: np.ndarray, k: int, *, categories: Any = None,
               mask_table: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of the shard's current videos: ``(distances int32 (nq, k), ids object (nq, k))``,
        ascending distance (ties: base before delta, each in its own order); padding ``bits + 1`` / None."""
        if categories is not None or mask_table is not None:
            raise LookupError("category-mask search is not available on an index with online updates")
        with self._lock:
            return self._search(np.asarray(queries, dtype=np.uint8), int(k))

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq, pad = q.shape[0], self.bits + 1
        parts_d, parts_i = [], []
        if len(self.base):
            kb = min(k + len(self.hidden), len(self.base))
            d, pos = self.base.search_positions(q, kb)
            bad = pos < 0
            if self.hidden:
                bad |= self._hidden_mask[np.maximum(pos, 0)]
            ids = self.base.idmap.to_ids(np.where(bad, -1, pos))
            parts_d.append(np.where(bad, pad, d))
            parts_i.append(ids)
        if self._delta.ntotal:
            kd = min(k + self._n_dead, self._delta.ntotal)
            d, pos = self._delta.search(q, kd)
            bad = (pos < 0) | self._dead[np.maximum(pos, 0)]
            if self._delta_ids_array is None:
                self._delta_ids_array = np.array(self._delta_ids, dtype=object)
            ids = self._delta_ids_array[np.maximum(pos, 0)]
            ids[bad] = None
            parts_d.append(np.where(bad, pad, d).astype(np.int32))
            parts_i.append(ids)
        out_d = np.full((nq, k), pad, dtype=np.int32)
        out_i = np.full((nq, k), None, dtype=object)
        if not parts_d:
            return out_d, out_i
        dist = np.concatenate(parts_d, axis=1)
        ids = np.concatenate(parts_i, axis=1)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        rows = np.arange(nq)[:, None]
        n = order.shape[1]
        out_d[:, :n] = dist[rows, order]
        out_i[:, :n] = ids[rows, order]
        out_i[out_d == pad] = None
        return out_d, out_i


def truncate_log(log_url: str, through: dict[str, int], storage_options: dict[str, Any] | None = None) -> int:
    """Delete the log batches a compacted base folded in (``through``: last batch per writer); how many.

    Only for batches no replica can need any more: those of a base older than the one being served (the
    automatic compactor keeps one generation). Readers are unaffected -- they skip folded batches anyway.
    """
    log = UpdateLog(log_url, storage_options, writer="truncator", bits=8)
    removed = 0
    for writer, last in through.items():
        if not writer.isalnum():
            continue
        doomed = [path for seq, path in log._batches(writer) if seq <= int(last)]
        if doomed:
            log.fs.rm(doomed)
            removed += len(doomed)
    return removed


def read_compaction(index_url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The compaction record of an index (:func:`compact`), or None for an index built from codes."""
    fs, root = url_to_fs(index_url, storage_options)
    path = join(fs, root, COMPACTION_FILE)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def compact(index_url: str, log_url: str, out_url: str, *, storage_options: dict[str, Any] | None = None,
            num_shards: int | None = None) -> dict[str, Any]:
    """Fold the update log into a new base index at ``out_url`` (``vhindex index compact``).

    The new index holds the base's videos with every update read from the log applied (last writer wins),
    and records (``_compaction.json``) the log, the last batch folded per writer and the stamps of every
    video those updates touched. Shard replicas that load it apply only the log's later batches, on top of
    those stamps, so nothing is lost or applied twice -- and serving it is an ordinary hot swap
    (``deploy`` with ``serve.index = out_url`` and the same ``serve.update_log``).

    Returns:
        ``{"index_version", "videos", "folded_updates", "through"}``.
    """
    from vhindex.data.schema import CodesDatasetMeta
    from vhindex.data.writer import CodesDatasetWriter
    from vhindex.fs import write_json_atomic
    from vhindex.index.sharded import IndexSpec, ShardedIndex, build_sharded_index

    idx = ShardedIndex.open(index_url, storage_options)
    info = idx.info()
    bits = int(info["bits"])
    previous = read_compaction(index_url, storage_options)
    state: dict[str, bytes] = {}
    stamps: dict[str, Stamp] = {}
    through: dict[str, int] = {}
    if previous is not None:
        stamps = {v: (int(t[0]), str(t[1]), int(t[2])) for v, t in previous["stamps"].items()}
        through = {w: int(q) for w, q in previous["through"].items()}
    for i in range(idx.num_shards):
        shard = idx.load_shard(i)
        codes = shard.codes_view()
        for vid, code in zip(shard.idmap.ids, codes, strict=True):
            state[vid] = code.tobytes()
    log = UpdateLog(log_url, storage_options, writer="compactor", bits=bits)
    folded = 0
    for u in log.read_new():
        _, writer, seq = u.stamp
        if seq <= through.get(writer, 0) and previous is not None:
            continue  # already in the base we started from
        folded += 1
        if u.stamp > stamps.get(u.video_id, BASE_STAMP):
            stamps[u.video_id] = u.stamp
            if u.op == "add":
                state[u.video_id] = u.code
            else:
                state.pop(u.video_id, None)
    for w, last in log.read_through.items():
        through[w] = max(through.get(w, 0), last)
    ids = sorted(state)
    codes_url = f"{out_url.rstrip('/')}-codes"
    with CodesDatasetWriter(codes_url, CodesDatasetMeta(bits=bits, model=str(info.get("model", "unknown")),
                                                        model_version=str(info.get("model_version") or "")),
                            storage_options=storage_options, overwrite=True,
                            # enough row groups for the shard count to be kept (row groups are never split)
                            row_group_size=max(1, min(100_000, len(ids) // (4 * (num_shards or idx.num_shards))))) as w:
        w.write(ids, np.stack([np.frombuffer(state[v], np.uint8) for v in ids]) if ids else
                np.zeros((0, bits // 8), np.uint8))
    spec = IndexSpec.from_dict(info["spec"]) if "spec" in info else IndexSpec("flat", {})
    fs, root = url_to_fs(out_url, storage_options)
    fs.makedirs(root, exist_ok=True)
    # the record goes first: the top manifest, written last by the build, makes the folder an index
    write_json_atomic(fs, join(fs, root, COMPACTION_FILE), {
        "from": index_url, "log": log_url, "through": through,
        "stamps": {v: list(t) for v, t in stamps.items()}})
    manifest = build_sharded_index(codes_url, out_url, num_shards or idx.num_shards, spec=spec, so=storage_options,
                                   allow_fewer_shards=True)
    return {"index_version": manifest.index_version, "videos": len(ids), "folded_updates": folded,
            "through": through}

"""Automatic compaction of a living index (``serve.compact_after``): a Serve deployment beside the shards.

Every ``serve.compact_check_s`` the compactor reads the update log's new batches (one more reader of the
log, like a shard replica) and counts the updates the serving base has not folded in. From
``serve.compact_after`` on it:

1. folds the log into a new base (:func:`vhindex.index.live.compact`) under ``serve.compact_dir``
   (default ``<first index>.compacted/``), as ``vhindex index compact`` would;
2. swaps it in with the ordinary hot swap -- the application run again (``serve.run``, as
   :func:`cluster.serve.deploy` does) with ``serve.index`` set to the new base and the same explicit update
   log, so only ``user_config`` changes: shard replicas load the new
   version beside the old one, the router switches once every replica holds it, and no answer is lost
   or duplicated (tests/test_serve_updates.py);
3. once the new version is served, removes what nothing can need any more: log batches folded into the
   *previous* base (one generation is kept, so the previous base plus the log still rebuild the state), and
   compacted bases older than the previous one. The first index, the one deployed by hand, is never
   removed.

A failed compaction is logged and retried at the next check; the service keeps serving the old base
with the log meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("vhindex.compactor")


class Compactor:
    """The compaction loop (module docs). One replica per application.

    Args:
        settings: the application's ``ServeSection`` fields (``index`` left out: it comes in
            ``user_config`` like the shards', so a swap reconfigures this replica instead of restarting it).
        log_url: the update log.
        build_app: the application builder (:func:`cluster.serve.build_app`, passed in rather than imported:
            cluster.serve builds this deployment).
    """

    def __init__(self, settings: dict[str, Any], log_url: str, build_app: Callable[[dict[str, Any]], Any]) -> None:
        from vhindex.config import ServeSection

        self.settings = ServeSection.model_validate({**settings, "index": None})
        self.log_url = log_url
        self.build_app = build_app
        self.so = self.settings.storage_options or None
        self.index: str | None = None
        self.first_index: str | None = None
        self.pending = 0  # updates in the log that the serving base has not folded in
        self.compactions: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self._reader: Any = None
        self._through: dict[str, int] = {}
        self._task: asyncio.Task | None = None
        self._busy = asyncio.Lock()

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The served index (``user_config["index"]``), set by Serve on start and on every hot swap."""
        url = (user_config or {}).get("index")
        if not url or url == self.index:
            return
        from vhindex.index.live import read_compaction

        self.index = url
        record = read_compaction(url, self.so)
        if self.first_index is None:  # this replica's first index: a fresh service, or a restarted compactor
            self.first_index = url if record is None else record.get("first", record.get("from", url))
            if record is not None:  # restarted: the history is in the record
                self.compactions = list(record.get("history", []))
        self._through = {} if record is None else {w: int(q) for w, q in record["through"].items()}
        self._reader = None  # recount from the log against the new base's watermark
        self.pending = 0
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def status(self) -> dict[str, Any]:
        """``{"index", "pending", "compact_after", "compactions", "last_error"}`` (for /info and tests)."""
        return {"index": self.index, "pending": self.pending, "compact_after": self.settings.compact_after,
                "compactions": list(self.compactions), "last_error": self.last_error}

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.settings.compact_check_s))
            try:
                await self.check()
            except Exception as err:  # noqa: BLE001 -- keep serving the old base; try again next time
                self.last_error = f"{type(err).__name__}: {err}"
                logger.exception("compaction failed")

    def _count_new(self) -> None:
        from vhindex.index.live import UpdateLog

        if self._reader is None:
            self._reader = UpdateLog(self.log_url, self.so, writer="compactorcount", bits=8)
            self.pending = 0
        for u in self._reader.read_new():
            _, writer, seq = u.stamp
            if seq > self._through.get(writer, 0):
                self.pending += 1

    async def check(self) -> dict[str, Any] | None:
        """Count the unfolded updates; compact and swap when there are ``serve.compact_after`` of them."""
        async with self._busy:
            await asyncio.to_thread(self._count_new)
            if self.index is None or self.pending < int(self.settings.compact_after or 0):
                return None
            return await asyncio.to_thread(self._compact_and_swap)

    def _compact_and_swap(self) -> dict[str, Any]:
        from ray import serve

        from vhindex.fs import join, url_to_fs, write_json_atomic
        from vhindex.index.live import COMPACTION_FILE, compact, read_compaction

        assert self.index is not None and self.first_index is not None
        root = (self.settings.compact_dir or f"{self.first_index.rstrip('/')}.compacted").rstrip("/")
        out = f"{root}/v{time.time_ns() // 1_000_000}"
        previous = self.index
        t0 = time.perf_counter()
        result = compact(previous, self.log_url, out, storage_options=self.so)
        compact_s = time.perf_counter() - t0
        entry = {"from": previous, "to": out, "index_version": result["index_version"], "videos": result["videos"],
                 "folded_updates": result["folded_updates"], "compact_s": round(compact_s, 3)}
        # the record remembers the first index (never removed) and the history (a restarted compactor reads it)
        fs, path = url_to_fs(out, self.so)
        record = read_compaction(out, self.so) or {}
        write_json_atomic(fs, join(fs, path, COMPACTION_FILE),
                          {**record, "first": self.first_index, "history": [*self.compactions, entry]})
        # the hot swap: what `deploy` does, minus its client-side checks (they need an event loop of their own)
        new_settings = self.settings.model_copy(update={"index": out, "update_log": self.log_url})
        serve.run(self.build_app(new_settings.model_dump(mode="json")), name=new_settings.app_name,
                  route_prefix=new_settings.route_prefix, blocking=False)
        entry["swap_s"] = round(time.perf_counter() - t0 - compact_s, 3)
        logger.info("compacted %d updates into %s (%d videos) and swapped it in", result["folded_updates"], out,
                    result["videos"])
        entry["truncated_batches"], entry["removed_bases"] = self._clean_up(previous, out, root)
        self.compactions.append(entry)
        return entry

    def _clean_up(self, previous: str, current: str, root: str) -> tuple[int, int]:
        """Drop log batches folded into ``previous`` (the base before the one now served) and bases older than it;
        ``(batches, bases)`` removed."""
        from vhindex.fs import url_to_fs
        from vhindex.index.live import read_compaction, truncate_log

        record = read_compaction(previous, self.so)
        batches = bases = 0
        if record is not None:
            batches = truncate_log(self.log_url, {w: int(q) for w, q in record["through"].items()}, self.so)
            logger.info("update log: removed %d batches folded before %s", batches, previous)
        fs, base = url_to_fs(root, self.so)
        keep = {url_to_fs(u, self.so)[1].rstrip("/") for u in (previous, current)}
        try:
            names = fs.ls(base, detail=False)
        except FileNotFoundError:
            return batches, bases
        for path in names:
            stem = path.rstrip("/")
            version = stem.removesuffix("-codes")
            if version in keep or not version.rsplit("/", 1)[-1].startswith("v"):
                continue
            fs.rm(stem, recursive=True)
            bases += stem == version
        return batches, bases

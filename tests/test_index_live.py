# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""Online adds and deletes over a built sharded index (vhindex.index.live) against brute force.

Oracle: a dict {video id: code} built from the base codes and every *acknowledged* update applied in
stamp order (last writer wins), searched by brute-force Hamming; answers compared tie-aware. Real
parts: the sharded index as built for serving, the update log on local disk and on moto's S3 server,
concurrent writers in threads.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from vhindex.data.schema import CodesDatasetMeta
from vhindex.data.writer import CodesDatasetWriter
from vhindex.index.live import LiveShard, UpdateLog, shard_of
from vhindex.index.sharded import IndexSpec, ShardedIndex, build_sharded_index, merge_topk
from vhindex.index.testing import assert_same_knn, brute_force_knn

BITS = 16


def _base(tmp: Path, n: int = 600, shards: int = 3) -> tuple[str, dict[str, bytes]]:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)
    codes[n // 2:] = codes[: n - n // 2] ^ (rng.random((n - n // 2, BITS // 8)) < 0.05).astype(np.uint8)
    ids = [f"b{i:04d}" for i in range(n)]
    with CodesDatasetWriter(str(tmp / "codes"), CodesDatasetMeta(bits=BITS, model="itq", model_version="v"),
                            row_group_size=50) as w:
        w.write(ids, codes)
    build_sharded_index(str(tmp / "codes"), str(tmp / "index"), shards, spec=IndexSpec("flat", {}))
    return str(tmp / "index"), {v: c.tobytes() for v, c in zip(ids, codes, strict=True)}


def _live(index_url: str) -> list[LiveShard]:
    idx = ShardedIndex.open(index_url)
    return [LiveShard(idx.load_shard(i), i, idx.num_shards) for i in range(idx.num_shards)]


def _check(shards: list[LiveShard], state: dict[str, bytes], rng: np.random.Generator, k: int) -> None:
    assert sum(s.count for s in shards) == len(state)
    ids = sorted(state)
    codes = np.stack([np.frombuffer(state[v], np.uint8) for v in ids])
    q = rng.integers(0, 256, size=(6, BITS // 8), dtype=np.uint8)
    q[:3] = codes[rng.integers(0, len(ids), size=3)]
    D, I = merge_topk([s.search(q, k) for s in shards], k, BITS)
    D_ref, pos = brute_force_knn(q, codes)
    assert_same_knn(D, I, D_ref, np.array(ids, dtype=object)[pos])


def _random_ops(rng: random.Random, known: list[str], n: int, tag: str) -> list[tuple[str, str, bytes | None]]:
    ops = []
    for j in range(n):
        r = rng.random()
        if r < 0.4:
            vid = f"{tag}-{j}-{rng.randrange(10**6)}"
            known.append(vid)
            ops.append(("add", vid, rng.randbytes(BITS // 8)))
        elif r < 0.7:
            ops.append(("add", rng.choice(known), rng.randbytes(BITS // 8)))  # re-add: replaces the code
        elif r < 0.95:
            ops.append(("delete", rng.choice(known), None))
        else:
            ops.append(("delete", f"never-{rng.randrange(10**6)}", None))
    return ops


@pytest.mark.parametrize("where", ["local", "s3"])
def test_interleaved_concurrent_updates_equal_brute_force(tmp_path, where, request):
    index_url, base = _base(tmp_path)
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        log_url, so = s3.url("log"), s3.storage_options
    else:
        log_url, so = str(tmp_path / "log"), None
    known = list(base)
    acked: list = []
    lock = threading.Lock()

    def writer(name: str, seed: int) -> None:
        log = UpdateLog(log_url, so, writer=name, bits=BITS)
        rng = random.Random(seed)
        local_known = list(known)
        for _ in range(15):
            updates = log.append(_random_ops(rng, local_known, rng.randint(1, 12), f"{name}{seed}"))
            with lock:
                acked.extend(updates)

    threads = [threading.Thread(target=writer, args=(name, seed)) for name, seed in
               (("wa", 1), ("wb", 2), ("wc", 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # oracle: the base, then every acknowledged update in stamp order (last writer wins)
    state = dict(base)
    for u in sorted(acked, key=lambda u: u.stamp):
        if u.op == "add":
            state[u.video_id] = u.code
        else:
            state.pop(u.video_id, None)
    rng = np.random.default_rng(1)
    # a replica starting now replays the log
    replayed = _live(index_url)
    log = UpdateLog(log_url, so, writer="reader", bits=BITS)
    updates = log.read_new()
    assert sorted(u.stamp for u in updates) == sorted(u.stamp for u in acked)
    for s in replayed:
        s.apply(updates)
    for k in (1, 10, 50):
        _check(replayed, state, rng, k)
    # replicas that got the updates directly, in another order and twice, agree
    direct = _live(index_url)
    shuffled = list(acked) * 2
    random.Random(5).shuffle(shuffled)
    for s in direct:
        s.apply(shuffled)
    _check(direct, state, rng, 10)
    for vid in list(state)[:50] + [u.video_id for u in acked if u.op == "delete"][:20]:
        got = [s.code_of(vid) for s in direct]
        holders = [c for c in got if c is not None]
        if vid in state:
            assert holders == [state[vid]], vid  # exactly one shard holds it, with the winning code
        else:
            assert holders == [], vid
    # an id added online lives on its hashed shard
    added = [v for v in state if v not in base]
    assert added and all(direct[shard_of(v, 3)].contains(v) for v in added)
    # nothing new: reading again returns nothing
    assert log.read_new() == []


def test_sequential_updates_stay_exact_after_every_batch(tmp_path):
    index_url, base = _base(tmp_path, n=200, shards=2)
    shards = _live(index_url)
    log = UpdateLog(str(tmp_path / "log"), writer="w", bits=BITS)
    state, known = dict(base), list(base)
    rng, nrng = random.Random(7), np.random.default_rng(7)
    for _ in range(40):
        updates = log.append(_random_ops(rng, known, rng.randint(1, 5), "s"))
        for s in shards:
            s.apply(updates)
        for u in updates:
            state.pop(u.video_id, None) if u.op == "delete" else state.__setitem__(u.video_id, u.code)
        _check(shards, state, nrng, 5)


def test_a_refused_write_acknowledges_nothing_and_a_restarted_writer_continues(tmp_path):
    log_url = str(tmp_path / "log")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "w1").write_text("a file where the writer's folder should be")
    log = UpdateLog(log_url, writer="w1", bits=BITS)
    with pytest.raises(OSError):
        log.append([("add", "x", b"\x00\x01")])
    assert UpdateLog(log_url, writer="r", bits=BITS).read_new() == []
    with pytest.raises(ValueError, match="2 bytes"):
        UpdateLog(log_url, writer="w2", bits=BITS).append([("add", "x", b"\x00")])
    with pytest.raises(ValueError, match="'add' or 'delete'"):
        UpdateLog(log_url, writer="w2", bits=BITS).append([("upsert", "x", b"\x00\x00")])
    first = UpdateLog(log_url, writer="w2", bits=BITS)
    a = first.append([("add", "x", b"\x00\x01")])
    again = UpdateLog(log_url, writer="w2", bits=BITS)  # a restarted writer: continues after its last batch
    b = again.append([("delete", "x", None)])
    assert b[0].stamp[2] == a[0].stamp[2] + 1
    got = UpdateLog(log_url, writer="r2", bits=BITS).read_new()
    assert [(u.op, u.video_id) for u in got] == [("add", "x"), ("delete", "x")]


def test_compaction_folds_the_log_and_later_updates_still_apply(tmp_path):
    import json

    from vhindex.index.live import compact, read_compaction

    index_url, base = _base(tmp_path, n=300, shards=3)
    log_url = str(tmp_path / "log")
    log = UpdateLog(log_url, writer="w", bits=BITS)
    rng, nrng = random.Random(3), np.random.default_rng(3)
    known = list(base)
    acked = []
    for _ in range(30):
        acked += log.append(_random_ops(rng, known, rng.randint(1, 8), "pre"))
    before = _live(index_url)
    for s in before:
        s.apply(UpdateLog(log_url, writer="r0", bits=BITS).read_new())
    out = compact(index_url, log_url, str(tmp_path / "index-2"))
    assert out["folded_updates"] == len(acked) and out["through"] == {"w": 30}
    record = read_compaction(str(tmp_path / "index-2"))
    # later updates, and a slow writer whose batch carries an older stamp than a folded update
    for _ in range(10):
        acked += log.append(_random_ops(rng, known, rng.randint(1, 8), "post"))
    victim = next(u for u in acked if u.op == "add" and u.stamp[2] <= 30)  # an add folded into the new base
    stale = {"writer": "slow", "seq": 1, "updates": [{"op": "delete", "id": victim.video_id, "code": None,
                                                      "stamp": [victim.stamp[0] - 1, "slow", 1]}]}
    (tmp_path / "log" / "slow").mkdir()
    (tmp_path / "log" / "slow" / f"{1:012d}.json").write_text(json.dumps(stale))
    state = dict(base)
    all_updates = sorted(acked + [__import__("vhindex.index.live", fromlist=["Update"]).Update.from_json(
        stale["updates"][0])], key=lambda u: u.stamp)
    for u in all_updates:
        state.pop(u.video_id, None) if u.op == "delete" else state.__setitem__(u.video_id, u.code)
    after = [LiveShard(ShardedIndex.open(str(tmp_path / "index-2")).load_shard(i), i, 3, compaction=record)
             for i in range(3)]
    replay = UpdateLog(log_url, writer="r1", bits=BITS).read_new()
    for s in after:
        s.apply(replay)
    for k in (1, 20):
        _check(after, state, nrng, k)
    assert sum(s.delta_size for s in after) < sum(s.delta_size for s in before)  # the folded adds left the delta
    # a second compaction starts from the first one's record
    again = compact(str(tmp_path / "index-2"), log_url, str(tmp_path / "index-3"))
    assert again["through"]["w"] == 40 and again["videos"] == len(state)


def test_a_write_that_failed_after_landing_is_never_overwritten(tmp_path):
    """An object store can take a batch and lose the reply: the writer reports an error (nothing
    acknowledged), but the batch is in the log. Its sequence number must not be handed out again -- a
    reader that already read the batch would skip the next one under the same number."""

    class LostReply(UpdateLog):
        lose = True

        def _write(self, path: str, data: bytes) -> None:
            super()._write(path, data)
            if self.lose:
                self.lose = False
                raise OSError("connection reset after the upload")

    log_url = str(tmp_path / "log")
    writer = LostReply(log_url, writer="w", bits=BITS)
    reader = UpdateLog(log_url, writer="r", bits=BITS)
    with pytest.raises(OSError):
        writer.append([("add", "x", b"\x00\x01"), ("add", "x2", b"\x00\x02")])
    assert [u.video_id for u in reader.read_new()] == ["x", "x2"]  # unacknowledged, and fully in
    writer.append([("add", "y", b"\x00\x03")])
    assert [u.video_id for u in reader.read_new()] == ["y"]
    assert sorted(u.video_id for u in UpdateLog(log_url, writer="r2", bits=BITS).read_new()) == ["x", "x2", "y"]


def test_followers_read_the_next_batches_past_gaps_of_failed_writes(tmp_path):
    """A follower finds a known writer's new batches by reading the next numbers (not by listing the whole log):
    past a gap of one failed write at once, past longer gaps at its next listing (or when asked for one)."""

    class Refusing(UpdateLog):
        refuse = 0

        def _write(self, path: str, data: bytes) -> None:
            if self.refuse:
                self.refuse -= 1
                raise OSError("the store refused the write")
            super()._write(path, data)

    log_url = str(tmp_path / "log")
    writer = Refusing(log_url, writer="w", bits=BITS)
    reader = UpdateLog(log_url, writer="r", bits=BITS, list_every=1000)
    writer.append([("add", "a", b"\x00\x01")])
    assert [u.video_id for u in reader.read_new()] == ["a"]
    writer.refuse = 1
    with pytest.raises(OSError):
        writer.append([("add", "lost", b"\x00\x02")])
    writer.append([("add", "b", b"\x00\x03")])  # number 3: one number missing
    assert [u.video_id for u in reader.read_new()] == ["b"]
    writer.refuse = 2
    for _ in range(2):
        with pytest.raises(OSError):
            writer.append([("add", "lost", b"\x00\x02")])
    writer.append([("add", "c", b"\x00\x04")])  # number 6: two numbers missing
    assert reader.read_new() == []  # not found by reading the next two numbers...
    assert [u.video_id for u in reader.read_new(full=True)] == ["c"]  # ...but by listing
    every = UpdateLog(log_url, writer="r2", bits=BITS, list_every=2)
    assert [u.video_id for u in every.read_new()] == ["a", "b", "c"]
    writer.refuse = 2
    for _ in range(2):
        with pytest.raises(OSError):
            writer.append([("add", "lost", b"\x00\x02")])
    writer.append([("add", "d", b"\x00\x05")])
    assert [u.video_id for u in every.read_new()] == ["d"]  # the second read lists

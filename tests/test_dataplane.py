# ruff: noqa: E741  (D, I: faiss naming of distances / ids)
"""The direct shard data plane (cluster.dataplane) over real TCP sockets on 127.0.0.1.

Oracle: numpy brute-force Hamming ranking (tie-aware). The server side searches a real faiss
``IndexBinaryFlat``; failures are real (closed servers, garbage bytes, a slow shard).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import faiss
import numpy as np
import pytest

from cluster.dataplane import DataPlaneClient, DataPlaneError, RemoteShardError, ShardDataServer, _encode, _read_frame
from vhindex.index.testing import assert_same_knn, brute_force_knn

BITS = 64


class NotLoaded(LookupError):
    pass


def _shard(n: int = 500, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 256, size=(n, BITS // 8), dtype=np.uint8)
    ids = np.array([f"vid{i:04d}" for i in range(n)], dtype=object)
    index = faiss.IndexBinaryFlat(BITS)
    index.add(codes)
    calls: list[tuple[int, int, object, object]] = []
    afters: list[object] = []

    async def search(packed, k, categories, version, after=None):
        calls.append((packed.shape[0], k, None if categories is None else categories.tolist(), version))
        afters.append(after)
        if version == "v-missing":
            raise NotLoaded("version v-missing is not loaded here")
        if categories is not None:
            raise LookupError("this service has no category mask table")
        if version == "v-slow":
            await asyncio.sleep(5)
        D, pos = index.search(packed, min(k, n))
        out_ids = np.full((packed.shape[0], k), None, dtype=object)
        out_ids[:, : pos.shape[1]] = ids[pos]
        dist = np.full((packed.shape[0], k), BITS + 1, dtype=np.int32)
        dist[:, : D.shape[1]] = D
        return dist, out_ids, version or "v1"

    search.afters = afters
    return codes, ids, search, calls


def _server(search):
    return ShardDataServer(search, "127.0.0.1", [(NotLoaded, "version"), (LookupError, "lookup")])


def test_direct_search_equals_brute_force_and_reuses_its_connection():
    codes, ids, search, calls = _shard()
    rng = np.random.default_rng(1)
    queries = rng.integers(0, 256, size=(20, BITS // 8), dtype=np.uint8)
    D_ref, pos_ref = brute_force_knn(queries, codes)

    async def main():
        server = _server(search)
        accepted = []
        original = server._serve

        async def counting(reader, writer):
            accepted.append(writer.get_extra_info("peername"))
            await original(reader, writer)

        server._serve = counting  # counts TCP connections (set before the listener starts)
        endpoint = await server.start()
        client = DataPlaneClient(endpoint)
        D, I, version = await client.search(queries, 10, None, None, timeout_s=5)
        assert version == "v1" and D.dtype == np.int32 and D.shape == (20, 10)
        assert_same_knn(D, I, D_ref, ids[pos_ref])
        for q in range(5):  # one query at a time, sequential: the pooled connection carries them all
            D1, I1, _ = await client.search(queries[q : q + 1], 3, None, "v7", timeout_s=5)
            assert_same_knn(D1, I1, D_ref[q : q + 1], ids[pos_ref[q : q + 1]])
        assert len(accepted) == 1
        # k above the shard's size: every code once, then None ids (like ShardIndex.search)
        D, I, _ = await client.search(queries[:2], 600, None, None, timeout_s=5)
        assert I.shape == (2, 600) and all(v is None for v in I[:, 500:].ravel())
        assert sorted(I[0, :500]) == sorted(ids)
        # the update batch the answer must include (read-your-writes) travels with the search
        await client.search(queries[:1], 1, None, None, timeout_s=5, after=("rab12", 7))
        assert search.afters[0] is None and search.afters[-1] == ("rab12", 7)
        client.close()
        server.close()
        assert calls[1] == (1, 3, None, "v7")  # rows, k, categories, version reach the shard as sent

    asyncio.run(main())


def test_shard_errors_come_back_typed_and_the_connection_survives():
    codes, ids, search, _ = _shard()

    async def main():
        server = _server(search)
        client = DataPlaneClient(await server.start())
        q = codes[:1]
        with pytest.raises(RemoteShardError) as err:
            await client.search(q, 5, None, "v-missing", timeout_s=5)
        assert err.value.kind == "version" and "v-missing" in err.value.message
        with pytest.raises(RemoteShardError) as err:
            await client.search(q, 5, np.array([3]), None, timeout_s=5)
        assert err.value.kind == "lookup" and "mask table" in err.value.message
        D, I, _ = await client.search(q, 1, None, None, timeout_s=5)  # same connection, still serving
        assert D[0, 0] == 0 and I[0, 0] == ids[0]
        # a frame without `rows` is a bad request (not a KeyError, which is a LookupError -> 400 upstream)
        reader, writer = await client._connect()
        writer.write(_encode({"id": 1, "op": "search", "width": 8, "k": 1}, b"\0" * 8))
        header, _ = await _read_frame(reader)
        assert header["ok"] is False and header["kind"] == "bad_request" and "rows" in header["message"]
        writer.close()
        client.close()
        server.close()

    asyncio.run(main())


def test_wrong_secret_garbage_and_oversized_frames_are_refused_without_harming_others():
    codes, ids, search, calls = _shard()

    async def main():
        server = _server(search)
        endpoint = await server.start()
        with pytest.raises(DataPlaneError):
            await DataPlaneClient({**endpoint, "secret": "0" * 32}).search(codes[:1], 1, None, None, timeout_s=5)

        def raw(payload: bytes) -> bytes:
            with socket.create_connection((endpoint["host"], endpoint["port"]), timeout=5) as s:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                return s.recv(100)

        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, raw, b"GET / HTTP/1.1\r\n\r\n") == b""  # closed, no answer
        assert await loop.run_in_executor(None, raw, struct.pack("!II", 2**31, 10)) == b""  # > MAX_FRAME_BYTES
        client = DataPlaneClient(endpoint)  # the server keeps serving well-formed, authenticated clients
        D, I, _ = await client.search(codes[7:8], 1, None, None, timeout_s=5)
        assert D[0, 0] == 0 and I[0, 0] == ids[7]
        assert len(calls) == 1  # nothing reached the shard from the refused connections
        client.close()
        server.close()

    asyncio.run(main())


def test_a_dead_or_slow_endpoint_raises_dataplane_error_within_the_deadline():
    codes, _, search, _ = _shard()

    async def main():
        server = _server(search)
        endpoint = await server.start()
        client = DataPlaneClient(endpoint)
        await client.search(codes[:1], 1, None, None, timeout_s=5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(DataPlaneError):
            await client.search(codes[:1], 1, None, "v-slow", timeout_s=0.3)
        assert loop.time() - t0 < 2
        assert client._idle == []  # the timed-out connection is not reused
        server.close()
        await asyncio.sleep(0.05)
        with pytest.raises(DataPlaneError):  # nothing listens any more: connection refused
            await DataPlaneClient(endpoint).search(codes[:1], 1, None, None, timeout_s=2)

    asyncio.run(main())


def test_a_port_range_is_honoured_and_exhaustion_is_a_clear_error():
    """``serve.data_plane_ports``: a replica takes the first free port of the range; none free -> OSError."""
    codes, _, search, _ = _shard(50)
    blocker = _bind_pair_start()  # holds port q; q + 1 is free
    q = blocker.getsockname()[1]
    servers: list[ShardDataServer] = []

    async def run():
        s = ShardDataServer(search, "127.0.0.1", [], ports=(q, q + 1))
        servers.append(s)
        endpoint = await s.start()
        assert endpoint["port"] == q + 1  # q is taken: skipped
        extra = ShardDataServer(search, "127.0.0.1", [], ports=(q, q + 1))
        with pytest.raises(OSError, match=rf"no free port in {q}-{q + 1}.*data_plane_ports"):
            await extra.start()
        client = DataPlaneClient(endpoint)
        D, I = (await client.search(codes[:2], 3, None, None, timeout_s=5))[:2]
        assert D.shape == (2, 3) and D[0, 0] == 0 and I[0, 0] == "vid0000"
        client.close()

    try:
        asyncio.run(run())
    finally:
        for s in servers:
            s.close()
        blocker.close()


def _bind_pair_start() -> socket.socket:
    """A listening socket on some port q of 127.0.0.1 such that q + 1 is free right now."""
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        q = s.getsockname()[1]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", q + 1))
            except OSError:
                s.close()
                continue
        s.listen()
        return s
    raise AssertionError("no two adjacent free ports on 127.0.0.1")

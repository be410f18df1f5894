"""Direct shard data plane: the router's searches reach shard replicas over plain TCP connections.

Ray Serve stays the control plane -- it places, health-checks, restarts and reconfigures the shard
replicas, and the router discovers each replica's data endpoint through a Serve handle
(``broadcast("data_endpoint")``). Only the hot path, ``search``, bypasses Serve's per-call machinery
(request routing, the max-ongoing-requests rejection handshake, pickling, metrics): on a 2-core machine
that machinery costs ~1.3 ms of CPU per shard call in the shard and ~0.7 ms in the router, which is most
of a 4-shard query's latency (``benchmarks/bench_serve.py`` measures both transports side by side).

Anything unusual on a direct connection -- refused, reset, timed out, a replica mid-swap -- makes the
router drop that connection and send the call through the Serve handle instead, with that path's retries
and per-shard deadline, so correctness and availability never depend on the data plane.

Wire format (both directions): ``u32 total length | u32 header length | JSON header | body``. The
body of a search request is the packed query codes (``rows x width`` bytes) followed, when the header
says so, by ``rows`` int64 category ids; the reply body is the ``rows x k`` int32 distances with the
video ids in the header. The first frame on a connection must carry the replica's secret (a random
token the router learns through the authenticated Serve control plane); anything else closes it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

__all__ = ["DataPlaneClient", "DataPlaneError", "RemoteShardError", "ShardDataServer"]

logger = logging.getLogger(__name__)

_LENGTHS = struct.Struct("!II")
#: largest frame either side accepts (a 1,000-query batch at 512 bits with k = 1,000 is ~20 MB)
MAX_FRAME_BYTES = 256 * 1024 * 1024


class DataPlaneError(ConnectionError):
    """The direct connection failed (closed, reset, refused, timed out, or spoke nonsense)."""


class RemoteShardError(Exception):
    """The shard answered with an error. ``kind``: ``version`` (index version not loaded), ``lookup``
    (a bad request the caller should see, e.g. no mask table), ``bad_request`` or ``error``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message = kind, message


def _encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return _LENGTHS.pack(4 + len(head) + len(body), len(head)) + head + body


#: the first (authentication) frame is tiny: nothing larger is read from an unauthenticated peer
HELLO_MAX_BYTES = 4096


async def _read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_FRAME_BYTES) -> tuple[dict[str, Any], bytes]:
    try:
        total, head_len = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
        if total > max_bytes or head_len > total - 4:
            raise DataPlaneError(f"frame of {total} bytes (header {head_len}) exceeds the limits")
        payload = await reader.readexactly(total - 4)
    except (asyncio.IncompleteReadError, ConnectionError, OSError) as err:
        raise DataPlaneError(f"connection lost: {type(err).__name__}: {err}") from None
    try:
        header = json.loads(payload[:head_len])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataPlaneError(f"unreadable frame header: {err}") from None
    if not isinstance(header, dict):
        raise DataPlaneError("frame header is not a JSON object")
    return header, payload[head_len:]


#: ``(packed, k, categories, version, after) -> (distances, ids, version)`` (the shard's ``search``)
SearchFn = Callable[[np.ndarray, int, "np.ndarray | None", "str | None", "tuple[str, int] | None"],
                    Awaitable[tuple[np.ndarray, np.ndarray, str]]]


class ShardDataServer:
    """Shard-replica side: answers ``search`` frames with ``search_fn`` on the replica's event loop.

    Args:
        search_fn: ``async (packed (n, w) uint8, k, categories (n,) int64 | None, version) ->
            (distances (n, k), video ids (n, k) object, version)``; ``LookupError`` subclasses named
            in ``error_kinds`` become typed error replies.
        host: interface to listen on: the replica's node address, which is 127.0.0.1 on a local Ray
            (nothing of a local run is reachable from another interface) and the node's network
            address in a multi-node cluster (the router on another node must reach it).
        error_kinds: exception type -> reply ``kind`` (checked in order, first match wins).
        ports: ``(first, last)`` port range to listen in (inclusive; the first free one is taken), for
            clusters whose nodes only open a known range to each other; None: any free port.
    """

    def __init__(self, search_fn: SearchFn, host: str, error_kinds: list[tuple[type[BaseException], str]],
                 ports: tuple[int, int] | None = None) -> None:
        self.search_fn, self.host, self.error_kinds, self.ports = search_fn, host, error_kinds, ports
        self.secret = secrets.token_hex(16)
        self.server: asyncio.AbstractServer | None = None
        self.port: int | None = None

    async def start(self) -> dict[str, Any]:
        """Listen (once) on a free port; the endpoint ``{"host", "port", "secret"}`` for the router.

        Raises:
            OSError: no port of ``ports`` is free on ``host``.
        """
        if self.server is None:
            candidates = range(self.ports[0], self.ports[1] + 1) if self.ports else [0]
            last: OSError | None = None
            for port in candidates:
                try:
                    self.server = await asyncio.start_server(self._serve, self.host, port)
                    break
                except OSError as err:  # taken (another replica on this node): try the next one
                    last = err
            else:
                raise OSError(f"data plane: no free port in {self.ports[0]}-{self.ports[1]} on {self.host} "
                              f"(serve.data_plane_ports): {last}")
            self.port = int(self.server.sockets[0].getsockname()[1])
        return {"host": self.host, "port": self.port, "secret": self.secret}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hello, _ = await _read_frame(reader, HELLO_MAX_BYTES)
            if not hmac.compare_digest(str(hello.get("hello", "")), self.secret):
                logger.warning("data plane: refused a connection from %s (wrong secret)",
                               writer.get_extra_info("peername"))
                return
            writer.write(_encode({"ok": True}))
            while True:
                header, body = await _read_frame(reader)
                writer.write(await self._answer(header, body))
        except DataPlaneError:
            pass  # the router closed the connection (or spoke nonsense): nothing to answer
        finally:
            writer.close()

    async def _answer(self, header: dict[str, Any], body: bytes) -> bytes:
        rid = header.get("id")
        try:
            try:  # a malformed frame is a bad request, never a LookupError (KeyError) the caller would see as 400
                rows, width, k = int(header["rows"]), int(header["width"]), int(header["k"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"malformed search frame header: {err!r}") from None
            has_cats = bool(header.get("categories"))
            need = rows * width + (rows * 8 if has_cats else 0)
            if header.get("op") != "search" or rows < 1 or width < 1 or k < 1 or len(body) != need:
                raise ValueError(f"malformed search frame (op={header.get('op')!r}, rows={rows}, width={width}, "
                                 f"k={k}, {len(body)} body bytes, {need} expected)")
            packed = np.frombuffer(body, dtype=np.uint8, count=rows * width).reshape(rows, width)
            cats = np.frombuffer(body, dtype=np.int64, offset=rows * width) if has_cats else None
            after = header.get("after")
            dist, ids, version = await self.search_fn(packed, k, cats, header.get("version"),
                                                      None if after is None else (str(after[0]), int(after[1])))
        except Exception as err:  # noqa: BLE001 -- every failure becomes a typed reply, the connection lives on
            kind = next((name for typ, name in self.error_kinds if isinstance(err, typ)),
                        "bad_request" if isinstance(err, (ValueError, TypeError)) else "error")
            return _encode({"id": rid, "ok": False, "kind": kind, "message": str(err)})
        dist = np.ascontiguousarray(dist, dtype=np.int32)
        return _encode({"id": rid, "ok": True, "version": version, "rows": int(dist.shape[0]), "k": int(dist.shape[1]),
                        "ids": [[None if v is None else str(v) for v in row] for row in ids]}, dist.tobytes())


class DataPlaneClient:
    """Router side: a small pool of connections to one shard replica's data endpoint.

    A connection carries one request at a time; concurrent calls open more (at most ``max_idle`` are
    kept). Any transport failure closes the connection it happened on and raises
    :class:`DataPlaneError`; error replies raise :class:`RemoteShardError`.
    """

    def __init__(self, endpoint: dict[str, Any], max_idle: int = 4) -> None:
        self.host, self.port, self.secret = str(endpoint["host"]), int(endpoint["port"]), str(endpoint["secret"])
        self.key = (self.host, self.port, self.secret)
        self.pid = endpoint.get("pid")  # the replica's process (shown in /info: which replicas the router reaches)
        self.max_idle = max_idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._next_id = 0
        self.inflight = 0  # calls running now (the router sends to the least busy replica)
        self.closed = False

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as err:
            raise DataPlaneError(f"cannot connect to {self.host}:{self.port}: {err}") from None
        writer.write(_encode({"hello": self.secret}))
        header, _ = await _read_frame(reader)
        if not header.get("ok"):
            writer.close()
            raise DataPlaneError(f"{self.host}:{self.port} refused the connection")
        return reader, writer

    async def search(self, packed: np.ndarray, k: int, categories: np.ndarray | None, version: str | None,
                     timeout_s: float, after: tuple[str, int] | None = None) -> tuple[np.ndarray, np.ndarray, str]:
        """One shard search over this endpoint: ``(distances, video ids, version)``; ``after``: the update
        batch the answer must include (the shard's ``search``)."""
        if self.closed:
            raise DataPlaneError(f"{self.host}:{self.port} is closed")
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        body = packed.tobytes()
        if categories is not None:
            body += np.ascontiguousarray(categories, dtype=np.int64).tobytes()
        self._next_id += 1
        rid = self._next_id
        frame = _encode({"id": rid, "op": "search", "rows": int(packed.shape[0]), "width": int(packed.shape[1]),
                         "k": int(k), "version": version, "categories": categories is not None,
                         "after": None if after is None else [str(after[0]), int(after[1])]}, body)
        conn = self._idle.pop() if self._idle else None
        self.inflight += 1
        try:
            async with asyncio.timeout(timeout_s):
                if conn is None:
                    conn = await self._connect()
                conn[1].write(frame)
                header, reply = await _read_frame(conn[0])
        except (TimeoutError, DataPlaneError, OSError) as err:
            if conn is not None:
                conn[1].close()
            if isinstance(err, DataPlaneError):
                raise
            raise DataPlaneError(f"{self.host}:{self.port}: {type(err).__name__} {err}") from None
        except BaseException:  # cancelled mid-request: the connection's state is unknown
            if conn is not None:
                conn[1].close()
            raise
        finally:
            self.inflight -= 1
        if header.get("id") != rid:
            conn[1].close()
            raise DataPlaneError(f"{self.host}:{self.port} answered request {header.get('id')}, asked {rid}")
        if len(self._idle) < self.max_idle and not self.closed:
            self._idle.append(conn)
        else:
            conn[1].close()
        if not header.get("ok"):
            raise RemoteShardError(str(header.get("kind")), str(header.get("message")))
        rows, kk = int(header["rows"]), int(header["k"])
        dist = np.frombuffer(reply, dtype=np.int32).reshape(rows, kk)
        ids = np.array(header["ids"], dtype=object).reshape(rows, kk)
        return dist, ids, str(header["version"])

    def close(self) -> None:
        """Close every pooled connection (in-flight calls fail over to the Serve handle)."""
        self.closed = True
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()

"""Python client of the vhindex query service (``cluster.serve``), sync and async.

Example::

    from vhindex.client import Client

    svc = Client("http://127.0.0.1:8000", token=os.environ.get("VHINDEX_TOKEN"))
    res = svc.search(video="clip.mp4", k=10)          # upload a video file
    for hit in res.hits:
        print(hit.video_id, hit.distance)
    print(res.timing)                                  # decode_ms, features_ms, encode_ms, search_ms
    svc.search(video_id="vid-001", k=5)                # an indexed video's neighbours
    svc.search(code="9f3a...", k=5)                    # a hex code
    svc.search(url="s3://bucket/videos/x.mp4")         # a URL the service is allowed to read

    async with AsyncClient("http://127.0.0.1:8000") as svc:
        res = await svc.search(video="clip.mp4")

Errors are typed (:class:`ServiceError` and its subclasses) and carry the service's message. Calls
are retried, with exponential backoff, on 503 (no replica answered) and on connection failures
(refused, reset) -- every query is read-only, so a retry is always safe. Other errors are raised at
once.

The sync client needs ``requests``, the async one ``aiohttp`` (``pip install 'vhindex[client]'``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["AsyncClient", "AuthError", "BadRequestError", "Client", "Hit", "NotFoundError", "SearchResult",
           "ServiceError", "UnavailableError"]


class ServiceError(Exception):
    """An error answer of the service (or no answer at all).

    Attributes:
        status: HTTP status (0 when the service could not be reached).
        message: the service's ``error`` message (or the connection failure).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


class BadRequestError(ServiceError):
    """The request was refused as invalid (400, 403, 413, 415, 422): fix the request, do not retry."""


class AuthError(ServiceError):
    """Missing or wrong bearer token (401)."""


class NotFoundError(ServiceError):
    """An unknown ``video_id`` or endpoint (404)."""


class UnavailableError(ServiceError):
    """No answer after every retry: 503, or the service could not be reached."""


def _error(status: int, message: str) -> ServiceError:
    if status == 401:
        return AuthError(status, message)
    if status == 404:
        return NotFoundError(status, message)
    if status == 503 or status == 0:
        return UnavailableError(status, message)
    if 400 <= status < 500:
        return BadRequestError(status, message)
    return ServiceError(status, message)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One neighbour: an indexed video and its Hamming distance to the query."""

    video_id: str
    distance: int


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """One query's answer.

    Attributes:
        hits: nearest first.
        partial: True when some shards did not answer (``missing_shards``): the top-k of the rest.
        index_version: the index version that answered.
        timing: for video queries, ``decode_ms``, ``features_ms``, ``encode_ms``, ``search_ms``.
        raw: the whole JSON answer.
    """

    hits: list[Hit]
    partial: bool
    missing_shards: list[int]
    index_version: str | None
    timing: dict[str, float]
    raw: dict[str, Any]

    @classmethod
    def from_json(cls, body: dict[str, Any], hits: list[dict[str, Any]] | None = None) -> SearchResult:
        rows = body["results"] if hits is None else hits
        return cls([Hit(str(h["video_id"]), int(h["distance"])) for h in rows], bool(body.get("partial", False)),
                   list(body.get("missing_shards", [])), body.get("index_version"), dict(body.get("timing", {})), body)


def _query(code: str | None, video_id: str | None, features: Any | None) -> dict[str, Any]:
    given = {k: v for k, v in (("code", code), ("video_id", video_id), ("features", features)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of code, video_id, features, video or url; got {sorted(given) or 'none'}")
    if "features" in given and hasattr(given["features"], "tolist"):
        given["features"] = given["features"].tolist()
    return given


def _video_bytes(video: str | os.PathLike | bytes) -> bytes:
    if isinstance(video, bytes):
        return video
    with open(video, "rb") as f:
        return f.read()


class _Base:
    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.25) -> None:
        if retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError(f"need retries >= 0, timeout_s > 0, backoff_s >= 0; got {retries}, {timeout_s}, "
                             f"{backoff_s}")
        self.url = url.rstrip("/")
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        #: requests made and retries among them (503 or connection failures), over this client's life
        self.stats = {"requests": 0, "retries": 0}
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _delay(self, attempt: int) -> float:
        return self.backoff_s * (2 ** attempt)

    @staticmethod
    def _message(status: int, body: Any, text: str) -> str:
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return body["error"]
        return text[:500] or f"HTTP {status}"

    def _search_request(self, code: str | None, video_id: str | None, features: Any | None,
                        video: str | os.PathLike | bytes | None, url: str | None, k: int) -> tuple[str, dict[str, Any]]:
        """``(path, request kwargs)`` of one search."""
        if video is not None or url is not None:
            if sum(x is not None for x in (code, video_id, features, video, url)) != 1:
                raise ValueError("give exactly one of code, video_id, features, video or url")
            if video is not None:
                return "/search/video", {"params": {"k": k}, "data": _video_bytes(video),
                                         "headers": {"Content-Type": "video/mp4"}}
            return "/search/video", {"json": {"url": url, "k": k}}
        return "/search", {"json": {**_query(code, video_id, features), "k": k}}


class Client(_Base):
    """Blocking client (``requests``).

    Args:
        url: the service's base URL (``http://host:port``).
        token: bearer token (``serve.auth_token_env`` on the service); None: no auth header.
        timeout_s: per-attempt timeout.
        retries: extra attempts on 503 / connection failures.
        backoff_s: first retry delay; doubles each retry.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        import requests

        super().__init__(url, **kwargs)
        self._session = requests.Session()

    def close(self) -> None:
        """Close the connection pool."""
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import requests

        headers = {**self.headers, **kwargs.pop("headers", {})}
        last: ServiceError | None = None
        for attempt in range(self.retries + 1):
            self.stats["requests"] += 1
            if attempt:
                self.stats["retries"] += 1
                time.sleep(self._delay(attempt - 1))
            try:
                r = self._session.request(method, self.url + path, headers=headers, timeout=self.timeout_s, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as err:
                last = UnavailableError(0, f"{method} {self.url}{path}: {type(err).__name__}: {err}")
                continue
            try:
                body = r.json()
            except ValueError:
                body = None
            if r.status_code < 300 and isinstance(body, dict):
                return body
            last = _error(r.status_code, self._message(r.status_code, body, r.text))
            if r.status_code != 503:
                raise last
        assert last is not None
        raise last

    def search(self, *, code: str | None = None, video_id: str | None = None, features: Any | None = None,
               video: str | os.PathLike | bytes | None = None, url: str | None = None, k: int = 10) -> SearchResult:
        """Top-``k`` of one query: exactly one of a hex ``code``, an indexed ``video_id``, frame ``features``
        (``(M, D)``), a ``video`` (file path or bytes, uploaded) or a ``url`` the service may read."""
        path, kwargs = self._search_request(code, video_id, features, video, url, k)
        return SearchResult.from_json(self._call("POST", path, **kwargs))

    def search_batch(self, queries: Sequence[dict[str, Any]], k: int = 10) -> list[SearchResult]:
        """Top-``k`` of many ``{"code"|"video_id"|"features": ...}`` queries in one request."""
        body = self._call("POST", "/search/batch", json={"queries": [_query(q.get("code"), q.get("video_id"),
                                                                            q.get("features")) for q in queries],
                                                        "k": k})
        return [SearchResult.from_json(body, hits) for hits in body["results"]]

    def info(self) -> dict[str, Any]:
        """The service's ``/info``: index version, bits, counts, what queries it takes."""
        return self._call("GET", "/info")

    def health(self) -> dict[str, Any]:
        """``/healthz``; raises :class:`UnavailableError` when degraded (503) after the retries."""
        return self._call("GET", "/healthz")


class AsyncClient(_Base):
    """The same calls as :class:`Client`, as coroutines (``aiohttp``); use ``async with`` or :meth:`close`."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._session: Any = None

    async def _get_session(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def close(self) -> None:
        """Close the connection pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import aiohttp

        session = await self._get_session()
        headers = {**self.headers, **kwargs.pop("headers", {})}
        if "params" in kwargs:
            kwargs["params"] = {k: str(v) for k, v in kwargs["params"].items()}
        last: ServiceError | None = None
        for attempt in range(self.retries + 1):
            self.stats["requests"] += 1
            if attempt:
                self.stats["retries"] += 1
                await asyncio.sleep(self._delay(attempt - 1))
            try:
                async with session.request(method, self.url + path, headers=headers, **kwargs) as r:
                    text = await r.text()
                    status = r.status
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
                last = UnavailableError(0, f"{method} {self.url}{path}: {type(err).__name__}: {err}")
                continue
            try:
                import json

                body = json.loads(text)
            except ValueError:
                body = None
            if status < 300 and isinstance(body, dict):
                return body
            last = _error(status, self._message(status, body, text))
            if status != 503:
                raise last
        assert last is not None
        raise last

    async def search(self, *, code: str | None = None, video_id: str | None = None, features: Any | None = None,
                     video: str | os.PathLike | bytes | None = None, url: str | None = None,
                     k: int = 10) -> SearchResult:
        """See :meth:`Client.search`."""
        path, kwargs = self._search_request(code, video_id, features, video, url, k)
        return SearchResult.from_json(await self._call("POST", path, **kwargs))

    async def search_batch(self, queries: Sequence[dict[str, Any]], k: int = 10) -> list[SearchResult]:
        """See :meth:`Client.search_batch`."""
        body = await self._call("POST", "/search/batch", json={
            "queries": [_query(q.get("code"), q.get("video_id"), q.get("features")) for q in queries], "k": k})
        return [SearchResult.from_json(body, hits) for hits in body["results"]]

    async def info(self) -> dict[str, Any]:
        """See :meth:`Client.info`."""
        return await self._call("GET", "/info")

    async def health(self) -> dict[str, Any]:
        """See :meth:`Client.health`."""
        return await self._call("GET", "/healthz")

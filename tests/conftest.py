"""Shared fixtures: a real S3-compatible server (moto, in-process) for fsspec round trips."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, NamedTuple

import pytest

# The Debian packages the real-data benchmarks read (`make bench-sources` unpacks them here): the
# benchdata tests find them through $VHINDEX_BENCH_SOURCES.
_BENCH_SOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench-work", "sources", "root")
if os.path.isdir(_BENCH_SOURCES) and _BENCH_SOURCES not in os.environ.get("VHINDEX_BENCH_SOURCES", ""):
    os.environ["VHINDEX_BENCH_SOURCES"] = os.pathsep.join(
        p for p in (os.environ.get("VHINDEX_BENCH_SOURCES", ""), _BENCH_SOURCES) if p)


class S3Env(NamedTuple):
    """What :func:`s3_server` yields: s3fs ``storage_options`` and the bucket created for tests."""

    storage_options: dict[str, Any]
    bucket: str

    @property
    def endpoint_url(self) -> str:
        return self.storage_options["client_kwargs"]["endpoint_url"]

    def url(self, *parts: str) -> str:
        """A fresh ``s3://bucket/...`` URL (a unique prefix per call unless parts are given)."""
        return "s3://" + "/".join([self.bucket, *(parts or (uuid.uuid4().hex[:12],))])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on 127.0.0.1 (a real HTTP server, no mocks) with one bucket.

    Yields:
        :class:`S3Env` -- ``(storage_options, bucket)``; pass ``storage_options`` to every vhindex
        IO function together with ``s3://{bucket}/...`` URLs.
    """
    pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    import fsspec

    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_SECURITY_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        port = _free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            storage_options = {
                "key": "testing",
                "secret": "testing",
                "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
            bucket = "vhindex-test"
            boto3 = pytest.importorskip("boto3")
            boto3.client(
                "s3", endpoint_url=endpoint, region_name="us-east-1",
                aws_access_key_id="testing", aws_secret_access_key="testing",
            ).create_bucket(Bucket=bucket)
            fsspec.filesystem("s3", **storage_options).invalidate_cache()
            yield S3Env(storage_options, bucket)
        finally:
            server.stop()


@pytest.fixture
def memory_url():
    """A fresh ``memory://`` folder URL, removed afterwards."""
    import fsspec

    url = f"memory://vhindex-test-{uuid.uuid4().hex[:12]}"
    yield url
    fs = fsspec.filesystem("memory")
    path = url[len("memory://"):]
    if fs.exists(path):
        fs.rm(path, recursive=True)


class SharedRay:
    """One local Ray (127.0.0.1, 4 CPUs, Serve's fast-path environment) for every test that can share it.

    Started on first use and kept for the session (per pytest-xdist worker): each Ray start costs
    seconds. A test that must own its cluster -- other cluster settings, a private head -- asks for
    :func:`private_ray`, which shuts the shared one down first (it starts again on the next use).
    """

    def __init__(self) -> None:
        self.started = False
        self.direct_port: int | None = None

    def ensure(self) -> SharedRay:
        import ray

        from cluster.runtime import connect_ray, free_ports
        from cluster.serve import serve_cluster_env
        from vhindex.config import ServeSection

        if not ray.is_initialized():
            # the product default: Serve throughput-optimized, router replicas answering on their own ports
            # (a range fixed when Ray starts: tests deploy with this direct_port)
            self.direct_port = free_ports(1)[0]
            env = serve_cluster_env(ServeSection(direct_port=self.direct_port, direct_drain_s=0.5))
            self.started = connect_ray(num_cpus=4, env=env)
        return self

    def release(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False


@pytest.fixture(scope="session")
def _shared_ray_state():
    pytest.importorskip("ray")
    state = SharedRay()
    yield state
    state.release()


@pytest.fixture(scope="module")
def shared_ray(_shared_ray_state) -> SharedRay:
    """The session's shared local Ray (see :class:`SharedRay`), started if needed."""
    return _shared_ray_state.ensure()


@pytest.fixture(scope="module")
def local_ray(shared_ray):
    """A local Ray on 127.0.0.1 for the module: the shared one."""
    yield shared_ray


@pytest.fixture(scope="module")
def private_ray(_shared_ray_state):
    """For a module that starts its own Ray: the shared one is shut down first."""
    _shared_ray_state.release()
    yield


@pytest.fixture(scope="module")
def ray_serve(shared_ray):
    """Serve's HTTP proxy on a free 127.0.0.1 port of the shared Ray, for the module:
    ``(proxy port, direct_port)`` -- deploy with both (``serve.port``, ``serve.direct_port``)."""
    from ray import serve

    from cluster.runtime import free_ports

    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port, shared_ray.direct_port
    serve.shutdown()
